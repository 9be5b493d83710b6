//! The `dedupe` stage: drops the second copy of a packet seen twice within a short window, which
//! is what tapping both ends of a pod pair on the same node produces.
//!
//! ```yaml
//! - type: dedupe
//!   window_ms: 10            # default 10, at most 60000
//!   ignore: [ip_id, dscp, ecn, l4_checksum]   # optional; more fields to leave out
//!   capacity: 65536          # packets remembered at most (default 65536)
//! ```
//!
//! Each packet is reduced to a 64-bit xxh3 hash (seed [`DEDUPE_SEED`], the same in every
//! process) of its invariant bytes: the IP header with the fields that change on the way
//! zeroed, then everything after it up to the IP packet's total length as captured (Ethernet
//! padding is left out). Two copies are duplicates when their hashes are equal and their
//! timestamps at most `window_ms` apart; the first is kept and later ones within the window of
//! it are dropped. A copy later than that (a TCP retransmission after its timeout, say) is kept
//! and starts a new window.
//!
//! Always left out, because they differ between the two copies of one packet:
//! - the Ethernet header: when the node routes between the pods (Calico), the sender's copy
//!   carries the sending pod's and the gateway's MACs, the receiver's copy the host's and the
//!   receiving pod's;
//! - VLAN tags, which a hop may add or remove;
//! - the IPv4 TTL / IPv6 hop limit: one less at the receiver when routed;
//! - the IPv4 header checksum, which covers the TTL.
//!
//! With a bridge (Flannel), the two copies are the same frame and match as well. `ignore` adds
//! the IPv4 identification (`ip_id`), DSCP, ECN and the TCP/UDP/UDP-Lite/ICMP/SCTP checksum
//! (`l4_checksum`) for paths that rewrite them (NAT, remarking, checksum offload). They are not
//! left out by default: a TCP retransmission usually differs from the original only in its IP
//! identification.
//!
//! Frames that are not IP (ARP, LLDP, ...), and IP frames whose fixed IP header was cut short,
//! are compared from their EtherType (after any VLAN tags) to their end: their MACs are left
//! out too, and on a bridge both copies match. Frames shorter than an Ethernet header are
//! always kept and not remembered. An IP header cut short in its options or extension headers
//! is compared on the bytes captured.
//!
//! Known limit: two different packets with the same bytes within the window — an application
//! sending the same UDP datagram twice in a row, say — look like copies, and the second is
//! dropped. Keep `window_ms` short (the copies of one packet arrive microseconds apart).
//!
//! At most `capacity` packets are remembered: when more arrive within a window, the oldest are
//! forgotten early, counted by [`Dedupe::evictions`] (their copies then pass). Memory is about
//! 48 bytes per remembered packet, allocated when the stage is built.
//!
//! Drop reason: `duplicate` (also counted by [`Dedupe::dropped`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::Verdict;
use super::layers::{Layers, ip_proto};
use crate::packet::Packet;

/// The xxh3 seed of the packet hash: fixed, so hashes agree across processes and restarts.
pub const DEDUPE_SEED: u64 = 0x7064_7461_705f_6464;

/// The longest `window_ms` accepted.
pub const MAX_WINDOW_MS: u64 = 60_000;

/// The largest `capacity` accepted.
pub const MAX_CAPACITY: usize = 1 << 22;

/// Configuration of the `dedupe` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How far apart (milliseconds, 1-60000; default 10) two copies of a packet may arrive to
    /// count as duplicates. The two copies of a tapped pod pair arrive microseconds apart.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// More fields to leave out of the comparison, among `ip_id`, `dscp`, `ecn`,
    /// `l4_checksum`. MACs, VLAN tags, the TTL / hop limit and the IPv4 header checksum are
    /// always left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IgnoredField>,
    /// How many packets are remembered at most (1-4194304; default 65536). When full, the
    /// oldest are forgotten before their window ends (counted as evictions).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

fn default_window_ms() -> u64 {
    10
}

fn default_capacity() -> usize {
    65536
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_ms: default_window_ms(),
            ignore: Vec::new(),
            capacity: default_capacity(),
        }
    }
}

/// A field `ignore` can leave out of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredField {
    /// The IPv4 identification.
    IpId,
    /// The DSCP bits of the IPv4 TOS / IPv6 traffic class.
    Dscp,
    /// The ECN bits of the IPv4 TOS / IPv6 traffic class.
    Ecn,
    /// The TCP, UDP, UDP-Lite, ICMP, ICMPv6 or SCTP checksum.
    L4Checksum,
}

impl DedupeConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window_ms == 0 || self.window_ms > MAX_WINDOW_MS {
            problems.push(format!(
                "window_ms {} is not in 1..={MAX_WINDOW_MS}",
                self.window_ms
            ));
        }
        if self.capacity == 0 || self.capacity > MAX_CAPACITY {
            problems.push(format!(
                "capacity {} is not in 1..={MAX_CAPACITY}",
                self.capacity
            ));
        }
        problems
    }
}

/// The running `dedupe` stage.
pub struct Dedupe {
    window_ns: u64,
    ignore_ip_id: bool,
    ignore_l4_checksum: bool,
    /// Bits of the IPv4 TOS byte compared.
    tos_mask: u8,
    /// Bits of the first two bytes of the IPv6 header compared.
    ipv6_mask: [u8; 2],
    /// Boxed: its buffers are large.
    hasher: Box<Xxh3>,
    seen: SeenPackets,
    dropped: u64,
    evictions: u64,
}

impl fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedupe")
            .field("window_ns", &self.window_ns)
            .field("ignore_ip_id", &self.ignore_ip_id)
            .field("ignore_l4_checksum", &self.ignore_l4_checksum)
            .field("tos_mask", &self.tos_mask)
            .field("remembered", &self.seen.len)
            .field("capacity", &self.seen.ring.len())
            .field("dropped", &self.dropped)
            .field("evictions", &self.evictions)
            .finish()
    }
}

impl Dedupe {
    /// Builds the stage; allocates its memory of `capacity` packets.
    pub fn new(cfg: &DedupeConfig) -> Result<Self, String> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let has = |f| cfg.ignore.contains(&f);
        let mut tos_mask = 0xff;
        // IPv6: version(4) traffic class(8) flow label(20); DSCP is the top 6 bits of the
        // traffic class, ECN the low 2.
        let mut ipv6_mask = [0xff, 0xff];
        if has(IgnoredField::Dscp) {
            tos_mask &= 0x03;
            ipv6_mask[0] &= 0xf0;
            ipv6_mask[1] &= 0x3f;
        }
        if has(IgnoredField::Ecn) {
            tos_mask &= 0xfc;
            ipv6_mask[1] &= 0xcf;
        }
        Ok(Dedupe {
            window_ns: cfg.window_ms * 1_000_000,
            ignore_ip_id: has(IgnoredField::IpId),
            ignore_l4_checksum: has(IgnoredField::L4Checksum),
            tos_mask,
            ipv6_mask,
            hasher: Box::new(Xxh3::with_seed(DEDUPE_SEED)),
            seen: SeenPackets::new(cfg.capacity),
            dropped: 0,
            evictions: 0,
        })
    }

    /// Drops the packet when a copy of it was kept within the window before.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        let Some(hash) = self.hash(&pkt.data) else {
            return Verdict::Keep;
        };
        let now = pkt.timestamp_ns;
        self.seen.expire(now, self.window_ns);
        match self.seen.find(hash) {
            Some(slot) => {
                if now.abs_diff(self.seen.first_seen(slot)) <= self.window_ns {
                    self.dropped += 1;
                    return Verdict::Drop("duplicate");
                }
                // The clock went back by more than a window: start over from this copy.
                self.seen.set_first_seen(slot, now);
                self.evictions += u64::from(self.seen.push(hash, now));
            }
            None => self.evictions += u64::from(self.seen.insert(hash, now)),
        }
        Verdict::Keep
    }

    /// Duplicates dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Packets forgotten before their window ended because `capacity` was reached (their
    /// copies, if any came, were kept).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The hash of the packet's invariant bytes (see the module comment), or `None` for a
    /// frame shorter than an Ethernet header. Equal to `xxh3_64_with_seed(invariant bytes,
    /// DEDUPE_SEED)`.
    pub fn hash(&mut self, frame: &[u8]) -> Option<u64> {
        let layers = Layers::parse(frame);
        let h = &mut self.hasher;
        h.reset();
        let data = frame.get(..layers.end)?;
        match (layers.ip_version, layers.network) {
            (4, Some(ip)) => {
                let ihl = usize::from(data.get(ip)? & 0x0f) * 4;
                let header = data.get(ip..(ip + ihl).min(data.len()))?;
                if header.len() < 20 {
                    return None;
                }
                let mut copy = [0u8; 60];
                let copy = copy.get_mut(..header.len())?;
                copy.copy_from_slice(header);
                copy[1] &= self.tos_mask;
                if self.ignore_ip_id {
                    copy[4..6].fill(0);
                }
                copy[8] = 0; // TTL
                copy[10..12].fill(0); // header checksum
                h.update(copy);
                self.hash_rest(data, ip + header.len(), &layers);
            }
            (6, Some(ip)) => {
                let mut copy: [u8; 40] = data.get(ip..ip + 40)?.try_into().ok()?;
                copy[0] &= self.ipv6_mask[0];
                copy[1] &= self.ipv6_mask[1];
                copy[7] = 0; // hop limit
                h.update(&copy);
                self.hash_rest(data, ip + 40, &layers);
            }
            // Not IP: from the EtherType after the VLAN tags (or the first one, when a tag is
            // cut short) to the end.
            _ => h.update(data.get(layers.network.map_or(12, |n| n - 2)..)?),
        }
        // 0 marks an empty slot in the table.
        Some(self.hasher.digest().max(1))
    }

    /// Hashes `data[from..]`, with the transport checksum zeroed when it is ignored.
    fn hash_rest(&mut self, data: &[u8], from: usize, layers: &Layers) {
        let rest = data.get(from..).unwrap_or_default();
        let checksum = match (self.ignore_l4_checksum, layers.transport, layers.protocol) {
            (true, Some(t), Some(p)) => match p {
                ip_proto::TCP => Some((t + 16, 2)),
                ip_proto::UDP | ip_proto::UDPLITE => Some((t + 6, 2)),
                ip_proto::ICMP | ip_proto::ICMPV6 => Some((t + 2, 2)),
                ip_proto::SCTP => Some((t + 8, 4)),
                _ => None,
            },
            _ => None,
        };
        match checksum {
            Some((at, len)) if at >= from && at < data.len() => {
                let end = (at + len).min(data.len());
                self.hasher.update(&data[from..at]);
                self.hasher.update(&[0u8; 4][..end - at]);
                self.hasher.update(&data[end..]);
            }
            _ => self.hasher.update(rest),
        }
    }
}

/// The packets seen within the window: a FIFO of (hash, first seen) in arrival order, which
/// decides what expires or is evicted, and an open-addressing table (linear probing, at most
/// half full, backward-shift deletion) from hash to first seen. Both are allocated once.
struct SeenPackets {
    ring: Vec<(u64, u64)>,
    head: usize,
    len: usize,
    slots: Vec<(u64, u64)>,
    mask: usize,
}

impl SeenPackets {
    fn new(capacity: usize) -> Self {
        let slots = (capacity * 2).next_power_of_two().max(16);
        SeenPackets {
            ring: vec![(0, 0); capacity],
            head: 0,
            len: 0,
            slots: vec![(0, 0); slots],
            mask: slots - 1,
        }
    }

    /// Forgets the packets first seen more than `window` before `now`.
    fn expire(&mut self, now: u64, window: u64) {
        while self.len > 0 {
            let (hash, seen) = self.ring[self.head];
            if now.saturating_sub(seen) <= window {
                break;
            }
            self.pop();
            self.remove(hash, seen);
        }
    }

    fn pop(&mut self) {
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
    }

    fn find(&self, hash: u64) -> Option<usize> {
        let mut i = hash as usize & self.mask;
        loop {
            match self.slots[i].0 {
                h if h == hash => return Some(i),
                0 => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    fn first_seen(&self, slot: usize) -> u64 {
        self.slots[slot].1
    }

    fn set_first_seen(&mut self, slot: usize, now: u64) {
        self.slots[slot].1 = now;
    }

    /// Remembers a new hash; true when the oldest packet had to be forgotten for it.
    fn insert(&mut self, hash: u64, now: u64) -> bool {
        let evicted = self.push(hash, now);
        let mut i = hash as usize & self.mask;
        while self.slots[i].0 != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = (hash, now);
        evicted
    }

    /// Appends to the FIFO, first forgetting the oldest packet when full; true if it did.
    fn push(&mut self, hash: u64, now: u64) -> bool {
        let capacity = self.ring.len();
        let mut evicted = false;
        if self.len == capacity {
            let (old, seen) = self.ring[self.head];
            self.pop();
            evicted = self.remove(old, seen);
        }
        self.ring[(self.head + self.len) % capacity] = (hash, now);
        self.len += 1;
        evicted
    }

    /// Removes `hash` if it is still remembered as first seen at `seen` (a FIFO entry left
    /// behind by [`Dedupe::process`] restarting a window does not match). True if removed.
    fn remove(&mut self, hash: u64, seen: u64) -> bool {
        let Some(mut hole) = self.find(hash) else {
            return false;
        };
        if self.slots[hole].1 != seen {
            return false;
        }
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let h = self.slots[j].0;
            if h == 0 {
                break;
            }
            let home = h as usize & self.mask;
            // The entry at j may move into the hole unless its home lies cyclically in
            // (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = (0, 0);
        true
    }
}
