//! Finding a pod's veth from its IP (run as root): on a Calico-style node the route leads to
//! the veth, on a Flannel-style node to the bridge and then through the neighbour and
//! forwarding tables; both must give exactly the veth the lab made, also for a silent pod
//! whose entries were flushed. Addresses that are not pods of the node are refused with why.

use podtap_agent::discover::find_veth;
use podtap_cluster::Cni;
use podtap_testkit::lab;

#[test]
fn every_pods_veth_is_found_from_its_ip_on_both_cni_styles() {
    let lab = lab("disc", vec![Cni::Calico, Cni::Flannel], 2);
    let inv = lab.inventory().clone();
    assert_eq!(inv.pods.len(), 4);
    for node in &inv.nodes {
        let ns = node.netns.as_deref();
        if node.cni == Cni::Flannel {
            // Forget what the node learned: discovery must probe a silent pod.
            let ns = ns.unwrap();
            let run = |args: &[&str]| {
                let ok = std::process::Command::new("ip")
                    .args(["-n", ns])
                    .args(args)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "ip {args:?}");
            };
            run(&["neigh", "flush", "dev", "cni0"]);
            run(&["link", "set", "cni0", "type", "bridge", "fdb_flush"]);
            let neigh = std::process::Command::new("ip")
                .args(["-n", ns, "neigh", "show", "dev", "cni0"])
                .output()
                .unwrap();
            let left = String::from_utf8_lossy(&neigh.stdout);
            assert!(
                left.lines()
                    .all(|l| l.contains("FAILED") || l.contains("INCOMPLETE")),
                "neighbours left: {left}"
            );
        }
        for pod in inv.pods.iter().filter(|p| p.node == node.name) {
            let ip = pod.ip.parse().expect("lab pods have IPs");
            assert_eq!(
                find_veth(ns, ip).as_deref(),
                Ok(pod.host_veth.as_str()),
                "{}/{} on {} ({:?})",
                pod.namespace,
                pod.name,
                node.name,
                node.cni
            );
        }
        // A pod of the other node: the route leaves through the underlay or the overlay.
        let elsewhere = inv.pods.iter().find(|p| p.node != node.name).unwrap();
        let err = find_veth(ns, elsewhere.ip.parse().unwrap()).unwrap_err();
        // Calico and Flannel nodes route to each other over the underlay.
        assert!(err.contains("goes via 198.18.0."), "{err}");
        assert!(err.contains("is the pod on this node?"), "{err}");
        // The node's own address.
        let err = find_veth(ns, node.underlay_ip.parse().unwrap()).unwrap_err();
        assert!(err.contains("address of the node itself"), "{err}");
    }
}
