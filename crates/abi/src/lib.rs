//! The contract between podtap's eBPF programs (`ebpf/`) and user space: `#[repr(C)]` mirrors of
//! the structs in `ebpf/include/tap.h`, and the names of maps and programs. The C header and this
//! file change together; both assert the layout at compile time.

#![no_std]

pub mod tls;

/// Program attached to a host veth's TC ingress: packets the pod sends.
pub const PROG_TAP_FROM_POD: &str = "tap_from_pod";
/// Program attached to a host veth's TC egress: packets the pod receives.
pub const PROG_TAP_TO_POD: &str = "tap_to_pod";

/// Array map, one [`TapConfig`] at index 0.
pub const MAP_TAP_CONFIG: &str = "TAP_CONFIG";
/// Ring buffer of [`TapRecord`]s, each followed by `captured_len` bytes of packet.
pub const MAP_TAP_RING: &str = "TAP_RING";
/// Per-CPU hash [`TapKey`] → [`TapCounters`]; an entry per tapped veth and direction.
pub const MAP_TAP_COUNTERS: &str = "TAP_COUNTERS";
/// LPM trie [`TapCidrKey`] → `u8` of prefilter networks.
pub const MAP_TAP_FILTER_CIDRS: &str = "TAP_FILTER_CIDRS";
/// Array `u32` protocol → `u8` (1 = listed) of prefilter IP protocols.
pub const MAP_TAP_FILTER_PROTOS: &str = "TAP_FILTER_PROTOS";
/// Array `u32` port → `u8` (1 = listed) of prefilter ports.
pub const MAP_TAP_FILTER_PORTS: &str = "TAP_FILTER_PORTS";

/// Hash ifindex → `u16` tap id of each tapped veth.
pub const MAP_TAP_IDS: &str = "TAP_IDS";
/// Hash [`TapExcludeKey`] → `u8`: tunnel endpoints whose traffic is never copied.
pub const MAP_TAP_EXCLUDE: &str = "TAP_EXCLUDE";

/// `TAP_DIR_FROM_POD`: the pod sent the packet (host veth ingress).
pub const DIR_FROM_POD: u8 = 0;
/// `TAP_DIR_TO_POD`: the pod receives the packet (host veth egress).
pub const DIR_TO_POD: u8 = 1;

/// `TAP_FILTER_CIDR`: source or destination in [`MAP_TAP_FILTER_CIDRS`].
pub const FILTER_CIDR: u32 = 1 << 0;
/// `TAP_FILTER_PROTO`: protocol listed in [`MAP_TAP_FILTER_PROTOS`].
pub const FILTER_PROTO: u32 = 1 << 1;
/// `TAP_FILTER_PORT`: source or destination port listed in [`MAP_TAP_FILTER_PORTS`].
pub const FILTER_PORT: u32 = 1 << 2;

/// `TAP_F_GSO_WHOLE`: copy GSO super-packets whole so user space can segment them.
pub const F_GSO_WHOLE: u32 = 1 << 0;

/// `TAP_F_EXCLUDE`: never copy packets matching [`MAP_TAP_EXCLUDE`].
pub const F_EXCLUDE: u32 = 1 << 1;

/// `TAP_MAX_COPY`: the largest copy of one packet.
pub const MAX_COPY: u32 = 65536;

/// `struct tap_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapConfig {
    /// Bytes of each packet copied.
    pub snaplen: u32,
    /// `F_*` flags.
    pub flags: u32,
    /// `FILTER_*` flags: the active prefilter conditions.
    pub filter_flags: u32,
    /// Pending ring bytes that trigger a wakeup of the reader.
    pub wakeup_bytes: u32,
    /// In-kernel sending: the VXLAN device non-GSO packets are cloned to (0: off).
    pub tunnel_ifindex: u32,
    /// Padding.
    pub _pad: u32,
}

/// `struct tap_record`: header of a ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapRecord {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub timestamp_ns: u64,
    /// Interface index of the host veth.
    pub ifindex: u32,
    /// Length of the packet before any cut.
    pub packet_len: u32,
    /// Bytes of packet that follow the header.
    pub captured_len: u32,
    /// Segment payload size of a GSO super-packet, else 0.
    pub gso_size: u16,
    /// Segments of a GSO super-packet, else 0.
    pub gso_segs: u16,
    /// `DIR_*`.
    pub direction: u8,
    /// Padding to 8 bytes.
    pub _pad: [u8; 7],
}

/// `struct tap_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TapKey {
    /// Interface index of the host veth.
    pub ifindex: u32,
    /// `DIR_*` as u32.
    pub direction: u32,
}

/// `struct tap_counters` (one per CPU; sum them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCounters {
    /// Wire packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
    /// Wire packets the prefilter skipped.
    pub filtered: u64,
    /// Copies made (one per skb).
    pub copied: u64,
    /// Wire packets not copied because the ring was full.
    pub ring_full: u64,
    /// Copies cut short.
    pub truncated: u64,
    /// GSO super-packets seen.
    pub gso: u64,
    /// Wire packets not copied because reading the packet failed.
    pub load_failed: u64,
    /// Wire packets not copied because they are podtap tunnel traffic.
    pub excluded: u64,
    /// Copies sent in the kernel (cloned to the tunnel device).
    pub redirected: u64,
    /// In-kernel copies the kernel refused.
    pub redirect_failed: u64,
    /// Reserved.
    pub _reserved: u64,
}

impl TapCounters {
    /// Field-wise sum, for adding up per-CPU values.
    pub fn add(&mut self, o: &TapCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.filtered += o.filtered;
        self.copied += o.copied;
        self.ring_full += o.ring_full;
        self.truncated += o.truncated;
        self.gso += o.gso;
        self.load_failed += o.load_failed;
        self.excluded += o.excluded;
        self.redirected += o.redirected;
        self.redirect_failed += o.redirect_failed;
    }
}

/// `struct tap_exclude_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TapExcludeKey {
    /// IPv4 address, network order (as the packet holds it).
    pub addr: u32,
    /// UDP destination port (host order); 0 for GRE.
    pub port: u16,
    /// IP protocol: 17 (UDP) or 47 (GRE).
    pub proto: u8,
    /// Padding.
    pub _pad: u8,
}

/// `struct tap_cidr_key`: IPv4 as IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCidrKey {
    /// Prefix length over the 128-bit address.
    pub prefixlen: u32,
    /// The address, IPv4 mapped as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<TapConfig>() == 24);
    assert!(size_of::<TapRecord>() == 32);
    assert!(offset_of!(TapRecord, captured_len) == 16);
    assert!(offset_of!(TapRecord, direction) == 24);
    assert!(size_of::<TapKey>() == 8);
    assert!(size_of::<TapCounters>() == 96);
    assert!(size_of::<TapExcludeKey>() == 8);
    assert!(size_of::<TapCidrKey>() == 20);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain #[repr(C)] integer structs without padding holes that matter; every bit
    // pattern is valid.
    unsafe impl aya::Pod for TapConfig {}
    unsafe impl aya::Pod for TapRecord {}
    unsafe impl aya::Pod for TapKey {}
    unsafe impl aya::Pod for TapCounters {}
    unsafe impl aya::Pod for TapCidrKey {}
    unsafe impl aya::Pod for TapExcludeKey {}
    unsafe impl aya::Pod for tls::TlsCounters {}
    unsafe impl aya::Pod for tls::TlsEvent {}
}
