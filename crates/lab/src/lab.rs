//! A lab's life cycle: `up` (idempotent), `open`, `down` (also after a crash), adding and
//! removing pods, and the state files `lab.json` (the spec) and `inventory.json` (what the rest
//! of podtap reads) under `/run/podtap/labs/{NAME}` (or `$PODTAP_LAB_DIR/{NAME}`).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use podtap_cluster::{Cni, Inventory, Namespace, Node, Pod, PodRef};
use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::naming::{self, MAX_NODES, MAX_PODS_PER_NODE};
use crate::netns::{del_netns, ip, netns_exists, sweep_stale};
use crate::topology::{self, PodPlumbing};

/// Default root of the labs' state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/podtap/labs";
/// Environment variable that overrides [`DEFAULT_STATE_ROOT`].
pub const STATE_ROOT_ENV: &str = "PODTAP_LAB_DIR";
/// File name of the inventory in a lab's state directory.
pub const INVENTORY_FILE: &str = "inventory.json";
/// File name of the spec in a lab's state directory; written last, so it marks a complete lab.
pub const SPEC_FILE: &str = "lab.json";

/// The root of the labs' state directories: `$PODTAP_LAB_DIR`, or `/run/podtap/labs`.
pub fn state_root() -> PathBuf {
    std::env::var_os(STATE_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
}

/// What a lab is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    /// Lab name, `[a-z0-9]{1,12}`; every netns of the lab starts with `pt-{name}-`.
    pub name: String,
    /// One entry per node (node `i` is `nodes[i-1]`): the node's CNI style.
    pub nodes: Vec<Cni>,
    /// Pods created on each node by `up`.
    pub pods_per_node: usize,
}

impl LabSpec {
    /// A spec; call [`LabSpec::validate`] (or `Lab::up`, which does) before use.
    pub fn new(name: &str, nodes: Vec<Cni>, pods_per_node: usize) -> Self {
        LabSpec {
            name: name.to_string(),
            nodes,
            pods_per_node,
        }
    }

    /// Checks the spec and reports every problem at once.
    pub fn validate(&self) -> Result<(), LabError> {
        let mut problems = Vec::new();
        if let Err(e) = naming::validate_lab_name(&self.name) {
            problems.push(e.to_string());
        }
        if self.nodes.is_empty() {
            problems.push("a lab needs at least one node".to_string());
        }
        if self.nodes.len() > MAX_NODES {
            problems.push(format!(
                "{} nodes requested, at most {MAX_NODES}",
                self.nodes.len()
            ));
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            problems.push(format!(
                "{} pods per node requested, at most {MAX_PODS_PER_NODE}",
                self.pods_per_node
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::InvalidSpec { problems })
        }
    }
}

impl fmt::Display for LabSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(Cni::to_string).collect();
        write!(
            f,
            "nodes [{}], {} pods per node",
            nodes.join(","),
            self.pods_per_node
        )
    }
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Network namespaces deleted.
    pub removed_netns: Vec<String>,
    /// Whether a state directory was there and was deleted.
    pub removed_state_dir: bool,
}

/// File (in the lab's state directory) listing its hosts.
pub const HOSTS_FILE: &str = "hosts.json";

/// A host on the lab's underlay that is not a node: where a broker, a tool or a flow collector
/// runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Its name in the lab (`[a-z0-9]{1,8}`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub ip: std::net::Ipv4Addr,
    /// Its number (1-based), which fixes its address.
    pub index: usize,
}

/// A lab that is up: its spec, its inventory and its state directory.
#[derive(Debug, Clone)]
pub struct Lab {
    spec: LabSpec,
    inventory: Inventory,
    dir: PathBuf,
}

impl Lab {
    /// Builds the lab. If a complete lab of that name already exists with the same spec, returns
    /// it; with another spec, fails with [`LabError::SpecMismatch`]. Leftovers of a lab that never
    /// finished (or whose namespaces were lost) are swept first. On failure everything built is
    /// removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        Lab::up_in(&state_root(), spec)
    }

    /// [`Lab::up`] with the state under `root` instead of [`state_root`].
    pub fn up_in(root: &Path, spec: &LabSpec) -> Result<Lab, LabError> {
        spec.validate()?;
        let dir = root.join(&spec.name);
        if dir.join(SPEC_FILE).exists() {
            let lab = Lab::open_in(root, &spec.name)?;
            if lab.spec != *spec {
                return Err(LabError::SpecMismatch {
                    name: spec.name.clone(),
                    existing: lab.spec.to_string(),
                    requested: spec.to_string(),
                });
            }
            let missing = lab.missing_netns();
            if missing.is_empty() {
                return Ok(lab);
            }
            tracing::warn!(lab = %spec.name, ?missing, "lab is incomplete, rebuilding it");
        }
        Lab::down_in(root, &spec.name)?;
        match Lab::build(&dir, spec) {
            Ok(lab) => Ok(lab),
            Err(e) => {
                if let Err(cleanup) = Lab::down_in(root, &spec.name) {
                    tracing::warn!(lab = %spec.name, error = %cleanup, "cleanup after failed up");
                }
                Err(e)
            }
        }
    }

    /// Builds everything of a fresh lab and writes its state.
    fn build(dir: &Path, spec: &LabSpec) -> Result<Lab, LabError> {
        let lab = spec.name.as_str();
        std::fs::create_dir_all(dir).map_err(LabError::state(dir))?;
        topology::create_underlay(lab)?;
        let mut inventory = Inventory {
            cluster: lab.to_string(),
            ..Inventory::default()
        };
        for (i, &cni) in (1..).zip(&spec.nodes) {
            topology::create_node(lab, i, cni)?;
            inventory.nodes.push(Node {
                name: naming::node_name(i),
                netns: Some(naming::node_netns(lab, i)),
                cni,
                pod_cidr: naming::pod_cidr(i),
                underlay_ip: naming::underlay_ip(i).to_string(),
            });
        }
        topology::connect_nodes(lab, &spec.nodes)?;
        let mut lab = Lab {
            spec: spec.clone(),
            inventory,
            dir: dir.to_path_buf(),
        };
        for i in 1..=spec.nodes.len() {
            for slot in 1..=spec.pods_per_node {
                let p = naming::default_pod(i, slot);
                lab.create_pod(i, slot, &p.namespace, &p.name, p.labels)?;
                lab.ensure_namespace(&p.namespace, naming::default_namespace_labels(&p.namespace));
            }
        }
        lab.save_inventory()?;
        let spec_path = dir.join(SPEC_FILE);
        let json = serde_json::to_vec_pretty(spec).map_err(|e| LabError::State {
            path: spec_path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&spec_path, &json)?;
        Ok(lab)
    }

    /// An existing lab, from its state directory.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        Lab::open_in(&state_root(), name)
    }

    /// [`Lab::open`] with the state under `root`.
    pub fn open_in(root: &Path, name: &str) -> Result<Lab, LabError> {
        naming::validate_lab_name(name)?;
        let dir = root.join(name);
        let spec_path = dir.join(SPEC_FILE);
        let bytes = match std::fs::read(&spec_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: name.to_string(),
                    state_dir: dir,
                });
            }
            Err(e) => return Err(LabError::state(&spec_path)(e)),
        };
        let spec: LabSpec =
            serde_json::from_slice(&bytes).map_err(|source| LabError::StateParse {
                path: spec_path.clone(),
                source,
            })?;
        let inventory = Inventory::load(&dir.join(INVENTORY_FILE))?;
        Ok(Lab {
            spec,
            inventory,
            dir,
        })
    }

    /// Removes every netns with prefix `pt-{name}-` and the state directory. Works without state
    /// files (after a crash) and when nothing exists.
    pub fn down(name: &str) -> Result<DownReport, LabError> {
        Lab::down_in(&state_root(), name)
    }

    /// [`Lab::down`] with the state under `root`.
    pub fn down_in(root: &Path, name: &str) -> Result<DownReport, LabError> {
        naming::validate_lab_name(name)?;
        let removed_netns = sweep_stale(&naming::lab_prefix(name))?;
        let dir = root.join(name);
        let removed_state_dir = match std::fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(LabError::state(&dir)(e)),
        };
        Ok(DownReport {
            removed_netns,
            removed_state_dir,
        })
    }

    /// The lab's spec.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The lab's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's inventory (as last written).
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Path of the inventory file the rest of podtap reads.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join(INVENTORY_FILE)
    }

    /// The network namespace of a node, by node name (`node-1`, ...).
    pub fn node_netns(&self, node: &str) -> Option<&str> {
        self.inventory.node(node).and_then(|n| n.netns.as_deref())
    }

    /// The network namespace of the lab's underlay (bridge `ul0`).
    pub fn underlay_netns(&self) -> String {
        naming::underlay_netns(&self.spec.name)
    }

    /// A pod of the lab.
    pub fn pod(&self, pod: &PodRef) -> Option<&Pod> {
        self.inventory.pod(pod)
    }

    /// The network namespace of a pod, or [`LabError::UnknownPod`].
    pub fn pod_netns(&self, pod: &PodRef) -> Result<&str, LabError> {
        self.pod(pod)
            .and_then(|p| p.netns.as_deref())
            .ok_or_else(|| self.unknown_pod(pod))
    }

    /// Every network namespace the inventory names that does not exist.
    pub fn missing_netns(&self) -> Vec<String> {
        std::iter::once(self.underlay_netns())
            .chain(self.inventory.nodes.iter().filter_map(|n| n.netns.clone()))
            .chain(self.inventory.pods.iter().filter_map(|p| p.netns.clone()))
            .filter(|n| !netns_exists(n))
            .collect()
    }

    /// Creates a pod on `node` (next free address of the node's pod CIDR): its netns, veth and
    /// routes; then rewrites the inventory. The namespace is added to the inventory (without
    /// labels) if new.
    pub fn add_pod(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Pod, LabError> {
        let index = self.node_index(node)?;
        let used: Vec<usize> = self
            .inventory
            .pods
            .iter()
            .filter(|p| p.node == node)
            .filter_map(|p| p.ip.parse().ok())
            .filter_map(|ip| naming::pod_slot(index, ip))
            .collect();
        let slot = (1..=MAX_PODS_PER_NODE)
            .find(|s| !used.contains(s))
            .ok_or_else(|| LabError::NodeFull {
                node: node.to_string(),
            })?;
        // A netns in a free slot is a leftover of a pod that was never recorded.
        del_netns(&naming::pod_netns(&self.spec.name, index, slot))?;
        let pod = self.create_pod(index, slot, namespace, name, labels)?;
        self.ensure_namespace(namespace, BTreeMap::new());
        self.save_inventory()?;
        Ok(pod)
    }

    /// Removes a pod (its veth, then its netns) and rewrites the inventory.
    pub fn remove_pod(&mut self, pod: &PodRef) -> Result<(), LabError> {
        let position = self
            .inventory
            .pods
            .iter()
            .position(|p| p.key() == *pod)
            .ok_or_else(|| self.unknown_pod(pod))?;
        let p = &self.inventory.pods[position];
        // Delete the veth explicitly: a deleted netns is torn down asynchronously, and the host
        // end would linger for a moment.
        if let Some(node_ns) = self.node_netns(&p.node)
            && let Err(e) = ip(node_ns, &["link", "del", &p.host_veth])
            && crate::netns::link_exists(node_ns, &p.host_veth)?
        {
            return Err(e);
        }
        if let Some(netns) = &p.netns {
            del_netns(netns)?;
        }
        self.inventory.pods.remove(position);
        self.save_inventory()
    }

    /// Creates pod plumbing in a given slot and records the pod (not saved yet).
    fn create_pod(
        &mut self,
        node: usize,
        slot: usize,
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Pod, LabError> {
        let pod_ref = format!("{namespace}/{name}");
        for (what, value) in [("namespace", namespace), ("name", name)] {
            if !is_dns_label(value) {
                return Err(LabError::BadPod {
                    pod: pod_ref,
                    reason: format!("{what} {value:?} is not a DNS label ([a-z0-9-], at most 63)"),
                });
            }
        }
        let node_name = naming::node_name(node);
        let cni = self
            .inventory
            .node(&node_name)
            .map(|n| n.cni)
            .ok_or_else(|| LabError::UnknownNode {
                lab: self.spec.name.clone(),
                node: node_name.clone(),
            })?;
        if self
            .inventory
            .pods
            .iter()
            .any(|p| p.namespace == namespace && p.name == name)
        {
            return Err(LabError::PodExists {
                lab: self.spec.name.clone(),
                pod: pod_ref,
            });
        }
        let host_veth = naming::host_veth(cni, namespace, name);
        if self
            .inventory
            .pods
            .iter()
            .any(|p| p.node == node_name && p.host_veth == host_veth)
        {
            return Err(LabError::VethClash {
                veth: host_veth,
                pod: pod_ref,
                node: node_name,
            });
        }
        let pod_netns = naming::pod_netns(&self.spec.name, node, slot);
        let plumbing = PodPlumbing {
            lab: &self.spec.name,
            node,
            cni,
            slot,
            host_veth: &host_veth,
        };
        if let Err(e) = topology::create_pod(&plumbing) {
            // The host end of the veth goes with the pod netns.
            if let Err(cleanup) = del_netns(&pod_netns) {
                tracing::warn!(netns = %pod_netns, error = %cleanup, "cleanup after failed pod");
            }
            return Err(e);
        }
        let pod = Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels,
            node: node_name,
            ip: naming::pod_ip(node, slot).to_string(),
            host_veth,
            host_network: false,
            netns: Some(pod_netns),
            tap_id: self.inventory.free_tap_id(),
        };
        self.inventory.pods.push(pod.clone());
        Ok(pod)
    }

    /// The lab's hosts (see [`Lab::add_host`]).
    pub fn hosts(&self) -> Result<Vec<Host>, LabError> {
        let path = self.dir.join(HOSTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LabError::State {
                path,
                source: io::Error::other(e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(LabError::state(&path)(e)),
        }
    }

    /// Adds a host to the underlay (a namespace with an address on 198.18.0.0/24 and routes to
    /// every pod CIDR), or returns the existing one of that name.
    pub fn add_host(&mut self, name: &str) -> Result<Host, LabError> {
        let valid = !name.is_empty()
            && name.len() <= 8
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(LabError::BadHost {
                name: name.to_string(),
                reason: "a host name is 1-8 characters of a-z and 0-9".into(),
            });
        }
        let mut hosts = self.hosts()?;
        if let Some(h) = hosts.iter().find(|h| h.name == name)
            && netns_exists(&h.netns)
        {
            return Ok(h.clone());
        }
        hosts.retain(|h| h.name != name);
        let index = (1..=naming::MAX_HOSTS)
            .find(|i| !hosts.iter().any(|h| h.index == *i))
            .ok_or_else(|| LabError::UnderlayFull {
                lab: self.spec.name.clone(),
            })?;
        let netns = naming::host_netns(&self.spec.name, name);
        del_netns(&netns)?;
        if let Err(e) = topology::create_host(&self.spec.name, index, name, self.spec.nodes.len()) {
            let _ = del_netns(&netns);
            return Err(e);
        }
        let host = Host {
            name: name.to_string(),
            netns,
            ip: naming::host_ip(index),
            index,
        };
        hosts.push(host.clone());
        let path = self.dir.join(HOSTS_FILE);
        let json = serde_json::to_vec_pretty(&hosts).map_err(|e| LabError::State {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&path, &json)?;
        Ok(host)
    }

    /// Index (1-based) of a node by name.
    fn node_index(&self, node: &str) -> Result<usize, LabError> {
        self.inventory
            .nodes
            .iter()
            .position(|n| n.name == node)
            .map(|i| i + 1)
            .ok_or_else(|| LabError::UnknownNode {
                lab: self.spec.name.clone(),
                node: node.to_string(),
            })
    }

    /// Adds a namespace to the inventory if it is not listed.
    fn ensure_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        if !self.inventory.namespaces.iter().any(|n| n.name == name) {
            self.inventory.namespaces.push(Namespace {
                name: name.to_string(),
                labels,
            });
        }
    }

    fn save_inventory(&self) -> Result<(), LabError> {
        Ok(self.inventory.save(&self.inventory_path())?)
    }

    pub(crate) fn unknown_pod(&self, pod: &PodRef) -> LabError {
        LabError::UnknownPod {
            lab: self.spec.name.clone(),
            pod: pod.to_string(),
        }
    }
}

/// A Kubernetes DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Writes a file through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(LabError::state(&tmp))?;
    std::fs::rename(&tmp, path).map_err(LabError::state(path))
}

/// Test guard: brings a lab up and takes it down on drop (even on panic).
#[derive(Debug)]
pub struct LabGuard(Lab);

impl LabGuard {
    /// Brings the lab up (state under [`state_root`]).
    pub fn up(spec: &LabSpec) -> Result<Self, LabError> {
        Lab::up(spec).map(LabGuard)
    }

    /// Brings the lab up with its state under `root` (e.g. a temporary directory).
    pub fn up_in(root: &Path, spec: &LabSpec) -> Result<Self, LabError> {
        Lab::up_in(root, spec).map(LabGuard)
    }
}

impl Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.0
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let root = self.0.dir.parent().unwrap_or(Path::new("/"));
        if let Err(e) = Lab::down_in(root, &self.0.spec.name) {
            tracing::warn!(lab = %self.0.spec.name, error = %e, "lab guard: down failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_every_problem() {
        let spec = LabSpec::new("Bad-Name", vec![], MAX_PODS_PER_NODE + 1);
        let LabError::InvalidSpec { problems } = spec.validate().unwrap_err() else {
            panic!("expected InvalidSpec");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            LabSpec::new("lab", vec![Cni::Flannel; 2], 3)
                .validate()
                .is_ok()
        );
        assert!(
            LabSpec::new("lab", vec![Cni::Calico; MAX_NODES + 1], 3)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn spec_round_trips_and_displays() {
        let spec = LabSpec::new("lab", vec![Cni::Calico, Cni::Flannel], 3);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<LabSpec>(&json).unwrap(), spec);
        assert_eq!(spec.to_string(), "nodes [calico,flannel], 3 pods per node");
    }

    #[test]
    fn dns_labels() {
        for good in ["shop", "cart-1", "a", "0x"] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Shop", "a.b", "a/b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn open_and_down_without_state() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            Lab::open_in(root.path(), "nolab"),
            Err(LabError::NotFound { .. })
        ));
        assert!(matches!(
            Lab::open_in(root.path(), "../x"),
            Err(LabError::BadName { .. })
        ));
        let report = Lab::down_in(root.path(), "nolabzz").unwrap();
        assert_eq!(report, DownReport::default());
    }
}
