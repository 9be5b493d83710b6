//! Fuzzes the TCP reassembler and connection table: the input is a small config followed by a
//! script of segments (endpoints, flags, sequence offsets, lengths, time steps) and clock
//! advances. After every call the table must respect its memory and connection limits, the
//! events must add up to the counters, no connection may get an event after its `Closed`, and
//! no direction may deliver (as data or gaps) more bytes than its segments' sequence range holds.

#![no_main]

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use podtap_l7::call::Side;
use podtap_l7::reassembly::{
    Connection, Connections, Event, ReassemblyConfig, ReassemblyCounters, TcpSegment,
};

/// Sequence offsets are 16 bits and payloads at most 255 bytes, plus one for a SYN: unless a
/// segment used a wild sequence number, a direction cannot hold more than this.
const STREAM_SPAN: u64 = (1 << 16) + 256 + 1;

fuzz_target!(|data: &[u8]| run(data));

/// Reads the script; runs out quietly.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// What the events said about one connection.
#[derive(Default)]
struct Seen {
    delivered: [u64; 2],
    gaps: [u64; 2],
    closed: bool,
}

/// Everything observed, checked against the table.
#[derive(Default)]
struct Observed {
    seen: HashMap<u64, Seen>,
    accepted: HashSet<u64>,
    delivered: u64,
    gap_bytes: u64,
    wild: bool,
}

impl Observed {
    fn event(&mut self, conn: &Connection, event: Event<'_>) {
        let seen = self.seen.entry(conn.id).or_default();
        assert!(!seen.closed, "event after Closed on connection {}", conn.id);
        assert!(
            self.accepted.contains(&conn.id),
            "event for a declined connection"
        );
        match event {
            Event::Data { side, bytes, .. } => {
                assert!(!bytes.is_empty(), "empty Data event");
                seen.delivered[index(side)] += bytes.len() as u64;
                self.delivered += bytes.len() as u64;
            }
            Event::Gap { side, len, .. } => {
                assert!(len > 0, "empty Gap event");
                seen.gaps[index(side)] += len;
                self.gap_bytes += len;
            }
            Event::Closed { .. } => seen.closed = true,
        }
        if !self.wild {
            for i in 0..2 {
                assert!(
                    seen.delivered[i] + seen.gaps[i] <= STREAM_SPAN,
                    "a direction delivered more than its sequence range holds"
                );
            }
        }
    }

    fn check(&self, table: &Connections<()>, config: &ReassemblyConfig) {
        let c: &ReassemblyCounters = table.counters();
        assert!(table.buffered_bytes() <= config.max_buffered_total);
        assert!(table.len() + table.lingering() <= config.max_connections);
        assert_eq!(c.delivered_bytes, self.delivered);
        assert_eq!(c.gap_bytes, self.gap_bytes);
        assert!(c.delivered_bytes <= c.payload_bytes);
    }
}

fn index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

fn run(data: &[u8]) {
    let mut script = Script { data };
    let (Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)) = (
        script.u8(),
        script.u8(),
        script.u8(),
        script.u8(),
        script.u8(),
        script.u8(),
    ) else {
        return;
    };
    let config = ReassemblyConfig {
        max_connections: usize::from(a % 8),
        max_buffered_per_side: usize::from(b) * 64,
        max_buffered_total: usize::from(c) * 128,
        gap_timeout_ns: u64::from(d) * 1000,
        idle_timeout_ns: u64::from(e) * 10_000,
        linger_ns: u64::from(f) * 1000,
    };
    let (Some(isn_a), Some(isn_b)) = (script.u32(), script.u32()) else {
        return;
    };
    let endpoints: [SocketAddr; 4] = [
        SocketAddr::from(([10, 0, 0, 1], 40000)),
        SocketAddr::from(([10, 0, 0, 2], 80)),
        SocketAddr::from(([10, 0, 0, 3], 80)),
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 40000)),
    ];
    // Address pairs, in the order the script names them.
    let pairs = [(0, 1), (0, 2), (3, 1), (2, 1)];
    let mut table: Connections<()> = Connections::new(config.clone());
    let mut seen = Observed::default();
    let mut ts: u64 = 1_000_000;
    let filler: Vec<u8> = (0..=255u8).collect();

    while let Some(op) = script.u8() {
        if op >> 6 == 3 {
            let step = u64::from(script.u16().unwrap_or(0)) * 1000;
            ts = ts.saturating_add(step);
            table.advance(ts, |conn, _, event| seen.event(conn, event));
            seen.check(&table, &config);
            continue;
        }
        let (Some(flags), Some(offset), Some(len), Some(ack_offset), Some(dt)) = (
            script.u8(),
            script.u16(),
            script.u8(),
            script.u16(),
            script.u8(),
        ) else {
            break;
        };
        let (x, y) = pairs[usize::from(op & 0x03)];
        let forward = op & 0x04 == 0;
        let (src, dst) = if forward { (x, y) } else { (y, x) };
        let (own_isn, peer_isn) = if forward {
            (isn_a, isn_b)
        } else {
            (isn_b, isn_a)
        };
        // One segment op in six takes raw sequence and acknowledgement numbers.
        let wild = op >> 5 == 5;
        let (seq, ack) = if wild {
            seen.wild = true;
            (script.u32().unwrap_or(0), script.u32().unwrap_or(0))
        } else {
            (
                own_isn.wrapping_add(u32::from(offset)),
                peer_isn.wrapping_add(u32::from(ack_offset)),
            )
        };
        let payload: &[u8] = if op & 0x08 != 0 {
            script.bytes(usize::from(len))
        } else {
            let start = usize::from(offset as u8);
            let end = (start + usize::from(len)).min(filler.len());
            filler.get(start..end).unwrap_or_default()
        };
        if op & 0x10 != 0 {
            ts = ts.saturating_sub(u64::from(dt) * 1000);
        } else {
            ts = ts.saturating_add(u64::from(dt) * 1000);
        }
        let segment = TcpSegment {
            src: endpoints[src],
            dst: endpoints[dst],
            seq,
            ack,
            flags,
            payload,
            ts_ns: ts,
        };
        // `open` and `on` both run inside `segment`: `open` leaves its verdict in a cell.
        let opened: Cell<Option<(u64, bool)>> = Cell::new(None);
        table.segment(
            &segment,
            |conn| {
                // Decline one connection in four: those must stay silent.
                let keep = conn.id % 4 != 3;
                opened.set(Some((conn.id, keep)));
                keep.then_some(())
            },
            |conn, _, event| {
                if let Some((id, true)) = opened.get() {
                    seen.accepted.insert(id);
                }
                seen.event(conn, event);
            },
        );
        if let Some((id, true)) = opened.get() {
            seen.accepted.insert(id);
        }
        seen.check(&table, &config);
    }

    table.flush(ts, |conn, _, event| seen.event(conn, event));
    seen.check(&table, &config);
    assert_eq!(table.len(), 0);
    assert_eq!(table.lingering(), 0);
    assert_eq!(table.buffered_bytes(), 0);
    for id in &seen.accepted {
        assert!(
            seen.seen.get(id).is_some_and(|s| s.closed),
            "connection {id} was never closed"
        );
    }
}
