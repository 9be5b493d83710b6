//! The `netflow_v9` and `ipfix` outputs: a policy's packets summarised as flow records and
//! exported over UDP to a collector.
//!
//! ```yaml
//! outputs:
//!   - type: ipfix                 # or netflow_v9; the same settings
//!     collector: 198.18.0.150:2055
//!     active_timeout_s: 60        # split flows longer than this
//!     inactive_timeout_s: 15      # end flows idle this long
//!     template_refresh_s: 60      # resend templates this often (and in the first message)
//!     max_flows: 65536            # when the cache is full, export the longest-idle flow early
//!     observation_domain: 0       # IPFIX observation domain / NetFlow v9 source id
//! ```
//!
//! A [`FlowCache`] keeps one flow per (addresses, ports, protocol, tap id, direction): the same
//! connection seen at two tap points, or its two directions, are separate flows. IPv4 and IPv6
//! are counted (VLAN tags and IPv6 extension headers skipped); anything else is counted as
//! non-IP and not exported. TCP, UDP, SCTP and UDP-Lite flows have ports; ICMP and ICMPv6 carry
//! `type << 8 | code` as the destination port, the NetFlow convention; fragments after the
//! first (and every IPv6 fragment) have ports 0. Bytes are IP bytes on the wire, as NetFlow
//! and IPFIX define them: the packet's `original_len` (not its possibly cut captured length)
//! less its Ethernet and VLAN headers. Times are the packets' broker timestamps.
//!
//! A flow is exported at the first [`tick`](FlowExporter::tick) after it saw a TCP FIN or RST,
//! after `inactive_timeout_s` without packets, or `active_timeout_s` after its first packet
//! (the next packet starts a new record), and when the cache is full and it is the longest idle
//! flow. Expired records are sent at the next tick, packed into messages of at most 1400 bytes
//! from a non-blocking UDP socket connected to the collector; a send that fails (no collector,
//! full socket buffer) is counted and its records are lost. Records carry the tap id as
//! ingressInterface, the direction as flowDirection (0 ingress = to the pod; from the pod or
//! unknown = 1 egress) and the pod as interfaceName; see [`podtap_wire::netflow`].
//!
//! Counters: `packets`, `bytes` (as captured), `errors["send"]` (messages the socket refused),
//! `extra["flows_exported"]`, `extra["flows_active"]` (in the cache now),
//! `extra["flows_evicted"]` (exported early because the cache was full),
//! `extra["messages_sent"]` and `extra["non_ip_packets"]`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use podtap_wire::netflow::{FlowEncoder, FlowRecord, FlowVersion, POD_LEN, pod_field};
use serde::{Deserialize, Serialize};

use crate::output::{Labelled, OutputCounters};
use crate::packet::Direction;
use crate::pipeline::layers::Layers;

/// Largest `max_flows` accepted (flow slots are indexed by `u32`, and each takes ~200 bytes).
pub const MAX_FLOWS_LIMIT: usize = 1 << 24;

/// Configuration of a `netflow_v9` or `ipfix` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowExportConfig {
    /// Collector address and UDP port, e.g. `198.18.0.150:2055`.
    pub collector: SocketAddr,
    /// Export a flow that is still going this many seconds after its first packet, and start a
    /// new record for it (default 60).
    #[serde(default = "default_active_timeout_s")]
    pub active_timeout_s: u64,
    /// Export a flow after this many seconds without packets (default 15).
    #[serde(default = "default_inactive_timeout_s")]
    pub inactive_timeout_s: u64,
    /// Resend the templates this often, in seconds (default 60); they are also in the first
    /// message.
    #[serde(default = "default_template_refresh_s")]
    pub template_refresh_s: u64,
    /// Most flows kept at once (default 65536); when full, the flow idle the longest is
    /// exported early to make room, and counted as evicted.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// IPFIX observation domain id, or NetFlow v9 source id (default 0).
    #[serde(default)]
    pub observation_domain: u32,
}

fn default_active_timeout_s() -> u64 {
    60
}
fn default_inactive_timeout_s() -> u64 {
    15
}
fn default_template_refresh_s() -> u64 {
    60
}
fn default_max_flows() -> usize {
    65536
}

impl FlowExportConfig {
    /// Every problem with these settings, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.collector.port() == 0 {
            problems.push(format!(
                "collector {}: port 0 is not a port",
                self.collector
            ));
        }
        if self.collector.ip().is_unspecified() {
            problems.push(format!(
                "collector {}: give the collector's address, not an unspecified one",
                self.collector
            ));
        }
        // u32 milliseconds (NetFlow v9 uptime) is 49 days; keep well inside it.
        const MAX_S: u64 = 7 * 86_400;
        for (field, value) in [
            ("active_timeout_s", self.active_timeout_s),
            ("inactive_timeout_s", self.inactive_timeout_s),
            ("template_refresh_s", self.template_refresh_s),
        ] {
            if !(1..=MAX_S).contains(&value) {
                problems.push(format!("{field} {value}: must be in 1..={MAX_S} seconds"));
            }
        }
        if !(1..=MAX_FLOWS_LIMIT).contains(&self.max_flows) {
            problems.push(format!(
                "max_flows {}: must be in 1..={MAX_FLOWS_LIMIT}",
                self.max_flows
            ));
        }
        problems
    }
}

/// What identifies a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port, or ICMP `type << 8 | code` (0 when the protocol has none).
    pub dst_port: u16,
    /// IP protocol number (the last IPv6 next header).
    pub protocol: u8,
    /// Tap point id.
    pub tap: u16,
    /// Direction at the tap point.
    pub direction: Direction,
}

/// IP protocol numbers with ports in their first four bytes.
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const UDP_LITE: u8 = 136;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// TCP flag bits.
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// What one frame tells its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPacket {
    /// The flow it belongs to.
    pub key: FlowKey,
    /// Its TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Where its IP header starts in the frame (Ethernet and VLAN headers before it).
    pub ip_offset: usize,
}

impl FlowPacket {
    /// Reads an Ethernet frame seen at `tap` going `direction`; `None` when it is not IPv4 or
    /// IPv6. Cut frames are read as far as they go.
    pub fn of_frame(frame: &[u8], tap: u16, direction: Direction) -> Option<FlowPacket> {
        // The allocation-free header walk the stages use (no slicing, no copies).
        let layers = Layers::parse(frame);
        let ip_offset = layers.network?;
        let (src, dst) = match layers.ip_version {
            4 => {
                let a = |at: usize| -> Option<IpAddr> {
                    let b: [u8; 4] = frame
                        .get(ip_offset + at..ip_offset + at + 4)?
                        .try_into()
                        .ok()?;
                    Some(IpAddr::from(b))
                };
                (a(12)?, a(16)?)
            }
            6 => {
                let a = |at: usize| -> Option<IpAddr> {
                    let b: [u8; 16] = frame
                        .get(ip_offset + at..ip_offset + at + 16)?
                        .try_into()
                        .ok()?;
                    Some(IpAddr::from(b))
                };
                (a(8)?, a(24)?)
            }
            _ => return None,
        };
        let protocol = layers.protocol?;
        // Ports are read from the first fragment only, and from no IPv6 fragment (their
        // transport header may be in another fragment).
        let first_fragment =
            !layers.fragment || (layers.ip_version == 4 && layers.transport.is_some());
        let bytes = match layers.transport {
            Some(t) if first_fragment => frame.get(t..layers.end.max(t)).unwrap_or(&[]),
            _ => &[],
        };
        let (mut src_port, mut dst_port, mut tcp_flags) = (0, 0, 0);
        if first_fragment {
            match protocol {
                TCP | UDP | SCTP | UDP_LITE if bytes.len() >= 4 => {
                    src_port = u16::from_be_bytes([bytes[0], bytes[1]]);
                    dst_port = u16::from_be_bytes([bytes[2], bytes[3]]);
                    if protocol == TCP && bytes.len() >= 14 {
                        tcp_flags = bytes[13];
                    }
                }
                ICMP | ICMPV6 if bytes.len() >= 2 => {
                    dst_port = u16::from_be_bytes([bytes[0], bytes[1]]);
                }
                _ => {}
            }
        }
        Some(FlowPacket {
            key: FlowKey {
                src,
                dst,
                src_port,
                dst_port,
                protocol,
                tap,
                direction,
            },
            tcp_flags,
            ip_offset,
        })
    }
}

/// One flow's counts so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// What it is.
    pub key: FlowKey,
    /// Packets.
    pub packets: u64,
    /// IP bytes on the wire: `original_len` (or the captured length if larger) less the
    /// Ethernet and VLAN headers.
    pub bytes: u64,
    /// OR of the TCP flags of its packets.
    pub tcp_flags: u8,
    /// Timestamp of its first packet, Unix nanoseconds.
    pub first_ns: u64,
    /// Timestamp of its last packet, Unix nanoseconds.
    pub last_ns: u64,
    /// `namespace/pod` of its tap point when its first packet came, zero-padded (cut to
    /// [`POD_LEN`] bytes, see [`pod_field`]); all zero when unknown.
    pub pod: [u8; POD_LEN],
}

impl Flow {
    /// The pod name, empty when unknown.
    pub fn pod(&self) -> &str {
        let len = self.pod.iter().position(|&b| b == 0).unwrap_or(POD_LEN);
        // Cut at a character boundary when stored, so this cannot fail.
        std::str::from_utf8(&self.pod[..len]).unwrap_or("")
    }
}

/// Why a flow left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// It saw a TCP FIN or RST.
    Ended,
    /// No packet for the inactive timeout.
    Inactive,
    /// It has lasted the active timeout; later packets start a new record.
    Active,
    /// The cache was full and it was the flow idle the longest.
    Evicted,
    /// Everything was flushed ([`FlowCache::flush`]).
    Flushed,
}

/// No slot.
const NIL: u32 = u32::MAX;
/// Index of the idle-order list in [`Slot::links`]: ended flows first, then least recently
/// seen first.
const IDLE: usize = 0;
/// Index of the age list: oldest first packet first.
const AGE: usize = 1;

#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    flow: Flow,
    ended: bool,
    links: [Links; 2],
}

/// The flows of one output, with their expiry. All memory is taken when it is created:
/// observing a packet allocates nothing.
///
/// Flows live in a slab with two intrusive lists: by idleness (ended flows at the front, then
/// least recently seen) for inactive expiry and eviction, and by first packet for the active
/// timeout, so each expiry looks only at the flows it removes.
#[derive(Debug)]
pub struct FlowCache {
    /// Flow key -> slot. foldhash, randomly seeded per process: several times faster than
    /// SipHash on these small keys, and flow keys come from the network, so the seed must not
    /// be guessable.
    index: HashMap<FlowKey, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    lists: [List; 2],
    max_flows: usize,
    active_ns: u64,
    inactive_ns: u64,
    evicted: u64,
    non_ip: u64,
}

impl FlowCache {
    /// A cache for at most `max_flows` flows (at least 1, at most [`MAX_FLOWS_LIMIT`]).
    pub fn new(max_flows: usize, active_timeout_ns: u64, inactive_timeout_ns: u64) -> Self {
        let max_flows = max_flows.clamp(1, MAX_FLOWS_LIMIT);
        FlowCache {
            index: HashMap::with_capacity_and_hasher(
                max_flows,
                foldhash::fast::RandomState::default(),
            ),
            slots: Vec::with_capacity(max_flows),
            free: Vec::with_capacity(max_flows),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; 2],
            max_flows,
            active_ns: active_timeout_ns,
            inactive_ns: inactive_timeout_ns,
            evicted: 0,
            non_ip: 0,
        }
    }

    /// Adds a packet to its flow, creating the flow if needed. Flows that must leave first
    /// (this flow when it reached the active timeout, the longest idle one when the cache is
    /// full) are given to `export`. Returns `false`, and counts it, when the packet is not IP.
    pub fn observe(&mut self, pkt: Labelled<'_>, mut export: impl FnMut(&Flow, Expiry)) -> bool {
        let packet = pkt.packet;
        let source = packet.source;
        let Some(FlowPacket {
            key,
            tcp_flags,
            ip_offset,
        }) = FlowPacket::of_frame(&packet.data, source.tap, source.direction)
        else {
            self.non_ip += 1;
            return false;
        };
        let ts = packet.timestamp_ns;
        let wire_len = u64::from(packet.original_len).max(packet.data.len() as u64);
        let bytes = wire_len.saturating_sub(ip_offset as u64);

        let mut existing = self.index.get(&key).copied();
        if let Some(i) = existing
            && ts.saturating_sub(self.slots[i as usize].flow.first_ns) >= self.active_ns
        {
            export(&self.slots[i as usize].flow, Expiry::Active);
            self.remove(i);
            existing = None;
        }
        let i = match existing {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.flow.packets += 1;
                slot.flow.bytes += bytes;
                slot.flow.tcp_flags |= tcp_flags;
                slot.flow.first_ns = slot.flow.first_ns.min(ts);
                slot.flow.last_ns = slot.flow.last_ns.max(ts);
                if !slot.ended {
                    self.unlink(IDLE, i);
                    self.push_back(IDLE, i);
                }
                i
            }
            None => {
                if self.index.len() >= self.max_flows {
                    self.evict(&mut export);
                }
                let flow = Flow {
                    key,
                    packets: 1,
                    bytes,
                    tcp_flags,
                    first_ns: ts,
                    last_ns: ts,
                    pod: pkt.pod.map_or([0; POD_LEN], pod_field),
                };
                let i = self.insert(flow);
                self.push_back(IDLE, i);
                self.push_back(AGE, i);
                i
            }
        };
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 && !self.slots[i as usize].ended {
            self.slots[i as usize].ended = true;
            self.unlink(IDLE, i);
            self.push_front(IDLE, i);
        }
        true
    }

    /// Gives `export` every flow that is over at `now_ns`: ended by FIN or RST, idle for the
    /// inactive timeout, or lasting the active timeout.
    pub fn expire(&mut self, now_ns: u64, mut export: impl FnMut(&Flow, Expiry)) {
        while let Some(i) = self.head(IDLE) {
            let slot = &self.slots[i as usize];
            let why = if slot.ended {
                Expiry::Ended
            } else if now_ns.saturating_sub(slot.flow.last_ns) >= self.inactive_ns {
                Expiry::Inactive
            } else {
                break;
            };
            export(&slot.flow, why);
            self.remove(i);
        }
        while let Some(i) = self.head(AGE) {
            let flow = &self.slots[i as usize].flow;
            if now_ns.saturating_sub(flow.first_ns) < self.active_ns {
                break;
            }
            export(flow, Expiry::Active);
            self.remove(i);
        }
    }

    /// Gives `export` every flow, oldest first, and empties the cache.
    pub fn flush(&mut self, mut export: impl FnMut(&Flow, Expiry)) {
        while let Some(i) = self.head(AGE) {
            export(&self.slots[i as usize].flow, Expiry::Flushed);
            self.remove(i);
        }
    }

    /// Flows in the cache.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache holds no flow.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Flows exported early because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Packets that were not IPv4 or IPv6.
    pub fn non_ip_packets(&self) -> u64 {
        self.non_ip
    }

    /// Exports the flow idle the longest (an ended one if any) to make room.
    fn evict(&mut self, export: &mut impl FnMut(&Flow, Expiry)) {
        let Some(i) = self.head(IDLE) else {
            return;
        };
        let slot = &self.slots[i as usize];
        if slot.ended {
            export(&slot.flow, Expiry::Ended);
        } else {
            self.evicted += 1;
            export(&slot.flow, Expiry::Evicted);
        }
        self.remove(i);
    }

    fn insert(&mut self, flow: Flow) -> u32 {
        let unlinked = [Links {
            prev: NIL,
            next: NIL,
        }; 2];
        let slot = Slot {
            flow,
            ended: false,
            links: unlinked,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                // Below max_flows, so within the capacity reserved in `new`.
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(flow.key, i);
        i
    }

    fn remove(&mut self, i: u32) {
        self.unlink(IDLE, i);
        self.unlink(AGE, i);
        let key = self.slots[i as usize].flow.key;
        self.index.remove(&key);
        self.free.push(i);
    }

    fn head(&self, list: usize) -> Option<u32> {
        let head = self.lists[list].head;
        (head != NIL).then_some(head)
    }

    fn push_back(&mut self, list: usize, i: u32) {
        let tail = self.lists[list].tail;
        self.slots[i as usize].links[list] = Links {
            prev: tail,
            next: NIL,
        };
        if tail == NIL {
            self.lists[list].head = i;
        } else {
            self.slots[tail as usize].links[list].next = i;
        }
        self.lists[list].tail = i;
    }

    fn push_front(&mut self, list: usize, i: u32) {
        let head = self.lists[list].head;
        self.slots[i as usize].links[list] = Links {
            prev: NIL,
            next: head,
        };
        if head == NIL {
            self.lists[list].tail = i;
        } else {
            self.slots[head as usize].links[list].prev = i;
        }
        self.lists[list].head = i;
    }

    fn unlink(&mut self, list: usize, i: u32) {
        let Links { prev, next } = self.slots[i as usize].links[list];
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.slots[prev as usize].links[list].next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.slots[next as usize].links[list].prev = prev;
        }
        self.slots[i as usize].links[list] = Links {
            prev: NIL,
            next: NIL,
        };
    }
}

/// Largest export message, in bytes: fits a 1500-byte MTU with IPv6 and UDP headers.
pub const MAX_MESSAGE: usize = 1400;
/// Expired records kept before they are encoded and sent without waiting for the next tick.
const PENDING_RECORDS: usize = 256;
/// The exporter's notional boot time (NetFlow v9 sysUptime 0) is this long before the first
/// time it sees, so that no flow starts before it even when packets come a little out of
/// order.
const UPTIME_MARGIN_MS: u64 = 3_600_000;

/// Errors of the `netflow_v9` and `ipfix` outputs.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The configuration has problems (see [`FlowExportConfig::problems`]).
    #[error("flow export: invalid configuration: {}", problems.join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The UDP socket to the collector could not be set up.
    #[error("flow export to {collector}: cannot open a UDP socket: {source}")]
    Socket {
        /// The collector.
        collector: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Encodes expired flows and sends them to the collector.
#[derive(Debug)]
struct Sender {
    encoder: FlowEncoder,
    socket: UdpSocket,
    /// Records waiting to be encoded.
    pending: Vec<FlowRecord>,
    /// Unix ms of sysUptime 0; set from the first time seen.
    boot_ms: Option<u64>,
    template_refresh_ms: u64,
    /// When the templates were last sent.
    templates_ms: Option<u64>,
    flows_exported: u64,
    messages_sent: u64,
    send_errors: u64,
}

impl Sender {
    fn note_time(&mut self, now_ms: u64) {
        if self.boot_ms.is_none() {
            self.boot_ms = Some(now_ms.saturating_sub(UPTIME_MARGIN_MS));
        }
    }

    /// Queues a flow; sends when the queue is full.
    fn add(&mut self, flow: &Flow, now_ms: u64) {
        let k = flow.key;
        self.pending.push(FlowRecord {
            src: k.src,
            dst: k.dst,
            src_port: k.src_port,
            dst_port: k.dst_port,
            protocol: k.protocol,
            tcp_flags: flow.tcp_flags,
            packets: flow.packets,
            bytes: flow.bytes,
            start_ms: flow.first_ns / 1_000_000,
            end_ms: flow.last_ns / 1_000_000,
            tap: k.tap,
            to_pod: k.direction == Direction::ToPod,
            pod: flow.pod,
        });
        self.flows_exported += 1;
        if self.pending.len() >= PENDING_RECORDS {
            self.send(now_ms);
        }
    }

    /// Sends the queued records, with the templates first when they are due.
    fn send(&mut self, now_ms: u64) {
        self.note_time(now_ms);
        let templates = self
            .templates_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.template_refresh_ms);
        if self.pending.is_empty() && !templates {
            return;
        }
        // sysUptime is modulo 2^32 ms, as the encoder expects.
        let uptime_ms = now_ms.saturating_sub(self.boot_ms.unwrap_or(now_ms)) as u32;
        let Sender {
            encoder,
            socket,
            pending,
            messages_sent,
            send_errors,
            ..
        } = self;
        encoder.encode(
            pending,
            templates,
            now_ms,
            uptime_ms,
            MAX_MESSAGE,
            |message| match socket.send(message) {
                Ok(_) => *messages_sent += 1,
                Err(_) => *send_errors += 1,
            },
        );
        pending.clear();
        if templates {
            self.templates_ms = Some(now_ms);
        }
    }
}

/// Summarises one policy's packets as flows and exports them as NetFlow v9 or IPFIX; see the
/// [module](self) documentation.
#[derive(Debug)]
pub struct FlowExporter {
    cache: FlowCache,
    sender: Sender,
    kind: &'static str,
    /// Latest time seen (packet or tick), Unix ms: the export time of [`finish`](Self::finish).
    now_ms: u64,
    packets: u64,
    bytes: u64,
}

impl FlowExporter {
    /// Checks `cfg`, opens a UDP socket connected to the collector and takes the flow cache's
    /// memory. `version` is the output's `type`; `policy` only labels the log.
    pub fn new(
        cfg: &FlowExportConfig,
        version: FlowVersion,
        policy: &str,
    ) -> Result<Self, FlowError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(FlowError::Invalid { problems });
        }
        let collector = cfg.collector;
        let local: SocketAddr = match collector {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .and_then(|s| s.connect(collector).map(|()| s))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| FlowError::Socket { collector, source })?;
        let kind = match version {
            FlowVersion::V9 => "netflow_v9",
            FlowVersion::Ipfix => "ipfix",
        };
        tracing::debug!(policy, kind, %collector, "flow export ready");
        Ok(FlowExporter {
            cache: FlowCache::new(
                cfg.max_flows,
                cfg.active_timeout_s * 1_000_000_000,
                cfg.inactive_timeout_s * 1_000_000_000,
            ),
            sender: Sender {
                encoder: FlowEncoder::new(version, cfg.observation_domain),
                socket,
                pending: Vec::with_capacity(PENDING_RECORDS),
                boot_ms: None,
                template_refresh_ms: cfg.template_refresh_s * 1000,
                templates_ms: None,
                flows_exported: 0,
                messages_sent: 0,
                send_errors: 0,
            },
            kind,
            now_ms: 0,
            packets: 0,
            bytes: 0,
        })
    }

    /// The local address of the socket the messages leave from.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sender.socket.local_addr()
    }

    /// Adds a packet to its flow. Allocates nothing and sends nothing, unless a full cache or
    /// the active timeout exports flows and the queue of expired records is full.
    pub fn write(&mut self, pkt: Labelled<'_>) -> Result<(), FlowError> {
        self.packets += 1;
        self.bytes += pkt.packet.data.len() as u64;
        let now_ms = pkt.packet.timestamp_ns / 1_000_000;
        self.now_ms = self.now_ms.max(now_ms);
        let sender = &mut self.sender;
        sender.note_time(now_ms);
        self.cache.observe(pkt, |flow, _| sender.add(flow, now_ms));
        Ok(())
    }

    /// Expires flows (FIN/RST, inactive and active timeouts) and sends them, with the
    /// templates when they are due. Send errors are counted, not returned.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), FlowError> {
        let now_ms = now_ns / 1_000_000;
        self.now_ms = self.now_ms.max(now_ms);
        let sender = &mut self.sender;
        self.cache
            .expire(now_ns, |flow, _| sender.add(flow, now_ms));
        sender.send(now_ms);
        Ok(())
    }

    /// Exports every flow in the cache and sends everything queued.
    pub fn finish(&mut self) -> Result<(), FlowError> {
        let now_ms = self.now_ms;
        let sender = &mut self.sender;
        self.cache.flush(|flow, _| sender.add(flow, now_ms));
        if !sender.pending.is_empty() {
            sender.send(now_ms);
        }
        Ok(())
    }

    /// What this output counted.
    pub fn counters(&self) -> OutputCounters {
        let s = &self.sender;
        let mut errors = BTreeMap::new();
        if s.send_errors > 0 {
            errors.insert("send", s.send_errors);
        }
        OutputCounters {
            kind: self.kind,
            packets: self.packets,
            bytes: self.bytes,
            errors,
            extra: BTreeMap::from([
                ("flows_exported", s.flows_exported),
                ("flows_active", self.cache.len() as u64),
                ("flows_evicted", self.cache.evicted()),
                ("messages_sent", s.messages_sent),
                ("non_ip_packets", self.cache.non_ip_packets()),
            ]),
        }
    }
}

impl Drop for FlowExporter {
    /// Exports what is left, so that dropping an output without [`finish`] loses no flow.
    ///
    /// [`finish`]: FlowExporter::finish
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
