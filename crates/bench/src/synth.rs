//! Deterministic synthetic captures for the broker benchmarks: Ethernet frames of IPv4 and IPv6
//! TCP and UDP conversations, written as a classic pcap (microsecond timestamps) with the
//! `pcap-file` crate, together with the ground truth the comparisons are checked against.
//!
//! The traffic: `connections` conversations starting at random times over `seconds`, each a
//! bidirectional 5-tuple (two unidirectional flows when both directions carry a packet).
//! 80% are TCP (SYN, SYN-ACK, ACK; requests of 80-800 bytes answered by 1-12 full-size
//! segments with a client ACK after every second segment; FIN-ACK, FIN-ACK, ACK), 20% UDP
//! (query/response, or a mostly one-way media stream); 25% are IPv6. Packets per conversation
//! are drawn from an exponential distribution (a few elephants, many mice) and adjusted so the
//! total is exactly `packets`; a conversation lasts 50 ms plus 0.5-2 ms per packet (at most
//! 10 s), far below every flow timeout involved, so no tool splits a flow on a timeout.
//!
//! Every packet is distinct: IPv4 identification counts per direction, TCP sequence and
//! acknowledgment numbers advance (a client ACK always acknowledges new data), UDP payloads
//! start with the conversation and packet number. No frame carries Ethernet padding (a
//! capture taken on the sending host has none), so a frame's IP bytes are its length less
//! the 14-byte Ethernet header. Checksums (IPv4 header, TCP, UDP) are correct.
//!
//! With `duplicate_one_in: Some(n)`, every packet of one conversation in `n` appears twice:
//! the copy is the same frame, byte for byte, 20-500 µs later (what tapping both ends of a
//! pod pair on one bridge produces). The copies are the known set a dedupe must remove.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// Unix time of the capture's first possible packet (2026-01-01T00:00:00Z).
pub const EPOCH_S: u64 = 1_767_225_600;
/// Ethernet II header length.
pub const ETHERNET_LEN: usize = 14;
/// IPv4 header without options.
const IPV4_LEN: usize = 20;
/// IPv6 fixed header.
const IPV6_LEN: usize = 40;
/// TCP header without options.
const TCP_LEN: usize = 20;
/// UDP header.
const UDP_LEN: usize = 8;
/// Largest IP packet (a 1500-byte MTU).
const MTU: usize = 1500;
/// Share of conversations that are TCP, in percent.
const TCP_PERCENT: u64 = 80;
/// Share of conversations over IPv6, in percent.
const IPV6_PERCENT: u64 = 25;
/// Fewest packets of a TCP conversation (handshake, a request, one segment, its ACK, close).
const MIN_TCP_PACKETS: u64 = 9;
/// Fewest packets of a UDP conversation.
const MIN_UDP_PACKETS: u64 = 2;
/// Longest conversation, in microseconds.
const MAX_LIFETIME_US: u64 = 10_000_000;
/// How far after its original a duplicate comes, in microseconds (inclusive range).
pub const DUPLICATE_DELAY_US: (u64, u64) = (20, 500);

/// TCP flag bits.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec {
    /// Packets in total, duplicates not counted.
    pub packets: u64,
    /// Conversations (each up to two unidirectional flows).
    pub connections: u32,
    /// Length of the capture, in seconds.
    pub seconds: u32,
    /// Seed of the generator: the same spec gives the same file, byte for byte.
    pub seed: u64,
    /// Duplicate every packet of one conversation in this many.
    pub duplicate_one_in: Option<u32>,
}

/// Ground truth about a generated capture.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SynthSummary {
    /// Frames in the file (duplicates included).
    pub frames: u64,
    /// Bytes of those frames.
    pub frame_bytes: u64,
    /// IP bytes of those frames (frame length less the Ethernet header).
    pub ip_bytes: u64,
    /// Frames that are duplicates of an earlier frame.
    pub duplicates: u64,
    /// Unidirectional flows (conversation and direction with at least one packet).
    pub flows: u64,
    /// Conversations.
    pub connections: u64,
    /// TCP frames.
    pub tcp_frames: u64,
    /// Bytes of the TCP frames.
    pub tcp_frame_bytes: u64,
    /// IPv6 frames.
    pub ipv6_frames: u64,
    /// Most frames from an original to its duplicate (1: the next frame), 0 without
    /// duplicates: the window `editcap -D` needs to find every copy.
    pub max_duplicate_distance: u64,
    /// Seconds from the first to the last frame.
    pub span_s: f64,
}

/// A small, fast, deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// A conversation's fixed facts.
#[derive(Debug, Clone)]
struct Conversation {
    tcp: bool,
    ipv6: bool,
    client_port: u16,
    server_port: u16,
    packets: u64,
    start_us: u64,
    lifetime_us: u64,
    duplicated: bool,
    /// UDP: a mostly one-way stream instead of query/response.
    stream: bool,
}

/// A conversation's state while its packets are written.
#[derive(Debug, Clone, Default)]
struct ConversationState {
    /// Packets written so far (also the index of the next one).
    sent: u64,
    /// Next sequence number, client and server.
    seq: [u32; 2],
    /// IPv4 identification, client and server.
    ip_id: [u16; 2],
    /// TCP data phase: server segments still to send in the current response.
    segments_left: u32,
    /// TCP data phase: server segments since the client's last ACK.
    unacked: u32,
    /// Directions that carried a packet (bit 0 client to server, bit 1 back).
    directions: u8,
    rng: Option<Rng>,
}

/// One packet's place in time: sorted by time, then conversation and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    time_us: u64,
    conversation: u32,
    index: u32,
    /// A duplicate of the packet `(conversation, index)`.
    duplicate: bool,
}

/// Writes the capture described by `spec` to `path` and returns its ground truth.
pub fn write_capture(spec: &SynthSpec, path: &Path) -> anyhow::Result<SynthSummary> {
    let conversations = plan(spec);
    let slots = schedule(&conversations, spec.seed);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: 65535,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::with_capacity(1 << 20, file), header)
        .context("writing the pcap header")?;
    let mut states = vec![ConversationState::default(); conversations.len()];
    // Originals waiting for their duplicate: bytes and frame number.
    let mut pending: HashMap<(u32, u32), (Vec<u8>, u64)> = HashMap::new();
    let mut summary = SynthSummary {
        connections: conversations.len() as u64,
        ..Default::default()
    };
    let mut frame = Vec::with_capacity(2048);
    for slot in &slots {
        let c = &conversations[slot.conversation as usize];
        let key = (slot.conversation, slot.index);
        let bytes: &[u8] = if slot.duplicate {
            summary.duplicates += 1;
            let (original, at) = pending
                .remove(&key)
                .context("a duplicate came before its original")?;
            frame = original;
            summary.max_duplicate_distance =
                summary.max_duplicate_distance.max(summary.frames - at);
            &frame
        } else {
            let state = &mut states[slot.conversation as usize];
            frame.clear();
            next_packet(slot.conversation, c, state, &mut frame);
            if c.duplicated {
                pending.insert(key, (frame.clone(), summary.frames));
            }
            &frame
        };
        let ts = Duration::from_micros(EPOCH_S * 1_000_000 + slot.time_us);
        writer
            .write_packet(&PcapPacket::new(ts, bytes.len() as u32, bytes))
            .context("writing a packet")?;
        summary.frames += 1;
        summary.frame_bytes += bytes.len() as u64;
        summary.ip_bytes += (bytes.len() - ETHERNET_LEN) as u64;
        if c.tcp {
            summary.tcp_frames += 1;
            summary.tcp_frame_bytes += bytes.len() as u64;
        }
        if c.ipv6 {
            summary.ipv6_frames += 1;
        }
    }
    writer
        .into_writer()
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the capture")?
        .sync_all()
        .ok();
    summary.flows = states
        .iter()
        .map(|s| u64::from(s.directions.count_ones()))
        .sum();
    if let (Some(first), Some(last)) = (slots.first(), slots.last()) {
        summary.span_s = (last.time_us - first.time_us) as f64 / 1e6;
    }
    Ok(summary)
}

/// Draws every conversation, with packet counts that add up to `spec.packets` exactly.
fn plan(spec: &SynthSpec) -> Vec<Conversation> {
    let n = u64::from(spec.connections.max(1));
    let mut rng = Rng::new(spec.seed);
    let mut conversations: Vec<Conversation> = (0..n)
        .map(|i| {
            let tcp = rng.percent(TCP_PERCENT);
            Conversation {
                tcp,
                ipv6: rng.percent(IPV6_PERCENT),
                client_port: 32768 + (i % 28000) as u16,
                server_port: if tcp {
                    [443, 80, 8080][rng.range(0, 2) as usize]
                } else {
                    [53, 5004][rng.range(0, 1) as usize]
                },
                packets: 0,
                start_us: 0,
                lifetime_us: 0,
                duplicated: spec.duplicate_one_in.is_some_and(|d| i % u64::from(d) == 0),
                stream: !tcp && rng.percent(50),
            }
        })
        .collect();
    let minimum = |c: &Conversation| {
        if c.tcp {
            MIN_TCP_PACKETS
        } else {
            MIN_UDP_PACKETS
        }
    };
    let floor: u64 = conversations.iter().map(minimum).sum();
    let extra_mean = (spec.packets.saturating_sub(floor) as f64 / n as f64).max(0.0);
    for c in &mut conversations {
        // Exponential, capped at 20 times the mean.
        let e = -(1.0 - rng.unit()).ln() * extra_mean;
        c.packets = minimum(c) + e.min(20.0 * extra_mean) as u64;
    }
    // Adjust to the exact total, one packet at a time round robin, keeping the minimums.
    let mut total: u64 = conversations.iter().map(|c| c.packets).sum();
    let mut i = 0usize;
    let mut stuck = 0usize;
    let count = conversations.len();
    while total != spec.packets && stuck < count {
        let c = &mut conversations[i % count];
        if total < spec.packets {
            c.packets += 1;
            total += 1;
            stuck = 0;
        } else if c.packets > minimum(c) {
            c.packets -= 1;
            total -= 1;
            stuck = 0;
        } else {
            stuck += 1;
        }
        i += 1;
    }
    let span_us = u64::from(spec.seconds.max(1)) * 1_000_000;
    for c in &mut conversations {
        let per_packet = rng.range(500, 2000);
        c.lifetime_us = (50_000 + c.packets * per_packet)
            .min(MAX_LIFETIME_US)
            .min(span_us);
        c.start_us = rng.range(0, span_us - c.lifetime_us);
    }
    conversations
}

/// Every packet's time, sorted; duplicates included.
fn schedule(conversations: &[Conversation], seed: u64) -> Vec<Slot> {
    let total: u64 = conversations
        .iter()
        .map(|c| c.packets * if c.duplicated { 2 } else { 1 })
        .sum();
    let mut slots = Vec::with_capacity(total as usize);
    let mut rng = Rng::new(seed ^ 0x5eed_7157);
    for (ci, c) in conversations.iter().enumerate() {
        let step = c.lifetime_us as f64 / c.packets as f64;
        for k in 0..c.packets {
            // Within its own step, so a conversation's packets stay in order.
            let t = c.start_us + ((k as f64 + 0.9 * rng.unit()) * step) as u64;
            slots.push(Slot {
                time_us: t,
                conversation: ci as u32,
                index: k as u32,
                duplicate: false,
            });
            if c.duplicated {
                slots.push(Slot {
                    time_us: t + rng.range(DUPLICATE_DELAY_US.0, DUPLICATE_DELAY_US.1),
                    conversation: ci as u32,
                    index: k as u32,
                    duplicate: true,
                });
            }
        }
    }
    slots.sort_unstable();
    slots
}

/// Appends conversation `ci`'s next packet to `frame`.
fn next_packet(ci: u32, c: &Conversation, s: &mut ConversationState, frame: &mut Vec<u8>) {
    let rng = s.rng.get_or_insert_with(|| {
        Rng::new(0x00c0_ffee ^ (u64::from(ci) << 20) ^ u64::from(c.client_port))
    });
    let k = s.sent;
    let last = c.packets - 1;
    if s.sent == 0 {
        s.seq = [rng.next_u64() as u32, rng.next_u64() as u32];
        s.ip_id = [rng.next_u64() as u16, rng.next_u64() as u16];
    }
    s.sent += 1;
    let mss = MTU - TCP_LEN - if c.ipv6 { IPV6_LEN } else { IPV4_LEN };
    // (from the server?, TCP flags, payload length)
    let (from_server, flags, payload) = if c.tcp {
        match k {
            0 => (false, SYN, 0),
            1 => (true, SYN | ACK, 0),
            2 => (false, ACK, 0),
            _ if k == last - 2 => (false, FIN | ACK, 0),
            _ if k == last - 1 => (true, FIN | ACK, 0),
            _ if k == last => (false, ACK, 0),
            _ => {
                if s.unacked >= 2 || (s.segments_left == 0 && s.unacked > 0) {
                    (false, ACK, 0)
                } else if s.segments_left == 0 {
                    s.segments_left = rng.range(1, 12) as u32;
                    (false, PSH | ACK, rng.range(80, 800) as usize)
                } else {
                    s.segments_left -= 1;
                    let len = if s.segments_left == 0 {
                        rng.range(100, mss as u64) as usize
                    } else {
                        mss
                    };
                    (
                        true,
                        if s.segments_left == 0 { PSH | ACK } else { ACK },
                        len,
                    )
                }
            }
        }
    } else if c.stream {
        (rng.percent(10), 0, rng.range(160, 1200) as usize)
    } else {
        let from_server = k % 2 == 1;
        let len = if from_server {
            rng.range(80, 500)
        } else {
            rng.range(30, 120)
        };
        (from_server, 0, len as usize)
    };
    if c.tcp && k > 2 && k < last - 2 {
        if from_server {
            s.unacked += 1;
        } else if payload == 0 {
            s.unacked = 0;
        }
    }
    let dir = usize::from(from_server);
    s.directions |= 1 << dir;
    let (src_port, dst_port) = if from_server {
        (c.server_port, c.client_port)
    } else {
        (c.client_port, c.server_port)
    };
    let l4_len = payload + if c.tcp { TCP_LEN } else { UDP_LEN };
    // Ethernet.
    let (client_mac, server_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (src_mac, dst_mac) = if from_server {
        (server_mac, client_mac)
    } else {
        (client_mac, server_mac)
    };
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    let protocol = if c.tcp { 6u8 } else { 17u8 };
    // IP, and the pseudo-header sum for the transport checksum.
    let ip_start = frame.len();
    let pseudo = if c.ipv6 {
        let (client, server) = ipv6_pair(ci);
        let (src, dst) = if from_server {
            (server, client)
        } else {
            (client, server)
        };
        frame.extend_from_slice(&0x86ddu16.to_be_bytes());
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(l4_len as u16).to_be_bytes());
        frame.extend_from_slice(&[protocol, 64]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        sum16(&src.octets()) + sum16(&dst.octets()) + l4_len as u32 + u32::from(protocol)
    } else {
        let (client, server) = ipv4_pair(ci);
        let (src, dst) = if from_server {
            (server, client)
        } else {
            (client, server)
        };
        let id = s.ip_id[dir];
        s.ip_id[dir] = id.wrapping_add(1);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&((IPV4_LEN + l4_len) as u16).to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&[0x40, 0, 64, protocol, 0, 0]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        let header = ip_start + 2..ip_start + 2 + IPV4_LEN;
        let checksum = fold(sum16(&frame[header.clone()]));
        frame[header.start + 10..header.start + 12].copy_from_slice(&checksum.to_be_bytes());
        sum16(&src.octets()) + sum16(&dst.octets()) + l4_len as u32 + u32::from(protocol)
    };
    // Transport header and payload.
    let l4_start = frame.len();
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    let checksum_at = if c.tcp {
        let seq = s.seq[dir];
        let ack = if flags & ACK != 0 { s.seq[1 - dir] } else { 0 };
        let consumed = payload as u32 + u32::from(flags & (SYN | FIN) != 0);
        s.seq[dir] = seq.wrapping_add(consumed);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&ack.to_be_bytes());
        frame.extend_from_slice(&[0x50, flags]);
        frame.extend_from_slice(&64240u16.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        l4_start + 16
    } else {
        frame.extend_from_slice(&(l4_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        l4_start + 6
    };
    let payload_start = frame.len();
    frame.resize(payload_start + payload, 0);
    let body = &mut frame[payload_start..];
    // Conversation and packet number first (every packet distinct), then filler.
    let tag = (u64::from(ci) << 32 | k).to_be_bytes();
    let n = body.len().min(tag.len());
    body[..n].copy_from_slice(&tag[..n]);
    let mut x = rng.next_u64();
    for chunk in body[n..].chunks_mut(8) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut checksum = fold(pseudo + sum16(&frame[l4_start..]));
    if !c.tcp && checksum == 0 {
        checksum = 0xffff;
    }
    frame[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// Client and server IPv4 addresses of conversation `ci` (50 servers).
fn ipv4_pair(ci: u32) -> (Ipv4Addr, Ipv4Addr) {
    let client = Ipv4Addr::new(10, 1 + (ci >> 16) as u8, (ci >> 8) as u8, ci as u8);
    let server = Ipv4Addr::new(10, 200, 0, 1 + (ci % 50) as u8);
    (client, server)
}

/// Client and server IPv6 addresses of conversation `ci`.
fn ipv6_pair(ci: u32) -> (Ipv6Addr, Ipv6Addr) {
    let client = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, (ci >> 16) as u16, ci as u16);
    let server = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1 + (ci % 50) as u16);
    (client, server)
}

/// One's-complement sum of 16-bit big-endian words (odd tail padded with zero), unfolded.
pub fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

/// Folds a sum into the one's-complement checksum.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(duplicate_one_in: Option<u32>) -> SynthSpec {
        SynthSpec {
            packets: 20_000,
            connections: 300,
            seconds: 5,
            seed: 7,
            duplicate_one_in,
        }
    }

    #[test]
    fn exact_count_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pcap");
        let b = dir.path().join("b.pcap");
        let sa = write_capture(&small(None), &a).unwrap();
        let sb = write_capture(&small(None), &b).unwrap();
        assert_eq!(sa.frames, 20_000);
        assert_eq!(sa, sb);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(sa.ip_bytes, sa.frame_bytes - 14 * sa.frames);
    }

    #[test]
    fn duplicates_are_the_only_repeated_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.pcap");
        let s = write_capture(&small(Some(4)), &path).unwrap();
        assert!(s.duplicates > 0);
        assert_eq!(s.frames, 20_000 + s.duplicates);
        let bytes = std::fs::read(&path).unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut repeated = 0;
        while let Some(p) = r.next_packet() {
            if !seen.insert(p.unwrap().data.to_vec()) {
                repeated += 1;
            }
        }
        assert_eq!(repeated, s.duplicates);
    }

    #[test]
    fn frames_parse_with_valid_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcap");
        write_capture(&small(None), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            let f = &p.data;
            let (ip_len, l4) = if f[12] == 0x08 {
                assert_eq!(fold(sum16(&f[14..34])), 0, "IPv4 header checksum");
                (usize::from(u16::from_be_bytes([f[16], f[17]])), 34)
            } else {
                (40 + usize::from(u16::from_be_bytes([f[18], f[19]])), 54)
            };
            assert_eq!(ip_len + 14, f.len());
            let _ = l4;
            n += 1;
        }
        assert_eq!(n, 20_000);
    }
}
