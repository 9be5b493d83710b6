//! From frames to call records: parses each frame's headers, feeds TCP segments to the
//! reassembler and UDP DNS datagrams to the DNS pairing, picks a decoder per connection from its
//! first bytes, and turns every decoded [`Call`] into a [`CallRecord`] with both endpoints'
//! identities.
//!
//! Decoder choice, per connection, from the first bytes of each side (up to
//! [`DETECT_BYTES`]): an HTTP/1.x request line → HTTP/1; the HTTP/2 preface or a plausible
//! frame sequence → HTTP/2 (gRPC is told apart per stream by its content-type); server port 53
//! → DNS over TCP. A connection that matches none within [`DETECT_BYTES`] is left alone
//! (counted `undetected`). Wire frames and the decrypted view of a connection carry the same
//! 5-tuple, so they are tracked in two separate connection tables.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

use crate::call::{Call, CallRecord, Emit, Endpoint, Redaction, Side, StreamDecoder};
use crate::dns::{DnsStreamDecoder, DnsTransactions};
use crate::http1::{Http1Decoder, looks_like_http1};
use crate::http2::{Http2Decoder, looks_like_http2};
use crate::reassembly::{Connection, Connections, Event, ReassemblyConfig, TcpSegment};

/// Bytes of each side looked at before a connection's protocol is decided.
pub const DETECT_BYTES: usize = 4096;
/// How long a DNS query waits for its response.
const DNS_TIMEOUT_NS: u64 = 5_000_000_000;

/// What the sessions counted, besides the decoders' problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounters {
    /// Frames handed in.
    pub frames: u64,
    /// Frames that were not IPv4/IPv6 TCP or UDP (ARP, ICMP, ...): skipped.
    pub skipped: u64,
    /// Frames whose headers could not be parsed: counted and skipped.
    pub malformed: u64,
    /// Frames of the decrypted view.
    pub decrypted_frames: u64,
    /// Connections whose protocol was recognised, by decoder.
    pub detected: BTreeMap<&'static str, u64>,
    /// Connections left alone: no known protocol in their first bytes.
    pub undetected: u64,
    /// Call records produced.
    pub records: u64,
}

/// What is known about an address: its pod and workload, or its service.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_ip: HashMap<IpAddr, Endpoint>,
}

impl Identities {
    /// No known addresses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the owner of `ip` (a pod's address, or a service's).
    pub fn insert(&mut self, ip: IpAddr, who: Endpoint) {
        self.by_ip.insert(ip, who);
    }

    /// The endpoint at `addr`, with what is known about its address.
    pub fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        let ip = canonical(addr.ip());
        let mut e = self.by_ip.get(&ip).cloned().unwrap_or_default();
        e.ip = Some(ip);
        e.port = addr.port();
        e
    }
}

/// The workload a pod belongs to: its `app.kubernetes.io/name` or `app` label, else its name
/// without the replica suffix (`cart-7d4b9c-x2x9z` → `cart-7d4b9c`, `cart-1` → `cart`).
pub fn workload_of(pod: &str, labels: &BTreeMap<String, String>) -> String {
    if let Some(w) = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
    {
        return w.clone();
    }
    match pod.rsplit_once('-') {
        Some((base, _)) if !base.is_empty() => base.to_string(),
        _ => pod.to_string(),
    }
}

/// Settings of the sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// The reassembler's limits.
    pub reassembly: ReassemblyConfig,
    /// What is redacted in records.
    pub redaction: Redaction,
}

/// The decoding state of one connection.
struct ConnState {
    decoder: Option<Box<dyn StreamDecoder>>,
    /// Bytes seen before the protocol was decided, in order, to replay into the decoder.
    held: Vec<(Side, Vec<u8>, u64)>,
    held_bytes: [usize; 2],
    /// Given up: no known protocol.
    ignored: bool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            decoder: None,
            held: Vec::new(),
            held_bytes: [0; 2],
            ignored: false,
        }
    }
}

/// Everything between frames and records.
pub struct Sessions {
    wire: Connections<ConnState>,
    decrypted: Connections<ConnState>,
    dns: DnsTransactions<(SocketAddr, SocketAddr, bool)>,
    identities: Identities,
    redaction: Redaction,
    counters: SessionCounters,
    emit: Emit,
    dns_out: Vec<((SocketAddr, SocketAddr, bool), Call)>,
    records: Vec<CallRecord>,
}

impl Sessions {
    /// Sessions with these settings and known addresses.
    pub fn new(config: SessionConfig, identities: Identities) -> Self {
        Sessions {
            wire: Connections::new(config.reassembly.clone()),
            decrypted: Connections::new(config.reassembly),
            dns: DnsTransactions::new(),
            identities,
            redaction: config.redaction,
            counters: SessionCounters::default(),
            emit: Emit::default(),
            dns_out: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Replaces the known addresses (the inventory changed).
    pub fn set_identities(&mut self, identities: Identities) {
        self.identities = identities;
    }

    /// One Ethernet frame seen at `ts_ns` (Unix ns); `decrypted` for the decrypted view.
    pub fn frame(&mut self, frame: &[u8], ts_ns: u64, decrypted: bool) {
        self.counters.frames += 1;
        if decrypted {
            self.counters.decrypted_frames += 1;
        }
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            self.counters.malformed += 1;
            return;
        };
        let (src_ip, dst_ip) = match &p.net {
            Some(NetSlice::Ipv4(v4)) => {
                if v4.header().is_fragmenting_payload() {
                    self.counters.skipped += 1;
                    return;
                }
                (
                    IpAddr::V4(v4.header().source_addr()),
                    IpAddr::V4(v4.header().destination_addr()),
                )
            }
            Some(NetSlice::Ipv6(v6)) => (
                IpAddr::V6(v6.header().source_addr()),
                IpAddr::V6(v6.header().destination_addr()),
            ),
            _ => {
                self.counters.skipped += 1;
                return;
            }
        };
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                let seg = TcpSegment {
                    src: SocketAddr::new(src_ip, t.source_port()),
                    dst: SocketAddr::new(dst_ip, t.destination_port()),
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags: tcp_flags(t),
                    payload: t.payload(),
                    ts_ns,
                };
                self.segment(&seg, decrypted);
            }
            Some(TransportSlice::Udp(u)) => {
                let (sport, dport) = (u.source_port(), u.destination_port());
                let src = SocketAddr::new(src_ip, sport);
                let dst = SocketAddr::new(dst_ip, dport);
                let (key, side) = if dport == 53 {
                    ((src, dst, decrypted), Side::Client)
                } else if sport == 53 {
                    ((dst, src, decrypted), Side::Server)
                } else {
                    self.counters.skipped += 1;
                    return;
                };
                self.dns.datagram(
                    key,
                    side,
                    u.payload(),
                    ts_ns,
                    &mut self.dns_out,
                    &mut self.emit,
                );
                self.take_dns();
            }
            _ => self.counters.skipped += 1,
        }
    }

    fn segment(&mut self, seg: &TcpSegment<'_>, decrypted: bool) {
        self.with_table(decrypted, |table, ctx| {
            table.segment(
                seg,
                |_| Some(ConnState::new()),
                |conn, state, ev| ctx.event(conn, state, ev),
            );
        });
    }

    /// Runs `f` on the wire or the decrypted connection table, with the context its events
    /// need.
    fn with_table(
        &mut self,
        decrypted: bool,
        f: impl FnOnce(&mut Connections<ConnState>, &mut Ctx<'_>),
    ) {
        let table = if decrypted {
            &mut self.decrypted
        } else {
            &mut self.wire
        };
        let mut ctx = Ctx {
            emit: &mut self.emit,
            redaction: &self.redaction,
            identities: &self.identities,
            counters: &mut self.counters,
            records: &mut self.records,
            decrypted,
        };
        f(table, &mut ctx);
    }

    /// Time passes (capture time): gaps and idle connections are declared, unanswered DNS
    /// queries expire.
    pub fn advance(&mut self, now_ns: u64) {
        for decrypted in [false, true] {
            self.with_table(decrypted, |table, ctx| {
                table.advance(now_ns, |conn, state, ev| ctx.event(conn, state, ev));
            });
        }
        self.dns.expire(now_ns, DNS_TIMEOUT_NS, &mut self.dns_out);
        self.take_dns();
    }

    /// Ends every connection (end of a capture): open calls are emitted.
    pub fn flush(&mut self, now_ns: u64) {
        for decrypted in [false, true] {
            self.with_table(decrypted, |table, ctx| {
                table.flush(now_ns, |conn, state, ev| ctx.event(conn, state, ev));
            });
        }
        self.dns.expire(u64::MAX, 0, &mut self.dns_out);
        self.take_dns();
    }

    /// The records produced since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, CallRecord> {
        self.records.drain(..)
    }

    /// What was counted.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// The decoders' problems and the reassembler's counters, by name.
    pub fn problems(&self) -> BTreeMap<&'static str, u64> {
        let mut p = self.emit.problems.clone();
        for table in [&self.wire, &self.decrypted] {
            let c = table.counters();
            *p.entry("tcp_gaps").or_default() += c.gaps;
            *p.entry("tcp_gap_bytes").or_default() += c.gap_bytes;
            *p.entry("tcp_evicted_connections").or_default() += c.evicted_connections;
        }
        p
    }

    fn take_dns(&mut self) {
        for ((client, server, decrypted), call) in self.dns_out.drain(..) {
            self.counters.records += 1;
            self.records.push(CallRecord {
                call,
                client: self.identities.endpoint(client),
                server: self.identities.endpoint(server),
                decrypted,
            });
        }
        self.emit.calls.clear();
    }
}

/// What a connection event needs, borrowed from [`Sessions`].
struct Ctx<'a> {
    emit: &'a mut Emit,
    redaction: &'a Redaction,
    identities: &'a Identities,
    counters: &'a mut SessionCounters,
    records: &'a mut Vec<CallRecord>,
    decrypted: bool,
}

impl Ctx<'_> {
    fn event(&mut self, conn: &Connection, state: &mut ConnState, ev: Event<'_>) {
        if state.ignored {
            return;
        }
        match ev {
            Event::Data { side, bytes, ts_ns } => {
                if let Some(d) = state.decoder.as_mut() {
                    d.data(side, bytes, ts_ns, self.emit);
                } else {
                    self.detect(conn, state, side, bytes, ts_ns);
                }
            }
            Event::Gap { side, len, ts_ns } => {
                if let Some(d) = state.decoder.as_mut() {
                    d.gap(side, len, ts_ns, self.emit);
                } else {
                    // Undecided: what was held is no longer contiguous; start over after it.
                    state.held.clear();
                    state.held_bytes = [0; 2];
                }
            }
            Event::Closed { ts_ns, .. } => {
                if let Some(d) = state.decoder.as_mut() {
                    d.close(ts_ns, self.emit);
                }
            }
        }
        self.records_of(conn);
    }

    fn detect(
        &mut self,
        conn: &Connection,
        state: &mut ConnState,
        side: Side,
        bytes: &[u8],
        ts_ns: u64,
    ) {
        let i = usize::from(side == Side::Server);
        state.held.push((side, bytes.to_vec(), ts_ns));
        state.held_bytes[i] += bytes.len();
        let joined = |s: Side| -> Vec<u8> {
            let mut v = Vec::new();
            for (hs, b, _) in &state.held {
                if *hs == s && v.len() < DETECT_BYTES {
                    v.extend_from_slice(b);
                }
            }
            v
        };
        let (client, server) = (joined(Side::Client), joined(Side::Server));
        let decoder: Option<(&'static str, Box<dyn StreamDecoder>)> =
            if looks_like_http2(&client, &server) {
                Some(("http2", Box::new(Http2Decoder::new(self.redaction.clone()))))
            } else if looks_like_http1(&client) {
                Some(("http1", Box::new(Http1Decoder::new(self.redaction.clone()))))
            } else if conn.server.port() == 53 {
                Some(("dns", Box::new(DnsStreamDecoder::new())))
            } else {
                None
            };
        match decoder {
            Some((name, mut d)) => {
                *self.counters.detected.entry(name).or_default() += 1;
                for (s, b, ts) in state.held.drain(..) {
                    d.data(s, &b, ts, self.emit);
                }
                state.held_bytes = [0; 2];
                state.decoder = Some(d);
            }
            None if state.held_bytes[0] >= DETECT_BYTES || state.held_bytes[1] >= DETECT_BYTES => {
                self.counters.undetected += 1;
                state.ignored = true;
                state.held = Vec::new();
            }
            None => {}
        }
    }

    fn records_of(&mut self, conn: &Connection) {
        for call in self.emit.calls.drain(..) {
            self.counters.records += 1;
            self.records.push(CallRecord {
                call,
                client: self.identities.endpoint(conn.client),
                server: self.identities.endpoint(conn.server),
                decrypted: self.decrypted,
            });
        }
    }
}

/// The flag byte of a TCP header (FIN 0x01 ... ACK 0x10).
fn tcp_flags(t: &etherparse::TcpSlice<'_>) -> u8 {
    u8::from(t.fin())
        | u8::from(t.syn()) << 1
        | u8::from(t.rst()) << 2
        | u8::from(t.psh()) << 3
        | u8::from(t.ack()) << 4
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_come_from_labels_or_names() {
        let mut labels = BTreeMap::new();
        assert_eq!(workload_of("cart-1", &labels), "cart");
        assert_eq!(workload_of("cart-7d4b9c-x2x9z", &labels), "cart-7d4b9c");
        assert_eq!(workload_of("single", &labels), "single");
        labels.insert("app".into(), "shop-cart".into());
        assert_eq!(workload_of("cart-1", &labels), "shop-cart");
    }
}
