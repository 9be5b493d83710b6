//! The `slice` stage: keeps only the first bytes of each packet, counted from the start of the
//! frame or from the end of its Ethernet, IP or transport headers, so a capture can hold every
//! header and none (or little) of the payload.
//!
//! ```yaml
//! - type: slice
//!   length: 64          # bytes to keep after the point below
//!   after: transport    # frame (default) | ethernet | ip | transport
//! ```
//!
//! `original_len` is left as it was: the length on the wire stays recorded, as with
//! `tcpdump -s`. A packet no longer than the cut is left whole. A packet without the layer
//! named by `after` (ARP under `after: ip`, say) is cut after the last header it has; a packet
//! whose headers up to that layer are themselves cut short or malformed is left whole.
//!
//! Drop reasons: none (a slice never drops).

use serde::{Deserialize, Serialize};

use super::Verdict;
use super::layers::{ETHERNET_HEADER_LEN, Layers};
use crate::packet::Packet;

/// The largest `length` accepted (no frame is longer).
pub const MAX_SLICE_LENGTH: usize = 65535;

/// Configuration of the `slice` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceConfig {
    /// Bytes to keep after the point named by `after` (with `after: frame`, at least 14: an
    /// Ethernet header). Packets no longer than that are left whole.
    pub length: usize,
    /// Where counting starts: `frame` (default: the first byte), `ethernet` (after the Ethernet
    /// header and VLAN tags), `ip` (after the IP header with its options or extension headers)
    /// or `transport` (after the TCP/UDP/SCTP/ICMP/GRE header; for other IP protocols and for
    /// later IP fragments, right after the IP headers).
    #[serde(default)]
    pub after: SliceAfter,
}

/// The header after which a `slice` (or a `mask` range) starts counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceAfter {
    /// The start of the frame.
    #[default]
    Frame,
    /// The end of the Ethernet header and its VLAN tags.
    Ethernet,
    /// The end of the IP headers (IPv4 options, IPv6 extension headers included).
    Ip,
    /// The end of the transport header.
    Transport,
}

impl SliceConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.after == SliceAfter::Frame && self.length < ETHERNET_HEADER_LEN {
            problems.push(format!(
                "length {} with after: frame would cut into the Ethernet header: keep at least \
                 {ETHERNET_HEADER_LEN} bytes",
                self.length
            ));
        }
        if self.length > MAX_SLICE_LENGTH {
            problems.push(format!(
                "length {} is more than any frame (at most {MAX_SLICE_LENGTH})",
                self.length
            ));
        }
        problems
    }
}

/// The running `slice` stage.
#[derive(Debug)]
pub struct Slice {
    length: usize,
    after: SliceAfter,
}

impl Slice {
    /// Builds the stage.
    pub fn new(cfg: &SliceConfig) -> Result<Self, String> {
        Ok(Slice {
            length: cfg.length,
            after: cfg.after,
        })
    }

    /// Cuts the packet (in place); always keeps it.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        if let Some(cut) = self.cut_point(&pkt.data)
            && cut < pkt.data.len()
        {
            pkt.data.truncate(cut);
        }
        Verdict::Keep
    }

    /// Where the frame is cut, or `None` to leave it whole.
    fn cut_point(&self, frame: &[u8]) -> Option<usize> {
        if self.after == SliceAfter::Frame {
            return Some(self.length);
        }
        if frame.len() <= self.length {
            return None;
        }
        let layers = Layers::parse(frame);
        let start = match self.after {
            SliceAfter::Frame => Some(0),
            SliceAfter::Ethernet => layers.network,
            SliceAfter::Ip if layers.ip_version != 0 => layers.ip_payload,
            SliceAfter::Transport if layers.ip_version != 0 => layers.payload,
            // Not IP: the Ethernet header (and tags) is the last header there is.
            SliceAfter::Ip | SliceAfter::Transport => layers.network,
        };
        start.map(|s| s.saturating_add(self.length))
    }
}
