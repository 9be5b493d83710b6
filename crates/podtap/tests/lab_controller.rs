//! The whole fabric in the lab, driven only through the controller (run as root): the
//! controller runs in its own namespace on the lab's files, an agent runs inside each node's
//! namespace (`podtap agent --controller --node`, as the DaemonSet runs it) and two broker
//! replicas on underlay hosts (`podtap broker --controller`). Nothing but TapPolicy files and
//! the lab's inventory tells them what to do.
//!
//! Shown: each policy's pods are tapped on both CNI styles (veths found from pod IPs), every
//! flow's copies land on one broker and flows spread over both, a policy's direction and
//! prefilter hold, the statuses say Ready with counters, a new pod is tapped and a deleted one
//! untapped within seconds, and stopping the agents leaves no hook behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podtap_api::{AgentState, TapPolicyStatus};
use podtap_cluster::{Cni, PodRef};
use podtap_lab::Traffic;
use podtap_testkit::{Captured, drive, lab, read_pcapng};

const SHOP: &str = "apiVersion: podtap.io/v1alpha1
kind: TapPolicy
metadata: {name: shop}
spec:
  podSelector: {}
  namespaceSelector: {matchLabels: {team: shop}}
  pipeline: {outputs: [{type: pcap, directory: shop}]}
";

const LEDGER: &str = "apiVersion: podtap.io/v1alpha1
kind: TapPolicy
metadata: {name: ledger-out}
spec:
  podSelector: {matchLabels: {app: ledger}}
  direction: FromPod
  prefilter: proto udp
  pipeline: {outputs: [{type: pcap, directory: ledger}]}
";

/// A podtap process we started; stopped with SIGTERM (by its pid) so that it cleans up.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, netns: &str, args: &[&str], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_podtap")])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// What it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it and returns its output; it must exit cleanly.
    fn stop(mut self) -> String {
        let start = Instant::now();
        let log = self.terminate();
        eprintln!("{} stopped in {:?}", self.name, start.elapsed());
        assert!(log.0, "{} did not exit cleanly:\n{}", self.name, log.1);
        log.1
    }

    fn terminate(&mut self) -> (bool, String) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        (status.is_some_and(|s| s.success()), text)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn status(dir: &Path, policy: &str) -> Option<TapPolicyStatus> {
    let text = std::fs::read_to_string(dir.join(format!("status/{policy}.yaml"))).ok()?;
    serde_yaml_ng::from_str(&text).ok()
}

/// Waits until the policy's status satisfies `ok`; returns it and how long it took.
fn wait_status(
    dir: &Path,
    policy: &str,
    what: &str,
    ok: impl Fn(&TapPolicyStatus) -> bool,
) -> (TapPolicyStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = status(dir, policy)
            && ok(&s)
        {
            return (s, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {:#?}",
            status(dir, policy)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tapped(s: &TapPolicyStatus, node: &str) -> Option<u32> {
    s.nodes
        .iter()
        .find(|n| n.node == node && n.agent == AgentState::Connected)
        .map(|n| n.tapped)
}

fn ready(s: &TapPolicyStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Every packet of every pcapng file under `dir` (none if it was never created).
fn capture(dir: &Path) -> Vec<Captured> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_pcapng(f)).collect()
}

/// (lower endpoint, higher endpoint, protocol) of an IPv4 TCP/UDP packet.
type Flow = ((IpAddr, u16), (IpAddr, u16), u8);

fn flow(frame: &[u8]) -> Option<Flow> {
    let k = podtap_agent::flow::flow_key(frame)?;
    let (sp, dp) = k.ports?;
    let (a, b) = ((k.src, sp), (k.dst, dp));
    Some(if a <= b {
        (a, b, k.proto)
    } else {
        (b, a, k.proto)
    })
}

#[test]
fn the_lab_runs_end_to_end_through_the_controller() {
    let mut lab = lab("ctl", vec![Cni::Calico, Cni::Flannel], 3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new(env!("CARGO_BIN_EXE_podtap"))
        .args(["certs", "--out"])
        .arg(d.join("tls"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tls = d.join("tls");
    let policies = d.join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("shop.yaml"), SHOP).unwrap();
    std::fs::write(policies.join("ledger-out.yaml"), LEDGER).unwrap();

    let ctl = lab.add_host("ctl").unwrap();
    let brokers = [lab.add_host("bra").unwrap(), lab.add_host("brb").unwrap()];
    let url = format!("https://{}:9650", ctl.ip);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let controller = Proc::start(
        "controller",
        &ctl.netns,
        &[
            "controller",
            "--listen",
            "0.0.0.0:9650",
            "--health",
            "127.0.0.1:9651",
            "--heartbeat-ms",
            "200",
            "--pending-after-ms",
            "1000",
            "--disconnected-after-ms",
            "3000",
            "--tls-dir",
            &s(&tls),
            "--inventory",
            &s(&lab.inventory_path()),
            "--policies",
            &s(&policies),
        ],
        d.join("controller.log"),
    );
    let mut broker_procs = Vec::new();
    for b in &brokers {
        let data = d.join(&b.name);
        broker_procs.push(Proc::start(
            &b.name,
            &b.netns,
            &[
                "broker",
                "--controller",
                &url,
                "--name",
                &b.name,
                "--endpoint",
                &format!("vxlan://{}", b.ip),
                "--data",
                &s(&data),
                "--tls-dir",
                &s(&tls),
            ],
            d.join(format!("{}.log", b.name)),
        ));
    }
    let inventory = lab.inventory().clone();
    let mut agents = Vec::new();
    for node in &inventory.nodes {
        agents.push(Proc::start(
            &node.name,
            node.netns.as_deref().unwrap(),
            &[
                "agent",
                "--controller",
                &url,
                "--node",
                &node.name,
                "--tls-dir",
                &s(&tls),
            ],
            d.join(format!("{}.log", node.name)),
        ));
    }

    // Both policies tapped on both nodes: shop has frontend and cart on each, ledger-out
    // the ledger pod of each.
    let (shop, took) = wait_status(&policies, "shop", "shop Ready on both nodes", |s| {
        ready(s)
            && s.brokers.len() == 2
            && tapped(s, "node-1") == Some(2)
            && tapped(s, "node-2") == Some(2)
    });
    eprintln!("shop Ready with both nodes tapped after {took:?}");
    assert_eq!(shop.matched_pods, 4);
    assert!(shop.problems.is_empty(), "{shop:#?}");
    wait_status(&policies, "ledger-out", "ledger-out Ready", |s| {
        ready(s) && tapped(s, "node-1") == Some(1) && tapped(s, "node-2") == Some(1)
    });
    // The brokers run both pipelines before any traffic.
    let start = Instant::now();
    while !broker_procs
        .iter()
        .all(|b| b.log().contains("added shop") && b.log().contains("added ledger-out"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "brokers never applied the policies"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every pod's veth was found from its IP (the agent has nothing else to go by) and has
    // both hooks.
    for pod in inventory
        .pods
        .iter()
        .filter(|p| p.namespace == "shop" || p.labels["app"] == "ledger")
    {
        let agent = &agents[inventory
            .nodes
            .iter()
            .position(|n| n.name == pod.node)
            .unwrap()];
        let line = format!("pod={}/{} veth={}", pod.namespace, pod.name, pod.host_veth);
        assert!(
            agent.log().contains(&line),
            "{line} not in:\n{}",
            agent.log()
        );
        let node = inventory.nodes.iter().find(|n| n.name == pod.node).unwrap();
        let hooks = podtap_agent::program::hooks_on(node.netns.as_deref(), &pod.host_veth).unwrap();
        assert_eq!(hooks.len(), 2, "{}: {hooks:?}", pod.name);
    }

    // Traffic: 16 TCP flows between shop pods across nodes (each copied at both ends), UDP
    // from ledger-1 to frontend-2, TCP from ledger-2 to cart-1.
    for _ in 0..8 {
        drive(
            &lab,
            "shop/frontend-1",
            "shop/cart-2",
            Traffic::TcpEcho {
                messages: 2,
                size: 64,
            },
        );
        drive(
            &lab,
            "shop/cart-1",
            "shop/frontend-2",
            Traffic::TcpEcho {
                messages: 2,
                size: 64,
            },
        );
    }
    for _ in 0..2 {
        drive(
            &lab,
            "payments/ledger-1",
            "shop/frontend-2",
            Traffic::UdpEcho { count: 3, size: 50 },
        );
    }
    drive(
        &lab,
        "payments/ledger-2",
        "shop/cart-1",
        Traffic::TcpEcho {
            messages: 2,
            size: 64,
        },
    );

    // Counters reach the status.
    wait_status(&policies, "shop", "copied packets on both nodes", |s| {
        s.nodes.iter().all(|n| n.copied_packets > 0) && s.nodes.len() == 2
    });

    // A new pod is tapped, a deleted one untapped, within seconds.
    let labels: BTreeMap<String, String> = [("app".to_string(), "cart".to_string())].into();
    lab.add_pod("node-1", "shop", "late-1", labels).unwrap();
    let (_, took_add) = wait_status(&policies, "shop", "late-1 tapped", |s| {
        s.matched_pods == 5 && tapped(s, "node-1") == Some(3)
    });
    lab.remove_pod(&PodRef::parse("shop/cart-2").unwrap())
        .unwrap();
    let (_, took_remove) = wait_status(&policies, "shop", "cart-2 untapped", |s| {
        s.matched_pods == 4 && tapped(s, "node-2") == Some(1)
    });
    eprintln!("a new pod tapped after {took_add:?}, a deleted one untapped after {took_remove:?}");
    assert!(took_add < Duration::from_secs(10) && took_remove < Duration::from_secs(10));

    // Pods the agent cannot tap are reported with why: one whose IP has no veth behind it,
    // one on the host network.
    let mut inv = lab.inventory().clone();
    let model = inv
        .pods
        .iter()
        .find(|p| p.name == "frontend-1")
        .unwrap()
        .clone();
    let node1 = inv
        .nodes
        .iter()
        .find(|n| n.name == "node-1")
        .unwrap()
        .clone();
    let ghost = podtap_cluster::Pod {
        name: "ghost-1".into(),
        ip: "10.244.1.250".into(),
        host_veth: String::new(),
        netns: None,
        tap_id: Some(4000),
        ..model.clone()
    };
    let hostnet = podtap_cluster::Pod {
        name: "hostnet-1".into(),
        ip: node1.underlay_ip.clone(),
        host_network: true,
        tap_id: Some(4001),
        ..ghost.clone()
    };
    // A silent IP on the Flannel-style node: the bridge path probes and still finds nothing.
    let ghost2 = podtap_cluster::Pod {
        name: "ghost-2".into(),
        ip: "10.244.2.250".into(),
        node: "node-2".into(),
        tap_id: Some(4002),
        ..ghost.clone()
    };
    inv.pods.extend([ghost, hostnet, ghost2]);
    // Atomically, as the lab writes it: the controller must never read half a file.
    let tmp = lab.inventory_path().with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&inv).unwrap()).unwrap();
    std::fs::rename(&tmp, lab.inventory_path()).unwrap();
    let (s, took_untappable) =
        wait_status(&policies, "shop", "untappable pods on both nodes", |s| {
            s.nodes
                .iter()
                .any(|n| n.node == "node-1" && n.untappable.len() == 2)
                && s.nodes
                    .iter()
                    .any(|n| n.node == "node-2" && n.untappable.len() == 1)
        });
    eprintln!("untappable pods reported after {took_untappable:?}");
    let n1 = s.nodes.iter().find(|n| n.node == "node-1").unwrap();
    let reasons: BTreeMap<&str, &str> = n1
        .untappable
        .iter()
        .map(|u| (u.pod.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("shop/ghost-1", "VethNotFound"),
            ("shop/hostnet-1", "HostNetwork")
        ]),
        "{n1:#?}"
    );
    assert_eq!(n1.tapped, 3, "the others stay tapped");
    // The reasons and details come from the agent (the controller alone knows no message).
    for u in &n1.untappable {
        let expect = if u.reason == "HostNetwork" {
            "no veth of its own"
        } else {
            "10.244.1.250"
        };
        assert!(u.message.contains(expect), "{u:?}");
    }
    let n2 = s.nodes.iter().find(|n| n.node == "node-2").unwrap();
    assert_eq!(n2.untappable[0].reason, "VethNotFound");
    assert!(
        n2.untappable[0]
            .message
            .contains("no neighbour entry for 10.244.2.250 on cni0"),
        "{n2:?}"
    );
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "PodsNotTappable"),
        "{s:#?}"
    );

    // Stop the members; the agents must leave no hook on any veth.
    let agent_logs: Vec<String> = agents.into_iter().map(Proc::stop).collect();
    let lab_now = lab.inventory().clone();
    for pod in lab_now.pods.iter().filter(|p| p.netns.is_some()) {
        let node = lab_now.nodes.iter().find(|n| n.name == pod.node).unwrap();
        let hooks = podtap_agent::program::hooks_on(node.netns.as_deref(), &pod.host_veth).unwrap();
        assert!(
            hooks.is_empty(),
            "{}/{}: {hooks:?}",
            pod.namespace,
            pod.name
        );
    }
    for b in broker_procs {
        b.stop();
    }
    let controller_log = controller.stop();

    // Each flow's copies are at one broker; the flows spread over both.
    let ip = |name: &str| -> IpAddr {
        let p = inventory.pods.iter().find(|p| p.name == name).unwrap();
        p.ip.parse().unwrap()
    };
    let tap = |name: &str| -> String {
        let p = inventory.pods.iter().find(|p| p.name == name).unwrap();
        format!("tap-{}", p.tap_id.unwrap())
    };
    let shop_at: Vec<Vec<Captured>> = brokers
        .iter()
        .map(|b| capture(&d.join(&b.name).join("shop")))
        .collect();
    let mut seen: BTreeMap<Flow, BTreeSet<usize>> = BTreeMap::new();
    for (i, cap) in shop_at.iter().enumerate() {
        for c in cap {
            if let Some(f) = flow(&c.data) {
                seen.entry(f).or_default().insert(i);
            }
        }
    }
    let shop_pairs = [("frontend-1", "cart-2"), ("cart-1", "frontend-2")];
    let tcp_flows: Vec<(&Flow, &BTreeSet<usize>)> = seen
        .iter()
        .filter(|(f, _)| {
            f.2 == 6
                && shop_pairs.iter().any(|(a, b)| {
                    let pair = BTreeSet::from([ip(a), ip(b)]);
                    pair == BTreeSet::from([f.0.0, f.1.0])
                })
        })
        .collect();
    assert_eq!(tcp_flows.len(), 16, "{:?}", tcp_flows);
    for (f, at) in &tcp_flows {
        assert_eq!(at.len(), 1, "flow {f:?} was split over brokers {at:?}");
        // Its broker has it from both pods' veths, both directions.
        let b = *at.iter().next().unwrap();
        let pods: Vec<&str> = [f.0.0, f.1.0]
            .iter()
            .map(|a| {
                inventory
                    .pods
                    .iter()
                    .find(|p| p.ip.parse::<IpAddr>().ok() == Some(*a))
                    .unwrap()
                    .name
                    .as_str()
            })
            .collect();
        for pod in &pods {
            for direction in [1, 2] {
                let n = shop_at[b]
                    .iter()
                    .filter(|c| c.interface == tap(pod) && c.direction == direction)
                    .filter(|c| flow(&c.data) == Some(**f))
                    .count();
                // SYN or SYN-ACK, 2 messages or their echoes, ACKs, FIN: at least 4 each way.
                assert!(
                    n >= 4,
                    "flow {f:?}: {n} copies at {pod} direction {direction}"
                );
            }
        }
    }
    let per_broker: Vec<usize> = (0..2)
        .map(|i| tcp_flows.iter().filter(|(_, at)| at.contains(&i)).count())
        .collect();
    eprintln!("TCP flows per broker: {per_broker:?}");
    assert!(
        per_broker.iter().all(|&n| n > 0),
        "all flows on one broker: {per_broker:?}"
    );

    // Both ends of each shop flow were copied: frontend-1's and cart-2's veths, both ways.
    let all_shop: Vec<&Captured> = shop_at.iter().flatten().collect();
    for (pod, peer) in [
        ("frontend-1", "cart-2"),
        ("cart-2", "frontend-1"),
        ("cart-1", "frontend-2"),
        ("frontend-2", "cart-1"),
    ] {
        for direction in [1, 2] {
            let n = all_shop
                .iter()
                .filter(|c| c.interface == tap(pod) && c.direction == direction)
                .filter(|c| flow(&c.data).is_some_and(|f| [f.0.0, f.1.0].contains(&ip(peer))))
                .count();
            // 8 connections, each at least SYN/ACK/2 messages/FIN one way.
            assert!(
                n >= 8 * 4,
                "{pod} direction {direction} with {peer}: {n} copies"
            );
        }
    }

    // ledger-out: only what the ledger pods send, only UDP: exactly the 6 datagrams.
    let ledger: Vec<Captured> = brokers
        .iter()
        .flat_map(|b| capture(&d.join(&b.name).join("ledger")))
        .collect();
    assert_eq!(
        ledger.len(),
        6,
        "{:?}",
        ledger.iter().map(|c| flow(&c.data)).collect::<Vec<_>>()
    );
    for c in &ledger {
        let k = podtap_agent::flow::flow_key(&c.data).unwrap();
        assert_eq!(
            (k.src, k.dst, k.proto, c.direction),
            (ip("ledger-1"), ip("frontend-2"), 17, 2)
        );
        assert_eq!(c.interface, tap("ledger-1"));
    }

    // The summaries list what was not tapped, with the agent's reasons.
    assert!(
        agent_logs[0].contains("not tapped: shop/hostnet-1: HostNetwork:"),
        "{}",
        agent_logs[0]
    );
    assert!(
        agent_logs[1].contains("not tapped: shop/ghost-2: VethNotFound:"),
        "{}",
        agent_logs[1]
    );
    assert!(!controller_log.contains("panicked"), "{controller_log}");
}
