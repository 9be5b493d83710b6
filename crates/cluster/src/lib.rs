//! podtap's view of the cluster, independent of where it comes from (the lab's inventory file
//! today, the Kubernetes API through the controller later): nodes, namespaces and pods, and the
//! selectors that decide which pods are tapped.

pub mod inventory;
pub mod netns;
pub mod selector;

pub use inventory::{Cni, Inventory, InventoryError, MAX_TAP_ID, Namespace, Node, Pod, PodRef};
pub use selector::{LabelSelector, PodSelection, SelectorError};
