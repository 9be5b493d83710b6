//! The controller against a stand-in API server (kube-rs's real client, the real REST and watch
//! wire format) with agents and brokers on the real fabric API (gRPC, mutual TLS). The members
//! are test clients that apply what they are sent and report it, so that what the controller
//! sends and what it writes on the policies can be checked exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podtap_controller::fabric::{Fabric, Timing};
use podtap_controller::proto::{self, fabric_client::FabricClient};
use podtap_controller::source::{Source, kube::KubeSource};
use podtap_controller::{controller, tls};
use podtap_testkit::apiserver::{ApiServer, Kind};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(100),
        pending_after: Duration::from_millis(400),
        disconnected_after: Duration::from_millis(1200),
        drops_window: Duration::from_secs(5),
    }
}

fn pod(ns: &str, name: &str, app: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip},
    })
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn carts() -> Value {
    policy(
        "carts",
        json!({
            "podSelector": {"matchLabels": {"app": "cart"}},
            "namespaceSelector": {"matchLabels": {"team": "shop"}},
            "pipeline": {"outputs": [{"type": "pcap", "directory": "/tmp/podtap-test-carts"}]},
        }),
    )
}

/// A stand-in cluster, a controller and its fabric server.
struct Fixture {
    api: ApiServer,
    url: String,
    certs: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn fixture() -> Fixture {
    tls::install_crypto_provider();
    let api = ApiServer::start().await;
    for n in ["node-1", "node-2"] {
        api.apply(Kind::Node, json!({"metadata": {"name": n}}));
    }
    api.apply(
        Kind::Namespace,
        json!({"metadata": {"name": "shop", "labels": {"team": "shop"}}}),
    );
    api.apply(Kind::Namespace, json!({"metadata": {"name": "pay"}}));
    api.apply(
        Kind::Pod,
        pod("shop", "cart-1", "cart", "node-1", "10.244.1.2"),
    );
    api.apply(
        Kind::Pod,
        pod("shop", "web-1", "web", "node-1", "10.244.1.3"),
    );
    api.apply(
        Kind::Pod,
        pod("shop", "cart-2", "cart", "node-2", "10.244.2.2"),
    );
    api.apply(
        Kind::Pod,
        pod("pay", "cart-9", "cart", "node-2", "10.244.2.9"),
    );

    let certs = tempfile::tempdir().unwrap();
    tls::write(&tls::generate(&[]).unwrap(), certs.path()).unwrap();

    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let source = KubeSource::start(client).await.unwrap();
    let (_leader_tx, leading) = watch::channel(true);
    let fabric = Fabric::new(timing(), leading);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (service, dir) = (fabric.service(), certs.path().to_path_buf());
    let rx = stop_rx.clone();
    tokio::spawn(async move {
        tls::serve(service, listener, &dir, stopped(rx))
            .await
            .unwrap()
    });
    tokio::spawn(async move {
        let _keep = _leader_tx;
        controller::run(Source::Kube(source), fabric, stopped(stop_rx))
            .await
            .unwrap()
    });
    Fixture {
        api,
        url,
        certs,
        _stop: stop_tx,
    }
}

/// A test agent: applies every NodeTaps it is sent (each pod tapped, unless host-network) and
/// reports every 100 ms until `silenced`.
struct Agent {
    taps: watch::Receiver<proto::NodeTaps>,
    silenced: Arc<AtomicBool>,
}

async fn agent(f: &Fixture, node: &str) -> Agent {
    let ch = tls::connect(&f.url, f.certs.path(), "agent").await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let first = proto::AgentReport {
        node: node.into(),
        ..Default::default()
    };
    tx.send(first).await.unwrap();
    let mut inbound = FabricClient::new(ch)
        .agent_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (taps_tx, taps) = watch::channel(proto::NodeTaps::default());
    let silenced = Arc::new(AtomicBool::new(false));
    let silent = silenced.clone();
    let node = node.to_string();
    tokio::spawn(async move {
        let mut last = proto::NodeTaps::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                m = inbound.next() => match m {
                    Some(Ok(t)) => { last = t.clone(); taps_tx.send_replace(t); }
                    _ => return,
                },
                _ = tick.tick() => {}
            }
            let report = proto::AgentReport {
                node: node.clone(),
                applied_generation: last.generation,
                pods: last
                    .pods
                    .iter()
                    .map(|p| proto::PodState {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        tapped: !p.host_network,
                        reason: if p.host_network {
                            "HostNetwork".into()
                        } else {
                            String::new()
                        },
                        message: String::new(),
                    })
                    .collect(),
                counters: last
                    .policies
                    .iter()
                    .map(|p| proto::PolicyCounters {
                        vni: p.vni,
                        copied_packets: 10,
                        dropped_packets: 0,
                    })
                    .collect(),
            };
            if silent.load(Ordering::Relaxed) {
                // Silenced: keep the stream open, say nothing (a hung agent).
                std::future::pending::<()>().await;
            }
            if tx.send(report).await.is_err() {
                return;
            }
        }
    });
    Agent { taps, silenced }
}

impl Agent {
    /// Waits until the taps satisfy `ok`.
    async fn wait(&mut self, what: &str, ok: impl Fn(&proto::NodeTaps) -> bool) -> proto::NodeTaps {
        let mut taps = self.taps.clone();
        match tokio::time::timeout(WAIT, taps.wait_for(|t| ok(t))).await {
            Ok(t) => t.unwrap().clone(),
            Err(_) => panic!(
                "timed out waiting for {what}; last: {:#?}",
                *self.taps.borrow()
            ),
        }
    }

    fn pods(t: &proto::NodeTaps) -> Vec<String> {
        t.pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }
}

/// A test broker: connects and reports every 100 ms while alive.
async fn broker(f: &Fixture, name: &str) -> tokio::task::JoinHandle<()> {
    let ch = tls::connect(&f.url, f.certs.path(), "broker")
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let report = proto::BrokerReport {
        name: name.into(),
        endpoint: format!("vxlan://{name}.brokers.test"),
        ..Default::default()
    };
    tx.send(report.clone()).await.unwrap();
    let mut inbound = FabricClient::new(ch)
        .broker_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                m = inbound.next() => if !matches!(m, Some(Ok(_))) { return },
                _ = tick.tick() => { if tx.send(report.clone()).await.is_err() { return } }
            }
        }
    })
}

async fn status_where(f: &Fixture, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = f
            .api
            .get(Kind::TapPolicy, "", name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null);
        if ok(&status) {
            return status;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; status: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition<'a>(status: &'a Value, ty: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_becomes_tap_sets_and_a_ready_status() {
    let f = fixture().await;
    let mut n1 = agent(&f, "node-1").await;
    let mut n2 = agent(&f, "node-2").await;
    let _b = broker(&f, "broker-0").await;
    f.api.apply(Kind::TapPolicy, carts());

    let t1 = n1
        .wait("node-1 tapping cart-1", |t| !t.pods.is_empty())
        .await;
    assert_eq!(Agent::pods(&t1), ["shop/cart-1"]);
    assert_eq!(t1.policies.len(), 1);
    let vni = t1.policies[0].vni;
    assert_eq!(t1.pods[0].vnis, [vni]);
    assert_eq!(t1.pods[0].ip, "10.244.1.2");
    let table = t1.brokers.as_ref().unwrap();
    assert_eq!(table.brokers[0].name, "broker-0");
    assert_eq!(table.brokers[0].endpoint, "vxlan://broker-0.brokers.test");
    assert!(table.slots.len() == 256 && table.slots.iter().all(|&s| s == 0));
    assert_eq!(t1.heartbeat_ms, 100);
    let t2 = n2
        .wait("node-2 tapping cart-2", |t| !t.pods.is_empty())
        .await;
    assert_eq!(
        Agent::pods(&t2),
        ["shop/cart-2"],
        "pay/cart-9's namespace is not selected"
    );
    assert_ne!(t1.pods[0].tap_id, t2.pods[0].tap_id);

    let status = status_where(&f, "carts", "Ready=True", |s| {
        condition(s, "Ready")["status"] == "True"
    })
    .await;
    assert_eq!(condition(&status, "Accepted")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(status["matchedPods"], 2);
    assert_eq!(status["vni"], vni);
    assert_eq!(status["brokers"], json!(["broker-0"]));
    assert_eq!(status["observedGeneration"], 1);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes
            .iter()
            .all(|n| n["agent"] == "Connected" && n["tapped"] == 1)
    );

    // The wire: list then watch from the list's version, status written with server-side apply.
    let requests = f.api.requests();
    let has = |prefix: &str| requests.iter().any(|r| r.starts_with(prefix));
    assert!(has("GET /api/v1/pods?&limit=500"), "{requests:#?}");
    assert!(has(
        "GET /api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion="
    ));
    assert!(has("GET /apis/podtap.io/v1alpha1/tappolicies?&limit=500"));
    assert!(
        has(
            "PATCH /apis/podtap.io/v1alpha1/tappolicies/carts/status?&force=true&fieldManager=podtap-controller application/apply-patch+yaml"
        ),
        "{requests:#?}"
    );

    // A status is written when it changes, not on every pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = f
        .api
        .requests()
        .iter()
        .filter(|r| r.contains("/status"))
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = f
        .api
        .requests()
        .iter()
        .filter(|r| r.contains("/status"))
        .count();
    assert!(
        after - before <= 1,
        "{} status writes in 2 s of nothing changing",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_sets_follow_pods_as_they_come_and_go() {
    let f = fixture().await;
    let mut n2 = agent(&f, "node-2").await;
    let _b = broker(&f, "broker-0").await;
    f.api.apply(Kind::TapPolicy, carts());
    n2.wait("cart-2 tapped", |t| Agent::pods(t) == ["shop/cart-2"])
        .await;

    let added = Instant::now();
    f.api.apply(
        Kind::Pod,
        pod("shop", "cart-3", "cart", "node-2", "10.244.2.3"),
    );
    let t = n2.wait("cart-3 tapped", |t| t.pods.len() == 2).await;
    assert_eq!(Agent::pods(&t), ["shop/cart-2", "shop/cart-3"]);
    assert!(
        added.elapsed() < Duration::from_secs(3),
        "took {:?}",
        added.elapsed()
    );

    // A pod that is not running yet (no IP) is not tapped; once it has one, it is.
    f.api.apply(
        Kind::Pod,
        json!({"metadata": {"namespace": "shop", "name": "cart-4", "labels": {"app": "cart"}},
               "spec": {"nodeName": "node-2", "containers": []}, "status": {"phase": "Pending"}}),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        Agent::pods(&n2.taps.borrow()),
        ["shop/cart-2", "shop/cart-3"],
        "a pod without an IP is not tapped"
    );
    f.api.apply(
        Kind::Pod,
        pod("shop", "cart-4", "cart", "node-2", "10.244.2.4"),
    );
    n2.wait("cart-4 tapped", |t| t.pods.len() == 3).await;
    status_where(&f, "carts", "matchedPods 4", |s| s["matchedPods"] == 4).await;

    f.api.delete(Kind::Pod, "shop", "cart-3");
    let t = n2.wait("cart-3 untapped", |t| t.pods.len() == 2).await;
    assert_eq!(Agent::pods(&t), ["shop/cart-2", "shop/cart-4"]);

    // A label change moves a pod out of the policy.
    f.api.apply(
        Kind::Pod,
        pod("shop", "cart-4", "web", "node-2", "10.244.2.4"),
    );
    n2.wait("cart-4 untapped by label", |t| {
        Agent::pods(t) == ["shop/cart-2"]
    })
    .await;
    status_where(&f, "carts", "matchedPods 2", |s| s["matchedPods"] == 2).await;

    // Deleting the policy untaps everything.
    f.api.delete(Kind::TapPolicy, "", "carts");
    n2.wait("nothing tapped", |t| {
        t.pods.is_empty() && t.policies.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_lists_every_problem_and_leaves_the_others_alone() {
    let f = fixture().await;
    let mut n1 = agent(&f, "node-1").await;
    let _b = broker(&f, "broker-0").await;
    f.api.apply(Kind::TapPolicy, carts());
    let good = n1.wait("cart-1 tapped", |t| !t.pods.is_empty()).await;

    f.api.apply(
        Kind::TapPolicy,
        policy(
            "broken",
            json!({
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]},
                "prefilter": "port 99999",
                "pipeline": {"outputs": [], "stagess": []},
            }),
        ),
    );
    let status = status_where(&f, "broken", "Accepted=False", |s| {
        condition(s, "Accepted")["status"] == "False"
    })
    .await;
    let problems: Vec<&str> = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("spec.podSelector.matchExpressions[0]")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("spec.prefilter")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("spec.pipeline") && p.contains("stagess")),
        "{problems:#?}"
    );
    assert_eq!(condition(&status, "Ready")["reason"], "Invalid");
    assert!(status.get("vni").is_none() || status["vni"].is_null());

    // Nothing of it reached the agent, and the good policy's taps did not move.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = n1.taps.borrow().clone();
    assert_eq!(now.pods, good.pods);
    assert_eq!(now.policies, good.policies);

    // Fixing it applies it.
    f.api.apply(
        Kind::TapPolicy,
        policy(
            "broken",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "pipeline": {"outputs": [{"type": "pcap", "directory": "/tmp/podtap-test-web"}]}}),
        ),
    );
    let t = n1.wait("web-1 tapped", |t| t.pods.len() == 2).await;
    assert_eq!(Agent::pods(&t), ["shop/cart-1", "shop/web-1"]);
    let status = status_where(&f, "broken", "Accepted=True", |s| {
        condition(s, "Accepted")["status"] == "True"
    })
    .await;
    assert_eq!(status["observedGeneration"], 2);
    assert!(status.get("problems").is_none(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_joining_and_leaving_rebalance_the_flow_slots() {
    let f = fixture().await;
    let mut n1 = agent(&f, "node-1").await;
    f.api.apply(Kind::TapPolicy, carts());
    let _b0 = broker(&f, "broker-0").await;
    let _b1 = broker(&f, "broker-1").await;
    let owners = |t: &proto::NodeTaps| -> Vec<String> {
        let b = t.brokers.clone().unwrap_or_default();
        b.slots
            .iter()
            .map(|&i| b.brokers[i as usize].name.clone())
            .collect()
    };
    let two = n1
        .wait("two brokers", |t| {
            t.brokers.as_ref().is_some_and(|b| b.brokers.len() == 2)
        })
        .await;
    let two = owners(&two);
    assert_eq!(two.len(), 256);

    let b2 = broker(&f, "broker-2").await;
    let three = owners(
        &n1.wait("three brokers", |t| {
            t.brokers.as_ref().is_some_and(|b| b.brokers.len() == 3)
        })
        .await,
    );
    let moved: Vec<usize> = (0..256).filter(|&i| two[i] != three[i]).collect();
    assert!(
        moved.iter().all(|&i| three[i] == "broker-2"),
        "slots move only to the new broker"
    );
    assert!(
        (60..=110).contains(&moved.len()),
        "{} of 256 slots moved",
        moved.len()
    );
    status_where(&f, "carts", "three brokers in status", |s| {
        s["brokers"].as_array().is_some_and(|b| b.len() == 3)
    })
    .await;

    // A broker that stops reporting leaves the table; its slots go back where they were.
    b2.abort();
    let back = owners(
        &n1.wait("two brokers again", |t| {
            t.brokers.as_ref().is_some_and(|b| b.brokers.len() == 2)
        })
        .await,
    );
    assert_eq!(back, two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_its_heartbeat_is_pending_then_disconnected() {
    let f = fixture().await;
    let mut n1 = agent(&f, "node-1").await;
    let mut n2 = agent(&f, "node-2").await;
    let _b = broker(&f, "broker-0").await;
    f.api.apply(Kind::TapPolicy, carts());
    n1.wait("tapping", |t| !t.pods.is_empty()).await;
    n2.wait("tapping", |t| !t.pods.is_empty()).await;
    status_where(&f, "carts", "Ready", |s| {
        condition(s, "Ready")["status"] == "True"
    })
    .await;

    // node-2's agent goes silent (its stream stays open, as with a hung process).
    n2.silenced.store(true, Ordering::Relaxed);
    let silent = Instant::now();
    let node2 = |s: &Value| -> Value {
        s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == "node-2").cloned())
            .unwrap_or(Value::Null)
    };
    let s = status_where(&f, "carts", "node-2 Pending", |s| {
        node2(s)["agent"] == "Pending"
    })
    .await;
    assert_eq!(condition(&s, "Ready")["reason"], "AgentNotConnected");
    let s = status_where(&f, "carts", "node-2 Disconnected", |s| {
        node2(s)["agent"] == "Disconnected"
    })
    .await;
    let after = silent.elapsed();
    assert!(
        after >= Duration::from_millis(1100),
        "Disconnected after only {after:?}"
    );
    assert_eq!(condition(&s, "Degraded")["status"], "True");
    assert_eq!(condition(&s, "Degraded")["reason"], "AgentDisconnected");
    let node1 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "node-1")
        .unwrap();
    assert_eq!(node1["agent"], "Connected", "the other node is unaffected");

    // A new session for node-2 brings it back.
    let _again = agent(&f, "node-2").await;
    status_where(&f, "carts", "node-2 Connected", |s| {
        node2(s)["agent"] == "Connected"
    })
    .await;
    status_where(&f, "carts", "Ready again", |s| {
        condition(s, "Ready")["status"] == "True"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fabric_refuses_clients_without_a_podtap_certificate() {
    let f = fixture().await;
    // The server's certificate checks out, but this client presents none.
    let ca = std::fs::read_to_string(f.certs.path().join("ca.crt")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(tls::CONTROLLER_NAME);
    let refused = async {
        let ch = tonic::transport::Endpoint::from_shared(f.url.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        let first = proto::AgentReport {
            node: "node-1".into(),
            ..Default::default()
        };
        FabricClient::new(ch)
            .agent_session(tokio_stream::iter([first]))
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got a session"
    );

    // A certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    tls::write(&tls::generate(&[]).unwrap(), other.path()).unwrap();
    std::fs::copy(f.certs.path().join("ca.crt"), other.path().join("ca.crt")).unwrap();
    let refused = async {
        let ch = tls::connect(&f.url, other.path(), "agent").await?;
        let first = proto::AgentReport {
            node: "node-1".into(),
            ..Default::default()
        };
        FabricClient::new(ch)
            .agent_session(tokio_stream::iter([first]))
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA got a session"
    );
    // ... while the fabric does serve a client with the right one.
    let mut ok = agent(&f, "node-1").await;
    ok.wait("node-1's state", |t| t.heartbeat_ms == 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_goes() {
    tls::install_crypto_provider();
    let api = ApiServer::start().await;
    let client = || kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let cfg = |id: &str| podtap_controller::leader::LeaseConfig {
        namespace: "podtap-system".into(),
        name: "podtap-controller".into(),
        identity: id.into(),
        duration: 3,
        grace: 1,
    };
    let mut a = podtap_controller::leader::campaign(client(), cfg("replica-a"))
        .await
        .unwrap();
    let mut b = podtap_controller::leader::campaign(client(), cfg("replica-b"))
        .await
        .unwrap();
    let start = Instant::now();
    while !(*a.borrow() || *b.borrow()) {
        assert!(start.elapsed() < WAIT, "nobody leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Never both, over several renewals.
    for _ in 0..40 {
        assert!(!(*a.borrow() && *b.borrow()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = api
        .get(Kind::Lease, "podtap-system", "podtap-controller")
        .unwrap();
    let (leader, follower) = if *a.borrow() {
        (a, &mut b)
    } else {
        (b, &mut a)
    };
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    // The leader goes away (its receiver dropped: it releases the lease).
    drop(leader);
    tokio::time::timeout(WAIT, follower.wait_for(|l| *l))
        .await
        .expect("the other replica takes over")
        .unwrap();
    let lease = api
        .get(Kind::Lease, "podtap-system", "podtap-controller")
        .unwrap();
    assert_ne!(lease["spec"]["holderIdentity"].as_str().unwrap(), holder);
}
