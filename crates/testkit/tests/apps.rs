//! The lab's TLS and L7 applications against their own clients, each in a namespace of its
//! own (root): every server starts, and what its client says it got matches the plan.

use std::process::Command;
use std::time::Duration;

use podtap_testkit::apps::{
    Fault, GrpcPlan, GrpcServer, HttpPlan, NGINX_SMALL_BODY, Nghttpd, Nginx, PyTlsServer, TlsCert,
    big_body, grpc_client, h2load, py_tls_client, wrk,
};

/// Prefix of the namespaces these tests create (`pt-` is podtap's).
const PREFIX: &str = "pt-app";

/// A network namespace `pt-app{tag}{pid}` with `lo` up, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        sweep_dead();
        let name = format!("{PREFIX}{tag}{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes `pt-app*` namespaces left by test processes that are gone.
fn sweep_dead() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().skip_while(|c| !c.is_ascii_digit()).collect();
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Whether process `pid` has libssl mapped (what uprobe tests rely on).
fn maps_libssl(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("libssl.so")
}

#[test]
fn nginx_serves_http1_over_tls_with_keepalive_and_plain_http() {
    let ns = TestNetns::new("nginx");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let nginx =
        Nginx::start_with_http(&ns.name, &dir.path().join("nginx"), &cert, 8443, Some(8080))
            .unwrap();
    assert!(
        maps_libssl(nginx.pid()),
        "nginx pid {} has no libssl",
        nginx.pid()
    );

    let plan = HttpPlan::new(&[
        ("GET", "/", 15),
        ("GET", "/status/500", 5),
        ("GET", "/status/404", 2),
        ("GET", "/big", 3),
    ])
    .per_connection(5);
    for base in ["https://127.0.0.1:8443", "http://127.0.0.1:8080"] {
        let r = py_tls_client(&ns.name, base, &plan).unwrap();
        assert!(r.errors.is_empty(), "{base}: {:?}", r.errors);
        assert_eq!(r.count("GET", "/", 200), 15, "{base}: {r:?}");
        assert_eq!(r.count("GET", "/status/500", 500), 5, "{base}: {r:?}");
        assert_eq!(r.count("GET", "/status/404", 404), 2, "{base}: {r:?}");
        assert_eq!(r.count("GET", "/big", 200), 3, "{base}: {r:?}");
        assert_eq!(r.total(), plan.total());
        // 25 requests, 5 per connection: keep-alive held.
        assert_eq!(r.connections, 5, "{base}: {r:?}");
    }

    // The access log is nginx's own count of what it served; its error log has nothing to say
    // beyond notices.
    drop(nginx);
    let errors = std::fs::read_to_string(dir.path().join("nginx/error.log")).unwrap();
    assert!(
        !["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"]
            .iter()
            .any(|level| errors.contains(level)),
        "{errors}"
    );
    let log = std::fs::read_to_string(dir.path().join("nginx/access.log")).unwrap();
    assert_eq!(log.lines().count(), 50, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("\" 500 ")).count(), 10);
    let big = log.lines().filter(|l| l.contains("GET /big ")).count();
    assert_eq!(big, 6);
    let big_len = format!("\"GET /big HTTP/1.1\" 200 {} ", big_body().len());
    assert_eq!(log.matches(&big_len).count(), 6, "{log}");
    let small = format!("\"GET / HTTP/1.1\" 200 {} ", NGINX_SMALL_BODY.len());
    assert_eq!(log.matches(&small).count(), 30, "{log}");
}

#[test]
fn nginx_speaks_h2_to_h2load() {
    let ns = TestNetns::new("nginxhtwo");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let _nginx = Nginx::start(&ns.name, &dir.path().join("nginx"), &cert, 9443).unwrap();

    let r = h2load(&ns.name, "https://127.0.0.1:9443/", 200, 4).unwrap();
    assert_eq!(r.protocol, "h2");
    assert_eq!(
        (r.total, r.succeeded, r.status_2xx),
        (200, 200, 200),
        "{r:?}"
    );
    assert_eq!((r.failed, r.errored, r.status_5xx), (0, 0, 0), "{r:?}");

    let r = h2load(&ns.name, "https://127.0.0.1:9443/status/500", 30, 2).unwrap();
    assert_eq!(r.protocol, "h2");
    assert_eq!((r.status_2xx, r.status_5xx), (0, 30), "{r:?}");
}

#[test]
fn nghttpd_serves_h2load() {
    let ns = TestNetns::new("nghttpd");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let server = Nghttpd::start(&ns.name, &dir.path().join("nghttpd"), &cert, 7443).unwrap();
    assert!(maps_libssl(server.pid()));

    let r = h2load(&ns.name, "https://127.0.0.1:7443/big.bin", 100, 2).unwrap();
    assert_eq!(r.protocol, "h2");
    assert_eq!(
        (r.total, r.succeeded, r.status_2xx),
        (100, 100, 100),
        "{r:?}"
    );
    assert_eq!(r.failed + r.errored + r.timeout, 0, "{r:?}");

    let r = h2load(&ns.name, "https://127.0.0.1:7443/missing", 10, 1).unwrap();
    assert_eq!((r.status_2xx, r.status_4xx), (0, 10), "{r:?}");
}

#[test]
fn python_tls_server_counts_and_fault_switch() {
    let ns = TestNetns::new("pytls");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let server = PyTlsServer::start(&ns.name, &dir.path().join("py"), &cert, 6443).unwrap();
    assert!(maps_libssl(server.pid()));
    let url = server.base_url();

    let plan = HttpPlan::new(&[
        ("GET", "/api/users", 12),
        ("POST", "/api/orders", 4),
        ("GET", "/nope", 2),
    ])
    .per_connection(6);
    let r = py_tls_client(&ns.name, &url, &plan).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.count("GET", "/api/users", 200), 12, "{r:?}");
    assert_eq!(r.count("POST", "/api/orders", 200), 4, "{r:?}");
    assert_eq!(r.count("GET", "/nope", 404), 2, "{r:?}");
    assert_eq!(r.connections, 3);

    let api = HttpPlan::new(&[("GET", "/api/items", 5)]);
    server.set_fault(Fault::Error).unwrap();
    let r = py_tls_client(&ns.name, &url, &api).unwrap();
    assert_eq!(r.count("GET", "/api/items", 500), 5, "{r:?}");

    server.set_fault(Fault::Off).unwrap();
    server
        .set_fault(Fault::Slow(Duration::from_millis(150)))
        .unwrap();
    let start = std::time::Instant::now();
    let r = py_tls_client(&ns.name, &url, &api).unwrap();
    assert_eq!(r.count("GET", "/api/items", 200), 5, "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(750),
        "{:?}",
        start.elapsed()
    );

    server.set_fault(Fault::Off).unwrap();
    let r = py_tls_client(&ns.name, &url, &api).unwrap();
    assert_eq!(r.count("GET", "/api/items", 200), 5, "{r:?}");
}

#[test]
fn grpc_say_and_fail_statuses_are_counted() {
    let ns = TestNetns::new("grpc");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let server = GrpcServer::start(&ns.name, &dir.path().join("grpc"), &cert, 5443).unwrap();
    assert!(maps_libssl(server.pid()));

    let mut plan = GrpcPlan::new(&[("Say", 7), ("Fail", 3), ("Nope", 1)]);
    plan.payload = 4096;
    let r = grpc_client(&ns.name, &server.target(), &cert, &plan).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.count("Say", "/podtap.lab.Echo/Say", 0), 7, "{r:?}");
    assert_eq!(r.count("Fail", "/podtap.lab.Echo/Fail", 5), 3, "{r:?}");
    assert_eq!(r.count("Nope", "/podtap.lab.Echo/Nope", 12), 1, "{r:?}");
    assert_eq!(r.total(), 11);
}

#[test]
fn wrk_loads_nginx_over_tls() {
    let ns = TestNetns::new("wrk");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let _nginx = Nginx::start(&ns.name, &dir.path().join("nginx"), &cert, 4443).unwrap();

    let r = wrk(&ns.name, "https://127.0.0.1:4443/", 1, 4, 2).unwrap();
    assert!(r.requests > 50, "{r:?}");
    assert!(r.requests_per_sec > 50.0, "{r:?}");
    assert!(
        r.p99 > Duration::ZERO && r.p99 < Duration::from_secs(5),
        "{r:?}"
    );
    assert_eq!((r.non_2xx_3xx, r.socket_errors), (0, 0), "{r:?}");

    let r = wrk(&ns.name, "https://127.0.0.1:4443/status/500", 1, 2, 1).unwrap();
    assert!(r.requests > 0);
    assert_eq!(r.non_2xx_3xx, r.requests, "{r:?}");
}

#[test]
fn a_server_that_cannot_listen_fails_with_its_log() {
    let ns = TestNetns::new("busy");
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let _first = PyTlsServer::start(&ns.name, &dir.path().join("first"), &cert, 3443).unwrap();
    let err = PyTlsServer::start(&ns.name, &dir.path().join("second"), &cert, 3443)
        .expect_err("the port is taken");
    let text = format!("{err:#}");
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("Address already in use"), "{text}");

    // grpcio sets SO_REUSEPORT unless told not to: the second server must still fail.
    let _grpc = GrpcServer::start(&ns.name, &dir.path().join("grpc1"), &cert, 3445).unwrap();
    let err = GrpcServer::start(&ns.name, &dir.path().join("grpc2"), &cert, 3445)
        .expect_err("the port is taken");
    let text = format!("{err:#}");
    assert!(text.contains("Address already in use"), "{text}");
}
