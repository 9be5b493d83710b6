//! L7 end to end in the lab (run as root): real TLS servers in a pod, the agent's decrypted
//! view of them, and the broker's `calls` output over that capture. The call records' counts,
//! methods, paths and statuses must equal what the clients themselves report.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podtap_agent::{Agent, AgentConfig};
use podtap_broker::{Broker, BrokerConfig};
use podtap_cluster::{Cni, PodRef};
use podtap_l7::call::Protocol;
use podtap_l7::store::{CallStore, StoreConfig, StoredCall};
use podtap_testkit::apps::{
    GrpcPlan, GrpcServer, HttpPlan, Nghttpd, Nginx, PyTlsServer, TlsCert, grpc_client, h2load,
    py_tls_client, wrk,
};
use podtap_testkit::*;

/// Starts an agent decrypting `pod`'s processes into `capture` and waits until every one of
/// `pids` is probed.
fn decrypting_agent(lab: &podtap_lab::Lab, pod: &str, capture: &Path, pids: &[u32]) -> Agent {
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.inventory_poll = Duration::from_millis(100);
    cfg.selection.pods = vec![PodRef::parse(pod).unwrap()];
    cfg.decrypt = true;
    let mut agent =
        Agent::start(cfg, Some(Box::new(std::fs::File::create(capture).unwrap()))).unwrap();
    let t0 = Instant::now();
    loop {
        agent
            .run(
                &AtomicBool::new(false),
                Some(Instant::now() + Duration::from_millis(150)),
            )
            .unwrap();
        let probed = agent.refresh_stats().decrypted.unwrap().probed;
        let seen: Vec<u32> = probed.iter().map(|p| p.0).collect();
        if pids.iter().all(|p| seen.contains(p)) {
            return agent;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not probed: {seen:?}"
        );
    }
}

/// Replays `capture` through a broker policy with one `calls` output (store, optional JSON
/// lines); returns the stored calls and the broker's /metrics text.
fn replay_calls(
    lab: &podtap_lab::Lab,
    dir: &Path,
    capture: &Path,
    store: &Path,
    jsonl: Option<&Path>,
) -> (Vec<StoredCall>, String) {
    let json = jsonl.map_or(String::new(), |j| {
        format!("        json: {}\n", j.display())
    });
    let yaml = format!(
        "inventory: {}\npolicies:\n  - name: l7\n    vni: 1\n    outputs:\n      - type: calls\n        store: {}\n{json}",
        lab.inventory_path().display(),
        store.display(),
    );
    let cfg_path = dir.join("broker.yaml");
    std::fs::write(&cfg_path, &yaml).unwrap();
    let mut broker = Broker::offline(BrokerConfig::parse(&yaml, &cfg_path).unwrap()).unwrap();
    podtap_broker::replay::replay(&mut broker, 0, capture).unwrap();
    let stats = broker.finish();
    let metrics =
        podtap_broker::metrics::render(&std::sync::Arc::new(std::sync::Mutex::new(stats)));
    let calls = CallStore::open(store, StoreConfig::default())
        .unwrap()
        .last(1_000_000)
        .unwrap();
    (calls, metrics)
}

/// Calls per (protocol, method, path, status: gRPC status for gRPC).
type Tally = BTreeMap<(Protocol, String, String, u32), u64>;

fn tally<'a>(calls: impl IntoIterator<Item = &'a StoredCall>) -> Tally {
    let mut got = Tally::new();
    for c in calls {
        let status = match c.protocol {
            Protocol::Grpc => c.grpc_status.unwrap_or(999),
            _ => c.status.unwrap_or(999),
        };
        *got.entry((c.protocol, c.method.clone(), c.path.clone(), status))
            .or_default() += 1;
    }
    got
}

#[test]
fn decrypted_calls_equal_what_the_clients_report() {
    let lab = lab("lse", vec![Cni::Calico, Cni::Flannel], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let (server_ns, client_ns) = (server.netns.clone().unwrap(), client.netns.clone().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let nginx = Nginx::start(&server_ns, &dir.path().join("nginx"), &cert, 8443).unwrap();
    let grpc = GrpcServer::start(&server_ns, &dir.path().join("grpc"), &cert, 50051).unwrap();

    // The agent decrypts the server pod's processes.
    let capture = dir.path().join("capture.pcapng");
    let agent = decrypting_agent(&lab, "shop/cart-1", &capture, &[nginx.pid(), grpc.pid()]);

    let base = format!("https://{}:8443", server.ip);
    let http1 = py_tls_client(
        &client_ns,
        &base,
        &HttpPlan::new(&[
            ("GET", "/", 10),
            ("GET", "/status/500", 4),
            ("POST", "/", 3),
        ])
        .per_connection(5),
    )
    .unwrap();
    assert!(http1.errors.is_empty(), "{:?}", http1.errors);
    let h2 = h2load(&client_ns, &format!("{base}/status/404"), 20, 2).unwrap();
    let grpc_report = grpc_client(
        &client_ns,
        &format!("{}:50051", server.ip),
        &cert,
        &GrpcPlan::new(&[("Say", 5), ("Fail", 3)]),
    )
    .unwrap();
    assert!(grpc_report.errors.is_empty(), "{:?}", grpc_report.errors);
    agent.stop_after(Duration::from_millis(300)).unwrap();

    // The broker decodes the capture with a `calls` output.
    let store = dir.path().join("calls.db");
    let jsonl = dir.path().join("calls.jsonl");
    let (calls, metrics) = replay_calls(&lab, dir.path(), &capture, &store, Some(&jsonl));
    for c in &calls {
        assert!(
            c.decrypted,
            "only the decrypted view carries HTTP here: {c:?}"
        );
        assert_eq!(c.server, "shop/cart", "{c:?}");
        assert_eq!(c.client, "shop/frontend", "{c:?}");
    }
    let got = tally(&calls);
    let mut want: BTreeMap<(Protocol, String, String, u32), u64> = BTreeMap::new();
    for ((m, p, s), n) in &http1.counts {
        *want
            .entry((Protocol::Http1, m.clone(), p.clone(), u32::from(*s)))
            .or_default() += n;
    }
    assert_eq!(h2.status_4xx, 20, "{h2:?}");
    want.insert(
        (Protocol::Http2, "GET".into(), "/status/404".into(), 404),
        20,
    );
    for ((m, p, s), n) in &grpc_report.counts {
        let _ = m;
        *want
            .entry((Protocol::Grpc, "POST".into(), p.clone(), u32::from(*s)))
            .or_default() += n;
    }
    assert_eq!(got, want);

    // The JSON-lines export carries the same records, one object per line.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), calls.len());
    let grpc_lines = lines.iter().filter(|v| v["protocol"] == "grpc").count() as u64;
    assert_eq!(grpc_lines, grpc_report.counts.values().sum::<u64>());
    assert!(
        lines
            .iter()
            .all(|v| v["decrypted"] == true && v["server"]["pod"] == "cart-1")
    );

    // `podtap calls` reads the same store: the 5xx calls as JSON lines, then as a table.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_podtap"))
            .arg("calls")
            .arg(&store)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let failed: Vec<serde_json::Value> = cli(&["--status", "500-599", "-n", "1000", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want_failed = calls
        .iter()
        .filter(|c| c.status.is_some_and(|s| (500..=599).contains(&s)))
        .count();
    assert_eq!(failed.len(), want_failed);
    assert!(want_failed >= 4, "the client asked for 4 × /status/500");
    assert!(failed.iter().all(|v| v["status"].as_u64().unwrap() >= 500));
    let table = cli(&["--edge", "shop/frontend", "shop/cart", "-n", "3"]);
    assert_eq!(table.lines().count(), 1 + 3 + 1, "{table}");
    assert!(table.contains("shop/cart"), "{table}");

    // The service map on /metrics: one edge per protocol, errors as each protocol defines them.
    let line = |proto: &str, family: &str| {
        let prefix = format!(
            "{family}{{client=\"shop/frontend\",server=\"shop/cart\",protocol=\"{proto}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(line("http1", "podtap_l7_requests_total"), 17);
    assert_eq!(line("http1", "podtap_l7_errors_total"), 4);
    assert_eq!(line("http2", "podtap_l7_requests_total"), 20);
    assert_eq!(line("http2", "podtap_l7_errors_total"), 0);
    assert_eq!(line("grpc", "podtap_l7_requests_total"), 8);
    assert_eq!(line("grpc", "podtap_l7_errors_total"), 3);
}

/// The other servers and load tools the issue names: a Python TLS server with a Python
/// client, nghttpd (HTTP/2 over TLS) with h2load, and nginx under wrk. Their decrypted calls
/// equal what each client reports (wrk: within the requests in flight when it stopped), and
/// the decrypted pcapng decodes in tshark as HTTP/2 for nghttpd.
#[test]
fn python_nghttpd_and_wrk_calls_equal_what_the_clients_report() {
    let lab = lab("lsw", vec![Cni::Flannel], 2);
    let server = pod(&lab, "shop/cart-1").clone();
    let client = pod(&lab, "shop/frontend-1").clone();
    let (server_ns, client_ns) = (server.netns.clone().unwrap(), client.netns.clone().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let py = PyTlsServer::start(&server_ns, &dir.path().join("py"), &cert, 9443).unwrap();
    let h2 = Nghttpd::start(&server_ns, &dir.path().join("nghttpd"), &cert, 7443).unwrap();
    let nginx = Nginx::start(&server_ns, &dir.path().join("nginx"), &cert, 8443).unwrap();
    let capture = dir.path().join("capture.pcapng");
    let agent = decrypting_agent(
        &lab,
        "shop/cart-1",
        &capture,
        &[py.pid(), h2.pid(), nginx.pid()],
    );

    let python = py_tls_client(
        &client_ns,
        &format!("https://{}:9443", server.ip),
        &HttpPlan::new(&[
            ("GET", "/api/items", 6),
            ("POST", "/api/orders", 3),
            ("GET", "/nothing", 2),
        ])
        .per_connection(4),
    )
    .unwrap();
    assert!(python.errors.is_empty(), "{:?}", python.errors);
    let small = h2load(
        &client_ns,
        &format!("https://{}:7443/small.txt", server.ip),
        12,
        2,
    )
    .unwrap();
    let missing = h2load(
        &client_ns,
        &format!("https://{}:7443/missing", server.ip),
        4,
        1,
    )
    .unwrap();
    assert_eq!(
        (small.status_2xx, missing.status_4xx),
        (12, 4),
        "{small:?} {missing:?}"
    );
    let connections = 2;
    let load = wrk(
        &client_ns,
        &format!("https://{}:8443/", server.ip),
        2,
        connections,
        1,
    )
    .unwrap();
    assert!(load.requests > 100, "{load:?}");
    assert_eq!((load.non_2xx_3xx, load.socket_errors), (0, 0), "{load:?}");
    let stats = agent.stop_after(Duration::from_millis(300)).unwrap();
    let d = stats.decrypted.unwrap();
    assert_eq!(d.kernel.ring_full + d.kernel.read_failed, 0, "{d:?}");

    let (calls, _) = replay_calls(
        &lab,
        dir.path(),
        &capture,
        &dir.path().join("calls.db"),
        None,
    );
    assert!(calls.iter().all(|c| c.decrypted && c.server == "shop/cart"));
    let on = |port: u16| calls.iter().filter(move |c| c.server_port == port);

    // Python: exactly the client's log.
    let mut want = Tally::new();
    for ((m, p, s), n) in &python.counts {
        want.insert((Protocol::Http1, m.clone(), p.clone(), u32::from(*s)), *n);
    }
    assert_eq!(tally(on(9443)), want);

    // nghttpd: exactly what h2load counted.
    let want = Tally::from([
        (
            (Protocol::Http2, "GET".into(), "/small.txt".into(), 200),
            12,
        ),
        ((Protocol::Http2, "GET".into(), "/missing".into(), 404), 4),
    ]);
    assert_eq!(tally(on(7443)), want);

    // wrk counts the responses it read before its time was up; the ones still in flight then
    // (at most one per connection) were answered too, but wrk stopped counting.
    let complete = on(8443).filter(|c| c.outcome == "complete").count() as u64;
    let others: Vec<&StoredCall> = on(8443)
        .filter(|c| !(c.method == "GET" && c.path == "/" && c.status == Some(200)))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert!(
        (load.requests..=load.requests + u64::from(connections)).contains(&complete),
        "{complete} complete calls, wrk counted {}",
        load.requests
    );

    // tshark decodes the decrypted view of nghttpd's connections as HTTP/2.
    let decrypted = dir.path().join("decrypted.pcapng");
    tshark(
        &capture,
        &[
            "-Y",
            "frame.interface_name == \"shop/cart-1 (decrypted)\" && tcp.port == 7443",
            "-w",
            decrypted.to_str().unwrap(),
        ],
    );
    let paths = tshark(
        &decrypted,
        &[
            "-d",
            "tcp.port==7443,http2",
            "-Y",
            "http2.header.name == \":path\"",
            "-T",
            "fields",
            "-e",
            "http2.headers.path",
        ],
    );
    let n = |p: &str| paths.iter().filter(|l| l.contains(p)).count();
    assert_eq!((n("/small.txt"), n("/missing")), (12, 4), "{paths:?}");
}
