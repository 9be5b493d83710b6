//! The L7 benchmark's synthetic capture: plaintext east-west HTTP traffic written as a classic
//! pcap (microsecond timestamps), deterministic for a seed, with the ground truth of every
//! request and response kept while it is generated.
//!
//! Each connection is a real TCP conversation between a client pod and a service: handshake
//! with MSS options, sequence and acknowledgment numbers that add up, valid IPv4/TCP checksums,
//! messages cut into MSS-sized segments (bodies span several packets), a delayed ACK every
//! second segment, and a FIN close. One connection in five is IPv6. The mix:
//!
//! - HTTP/1.1 ([`HTTP1_PORTS`]): keep-alive, 1-60 requests per connection, a curl client and
//!   an nginx server (`Host`, `User-Agent`, `Accept`, `X-Request-Id`; `Server`, `Date`,
//!   `Content-Type`, `Content-Length` or `Transfer-Encoding: chunked`), GET/POST/PUT/DELETE/
//!   PATCH with 200/201/204/304/400/404/409/500/503.
//! - HTTP/2 with prior knowledge ([`H2C_PORT`]): preface, SETTINGS both ways, WINDOW_UPDATE,
//!   batches of 1-8 concurrent streams whose responses are interleaved frame by frame, HPACK
//!   with Huffman strings, literals with incremental indexing, then indexed references to the
//!   dynamic table (which fills up and evicts), GOAWAY before the close.
//! - gRPC over HTTP/2 ([`GRPC_PORT`]): unary and server-streaming calls with length-prefixed
//!   protobuf messages, `grpc-status` trailers (or trailers-only errors).
//!
//! Connections start at random times over the span; their packets are merged in time order.
//! Each connection is generated twice: once to count its packets (generation stops once the
//! target is reached) and once, when its start comes, to write it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::BufWriter;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, bail};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use podtap_l7::hpack::{HUFFMAN_CODE_LENGTHS, STATIC_TABLE, huffman_codes};

use crate::synth::{EPOCH_S, Rng, fold, sum16};

/// Server ports of HTTP/1.1 connections.
pub const HTTP1_PORTS: [u16; 2] = [80, 8080];
/// Server port of HTTP/2 (prior knowledge, not gRPC) connections.
pub const H2C_PORT: u16 = 8081;
/// Server port of gRPC connections.
pub const GRPC_PORT: u16 = 50051;

/// Share of connections that are HTTP/1.1, in percent.
const HTTP1_PERCENT: u64 = 50;
/// Share of connections that are HTTP/2 REST (the rest are gRPC), in percent.
const H2C_PERCENT: u64 = 25;
/// Share of connections over IPv6, in percent.
const IPV6_PERCENT: u64 = 20;
/// Largest IP packet (a 1500-byte MTU).
const MTU: usize = 1500;
/// Client pods (connections from one pod use different ports).
const CLIENT_PODS: u32 = 997;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CLIENT: usize = 0;
const SERVER: usize = 1;

/// The services connections go to (namespace `shop`).
const SERVICES: [&str; 8] = [
    "catalog",
    "cart",
    "checkout",
    "users",
    "orders",
    "inventory",
    "payments",
    "search",
];

/// gRPC methods, per service of [`SERVICES`] (`/package.Service/Method`), besides the health check.
const GRPC_METHODS: [[&str; 2]; 8] = [
    [
        "/shop.catalog.v1.CatalogService/GetProduct",
        "/shop.catalog.v1.CatalogService/ListProducts",
    ],
    [
        "/shop.cart.v1.CartService/GetCart",
        "/shop.cart.v1.CartService/AddItem",
    ],
    [
        "/shop.checkout.v1.CheckoutService/PlaceOrder",
        "/shop.checkout.v1.CheckoutService/Quote",
    ],
    [
        "/shop.users.v1.UserService/GetUser",
        "/shop.users.v1.UserService/UpdateUser",
    ],
    [
        "/shop.orders.v1.OrderService/GetOrder",
        "/shop.orders.v1.OrderService/WatchOrders",
    ],
    [
        "/shop.inventory.v1.InventoryService/Reserve",
        "/shop.inventory.v1.InventoryService/StockLevels",
    ],
    [
        "/shop.payments.v1.PaymentService/Charge",
        "/shop.payments.v1.PaymentService/Refund",
    ],
    [
        "/shop.search.v1.SearchService/Search",
        "/shop.search.v1.SearchService/Suggest",
    ],
];
const GRPC_HEALTH: &str = "/grpc.health.v1.Health/Check";

/// The application protocol of a call, named as podtap's records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L7Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2, not gRPC.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
}

impl L7Protocol {
    /// Every protocol of the capture.
    pub const ALL: [L7Protocol; 3] = [L7Protocol::Http1, L7Protocol::Http2, L7Protocol::Grpc];

    /// The name in podtap's call records (`protocol`).
    pub fn as_str(self) -> &'static str {
        match self {
            L7Protocol::Http1 => "http1",
            L7Protocol::Http2 => "http2",
            L7Protocol::Grpc => "grpc",
        }
    }

    /// The protocol of a record's `protocol` name.
    pub fn from_name(name: &str) -> Option<L7Protocol> {
        L7Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The protocol the capture runs on a server port.
    pub fn of_server_port(port: u16) -> Option<L7Protocol> {
        match port {
            H2C_PORT => Some(L7Protocol::Http2),
            GRPC_PORT => Some(L7Protocol::Grpc),
            p if HTTP1_PORTS.contains(&p) => Some(L7Protocol::Http1),
            _ => None,
        }
    }
}

/// Requests and responses counted by what they say: what the generator sent, or what a tool
/// decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallTally {
    /// Requests by protocol, method and path (with its query string).
    pub requests: BTreeMap<(L7Protocol, String, String), u64>,
    /// Responses by protocol and HTTP status.
    pub statuses: BTreeMap<(L7Protocol, u32), u64>,
    /// gRPC calls by `grpc-status`.
    pub grpc_statuses: BTreeMap<u32, u64>,
}

impl CallTally {
    /// Counts one request.
    pub fn request(&mut self, protocol: L7Protocol, method: &str, path: &str) {
        *self
            .requests
            .entry((protocol, method.to_string(), path.to_string()))
            .or_default() += 1;
    }

    /// Counts one response.
    pub fn response(&mut self, protocol: L7Protocol, status: u32) {
        *self.statuses.entry((protocol, status)).or_default() += 1;
    }

    /// Counts one gRPC status.
    pub fn grpc_status(&mut self, status: u32) {
        *self.grpc_statuses.entry(status).or_default() += 1;
    }

    /// Requests of one protocol.
    pub fn requests_of(&self, protocol: L7Protocol) -> u64 {
        self.requests
            .iter()
            .filter(|((p, _, _), _)| *p == protocol)
            .map(|(_, n)| n)
            .sum()
    }

    /// Responses of one protocol.
    pub fn responses_of(&self, protocol: L7Protocol) -> u64 {
        self.statuses
            .iter()
            .filter(|((p, _), _)| *p == protocol)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of one protocol by method.
    pub fn methods_of(&self, protocol: L7Protocol) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for ((p, method, _), n) in &self.requests {
            if *p == protocol {
                *m.entry(method.clone()).or_default() += n;
            }
        }
        m
    }

    /// Responses of one protocol by status.
    pub fn statuses_of(&self, protocol: L7Protocol) -> BTreeMap<u32, u64> {
        self.statuses
            .iter()
            .filter(|((p, _), _)| *p == protocol)
            .map(|((_, s), n)| (*s, *n))
            .collect()
    }

    /// Distinct (protocol, method, path) triples.
    pub fn distinct_requests(&self) -> usize {
        self.requests.len()
    }

    /// Where `self` and `other` differ, at most `limit` lines (`what: self vs other`).
    pub fn differences(&self, other: &CallTally, limit: usize, grpc_statuses: bool) -> Vec<String> {
        fn diff<K: Ord + Clone>(
            a: &BTreeMap<K, u64>,
            b: &BTreeMap<K, u64>,
            show: impl Fn(&K) -> String,
            out: &mut Vec<String>,
        ) {
            let keys: std::collections::BTreeSet<&K> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (a.get(k).copied(), b.get(k).copied());
                if x != y {
                    out.push(format!(
                        "{}: {} vs {}",
                        show(k),
                        x.unwrap_or(0),
                        y.unwrap_or(0)
                    ));
                }
            }
        }
        let mut out = Vec::new();
        diff(
            &self.requests,
            &other.requests,
            |(p, m, path)| format!("{} request {m} {path}", p.as_str()),
            &mut out,
        );
        diff(
            &self.statuses,
            &other.statuses,
            |(p, s)| format!("{} response status {s}", p.as_str()),
            &mut out,
        );
        if grpc_statuses {
            diff(
                &self.grpc_statuses,
                &other.grpc_statuses,
                |s| format!("grpc-status {s}"),
                &mut out,
            );
        }
        let more = out.len().saturating_sub(limit);
        out.truncate(limit);
        if more > 0 {
            out.push(format!("... and {more} more"));
        }
        out
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct L7Spec {
    /// Packets to aim at: connections are added until there are at least this many (the last
    /// one finishes, so the capture has a few more).
    pub packets: u64,
    /// Seconds over which connections start.
    pub seconds: u32,
    /// Seed: the same spec gives the same file, byte for byte.
    pub seed: u64,
}

/// Ground truth about a generated capture.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L7Truth {
    /// Frames in the file.
    pub frames: u64,
    /// Bytes of those frames.
    pub frame_bytes: u64,
    /// TCP payload bytes.
    pub payload_bytes: u64,
    /// Connections by protocol.
    pub connections: BTreeMap<L7Protocol, u64>,
    /// Connections over IPv6.
    pub ipv6_connections: u64,
    /// Every request and response.
    pub tally: CallTally,
    /// HTTP/1.1 responses with `Transfer-Encoding: chunked`.
    pub chunked_responses: u64,
    /// Chunked HTTP/1.1 responses whose last segment holds only the end of the last-chunk
    /// terminator (`0\r\n\r\n` split across segments; tshark 4.0 does not finish those).
    pub split_chunk_terminators: u64,
    /// Messages (an HTTP/1.1 request or response, an HTTP/2 batch) cut into several segments.
    pub multi_segment_messages: u64,
    /// Most streams open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u64,
    /// HPACK header fields sent as a reference to the dynamic table.
    pub hpack_dynamic_references: u64,
    /// HPACK header fields inserted into a dynamic table (literal with incremental indexing).
    pub hpack_insertions: u64,
    /// HPACK dynamic-table entries evicted to make room.
    pub hpack_evictions: u64,
    /// Seconds from the first to the last frame.
    pub span_s: f64,
}

impl L7Truth {
    /// Requests of every protocol.
    pub fn requests(&self) -> u64 {
        L7Protocol::ALL
            .iter()
            .map(|&p| self.tally.requests_of(p))
            .sum()
    }
}

/// A connection found in the counting pass.
#[derive(Debug, Clone, Copy)]
struct Planned {
    index: u32,
    start_us: u64,
    frames: u64,
}

/// Writes the capture described by `spec` to `path` and returns its ground truth.
pub fn write_capture(spec: &L7Spec, path: &Path) -> anyhow::Result<L7Truth> {
    let span_us = u64::from(spec.seconds.max(1)) * 1_000_000;
    let mut truth = L7Truth::default();
    let mut plan = Vec::new();
    let mut total = 0u64;
    while total < spec.packets.max(1) {
        let index = u32::try_from(plan.len()).context("too many connections")?;
        let wire = connection(spec.seed, index, span_us, false, &mut truth);
        total += wire.count;
        truth.frame_bytes += wire.bytes;
        truth.payload_bytes += wire.payload_bytes;
        truth.multi_segment_messages += wire.multi_segment;
        plan.push(Planned {
            index,
            start_us: wire.start_us,
            frames: wire.count,
        });
    }
    truth.frames = total;
    plan.sort_by_key(|p| (p.start_us, p.index));

    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: 65535,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::with_capacity(1 << 20, file), header)
        .context("writing the pcap header")?;
    // The next frame of every open connection, by time; the open connections' frames.
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut open: HashMap<u32, std::vec::IntoIter<(u64, Vec<u8>)>> = HashMap::new();
    let mut scratch = L7Truth::default();
    let mut next = 0usize;
    let mut written = 0u64;
    let (mut first_us, mut last_us) = (None, 0u64);
    loop {
        let due = heap.peek().map(|Reverse((t, _))| *t);
        if let Some(p) = plan.get(next)
            && due.is_none_or(|t| p.start_us <= t)
        {
            let wire = connection(spec.seed, p.index, span_us, true, &mut scratch);
            if wire.frames.len() as u64 != p.frames {
                bail!(
                    "connection {} gave {} frames the second time, {} the first",
                    p.index,
                    wire.frames.len(),
                    p.frames
                );
            }
            if let Some(&(t, _)) = wire.frames.first() {
                heap.push(Reverse((t, p.index)));
                open.insert(p.index, wire.frames.into_iter());
            }
            next += 1;
            continue;
        }
        let Some(Reverse((_, index))) = heap.pop() else {
            break;
        };
        let frames = open
            .get_mut(&index)
            .context("a scheduled connection has no frames")?;
        let (t_us, bytes) = frames.next().context("a scheduled frame is missing")?;
        let ts = Duration::from_micros(EPOCH_S * 1_000_000 + t_us);
        writer
            .write_packet(&PcapPacket::new(ts, bytes.len() as u32, &bytes))
            .context("writing a packet")?;
        written += 1;
        first_us.get_or_insert(t_us);
        last_us = t_us;
        match frames.as_slice().first() {
            Some(&(t, _)) => heap.push(Reverse((t, index))),
            None => {
                open.remove(&index);
            }
        }
    }
    writer
        .into_writer()
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the capture")?
        .sync_all()
        .context("syncing the capture")?;
    if written != truth.frames {
        bail!("wrote {written} frames, planned {}", truth.frames);
    }
    truth.span_s = first_us.map_or(0.0, |f| (last_us - f) as f64 / 1e6);
    Ok(truth)
}

/// Generates connection `index`: its frames if `keep`, its counts either way, and adds its
/// calls to `truth`.
fn connection(seed: u64, index: u32, span_us: u64, keep: bool, truth: &mut L7Truth) -> Wire {
    let mut rng = Rng::new(seed ^ 0x17_c0ff_ee00 ^ (u64::from(index) << 24));
    let start_us = rng.range(0, span_us - 1);
    let roll = rng.range(0, 99);
    let protocol = if roll < HTTP1_PERCENT {
        L7Protocol::Http1
    } else if roll < HTTP1_PERCENT + H2C_PERCENT {
        L7Protocol::Http2
    } else {
        L7Protocol::Grpc
    };
    let ipv6 = rng.percent(IPV6_PERCENT);
    let service = rng.range(0, SERVICES.len() as u64 - 1) as usize;
    let port = match protocol {
        L7Protocol::Http1 => HTTP1_PORTS[rng.range(0, 1) as usize],
        L7Protocol::Http2 => H2C_PORT,
        L7Protocol::Grpc => GRPC_PORT,
    };
    let pod = index % CLIENT_PODS;
    let client_port = 32768 + ((index / CLIENT_PODS) % 28000) as u16;
    let server_host = service as u32 + 1 + 16 * protocol as u32;
    let addrs = if ipv6 {
        Addrs::V6([
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, pod as u16 + 1),
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, server_host as u16),
        ])
    } else {
        Addrs::V4([
            Ipv4Addr::new(10, 244, ((pod + 1) >> 8) as u8, ((pod + 1) & 0xff) as u8),
            Ipv4Addr::new(10, 96, 0, server_host as u8),
        ])
    };
    *truth.connections.entry(protocol).or_default() += 1;
    truth.ipv6_connections += u64::from(ipv6);
    let mut wire = Wire::new(keep, addrs, [client_port, port], start_us, &mut rng);
    let authority = if port == 80 {
        format!("{}.shop.svc.cluster.local", SERVICES[service])
    } else {
        format!("{}.shop.svc.cluster.local:{port}", SERVICES[service])
    };
    wire.handshake(&mut rng);
    match protocol {
        L7Protocol::Http1 => http1_connection(&mut wire, &mut rng, truth, service, &authority),
        L7Protocol::Http2 | L7Protocol::Grpc => {
            h2_connection(&mut wire, &mut rng, truth, service, &authority, protocol)
        }
    }
    wire.advance(rng.range(500, 30_000));
    wire.close(&mut rng);
    wire
}

/// Client and server addresses.
#[derive(Debug, Clone, Copy)]
enum Addrs {
    V4([Ipv4Addr; 2]),
    V6([Ipv6Addr; 2]),
}

/// One TCP connection's packets, built as they are sent.
struct Wire {
    keep: bool,
    addrs: Addrs,
    ports: [u16; 2],
    seq: [u32; 2],
    ip_id: [u16; 2],
    /// Segments each side received and has not acknowledged yet.
    unacked: [u32; 2],
    mss: usize,
    start_us: u64,
    t_us: u64,
    frames: Vec<(u64, Vec<u8>)>,
    count: u64,
    bytes: u64,
    payload_bytes: u64,
    multi_segment: u64,
}

impl Wire {
    fn new(keep: bool, addrs: Addrs, ports: [u16; 2], start_us: u64, rng: &mut Rng) -> Wire {
        let ip_len = match addrs {
            Addrs::V4(_) => 20,
            Addrs::V6(_) => 40,
        };
        Wire {
            keep,
            addrs,
            ports,
            seq: [rng.next_u64() as u32, rng.next_u64() as u32],
            ip_id: [rng.next_u64() as u16, rng.next_u64() as u16],
            unacked: [0, 0],
            mss: MTU - ip_len - 20,
            start_us,
            t_us: start_us,
            frames: Vec::new(),
            count: 0,
            bytes: 0,
            payload_bytes: 0,
            multi_segment: 0,
        }
    }

    fn advance(&mut self, us: u64) {
        self.t_us += us.max(1);
    }

    /// Appends one segment from `from` (its ACK field acknowledges everything received).
    fn packet(&mut self, from: usize, flags: u8, payload: &[u8]) {
        let to = 1 - from;
        let options: &[u8] = if flags & SYN != 0 {
            &[2, 4, (self.mss >> 8) as u8, self.mss as u8]
        } else {
            &[]
        };
        let tcp_len = 20 + options.len() + payload.len();
        let frame_len = 14 + (MTU - self.mss - 20) + tcp_len;
        let seq = self.seq[from];
        let ack = if flags & ACK != 0 { self.seq[to] } else { 0 };
        self.seq[from] = seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(u32::from(flags & (SYN | FIN) != 0));
        if flags & ACK != 0 {
            self.unacked[from] = 0;
        }
        let id = self.ip_id[from];
        self.ip_id[from] = id.wrapping_add(1);
        self.count += 1;
        self.bytes += frame_len as u64;
        self.payload_bytes += payload.len() as u64;
        if !self.keep {
            return;
        }
        let mut f = Vec::with_capacity(frame_len);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2 - from as u8]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1 + from as u8]);
        let pseudo = match self.addrs {
            Addrs::V6(a) => {
                let (s, d) = (a[from], a[to]);
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                sum16(&s.octets()) + sum16(&d.octets())
            }
            Addrs::V4(a) => {
                let (s, d) = (a[from], a[to]);
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                let checksum = fold(sum16(&f[14..34]));
                f[24..26].copy_from_slice(&checksum.to_be_bytes());
                sum16(&s.octets()) + sum16(&d.octets())
            }
        } + tcp_len as u32
            + 6;
        let l4 = f.len();
        f.extend_from_slice(&self.ports[from].to_be_bytes());
        f.extend_from_slice(&self.ports[to].to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[((20 + options.len()) as u8 / 4) << 4, flags]);
        f.extend_from_slice(&65535u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(options);
        f.extend_from_slice(payload);
        let checksum = fold(pseudo + sum16(&f[l4..]));
        f[l4 + 16..l4 + 18].copy_from_slice(&checksum.to_be_bytes());
        self.frames.push((self.t_us, f));
    }

    fn handshake(&mut self, rng: &mut Rng) {
        self.packet(CLIENT, SYN, &[]);
        self.advance(rng.range(30, 300));
        self.packet(SERVER, SYN | ACK, &[]);
        self.advance(rng.range(30, 300));
        self.packet(CLIENT, ACK, &[]);
    }

    /// Sends one message from `from` in MSS-sized segments; the peer acknowledges every
    /// second one.
    fn send(&mut self, from: usize, bytes: &[u8], rng: &mut Rng) {
        let to = 1 - from;
        let n = bytes.len().div_ceil(self.mss);
        if n > 1 {
            self.multi_segment += 1;
        }
        for (k, chunk) in bytes.chunks(self.mss).enumerate() {
            self.advance(rng.range(4, 25));
            let last = k + 1 == n;
            self.packet(from, if last { PSH | ACK } else { ACK }, chunk);
            self.unacked[to] += 1;
            if self.unacked[to] >= 2 && !last {
                self.advance(rng.range(2, 15));
                self.packet(to, ACK, &[]);
            }
        }
    }

    /// A pure ACK from `side` if it owes one.
    fn ack(&mut self, side: usize) {
        if self.unacked[side] > 0 {
            self.packet(side, ACK, &[]);
        }
    }

    /// The server takes `latency_us` to answer; past 40 ms it sends a delayed ACK first.
    fn server_thinks(&mut self, latency_us: u64) {
        if latency_us > 40_000 {
            self.advance(40_000);
            self.ack(SERVER);
            self.advance(latency_us - 40_000);
        } else {
            self.advance(latency_us);
        }
    }

    fn close(&mut self, rng: &mut Rng) {
        self.packet(CLIENT, FIN | ACK, &[]);
        self.advance(rng.range(30, 300));
        self.packet(SERVER, FIN | ACK, &[]);
        self.advance(rng.range(30, 300));
        self.packet(CLIENT, ACK, &[]);
    }
}

/// One REST call: what the client asks and what the server answers.
struct RestCall {
    method: &'static str,
    path: String,
    status: u32,
    request_body: usize,
    response_body: usize,
}

/// One of `choices` (percent, value), drawn by the percentages (which add up to 100).
fn pick(rng: &mut Rng, choices: &[(u64, u32)]) -> u32 {
    let mut r = rng.range(0, 99);
    for &(percent, value) in choices {
        if r < percent {
            return value;
        }
        r -= percent;
    }
    choices.last().map_or(0, |c| c.1)
}

/// Draws a REST call to `service`.
fn rest_call(rng: &mut Rng, service: usize) -> RestCall {
    let svc = SERVICES[service];
    let id = rng.range(1, 99_999);
    let sized = |rng: &mut Rng, lo: u64, hi: u64, big_percent: u64| -> usize {
        if rng.percent(big_percent) {
            rng.range(20_000, 120_000) as usize
        } else {
            rng.range(lo, hi) as usize
        }
    };
    let roll = rng.range(0, 99);
    let (method, path, status, request_body, ok_body) = match roll {
        0..=44 => {
            let s = pick(rng, &[(88, 200), (6, 404), (2, 304), (2, 500), (2, 503)]);
            let body = sized(rng, 200, 4000, 5);
            ("GET", format!("/api/v1/{svc}/{id}"), s, 0, body)
        }
        45..=59 => {
            let s = pick(rng, &[(97, 200), (3, 503)]);
            let page = rng.range(1, 20);
            let body = sized(rng, 2000, 16000, 15);
            (
                "GET",
                format!("/api/v1/{svc}?page={page}&limit=50"),
                s,
                0,
                body,
            )
        }
        60..=64 => ("GET", "/healthz".to_string(), 200, 0, 2),
        65..=81 => {
            let s = pick(rng, &[(80, 201), (10, 400), (5, 409), (5, 500)]);
            let body = sized(rng, 100, 6000, 5);
            let resp = rng.range(100, 800) as usize;
            ("POST", format!("/api/v1/{svc}"), s, body, resp)
        }
        82..=89 => {
            let s = pick(rng, &[(70, 200), (30, 204)]);
            let body = rng.range(200, 3000) as usize;
            let resp = rng.range(200, 1500) as usize;
            ("PUT", format!("/api/v1/{svc}/{id}"), s, body, resp)
        }
        90..=95 => {
            let s = pick(rng, &[(85, 204), (15, 404)]);
            ("DELETE", format!("/api/v1/{svc}/{id}"), s, 0, 0)
        }
        _ => {
            let body = rng.range(50, 500) as usize;
            let resp = rng.range(200, 1500) as usize;
            ("PATCH", format!("/api/v1/{svc}/{id}"), 200, body, resp)
        }
    };
    let response_body = match status {
        204 | 304 => 0,
        200 | 201 => ok_body,
        _ => rng.range(40, 200) as usize,
    };
    RestCall {
        method,
        path,
        status,
        request_body,
        response_body,
    }
}

fn reason(status: u32) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A request id as 32 hex digits.
fn request_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}

/// Latency of a server, in microseconds: mostly a few milliseconds, a slow tail.
fn latency(rng: &mut Rng) -> u64 {
    if rng.percent(5) {
        rng.range(30_000, 250_000)
    } else {
        rng.range(300, 12_000)
    }
}

/// The time between two requests of a connection, in microseconds.
fn think(rng: &mut Rng) -> u64 {
    rng.range(500, 60_000)
}

/// Requests (or request batches) on one connection: mostly a few, some long-lived.
fn requests_per_connection(rng: &mut Rng) -> u64 {
    if rng.percent(10) {
        rng.range(20, 60)
    } else {
        rng.range(1, 12)
    }
}

/// An HTTP `Date` value for a time in microseconds after [`EPOCH_S`].
fn http_date(t_us: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = EPOCH_S + t_us / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// JSON-looking filler for bodies.
static FILLER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut s = String::from("[");
    let mut i = 0u32;
    while s.len() < 8192 {
        s.push_str(&format!(
            "{{\"id\":{},\"sku\":\"SKU-{:06}\",\"name\":\"item {}\",\"price\":{}.{:02},\"qty\":{}}},",
            1000 + i,
            (i * 7919) % 1_000_000,
            i,
            (i * 37) % 500,
            (i * 13) % 100,
            i % 9 + 1
        ));
        i += 1;
    }
    s.into_bytes()
});

/// Appends `n` filler bytes.
fn fill(out: &mut Vec<u8>, mut n: usize) {
    let f = &FILLER[..];
    while n > 0 {
        let k = n.min(f.len());
        out.extend_from_slice(&f[..k]);
        n -= k;
    }
}

/// Runs an HTTP/1.1 keep-alive connection: requests one after the other.
fn http1_connection(
    wire: &mut Wire,
    rng: &mut Rng,
    truth: &mut L7Truth,
    service: usize,
    authority: &str,
) {
    let requests = requests_per_connection(rng);
    let mut msg = Vec::new();
    for r in 0..requests {
        wire.advance(if r == 0 {
            rng.range(50, 400)
        } else {
            think(rng)
        });
        let call = rest_call(rng, service);
        msg.clear();
        msg.extend_from_slice(
            format!(
                "{} {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nX-Request-Id: {}\r\n",
                call.method,
                call.path,
                request_id(rng)
            )
            .as_bytes(),
        );
        if call.status == 304 {
            msg.extend_from_slice(
                format!("If-None-Match: \"{:08x}\"\r\n", rng.next_u64() as u32).as_bytes(),
            );
        }
        if call.request_body > 0 {
            msg.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    call.request_body
                )
                .as_bytes(),
            );
        }
        msg.extend_from_slice(b"\r\n");
        fill(&mut msg, call.request_body);
        wire.send(CLIENT, &msg, rng);
        truth
            .tally
            .request(L7Protocol::Http1, call.method, &call.path);

        wire.server_thinks(latency(rng));
        let chunked = call.response_body > 0 && call.status == 200 && rng.percent(30);
        msg.clear();
        msg.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nServer: nginx/1.22.1\r\nDate: {}\r\n",
                call.status,
                reason(call.status),
                http_date(wire.t_us)
            )
            .as_bytes(),
        );
        if call.response_body > 0 {
            msg.extend_from_slice(b"Content-Type: application/json\r\n");
            if chunked {
                msg.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            } else {
                msg.extend_from_slice(
                    format!("Content-Length: {}\r\n", call.response_body).as_bytes(),
                );
            }
        } else if call.status != 204 && call.status != 304 {
            msg.extend_from_slice(b"Content-Length: 0\r\n");
        }
        if call.status == 304 {
            msg.extend_from_slice(
                format!("ETag: \"{:08x}\"\r\n", rng.next_u64() as u32).as_bytes(),
            );
        }
        msg.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        if chunked {
            truth.chunked_responses += 1;
            let mut left = call.response_body;
            while left > 0 {
                let n = (rng.range(512, 8192) as usize).min(left);
                msg.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                fill(&mut msg, n);
                msg.extend_from_slice(b"\r\n");
                left -= n;
            }
            msg.extend_from_slice(b"0\r\n\r\n");
            let last = msg.len() % wire.mss;
            if msg.len() > wire.mss && (1..5).contains(&last) {
                truth.split_chunk_terminators += 1;
            }
        } else {
            fill(&mut msg, call.response_body);
        }
        wire.send(SERVER, &msg, rng);
        truth.tally.response(L7Protocol::Http1, call.status);
        wire.advance(rng.range(20, 200));
        wire.ack(CLIENT);
    }
}

/// HTTP/2 frame types and flags used here (RFC 9113 6).
mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE's default.
    pub const MAX_FRAME: usize = 16_384;
}

/// Appends one HTTP/2 frame.
fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A SETTINGS payload.
fn h2_settings(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in settings {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    p
}

/// One header field to encode: name, value, whether to index it.
type Field = (&'static str, String, Indexing);

/// What is left to send of one stream's response.
enum Piece {
    /// A header block (the response headers, or trailers) and whether it ends the stream.
    Headers(Vec<Field>, bool),
    /// A DATA frame's payload and whether it ends the stream.
    Data(Vec<u8>, bool),
}

/// Splits `body` into DATA pieces of random sizes up to the frame limit, the last ending the
/// stream if `end`.
fn data_pieces(rng: &mut Rng, body: &[u8], end: bool, out: &mut VecDeque<Piece>) {
    let mut rest = body;
    while !rest.is_empty() {
        let n = (rng.range(4096, h2::MAX_FRAME as u64) as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        out.push_back(Piece::Data(chunk.to_vec(), end && rest.is_empty()));
    }
}

/// A gRPC length-prefixed message holding a protobuf message of about `len` bytes (field 1, a
/// string).
fn grpc_message(out: &mut Vec<u8>, len: usize) {
    let mut proto = vec![0x0a];
    let mut v = len as u64;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            proto.push(b);
            break;
        }
        proto.push(b | 0x80);
    }
    fill(&mut proto, len);
    out.push(0);
    out.extend_from_slice(&(proto.len() as u32).to_be_bytes());
    out.extend_from_slice(&proto);
}

/// Runs an HTTP/2 connection (REST or gRPC): batches of concurrent streams.
fn h2_connection(
    wire: &mut Wire,
    rng: &mut Rng,
    truth: &mut L7Truth,
    service: usize,
    authority: &str,
    protocol: L7Protocol,
) {
    let grpc = protocol == L7Protocol::Grpc;
    let mut client_hpack = HpackEncoder::default();
    let mut server_hpack = HpackEncoder::default();
    let mut c = h2::PREFACE.to_vec();
    h2_frame(
        &mut c,
        h2::SETTINGS,
        0,
        0,
        &h2_settings(&[(2, 0), (4, 4_194_304), (6, 10_485_760)]),
    );
    h2_frame(
        &mut c,
        h2::WINDOW_UPDATE,
        0,
        0,
        &1_073_676_289u32.to_be_bytes(),
    );
    wire.advance(rng.range(50, 400));
    wire.send(CLIENT, &c, rng);
    let mut s = Vec::new();
    h2_frame(
        &mut s,
        h2::SETTINGS,
        0,
        0,
        &h2_settings(&[(3, 100), (4, 1_048_576), (5, h2::MAX_FRAME as u32)]),
    );
    h2_frame(&mut s, h2::WINDOW_UPDATE, 0, 0, &983_041u32.to_be_bytes());
    h2_frame(&mut s, h2::SETTINGS, h2::ACK, 0, &[]);
    wire.advance(rng.range(50, 300));
    wire.send(SERVER, &s, rng);

    let user_agent = if grpc {
        "grpc-go/1.62.1"
    } else {
        "curl/7.88.1"
    };
    let mut settings_ack = true;
    let mut next_stream = 1u32;
    let (mut to_client, mut to_server) = (0u32, 0u32);
    let batches = requests_per_connection(rng);
    for b in 0..batches {
        wire.advance(if b == 0 {
            rng.range(50, 400)
        } else {
            think(rng)
        });
        let concurrent = if rng.percent(60) {
            rng.range(1, 3)
        } else {
            rng.range(4, 8)
        };
        truth.max_concurrent_streams = truth.max_concurrent_streams.max(concurrent);
        c.clear();
        if std::mem::take(&mut settings_ack) {
            h2_frame(&mut c, h2::SETTINGS, h2::ACK, 0, &[]);
        }
        if to_client > 0 {
            h2_frame(&mut c, h2::WINDOW_UPDATE, 0, 0, &to_client.to_be_bytes());
            to_client = 0;
        }
        let mut responses: Vec<(u32, VecDeque<Piece>)> = Vec::new();
        for _ in 0..concurrent {
            let stream = next_stream;
            next_stream += 2;
            let mut block = Vec::new();
            let mut pieces = VecDeque::new();
            let mut body = Vec::new();
            let date = http_date(wire.t_us);
            if grpc {
                let path = if rng.percent(10) {
                    GRPC_HEALTH
                } else {
                    GRPC_METHODS[service][rng.range(0, 1) as usize]
                };
                let fields: Vec<Field> = vec![
                    (":method", "POST".into(), Indexing::Incremental),
                    (":scheme", "http".into(), Indexing::Incremental),
                    (":path", path.into(), Indexing::Incremental),
                    (":authority", authority.into(), Indexing::Incremental),
                    (
                        "content-type",
                        "application/grpc".into(),
                        Indexing::Incremental,
                    ),
                    ("user-agent", user_agent.into(), Indexing::Incremental),
                    ("te", "trailers".into(), Indexing::Incremental),
                    (
                        "grpc-timeout",
                        format!("{}m", rng.range(900, 5000)),
                        Indexing::Without,
                    ),
                ];
                client_hpack.block(&mut block, &fields);
                h2_frame(&mut c, h2::HEADERS, h2::END_HEADERS, stream, &block);
                grpc_message(&mut body, rng.range(10, 1500) as usize);
                let n = body.len().div_ceil(h2::MAX_FRAME);
                for (k, chunk) in body.chunks(h2::MAX_FRAME).enumerate() {
                    let flags = if k + 1 == n { h2::END_STREAM } else { 0 };
                    h2_frame(&mut c, h2::DATA, flags, stream, chunk);
                }
                to_server += body.len() as u32;
                truth.tally.request(protocol, "POST", path);
                truth.tally.response(protocol, 200);
                let status = pick(rng, &[(85, 0), (5, 5), (4, 14), (3, 4), (3, 3)]);
                truth.tally.grpc_status(status);
                let message = match status {
                    5 => "not found",
                    14 => "upstream connect error",
                    4 => "deadline exceeded",
                    _ => "invalid argument",
                };
                let mut head: Vec<Field> = vec![
                    (":status", "200".into(), Indexing::Incremental),
                    (
                        "content-type",
                        "application/grpc".into(),
                        Indexing::Incremental,
                    ),
                ];
                if status != 0 && rng.percent(50) {
                    // Trailers-only.
                    head.push(("grpc-status", status.to_string(), Indexing::Incremental));
                    head.push(("grpc-message", message.into(), Indexing::Without));
                    pieces.push_back(Piece::Headers(head, true));
                } else {
                    pieces.push_back(Piece::Headers(head, false));
                    let mut out = Vec::new();
                    let messages = if status == 0 && rng.percent(15) {
                        rng.range(2, 6)
                    } else {
                        u64::from(status == 0)
                    };
                    for _ in 0..messages {
                        grpc_message(&mut out, rng.range(20, 12_000) as usize);
                    }
                    data_pieces(rng, &out, false, &mut pieces);
                    to_client += out.len() as u32;
                    let mut trailers: Vec<Field> =
                        vec![("grpc-status", status.to_string(), Indexing::Incremental)];
                    if status != 0 {
                        trailers.push(("grpc-message", message.into(), Indexing::Without));
                    }
                    pieces.push_back(Piece::Headers(trailers, true));
                }
            } else {
                let call = rest_call(rng, service);
                let mut fields: Vec<Field> = vec![
                    (":method", call.method.into(), Indexing::Incremental),
                    (":scheme", "http".into(), Indexing::Incremental),
                    (":path", call.path.clone(), Indexing::Incremental),
                    (":authority", authority.into(), Indexing::Incremental),
                    ("user-agent", user_agent.into(), Indexing::Incremental),
                    ("accept", "*/*".into(), Indexing::Incremental),
                    ("x-request-id", request_id(rng), Indexing::Without),
                ];
                if call.request_body > 0 {
                    fields.push((
                        "content-type",
                        "application/json".into(),
                        Indexing::Incremental,
                    ));
                    fields.push((
                        "content-length",
                        call.request_body.to_string(),
                        Indexing::Without,
                    ));
                }
                client_hpack.block(&mut block, &fields);
                let end = call.request_body == 0;
                h2_frame(
                    &mut c,
                    h2::HEADERS,
                    h2::END_HEADERS | if end { h2::END_STREAM } else { 0 },
                    stream,
                    &block,
                );
                fill(&mut body, call.request_body);
                let n = body.len().div_ceil(h2::MAX_FRAME);
                for (k, chunk) in body.chunks(h2::MAX_FRAME).enumerate() {
                    h2_frame(
                        &mut c,
                        h2::DATA,
                        if k + 1 == n { h2::END_STREAM } else { 0 },
                        stream,
                        chunk,
                    );
                }
                to_server += body.len() as u32;
                truth.tally.request(protocol, call.method, &call.path);
                truth.tally.response(protocol, call.status);
                let mut head: Vec<Field> = vec![
                    (":status", call.status.to_string(), Indexing::Incremental),
                    ("server", "envoy".into(), Indexing::Incremental),
                    ("date", date, Indexing::Without),
                ];
                if call.response_body > 0 {
                    head.push((
                        "content-type",
                        "application/json".into(),
                        Indexing::Incremental,
                    ));
                    head.push((
                        "content-length",
                        call.response_body.to_string(),
                        Indexing::Without,
                    ));
                    pieces.push_back(Piece::Headers(head, false));
                    let mut out = Vec::new();
                    fill(&mut out, call.response_body);
                    data_pieces(rng, &out, true, &mut pieces);
                    to_client += out.len() as u32;
                } else {
                    pieces.push_back(Piece::Headers(head, true));
                }
            }
            responses.push((stream, pieces));
        }
        wire.send(CLIENT, &c, rng);

        // The server answers in its own order, interleaving the streams frame by frame.
        wire.server_thinks(latency(rng));
        for i in (1..responses.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            responses.swap(i, j);
        }
        s.clear();
        if to_server > 0 {
            h2_frame(&mut s, h2::WINDOW_UPDATE, 0, 0, &to_server.to_be_bytes());
            to_server = 0;
        }
        let mut block = Vec::new();
        while !responses.is_empty() {
            for (stream, pieces) in &mut responses {
                match pieces.pop_front() {
                    Some(Piece::Headers(fields, end)) => {
                        block.clear();
                        server_hpack.block(&mut block, &fields);
                        let flags = h2::END_HEADERS | if end { h2::END_STREAM } else { 0 };
                        h2_frame(&mut s, h2::HEADERS, flags, *stream, &block);
                    }
                    Some(Piece::Data(payload, end)) => {
                        let flags = if end { h2::END_STREAM } else { 0 };
                        h2_frame(&mut s, h2::DATA, flags, *stream, &payload);
                    }
                    None => {}
                }
            }
            responses.retain(|(_, p)| !p.is_empty());
        }
        wire.send(SERVER, &s, rng);
        wire.advance(rng.range(20, 200));
        wire.ack(CLIENT);
    }
    for hpack in [&client_hpack, &server_hpack] {
        truth.hpack_dynamic_references += hpack.dynamic_references;
        truth.hpack_insertions += hpack.insertions;
        truth.hpack_evictions += hpack.evictions;
    }
    // The client says goodbye (no server-initiated stream was processed).
    c.clear();
    let mut goaway = 0u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    h2_frame(&mut c, h2::GOAWAY, 0, 0, &goaway);
    wire.advance(rng.range(1_000, 30_000));
    wire.send(CLIENT, &c, rng);
}

/// How a literal header field is sent (RFC 7541 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexing {
    /// Literal with incremental indexing: added to the dynamic table, later sent by index.
    Incremental,
    /// Literal without indexing (values that change every time).
    Without,
}

/// Size of the dynamic table (SETTINGS_HEADER_TABLE_SIZE's default).
const HPACK_TABLE_SIZE: usize = 4096;

/// An HPACK encoder for one direction of a connection: static and dynamic table lookups,
/// Huffman-coded strings when shorter.
#[derive(Debug, Default)]
struct HpackEncoder {
    /// Newest first.
    table: VecDeque<(&'static str, String)>,
    size: usize,
    dynamic_references: u64,
    insertions: u64,
    evictions: u64,
}

impl HpackEncoder {
    /// Encodes a header block.
    fn block(&mut self, out: &mut Vec<u8>, fields: &[Field]) {
        for (name, value, how) in fields {
            self.field(out, name, value, *how);
        }
    }

    fn field(&mut self, out: &mut Vec<u8>, name: &'static str, value: &str, how: Indexing) {
        if let Some(i) = STATIC_TABLE
            .iter()
            .position(|&(n, v)| n == name && v == value)
        {
            hpack_int(out, 0x80, 7, i + 1);
            return;
        }
        if let Some(i) = self
            .table
            .iter()
            .position(|(n, v)| *n == name && v == value)
        {
            hpack_int(out, 0x80, 7, STATIC_TABLE.len() + 1 + i);
            self.dynamic_references += 1;
            return;
        }
        let name_index = STATIC_TABLE
            .iter()
            .position(|&(n, _)| n == name)
            .map(|i| i + 1)
            .or_else(|| {
                self.table
                    .iter()
                    .position(|(n, _)| *n == name)
                    .map(|i| STATIC_TABLE.len() + 1 + i)
            })
            .unwrap_or(0);
        match how {
            Indexing::Incremental => hpack_int(out, 0x40, 6, name_index),
            Indexing::Without => hpack_int(out, 0x00, 4, name_index),
        }
        if name_index == 0 {
            hpack_string(out, name.as_bytes());
        }
        hpack_string(out, value.as_bytes());
        if how == Indexing::Incremental {
            self.insert(name, value);
        }
    }

    fn insert(&mut self, name: &'static str, value: &str) {
        let size = name.len() + value.len() + 32;
        while self.size + size > HPACK_TABLE_SIZE {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
            self.evictions += 1;
        }
        if size <= HPACK_TABLE_SIZE {
            self.table.push_front((name, value.to_string()));
            self.size += size;
            self.insertions += 1;
        }
    }
}

/// An HPACK integer with an `n`-bit prefix, the prefix byte's other bits from `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut v = value - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK string literal: Huffman-coded when that is shorter, as real encoders do.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let bits: usize = s
        .iter()
        .map(|&b| usize::from(HUFFMAN_CODE_LENGTHS[usize::from(b)]))
        .sum();
    let huffman_len = bits.div_ceil(8);
    if huffman_len >= s.len() {
        hpack_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
        return;
    }
    hpack_int(out, 0x80, 7, huffman_len);
    let codes = &*HUFFMAN_CODES;
    let (mut acc, mut n) = (0u64, 0u32);
    for &b in s {
        let len = u32::from(HUFFMAN_CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(codes[usize::from(b)]);
        n += len;
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
        acc &= (1 << n) - 1;
    }
    if n > 0 {
        // Padded with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - n)) | ((1 << (8 - n)) - 1)) as u8);
    }
}

/// The canonical Huffman codes, computed once.
static HUFFMAN_CODES: LazyLock<[u32; 257]> = LazyLock::new(huffman_codes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_matches_rfc_7541_examples() {
        // RFC 7541 C.4.1: "www.example.com".
        let mut out = Vec::new();
        hpack_string(&mut out, b"www.example.com");
        assert_eq!(
            out,
            [
                0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
            ]
        );
        // C.4.2: "no-cache".
        out.clear();
        hpack_string(&mut out, b"no-cache");
        assert_eq!(out, [0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]);
    }

    #[test]
    fn dynamic_table_references_and_evictions() {
        let mut e = HpackEncoder::default();
        let mut out = Vec::new();
        e.field(&mut out, ":authority", "a.example", Indexing::Incremental);
        out.clear();
        e.field(&mut out, ":authority", "a.example", Indexing::Incremental);
        assert_eq!(out, [0x80 | 62]);
        assert_eq!(e.dynamic_references, 1);
        for i in 0..200 {
            e.field(
                &mut out,
                ":path",
                &format!("/items/{i:040}"),
                Indexing::Incremental,
            );
        }
        assert!(e.evictions > 0);
        assert!(e.size <= HPACK_TABLE_SIZE);
    }

    #[test]
    fn dates_are_http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 2026 00:00:00 GMT");
        assert_eq!(
            http_date(86_400_000_000 * 59 + 3_723_000_000),
            "Sun, 01 Mar 2026 01:02:03 GMT"
        );
    }

    #[test]
    fn deterministic_with_consistent_truth() {
        let dir = tempfile::tempdir().unwrap();
        let spec = L7Spec {
            packets: 5_000,
            seconds: 2,
            seed: 3,
        };
        let a = dir.path().join("a.pcap");
        let b = dir.path().join("b.pcap");
        let ta = write_capture(&spec, &a).unwrap();
        let tb = write_capture(&spec, &b).unwrap();
        assert_eq!(ta, tb);
        assert!(ta.frames >= 5_000);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        for p in L7Protocol::ALL {
            assert!(ta.tally.requests_of(p) > 0, "{p:?}");
            assert_eq!(ta.tally.requests_of(p), ta.tally.responses_of(p), "{p:?}");
        }
        assert!(ta.hpack_dynamic_references > 0);
        assert!(ta.chunked_responses > 0);
    }
}
