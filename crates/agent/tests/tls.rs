//! The decrypted view against real TLS servers in lab pods (run as root): uprobes on the
//! server's OpenSSL, plaintext written as synthesized TCP on the real connection, and what
//! tshark decodes from it equals what the client itself reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podtap_agent::{Agent, AgentConfig};
use podtap_cluster::{Cni, PodRef};
use podtap_testkit::apps::{
    ClientReport, GrpcPlan, GrpcServer, HttpPlan, Nginx, PyTlsServer, StaticTlsServer, TlsCert,
    grpc_client, py_tls_client,
};
use podtap_testkit::*;

/// Starts an agent on `pod` with the decrypted view and waits until `pid` is probed.
fn start_decrypting(lab: &podtap_lab::Lab, pod: &str, out: &Path, pid: u32) -> Agent {
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.inventory_poll = Duration::from_millis(100);
    cfg.selection.pods = vec![PodRef::parse(pod).unwrap()];
    cfg.decrypt = true;
    let mut agent = Agent::start(cfg, Some(Box::new(std::fs::File::create(out).unwrap()))).unwrap();
    let t0 = Instant::now();
    loop {
        agent
            .run(
                &AtomicBool::new(false),
                Some(Instant::now() + Duration::from_millis(150)),
            )
            .unwrap();
        let stats = agent.refresh_stats();
        let d = stats.decrypted.expect("decrypted stats");
        if d.probed.iter().any(|(p, _, _)| *p == pid) {
            return agent;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "pid {pid} not probed: {:?}",
            d.unprobed
        );
    }
}

/// The frames of one interface, in a file of their own. The decrypted view and the veth carry
/// the same 5-tuple (plaintext and ciphertext of one connection): tshark follows TCP streams
/// across interfaces, so they are analysed apart, as a user would.
fn only_interface(file: &Path, iface: &str) -> std::path::PathBuf {
    let out = file.with_extension("decrypted.pcapng");
    let filter = format!("frame.interface_name == \"{iface}\"");
    tshark(file, &["-Y", &filter, "-w", out.to_str().unwrap()]);
    out
}

/// (method, path) of every HTTP/1 request and the status of every response tshark decodes on
/// the pod's decrypted interface.
fn tshark_http1(
    file: &Path,
    iface: &str,
    port: u16,
) -> (BTreeMap<(String, String), u64>, BTreeMap<u16, u64>) {
    let file = &only_interface(file, iface);
    let decode = format!("tcp.port=={port},http");
    let only = format!("frame.interface_name == \"{iface}\"");
    let mut requests = BTreeMap::new();
    for l in tshark(
        file,
        &[
            "-d",
            &decode,
            "-Y",
            &format!("{only} && http.request"),
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
        ],
    ) {
        let mut f = l.split('\t');
        let key = (
            f.next().unwrap_or("").to_string(),
            f.next().unwrap_or("").to_string(),
        );
        *requests.entry(key).or_default() += 1;
    }
    let mut statuses = BTreeMap::new();
    for l in tshark(
        file,
        &[
            "-d",
            &decode,
            "-Y",
            &format!("{only} && http.response"),
            "-T",
            "fields",
            "-e",
            "http.response.code",
        ],
    ) {
        *statuses
            .entry(l.trim().parse::<u16>().unwrap())
            .or_default() += 1;
    }
    (requests, statuses)
}

fn client_requests(r: &ClientReport) -> (BTreeMap<(String, String), u64>, BTreeMap<u16, u64>) {
    let mut requests = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    for ((m, p, s), n) in &r.counts {
        *requests.entry((m.clone(), p.clone())).or_default() += n;
        *statuses.entry(*s).or_default() += n;
    }
    (requests, statuses)
}

/// No decrypted frame may appear on the veth's own interface, and the veth carries only TLS.
fn assert_views_apart(cap: &[Captured], pod: &str) {
    let decrypted = format!("{pod} (decrypted)");
    let marker = [0x02, 0x70, 0x74, 0, 0];
    for c in cap {
        let synthesized = c.data.len() > 12 && (c.data[..5] == marker || c.data[6..11] == marker);
        if c.interface == decrypted {
            assert!(synthesized, "a decrypted frame without podtap's MACs");
        } else {
            assert!(!synthesized, "a synthesized frame on {}", c.interface);
        }
    }
}

#[test]
fn nginx_https_decrypted_matches_the_client() {
    let lab = lab("tlsn", vec![Cni::Calico, Cni::Flannel], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let nginx = Nginx::start(
        server.netns.as_deref().unwrap(),
        &dir.path().join("nginx"),
        &cert,
        8443,
    )
    .unwrap();
    let out = dir.path().join("out.pcapng");
    let mut agent = start_decrypting(&lab, "shop/cart-1", &out, nginx.pid());
    let probed = agent.refresh_stats().decrypted.unwrap().probed;
    let what = &probed.iter().find(|p| p.0 == nginx.pid()).unwrap().2;
    assert!(
        what.contains("/libssl.so") && what.ends_with(": ssl_read_internal, ssl_write_internal"),
        "{what}"
    );

    let plan = HttpPlan::new(&[
        ("GET", "/", 12),
        ("GET", "/status/500", 3),
        ("GET", "/big", 2),
        ("POST", "/", 3),
    ])
    .per_connection(5);
    let report = py_tls_client(
        client.netns.as_deref().unwrap(),
        &format!("https://{}:8443", server.ip),
        &plan,
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.total(), 20);
    let stats = agent.stop_after(Duration::from_millis(300)).unwrap();
    let d = stats.decrypted.unwrap();
    assert_eq!(d.kernel.ring_full + d.kernel.read_failed, 0, "{d:?}");
    assert_eq!(d.synth.unbound_dropped, 0, "{d:?}");

    let cap = read_pcapng(&out);
    assert_views_apart(&cap, "shop/cart-1");
    let (want_req, want_status) = client_requests(&report);
    let (got_req, got_status) = tshark_http1(&out, "shop/cart-1 (decrypted)", 8443);
    assert_eq!(got_req, want_req);
    assert_eq!(got_status, want_status);
    // The /big bodies arrive whole: 64 KiB each, over several 16 KiB segments.
    let big = tshark(
        &only_interface(&out, "shop/cart-1 (decrypted)"),
        &[
            "-d",
            "tcp.port==8443,http",
            "-Y",
            "http.response && http.content_length == 65536",
            "-T",
            "fields",
            "-e",
            "http.file_data",
        ],
    );
    assert_eq!(big.len(), 2);
}

#[test]
fn python_tls_server_decrypted_matches_the_client() {
    let lab = lab("tlsp", vec![Cni::Flannel], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let py = PyTlsServer::start(
        server.netns.as_deref().unwrap(),
        &dir.path().join("py"),
        &cert,
        9443,
    )
    .unwrap();
    let out = dir.path().join("out.pcapng");
    let agent = start_decrypting(&lab, "shop/cart-1", &out, py.pid());
    let plan = HttpPlan::new(&[
        ("GET", "/api/items", 8),
        ("POST", "/api/orders", 4),
        ("GET", "/nothing", 2),
    ])
    .per_connection(4);
    let report = py_tls_client(
        client.netns.as_deref().unwrap(),
        &format!("https://{}:9443", server.ip),
        &plan,
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let stats = agent.stop_after(Duration::from_millis(300)).unwrap();
    let d = stats.decrypted.unwrap();
    assert_eq!(d.synth.unbound_dropped, 0, "{d:?}");
    let (want_req, want_status) = client_requests(&report);
    let (got_req, got_status) = tshark_http1(&out, "shop/cart-1 (decrypted)", 9443);
    assert_eq!(got_req, want_req);
    assert_eq!(got_status, want_status);
}

#[test]
fn statically_linked_openssl_is_probed_in_the_executable() {
    let lab = lab("tlss", vec![Cni::Calico], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let app = StaticTlsServer::start(
        server.netns.as_deref().unwrap(),
        &dir.path().join("static"),
        &cert,
        7443,
    )
    .unwrap();
    let out = dir.path().join("out.pcapng");
    let mut agent = start_decrypting(&lab, "shop/cart-1", &out, app.pid());
    // No libssl.so: the probes sit in the server's own executable, on OpenSSL's internal
    // read/write functions (found by decoding SSL_read & co. in the executable).
    let probed = agent.refresh_stats().decrypted.unwrap().probed;
    let what = &probed.iter().find(|p| p.0 == app.pid()).unwrap().2;
    assert_eq!(
        what,
        &format!(
            "/proc/{}/exe: ssl_read_internal, ssl_write_internal",
            app.pid()
        )
    );
    let plan = HttpPlan::new(&[
        ("GET", "/", 6),
        ("GET", "/api/items", 4),
        ("GET", "/status/503", 2),
        ("POST", "/api/orders", 3),
        ("GET", "/missing", 1),
    ])
    .per_connection(4);
    let report = py_tls_client(
        client.netns.as_deref().unwrap(),
        &format!("https://{}:7443", server.ip),
        &plan,
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.count("GET", "/status/503", 503), 2);
    let stats = agent.stop_after(Duration::from_millis(300)).unwrap();
    let d = stats.decrypted.unwrap();
    assert_eq!(d.synth.unbound_dropped, 0, "{d:?}");
    let (want_req, want_status) = client_requests(&report);
    let (got_req, got_status) = tshark_http1(&out, "shop/cart-1 (decrypted)", 7443);
    assert_eq!(got_req, want_req);
    assert_eq!(got_status, want_status);
}

#[test]
fn grpc_over_tls_is_bound_to_its_connection() {
    let lab = lab("tlsg", vec![Cni::Calico], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let grpc = GrpcServer::start(
        server.netns.as_deref().unwrap(),
        &dir.path().join("grpc"),
        &cert,
        50051,
    )
    .unwrap();
    let out = dir.path().join("out.pcapng");
    let agent = start_decrypting(&lab, "shop/cart-1", &out, grpc.pid());
    let report = grpc_client(
        client.netns.as_deref().unwrap(),
        &format!("{}:50051", server.ip),
        &cert,
        &GrpcPlan::new(&[("Say", 6), ("Fail", 2)]),
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let stats = agent.stop_after(Duration::from_millis(300)).unwrap();
    let d = stats.decrypted.unwrap();
    assert_eq!(d.synth.unbound_dropped, 0, "{d:?}");
    // tshark decodes the decrypted stream as HTTP/2 with gRPC paths and statuses.
    let lines = tshark(
        &only_interface(&out, "shop/cart-1 (decrypted)"),
        &[
            "-d",
            "tcp.port==50051,http2",
            "-Y",
            "frame.interface_name == \"shop/cart-1 (decrypted)\" && http2.header.name == \":path\"",
            "-T",
            "fields",
            "-e",
            "http2.header.value",
        ],
    );
    let says = lines
        .iter()
        .filter(|l| l.contains("/podtap.lab.Echo/Say"))
        .count();
    let fails = lines
        .iter()
        .filter(|l| l.contains("/podtap.lab.Echo/Fail"))
        .count();
    assert_eq!((says, fails), (6, 2), "{lines:?}");
    // Every decrypted frame is on the real connection: the server's address and port.
    let cap = read_pcapng(&out);
    assert_views_apart(&cap, "shop/cart-1");
    let server_ip: std::net::Ipv4Addr = server.ip.parse().unwrap();
    let on_conn = cap
        .iter()
        .filter(|c| c.interface == "shop/cart-1 (decrypted)")
        .all(|c| {
            let ip = etherparse::SlicedPacket::from_ethernet(&c.data).unwrap();
            let Some(etherparse::NetSlice::Ipv4(v4)) = ip.net else {
                return false;
            };
            v4.header().source_addr() == server_ip || v4.header().destination_addr() == server_ip
        });
    assert!(on_conn);
}
