//! podtap's Kubernetes API: the cluster-scoped `TapPolicy` custom resource (group
//! `podtap.io`, version `v1alpha1`), its status, and its validation.
//!
//! A policy says which pods to tap (pod and namespace label selectors), how (direction,
//! in-kernel prefilter, decrypted view), and what the broker does with the copies (the same
//! typed pipeline a broker policy has: `stages` and `outputs`). Validation is the code the
//! agent and broker run on their own configuration ([`podtap_cluster::selector`],
//! [`podtap_agent::prefilter`], [`podtap_broker::PolicyConfig::problems`]), and it reports
//! every problem at once, each naming its field.
//!
//! The CRD is generated from these types ([`crd_yaml`]); `deploy/crd.yaml` is that output,
//! checked by the tests to be current.

pub mod policy;

pub use policy::{
    AgentState, Direction, NodeTapState, TapPolicy, TapPolicySpec, TapPolicyStatus, UntappablePod,
    broker_policy,
};

use kube::CustomResourceExt;

/// The `TapPolicy` CustomResourceDefinition as YAML, as `kubectl apply -f` takes it.
pub fn crd_yaml() -> String {
    // Serializing a CRD (plain data) cannot fail.
    serde_yaml_ng::to_string(&TapPolicy::crd()).unwrap_or_default()
}
