//! TCP reassembly and the connection table: tapped segments in, each connection's two byte
//! streams out, in order, with losses reported as gaps instead of waited for.
//!
//! The module owns the connection table ([`Connections`]), its limits and its eviction, and the
//! per-direction reassembly. It knows nothing about protocols: the per-connection state `T`
//! (a decoder, a recorder, ...) is made by the caller's `open` and fed [`Event`]s through `on`.
//!
//! Rules:
//! - **Key**: the unordered pair of endpoints. A SYN without ACK on a key whose connection has
//!   ended starts a new connection (port reuse); on a live key it does too, unless it repeats the
//!   client's ISN (a retransmitted SYN): the old connection is closed first
//!   ([`CloseReason::Reused`]). A connection closed by FIN or RST lingers for
//!   [`ReassemblyConfig::linger_ns`] of capture time so retransmitted FINs and ACKs are absorbed
//!   (counted as `late_segments`) instead of opening a mid-stream connection.
//! - **Sides**: the client sent the SYN without ACK; the sender of a SYN-ACK is the server.
//!   Without a handshake (capture started mid-stream), the endpoint with the lower port is the
//!   server, ties broken by the first segment's destination. [`Connection::saw_syn`] says which.
//! - **Sequence numbers** wrap: comparisons are serial-number arithmetic (RFC 1982) relative to
//!   the next expected byte, offsets are kept as 64-bit counts from the stream's start. A stream
//!   starts at its SYN's sequence + 1, or (mid-stream) at the first segment carrying data or FIN
//!   (a pure ACK sets nothing; a SYN-ACK's ACK sets the client's start when the SYN was missed).
//!   Bytes before that start are dropped (counted as overlap). A segment more than 1 GiB away
//!   from the next expected byte is dropped and counted as `out_of_window`.
//! - **Delivery**: the next expected bytes are passed through at once, without a copy. Segments
//!   beyond a hole are copied into a per-direction buffer until the hole fills. Overlaps are
//!   trimmed so every byte is delivered once: the first copy seen wins (bytes already delivered,
//!   or already buffered). Overlapping bytes are counted (`overlap_bytes`); a segment whose
//!   overlapping bytes differ from the buffered copy counts one `overlap_conflicts` (bytes already
//!   delivered are not kept, so they cannot be compared); a segment that brings no new byte counts
//!   one `retransmitted_segments`.
//! - **Gaps**: a hole is given up on, reported as [`Event::Gap`], and delivery continues after it
//!   when the peer's ACK covers the whole hole (the receiver got it, the capture missed it), when
//!   the direction's buffer exceeds `max_buffered_per_side`, when all buffers together exceed
//!   `max_buffered_total` (the connection holding the most gives way), when the hole is older
//!   than `gap_timeout_ns` (counted from the arrival of the data after it), or when the
//!   connection closes. A FIN whose data never came also leaves a hole up to the FIN.
//! - **Close**: a FIN takes effect in order, after the data before it; bytes beyond a FIN are
//!   dropped. When both directions have delivered their FIN, [`Event::Closed`] is emitted once.
//!   A RST closes at once, after flushing what is buffered (as Data and Gap events, in order).
//!   Idle connections (no segment for `idle_timeout_ns`) are closed by [`Connections::advance`].
//! - **Memory**: buffered bytes are charged with a fixed per-chunk overhead, so floods of tiny
//!   out-of-order segments pay for their bookkeeping; [`Connections::buffered_bytes`] never
//!   exceeds `max_buffered_total` between calls. At `max_connections` the least recently active
//!   connection is evicted ([`CloseReason::Evicted`]); lingering closed connections go first.
//!   Lookups hash with foldhash; recency is an intrusive list (O(1) per segment); gap timeouts
//!   only visit connections that have a hole.
//!
//! Time is capture time (`ts_ns` of segments, `now_ns` of [`Connections::advance`]), never the
//! wall clock, so replaying a capture gives the same events.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::call::Side;

/// TCP flag bit FIN, as on the wire.
pub const FIN: u8 = 0x01;
/// TCP flag bit SYN.
pub const SYN: u8 = 0x02;
/// TCP flag bit RST.
pub const RST: u8 = 0x04;
/// TCP flag bit PSH.
pub const PSH: u8 = 0x08;
/// TCP flag bit ACK.
pub const ACK: u8 = 0x10;

/// How far from the next expected byte (either way, in sequence space) a segment may lie and
/// still belong to the stream.
const WINDOW: u32 = 1 << 30;

/// Bytes charged per buffered chunk on top of its payload (map node and vector header).
pub const CHUNK_OVERHEAD: usize = 64;

/// End of an intrusive list.
const NIL: usize = usize::MAX;

/// One captured TCP segment, borrowed from the capture buffer.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful when [`ACK`] is set).
    pub ack: u32,
    /// TCP flag bits as on the wire: [`FIN`], [`SYN`], [`RST`], [`PSH`], [`ACK`].
    pub flags: u8,
    /// TCP payload.
    pub payload: &'a [u8],
    /// Capture time (Unix nanoseconds).
    pub ts_ns: u64,
}

/// What the table knows about a connection: handed to `open` and with every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Unique within one [`Connections`] (a reused port pair gets a new id).
    pub id: u64,
    /// The end that opened the connection (or the best guess, see [`Connection::saw_syn`]).
    pub client: SocketAddr,
    /// The end that accepted it.
    pub server: SocketAddr,
    /// Capture time of the first segment.
    pub first_ns: u64,
    /// Capture time of the latest segment.
    pub last_ns: u64,
    /// Whether the sides come from a SYN or SYN-ACK (true) or from the port rule of a
    /// mid-stream start (false).
    pub saw_syn: bool,
}

impl Connection {
    /// The side `src` sends on: [`Side::Client`] when it is the client, else [`Side::Server`].
    pub fn side_of(&self, src: SocketAddr) -> Side {
        if src == self.client {
            Side::Client
        } else {
            Side::Server
        }
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Both sides' FINs were delivered.
    Fin,
    /// A RST was seen.
    Rst,
    /// No segment for `idle_timeout_ns`.
    Idle,
    /// The table was full and this was the least recently active connection.
    Evicted,
    /// End of capture ([`Connections::flush`]).
    Flushed,
    /// A new SYN with another ISN arrived on the same endpoints (port reuse).
    Reused,
}

impl CloseReason {
    /// The snake_case name used in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Fin => "fin",
            CloseReason::Rst => "rst",
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Flushed => "flushed",
            CloseReason::Reused => "reused",
        }
    }
}

/// What happened on a connection, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The next in-order bytes from `side`, first seen at `ts_ns`.
    Data {
        /// Sender.
        side: Side,
        /// The bytes (borrowed from the segment when delivered at once, else from the buffer).
        bytes: &'a [u8],
        /// When they were captured.
        ts_ns: u64,
    },
    /// `len` bytes from `side` were given up on; the next Data continues after them.
    Gap {
        /// Sender of the lost bytes.
        side: Side,
        /// How many bytes were lost.
        len: u64,
        /// When the gap was declared.
        ts_ns: u64,
    },
    /// The connection ended; no event follows for it.
    Closed {
        /// When it was closed.
        ts_ns: u64,
        /// Why.
        reason: CloseReason,
    },
}

/// Limits and timeouts of the connection table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReassemblyConfig {
    /// Connections tracked at once, lingering closed ones included (default 65,536). At the
    /// limit the least recently active connection is evicted. 0 tracks nothing.
    pub max_connections: usize,
    /// Bytes one direction of one connection may buffer behind a hole (default 256 KiB: a few
    /// receive windows). Beyond it the oldest hole becomes a gap.
    pub max_buffered_per_side: usize,
    /// Bytes all connections together may buffer (default 64 MiB). Beyond it the connection
    /// buffering the most gives way.
    pub max_buffered_total: usize,
    /// How long (capture time) a hole is waited for once data after it arrived (default 1 s:
    /// far above a LAN's retransmission timeout floor of 200 ms).
    pub gap_timeout_ns: u64,
    /// Connections without a segment for this long are closed (default 120 s).
    pub idle_timeout_ns: u64,
    /// How long a connection closed by FIN or RST stays in the table to absorb retransmitted
    /// FINs and ACKs (default 2 s).
    pub linger_ns: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            max_connections: 65_536,
            max_buffered_per_side: 256 * 1024,
            max_buffered_total: 64 * 1024 * 1024,
            gap_timeout_ns: 1_000_000_000,
            idle_timeout_ns: 120_000_000_000,
            linger_ns: 2_000_000_000,
        }
    }
}

/// What the table did, since it was made. Every segment is counted in `segments`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReassemblyCounters {
    /// Segments seen.
    pub segments: u64,
    /// Payload bytes seen (retransmissions included).
    pub payload_bytes: u64,
    /// Bytes delivered as [`Event::Data`].
    pub delivered_bytes: u64,
    /// Connections opened (`open` called).
    pub connections: u64,
    /// Connections `open` declined.
    pub ignored_connections: u64,
    /// Segments of declined connections (or not tracked because `max_connections` is 0).
    pub ignored_segments: u64,
    /// Segments that brought no new byte (pure duplicates).
    pub retransmitted_segments: u64,
    /// Bytes dropped because they were already delivered, buffered, given up on, or lay before
    /// the stream's start.
    pub overlap_bytes: u64,
    /// Segments whose overlapping bytes differed from the buffered copy.
    pub overlap_conflicts: u64,
    /// Segments (with data or FIN) more than 1 GiB away from the next expected byte.
    pub out_of_window: u64,
    /// Bytes dropped because they lay beyond the sender's FIN.
    pub beyond_fin_bytes: u64,
    /// Gaps declared, for any reason.
    pub gaps: u64,
    /// Bytes given up on, in all gaps.
    pub gap_bytes: u64,
    /// Gaps declared because the peer acknowledged past the hole.
    pub gaps_acked: u64,
    /// Gaps declared because the hole outlived `gap_timeout_ns`.
    pub gaps_timeout: u64,
    /// Gaps declared because a direction's buffer exceeded `max_buffered_per_side`.
    pub gaps_side_limit: u64,
    /// Gaps declared because all buffers together exceeded `max_buffered_total`.
    pub gaps_total_limit: u64,
    /// Gaps declared because the connection closed with a hole.
    pub gaps_closed: u64,
    /// Connections closed by FIN on both sides.
    pub closed_fin: u64,
    /// Connections closed by RST.
    pub closed_rst: u64,
    /// Connections closed for idleness.
    pub closed_idle: u64,
    /// Connections evicted because the table was full.
    pub evicted_connections: u64,
    /// Lingering closed connections dropped early because the table was full.
    pub evicted_lingering: u64,
    /// New connections on the endpoints of a live or lingering one (port reuse).
    pub port_reuses: u64,
    /// Segments absorbed by a lingering closed connection.
    pub late_segments: u64,
    /// RSTs for no known connection (they open none).
    pub orphan_rst: u64,
}

/// The connection table: reassembles both directions of every TCP connection and feeds the
/// per-connection state `T` with [`Event`]s.
pub struct Connections<T> {
    config: ReassemblyConfig,
    index: HashMap<Key, usize, foldhash::fast::RandomState>,
    slots: Vec<Option<Entry<T>>>,
    free: Vec<usize>,
    /// Open connections, most recently active first.
    open: List,
    /// Closed connections waiting out their linger time, most recently closed first.
    lingering: List,
    /// Slots of open connections with a hole in either direction.
    pending: Vec<usize>,
    tally: Tally,
    next_id: u64,
}

impl<T> Connections<T> {
    /// An empty table with these limits.
    pub fn new(config: ReassemblyConfig) -> Self {
        Connections {
            config,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            open: List::EMPTY,
            lingering: List::EMPTY,
            pending: Vec::new(),
            tally: Tally::default(),
            next_id: 0,
        }
    }

    /// Takes one segment. `open` is called once per new connection (return `None` to ignore
    /// that connection: its segments are then only counted); `on` gets every event of a
    /// connection in order (events of other connections may come too, when one is evicted or
    /// gives way to the memory limit).
    pub fn segment<O, F>(&mut self, seg: &TcpSegment<'_>, open: O, mut on: F)
    where
        O: FnOnce(&Connection) -> Option<T>,
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let counters = &mut self.tally.counters;
        counters.segments += 1;
        counters.payload_bytes += seg.payload.len() as u64;
        let key = Key::new(seg.src, seg.dst);
        let new_syn = seg.flags & (SYN | ACK) == SYN;
        let mut found = self.index.get(&key).copied();
        if let Some(i) = found {
            let Some(entry) = slot_mut(&mut self.slots, i) else {
                return;
            };
            if let Some(since) = entry.lingering_since {
                let expired = since.saturating_add(self.config.linger_ns) <= seg.ts_ns;
                if !new_syn && !expired {
                    self.tally.counters.late_segments += 1;
                    return;
                }
                if new_syn {
                    self.tally.counters.port_reuses += 1;
                }
                self.remove(i);
                found = None;
            } else if new_syn && !entry.repeats_syn(seg) {
                self.tally.counters.port_reuses += 1;
                self.finish(i, CloseReason::Reused, seg.ts_ns, &mut on);
                found = None;
            }
        }
        let i = match found {
            Some(i) => {
                self.touch(i);
                i
            }
            None if seg.flags & RST != 0 => {
                self.tally.counters.orphan_rst += 1;
                return;
            }
            None => match self.create(key, seg, open, &mut on) {
                Some(i) => i,
                None => return,
            },
        };
        self.process(i, seg, &mut on);
        self.enforce_total(seg.ts_ns, &mut on);
    }

    /// Capture time passes: holes older than `gap_timeout_ns` become gaps, connections idle for
    /// `idle_timeout_ns` are closed, lingering closed connections are dropped.
    pub fn advance<F>(&mut self, now_ns: u64, mut on: F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let mut k = 0;
        while let Some(&i) = self.pending.get(k) {
            self.expire_gaps(i, now_ns, &mut on);
            // A connection that stopped pending was swapped out for one not yet visited.
            if self.pending.get(k) == Some(&i) {
                k += 1;
            }
        }
        while let Some(i) = self.open.tail() {
            let last = slot_mut(&mut self.slots, i).map_or(0, |e| e.conn.last_ns);
            if last.saturating_add(self.config.idle_timeout_ns) > now_ns {
                break;
            }
            self.finish(i, CloseReason::Idle, now_ns, &mut on);
            if self.open.tail() == Some(i) {
                break; // no progress: never expected, but never spin
            }
        }
        while let Some(i) = self.lingering.tail() {
            let since = slot_mut(&mut self.slots, i)
                .and_then(|e| e.lingering_since)
                .unwrap_or(0);
            if since.saturating_add(self.config.linger_ns) > now_ns {
                break;
            }
            self.remove(i);
            if self.lingering.tail() == Some(i) {
                break;
            }
        }
    }

    /// Closes every connection (end of capture): buffered bytes are delivered with their gaps,
    /// each open connection gets [`CloseReason::Flushed`], and the table is emptied.
    pub fn flush<F>(&mut self, now_ns: u64, mut on: F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        while let Some(i) = self.open.tail() {
            self.finish(i, CloseReason::Flushed, now_ns, &mut on);
            if self.open.tail() == Some(i) {
                break;
            }
        }
        while let Some(i) = self.lingering.tail() {
            self.remove(i);
            if self.lingering.tail() == Some(i) {
                break;
            }
        }
    }

    /// What the table did so far.
    pub fn counters(&self) -> &ReassemblyCounters {
        &self.tally.counters
    }

    /// Open connections (lingering closed ones not included).
    pub fn len(&self) -> usize {
        self.open.len
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.open.len == 0
    }

    /// Closed connections still lingering to absorb late segments.
    pub fn lingering(&self) -> usize {
        self.lingering.len
    }

    /// Bytes charged for out-of-order data, in all connections (payload plus
    /// [`CHUNK_OVERHEAD`] per buffered chunk).
    pub fn buffered_bytes(&self) -> usize {
        self.tally.buffered
    }

    /// The limits in force.
    pub fn config(&self) -> &ReassemblyConfig {
        &self.config
    }

    /// Makes the connection for a segment with no entry, evicting to make room.
    fn create<O, F>(&mut self, key: Key, seg: &TcpSegment<'_>, open: O, on: &mut F) -> Option<usize>
    where
        O: FnOnce(&Connection) -> Option<T>,
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        if self.config.max_connections == 0 {
            self.tally.counters.ignored_segments += 1;
            return None;
        }
        while self.open.len + self.lingering.len >= self.config.max_connections {
            let before = self.open.len + self.lingering.len;
            if let Some(i) = self.lingering.tail() {
                self.tally.counters.evicted_lingering += 1;
                self.remove(i);
            } else if let Some(i) = self.open.tail() {
                self.finish(i, CloseReason::Evicted, seg.ts_ns, on);
            }
            if self.open.len + self.lingering.len >= before {
                break;
            }
        }
        let syn = seg.flags & SYN != 0;
        let (client, server) = if syn {
            if seg.flags & ACK == 0 {
                (seg.src, seg.dst)
            } else {
                (seg.dst, seg.src)
            }
        } else if seg.src.port() < seg.dst.port() {
            (seg.dst, seg.src)
        } else {
            // The destination has the lower port, or the ports tie and the destination wins.
            (seg.src, seg.dst)
        };
        let conn = Connection {
            id: self.next_id,
            client,
            server,
            first_ns: seg.ts_ns,
            last_ns: seg.ts_ns,
            saw_syn: syn,
        };
        self.next_id += 1;
        let user = open(&conn);
        self.tally.counters.connections += 1;
        if user.is_none() {
            self.tally.counters.ignored_connections += 1;
        }
        let entry = Entry {
            key,
            conn,
            user,
            streams: [Stream::default(), Stream::default()],
            fins: [false, false],
            lingering_since: None,
            prev: NIL,
            next: NIL,
            pending: NIL,
        };
        let i = match self.free.pop().filter(|&i| i < self.slots.len()) {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = Some(entry);
                }
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, i);
        self.link_front(i);
        Some(i)
    }

    /// Runs one segment through its (open) connection.
    fn process<F>(&mut self, i: usize, seg: &TcpSegment<'_>, on: &mut F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        entry.conn.last_ns = entry.conn.last_ns.max(seg.ts_ns);
        let side = entry.conn.side_of(seg.src);
        let verdict = match entry.user.as_mut() {
            None => {
                self.tally.counters.ignored_segments += 1;
                if seg.flags & (SYN | ACK) == SYN && side == Side::Client {
                    // Kept so a retransmitted SYN is not taken for port reuse.
                    entry.streams[0].base.get_or_insert(seg.seq.wrapping_add(1));
                }
                let [client, server] = &mut entry.fins;
                match side {
                    Side::Client => *client |= seg.flags & FIN != 0,
                    Side::Server => *server |= seg.flags & FIN != 0,
                }
                if seg.flags & RST != 0 {
                    Some(CloseReason::Rst)
                } else if entry.fins == [true, true] {
                    Some(CloseReason::Fin)
                } else {
                    None
                }
            }
            Some(user) => {
                let mut out = Out {
                    conn: &entry.conn,
                    user,
                    on,
                    tally: &mut self.tally,
                };
                flow_segment(&mut entry.streams, side, seg, &self.config, &mut out)
            }
        };
        match verdict {
            Some(reason) => self.finish(i, reason, seg.ts_ns, on),
            None => self.sync_pending(i),
        }
    }

    /// Declares the holes of connection `i` whose timeout expired.
    fn expire_gaps<F>(&mut self, i: usize, now_ns: u64, on: &mut F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        let Some(user) = entry.user.as_mut() else {
            return;
        };
        let mut out = Out {
            conn: &entry.conn,
            user,
            on,
            tally: &mut self.tally,
        };
        let [client, server] = &mut entry.streams;
        client.expire(Side::Client, now_ns, self.config.gap_timeout_ns, &mut out);
        server.expire(Side::Server, now_ns, self.config.gap_timeout_ns, &mut out);
        self.settle(i, now_ns, on);
    }

    /// While all buffers together exceed the total limit, the connection buffering the most
    /// gives up its oldest hole on its fuller side.
    fn enforce_total<F>(&mut self, ts_ns: u64, on: &mut F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        while self.tally.buffered > self.config.max_buffered_total {
            let slots = &self.slots;
            let charged = |i: usize| {
                slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .map_or(0, |e| e.streams[0].charged + e.streams[1].charged)
            };
            let Some(i) = self
                .pending
                .iter()
                .copied()
                .max_by_key(|&i| charged(i))
                .filter(|&i| charged(i) > 0)
            else {
                break;
            };
            let Some(entry) = slot_mut(&mut self.slots, i) else {
                break;
            };
            let Some(user) = entry.user.as_mut() else {
                break;
            };
            let mut out = Out {
                conn: &entry.conn,
                user,
                on,
                tally: &mut self.tally,
            };
            let [client, server] = &mut entry.streams;
            let forced = if client.charged >= server.charged {
                client.force(Side::Client, ts_ns, GapCause::TotalLimit, &mut out)
            } else {
                server.force(Side::Server, ts_ns, GapCause::TotalLimit, &mut out)
            };
            self.settle(i, ts_ns, on);
            if !forced {
                break;
            }
        }
    }

    /// After progress made from outside the connection's own segment: closes it when both FINs
    /// were delivered, else updates whether it has a hole.
    fn settle<F>(&mut self, i: usize, ts_ns: u64, on: &mut F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let done = slot_mut(&mut self.slots, i)
            .is_some_and(|e| e.streams[0].finished() && e.streams[1].finished());
        if done {
            self.finish(i, CloseReason::Fin, ts_ns, on);
        } else {
            self.sync_pending(i);
        }
    }

    /// Closes connection `i`: flushes its buffers, emits `Closed`, drops its state, and either
    /// lets it linger (FIN, RST) or removes it.
    fn finish<F>(&mut self, i: usize, reason: CloseReason, ts_ns: u64, on: &mut F)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        if entry.lingering_since.is_some() {
            return;
        }
        if let Some(mut user) = entry.user.take() {
            let mut out = Out {
                conn: &entry.conn,
                user: &mut user,
                on,
                tally: &mut self.tally,
            };
            let [client, server] = &mut entry.streams;
            while client.force(Side::Client, ts_ns, GapCause::Closed, &mut out) {}
            while server.force(Side::Server, ts_ns, GapCause::Closed, &mut out) {}
            out.emit(Event::Closed { ts_ns, reason });
        }
        for stream in &mut entry.streams {
            self.tally.buffered = self.tally.buffered.saturating_sub(stream.charged);
            *stream = Stream::default();
        }
        let counters = &mut self.tally.counters;
        match reason {
            CloseReason::Fin => counters.closed_fin += 1,
            CloseReason::Rst => counters.closed_rst += 1,
            CloseReason::Idle => counters.closed_idle += 1,
            CloseReason::Evicted => counters.evicted_connections += 1,
            CloseReason::Flushed | CloseReason::Reused => {}
        }
        if matches!(reason, CloseReason::Fin | CloseReason::Rst) && self.config.linger_ns > 0 {
            self.unlink(i);
            self.sync_pending(i);
            if let Some(entry) = slot_mut(&mut self.slots, i) {
                entry.lingering_since = Some(ts_ns);
            }
            self.link_front(i);
        } else {
            self.remove(i);
        }
    }

    /// Drops slot `i` from every structure.
    fn remove(&mut self, i: usize) {
        self.unlink(i);
        self.pending_remove(i);
        if let Some(slot) = self.slots.get_mut(i)
            && let Some(entry) = slot.take()
        {
            self.index.remove(&entry.key);
            for stream in &entry.streams {
                self.tally.buffered = self.tally.buffered.saturating_sub(stream.charged);
            }
            self.free.push(i);
        }
    }

    /// Moves an open connection to the front of the recency list.
    fn touch(&mut self, i: usize) {
        if self.open.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    /// Puts slot `i` at the head of its list (lingering or open).
    fn link_front(&mut self, i: usize) {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        let list = if entry.lingering_since.is_some() {
            &mut self.lingering
        } else {
            &mut self.open
        };
        let old_head = list.head;
        entry.prev = NIL;
        entry.next = old_head;
        list.head = i;
        if old_head == NIL {
            list.tail = i;
        } else if let Some(head) = slot_mut(&mut self.slots, old_head) {
            head.prev = i;
        }
        list.len += 1;
    }

    /// Takes slot `i` out of its list.
    fn unlink(&mut self, i: usize) {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        let (prev, next) = (entry.prev, entry.next);
        let list = if entry.lingering_since.is_some() {
            &mut self.lingering
        } else {
            &mut self.open
        };
        if list.head != i && prev == NIL {
            return; // not linked
        }
        entry.prev = NIL;
        entry.next = NIL;
        if prev == NIL {
            list.head = next;
        } else if let Some(p) = slot_mut(&mut self.slots, prev) {
            p.next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else if let Some(n) = slot_mut(&mut self.slots, next) {
            n.prev = prev;
        }
        list.len = list.len.saturating_sub(1);
    }

    /// Adds or removes slot `i` from the pending set after its holes changed.
    fn sync_pending(&mut self, i: usize) {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        let has_hole = entry.user.is_some()
            && entry.lingering_since.is_none()
            && entry.streams.iter().any(|s| s.hole_end().is_some());
        if has_hole && entry.pending == NIL {
            entry.pending = self.pending.len();
            self.pending.push(i);
        } else if !has_hole {
            self.pending_remove(i);
        }
    }

    /// Removes slot `i` from the pending set, if it is there.
    fn pending_remove(&mut self, i: usize) {
        let Some(entry) = slot_mut(&mut self.slots, i) else {
            return;
        };
        let pos = entry.pending;
        entry.pending = NIL;
        if pos >= self.pending.len() {
            return;
        }
        self.pending.swap_remove(pos);
        if let Some(&moved) = self.pending.get(pos)
            && let Some(other) = slot_mut(&mut self.slots, moved)
        {
            other.pending = pos;
        }
    }
}

/// The table's key: the endpoints in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(SocketAddr, SocketAddr);

impl Key {
    fn new(a: SocketAddr, b: SocketAddr) -> Key {
        if a <= b { Key(a, b) } else { Key(b, a) }
    }
}

/// Head and tail of an intrusive doubly linked list through the slots.
#[derive(Debug, Clone, Copy)]
struct List {
    head: usize,
    tail: usize,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };

    fn tail(&self) -> Option<usize> {
        (self.tail != NIL).then_some(self.tail)
    }
}

/// Counters and the total charge, borrowed together while a connection is worked on.
#[derive(Debug, Default)]
struct Tally {
    counters: ReassemblyCounters,
    buffered: usize,
}

/// One slot of the table.
struct Entry<T> {
    key: Key,
    conn: Connection,
    /// The caller's state; `None` when `open` declined, or once closed.
    user: Option<T>,
    /// Client-to-server, then server-to-client.
    streams: [Stream; 2],
    /// FINs seen per side, for connections `open` declined (they keep no streams).
    fins: [bool; 2],
    /// When it was closed, for a lingering connection.
    lingering_since: Option<u64>,
    prev: usize,
    next: usize,
    /// Position in the pending set, or `NIL`.
    pending: usize,
}

impl<T> Entry<T> {
    /// Whether a SYN without ACK is the client's SYN again (same ISN).
    fn repeats_syn(&self, seg: &TcpSegment<'_>) -> bool {
        self.conn.saw_syn
            && seg.src == self.conn.client
            && self.streams[0].base == Some(seg.seq.wrapping_add(1))
    }
}

/// Why a gap was declared (each has its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapCause {
    Acked,
    Timeout,
    SideLimit,
    TotalLimit,
    Closed,
}

/// Where one connection's events go.
struct Out<'c, T, F> {
    conn: &'c Connection,
    user: &'c mut T,
    on: &'c mut F,
    tally: &'c mut Tally,
}

impl<T, F> Out<'_, T, F>
where
    F: FnMut(&Connection, &mut T, Event<'_>),
{
    fn emit(&mut self, event: Event<'_>) {
        (self.on)(self.conn, self.user, event);
    }

    fn data(&mut self, side: Side, bytes: &[u8], ts_ns: u64) {
        if bytes.is_empty() {
            return;
        }
        self.tally.counters.delivered_bytes += bytes.len() as u64;
        self.emit(Event::Data { side, bytes, ts_ns });
    }

    fn gap(&mut self, side: Side, len: u64, ts_ns: u64, cause: GapCause) {
        if len == 0 {
            return;
        }
        let c = &mut self.tally.counters;
        c.gaps += 1;
        c.gap_bytes += len;
        match cause {
            GapCause::Acked => c.gaps_acked += 1,
            GapCause::Timeout => c.gaps_timeout += 1,
            GapCause::SideLimit => c.gaps_side_limit += 1,
            GapCause::TotalLimit => c.gaps_total_limit += 1,
            GapCause::Closed => c.gaps_closed += 1,
        }
        self.emit(Event::Gap { side, len, ts_ns });
    }
}

/// One segment on an open, tracked connection. Returns why to close it, if it must be.
fn flow_segment<T, F>(
    streams: &mut [Stream; 2],
    side: Side,
    seg: &TcpSegment<'_>,
    config: &ReassemblyConfig,
    out: &mut Out<'_, T, F>,
) -> Option<CloseReason>
where
    F: FnMut(&Connection, &mut T, Event<'_>),
{
    let [client, server] = streams;
    let (own, peer) = match side {
        Side::Client => (client, server),
        Side::Server => (server, client),
    };
    let syn = seg.flags & SYN != 0;
    let fin = seg.flags & FIN != 0;
    let rst = seg.flags & RST != 0;
    if syn {
        own.base.get_or_insert(seg.seq.wrapping_add(1));
        if seg.flags & ACK != 0 {
            peer.base.get_or_insert(seg.ack);
        }
    } else if own.base.is_none() && (!seg.payload.is_empty() || fin) && !rst {
        own.base = Some(seg.seq);
    }
    if seg.flags & ACK != 0 {
        peer.peer_ack(seg.ack);
    }
    if !rst && (!seg.payload.is_empty() || fin) {
        let data_seq = seg.seq.wrapping_add(u32::from(syn));
        match own.rel(data_seq) {
            None => out.tally.counters.out_of_window += 1,
            Some(diff) => {
                if fin {
                    own.note_fin(diff, seg.payload.len(), seg.ts_ns, out.tally);
                }
                let before = own.next;
                own.accept(side, diff, seg.payload, seg.ts_ns, out);
                own.refresh_hole(own.next != before);
            }
        }
    }
    let (client, server) = match side {
        Side::Client => (own, peer),
        Side::Server => (peer, own),
    };
    for (stream, side) in [(client, Side::Client), (server, Side::Server)] {
        while stream.hole_end().is_some_and(|end| end <= stream.acked) {
            if !stream.force(side, seg.ts_ns, GapCause::Acked, out) {
                break;
            }
        }
        stream.expire(side, seg.ts_ns, config.gap_timeout_ns, out);
        while stream.charged > config.max_buffered_per_side {
            if !stream.force(side, seg.ts_ns, GapCause::SideLimit, out) {
                break;
            }
        }
    }
    if rst {
        Some(CloseReason::Rst)
    } else if streams.iter().all(Stream::finished) {
        Some(CloseReason::Fin)
    } else {
        None
    }
}

/// A buffered run of out-of-order bytes.
#[derive(Debug)]
struct Chunk {
    data: Vec<u8>,
    /// When its first bytes were captured.
    ts_ns: u64,
}

/// One direction of a connection. Offsets count bytes from the stream's start (its base).
#[derive(Debug, Default)]
struct Stream {
    /// Sequence number of offset 0, once known.
    base: Option<u32>,
    /// Offset of the next byte to deliver (everything before was delivered or given up on).
    next: u64,
    /// Out-of-order bytes by offset; never overlapping, every key above `next` between calls.
    chunks: BTreeMap<u64, Chunk>,
    /// Bytes charged for `chunks`.
    charged: usize,
    /// Since when the current hole has been waited for.
    hole_since_ns: Option<u64>,
    /// Offset of the FIN, once seen.
    fin_at: Option<u64>,
    /// When the FIN was captured.
    fin_ns: u64,
    /// Highest offset the peer acknowledged (0 when none beyond the start).
    acked: u64,
}

impl Stream {
    fn next_seq(&self, base: u32) -> u32 {
        // Truncation intended: sequence numbers are offsets modulo 2^32.
        base.wrapping_add(self.next as u32)
    }

    /// Serial distance from the next expected byte to `seq`, if within the window.
    fn rel(&self, seq: u32) -> Option<i64> {
        let base = self.base?;
        let diff = seq.wrapping_sub(self.next_seq(base)) as i32;
        (diff.unsigned_abs() <= WINDOW).then_some(i64::from(diff))
    }

    /// End of the current hole: where the next buffered bytes start, or the FIN.
    fn hole_end(&self) -> Option<u64> {
        match self.chunks.first_key_value() {
            Some((&start, _)) => Some(start),
            None => self.fin_at.filter(|&fin| fin > self.next),
        }
    }

    /// Whether the FIN was delivered.
    fn finished(&self) -> bool {
        self.fin_at.is_some_and(|fin| self.next >= fin)
    }

    /// The peer acknowledged up to `ack`.
    fn peer_ack(&mut self, ack: u32) {
        let Some(base) = self.base else {
            return;
        };
        let diff = ack.wrapping_sub(self.next_seq(base)) as i32;
        if diff > 0 && diff.unsigned_abs() <= WINDOW {
            self.acked = self.acked.max(self.next + u64::from(diff.unsigned_abs()));
        }
    }

    /// Records the first FIN: after `len` bytes starting `diff` from the next expected byte.
    /// Buffered bytes beyond it are dropped.
    fn note_fin(&mut self, diff: i64, len: usize, ts_ns: u64, tally: &mut Tally) {
        if self.fin_at.is_some() {
            return;
        }
        let end = i128::from(self.next) + i128::from(diff) + len as i128;
        let Ok(fin) = u64::try_from(end) else {
            return;
        };
        if fin < self.next {
            return;
        }
        self.fin_at = Some(fin);
        self.fin_ns = ts_ns;
        for (_, chunk) in self.chunks.split_off(&fin) {
            tally.counters.beyond_fin_bytes += chunk.data.len() as u64;
            self.uncharge(&chunk, tally);
        }
        if let Some(mut last) = self.chunks.last_entry()
            && *last.key() + last.get().data.len() as u64 > fin
        {
            let start = *last.key();
            let chunk = last.get_mut();
            let keep = clamp(fin.saturating_sub(start), chunk.data.len());
            let cut = chunk.data.len() - keep;
            chunk.data.truncate(keep);
            tally.counters.beyond_fin_bytes += cut as u64;
            self.charged = self.charged.saturating_sub(cut);
            tally.buffered = tally.buffered.saturating_sub(cut);
        }
    }

    /// Resets the hole's clock after a change: a new hole (or one reached by delivery) is
    /// waited for since the data after it arrived; a hole that stayed keeps its clock.
    fn refresh_hole(&mut self, advanced: bool) {
        let since = match self.chunks.first_key_value() {
            Some((_, chunk)) => chunk.ts_ns,
            None if self.hole_end().is_some() => self.fin_ns,
            None => {
                self.hole_since_ns = None;
                return;
            }
        };
        self.hole_since_ns = match self.hole_since_ns {
            Some(old) if !advanced => Some(old.min(since)),
            _ => Some(since),
        };
    }

    /// Takes the bytes of a segment starting `diff` from the next expected byte.
    fn accept<T, F>(
        &mut self,
        side: Side,
        diff: i64,
        payload: &[u8],
        ts_ns: u64,
        out: &mut Out<'_, T, F>,
    ) where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let mut bytes = payload;
        let mut start = self.next;
        if diff < 0 {
            let behind = diff.unsigned_abs();
            let len = bytes.len() as u64;
            if behind >= len {
                out.tally.counters.overlap_bytes += len;
                if len > 0 {
                    out.tally.counters.retransmitted_segments += 1;
                }
                return;
            }
            out.tally.counters.overlap_bytes += behind;
            bytes = bytes.get(clamp(behind, bytes.len())..).unwrap_or_default();
        } else {
            start = self.next + diff.unsigned_abs();
        }
        if let Some(fin) = self.fin_at
            && start + bytes.len() as u64 > fin
        {
            let keep = clamp(fin.saturating_sub(start), bytes.len());
            out.tally.counters.beyond_fin_bytes += (bytes.len() - keep) as u64;
            bytes = bytes.get(..keep).unwrap_or_default();
        }
        if bytes.is_empty() {
            return;
        }
        let mut fresh = false;
        let mut conflict = false;
        while !bytes.is_empty() {
            if start > self.next {
                let (new, differ) = self.insert(start, bytes, ts_ns, out.tally);
                fresh |= new;
                conflict |= differ;
                break;
            }
            // Here start == next: bytes below it were trimmed, and each step keeps them equal.
            match self.chunks.first_key_value().map(|(&s, _)| s) {
                Some(chunk_start) if chunk_start <= self.next => {
                    let Some((_, chunk)) = self.chunks.pop_first() else {
                        break;
                    };
                    self.uncharge(&chunk, out.tally);
                    let held = chunk
                        .data
                        .get(clamp(self.next - chunk_start, chunk.data.len())..)
                        .unwrap_or_default();
                    let n = held.len().min(bytes.len());
                    conflict |= held.get(..n) != bytes.get(..n);
                    out.tally.counters.overlap_bytes += n as u64;
                    out.data(side, held, chunk.ts_ns);
                    self.next += held.len() as u64;
                    bytes = bytes.get(n..).unwrap_or_default();
                    start += n as u64;
                }
                limit => {
                    let room = limit.map_or(bytes.len(), |s| clamp(s - self.next, bytes.len()));
                    let (now, rest) = bytes.split_at_checked(room).unwrap_or((bytes, &[]));
                    out.data(side, now, ts_ns);
                    self.next += now.len() as u64;
                    start += now.len() as u64;
                    bytes = rest;
                    fresh = true;
                }
            }
        }
        self.drain(side, out);
        if conflict {
            out.tally.counters.overlap_conflicts += 1;
        }
        if !fresh {
            out.tally.counters.retransmitted_segments += 1;
        }
    }

    /// Buffers the bytes of `[start, start + len)` that no chunk holds yet; `start` is beyond
    /// `next`. Returns whether any byte was new and whether overlapping bytes differed.
    fn insert(
        &mut self,
        mut start: u64,
        mut bytes: &[u8],
        ts_ns: u64,
        tally: &mut Tally,
    ) -> (bool, bool) {
        let mut fresh = false;
        let mut conflict = false;
        if let Some((&chunk_start, chunk)) = self.chunks.range(..start).next_back() {
            let held = chunk
                .data
                .get(clamp(start - chunk_start, chunk.data.len())..)
                .unwrap_or_default();
            let n = held.len().min(bytes.len());
            conflict |= held.get(..n) != bytes.get(..n);
            tally.counters.overlap_bytes += n as u64;
            bytes = bytes.get(n..).unwrap_or_default();
            start += n as u64;
        }
        while !bytes.is_empty() {
            let end = start + bytes.len() as u64;
            let Some(chunk_start) = self.chunks.range(start..end).next().map(|(&s, _)| s) else {
                self.put(start, bytes, ts_ns, tally);
                fresh = true;
                break;
            };
            if chunk_start > start {
                let n = clamp(chunk_start - start, bytes.len());
                let (new, rest) = bytes.split_at_checked(n).unwrap_or((bytes, &[]));
                self.put(start, new, ts_ns, tally);
                fresh = true;
                bytes = rest;
                start += new.len() as u64;
            }
            let held = self
                .chunks
                .get(&chunk_start)
                .map_or(&[][..], |c| c.data.as_slice());
            let n = held.len().min(bytes.len());
            conflict |= held.get(..n) != bytes.get(..n);
            tally.counters.overlap_bytes += n as u64;
            bytes = bytes.get(n..).unwrap_or_default();
            start += n as u64;
            if n == 0 {
                break;
            }
        }
        (fresh, conflict)
    }

    /// Stores new bytes at `start`, appended to the chunk ending there if there is one.
    fn put(&mut self, start: u64, bytes: &[u8], ts_ns: u64, tally: &mut Tally) {
        if bytes.is_empty() {
            return;
        }
        if let Some((&chunk_start, chunk)) = self.chunks.range_mut(..start).next_back()
            && chunk_start + chunk.data.len() as u64 == start
        {
            chunk.data.extend_from_slice(bytes);
            self.charged += bytes.len();
            tally.buffered += bytes.len();
            return;
        }
        let charge = bytes.len() + CHUNK_OVERHEAD;
        self.chunks.insert(
            start,
            Chunk {
                data: bytes.to_vec(),
                ts_ns,
            },
        );
        self.charged += charge;
        tally.buffered += charge;
    }

    fn uncharge(&mut self, chunk: &Chunk, tally: &mut Tally) {
        let charge = chunk.data.len() + CHUNK_OVERHEAD;
        self.charged = self.charged.saturating_sub(charge);
        tally.buffered = tally.buffered.saturating_sub(charge);
    }

    /// Delivers the buffered chunks that now continue the stream.
    fn drain<T, F>(&mut self, side: Side, out: &mut Out<'_, T, F>)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        while let Some(entry) = self.chunks.first_entry() {
            let chunk_start = *entry.key();
            if chunk_start > self.next {
                break;
            }
            let chunk = entry.remove();
            self.uncharge(&chunk, out.tally);
            let skip = clamp(self.next - chunk_start, chunk.data.len());
            out.tally.counters.overlap_bytes += skip as u64;
            let rest = chunk.data.get(skip..).unwrap_or_default();
            out.data(side, rest, chunk.ts_ns);
            self.next += rest.len() as u64;
        }
    }

    /// Gives up on the current hole: reports it as a gap and delivers what follows it.
    /// Returns false when there was no hole.
    fn force<T, F>(
        &mut self,
        side: Side,
        ts_ns: u64,
        cause: GapCause,
        out: &mut Out<'_, T, F>,
    ) -> bool
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        let Some(end) = self.hole_end() else {
            return false;
        };
        out.gap(side, end.saturating_sub(self.next), ts_ns, cause);
        self.next = self.next.max(end);
        self.drain(side, out);
        self.refresh_hole(true);
        true
    }

    /// Gives up on holes waited for `timeout_ns` or longer at `now_ns`.
    fn expire<T, F>(&mut self, side: Side, now_ns: u64, timeout_ns: u64, out: &mut Out<'_, T, F>)
    where
        F: FnMut(&Connection, &mut T, Event<'_>),
    {
        while self
            .hole_since_ns
            .is_some_and(|since| now_ns.saturating_sub(since) >= timeout_ns)
        {
            if !self.force(side, now_ns, GapCause::Timeout, out) {
                self.hole_since_ns = None;
                break;
            }
        }
    }
}

/// `n` as a length no longer than `max`.
fn clamp(n: u64, max: usize) -> usize {
    usize::try_from(n).map_or(max, |n| n.min(max))
}

/// The entry in slot `i`, if the slot is used.
fn slot_mut<T>(slots: &mut [Option<Entry<T>>], i: usize) -> Option<&mut Entry<T>> {
    slots.get_mut(i).and_then(Option::as_mut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: &str = "10.0.0.1:40000";
    const SERVER: &str = "10.0.0.2:80";
    const MS: u64 = 1_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// An owned copy of an event, for the log.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Data(Side, Vec<u8>),
        Gap(Side, u64),
        Closed(CloseReason),
    }

    /// A table of `()` whose events land in one log, tagged with the connection id.
    struct Harness {
        table: Connections<()>,
        log: Vec<(u64, Ev)>,
        opened: Vec<Connection>,
        accept: bool,
    }

    impl Harness {
        fn new(config: ReassemblyConfig) -> Harness {
            Harness {
                table: Connections::new(config),
                log: Vec::new(),
                opened: Vec::new(),
                accept: true,
            }
        }

        fn big() -> Harness {
            Harness::new(ReassemblyConfig {
                max_buffered_per_side: 64 << 20,
                max_buffered_total: 64 << 20,
                gap_timeout_ns: u64::MAX,
                ..ReassemblyConfig::default()
            })
        }

        fn feed(&mut self, seg: TcpSegment<'_>) {
            let (log, opened, accept) = (&mut self.log, &mut self.opened, self.accept);
            self.table.segment(
                &seg,
                |c| {
                    opened.push(c.clone());
                    accept.then_some(())
                },
                |c, _, e| log.push((c.id, owned(e))),
            );
        }

        fn advance(&mut self, now: u64) {
            let log = &mut self.log;
            self.table
                .advance(now, |c, _, e| log.push((c.id, owned(e))));
        }

        fn flush(&mut self, now: u64) {
            let log = &mut self.log;
            self.table.flush(now, |c, _, e| log.push((c.id, owned(e))));
        }

        fn bytes(&self, id: u64, side: Side) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, e) in &self.log {
                if let Ev::Data(s, b) = e
                    && *i == id
                    && *s == side
                {
                    out.extend_from_slice(b);
                }
            }
            out
        }

        fn gaps(&self, id: u64) -> Vec<(Side, u64)> {
            self.log
                .iter()
                .filter_map(|(i, e)| match e {
                    Ev::Gap(s, n) if *i == id => Some((*s, *n)),
                    _ => None,
                })
                .collect()
        }

        fn closes(&self) -> Vec<(u64, CloseReason)> {
            self.log
                .iter()
                .filter_map(|(i, e)| match e {
                    Ev::Closed(r) => Some((*i, *r)),
                    _ => None,
                })
                .collect()
        }
    }

    fn owned(e: Event<'_>) -> Ev {
        match e {
            Event::Data { side, bytes, .. } => Ev::Data(side, bytes.to_vec()),
            Event::Gap { side, len, .. } => Ev::Gap(side, len),
            Event::Closed { reason, .. } => Ev::Closed(reason),
        }
    }

    fn seg<'a>(
        src: &str,
        dst: &str,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &'a [u8],
        ts_ns: u64,
    ) -> TcpSegment<'a> {
        TcpSegment {
            src: addr(src),
            dst: addr(dst),
            seq,
            ack,
            flags,
            payload,
            ts_ns,
        }
    }

    /// Client ISN `c`, server ISN `s`: SYN, SYN-ACK, ACK.
    fn handshake(h: &mut Harness, c: u32, s: u32) {
        h.feed(seg(CLIENT, SERVER, c, 0, SYN, b"", 0));
        h.feed(seg(SERVER, CLIENT, s, c.wrapping_add(1), SYN | ACK, b"", 1));
        h.feed(seg(
            CLIENT,
            SERVER,
            c.wrapping_add(1),
            s.wrapping_add(1),
            ACK,
            b"",
            2,
        ));
    }

    /// Client data at stream offset `off` (after ISN `isn`).
    fn client_data(isn: u32, off: u32, payload: &[u8], ts: u64) -> TcpSegment<'_> {
        seg(
            CLIENT,
            SERVER,
            isn.wrapping_add(1).wrapping_add(off),
            0,
            ACK | PSH,
            payload,
            ts,
        )
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn in_order_data_is_passed_through_without_copy() {
        let mut table: Connections<()> = Connections::new(ReassemblyConfig::default());
        let mut seen = Vec::new();
        let payloads: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n"];
        table.segment(
            &seg(CLIENT, SERVER, 99, 0, SYN, b"", 0),
            |_| Some(()),
            |_, _, _| {},
        );
        let mut off = 0u32;
        for (n, p) in payloads.iter().enumerate() {
            table.segment(
                &client_data(99, off, p, n as u64 + 1),
                |_| Some(()),
                |_, _, e| {
                    if let Event::Data { side, bytes, .. } = e {
                        seen.push((side, bytes.as_ptr() == p.as_ptr(), bytes.len()));
                    }
                },
            );
            off += p.len() as u32;
        }
        assert_eq!(
            seen,
            vec![
                (Side::Client, true, 16),
                (Side::Client, true, 9),
                (Side::Client, true, 2)
            ]
        );
        assert_eq!(table.buffered_bytes(), 0);
        assert_eq!(table.counters().delivered_bytes, 27);
        assert_eq!(table.counters().segments, 4);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reversed_segments_give_the_same_bytes() {
        let data = pattern(1000, 7);
        let mut h = Harness::big();
        handshake(&mut h, 5000, 9000);
        for k in (0..10u32).rev() {
            let part = &data[(k as usize) * 100..(k as usize + 1) * 100];
            h.feed(client_data(5000, k * 100, part, 10 + u64::from(k)));
            if k > 0 {
                assert!(h.table.buffered_bytes() > 0);
            }
        }
        assert_eq!(h.bytes(0, Side::Client), data);
        assert!(h.gaps(0).is_empty());
        assert_eq!(h.table.buffered_bytes(), 0);
        assert_eq!(h.table.counters().gaps, 0);
    }

    #[test]
    fn ack_past_a_lost_segment_declares_exactly_its_gap() {
        let data = pattern(300, 3);
        let mut h = Harness::big();
        handshake(&mut h, 100, 200);
        h.feed(client_data(100, 0, &data[..100], 10));
        h.feed(client_data(100, 200, &data[200..], 12));
        assert_eq!(h.gaps(0), vec![]);
        // The server acknowledges all 300 bytes: it got the middle segment, the capture did not.
        h.feed(seg(SERVER, CLIENT, 201, 101 + 300, ACK, b"", 13));
        let events: Vec<_> = h.log.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            events,
            vec![
                Ev::Data(Side::Client, data[..100].to_vec()),
                Ev::Gap(Side::Client, 100),
                Ev::Data(Side::Client, data[200..].to_vec()),
            ]
        );
        assert_eq!(h.table.counters().gaps_acked, 1);
        assert_eq!(h.table.counters().gap_bytes, 100);
        assert_eq!(h.table.buffered_bytes(), 0);
        // The lost segment arriving late changes nothing.
        h.feed(client_data(100, 100, &data[100..200], 14));
        assert_eq!(h.bytes(0, Side::Client).len(), 200);
        assert_eq!(h.table.counters().retransmitted_segments, 1);
    }

    #[test]
    fn ack_that_only_partly_covers_the_hole_waits() {
        let data = pattern(300, 3);
        let mut h = Harness::big();
        handshake(&mut h, 100, 200);
        h.feed(client_data(100, 0, &data[..100], 10));
        h.feed(client_data(100, 200, &data[200..], 12));
        h.feed(seg(SERVER, CLIENT, 201, 101 + 150, ACK, b"", 13));
        assert!(h.gaps(0).is_empty());
        h.feed(client_data(100, 100, &data[100..200], 14));
        assert_eq!(h.bytes(0, Side::Client), data);
    }

    #[test]
    fn timeout_declares_a_lost_segment_as_a_gap() {
        let data = pattern(300, 4);
        let mut h = Harness::new(ReassemblyConfig {
            gap_timeout_ns: 500 * MS,
            ..ReassemblyConfig::default()
        });
        handshake(&mut h, 7, 8);
        h.feed(client_data(7, 0, &data[..100], 10 * MS));
        h.feed(client_data(7, 200, &data[200..], 20 * MS));
        h.advance(519 * MS);
        assert!(h.gaps(0).is_empty());
        h.advance(520 * MS);
        assert_eq!(h.gaps(0), vec![(Side::Client, 100)]);
        let mut expect = data[..100].to_vec();
        expect.extend_from_slice(&data[200..]);
        assert_eq!(h.bytes(0, Side::Client), expect);
        assert_eq!(h.table.counters().gaps_timeout, 1);
        assert_eq!(h.table.buffered_bytes(), 0);
    }

    #[test]
    fn timeout_is_also_checked_on_later_segments() {
        let data = pattern(400, 4);
        let mut h = Harness::new(ReassemblyConfig {
            gap_timeout_ns: 500 * MS,
            ..ReassemblyConfig::default()
        });
        handshake(&mut h, 7, 8);
        h.feed(client_data(7, 200, &data[200..300], 10 * MS));
        h.feed(client_data(7, 300, &data[300..], 600 * MS));
        assert_eq!(h.gaps(0), vec![(Side::Client, 200)]);
        assert_eq!(h.bytes(0, Side::Client), data[200..].to_vec());
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let data = pattern(100, 9);
        let isn = u32::MAX - 30;
        let mut h = Harness::big();
        handshake(&mut h, isn, u32::MAX);
        for k in [3u32, 0, 4, 2, 1, 9, 5, 8, 6, 7] {
            let part = &data[(k as usize) * 10..(k as usize + 1) * 10];
            h.feed(client_data(isn, k * 10, part, 10));
        }
        h.feed(seg(
            SERVER,
            CLIENT,
            0,
            isn.wrapping_add(101),
            ACK | PSH,
            b"ok",
            11,
        ));
        assert_eq!(h.bytes(0, Side::Client), data);
        assert_eq!(h.bytes(0, Side::Server), b"ok".to_vec());
        assert_eq!(h.table.counters().gaps, 0);
    }

    #[test]
    fn mid_stream_start_takes_the_lower_port_as_server() {
        let mut h = Harness::big();
        // A pure ACK sets no stream start.
        h.feed(seg(SERVER, CLIENT, 5000, 7000, ACK, b"", 1));
        h.feed(seg(
            SERVER,
            CLIENT,
            5000,
            7000,
            ACK | PSH,
            b"HTTP/1.1 200 OK\r\n",
            2,
        ));
        h.feed(seg(CLIENT, SERVER, 7000, 5017, ACK | PSH, b"GET /", 3));
        let conn = &h.opened[0];
        assert!(!conn.saw_syn);
        assert_eq!(conn.server, addr(SERVER));
        assert_eq!(conn.client, addr(CLIENT));
        assert_eq!(h.bytes(0, Side::Server), b"HTTP/1.1 200 OK\r\n".to_vec());
        assert_eq!(h.bytes(0, Side::Client), b"GET /".to_vec());
        // Bytes from before the first one seen are dropped, not delivered as a gap.
        h.feed(seg(SERVER, CLIENT, 4990, 7005, ACK, b"0123456789", 4));
        assert_eq!(h.bytes(0, Side::Server).len(), 17);
        assert!(h.gaps(0).is_empty());
    }

    #[test]
    fn mid_stream_tie_on_ports_takes_the_first_destination_as_server() {
        let mut h = Harness::big();
        h.feed(seg(
            "10.0.0.9:5000",
            "10.0.0.3:5000",
            1,
            1,
            ACK | PSH,
            b"x",
            1,
        ));
        assert_eq!(h.opened[0].server, addr("10.0.0.3:5000"));
        assert_eq!(h.opened[0].client, addr("10.0.0.9:5000"));
    }

    #[test]
    fn syn_and_syn_ack_decide_sides_whatever_the_ports() {
        let mut h = Harness::big();
        // A client on a low port talking to a high one.
        h.feed(seg("10.0.0.1:80", "10.0.0.2:9000", 10, 0, SYN, b"", 1));
        assert!(h.opened[0].saw_syn);
        assert_eq!(h.opened[0].client, addr("10.0.0.1:80"));
        // The SYN was missed: the SYN-ACK's sender is the server, its ACK the client's start.
        h.feed(seg(
            "10.0.0.5:9000",
            "10.0.0.6:80",
            500,
            1001,
            SYN | ACK,
            b"",
            2,
        ));
        assert!(h.opened[1].saw_syn);
        assert_eq!(h.opened[1].server, addr("10.0.0.5:9000"));
        h.feed(seg(
            "10.0.0.6:80",
            "10.0.0.5:9000",
            1001,
            501,
            ACK | PSH,
            b"hi",
            3,
        ));
        h.feed(seg(
            "10.0.0.5:9000",
            "10.0.0.6:80",
            501,
            1003,
            ACK | PSH,
            b"yo",
            4,
        ));
        assert_eq!(h.bytes(1, Side::Client), b"hi".to_vec());
        assert_eq!(h.bytes(1, Side::Server), b"yo".to_vec());
    }

    #[test]
    fn fin_both_ways_closes_once_after_the_data() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 1000);
        // The FIN overtakes the last data segment: the close waits for it.
        h.feed(seg(CLIENT, SERVER, 1 + 5, 1001, ACK | FIN, b"", 10));
        // (The server has not received "hello" yet, so it acknowledges nothing.)
        h.feed(seg(SERVER, CLIENT, 1001, 1, ACK | FIN | PSH, b"bye", 11));
        assert!(h.closes().is_empty());
        h.feed(client_data(0, 0, b"hello", 12));
        assert_eq!(h.closes(), vec![(0, CloseReason::Fin)]);
        assert_eq!(
            h.log.last().map(|(_, e)| e.clone()),
            Some(Ev::Closed(CloseReason::Fin))
        );
        assert_eq!(h.bytes(0, Side::Client), b"hello".to_vec());
        assert_eq!(h.bytes(0, Side::Server), b"bye".to_vec());
        // Retransmitted FIN and last ACK are absorbed by the lingering entry.
        h.feed(seg(SERVER, CLIENT, 1001, 7, ACK | FIN | PSH, b"bye", 13));
        h.feed(seg(CLIENT, SERVER, 7, 1005, ACK, b"", 14));
        assert_eq!(h.closes().len(), 1);
        assert_eq!(h.opened.len(), 1);
        assert_eq!(h.table.counters().late_segments, 2);
        assert_eq!((h.table.len(), h.table.lingering()), (0, 1));
        h.advance(14 + 2_000_000_000);
        assert_eq!(h.table.lingering(), 0);
        assert_eq!(h.table.counters().closed_fin, 1);
    }

    #[test]
    fn a_segment_after_the_linger_time_opens_a_new_connection() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 1000);
        h.feed(seg(CLIENT, SERVER, 1, 1001, ACK | FIN, b"", 10));
        h.feed(seg(SERVER, CLIENT, 1001, 2, ACK | FIN, b"", 11));
        h.feed(seg(CLIENT, SERVER, 2, 1002, ACK | PSH, b"late", 12));
        assert_eq!(h.opened.len(), 1);
        h.feed(seg(
            CLIENT,
            SERVER,
            2,
            1002,
            ACK | PSH,
            b"new",
            11 + 2_000_000_000,
        ));
        assert_eq!(h.opened.len(), 2);
        assert!(!h.opened[1].saw_syn);
        assert_eq!(h.bytes(1, Side::Client), b"new".to_vec());
        assert_eq!(h.table.counters().late_segments, 1);
    }

    #[test]
    fn fin_after_missing_data_reports_the_missing_bytes_on_ack() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 1000);
        h.feed(seg(CLIENT, SERVER, 1 + 40, 1001, ACK | FIN, b"", 10));
        h.feed(seg(SERVER, CLIENT, 1001, 42, ACK | FIN, b"", 11));
        assert_eq!(h.gaps(0), vec![(Side::Client, 40)]);
        assert_eq!(h.closes(), vec![(0, CloseReason::Fin)]);
    }

    #[test]
    fn rst_flushes_buffered_bytes_then_closes() {
        let data = pattern(30, 5);
        let mut h = Harness::big();
        handshake(&mut h, 50, 60);
        h.feed(client_data(50, 0, &data[..10], 10));
        h.feed(client_data(50, 20, &data[20..], 11));
        h.feed(seg(SERVER, CLIENT, 61, 0, RST, b"", 12));
        let events: Vec<_> = h.log.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            events,
            vec![
                Ev::Data(Side::Client, data[..10].to_vec()),
                Ev::Gap(Side::Client, 10),
                Ev::Data(Side::Client, data[20..].to_vec()),
                Ev::Closed(CloseReason::Rst),
            ]
        );
        assert_eq!(h.table.buffered_bytes(), 0);
        assert_eq!(h.table.counters().closed_rst, 1);
        // A RST for nothing opens nothing.
        h.feed(seg("10.9.9.9:1", "10.9.9.8:2", 1, 0, RST, b"", 13));
        assert_eq!(h.table.counters().orphan_rst, 1);
        assert_eq!(h.opened.len(), 1);
    }

    #[test]
    fn per_side_limit_turns_the_hole_into_a_gap() {
        let limit = 4096;
        let data = pattern(100 * 60, 6);
        let mut h = Harness::new(ReassemblyConfig {
            max_buffered_per_side: limit,
            gap_timeout_ns: u64::MAX,
            ..ReassemblyConfig::default()
        });
        handshake(&mut h, 0, 0);
        for k in 1..60u32 {
            let part = &data[(k as usize) * 100..(k as usize + 1) * 100];
            h.feed(client_data(0, k * 100, part, u64::from(k)));
            assert!(h.table.buffered_bytes() <= limit);
        }
        h.feed(client_data(0, 0, &data[..100], 99));
        assert_eq!(h.gaps(0), vec![(Side::Client, 100)]);
        assert_eq!(h.bytes(0, Side::Client), data[100..].to_vec());
        assert_eq!(h.table.counters().gaps_side_limit, 1);
        assert_eq!(h.table.buffered_bytes(), 0);
    }

    #[test]
    fn total_limit_makes_the_largest_buffer_give_way() {
        let mut h = Harness::new(ReassemblyConfig {
            max_buffered_total: 1000,
            gap_timeout_ns: u64::MAX,
            ..ReassemblyConfig::default()
        });
        let sizes = [500usize, 300, 200];
        for (n, size) in sizes.iter().enumerate() {
            let client = format!("10.0.1.{}:40000", n + 1);
            h.feed(seg(&client, SERVER, 0, 0, SYN, b"", 1));
            let data = vec![n as u8; *size];
            h.feed(seg(&client, SERVER, 1 + 10, 0, ACK, &data, 2));
            assert!(h.table.buffered_bytes() <= 1000);
        }
        assert_eq!(h.gaps(0), vec![(Side::Client, 10)]);
        assert!(h.gaps(1).is_empty());
        assert!(h.gaps(2).is_empty());
        assert_eq!(h.bytes(0, Side::Client), vec![0u8; 500]);
        assert_eq!(h.table.buffered_bytes(), 300 + 200 + 2 * CHUNK_OVERHEAD);
        assert_eq!(h.table.counters().gaps_total_limit, 1);
    }

    #[test]
    fn full_table_evicts_the_least_recently_active() {
        let mut h = Harness::new(ReassemblyConfig {
            max_connections: 2,
            ..ReassemblyConfig::default()
        });
        h.feed(seg("10.0.0.1:1001", SERVER, 0, 0, SYN, b"", 1));
        h.feed(seg("10.0.0.1:1002", SERVER, 0, 0, SYN, b"", 2));
        h.feed(seg("10.0.0.1:1001", SERVER, 1, 0, ACK | PSH, b"a", 3));
        h.feed(seg("10.0.0.1:1003", SERVER, 0, 0, SYN, b"", 4));
        assert_eq!(h.closes(), vec![(1, CloseReason::Evicted)]);
        assert_eq!(h.table.len(), 2);
        assert_eq!(h.table.counters().evicted_connections, 1);
        h.feed(seg("10.0.0.1:1004", SERVER, 0, 0, SYN, b"", 5));
        assert_eq!(
            h.closes(),
            vec![(1, CloseReason::Evicted), (0, CloseReason::Evicted)]
        );
        assert_eq!(h.bytes(0, Side::Client), b"a".to_vec());
    }

    #[test]
    fn idle_connections_close() {
        let mut h = Harness::new(ReassemblyConfig {
            idle_timeout_ns: 10 * MS,
            ..ReassemblyConfig::default()
        });
        h.feed(seg(CLIENT, SERVER, 0, 0, SYN, b"", MS));
        h.feed(seg("10.0.0.7:1", SERVER, 0, 0, SYN, b"", 5 * MS));
        h.advance(11 * MS);
        assert_eq!(h.closes(), vec![(0, CloseReason::Idle)]);
        assert_eq!(h.table.len(), 1);
        h.advance(15 * MS);
        assert_eq!(h.table.len(), 0);
        assert_eq!(h.table.counters().closed_idle, 2);
    }

    #[test]
    fn port_reuse_starts_a_new_connection() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 1000);
        h.feed(client_data(0, 0, b"one", 3));
        // A retransmitted SYN is not a new connection.
        h.feed(seg(CLIENT, SERVER, 0, 0, SYN, b"", 4));
        assert_eq!(h.opened.len(), 1);
        // A SYN with another ISN on a live key is.
        h.feed(seg(CLIENT, SERVER, 77_777, 0, SYN, b"", 5));
        assert_eq!(h.closes(), vec![(0, CloseReason::Reused)]);
        h.feed(seg(CLIENT, SERVER, 77_778, 0, ACK, b"two", 6));
        h.feed(seg(CLIENT, SERVER, 77_781, 0, ACK | FIN, b"", 7));
        h.feed(seg(SERVER, CLIENT, 5, 77_782, ACK | FIN, b"", 8));
        assert_eq!(h.closes().last(), Some(&(1, CloseReason::Fin)));
        // A SYN while the closed one lingers is a new connection too.
        h.feed(seg(CLIENT, SERVER, 123, 0, SYN, b"", 9));
        h.feed(seg(CLIENT, SERVER, 124, 0, ACK, b"three", 10));
        assert_eq!(h.opened.len(), 3);
        assert!(h.opened.iter().all(|c| c.saw_syn));
        assert_eq!(h.bytes(0, Side::Client), b"one".to_vec());
        assert_eq!(h.bytes(1, Side::Client), b"two".to_vec());
        assert_eq!(h.bytes(2, Side::Client), b"three".to_vec());
        assert_eq!(h.table.counters().port_reuses, 2);
        assert_eq!((h.table.len(), h.table.lingering()), (1, 0));
    }

    #[test]
    fn conflicting_overlap_is_counted_and_the_first_copy_wins() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 0);
        h.feed(client_data(0, 5, b"WORLD", 3));
        h.feed(client_data(0, 0, b"helloworld", 4));
        assert_eq!(h.bytes(0, Side::Client), b"helloWORLD".to_vec());
        let c = h.table.counters();
        assert_eq!((c.overlap_conflicts, c.overlap_bytes), (1, 5));
        assert_eq!(c.retransmitted_segments, 0);
    }

    #[test]
    fn far_segments_are_out_of_window() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 0);
        h.feed(client_data(0, 2 << 30, b"far", 3));
        assert_eq!(h.table.counters().out_of_window, 1);
        assert_eq!(h.table.buffered_bytes(), 0);
        assert!(h.log.is_empty());
    }

    #[test]
    fn declined_connections_are_only_counted() {
        let mut h = Harness::big();
        h.accept = false;
        handshake(&mut h, 0, 0);
        h.feed(client_data(0, 10, b"x", 3));
        h.feed(client_data(0, 0, b"y", 4));
        h.feed(seg(CLIENT, SERVER, 0, 0, SYN, b"", 5));
        assert!(h.log.is_empty());
        assert_eq!(h.opened.len(), 1);
        let c = h.table.counters();
        assert_eq!((c.ignored_connections, c.ignored_segments), (1, 6));
        assert_eq!(c.port_reuses, 0);
        assert_eq!(h.table.buffered_bytes(), 0);
    }

    #[test]
    fn flush_delivers_what_is_buffered_and_empties_the_table() {
        let mut h = Harness::big();
        handshake(&mut h, 0, 0);
        h.feed(client_data(0, 4, b"tail", 3));
        h.flush(10);
        let events: Vec<_> = h.log.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            events,
            vec![
                Ev::Gap(Side::Client, 4),
                Ev::Data(Side::Client, b"tail".to_vec()),
                Ev::Closed(CloseReason::Flushed),
            ]
        );
        assert_eq!(
            (h.table.len(), h.table.lingering(), h.table.buffered_bytes()),
            (0, 0, 0)
        );
    }

    /// The segments of a shuffled, duplicated, partly retransmitted stream.
    fn mangled(data: &[u8], seed: u64) -> Vec<(u32, Vec<u8>)> {
        let mut x = seed | 1;
        let mut rand = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let mut segs = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let len = (1 + rand(1460)).min(data.len() - off);
            segs.push((off as u32, data[off..off + len].to_vec()));
            off += len;
        }
        for _ in 0..segs.len() / 4 {
            let pick = segs[rand(segs.len())].clone();
            segs.push(pick);
        }
        for _ in 0..segs.len() / 4 {
            let start = rand(data.len());
            let len = (1 + rand(3000)).min(data.len() - start);
            segs.push((start as u32, data[start..start + len].to_vec()));
        }
        for i in (1..segs.len()).rev() {
            segs.swap(i, rand(i + 1));
        }
        segs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn any_order_with_duplicates_gives_the_original_bytes(seed: u64, isn: u32) {
            let data = pattern(100_000, seed);
            let mut h = Harness::big();
            h.feed(seg(CLIENT, SERVER, isn, 0, SYN, b"", 0));
            let mut most_buffered = 0;
            for (n, (off, bytes)) in mangled(&data, seed).iter().enumerate() {
                h.feed(client_data(isn, *off, bytes, n as u64 + 1));
                most_buffered = most_buffered.max(h.table.buffered_bytes());
            }
            prop_assert!(h.bytes(0, Side::Client) == data);
            let c = h.table.counters();
            prop_assert_eq!(c.gaps, 0);
            prop_assert_eq!(c.overlap_conflicts, 0);
            prop_assert_eq!(c.delivered_bytes, 100_000);
            prop_assert_eq!(h.table.buffered_bytes(), 0);
            // The script did reorder, duplicate and overlap.
            prop_assert!(most_buffered > 0);
            prop_assert!(c.retransmitted_segments > 0);
            prop_assert!(c.overlap_bytes > 0);
        }

        #[test]
        fn limits_hold_and_bytes_are_accounted_under_loss(seed: u64, isn: u32, drop_every in 3usize..20) {
            let data = pattern(50_000, seed);
            let config = ReassemblyConfig {
                max_buffered_per_side: 8192,
                max_buffered_total: 12_000,
                gap_timeout_ns: u64::MAX,
                ..ReassemblyConfig::default()
            };
            let mut h = Harness::new(config);
            let clients = ["10.0.2.1:40000", "10.0.2.2:40000"];
            for c in clients {
                h.feed(seg(c, SERVER, isn, 0, SYN, b"", 0));
            }
            for (n, (off, bytes)) in mangled(&data, seed).iter().enumerate() {
                if n % drop_every == 0 {
                    continue;
                }
                let c = clients[n % 2];
                h.feed(seg(c, SERVER, isn.wrapping_add(1).wrapping_add(*off), 0, ACK, bytes, n as u64 + 1));
                prop_assert!(h.table.buffered_bytes() <= 12_000);
            }
            h.flush(u64::MAX);
            let c = h.table.counters();
            // Each stream holds at most the 50,000 bytes; nothing is delivered twice.
            prop_assert!(c.delivered_bytes + c.gap_bytes <= 2 * 50_000);
            for id in 0..2 {
                let got = h.bytes(id, Side::Client);
                let gaps: u64 = h.gaps(id).iter().map(|g| g.1).sum();
                prop_assert!(got.len() as u64 + gaps <= 50_000);
            }
            prop_assert_eq!(h.table.buffered_bytes(), 0);
        }
    }
}
