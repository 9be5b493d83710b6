//! The data plane of a lab, built with `ip` and `bridge`: the underlay, the nodes in their CNI
//! style, the routes (or VXLAN overlay) between nodes, and the pods with their veths.
//!
//! Flannel-style node: pods on bridge `cni0` (10.244.i.1/24); `flannel.1` (VXLAN id 1, port
//! 8472, 10.244.i.0/32, deterministic MAC) carries traffic to other flannel nodes, with one
//! onlink route, one permanent neighbour and one FDB entry per peer. Calico-style node: no
//! bridge; one `cali*` veth per pod with MAC ee:ee:ee:ee:ee:ee, proxy ARP and a /32 route;
//! pods route through 169.254.1.1. Traffic between two nodes is VXLAN only when both are
//! flannel-style, otherwise it is routed over the underlay without encapsulation.

use podtap_cluster::Cni;

use crate::LabError;
use crate::naming::{self, CALICO_GATEWAY, ETH0, FLANNEL_BRIDGE, FLANNEL_VXLAN, UNDERLAY_BRIDGE};
use crate::netns::{add_netns, bridge, ip, set_sysctls};

/// Creates a network namespace with `lo` up, IPv6 off and rp_filter off; `forward` turns on
/// IPv4 forwarding (nodes).
fn create_netns(netns: &str, forward: bool) -> Result<(), LabError> {
    add_netns(netns)?;
    let mut settings = vec![
        ("net/ipv6/conf/all/disable_ipv6".to_string(), "1"),
        ("net/ipv6/conf/default/disable_ipv6".to_string(), "1"),
        ("net/ipv4/conf/all/rp_filter".to_string(), "0"),
        ("net/ipv4/conf/default/rp_filter".to_string(), "0"),
    ];
    if forward {
        settings.push(("net/ipv4/ip_forward".to_string(), "1"));
    }
    set_sysctls(netns, &settings)?;
    ip(netns, &["link", "set", "lo", "up"]).map(drop)
}

/// Creates the underlay netns with bridge `ul0` (198.18.0.1/24, MTU 1550).
pub(crate) fn create_underlay(lab: &str) -> Result<(), LabError> {
    let ul = naming::underlay_netns(lab);
    create_netns(&ul, false)?;
    let mtu = naming::UNDERLAY_MTU.to_string();
    let gateway = format!(
        "{}/{}",
        naming::UNDERLAY_GATEWAY,
        naming::UNDERLAY_PREFIX_LEN
    );
    ip(
        &ul,
        &[
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "mtu",
            &mtu,
            "type",
            "bridge",
        ],
    )?;
    ip(&ul, &["addr", "add", &gateway, "dev", UNDERLAY_BRIDGE])?;
    ip(&ul, &["link", "set", UNDERLAY_BRIDGE, "up"]).map(drop)
}

/// Creates host number `index` (1-based) named `name`: a netns with `eth0` on the underlay
/// (MTU 1550) at 198.18.0.{100+index}, a default route via the underlay gateway, and routes to
/// every node's pod CIDR via that node, so it can reach pods too.
pub(crate) fn create_host(
    lab: &str,
    index: usize,
    name: &str,
    nodes: usize,
) -> Result<(), LabError> {
    let ns = naming::host_netns(lab, name);
    let ul = naming::underlay_netns(lab);
    let port = naming::host_port(index);
    let mtu = naming::UNDERLAY_MTU.to_string();
    create_netns(&ns, false)?;
    #[rustfmt::skip]
    ip(&ns, &["link", "add", ETH0, "mtu", &mtu, "type", "veth",
              "peer", "name", &port, "mtu", &mtu, "netns", &ul])?;
    ip(
        &ul,
        &["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"],
    )?;
    let addr = format!("{}/{}", naming::host_ip(index), naming::UNDERLAY_PREFIX_LEN);
    ip(&ns, &["addr", "add", &addr, "dev", ETH0])?;
    ip(&ns, &["link", "set", ETH0, "up"])?;
    let gateway = naming::UNDERLAY_GATEWAY.to_string();
    ip(
        &ns,
        &["route", "add", "default", "via", &gateway, "dev", ETH0],
    )?;
    for node in 1..=nodes {
        let cidr = naming::pod_cidr(node);
        let via = naming::underlay_ip(node).to_string();
        ip(&ns, &["route", "add", &cidr, "via", &via, "dev", ETH0])?;
    }
    Ok(())
}

/// Creates node `node` (1-based): its netns, `eth0` on the underlay, and the node-wide part of
/// its CNI (`cni0` and `flannel.1`, or calico's blackhole route for the pod CIDR).
pub(crate) fn create_node(lab: &str, node: usize, cni: Cni) -> Result<(), LabError> {
    let ns = naming::node_netns(lab, node);
    let ul = naming::underlay_netns(lab);
    let port = naming::underlay_port(node);
    let mtu = naming::UNDERLAY_MTU.to_string();
    let underlay_ip = naming::underlay_ip(node);
    create_netns(&ns, true)?;

    #[rustfmt::skip]
    ip(&ns, &["link", "add", ETH0, "mtu", &mtu, "type", "veth",
              "peer", "name", &port, "mtu", &mtu, "netns", &ul])?;
    ip(
        &ul,
        &["link", "set", &port, "master", UNDERLAY_BRIDGE, "up"],
    )?;
    let addr = format!("{underlay_ip}/{}", naming::UNDERLAY_PREFIX_LEN);
    ip(&ns, &["addr", "add", &addr, "dev", ETH0])?;
    ip(&ns, &["link", "set", ETH0, "up"])?;
    let gateway = naming::UNDERLAY_GATEWAY.to_string();
    ip(
        &ns,
        &["route", "add", "default", "via", &gateway, "dev", ETH0],
    )?;

    match cni {
        Cni::Flannel => {
            let mtu = naming::FLANNEL_MTU.to_string();
            let cni0 = format!("{}/24", naming::flannel_gateway(node));
            ip(
                &ns,
                &["link", "add", FLANNEL_BRIDGE, "mtu", &mtu, "type", "bridge"],
            )?;
            ip(&ns, &["addr", "add", &cni0, "dev", FLANNEL_BRIDGE])?;
            ip(&ns, &["link", "set", FLANNEL_BRIDGE, "up"])?;

            let mac = naming::flannel_vtep_mac(node);
            let vni = naming::FLANNEL_VNI.to_string();
            let port = naming::FLANNEL_VXLAN_PORT.to_string();
            let local = underlay_ip.to_string();
            #[rustfmt::skip]
            ip(&ns, &["link", "add", FLANNEL_VXLAN, "address", &mac, "mtu", &mtu,
                      "type", "vxlan", "id", &vni, "dstport", &port, "local", &local,
                      "dev", ETH0, "nolearning"])?;
            let vtep = format!("{}/32", naming::flannel_vtep_ip(node));
            ip(&ns, &["addr", "add", &vtep, "dev", FLANNEL_VXLAN])?;
            ip(&ns, &["link", "set", FLANNEL_VXLAN, "up"]).map(drop)
        }
        Cni::Calico => {
            let cidr = naming::pod_cidr(node);
            ip(&ns, &["route", "add", "blackhole", &cidr]).map(drop)
        }
    }
}

/// Installs, on every node, the path to every other node's pod CIDR: through `flannel.1` when
/// both ends are flannel-style, routed over the underlay otherwise.
pub(crate) fn connect_nodes(lab: &str, nodes: &[Cni]) -> Result<(), LabError> {
    for (i, &from_cni) in (1..).zip(nodes) {
        let ns = naming::node_netns(lab, i);
        for (k, &to_cni) in (1..).zip(nodes) {
            if k == i {
                continue;
            }
            let cidr = naming::pod_cidr(k);
            let peer_underlay = naming::underlay_ip(k).to_string();
            if from_cni == Cni::Flannel && to_cni == Cni::Flannel {
                let vtep = naming::flannel_vtep_ip(k).to_string();
                let mac = naming::flannel_vtep_mac(k);
                #[rustfmt::skip]
                ip(&ns, &["route", "add", &cidr, "via", &vtep, "dev", FLANNEL_VXLAN, "onlink"])?;
                #[rustfmt::skip]
                ip(&ns, &["neigh", "add", &vtep, "lladdr", &mac, "dev", FLANNEL_VXLAN,
                          "nud", "permanent"])?;
                #[rustfmt::skip]
                bridge(&ns, &["fdb", "append", &mac, "dev", FLANNEL_VXLAN,
                              "dst", &peer_underlay])?;
            } else {
                ip(
                    &ns,
                    &["route", "add", &cidr, "via", &peer_underlay, "dev", ETH0],
                )?;
            }
        }
    }
    Ok(())
}

/// Where a new pod goes and what it is called on the host.
pub(crate) struct PodPlumbing<'a> {
    /// Lab name.
    pub lab: &'a str,
    /// Node index (1-based).
    pub node: usize,
    /// The node's CNI style.
    pub cni: Cni,
    /// Pod slot on the node (1-based).
    pub slot: usize,
    /// Host-side veth name.
    pub host_veth: &'a str,
}

/// Creates a pod's netns and its veth to the node, addresses and routes on both sides.
pub(crate) fn create_pod(p: &PodPlumbing<'_>) -> Result<(), LabError> {
    let node_ns = naming::node_netns(p.lab, p.node);
    let pod_ns = naming::pod_netns(p.lab, p.node, p.slot);
    let pod_ip = naming::pod_ip(p.node, p.slot);
    let veth = p.host_veth;
    create_netns(&pod_ns, false)?;

    match p.cni {
        Cni::Flannel => {
            let mtu = naming::FLANNEL_MTU.to_string();
            #[rustfmt::skip]
            ip(&node_ns, &["link", "add", veth, "mtu", &mtu, "type", "veth",
                           "peer", "name", ETH0, "mtu", &mtu, "netns", &pod_ns])?;
            ip(
                &node_ns,
                &["link", "set", veth, "master", FLANNEL_BRIDGE, "up"],
            )?;
            let addr = format!("{pod_ip}/24");
            let gateway = naming::flannel_gateway(p.node).to_string();
            ip(&pod_ns, &["addr", "add", &addr, "dev", ETH0])?;
            ip(&pod_ns, &["link", "set", ETH0, "up"])?;
            ip(
                &pod_ns,
                &["route", "add", "default", "via", &gateway, "dev", ETH0],
            )
            .map(drop)
        }
        Cni::Calico => {
            let mtu = naming::CALICO_MTU.to_string();
            #[rustfmt::skip]
            ip(&node_ns, &["link", "add", veth, "address", naming::CALICO_HOST_MAC,
                           "mtu", &mtu, "type", "veth",
                           "peer", "name", ETH0, "mtu", &mtu, "netns", &pod_ns])?;
            // Answer the pod's ARP for 169.254.1.1 at once (the default proxy delay is up to
            // 0.8 s, random).
            set_sysctls(
                &node_ns,
                &[
                    (format!("net/ipv4/conf/{veth}/proxy_arp"), "1"),
                    (format!("net/ipv4/neigh/{veth}/proxy_delay"), "0"),
                ],
            )?;
            ip(&node_ns, &["link", "set", veth, "up"])?;
            let host = format!("{pod_ip}/32");
            #[rustfmt::skip]
            ip(&node_ns, &["route", "add", &host, "dev", veth, "scope", "link"])?;
            let gateway = CALICO_GATEWAY.to_string();
            ip(&pod_ns, &["addr", "add", &host, "dev", ETH0])?;
            ip(&pod_ns, &["link", "set", ETH0, "up"])?;
            ip(
                &pod_ns,
                &["route", "add", &gateway, "dev", ETH0, "scope", "link"],
            )?;
            ip(
                &pod_ns,
                &["route", "add", "default", "via", &gateway, "dev", ETH0],
            )
            .map(drop)
        }
    }
}
