//! The `sample` stage: keeps 1 packet or 1 flow in N, and/or at most a rate of packets.
//!
//! ```yaml
//! - type: sample
//!   one_in: 100        # keep 1 in 100 (default 1: all)
//!   by: flow           # packet (default) | flow
//!   max_pps: 10000     # optional: then at most 10000 packets per second...
//!   burst: 20000       # ...with bursts of up to 20000 (default: max_pps)
//! ```
//!
//! `by: packet` keeps the first packet and then every `one_in`-th (the 1st, N+1th, 2N+1th...),
//! counted by this stage, so which packets are kept is deterministic. `by: flow` keeps the
//! packets of 1 flow in N, all of each kept flow: a flow is the IP version, protocol,
//! addresses and TCP/UDP/UDP-Lite/SCTP ports, taken so that both directions are one flow, and
//! it is kept when its xxh3 hash (seed [`SAMPLE_SEED`], so every process keeps the same flows)
//! is a multiple of `one_in`. Packets without ports (ICMP, ...) and IP fragments (all of a
//! datagram's fragments, the first included, lack ports or would disagree) count addresses and
//! protocol only; frames without an IP header count the MAC pair and EtherType, both ways.
//!
//! `max_pps` is a token bucket over the packet timestamps (not the system clock): it holds
//! `burst` packets, starts full and refills at `max_pps`; it sees only the packets that
//! sampling kept.
//!
//! Drop reasons: `sampled_out` (not the 1 in N), `rate_limited` (over `max_pps`).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Verdict;
use super::layers::Layers;
use crate::packet::Packet;

/// The xxh3 seed of the flow hash: fixed, so every process samples the same flows.
pub const SAMPLE_SEED: u64 = 0x7064_7461_705f_7366;

/// The highest `max_pps` and `burst` accepted.
pub const MAX_RATE: u64 = 1_000_000_000;

const NS_PER_S: u128 = 1_000_000_000;

/// Configuration of the `sample` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Keep 1 packet (or flow) in this many (at least 1; default 1: keep all).
    #[serde(default = "default_one_in")]
    pub one_in: u64,
    /// What is sampled: `packet` (default: the first packet, then every `one_in`-th) or `flow`
    /// (1 flow in `one_in`, both directions, every packet of it).
    #[serde(default)]
    pub by: SampleBy,
    /// At most this many packets per second (after sampling), measured on the packets'
    /// timestamps (1-1000000000; default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pps: Option<u64>,
    /// How many packets may pass at once above `max_pps` (the token bucket's size; default:
    /// `max_pps`, one second's worth). Needs `max_pps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn default_one_in() -> u64 {
    1
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            one_in: default_one_in(),
            by: SampleBy::default(),
            max_pps: None,
            burst: None,
        }
    }
}

/// What `sample` counts 1 in N of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleBy {
    /// Packets, counted in order.
    #[default]
    Packet,
    /// Flows, by the hash of their bidirectional 5-tuple.
    Flow,
}

impl SampleConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.one_in == 0 {
            problems.push("one_in 0: give at least 1 (1 keeps everything)".into());
        }
        for (field, value) in [("max_pps", self.max_pps), ("burst", self.burst)] {
            if let Some(v) = value
                && (v == 0 || v > MAX_RATE)
            {
                problems.push(format!("{field} {v} is not in 1..={MAX_RATE}"));
            }
        }
        if self.burst.is_some() && self.max_pps.is_none() {
            problems.push("burst is given without max_pps".into());
        }
        if self.one_in == 1 && self.max_pps.is_none() {
            problems.push("nothing to do: give one_in above 1 and/or max_pps".into());
        }
        problems
    }
}

/// A token bucket in units of 1e-9 packet, refilled by the packets' timestamps.
#[derive(Debug)]
struct RateLimit {
    /// Packets per second, i.e. units per nanosecond.
    rate: u128,
    size: u128,
    tokens: u128,
    last_ns: Option<u64>,
}

impl RateLimit {
    fn allow(&mut self, now: u64) -> bool {
        match self.last_ns {
            None => self.tokens = self.size,
            Some(last) if now > last => {
                let refill = u128::from(now - last) * self.rate;
                self.tokens = self.size.min(self.tokens + refill);
            }
            // Same time, or the clock went back: no refill.
            Some(_) => {}
        }
        self.last_ns = Some(self.last_ns.map_or(now, |last| last.max(now)));
        if self.tokens >= NS_PER_S {
            self.tokens -= NS_PER_S;
            true
        } else {
            false
        }
    }
}

/// The running `sample` stage.
#[derive(Debug)]
pub struct Sample {
    one_in: u64,
    by: SampleBy,
    /// Packets seen (`by: packet`).
    count: u64,
    limit: Option<RateLimit>,
}

impl Sample {
    /// Builds the stage.
    pub fn new(cfg: &SampleConfig) -> Result<Self, String> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Sample {
            one_in: cfg.one_in,
            by: cfg.by,
            count: 0,
            limit: cfg.max_pps.map(|pps| {
                let burst = cfg.burst.unwrap_or(pps);
                RateLimit {
                    rate: u128::from(pps),
                    size: u128::from(burst) * NS_PER_S,
                    tokens: 0,
                    last_ns: None,
                }
            }),
        })
    }

    /// Keeps the packet if it is sampled and within the rate.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        if self.one_in > 1 {
            let sampled = match self.by {
                SampleBy::Packet => {
                    let n = self.count;
                    self.count = self.count.wrapping_add(1);
                    n.is_multiple_of(self.one_in)
                }
                SampleBy::Flow => flow_hash(&pkt.data).is_multiple_of(self.one_in),
            };
            if !sampled {
                return Verdict::Drop("sampled_out");
            }
        }
        if let Some(limit) = &mut self.limit
            && !limit.allow(pkt.timestamp_ns)
        {
            return Verdict::Drop("rate_limited");
        }
        Verdict::Keep
    }
}

/// The hash of a frame's flow, the same both ways (see the module comment).
pub fn flow_hash(frame: &[u8]) -> u64 {
    let layers = Layers::parse(frame);
    // version, protocol, then the lower (address, port), then the higher.
    let mut key = [0u8; 2 + 2 * (16 + 2)];
    let n = if let Some((src, dst)) = layers.ip_addresses(frame) {
        let (sport, dport) = match layers.fragment {
            true => (0, 0),
            false => layers.ports(frame).unwrap_or((0, 0)),
        };
        let (lo, hi) = if (src, sport) <= (dst, dport) {
            ((src, sport), (dst, dport))
        } else {
            ((dst, dport), (src, sport))
        };
        key[0] = layers.ip_version;
        key[1] = layers.protocol.unwrap_or(0xff);
        let mut at = 2;
        for (addr, port) in [lo, hi] {
            key[at..at + addr.len()].copy_from_slice(addr);
            at += addr.len();
            key[at..at + 2].copy_from_slice(&port.to_be_bytes());
            at += 2;
        }
        at
    } else if let (Some(a), Some(b), Some(ether)) =
        (frame.get(0..6), frame.get(6..12), layers.ethertype)
    {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        key[2..4].copy_from_slice(&ether.to_be_bytes());
        key[4..10].copy_from_slice(lo);
        key[10..16].copy_from_slice(hi);
        16
    } else {
        return xxh3_64_with_seed(frame, SAMPLE_SEED);
    };
    xxh3_64_with_seed(&key[..n], SAMPLE_SEED)
}
