//! The `vxlan` and `l2gre` outputs: a tool port. Every packet the policy keeps is sent, as it is
//! after the stages, to a tool (an IDS, a probe, another broker) in a plain VXLAN or L2GRE
//! tunnel, without podtap's labels unless asked for.
//!
//! ```yaml
//! outputs:
//!   - type: vxlan
//!     remote: 198.18.0.102:4789
//!     vni: 7
//!   - type: l2gre
//!     remote: 198.18.0.103
//!     key: 42            # optional
//! ```
//!
//! Counters: packets and bytes sent; errors `send_failed` (the kernel refused the datagram:
//! lost); extra `fragmented` / `truncated` (too big for the path MTU once encapsulated).

use std::net::{IpAddr, SocketAddr};

use podtap_tunnel::{Labels, Oversize, TunnelEndpoint, TunnelSender};
use serde::{Deserialize, Serialize};

use super::{Labelled, OutputCounters};
use crate::packet::Direction;

/// Configuration of a `vxlan` tool port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanOutputConfig {
    /// The tool's address and UDP port, e.g. `198.18.0.102:4789`.
    pub remote: SocketAddr,
    /// The VNI the tool expects (1-16777215).
    pub vni: u32,
    /// Keep podtap's tap labels (the VXLAN GBP id = tap id | 0x8000 to the pod). Default false:
    /// plain RFC 7348 VXLAN.
    #[serde(default)]
    pub labels: bool,
    /// Copies too big for the path MTU: `fragment` (default) or `truncate`.
    #[serde(default)]
    pub oversize: OversizeConfig,
}

/// Configuration of an `l2gre` tool port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreOutputConfig {
    /// The tool's IPv4 address.
    pub remote: IpAddr,
    /// The GRE key the tool expects (none: no key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
    /// Copies too big for the path MTU: `fragment` (default) or `truncate`.
    #[serde(default)]
    pub oversize: OversizeConfig,
}

/// What to do with copies too big for the path MTU once encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OversizeConfig {
    /// Let IP fragment the tunnel packet.
    #[default]
    Fragment,
    /// Cut the copy to fit.
    Truncate,
}

impl From<OversizeConfig> for Oversize {
    fn from(o: OversizeConfig) -> Oversize {
        match o {
            OversizeConfig::Fragment => Oversize::Fragment,
            OversizeConfig::Truncate => Oversize::Truncate,
        }
    }
}

impl VxlanOutputConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.vni == 0 || self.vni > podtap_wire::vxlan::MAX_VNI {
            p.push(format!(
                "vni {} is not in 1..={}",
                self.vni,
                podtap_wire::vxlan::MAX_VNI
            ));
        }
        if self.remote.port() == 0 {
            p.push("remote: port 0".into());
        }
        p
    }
}

impl GreOutputConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        if self.remote.is_ipv4() {
            Vec::new()
        } else {
            vec!["remote: L2GRE is sent over IPv4 only".into()]
        }
    }
}

/// Errors of a tool port.
#[derive(Debug, thiserror::Error)]
pub enum TunnelOutputError {
    /// The socket could not be opened.
    #[error("tool port {endpoint}: {source}")]
    Open {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running tool port.
pub struct TunnelOutput {
    sender: TunnelSender,
    counters: OutputCounters,
}

impl std::fmt::Debug for TunnelOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelOutput({})", self.sender.endpoint())
    }
}

impl TunnelOutput {
    /// A `vxlan` tool port.
    pub fn vxlan(cfg: &VxlanOutputConfig) -> Result<Self, TunnelOutputError> {
        let labels = if cfg.labels {
            Labels::Podtap { policy: cfg.vni }
        } else {
            Labels::Plain { id: Some(cfg.vni) }
        };
        Self::open(
            TunnelEndpoint::vxlan(cfg.remote),
            labels,
            cfg.oversize,
            "vxlan",
        )
    }

    /// An `l2gre` tool port.
    pub fn l2gre(cfg: &GreOutputConfig) -> Result<Self, TunnelOutputError> {
        Self::open(
            TunnelEndpoint::l2gre(cfg.remote),
            Labels::Plain { id: cfg.key },
            cfg.oversize,
            "l2gre",
        )
    }

    fn open(
        endpoint: TunnelEndpoint,
        labels: Labels,
        oversize: OversizeConfig,
        kind: &'static str,
    ) -> Result<Self, TunnelOutputError> {
        let sender = TunnelSender::open(endpoint, labels, oversize.into()).map_err(|source| {
            TunnelOutputError::Open {
                endpoint: endpoint.to_string(),
                source,
            }
        })?;
        Ok(TunnelOutput {
            sender,
            counters: OutputCounters {
                kind,
                ..Default::default()
            },
        })
    }

    /// Sends one packet to the tool.
    pub fn write(&mut self, pkt: Labelled<'_>) {
        let p = pkt.packet;
        self.sender.send(
            p.source.tap,
            p.source.direction == Direction::ToPod,
            &p.data,
        );
    }

    /// The counters (from the sender's).
    pub fn counters(&self) -> OutputCounters {
        let s = self.sender.counters();
        let mut c = self.counters.clone();
        c.packets = s.packets;
        c.bytes = s.bytes;
        if s.errors > 0 {
            c.errors.insert("send_failed", s.errors);
        }
        c.extra.insert("fragmented", s.fragmented);
        c.extra.insert("truncated", s.truncated);
        c
    }
}
