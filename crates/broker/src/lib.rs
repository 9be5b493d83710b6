//! podtap's packet broker.
//!
//! A copy's way through it: [`receive`] takes VXLAN and L2GRE packets from agents and
//! decapsulates them into [`Packet`]s labelled with their policy, tap point and direction; the
//! policy's [`pipeline`] runs its stages (filter, dedupe, slice, mask, sample) in order; every
//! packet a pipeline keeps goes to each of the policy's [`output`]s (pcapng files, a tool port
//! over VXLAN/L2GRE, NetFlow v9/IPFIX export). [`config`] is the typed configuration all of it is
//! built from and validated against.

pub mod broker;
pub mod config;
pub mod metrics;
pub mod output;
pub mod packet;
pub mod pipeline;
pub mod replay;

pub use broker::{Broker, BrokerError, BrokerStats};
pub use config::{BrokerConfig, ConfigError, PolicyConfig};
pub use packet::{Direction, Frame, Packet, Source};
