//! Where copies leave the agent: ring records become pcapng packets, one interface per tapped
//! veth (named `namespace/pod`), with the pod's direction in each packet's flags. GSO
//! super-packets are segmented into wire-size packets by default (see [`GsoMode`]).

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

use podtap_abi as abi;
use podtap_cluster::PodRef;
use podtap_tunnel::{SendCounters, TunnelSender};
use podtap_wire::gso::Segmenter;

use crate::routes::Routes;
use podtap_wire::pcapng::{Direction, InterfaceDescription, PcapngWriter};

/// What the agent does with GSO super-packets (skbs of up to 64 KiB that the veth carries as
/// one unit and a physical link would carry as many packets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GsoMode {
    /// Cut them into the wire-size packets a tap on a physical link would see, with correct
    /// lengths, sequence numbers and checksums. What IDS and flow tools expect. The default.
    #[default]
    Segment,
    /// Write them as the kernel holds them, like `tcpdump` on the host veth does.
    Keep,
}

impl std::str::FromStr for GsoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "segment" => Ok(GsoMode::Segment),
            "keep" => Ok(GsoMode::Keep),
            _ => Err(format!("unknown GSO mode {s:?} (segment or keep)")),
        }
    }
}

/// Counters kept in user space for one tapped veth and direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputCounters {
    /// Packets written (after segmentation).
    pub packets: u64,
    /// Their original (wire) lengths, summed.
    pub bytes: u64,
    /// GSO super-packets cut into segments.
    pub segmented: u64,
    /// GSO super-packets that could not be segmented and were written whole.
    pub segment_failed: u64,
}

/// A tapped veth as the output knows it.
#[derive(Debug, Clone)]
struct Interface {
    pcap_id: u32,
    tap_id: u16,
    pod: PodRef,
    counters: [OutputCounters; 2],
}

/// Counters of records that could not be attributed or read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputErrors {
    /// Records shorter than their header says.
    pub malformed_records: u64,
    /// Records from a veth the output does not know (untapped a moment ago).
    pub unknown_interface: u64,
}

/// Output buffer size. Writes at least this large bypass the buffer, so GSO super-packets kept
/// whole (up to 64 KiB) go from the ring to the kernel without a copy in between; smaller
/// packets are gathered into writes of this size.
const OUTPUT_BUFFER: usize = 64 * 1024;

/// The destination of written packets.
pub type PacketSink = Box<dyn Write + Send>;

/// Turns ring records into output packets and counts them.
pub struct Output {
    writer: Option<PcapngWriter<BufWriter<PacketSink>>>,
    /// Tapped veths by (node, ifindex): looked up for every record. Local keys, so a fixed-seed
    /// fast hash.
    interfaces: HashMap<(u16, u32), Interface, foldhash::fast::FixedState>,
    gso: GsoMode,
    snaplen: u32,
    segmenter: Segmenter,
    /// Realtime minus monotonic clock, to turn kernel timestamps into wall-clock time.
    clock_offset_ns: i128,
    errors: OutputErrors,
    write_error: Option<io::Error>,
    /// Retired interfaces' counters, kept for the totals.
    retired: Vec<(PodRef, [OutputCounters; 2])>,
    /// Tunnel to the broker, per node (index = node), when copies are sent there.
    tunnels: Vec<Option<TunnelSender>>,
    /// The decrypted view of each probed pod, by tap id.
    decrypted: HashMap<u16, Decrypted, foldhash::fast::FixedState>,
    /// Per-flow brokers and per-pod policies, when the controller drives the agent (instead
    /// of `tunnels`).
    routes: Option<Routes>,
}

/// A pod's decrypted view: its own pcapng interface, `namespace/pod (decrypted)`.
struct Decrypted {
    pcap_id: u32,
    node: u16,
    pod: PodRef,
    /// Frames from the pod, frames to the pod.
    counters: [OutputCounters; 2],
}

impl Output {
    /// An output that writes pcapng to `sink` (None: count only).
    pub fn new(sink: Option<PacketSink>, gso: GsoMode, snaplen: u32) -> io::Result<Self> {
        let writer = match sink {
            Some(s) => Some(PcapngWriter::new(
                BufWriter::with_capacity(OUTPUT_BUFFER, s),
                concat!("podtap ", env!("CARGO_PKG_VERSION")),
            )?),
            None => None,
        };
        Ok(Output {
            writer,
            interfaces: HashMap::default(),
            gso,
            snaplen,
            segmenter: Segmenter::new(),
            clock_offset_ns: clock_offset_ns(),
            errors: OutputErrors::default(),
            write_error: None,
            retired: Vec::new(),
            tunnels: Vec::new(),
            decrypted: HashMap::default(),
            routes: None,
        })
    }

    /// Sends the copies of node `node` into `sender` too (or stops, with `None`).
    pub fn set_tunnel(&mut self, node: u16, sender: Option<TunnelSender>) {
        let i = usize::from(node);
        if self.tunnels.len() <= i {
            self.tunnels.resize_with(i + 1, || None);
        }
        self.tunnels[i] = sender;
    }

    /// Sends copies by [`Routes`] (the controller's broker table and policies) from now on.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = Some(routes);
    }

    /// The routes, when set.
    pub fn routes_mut(&mut self) -> Option<&mut Routes> {
        self.routes.as_mut()
    }

    /// The routes, when set.
    pub fn routes(&self) -> Option<&Routes> {
        self.routes.as_ref()
    }

    /// What the tunnel of each node sent and lost, summed.
    pub fn tunnel_counters(&self) -> Option<SendCounters> {
        let mut any = false;
        let mut sum = SendCounters::default();
        for t in self.tunnels.iter().flatten() {
            any = true;
            sum.add(&t.counters());
        }
        any.then_some(sum)
    }

    /// Registers a tapped veth (with its pod and tap id) before its first copy can arrive.
    pub fn add_interface(
        &mut self,
        node: u16,
        ifindex: u32,
        pod: &PodRef,
        tap_id: u16,
        description: &str,
    ) -> io::Result<()> {
        let name = pod.to_string();
        let pcap_id = match &mut self.writer {
            Some(w) => w.add_interface(&InterfaceDescription {
                name: &name,
                description,
                snaplen: self.snaplen,
                link_type: 1,
            })?,
            None => 0,
        };
        if let Some(old) = self.interfaces.insert(
            (node, ifindex),
            Interface {
                pcap_id,
                tap_id,
                pod: pod.clone(),
                counters: Default::default(),
            },
        ) {
            self.retired.push((old.pod, old.counters));
        }
        Ok(())
    }

    /// Registers the decrypted view of a pod (once; later calls keep the first). Its frames go
    /// to a pcapng interface of their own, `namespace/pod (decrypted)`, and through the
    /// tunnel with the label's decrypted bit ([`podtap_wire::vxlan::DECRYPTED`]).
    pub fn add_decrypted_interface(
        &mut self,
        node: u16,
        pod: &PodRef,
        tap_id: u16,
    ) -> io::Result<()> {
        if self.decrypted.contains_key(&tap_id) {
            return Ok(());
        }
        let name = format!("{pod} (decrypted)");
        let pcap_id = match &mut self.writer {
            Some(w) => w.add_interface(&InterfaceDescription {
                name: &name,
                description: "TLS plaintext from uprobes on OpenSSL, as synthesized TCP \
                              segments on the connection's 5-tuple (MACs 02:70:74:00:00:0x)",
                snaplen: 65535,
                link_type: 1,
            })?,
            None => 0,
        };
        self.decrypted.insert(
            tap_id,
            Decrypted {
                pcap_id,
                node,
                pod: pod.clone(),
                counters: Default::default(),
            },
        );
        Ok(())
    }

    /// Writes one synthesized decrypted frame of the pod with `tap_id`. False if that pod's
    /// decrypted view is not registered.
    pub fn write_decrypted(
        &mut self,
        tap_id: u16,
        to_pod: bool,
        timestamp_ns: u64,
        frame: &[u8],
    ) -> bool {
        let Some(d) = self.decrypted.get_mut(&tap_id) else {
            return false;
        };
        let c = &mut d.counters[usize::from(to_pod)];
        c.packets += 1;
        c.bytes += frame.len() as u64;
        if let Some(t) = self
            .tunnels
            .get_mut(usize::from(d.node))
            .and_then(Option::as_mut)
        {
            t.send(tap_id | podtap_wire::vxlan::DECRYPTED, to_pod, frame);
        }

        let ts = (i128::from(timestamp_ns) + self.clock_offset_ns).max(0) as u64;
        let direction = if to_pod {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        if let Some(w) = self.writer.as_mut()
            && self.write_error.is_none()
            && let Err(e) = w.write_packet(d.pcap_id, ts, frame.len() as u32, frame, direction)
        {
            self.write_error = Some(e);
        }
        true
    }

    /// Frames of each pod's decrypted view (from pod, to pod).
    pub fn decrypted_counters(&self) -> Vec<(PodRef, [OutputCounters; 2])> {
        self.decrypted
            .values()
            .map(|d| (d.pod.clone(), d.counters))
            .collect()
    }

    /// Handles one ring record: header, then packet bytes.
    pub fn record(&mut self, node: u16, bytes: &[u8]) {
        let Some(rec) = parse_record(bytes) else {
            self.errors.malformed_records += 1;
            return;
        };
        let data = &bytes[HEADER_LEN..HEADER_LEN + rec.captured_len as usize];
        let Some(iface) = self.interfaces.get_mut(&(node, rec.ifindex)) else {
            self.errors.unknown_interface += 1;
            return;
        };
        let dir = usize::from(rec.direction == abi::DIR_TO_POD);
        let direction = if dir == 0 {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let ts = (i128::from(rec.timestamp_ns) + self.clock_offset_ns).max(0) as u64;
        let counters = &mut iface.counters[dir];
        let pcap_id = iface.pcap_id;
        let tap_id = iface.tap_id;
        let to_pod = dir == 1;
        let snap = self.snaplen as usize;
        let mut tunnel = self
            .tunnels
            .get_mut(usize::from(node))
            .and_then(Option::as_mut);
        let mut routes = self.routes.as_mut();

        let whole = rec.captured_len == rec.packet_len;
        if rec.gso_segs > 1 && self.gso == GsoMode::Segment && whole {
            let writer = &mut self.writer;
            let write_error = &mut self.write_error;
            let result = self.segmenter.segment(data, rec.gso_size, |seg| {
                counters.packets += 1;
                counters.bytes += seg.len() as u64;
                if let Some(t) = tunnel.as_mut() {
                    t.send(tap_id, to_pod, &seg[..seg.len().min(snap)]);
                }
                if let Some(r) = routes.as_mut() {
                    r.send(tap_id, to_pod, &seg[..seg.len().min(snap)]);
                }
                if let Some(w) = writer.as_mut()
                    && write_error.is_none()
                    && let Err(e) = w.write_packet(
                        pcap_id,
                        ts,
                        seg.len() as u32,
                        &seg[..seg.len().min(snap)],
                        direction,
                    )
                {
                    *write_error = Some(e);
                }
            });
            match result {
                Ok(_) => {
                    counters.segmented += 1;
                    return;
                }
                Err(e) => {
                    counters.segment_failed += 1;
                    tracing::debug!("writing a GSO super-packet whole: {e}");
                }
            }
        }

        counters.packets += 1;
        counters.bytes += u64::from(rec.packet_len);
        if let Some(t) = tunnel {
            t.send(tap_id, to_pod, &data[..data.len().min(snap)]);
        }
        if let Some(r) = routes {
            r.send(tap_id, to_pod, &data[..data.len().min(snap)]);
        }
        if let Some(w) = self.writer.as_mut()
            && self.write_error.is_none()
        {
            let data = &data[..data.len().min(snap)];
            if let Err(e) = w.write_packet(pcap_id, ts, rec.packet_len, data, direction) {
                self.write_error = Some(e);
            }
        }
    }

    /// Called after each batch of records: pushes buffered packets out, so that a reader of
    /// the stream (`-w - | tshark -r -`) sees them promptly.
    pub fn end_batch(&mut self) {
        if let Some(w) = self.writer.as_mut()
            && self.write_error.is_none()
            && let Err(e) = w.flush()
        {
            self.write_error = Some(e);
        }
    }

    /// The first write error, if writing failed (e.g. the reader of `-w -` went away).
    pub fn write_error(&self) -> Option<&io::Error> {
        self.write_error.as_ref()
    }

    /// Counters of one veth (both directions: from pod, to pod).
    pub fn counters(&self, node: u16, ifindex: u32) -> Option<[OutputCounters; 2]> {
        self.interfaces.get(&(node, ifindex)).map(|i| i.counters)
    }

    /// Counters of every pod, current and retired interfaces added up per pod.
    pub fn counters_by_pod(&self) -> HashMap<PodRef, [OutputCounters; 2]> {
        let mut by_pod: HashMap<PodRef, [OutputCounters; 2]> = HashMap::new();
        let all = self
            .interfaces
            .values()
            .map(|i| (&i.pod, &i.counters))
            .chain(self.retired.iter().map(|(p, c)| (p, c)));
        for (pod, c) in all {
            let e = by_pod.entry(pod.clone()).or_default();
            for d in 0..2 {
                e[d].packets += c[d].packets;
                e[d].bytes += c[d].bytes;
                e[d].segmented += c[d].segmented;
                e[d].segment_failed += c[d].segment_failed;
            }
        }
        by_pod
    }

    /// Record errors so far.
    pub fn errors(&self) -> OutputErrors {
        self.errors
    }

    /// Flushes and closes the output.
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(mut w) = self.writer.take() {
            w.flush()?;
            w.into_inner()
                .into_inner()
                .map_err(|e| e.into_error())?
                .flush()?;
        }
        Ok(())
    }
}

const HEADER_LEN: usize = std::mem::size_of::<abi::TapRecord>();

/// Reads a record header, checking that the data it announces is there.
fn parse_record(bytes: &[u8]) -> Option<abi::TapRecord> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: TapRecord is plain old data and the slice holds at least its size.
    let rec: abi::TapRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if HEADER_LEN + rec.captured_len as usize > bytes.len() || rec.captured_len > rec.packet_len {
        return None;
    }
    Some(rec)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC in nanoseconds.
fn clock_offset_ns() -> i128 {
    let ns = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0)
    };
    ns(nix::time::ClockId::CLOCK_REALTIME) - ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ifindex: u32, direction: u8, packet: &[u8], packet_len: u32) -> Vec<u8> {
        let hdr = abi::TapRecord {
            timestamp_ns: 1,
            ifindex,
            packet_len,
            captured_len: packet.len() as u32,
            direction,
            ..Default::default()
        };
        // SAFETY: POD header to bytes.
        let raw: [u8; HEADER_LEN] = unsafe { std::mem::transmute(hdr) };
        let mut v = raw.to_vec();
        v.extend_from_slice(packet);
        v
    }

    #[test]
    fn counts_and_rejects_bad_records() {
        let mut out = Output::new(None, GsoMode::Segment, 96).unwrap();
        let pod = PodRef::parse("shop/cart-1").unwrap();
        out.add_interface(0, 7, &pod, 3, "").unwrap();
        out.record(0, &record(7, abi::DIR_FROM_POD, &[0u8; 60], 60));
        out.record(0, &record(7, abi::DIR_TO_POD, &[0u8; 60], 100));
        out.record(0, &record(8, abi::DIR_TO_POD, &[0u8; 60], 60));
        let mut short = record(7, abi::DIR_TO_POD, &[0u8; 60], 60);
        short.truncate(50);
        out.record(0, &short);
        out.record(0, &[1, 2, 3]);
        let c = out.counters(0, 7).unwrap();
        assert_eq!((c[0].packets, c[0].bytes), (1, 60));
        assert_eq!((c[1].packets, c[1].bytes), (1, 100));
        assert_eq!(out.errors().unknown_interface, 1);
        assert_eq!(out.errors().malformed_records, 2);
    }
}
