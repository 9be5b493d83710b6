//! The inventory: which nodes and pods exist, where each pod's network lives, and the host-side
//! veth that carries its traffic. The lab writes it (`podtap lab up`); the agent reads it and
//! re-reads it when it changes.
//!
//! On disk it is one JSON document, replaced atomically (write to a temporary file, then rename)
//! so that a reader never sees half a file.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read or written.
    #[error("inventory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a valid inventory document.
    #[error("inventory {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A pod reference was not of the form `namespace/name`.
    #[error("bad pod reference {given:?}: expected namespace/name")]
    BadPodRef { given: String },
}

/// The data-plane style a node's pod network is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    /// Flannel-style: pods on a Linux bridge `cni0`, nodes joined by a VXLAN overlay.
    Flannel,
    /// Calico-style: no bridge; `cali*` host veths with /32 routes and proxy ARP, routed
    /// between nodes.
    Calico,
}

impl fmt::Display for Cni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cni::Flannel => "flannel",
            Cni::Calico => "calico",
        })
    }
}

impl std::str::FromStr for Cni {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flannel" => Ok(Cni::Flannel),
            "calico" => Ok(Cni::Calico),
            other => Err(format!(
                "unknown CNI style {other:?} (expected flannel or calico)"
            )),
        }
    }
}

/// A node: the host whose network namespace holds the pods' host-side veths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name, as Kubernetes would show it.
    pub name: String,
    /// Network namespace of the node's host network (`ip netns` name), or `None` for the
    /// namespace the agent itself runs in (a real node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Data-plane style of this node's pod network.
    pub cni: Cni,
    /// The node's pod CIDR, e.g. `10.244.1.0/24`.
    pub pod_cidr: String,
    /// The node's address on the underlay.
    pub underlay_ip: String,
}

/// A Kubernetes namespace and its labels (namespace selectors match these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod and where its traffic can be tapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Name of the node the pod runs on.
    pub node: String,
    /// The pod's IP address.
    pub ip: String,
    /// The host-side veth of the pod's interface, in the node's network namespace. Empty when
    /// not known to whoever wrote the inventory (the controller's Kubernetes view): the agent
    /// then finds it from the pod's IP.
    #[serde(default)]
    pub host_veth: String,
    /// The pod uses the node's network namespace (`hostNetwork: true`): it has no veth of its
    /// own and cannot be tapped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// The pod's own network namespace (`ip netns` name), where the lab knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Tap point id (1-16383), unique in the cluster while the pod lives: what tunnels carry to
    /// say which pod a copy comes from. Assigned by whoever owns the inventory (the lab, or the
    /// controller); pods without one are labelled unknown (0) in tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_id: Option<u16>,
}

/// The largest tap point id (14 bits: in tunnel labels the 15th marks the pod's decrypted
/// view and the 16th the direction).
pub const MAX_TAP_ID: u16 = 0x3fff;

impl Pod {
    /// The pod's `namespace/name`.
    pub fn key(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// A reference to a pod by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Result<Self, InventoryError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(InventoryError::BadPodRef {
                given: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything podtap knows about the cluster's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Cluster (or lab) name.
    pub cluster: String,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
}

impl Inventory {
    /// Reads an inventory file.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let bytes = std::fs::read(path).map_err(|source| InventoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| InventoryError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the inventory atomically: readers see the old or the new file, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), InventoryError> {
        let io_err = |source| InventoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let json = serde_json::to_vec_pretty(self).map_err(|e| io_err(io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod with this reference.
    pub fn pod(&self, pod: &PodRef) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == pod.namespace && p.name == pod.name)
    }

    /// A tap id no pod uses: one above the highest in use, or the lowest free one after
    /// wrapping. None when all are taken.
    pub fn free_tap_id(&self) -> Option<u16> {
        let used: std::collections::BTreeSet<u16> =
            self.pods.iter().filter_map(|p| p.tap_id).collect();
        let next = used.last().map_or(1, |m| m.saturating_add(1));
        if (1..=MAX_TAP_ID).contains(&next) {
            return Some(next);
        }
        (1..=MAX_TAP_ID).find(|id| !used.contains(id))
    }

    /// The pod with this tap id.
    pub fn pod_by_tap_id(&self, tap: u16) -> Option<&Pod> {
        self.pods.iter().find(|p| p.tap_id == Some(tap))
    }

    /// Labels of a namespace (empty when the namespace is not listed).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .iter()
            .find(|n| n.name == namespace)
            .map(|n| n.labels.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ref_parses_and_rejects() {
        let r = PodRef::parse("shop/cart-1").unwrap();
        assert_eq!(r.to_string(), "shop/cart-1");
        for bad in ["", "shop", "/x", "x/", "a/b/c"] {
            assert!(PodRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.json");
        let inv = Inventory {
            cluster: "lab".into(),
            nodes: vec![Node {
                name: "node-1".into(),
                netns: Some("pt-lab-n1".into()),
                cni: Cni::Calico,
                pod_cidr: "10.244.1.0/24".into(),
                underlay_ip: "198.18.0.11".into(),
            }],
            namespaces: vec![],
            pods: vec![Pod {
                namespace: "shop".into(),
                name: "cart-1".into(),
                labels: [("app".to_string(), "cart".to_string())].into(),
                node: "node-1".into(),
                ip: "10.244.1.2".into(),
                host_veth: "cali0123456789a".into(),
                host_network: false,
                netns: Some("pt-lab-n1-p1".into()),
                tap_id: Some(1),
            }],
        };
        inv.save(&path).unwrap();
        assert_eq!(Inventory::load(&path).unwrap(), inv);
    }

    #[test]
    fn free_tap_ids_go_up_then_wrap() {
        let pod = |tap| Pod {
            namespace: "ns".into(),
            name: format!("p{tap}"),
            labels: Default::default(),
            node: "n".into(),
            ip: "10.0.0.1".into(),
            host_veth: "v".into(),
            host_network: false,
            netns: None,
            tap_id: Some(tap),
        };
        let mut inv = Inventory::default();
        assert_eq!(inv.free_tap_id(), Some(1));
        inv.pods = vec![pod(1), pod(7)];
        assert_eq!(inv.free_tap_id(), Some(8));
        assert_eq!(inv.pod_by_tap_id(7).map(|p| p.name.as_str()), Some("p7"));
        inv.pods = vec![pod(MAX_TAP_ID), pod(1)];
        assert_eq!(inv.free_tap_id(), Some(2));
    }

    #[test]
    fn load_reports_path_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Inventory::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("not valid"),
            "{err}"
        );
    }
}
