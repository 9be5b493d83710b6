//! podtap's tunnels, both ends. [`TunnelSender`] puts a copied frame behind a VXLAN or L2GRE
//! header with its tap label and sends it (agents to brokers, brokers to tool ports);
//! [`TunnelReceiver`] takes VXLAN and L2GRE packets off the wire and says which policy, tap
//! point and direction each carries (brokers).
//!
//! The label convention (see `podtap_wire::vxlan` and `podtap_wire::gre`): VXLAN VNI = policy,
//! GBP Group Policy ID = tap id | 0x8000 when the copy went to the pod; GRE key = policy key << 16
//! | the same 16-bit label.

mod endpoint;
mod receive;
mod send;
mod sock;

pub use endpoint::{EndpointError, TunnelEndpoint, TunnelKind};
pub use receive::{
    Encap, MAX_DATAGRAM, ReceiveCounters, Received, TunnelReceiver, decode_gre, decode_vxlan,
};
pub use send::{Labels, Oversize, SendCounters, TunnelSender};
