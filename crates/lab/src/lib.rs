//! The local lab: an emulated Kubernetes cluster built from network namespaces, so podtap runs
//! end to end on one machine.
//!
//! A lab is an underlay netns joining node netns's, each node holding pod netns's on veths, in
//! one of two CNI data-plane styles (flannel: bridge + VXLAN; calico: routed `cali*` veths). The
//! lab writes an inventory (`podtap-cluster`'s [`Inventory`](podtap_cluster::Inventory)) that the
//! rest of podtap reads, runs small servers in pods and drives traffic between them.
//!
//! - [`naming`]: every name and address, derived without I/O.
//! - [`netns`]: entering namespaces, running `ip`, sweeping by prefix.
//! - `topology`: the data plane (underlay, nodes, pods).
//! - `lab`: [`Lab`] life cycle and state files.
//! - [`traffic`]: pod servers, traffic kinds, [`Lab::drive`].
//! - [`cli`]: `podtap lab ...`.

pub mod cli;
mod error;
mod lab;
pub mod naming;
pub mod netns;
mod topology;
pub mod traffic;

pub use error::LabError;
pub use lab::{
    DEFAULT_STATE_ROOT, DownReport, HOSTS_FILE, Host, INVENTORY_FILE, Lab, LabGuard, LabSpec,
    SPEC_FILE, STATE_ROOT_ENV, state_root,
};
pub use netns::{LinkStats, in_netns, link_exists, link_stats, sweep_stale};
pub use traffic::{PodServers, Traffic, TrafficReport};
