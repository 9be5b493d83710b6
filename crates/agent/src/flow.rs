//! What the agent reads of a copy in user space: its flow (addresses, protocol, ports), to pick
//! the broker of the flow and to apply a policy's prefilter when policies on a node differ.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::prefilter::Prefilter;

/// A packet's flow as seen by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (IPv6: the next header after the fixed header).
    pub proto: u8,
    /// (source, destination) ports of TCP, UDP and SCTP; None for other protocols and for
    /// IPv4 fragments after the first.
    pub ports: Option<(u16, u16)>,
}

const ETH_HEADER: usize = 14;

// The parse mirrors the tap program's `read_flow` (ebpf/tap.c), so that a prefilter checked
// here keeps exactly what it would keep in the kernel: one VLAN tag, IPv4 ports unless the
// fragment offset is non-zero, IPv6 without walking extension headers.

/// Reads the flow of an Ethernet frame. None: not IPv4/IPv6, or too short for the IP header.
pub fn flow_key(frame: &[u8]) -> Option<FlowKey> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut at = ETH_HEADER;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
        at += 4;
    }
    let ip = frame.get(at..)?;
    match ethertype {
        0x0800 => ipv4(ip),
        0x86dd => ipv6(ip),
        _ => None,
    }
}

fn ipv4(ip: &[u8]) -> Option<FlowKey> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Only the first fragment carries the ports.
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ports = if later_fragment {
        None
    } else {
        ip.get(ihl..).and_then(|l4| ports(proto, l4))
    };
    Some(FlowKey {
        src: src.into(),
        dst: dst.into(),
        proto,
        ports,
    })
}

fn ipv6(ip: &[u8]) -> Option<FlowKey> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> Ipv6Addr {
        let mut o = [0u8; 16];
        o.copy_from_slice(&ip[at..at + 16]);
        o.into()
    };
    // Extension headers are not walked (as in the kernel): ports when TCP/UDP/SCTP follows
    // the fixed header directly, which is what pod traffic carries.
    let proto = ip[6];
    Some(FlowKey {
        src: addr(8).into(),
        dst: addr(24).into(),
        proto,
        ports: ports(proto, &ip[40..]),
    })
}

fn ports(proto: u8, l4: &[u8]) -> Option<(u16, u16)> {
    match proto {
        6 | 17 | 132 if l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        _ => None,
    }
}

/// The flow slot (0-255) of a frame: the same for both directions of a flow and on every node,
/// so that every copy of a flow goes to one broker. IP flows hash addresses, protocol and
/// ports (fragments after the first: addresses and protocol); other frames hash their MAC
/// addresses.
pub fn flow_slot(frame: &[u8]) -> u8 {
    slot_of(flow_key(frame).as_ref(), frame)
}

/// [`flow_slot`] with the key already read.
pub fn slot_of(key: Option<&FlowKey>, frame: &[u8]) -> u8 {
    let mut h = Fnv::default();
    match key {
        Some(k) => {
            let a = (octets(k.src), k.ports.map_or(0, |p| p.0));
            let b = (octets(k.dst), k.ports.map_or(0, |p| p.1));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            h.write(&lo.0);
            h.write(&lo.1.to_be_bytes());
            h.write(&hi.0);
            h.write(&hi.1.to_be_bytes());
            h.write(&[k.proto]);
        }
        None if frame.len() >= 12 => {
            let (a, b) = (&frame[0..6], &frame[6..12]);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            h.write(lo);
            h.write(hi);
        }
        None => {}
    }
    (splitmix(h.0) >> 56) as u8
}

fn octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// FNV-1a, 64 bits: fixed, so every agent computes the same slot.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Prefilter {
    /// Whether the tap program would copy this frame under this prefilter (the same rules,
    /// in user space): an empty prefilter matches everything, a non-empty one only IP packets
    /// that meet every condition.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.matches_key(flow_key(frame).as_ref())
    }

    /// [`Prefilter::matches`] with the key already read (None: not IP).
    pub fn matches_key(&self, key: Option<&FlowKey>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(k) = key else {
            return false;
        };
        let in_net = |a: IpAddr| {
            let addr = octets(a);
            self.networks.iter().any(|n| {
                let (net, len) = n.mapped();
                prefix_eq(&addr, &net, len)
            })
        };
        (self.networks.is_empty() || in_net(k.src) || in_net(k.dst))
            && (self.protocols.is_empty() || self.protocols.contains(&k.proto))
            && (self.ports.is_empty()
                || k.ports
                    .is_some_and(|(s, d)| self.ports.contains(&s) || self.ports.contains(&d)))
    }
}

/// Whether the first `len` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8; 16], b: &[u8; 16], len: u32) -> bool {
    let full = (len / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = len % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip[20..22].copy_from_slice(&sport.to_be_bytes());
        ip[22..24].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_of_a_flow_share_a_slot_and_flows_spread() {
        let mut used = std::collections::BTreeSet::new();
        for port in 40000..40400u16 {
            let a = tcp4([10, 244, 1, 2], port, [10, 244, 2, 3], 80);
            let b = tcp4([10, 244, 2, 3], 80, [10, 244, 1, 2], port);
            assert_eq!(flow_slot(&a), flow_slot(&b));
            used.insert(flow_slot(&a));
        }
        // 400 flows over 256 slots: a fair hash fills most of them.
        assert!(used.len() > 200, "{} slots used", used.len());
    }

    #[test]
    fn the_slot_of_a_flow_is_fixed() {
        // Every agent, in every process, must compute the same slot: pinned values.
        let f = tcp4([10, 244, 1, 2], 40000, [10, 244, 2, 3], 80);
        let g = tcp4([10, 244, 1, 2], 40001, [10, 244, 2, 3], 80);
        assert_eq!((flow_slot(&f), flow_slot(&g)), (194, 104));
    }

    #[test]
    fn fragments_hash_without_ports_and_vlan_tags_are_skipped() {
        let mut f = tcp4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2);
        assert_eq!(flow_key(&f).unwrap().ports, Some((1, 2)));
        f[14 + 6] = 0x20; // more fragments: the first one still has its ports
        assert_eq!(flow_key(&f).unwrap().ports, Some((1, 2)));
        f[14 + 7] = 0x10; // a later fragment
        assert_eq!(flow_key(&f).unwrap().ports, None);
        let plain = tcp4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(flow_key(&tagged), flow_key(&plain));
    }

    #[test]
    fn prefilter_matches_like_the_tap_program() {
        let f = tcp4([10, 244, 1, 2], 40000, [10, 96, 0, 10], 443);
        let yes = [
            "",
            "net 10.96.0.0/12",
            "proto tcp and port 443",
            "net 10.244.1.2/32",
        ];
        let no = ["proto udp", "port 80", "net 10.245.0.0/16", "net fd00::/8"];
        for p in yes {
            assert!(Prefilter::parse(p).unwrap().matches(&f), "{p}");
        }
        for p in no {
            assert!(!Prefilter::parse(p).unwrap().matches(&f), "{p}");
        }
        let arp = {
            let mut a = f.clone();
            a[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            a
        };
        assert!(Prefilter::parse("").unwrap().matches(&arp));
        assert!(!Prefilter::parse("proto tcp").unwrap().matches(&arp));
    }
}
