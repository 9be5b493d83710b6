//! The unit the pipeline works on: one copied frame, where it was tapped, and when.

use std::net::IpAddr;

/// Which way the packet went, from the tapped pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// The pod sent it.
    FromPod,
    /// The pod received it.
    ToPod,
    /// Not carried by the tunnel (e.g. a GRE packet from another tool).
    #[default]
    Unknown,
}

/// Where a copy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// Index of the policy in the broker configuration.
    pub policy: usize,
    /// Tap point id carried by the tunnel (0: unknown). Identifies the pod's veth.
    pub tap: u16,
    /// Direction carried by the tunnel.
    pub direction: Direction,
    /// The agent (outer source address).
    pub agent: IpAddr,
}

/// One copied Ethernet frame in the pipeline. The receive loop reuses one `Packet`, so stages
/// change it in place and nothing is allocated per packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// When the broker received it, Unix nanoseconds.
    pub timestamp_ns: u64,
    /// The frame as it is now (stages may cut or overwrite it).
    pub data: Vec<u8>,
    /// Length of the frame on the wire, before any cut (by the agent or a `slice`).
    pub original_len: u32,
    /// Where it was tapped.
    pub source: Source,
}

impl Packet {
    /// An empty packet to receive into.
    pub fn new() -> Self {
        Packet {
            timestamp_ns: 0,
            data: Vec::with_capacity(65536),
            original_len: 0,
            source: Source {
                policy: 0,
                tap: 0,
                direction: Direction::Unknown,
                agent: IpAddr::from([0, 0, 0, 0]),
            },
        }
    }
}

impl Default for Packet {
    fn default() -> Self {
        Self::new()
    }
}
