//! podtap's fabric manager: turns `TapPolicy` resources and the live set of pods into each
//! node's taps and each broker's pipelines, and reports back on the resources.
//!
//! Follow a change through it:
//! - [`source`]: where the cluster comes in (the Kubernetes API, or the lab's files);
//! - [`plan`]: where a policy is decided (pods matched, VNIs, tap ids, the broker table);
//! - [`fabric`]: where desired state leaves for agents and brokers (gRPC, mutual TLS), and
//!   their heartbeats come back;
//! - [`status`]: what is written on each policy;
//! - [`controller`]: the loop that runs them, [`leader`]: which replica runs it;
//! - [`member`]: the other end, how an agent or a broker keeps its session.

pub mod controller;
pub mod fabric;
pub mod health;
pub mod leader;
pub mod member;
pub mod plan;
pub mod source;
pub mod status;
pub mod tls;

/// The generated fabric API (`proto/fabric.proto`).
pub mod proto {
    tonic::include_proto!("podtap.fabric.v1");
}
