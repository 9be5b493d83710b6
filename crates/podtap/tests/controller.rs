//! `podtap controller` on the lab's files (an inventory and a policy directory): the same
//! reconcile path as with the Kubernetes API. A test agent on the fabric API (mutual TLS) gets
//! its node's tap set; statuses are written next to the policies.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podtap_controller::proto::{self, fabric_client::FabricClient};
use podtap_controller::tls;
use tokio_stream::StreamExt;

const INVENTORY: &str = r#"{"cluster": "t",
 "nodes": [{"name": "node-1", "cni": "calico", "pod_cidr": "10.244.1.0/24", "underlay_ip": "192.168.0.1"},
           {"name": "node-2", "cni": "flannel", "pod_cidr": "10.244.2.0/24", "underlay_ip": "192.168.0.2"}],
 "namespaces": [{"name": "shop", "labels": {}}],
 "pods": [
  {"namespace": "shop", "name": "cart-1", "labels": {"app": "cart"}, "node": "node-1", "ip": "10.244.1.2", "host_veth": "cali1", "tap_id": 7},
  {"namespace": "shop", "name": "web-1", "labels": {"app": "web"}, "node": "node-1", "ip": "10.244.1.3", "host_veth": "cali2", "tap_id": 8},
  {"namespace": "shop", "name": "cart-2", "labels": {"app": "cart"}, "node": "node-2", "ip": "10.244.2.2", "host_veth": "veth3", "tap_id": 9}]}"#;

const CARTS: &str = "apiVersion: podtap.io/v1alpha1
kind: TapPolicy
metadata: {name: carts}
spec:
  podSelector: {matchLabels: {app: cart}}
  pipeline: {outputs: [{type: pcap, directory: /tmp/podtap-controller-test}]}
";

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_file(path: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if ok(&text) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_drives_agents_from_the_lab_files() {
    tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("inventory.json"), INVENTORY).unwrap();
    std::fs::create_dir(d.join("policies")).unwrap();
    std::fs::write(d.join("policies/carts.yaml"), CARTS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podtap"))
        .args(["certs", "--out"])
        .arg(d.join("tls"))
        .output()
        .unwrap();
    assert!(out.status.success());

    let (fabric, health) = (free_port(), free_port());
    let _controller = Controller(
        Command::new(env!("CARGO_BIN_EXE_podtap"))
            .args([
                "controller",
                "--heartbeat-ms",
                "100",
                "--pending-after-ms",
                "400",
            ])
            .args(["--disconnected-after-ms", "1000"])
            .args(["--listen", &format!("127.0.0.1:{fabric}")])
            .args(["--health", &format!("127.0.0.1:{health}")])
            .arg("--tls-dir")
            .arg(d.join("tls"))
            .arg("--inventory")
            .arg(d.join("inventory.json"))
            .arg("--policies")
            .arg(d.join("policies"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = d.join("policies/status/carts.yaml");
    wait_file(&status, "a status", |t| t.contains("matchedPods: 2"));

    // A test agent for node-1.
    let url = format!("https://127.0.0.1:{fabric}");
    let start = Instant::now();
    let ch = loop {
        match tls::connect(&url, &d.join("tls"), "agent").await {
            Ok(ch) => break ch,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = proto::AgentReport {
        node: "node-1".into(),
        ..Default::default()
    };
    tx.send(hello).await.unwrap();
    let mut taps = FabricClient::new(ch)
        .agent_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = taps.next().await.unwrap().unwrap();
    assert_eq!(first.pods.len(), 1, "{first:#?}");
    let cart = &first.pods[0];
    assert_eq!(
        (cart.name.as_str(), cart.host_veth.as_str(), cart.tap_id),
        ("cart-1", "cali1", 7),
        "the lab's veth and tap id are kept"
    );
    assert_eq!(first.heartbeat_ms, 100);
    // Report it tapped; the status follows.
    let report = proto::AgentReport {
        node: "node-1".into(),
        applied_generation: first.generation,
        pods: vec![proto::PodState {
            namespace: "shop".into(),
            name: "cart-1".into(),
            tapped: true,
            ..Default::default()
        }],
        counters: vec![],
    };
    tx.send(report.clone()).await.unwrap();
    wait_file(&status, "node-1 connected", |t| {
        t.contains("node: node-1\n  agent: Connected\n  tapped: 1")
    });
    wait_file(&status, "node-2 disconnected", |t| {
        t.contains("node: node-2\n  agent: Disconnected")
    });

    // Breaking the policy file: its problems in the status, its taps gone from the agent.
    std::fs::write(
        d.join("policies/carts.yaml"),
        CARTS.replace("app: cart", "app: cart, 'bad key!': x"),
    )
    .unwrap();
    let text = wait_file(&status, "problems", |t| t.contains("problems:"));
    assert!(
        text.contains("spec.podSelector.matchLabels[bad key!]"),
        "{text}"
    );
    let emptied = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tx.send(report.clone()).await.unwrap();
            let t = taps.next().await.unwrap().unwrap();
            if t.pods.is_empty() {
                return t;
            }
        }
    })
    .await
    .expect("the invalid policy's taps are withdrawn");
    assert!(emptied.policies.is_empty());
}
