//! Decrypted chunks become TCP segments on the connection's real 5-tuple, so that the broker,
//! the L7 decoders, tshark or an IDS read them like captured cleartext.
//!
//! Per connection (a process's SSL object): a synthesized handshake (SYN, SYN-ACK, ACK) when its
//! first plaintext is seen, then PSH/ACK segments of at most [`MAX_SEGMENT`] bytes whose
//! sequence numbers advance with the plaintext of each side, with valid checksums. The frames'
//! MAC addresses are podtap's marker `02:70:74:00:00:01` (client) and `02:70:74:00:00:02`
//! (server): decrypted frames are never mistaken for wire frames. IPv4-mapped IPv6 addresses
//! (dual-stack sockets) are written as IPv4.
//!
//! Chunks whose connection is not known yet (a library doing its own socket I/O, bound only at
//! its next write) wait, bounded per connection and in total; what waits too long or does not
//! fit is dropped and counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use podtap_abi::tls::{self as abi, TlsEvent, TlsTuple};

/// The largest payload of one synthesized segment (one TLS record's plaintext at most).
pub const MAX_SEGMENT: usize = 16384;
/// MAC of the client side of a synthesized connection.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x70, 0x74, 0, 0, 1];
/// MAC of the server side.
pub const SERVER_MAC: [u8; 6] = [0x02, 0x70, 0x74, 0, 0, 2];
/// Waiting chunks kept per connection, in bytes.
const PENDING_PER_CONNECTION: usize = 256 * 1024;
/// Waiting chunks kept in total, in bytes.
const PENDING_TOTAL: usize = 16 << 20;
/// How long (monotonic ns) a chunk may wait for its connection.
const PENDING_TIMEOUT_NS: u64 = 5_000_000_000;
/// Connections idle this long are forgotten.
const IDLE_NS: u64 = 120_000_000_000;

/// What the synthesizer counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynthCounters {
    /// Data chunks received.
    pub chunks: u64,
    /// Plaintext bytes received.
    pub bytes: u64,
    /// Frames written (handshakes included).
    pub frames: u64,
    /// Connections synthesized.
    pub connections: u64,
    /// Chunks dropped: their connection never became known, or the wait was full.
    pub unbound_dropped: u64,
    /// Chunks dropped: not a chunk the program writes (short record, bad length).
    pub malformed: u64,
    /// Chunks whose connection is not IPv4/IPv6 TCP.
    pub not_tcp: u64,
}

/// One synthesized frame, handed to the output.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Process that made the call.
    pub tgid: u32,
    /// CLOCK_MONOTONIC of the call.
    pub timestamp_ns: u64,
    /// Whether the probed process received it (SSL_read), from the pod's point of view.
    pub to_pod: bool,
    /// Ethernet frame.
    pub bytes: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tgid: u32,
    ssl: u64,
}

struct Connection {
    /// Local and remote addresses and ports.
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    /// Whether the probed process is the server of this connection.
    local_is_server: bool,
    /// Next sequence number of the local and remote side.
    local_seq: u32,
    remote_seq: u32,
    last_ns: u64,
}

struct Pending {
    first_ns: u64,
    bytes: usize,
    chunks: Vec<(u64, u8, Vec<u8>)>,
}

/// The synthesizer's state: connections by (process, SSL object).
#[derive(Default)]
pub struct Synthesizer {
    connections: HashMap<Key, Connection>,
    pending: HashMap<Key, Pending>,
    pending_bytes: usize,
    counters: SynthCounters,
    buf: Vec<u8>,
}

impl Synthesizer {
    /// An empty synthesizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// What it counted.
    pub fn counters(&self) -> SynthCounters {
        self.counters
    }

    /// Handles one ring record. `is_server(tgid, local_port)` says whether the process listens
    /// on that port (asked once per connection); `out` gets every frame.
    pub fn record(
        &mut self,
        record: &[u8],
        is_server: &mut dyn FnMut(u32, u16) -> bool,
        out: &mut dyn FnMut(Frame<'_>),
    ) {
        let Some((ev, data)) = parse(record) else {
            self.counters.malformed += 1;
            return;
        };
        let key = Key {
            tgid: ev.tgid,
            ssl: ev.ssl,
        };
        if ev.kind == abi::EV_DATA {
            self.counters.chunks += 1;
            self.counters.bytes += data.len() as u64;
        }
        if ev.tuple.family != 0 {
            match endpoints(&ev.tuple) {
                // Known and unchanged.
                Some((local, remote))
                    if self
                        .connections
                        .get(&key)
                        .is_some_and(|c| c.local == local && c.remote == remote) => {}
                // New, or the SSL object now serves another connection (freed and reused).
                Some((local, remote)) => {
                    let local_is_server = is_server(ev.tgid, local.1);
                    self.open(key, local, remote, local_is_server, ev.timestamp_ns, out);
                }
                None => self.counters.not_tcp += 1,
            }
        }
        if self.connections.contains_key(&key) {
            if let Some(p) = self.pending.remove(&key) {
                self.pending_bytes -= p.bytes;
                for (ts, dir, bytes) in p.chunks {
                    self.data(key, ts, dir, &bytes, out);
                }
            }
            if ev.kind == abi::EV_DATA {
                self.data(key, ev.timestamp_ns, ev.direction, data, out);
            }
        } else if ev.kind == abi::EV_DATA {
            self.wait(key, ev.timestamp_ns, ev.direction, data);
        }
    }

    /// Drops waiting chunks older than the timeout and connections idle too long.
    pub fn expire(&mut self, now_ns: u64) {
        let mut dropped = 0;
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = now_ns.saturating_sub(p.first_ns) < PENDING_TIMEOUT_NS;
            if !keep {
                dropped += p.chunks.len() as u64;
                freed += p.bytes;
            }
            keep
        });
        self.pending_bytes -= freed;
        self.counters.unbound_dropped += dropped;
        self.connections
            .retain(|_, c| now_ns.saturating_sub(c.last_ns) < IDLE_NS);
    }

    fn wait(&mut self, key: Key, ts: u64, dir: u8, data: &[u8]) {
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            first_ns: ts,
            bytes: 0,
            chunks: Vec::new(),
        });
        if p.bytes + data.len() > PENDING_PER_CONNECTION
            || self.pending_bytes + data.len() > PENDING_TOTAL
        {
            self.counters.unbound_dropped += 1;
            return;
        }
        p.bytes += data.len();
        self.pending_bytes += data.len();
        p.chunks.push((ts, dir, data.to_vec()));
    }

    fn open(
        &mut self,
        key: Key,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        local_is_server: bool,
        ts: u64,
        out: &mut dyn FnMut(Frame<'_>),
    ) {
        // Initial sequence numbers: any value works; derive them from the connection so two
        // connections on one tuple (port reuse) do not look like one.
        let seed = key.ssl ^ u64::from(key.tgid).rotate_left(32) ^ ts;
        let isn_local = (seed as u32) | 1;
        let isn_remote = ((seed >> 32) as u32) | 1;
        let mut c = Connection {
            local,
            remote,
            local_is_server,
            local_seq: isn_local,
            remote_seq: isn_remote,
            last_ns: ts,
        };
        self.counters.connections += 1;
        // SYN from the client, SYN-ACK from the server, ACK from the client.
        let (client_local, tgid) = (!local_is_server, key.tgid);
        for step in 0..3 {
            let from_local = (step != 1) == client_local;
            // The SYNs carry the initial sequence number, one before the first data byte.
            let before = u32::from(step != 2);
            let (seq, ack) = if from_local {
                (c.local_seq.wrapping_sub(before), c.remote_seq)
            } else {
                (c.remote_seq.wrapping_sub(before), c.local_seq)
            };
            let flags = match step {
                0 => Flags::Syn,
                1 => Flags::SynAck,
                _ => Flags::Ack,
            };
            if emit(&mut self.buf, &c, from_local, seq, ack, flags, &[]) {
                self.counters.frames += 1;
                out(Frame {
                    tgid,
                    timestamp_ns: ts,
                    to_pod: !from_local,
                    bytes: &self.buf,
                });
            }
        }
        c.last_ns = ts;
        self.connections.insert(key, c);
    }

    fn data(&mut self, key: Key, ts: u64, dir: u8, data: &[u8], out: &mut dyn FnMut(Frame<'_>)) {
        let Some(c) = self.connections.get_mut(&key) else {
            return;
        };
        c.last_ns = ts;
        let from_local = dir == abi::DIR_WRITE;
        for part in data.chunks(MAX_SEGMENT) {
            let (seq, ack) = if from_local {
                (c.local_seq, c.remote_seq)
            } else {
                (c.remote_seq, c.local_seq)
            };
            if emit(&mut self.buf, c, from_local, seq, ack, Flags::PshAck, part) {
                self.counters.frames += 1;
                out(Frame {
                    tgid: key.tgid,
                    timestamp_ns: ts,
                    to_pod: !from_local,
                    bytes: &self.buf,
                });
            }
            let n = part.len() as u32;
            if from_local {
                c.local_seq = c.local_seq.wrapping_add(n);
            } else {
                c.remote_seq = c.remote_seq.wrapping_add(n);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    PshAck,
}

/// Builds one frame into `buf`; false if the addresses do not make a packet (mixed families).
fn emit(
    buf: &mut Vec<u8>,
    c: &Connection,
    from_local: bool,
    seq: u32,
    ack: u32,
    flags: Flags,
    payload: &[u8],
) -> bool {
    let (src, dst) = if from_local {
        (c.local, c.remote)
    } else {
        (c.remote, c.local)
    };
    let src_is_server = from_local == c.local_is_server;
    let (src_mac, dst_mac) = if src_is_server {
        (SERVER_MAC, CLIENT_MAC)
    } else {
        (CLIENT_MAC, SERVER_MAC)
    };
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => return false,
    };
    let tcp = ip.tcp(src.1, dst.1, seq, 65535);
    let tcp = match flags {
        Flags::Syn => tcp.syn(),
        Flags::SynAck => tcp.syn().ack(ack),
        Flags::Ack => tcp.ack(ack),
        Flags::PshAck => tcp.psh().ack(ack),
    };
    buf.clear();
    tcp.write(buf, payload).is_ok()
}

/// The header and data of a ring record.
fn parse(record: &[u8]) -> Option<(TlsEvent, &[u8])> {
    let header = record.get(..size_of::<TlsEvent>())?;
    // SAFETY: TlsEvent is a plain repr(C) struct of integers, valid for any bits; the read is
    // unaligned-safe.
    let ev: TlsEvent = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let data =
        record.get(size_of::<TlsEvent>()..size_of::<TlsEvent>() + ev.captured_len as usize)?;
    Some((ev, data))
}

/// (local, remote) endpoints of a connection; IPv4-mapped IPv6 addresses become IPv4.
fn endpoints(t: &TlsTuple) -> Option<((IpAddr, u16), (IpAddr, u16))> {
    let addr = |b: &[u8; 16]| -> Option<IpAddr> {
        match t.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            10 => {
                let v6 = Ipv6Addr::from(*b);
                Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => None,
        }
    };
    Some((
        (addr(&t.local_addr)?, t.local_port),
        (addr(&t.remote_addr)?, t.remote_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn record(kind: u8, dir: u8, ssl: u64, tuple: Option<TlsTuple>, data: &[u8]) -> Vec<u8> {
        let ev = TlsEvent {
            timestamp_ns: 1_000,
            ssl,
            tgid: 42,
            tid: 42,
            call_len: data.len() as u32,
            offset: 0,
            captured_len: data.len() as u32,
            fd: 5,
            kind,
            direction: dir,
            _pad: [0; 6],
            tuple: tuple.unwrap_or_default(),
        };
        let mut v = vec![0u8; size_of::<TlsEvent>()];
        // SAFETY: writing a repr(C) value into a buffer of its size.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), ev) };
        v.extend_from_slice(data);
        v
    }

    fn tuple_v4() -> TlsTuple {
        let mut t = TlsTuple {
            family: 2,
            local_port: 8443,
            remote_port: 50000,
            ..Default::default()
        };
        t.local_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        t.remote_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t
    }

    /// (src port, dst port, seq, SYN, payload) of a frame.
    type Seen = (u16, u16, u32, bool, Vec<u8>);

    fn run(records: &[Vec<u8>]) -> (Vec<Seen>, SynthCounters) {
        let mut s = Synthesizer::new();
        let mut frames = Vec::new();
        for r in records {
            s.record(r, &mut |_, port| port == 8443, &mut |f| {
                let p = SlicedPacket::from_ethernet(f.bytes).unwrap();
                assert!(matches!(p.net, Some(NetSlice::Ipv4(_))));
                let Some(TransportSlice::Tcp(t)) = p.transport else {
                    panic!("not tcp")
                };
                frames.push((
                    t.source_port(),
                    t.destination_port(),
                    t.sequence_number(),
                    t.syn(),
                    t.payload().to_vec(),
                ));
            });
        }
        (frames, s.counters())
    }

    #[test]
    fn a_server_side_exchange_becomes_a_handshake_and_ordered_segments() {
        let t = Some(tuple_v4());
        let (frames, c) = run(&[
            record(abi::EV_DATA, abi::DIR_READ, 7, t, b"GET / HTTP/1.1\r\n\r\n"),
            record(
                abi::EV_DATA,
                abi::DIR_WRITE,
                7,
                t,
                b"HTTP/1.1 200 OK\r\n\r\n",
            ),
        ]);
        assert_eq!(frames.len(), 5);
        // SYN from the client (remote 50000), SYN-ACK from the server, ACK.
        assert_eq!((frames[0].0, frames[0].3), (50000, true));
        assert_eq!((frames[1].0, frames[1].3), (8443, true));
        assert_eq!((frames[2].0, frames[2].3), (50000, false));
        assert_eq!(frames[3].0, 50000);
        assert_eq!(frames[3].4, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            frames[3].2,
            frames[0].2.wrapping_add(1),
            "data follows the SYN"
        );
        assert_eq!(frames[4].0, 8443);
        assert_eq!(frames[4].2, frames[1].2.wrapping_add(1));
        assert_eq!(c.connections, 1);
        assert_eq!(c.frames, 5);
    }

    #[test]
    fn chunks_wait_for_their_connection_and_keep_their_order() {
        let (frames, c) = run(&[
            record(abi::EV_DATA, abi::DIR_WRITE, 9, None, b"first"),
            record(abi::EV_DATA, abi::DIR_WRITE, 9, None, b"second"),
            record(abi::EV_BIND, abi::DIR_WRITE, 9, Some(tuple_v4()), b""),
        ]);
        let payloads: Vec<_> = frames.iter().map(|f| f.4.clone()).collect();
        assert_eq!(payloads[3..], [b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(frames[4].2, frames[3].2 + 5);
        assert_eq!(c.unbound_dropped, 0);
    }

    #[test]
    fn long_chunks_are_split_and_unbound_ones_expire() {
        let big = vec![7u8; MAX_SEGMENT + 100];
        let (frames, _) = run(&[record(
            abi::EV_DATA,
            abi::DIR_WRITE,
            1,
            Some(tuple_v4()),
            &big,
        )]);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[3].4.len(), MAX_SEGMENT);
        assert_eq!(frames[4].2, frames[3].2 + MAX_SEGMENT as u32);

        let mut s = Synthesizer::new();
        s.record(
            &record(abi::EV_DATA, abi::DIR_WRITE, 3, None, b"x"),
            &mut |_, _| false,
            &mut |_| panic!("nothing is written without a connection"),
        );
        s.expire(1_000 + PENDING_TIMEOUT_NS);
        assert_eq!(s.counters().unbound_dropped, 1);
        assert!(s.record_is_rejected_when_short());
    }

    impl Synthesizer {
        fn record_is_rejected_when_short(&mut self) -> bool {
            self.record(&[0u8; 10], &mut |_, _| false, &mut |_| {});
            self.counters.malformed == 1
        }
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mut t = TlsTuple {
            family: 10,
            local_port: 1,
            remote_port: 2,
            ..Default::default()
        };
        t.local_addr = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
        t.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let (l, r) = endpoints(&t).unwrap();
        assert_eq!(l.0, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(r.0, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
