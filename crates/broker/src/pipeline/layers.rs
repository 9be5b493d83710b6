//! The walk over a frame's headers that every stage uses to find the bytes it needs: where the
//! Ethernet, VLAN, IP and transport layers start, bounds-checked and allocation-free. A frame is
//! judged on what could be parsed: a layer cut short or malformed is absent, and so is everything
//! after it (ports are still read when only the rest of a TCP header is missing).

/// Length of an Ethernet II header (two MACs and an EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The most VLAN tags [`Layers`] looks through (802.1Q, 802.1ad QinQ, and the older 0x9100).
pub const MAX_VLAN_TAGS: usize = 4;

/// The most IPv6 extension headers [`Layers`] walks before giving up on finding the payload.
pub const MAX_IPV6_EXTENSIONS: usize = 8;

/// EtherTypes.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag.
    pub const QINQ_OLD: u16 = 0x9100;
}

/// IP protocol numbers.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;
}

/// Where the layers of an Ethernet frame start, as far as its captured bytes tell. Offsets index
/// the frame given to [`Layers::parse`]; every offset present is within it. A layer that is cut
/// short or malformed is absent (`None`/0), and so is everything after it: a packet is judged on
/// what could be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layers {
    /// VLAN IDs of the tags, outermost first (the first `vlan_count` are set).
    pub vlan_ids: [u16; MAX_VLAN_TAGS],
    /// How many VLAN tags were read.
    pub vlan_count: usize,
    /// The EtherType after the VLAN tags (or the last one read, when a tag is cut short);
    /// `None` when the frame is shorter than an Ethernet header.
    pub ethertype: Option<u16>,
    /// Offset of the network header, after the Ethernet header and VLAN tags.
    pub network: Option<usize>,
    /// 4 or 6 when a complete fixed IP header (20 or 40 bytes, right version) is at `network`;
    /// 0 when the frame is not IP or its IP header is cut short.
    pub ip_version: u8,
    /// The IP protocol of the IP payload (after any IPv6 extension headers), when known.
    pub protocol: Option<u8>,
    /// Offset of the IP payload (after IPv4 options / IPv6 extension headers), when they are
    /// complete.
    pub ip_payload: Option<usize>,
    /// Offset of the transport header: the IP payload, except for later fragments (no header).
    pub transport: Option<usize>,
    /// Offset of the transport payload, after a complete transport header (TCP, UDP, UDP-Lite,
    /// SCTP, ICMP, ICMPv6, GRE); the IP payload for other protocols and later fragments.
    pub payload: Option<usize>,
    /// End of the IP packet within the captured bytes (its total length, so Ethernet padding
    /// is left out); the frame's length when it is not IP.
    pub end: usize,
    /// The packet is an IP fragment (the first or a later one).
    pub fragment: bool,
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    match data.get(at..at.checked_add(2)?) {
        Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

impl Layers {
    /// Walks the headers of an Ethernet frame. Never panics and never allocates.
    pub fn parse(frame: &[u8]) -> Layers {
        let mut layers = Layers {
            end: frame.len(),
            ..Layers::default()
        };
        let Some(mut ether) = be16(frame, 12) else {
            return layers;
        };
        let mut at = ETHERNET_HEADER_LEN;
        while matches!(
            ether,
            ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD
        ) {
            let (Some(tci), Some(next)) = (be16(frame, at), be16(frame, at + 2)) else {
                layers.ethertype = Some(ether);
                return layers;
            };
            if layers.vlan_count == MAX_VLAN_TAGS {
                layers.ethertype = Some(ether);
                return layers;
            }
            layers.vlan_ids[layers.vlan_count] = tci & 0x0fff;
            layers.vlan_count += 1;
            ether = next;
            at += 4;
        }
        layers.ethertype = Some(ether);
        layers.network = Some(at);
        match ether {
            ethertype::IPV4 => layers.parse_ipv4(frame, at),
            ethertype::IPV6 => layers.parse_ipv6(frame, at),
            _ => {}
        }
        layers
    }

    fn parse_ipv4(&mut self, frame: &[u8], at: usize) {
        let Some(h) = frame.get(at..at + 20) else {
            return;
        };
        let header_len = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || header_len < 20 {
            return;
        }
        self.ip_version = 4;
        self.protocol = Some(h[9]);
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        // A total length of 0 (segmentation offload) or shorter than the header says nothing:
        // trust what was captured.
        if total_len >= header_len {
            self.end = self.end.min(at + total_len);
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        let later_fragment = frag & 0x1fff != 0;
        self.fragment = later_fragment || frag & 0x2000 != 0;
        let ip_payload = at + header_len;
        if ip_payload > self.end {
            return;
        }
        self.ip_payload = Some(ip_payload);
        if later_fragment {
            self.payload = Some(ip_payload);
        } else {
            self.parse_transport(&frame[..self.end], ip_payload);
        }
    }

    fn parse_ipv6(&mut self, frame: &[u8], at: usize) {
        let Some(h) = frame.get(at..at + 40) else {
            return;
        };
        if h[0] >> 4 != 6 {
            return;
        }
        self.ip_version = 6;
        let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        // 0 is a jumbogram or segmentation offload: trust what was captured.
        if payload_len != 0 {
            self.end = self.end.min(at + 40 + payload_len);
        }
        let data = &frame[..self.end];
        let mut next = h[6];
        let mut at = at + 40;
        let mut later_fragment = false;
        for _ in 0..=MAX_IPV6_EXTENSIONS {
            let len = match next {
                // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
                0 | 43 | 60 | 135 | 139 | 140 => match data.get(at + 1) {
                    Some(&n) => (usize::from(n) + 1) * 8,
                    None => return,
                },
                // Fragment.
                44 => match be16(data, at + 2) {
                    Some(offset) => {
                        self.fragment = true;
                        later_fragment = offset >> 3 != 0;
                        8
                    }
                    None => return,
                },
                // Authentication header.
                51 => match data.get(at + 1) {
                    Some(&n) => (usize::from(n) + 2) * 4,
                    None => return,
                },
                _ => {
                    if at > data.len() {
                        return;
                    }
                    self.protocol = Some(next);
                    self.ip_payload = Some(at);
                    if later_fragment {
                        self.payload = Some(at);
                    } else {
                        self.parse_transport(data, at);
                    }
                    return;
                }
            };
            let Some(&n) = data.get(at) else {
                return;
            };
            next = n;
            at += len;
        }
    }

    /// `data` ends where the IP packet ends; `at` is the start of the transport header.
    fn parse_transport(&mut self, data: &[u8], at: usize) {
        self.transport = Some(at);
        let header_len = match self.protocol {
            Some(ip_proto::TCP) => match data.get(at + 12) {
                Some(&b) if b >> 4 >= 5 => usize::from(b >> 4) * 4,
                _ => return,
            },
            Some(ip_proto::UDP | ip_proto::UDPLITE | ip_proto::ICMP | ip_proto::ICMPV6) => 8,
            Some(ip_proto::SCTP) => 12,
            Some(ip_proto::GRE) => match data.get(at..at + 2) {
                Some(&[flags, version]) => {
                    let present = |bit: u8| usize::from(flags & bit != 0) * 4;
                    let ack = usize::from(version & 0x07 == 1 && version & 0x80 != 0) * 4;
                    4 + present(0xc0) + present(0x20) + present(0x10) + ack
                }
                _ => return,
            },
            _ => 0,
        };
        if at + header_len <= data.len() {
            self.payload = Some(at + header_len);
        }
    }

    /// The source and destination addresses (4 or 16 bytes each), when the IP header is there.
    pub fn ip_addresses<'a>(&self, frame: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let at = self.network?;
        let (src, len) = match self.ip_version {
            4 => (at + 12, 4),
            6 => (at + 8, 16),
            _ => return None,
        };
        Some((
            frame.get(src..src + len)?,
            frame.get(src + len..src + 2 * len)?,
        ))
    }

    /// The source and destination ports of a TCP, UDP, UDP-Lite or SCTP packet, when they were
    /// captured (even if the rest of the transport header was not).
    pub fn ports(&self, frame: &[u8]) -> Option<(u16, u16)> {
        match self.protocol? {
            ip_proto::TCP | ip_proto::UDP | ip_proto::UDPLITE | ip_proto::SCTP => {}
            _ => return None,
        }
        let at = self.transport?;
        let data = frame.get(..self.end)?;
        Some((be16(data, at)?, be16(data, at + 2)?))
    }

    /// The TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN), when it was captured.
    pub fn tcp_flags(&self, frame: &[u8]) -> Option<u8> {
        if self.protocol? != ip_proto::TCP {
            return None;
        }
        let at = self.transport?;
        frame.get(..self.end)?.get(at + 13).copied()
    }
}
