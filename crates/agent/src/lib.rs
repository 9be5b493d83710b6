//! podtap's tap agent.
//!
//! A packet's way through it: the eBPF program `ebpf/tap.c` copies it on the pod's host veth
//! into a ring buffer ([`program`] loads and attaches it), a [`reader`] thread per node drains
//! the ring, and [`output`] writes it as pcapng. [`tls`] is the decrypted view: uprobes on
//! OpenSSL in the selected pods' processes, plaintext written as synthesized TCP segments. [`agent`] decides which veths are tapped from
//! the inventory and the selection, and [`stats`] / [`metrics`] report what was counted.

pub mod agent;
pub mod discover;
pub mod driven;
pub mod flow;
pub mod metrics;
pub mod output;
pub mod prefilter;
pub mod program;
pub mod reader;
pub mod routes;
pub mod stats;
pub mod tls;
pub mod tunnel;

pub use agent::{Agent, AgentConfig, AgentError};
pub use output::GsoMode;
pub use prefilter::Prefilter;
pub use program::AttachMode;
pub use stats::Stats;
pub use tunnel::{SendMode, TunnelConfig};
