//! Real-namespace tests of the lab (run as root): calico, flannel and mixed labs, traffic on one
//! node and across nodes, the inventory, add/remove pod, idempotent `up` and repeated `down`.
//!
//! Every lab is named `tl{tag}{pid}` and lives in a `LabGuard` with its state in a temporary
//! directory; labs of dead test processes are swept at start.

use std::collections::BTreeMap;
use std::sync::Once;

use podtap_cluster::{Cni, Inventory, PodRef};
use podtap_lab::netns::list_netns;
use podtap_lab::traffic::PodServers;
use podtap_lab::{
    Lab, LabError, LabGuard, LabSpec, Traffic, TrafficReport, link_exists, link_stats, naming,
};

/// Lab name of this test process for `tag` (one letter per test).
fn lab_name(tag: &str) -> String {
    format!("tl{tag}{}", std::process::id())
}

/// Takes down `tl*` labs whose test process is gone.
fn sweep_dead_test_labs() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        for netns in list_netns().unwrap() {
            let Some(lab) = netns
                .strip_prefix("pt-tl")
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            let pid: String = lab.chars().skip(1).collect();
            if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                Lab::down(&format!("tl{lab}")).unwrap();
            }
        }
    });
}

/// A lab in a guard with its state in a temporary directory (dropped after the guard).
fn lab(tag: &str, nodes: Vec<Cni>, pods_per_node: usize) -> (LabGuard, tempfile::TempDir) {
    sweep_dead_test_labs();
    let root = tempfile::tempdir().unwrap();
    let spec = LabSpec::new(&lab_name(tag), nodes, pods_per_node);
    (LabGuard::up_in(root.path(), &spec).unwrap(), root)
}

/// Drops the guard, then checks no netns of the lab is left.
fn finish(guard: LabGuard) {
    let prefix = naming::lab_prefix(guard.name());
    drop(guard);
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn pod(s: &str) -> PodRef {
    PodRef::parse(s).unwrap()
}

/// Checks that a report got back exactly what was sent.
fn assert_complete(r: &TrafficReport, packets: u64, bytes: u64, what: &str) {
    assert_eq!(
        (r.sent_packets, r.sent_bytes, r.errors),
        (packets, bytes, 0),
        "{what}: {r:?}"
    );
    assert_eq!(
        (r.received_packets, r.received_bytes),
        (packets, bytes),
        "{what}: {r:?}"
    );
}

/// UDP echo, TCP bulk and HTTP from `from` to `to`, each checked against what was sent.
fn drive_all(lab: &Lab, from: &str, to: &str) {
    let (from, to) = (pod(from), pod(to));
    let what = format!("{from} -> {to}");
    let r = lab
        .drive(
            &from,
            &to,
            &Traffic::UdpEcho {
                count: 20,
                size: 200,
            },
        )
        .unwrap();
    assert_complete(&r, 20, 4000, &format!("udp echo {what}"));
    let r = lab
        .drive(&from, &to, &Traffic::TcpBulk { bytes: 3 << 20 })
        .unwrap();
    assert_complete(&r, 1, 3 << 20, &format!("tcp bulk {what}"));
    let r = lab
        .drive(&from, &to, &Traffic::HttpGet { requests: 5 })
        .unwrap();
    assert_eq!(
        (r.sent_packets, r.received_packets, r.errors),
        (5, 5, 0),
        "http {what}: {r:?}"
    );
    assert!(r.received_bytes > 0, "http {what}: {r:?}");
}

/// The inventory file matches the lab, and every pod's netns and host veth exist.
fn check_inventory(lab: &Lab, pods: usize) {
    let on_disk = Inventory::load(&lab.inventory_path()).unwrap();
    assert_eq!(&on_disk, lab.inventory());
    assert_eq!(on_disk.cluster, lab.name());
    assert_eq!(on_disk.pods.len(), pods);
    let mut ips: Vec<&str> = on_disk.pods.iter().map(|p| p.ip.as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods, "pod IPs are unique");
    for p in &on_disk.pods {
        let node = on_disk.node(&p.node).unwrap();
        let node_ns = node.netns.as_deref().unwrap();
        assert!(
            link_exists(node_ns, &p.host_veth).unwrap(),
            "{}/{}: host veth {} not in {node_ns}",
            p.namespace,
            p.name,
            p.host_veth
        );
        let prefix = match node.cni {
            Cni::Flannel => "veth",
            Cni::Calico => "cali",
        };
        assert!(p.host_veth.starts_with(prefix), "{}", p.host_veth);
        assert!(podtap_lab::netns::netns_exists(p.netns.as_deref().unwrap()));
        assert!(on_disk.namespaces.iter().any(|n| n.name == p.namespace));
    }
}

/// Packets sent on `dev` in `netns` while `f` runs.
fn tx_during(netns: &str, dev: &str, f: impl FnOnce()) -> u64 {
    let before = link_stats(netns, dev).unwrap().tx_packets;
    f();
    link_stats(netns, dev).unwrap().tx_packets - before
}

fn udp_echo(lab: &Lab, from: &str, to: &str, count: u32) {
    let r = lab
        .drive(&pod(from), &pod(to), &Traffic::UdpEcho { count, size: 64 })
        .unwrap();
    assert_complete(
        &r,
        count.into(),
        u64::from(count) * 64,
        &format!("{from} -> {to}"),
    );
}

#[test]
fn calico_lab_routes_without_encapsulation() {
    let (guard, _root) = lab("c", vec![Cni::Calico; 2], 3);
    check_inventory(&guard, 6);
    drive_all(&guard, "shop/frontend-1", "shop/cart-1");
    drive_all(&guard, "shop/frontend-1", "payments/ledger-2");

    let n1 = guard.node_netns("node-1").unwrap().to_string();
    for node in ["node-1", "node-2"] {
        let ns = guard.node_netns(node).unwrap();
        let vxlan = std::process::Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "type", "vxlan"])
            .output()
            .unwrap();
        assert!(
            vxlan.status.success() && vxlan.stdout.is_empty(),
            "{node} has a vxlan link"
        );
    }
    // Cross-node packets leave node-1 plainly on eth0.
    let sent = tx_during(&n1, "eth0", || {
        udp_echo(&guard, "shop/cart-1", "shop/cart-2", 30)
    });
    assert!(sent >= 30, "node-1 eth0 sent {sent}");

    let r = guard
        .drive(
            &pod("shop/cart-2"),
            &pod("shop/frontend-1"),
            &Traffic::TcpEcho {
                messages: 10,
                size: 3000,
            },
        )
        .unwrap();
    assert_complete(&r, 10, 30_000, "tcp echo");
    let r = guard
        .drive(
            &pod("shop/cart-2"),
            &pod("shop/frontend-1"),
            &Traffic::Ping { count: 3 },
        )
        .unwrap();
    assert_complete(&r, 3, 3 * 56, "ping");
    let r = guard
        .drive(
            &pod("payments/ledger-1"),
            &pod("shop/frontend-2"),
            &Traffic::UdpFlood {
                count: 500,
                size: 1000,
                rate_pps: Some(5000),
            },
        )
        .unwrap();
    assert_complete(&r, 500, 500_000, "paced udp flood");
    finish(guard);
}

#[test]
fn flannel_lab_crosses_nodes_over_vxlan() {
    let (guard, _root) = lab("f", vec![Cni::Flannel; 2], 3);
    check_inventory(&guard, 6);
    drive_all(&guard, "shop/frontend-1", "payments/ledger-1");
    drive_all(&guard, "shop/frontend-1", "shop/cart-2");

    let n1 = guard.node_netns("node-1").unwrap().to_string();
    let vxlan = naming::FLANNEL_VXLAN;
    let cross = tx_during(&n1, vxlan, || {
        udp_echo(&guard, "shop/cart-1", "shop/cart-2", 30)
    });
    assert!(
        cross >= 30,
        "flannel.1 on node-1 sent {cross} packets for 30 cross-node datagrams"
    );
    let local = tx_during(&n1, vxlan, || {
        udp_echo(&guard, "shop/cart-1", "shop/frontend-1", 30)
    });
    assert_eq!(local, 0, "same-node traffic must not use flannel.1");

    let r = guard
        .drive(
            &pod("shop/cart-2"),
            &pod("shop/frontend-1"),
            &Traffic::Ping { count: 3 },
        )
        .unwrap();
    assert_complete(&r, 3, 3 * 56, "ping");
    // Full-size TCP segments through the overlay (pod MTU 1450).
    let r = guard
        .drive(
            &pod("shop/cart-2"),
            &pod("shop/frontend-1"),
            &Traffic::TcpEcho {
                messages: 5,
                size: 20_000,
            },
        )
        .unwrap();
    assert_complete(&r, 5, 100_000, "tcp echo");
    finish(guard);
}

#[test]
fn mixed_lab_uses_vxlan_only_between_flannel_nodes() {
    let (guard, _root) = lab("m", vec![Cni::Calico, Cni::Flannel, Cni::Flannel], 2);
    check_inventory(&guard, 6);
    // Every pod reaches every other pod.
    let pods: Vec<String> = guard
        .inventory()
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    for from in &pods {
        for to in &pods {
            if from != to {
                udp_echo(&guard, from, to, 2);
            }
        }
    }
    drive_all(&guard, "shop/frontend-2", "shop/cart-3");
    drive_all(&guard, "shop/frontend-1", "shop/cart-3");

    let n2 = guard.node_netns("node-2").unwrap().to_string();
    let vxlan = naming::FLANNEL_VXLAN;
    let to_flannel = tx_during(&n2, vxlan, || {
        udp_echo(&guard, "shop/cart-2", "shop/cart-3", 20)
    });
    assert!(
        to_flannel >= 20,
        "flannel -> flannel went over flannel.1: {to_flannel}"
    );
    let to_calico = tx_during(&n2, vxlan, || {
        udp_echo(&guard, "shop/cart-2", "shop/cart-1", 20)
    });
    assert_eq!(
        to_calico, 0,
        "flannel -> calico is routed, not encapsulated"
    );
    finish(guard);
}

#[test]
fn add_and_remove_pods() {
    let (mut guard, _root) = lab("a", vec![Cni::Flannel, Cni::Calico], 1);
    let labels: BTreeMap<String, String> = [("app".to_string(), "extra".to_string())].into();
    for node in ["node-1", "node-2"] {
        let name = format!("extra-{}", &node[5..]);
        let p = guard.add_pod(node, "tools", &name, labels.clone()).unwrap();
        assert_eq!(p.node, node);
        assert!(link_exists(guard.node_netns(node).unwrap(), &p.host_veth).unwrap());
    }
    check_inventory(&guard, 4);
    let on_disk = Inventory::load(&guard.inventory_path()).unwrap();
    assert!(on_disk.pod(&pod("tools/extra-2")).is_some());
    assert!(on_disk.namespaces.iter().any(|n| n.name == "tools"));
    udp_echo(&guard, "tools/extra-1", "tools/extra-2", 5);
    udp_echo(&guard, "shop/frontend-2", "tools/extra-1", 5);

    assert!(matches!(
        guard.add_pod("node-1", "tools", "extra-1", BTreeMap::new()),
        Err(LabError::PodExists { .. })
    ));
    assert!(matches!(
        guard.add_pod("node-9", "tools", "x", BTreeMap::new()),
        Err(LabError::UnknownNode { .. })
    ));
    assert!(matches!(
        guard.add_pod("node-1", "Tools", "x", BTreeMap::new()),
        Err(LabError::BadPod { .. })
    ));

    let removed = guard
        .inventory()
        .pod(&pod("tools/extra-2"))
        .unwrap()
        .clone();
    guard.remove_pod(&pod("tools/extra-2")).unwrap();
    let node2 = guard.node_netns("node-2").unwrap().to_string();
    assert!(!link_exists(&node2, &removed.host_veth).unwrap());
    assert!(!podtap_lab::netns::netns_exists(
        removed.netns.as_deref().unwrap()
    ));
    let on_disk = Inventory::load(&guard.inventory_path()).unwrap();
    assert!(on_disk.pod(&pod("tools/extra-2")).is_none());
    assert!(matches!(
        guard.remove_pod(&pod("tools/extra-2")),
        Err(LabError::UnknownPod { .. })
    ));
    // The freed slot is reused, under the same host veth name.
    let again = guard.add_pod("node-2", "tools", "extra-2", labels).unwrap();
    assert_eq!(
        (again.ip.as_str(), again.host_veth.as_str()),
        (removed.ip.as_str(), removed.host_veth.as_str())
    );
    udp_echo(&guard, "tools/extra-1", "tools/extra-2", 5);
    check_inventory(&guard, 4);
    finish(guard);
}

#[test]
fn up_is_idempotent_and_down_cleans_up_after_a_crash() {
    sweep_dead_test_labs();
    let root = tempfile::tempdir().unwrap();
    let name = lab_name("i");
    let spec = LabSpec::new(&name, vec![Cni::Calico, Cni::Flannel], 1);
    let first = Lab::up_in(root.path(), &spec).unwrap();
    let again = Lab::up_in(root.path(), &spec).unwrap();
    assert_eq!(first.inventory(), again.inventory());
    let other = LabSpec::new(&name, vec![Cni::Calico], 1);
    let err = Lab::up_in(root.path(), &other).unwrap_err();
    assert!(matches!(err, LabError::SpecMismatch { .. }), "{err}");
    assert!(err.to_string().contains("down"), "{err}");

    // A lost pod namespace: `up` rebuilds the lab.
    let lost = first.inventory().pods[0].netns.clone().unwrap();
    std::process::Command::new("ip")
        .args(["netns", "del", &lost])
        .status()
        .unwrap();
    let rebuilt = Lab::up_in(root.path(), &spec).unwrap();
    assert!(rebuilt.missing_netns().is_empty());
    udp_echo(&rebuilt, "shop/frontend-1", "shop/frontend-2", 3);

    // A crash that lost the state: `down` still finds every namespace by prefix.
    std::fs::remove_dir_all(rebuilt.state_dir()).unwrap();
    assert!(matches!(
        Lab::open_in(root.path(), &name),
        Err(LabError::NotFound { .. })
    ));
    let report = Lab::down_in(root.path(), &name).unwrap();
    assert_eq!(report.removed_netns.len(), 1 + 2 + 2, "{report:?}");
    assert!(!report.removed_state_dir);
    let report = Lab::down_in(root.path(), &name).unwrap();
    assert!(report.removed_netns.is_empty() && !report.removed_state_dir);

    // State left without namespaces (e.g. after a reboot): `up` rebuilds too.
    let up = Lab::up_in(root.path(), &spec).unwrap();
    Lab::down_in(root.path(), &name).unwrap();
    std::fs::create_dir_all(up.state_dir()).unwrap();
    std::fs::write(
        up.state_dir().join(podtap_lab::SPEC_FILE),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    up.inventory().save(&up.inventory_path()).unwrap();
    let up = Lab::up_in(root.path(), &spec).unwrap();
    assert!(up.missing_netns().is_empty());
    let report = Lab::down_in(root.path(), &name).unwrap();
    assert_eq!(report.removed_netns.len(), 5);
    assert!(report.removed_state_dir);
}

#[test]
fn drive_reuses_servers_this_process_runs() {
    let (guard, _root) = lab("s", vec![Cni::Calico], 2);
    let to = pod("shop/cart-1");
    let target = guard.inventory().pod(&to).unwrap().clone();
    let servers =
        PodServers::start(target.netns.as_deref().unwrap(), target.ip.parse().unwrap()).unwrap();
    let r = guard
        .drive(
            &pod("shop/frontend-1"),
            &to,
            &Traffic::TcpBulk { bytes: 100_000 },
        )
        .unwrap();
    assert_complete(&r, 1, 100_000, "tcp bulk to running servers");
    let r = guard
        .drive(
            &pod("shop/frontend-1"),
            &to,
            &Traffic::UdpFlood {
                count: 50,
                size: 100,
                rate_pps: None,
            },
        )
        .unwrap();
    assert_eq!(r.sent_packets, 50);
    let stats = servers.stats();
    assert_eq!(stats.tcp_sink_bytes, 100_000);
    assert_eq!(stats.udp_sink_datagrams, r.received_packets);
    drop(servers);
    finish(guard);
}

#[test]
fn invalid_specs_are_refused_before_anything_is_built() {
    let err = Lab::up(&LabSpec::new("Bad_Name", vec![], 3)).unwrap_err();
    let LabError::InvalidSpec { problems } = err else {
        panic!("expected InvalidSpec, got {err}");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(matches!(Lab::down("a-b"), Err(LabError::BadName { .. })));
}
