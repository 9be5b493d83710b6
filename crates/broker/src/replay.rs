//! Running a capture file through one policy offline (`podtap broker --replay`): every frame,
//! in order, with the capture's timestamps as the clock (so windows, rates and flow timeouts
//! behave as they did when it was captured), and the outputs' timers run every 100 ms of capture
//! time. The file is memory-mapped and parsed in place: no frame is copied before the policy
//! gets it.

use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgParser};

use crate::broker::Broker;
use crate::packet::{Direction, Source};

/// How often (capture time) the outputs' timers run.
const TICK_NS: u64 = 100_000_000;

/// Errors reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or mapped.
    #[error("capture {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a pcap or pcapng it can read, or is cut short.
    #[error("capture {path}: {source} (after {packets} packets)")]
    Format {
        path: PathBuf,
        packets: u64,
        #[source]
        source: pcap_file::PcapError,
    },
}

/// Runs every frame of the capture at `path` through the policy `policy` of `broker`, then its
/// outputs' timers at the end of the capture. Returns the number of frames.
pub fn replay(broker: &mut Broker, policy: usize, path: &Path) -> Result<u64, ReplayError> {
    let file = std::fs::File::open(path).map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the map is read-only and lives only during this call; a capture changed under it
    // by another process can give wrong frames or a parse error, nothing worse.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let _ = map.advise(memmap2::Advice::Sequential);
    let mut clock = Clock::default();
    let mut packets = 0u64;
    let format_err = |packets, source| ReplayError::Format {
        path: path.to_path_buf(),
        packets,
        source,
    };
    let source = |direction, tap| Source {
        policy,
        tap,
        direction,
        agent: std::net::IpAddr::from([0, 0, 0, 0]),
    };
    // pcapng interfaces named `... (decrypted)` (the agent's decrypted view) keep that mark.
    let mut decrypted_ifaces: Vec<bool> = Vec::new();

    if map.len() >= 4 && map[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        let (mut rest, mut parser) = PcapNgParser::new(&map).map_err(|e| format_err(0, e))?;
        while !rest.is_empty() {
            let (next, block) = parser
                .next_block(rest)
                .map_err(|e| format_err(packets, e))?;
            rest = next;
            prefetch(rest);
            if let Block::InterfaceDescription(idb) = &block {
                decrypted_ifaces.push(idb.options.iter().any(|o| {
                    matches!(o, pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) if n.ends_with("(decrypted)"))
                }));
            }
            if let Block::EnhancedPacket(epb) = block {
                let tap = if decrypted_ifaces
                    .get(epb.interface_id as usize)
                    .copied()
                    .unwrap_or(false)
                {
                    podtap_wire::vxlan::DECRYPTED
                } else {
                    0
                };
                let direction = epb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(f & 3),
                        _ => None,
                    })
                    .map_or(Direction::Unknown, |d| match d {
                        1 => Direction::ToPod,
                        2 => Direction::FromPod,
                        _ => Direction::Unknown,
                    });
                let ts = epb.timestamp.as_nanos() as u64;
                clock.advance(broker, ts);
                broker.process(source(direction, tap), ts, &epb.data);
                packets += 1;
            }
        }
    } else {
        let (mut rest, parser) = PcapParser::new(&map).map_err(|e| format_err(0, e))?;
        while !rest.is_empty() {
            let (next, packet) = parser
                .next_packet(rest)
                .map_err(|e| format_err(packets, e))?;
            rest = next;
            prefetch(rest);
            let ts = packet.timestamp.as_nanos() as u64;
            clock.advance(broker, ts);
            broker.process(source(Direction::Unknown, 0), ts, &packet.data);
            packets += 1;
        }
    }
    broker.tick_at(clock.last + TICK_NS);
    Ok(packets)
}

/// Asks the CPU to start loading the next record's header and the frame's first bytes (its
/// L2-L4 headers) while the current one is processed: replaying a large capture is otherwise a
/// cache miss per frame, the records being far apart.
#[inline]
fn prefetch(next: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = next.as_ptr().cast::<i8>();
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it never
        // faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = next;
}

/// Capture time, and when the outputs' timers are due.
#[derive(Debug, Default)]
struct Clock {
    next_tick: u64,
    last: u64,
}

impl Clock {
    fn advance(&mut self, broker: &mut Broker, ts: u64) {
        if ts >= self.next_tick {
            if self.next_tick != 0 {
                broker.tick_at(ts);
            }
            self.next_tick = ts + TICK_NS;
        }
        self.last = ts;
    }
}
