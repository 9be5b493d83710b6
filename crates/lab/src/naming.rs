//! Names and addresses of everything a lab creates, derived from the lab name and the node and
//! pod indices alone (no I/O), so that `up`, `down`, `status` and the tests agree on them.
//!
//! Lab `NAME`: underlay netns `pt-NAME-ul` (bridge `ul0`, 198.18.0.1/24), node `i` (1-based)
//! netns `pt-NAME-n{i}` with `eth0` = 198.18.0.{10+i}, pod slot `j` (1-based) on node `i`
//! netns `pt-NAME-n{i}p{j}` with IP 10.244.{i}.{j+1} out of the node's pod CIDR 10.244.{i}.0/24.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use podtap_cluster::Cni;

use crate::LabError;

/// Every network namespace podtap creates starts with this prefix.
pub const NETNS_PREFIX: &str = "pt-";
/// Longest lab name.
pub const MAX_LAB_NAME: usize = 12;
/// Most nodes in one lab.
pub const MAX_NODES: usize = 32;
/// Most pods on one node (pod IPs .2 to .254 of the node's /24).
pub const MAX_PODS_PER_NODE: usize = 253;
/// MTU of the underlay (node `eth0`, the underlay bridge): room for VXLAN-mirrored full frames.
pub const UNDERLAY_MTU: u32 = 1550;
/// MTU of flannel-style pod interfaces, `cni0` and `flannel.1`.
pub const FLANNEL_MTU: u32 = 1450;
/// MTU of calico-style pod interfaces.
pub const CALICO_MTU: u32 = 1500;
/// The underlay bridge in the underlay netns.
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The underlay's gateway address (on `ul0`); nodes' default route points to it.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of the underlay network 198.18.0.0/24.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The node's underlay interface (and the pod's interface, in the pod netns).
pub const ETH0: &str = "eth0";
/// Flannel-style pod bridge.
pub const FLANNEL_BRIDGE: &str = "cni0";
/// Flannel-style VXLAN device.
pub const FLANNEL_VXLAN: &str = "flannel.1";
/// VXLAN network identifier of `flannel.1`.
pub const FLANNEL_VNI: u32 = 1;
/// UDP port of flannel's VXLAN backend.
pub const FLANNEL_VXLAN_PORT: u16 = 8472;
/// MAC address of every calico-style host veth.
pub const CALICO_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The link-local gateway calico-style pods route through (answered by proxy ARP).
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Checks that a lab name is `[a-z0-9]{1,12}`.
pub fn validate_lab_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LAB_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName {
            name: name.to_string(),
        })
    }
}

/// Prefix of every network namespace of lab `lab`: `pt-{lab}-`.
pub fn lab_prefix(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-")
}

/// The underlay network namespace of a lab.
pub fn underlay_netns(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-ul")
}

/// The network namespace of node `node` (1-based).
pub fn node_netns(lab: &str, node: usize) -> String {
    format!("{NETNS_PREFIX}{lab}-n{node}")
}

/// The network namespace of the pod in slot `slot` (1-based) of node `node`.
pub fn pod_netns(lab: &str, node: usize, slot: usize) -> String {
    format!("{NETNS_PREFIX}{lab}-n{node}p{slot}")
}

/// Kubernetes-style name of node `node`: `node-{node}`.
pub fn node_name(node: usize) -> String {
    format!("node-{node}")
}

/// Name of the underlay-side veth of node `node`, in the underlay netns.
pub fn underlay_port(node: usize) -> String {
    format!("n{node}")
}

/// Netns of lab host `name` (a broker, a tool, a collector on the underlay).
pub fn host_netns(lab: &str, name: &str) -> String {
    format!("{}h-{name}", lab_prefix(lab))
}

/// Underlay port (in the underlay netns) of host number `index` (1-based).
pub fn host_port(index: usize) -> String {
    format!("h{index}")
}

/// Underlay address of host number `index` (1-based): 198.18.0.{100+index}.
pub fn host_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, octet(100 + index))
}

/// The most hosts a lab can have.
pub const MAX_HOSTS: usize = 100;

/// Underlay address of node `node`: 198.18.0.{10+node}.
pub fn underlay_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, octet(10 + node))
}

/// Network address of node `node`'s pod CIDR: 10.244.{node}.0.
pub fn pod_network(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, octet(node), 0)
}

/// Node `node`'s pod CIDR as text: `10.244.{node}.0/24`.
pub fn pod_cidr(node: usize) -> String {
    format!("{}/24", pod_network(node))
}

/// IP of the pod in slot `slot` of node `node`: 10.244.{node}.{slot+1}.
pub fn pod_ip(node: usize, slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, octet(node), octet(slot + 1))
}

/// The slot of a pod IP on node `node`, if it is one.
pub fn pod_slot(node: usize, ip: Ipv4Addr) -> Option<usize> {
    let [a, b, c, d] = ip.octets();
    let slot = usize::from(d).checked_sub(1)?;
    ((a, b, usize::from(c)) == (10, 244, node) && (1..=MAX_PODS_PER_NODE).contains(&slot))
        .then_some(slot)
}

/// Address of `cni0` on a flannel-style node: 10.244.{node}.1.
pub fn flannel_gateway(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, octet(node), 1)
}

/// Address of `flannel.1` on a flannel-style node (the VTEP): 10.244.{node}.0.
pub fn flannel_vtep_ip(node: usize) -> Ipv4Addr {
    pod_network(node)
}

/// Deterministic MAC of `flannel.1` on node `node` (locally administered, unicast).
pub fn flannel_vtep_mac(node: usize) -> String {
    format!("0e:70:74:00:{:02x}:{:02x}", (node >> 8) & 0xff, node & 0xff)
}

/// Host-side veth name of a pod: `veth` + 8 hex digits (flannel) or `cali` + 11 hex digits
/// (calico), from a stable hash of `namespace/name`.
pub fn host_veth(cni: Cni, namespace: &str, name: &str) -> String {
    let hash = format!("{:016x}", fnv1a64(format!("{namespace}/{name}").as_bytes()));
    match cni {
        Cni::Flannel => format!("veth{}", &hash[..8]),
        Cni::Calico => format!("cali{}", &hash[..11]),
    }
}

/// FNV-1a, 64 bits: small, stable across processes and releases.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One octet of an address; indices are validated far below 256 before they get here.
fn octet(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// The apps default pods cycle through, with their Kubernetes namespace and tier.
const APPS: [(&str, &str, &str); 3] = [
    ("frontend", "shop", "web"),
    ("cart", "shop", "api"),
    ("ledger", "payments", "db"),
];

/// A pod of the default layout: what `up` puts in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPod {
    /// Kubernetes namespace (`shop` or `payments`).
    pub namespace: String,
    /// Pod name: `{app}-{node}`, and `{app}-{node}-{round}` from the second round of apps on.
    pub name: String,
    /// `app` and `tier` labels.
    pub labels: BTreeMap<String, String>,
}

/// The default pod for slot `slot` (1-based) of node `node`: apps cycle over frontend, cart,
/// ledger.
pub fn default_pod(node: usize, slot: usize) -> DefaultPod {
    let index = slot.saturating_sub(1);
    let (app, namespace, tier) = APPS[index % APPS.len()];
    let round = index / APPS.len();
    let name = if round == 0 {
        format!("{app}-{node}")
    } else {
        format!("{app}-{node}-{}", round + 1)
    };
    DefaultPod {
        namespace: namespace.to_string(),
        name,
        labels: [("app", app), ("tier", tier)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Labels of the default layout's Kubernetes namespaces: `team={namespace}`.
pub fn default_namespace_labels(namespace: &str) -> BTreeMap<String, String> {
    [("team".to_string(), namespace.to_string())].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for good in ["lab", "a", "t123456789ab", "0"] {
            assert!(validate_lab_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Lab", "a-b", "a_b", "t123456789abc", "pt lab", "é"] {
            assert!(validate_lab_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netns_names_share_the_lab_prefix() {
        let prefix = lab_prefix("lab");
        assert_eq!(prefix, "pt-lab-");
        assert_eq!(underlay_netns("lab"), "pt-lab-ul");
        assert_eq!(node_netns("lab", 2), "pt-lab-n2");
        assert_eq!(pod_netns("lab", 2, 3), "pt-lab-n2p3");
        for n in [
            underlay_netns("lab"),
            node_netns("lab", 1),
            pod_netns("lab", 1, 1),
        ] {
            assert!(n.starts_with(&prefix));
            // A lab whose name extends this one's never matches its prefix.
            assert!(!n.starts_with(&lab_prefix("la")));
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(underlay_ip(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(pod_cidr(2), "10.244.2.0/24");
        assert_eq!(pod_ip(1, 1), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(pod_ip(2, 3), Ipv4Addr::new(10, 244, 2, 4));
        assert_eq!(pod_slot(2, pod_ip(2, 3)), Some(3));
        assert_eq!(pod_slot(1, pod_ip(2, 3)), None);
        assert_eq!(pod_slot(1, flannel_gateway(1)), None);
        assert_eq!(pod_slot(1, flannel_vtep_ip(1)), None);
        assert_eq!(
            pod_slot(1, pod_ip(1, MAX_PODS_PER_NODE)),
            Some(MAX_PODS_PER_NODE)
        );
        assert_eq!(flannel_vtep_mac(3), "0e:70:74:00:00:03");
        assert_eq!(flannel_vtep_mac(MAX_NODES), "0e:70:74:00:00:20");
    }

    #[test]
    fn host_veths_are_stable_and_fit_ifnamsiz() {
        let f = host_veth(Cni::Flannel, "shop", "cart-1");
        let c = host_veth(Cni::Calico, "shop", "cart-1");
        assert_eq!(f, host_veth(Cni::Flannel, "shop", "cart-1"));
        assert!(f.starts_with("veth") && f.len() == 12, "{f}");
        assert!(c.starts_with("cali") && c.len() == 15, "{c}");
        assert_ne!(c, host_veth(Cni::Calico, "shop", "cart-2"));
        // Known value: the name must not change between releases (the agent may persist it).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn default_pods_cycle_over_apps_and_stay_unique() {
        let p = default_pod(1, 1);
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "frontend-1")
        );
        assert_eq!(p.labels["app"], "frontend");
        assert_eq!(p.labels["tier"], "web");
        let p = default_pod(2, 3);
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("payments", "ledger-2")
        );
        assert_eq!(p.labels["tier"], "db");
        assert_eq!(default_pod(1, 4).name, "frontend-1-2");
        let mut names: Vec<_> = (1..=3)
            .flat_map(|n| (1..=10).map(move |s| default_pod(n, s)))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total);
    }
}
