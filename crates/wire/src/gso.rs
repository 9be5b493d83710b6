//! Segmentation of GSO/TSO super-packets into wire-size frames.
//!
//! A TC hook on a veth sees socket buffers before the kernel segments them: one "packet" of up
//! to 64 KiB (more with BIG TCP) whose TCP or UDP payload will leave as many `gso_size`-byte
//! segments. Tools downstream of the tap expect the frames a wire would carry, so
//! [`Segmenter::segment`] cuts a super-packet the way the kernel's software GSO does:
//!
//! - every segment repeats the link, IP and transport headers of the super-packet;
//! - IPv4: total length and header checksum recomputed, identification `id + i`;
//!   IPv6: payload length recomputed;
//! - TCP: sequence number advanced by the payload offset; CWR kept only on the first segment,
//!   FIN and PSH only on the last; checksum computed in full over the pseudo-header;
//! - UDP (UDP GSO): every segment is a datagram of its own, with its own length and full
//!   checksum.
//!
//! The checksums of the super-packet are never trusted: with checksum offload its TCP/UDP
//! checksum field holds only the pseudo-header sum. So every emitted frame gets full, valid
//! checksums, including the single segment emitted when the payload fits in one `gso_size`.
//! Bytes after the end the IP header announces (Ethernet padding) are not copied.
//!
//! A super-packet is cut out of a reusable scratch buffer: no allocation per packet once the
//! buffer has grown to the largest segment (it starts at 64 KiB + 256 bytes, enough for any
//! segment with up to 256 bytes of headers).

use etherparse::checksum::Sum16BitWords;
use etherparse::err::{Layer, LenError};
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice,
    Ipv6RawExtHeaderSlice, LenSource, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};

/// Offsets and sizes of the fixed header fields rewritten per segment.
mod field {
    use std::ops::Range;

    pub const ETHERNET_LEN: usize = 14;
    pub const VLAN_TAG_LEN: usize = 4;
    /// At most this many 802.1Q/802.1ad tags are skipped.
    pub const MAX_VLAN_TAGS: usize = 2;

    pub const IPV4_TOTAL_LEN: Range<usize> = 2..4;
    pub const IPV4_ID: Range<usize> = 4..6;
    pub const IPV4_CHECKSUM: Range<usize> = 10..12;
    pub const IPV4_SRC: Range<usize> = 12..16;
    pub const IPV4_DST: Range<usize> = 16..20;

    pub const IPV6_HEADER_LEN: usize = 40;
    pub const IPV6_PAYLOAD_LEN: Range<usize> = 4..6;
    pub const IPV6_SRC: Range<usize> = 8..24;
    pub const IPV6_DST: Range<usize> = 24..40;

    pub const TCP_SEQ: Range<usize> = 4..8;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CHECKSUM: Range<usize> = 16..18;
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_PSH: u8 = 0x08;
    pub const TCP_CWR: u8 = 0x80;

    pub const UDP_LEN: Range<usize> = 4..6;
    pub const UDP_CHECKSUM: Range<usize> = 6..8;

    /// Largest value of the IPv4 total length and IPv6 payload length fields.
    pub const MAX_IP_LEN: usize = u16::MAX as usize;
}

/// Initial scratch capacity: the largest IP packet plus room for headers.
const INITIAL_SCRATCH: usize = 65_536 + 256;

/// Why a frame could not be segmented. The caller counts these (see [`reason`](Self::reason))
/// and passes the frame on unsegmented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// `gso_size` was 0, so there is no segment size to cut to.
    #[error("GSO size is 0")]
    ZeroGsoSize,
    /// The frame ends inside a header, or before the end its IP header announces.
    #[error(
        "frame truncated in the {layer} starting at byte {offset}: {needed} bytes needed, {available} available"
    )]
    Truncated {
        /// The header or packet that is cut short.
        layer: Layer,
        /// Where it starts in the frame.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes the frame has from `offset` on.
        available: usize,
    },
    /// A third 802.1Q/802.1ad tag; at most two are supported.
    #[error("more than two VLAN tags (the third starts at byte {offset})")]
    TooManyVlanTags {
        /// Where the third tag starts.
        offset: usize,
    },
    /// The frame carries neither IPv4 nor IPv6.
    #[error("ether type {ether_type:#06x} (at byte {offset}) is neither IPv4 nor IPv6")]
    NotIp {
        /// The ether type found.
        ether_type: u16,
        /// Where the ether type field is.
        offset: usize,
    },
    /// The IPv4 header is malformed.
    #[error("bad IPv4 header at byte {offset}")]
    Ipv4Header {
        /// Where the header starts.
        offset: usize,
        /// What is wrong with it.
        #[source]
        source: etherparse::err::ipv4::HeaderError,
    },
    /// The IPv4 total length is shorter than the IPv4 header.
    #[error("IPv4 total length {total_len} is shorter than the {header_len}-byte IPv4 header")]
    Ipv4TotalLength {
        /// The total length field.
        total_len: u16,
        /// The header length from the IHL field.
        header_len: usize,
    },
    /// The IPv6 header is malformed.
    #[error("bad IPv6 header at byte {offset}")]
    Ipv6Header {
        /// Where the header starts.
        offset: usize,
        /// What is wrong with it.
        #[source]
        source: etherparse::err::ipv6::HeaderError,
    },
    /// An IPv6 extension header other than hop-by-hop or destination options (routing,
    /// fragment and authentication headers would need more than copying).
    #[error(
        "IPv6 extension header {ip_number} at byte {offset} is not supported (only hop-by-hop and destination options are)"
    )]
    UnsupportedIpv6Extension {
        /// The extension header's IP protocol number.
        ip_number: u8,
        /// Where it starts.
        offset: usize,
    },
    /// The IP packet is a fragment.
    #[error("the IP packet is a fragment")]
    Fragment,
    /// The transport is neither TCP nor UDP.
    #[error("IP protocol {ip_number} (at byte {offset}) is neither TCP nor UDP")]
    UnsupportedTransport {
        /// The IP protocol number.
        ip_number: u8,
        /// Where the transport header would start.
        offset: usize,
    },
    /// The TCP header is malformed.
    #[error("bad TCP header at byte {offset}")]
    TcpHeader {
        /// Where the header starts.
        offset: usize,
        /// What is wrong with it.
        #[source]
        source: etherparse::err::tcp::HeaderError,
    },
    /// A segment of `gso_size` payload bytes would not fit the 16-bit IP length field.
    #[error(
        "a segment of {gso_size} payload bytes after {header_len} bytes of IP and transport headers exceeds the 65535-byte IP length limit"
    )]
    SegmentTooLarge {
        /// The requested segment payload size.
        gso_size: u16,
        /// Header bytes counted by the IP length field.
        header_len: usize,
    },
}

impl SegmentError {
    /// A short, stable name for the error, fit for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SegmentError::ZeroGsoSize => "zero_gso_size",
            SegmentError::Truncated { .. } => "truncated",
            SegmentError::TooManyVlanTags { .. } => "too_many_vlan_tags",
            SegmentError::NotIp { .. } => "not_ip",
            SegmentError::Ipv4Header { .. } => "bad_ipv4_header",
            SegmentError::Ipv4TotalLength { .. } => "bad_ipv4_total_length",
            SegmentError::Ipv6Header { .. } => "bad_ipv6_header",
            SegmentError::UnsupportedIpv6Extension { .. } => "unsupported_ipv6_extension",
            SegmentError::Fragment => "fragment",
            SegmentError::UnsupportedTransport { .. } => "unsupported_transport",
            SegmentError::TcpHeader { .. } => "bad_tcp_header",
            SegmentError::SegmentTooLarge { .. } => "segment_too_large",
        }
    }

    /// A truncation error from etherparse, with its offset made relative to the frame.
    fn truncated(err: LenError, base: usize) -> Self {
        SegmentError::Truncated {
            layer: err.layer,
            offset: base + err.layer_start_offset,
            needed: err.required_len,
            available: err.len,
        }
    }
}

/// IP version of a super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

/// Transport of a super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// Where the layers of a super-packet are. Once built, `l3 < l4 < payload <= end <= frame.len()`
/// and the headers are long enough for the fields in [`field`].
#[derive(Debug, Clone, Copy)]
struct Layout {
    ip: Ip,
    transport: Transport,
    /// Start of the IP header.
    l3: usize,
    /// Start of the transport header.
    l4: usize,
    /// Start of the transport payload (end of all headers).
    payload: usize,
    /// End of the IP packet.
    end: usize,
}

impl Layout {
    /// Finds the layers of `frame`: Ethernet, up to two VLAN tags, IPv4 or IPv6 (with
    /// hop-by-hop and destination options), TCP or UDP.
    fn parse(frame: &[u8]) -> Result<Layout, SegmentError> {
        let eth =
            Ethernet2HeaderSlice::from_slice(frame).map_err(|e| SegmentError::truncated(e, 0))?;
        let mut ether_type = eth.ether_type();
        let mut l3 = field::ETHERNET_LEN;
        let mut tags = 0;
        while matches!(
            ether_type,
            EtherType::VLAN_TAGGED_FRAME
                | EtherType::PROVIDER_BRIDGING
                | EtherType::VLAN_DOUBLE_TAGGED_FRAME
        ) {
            if tags == field::MAX_VLAN_TAGS {
                return Err(SegmentError::TooManyVlanTags { offset: l3 });
            }
            let vlan = SingleVlanHeaderSlice::from_slice(&frame[l3..])
                .map_err(|e| SegmentError::truncated(e, l3))?;
            ether_type = vlan.ether_type();
            l3 += field::VLAN_TAG_LEN;
            tags += 1;
        }
        match ether_type {
            EtherType::IPV4 => Self::parse_ipv4(frame, l3),
            EtherType::IPV6 => Self::parse_ipv6(frame, l3),
            other => Err(SegmentError::NotIp {
                ether_type: other.0,
                offset: l3 - 2,
            }),
        }
    }

    fn parse_ipv4(frame: &[u8], l3: usize) -> Result<Layout, SegmentError> {
        use etherparse::err::ipv4::HeaderSliceError;
        let ip = Ipv4HeaderSlice::from_slice(&frame[l3..]).map_err(|e| match e {
            HeaderSliceError::Len(e) => SegmentError::truncated(e, l3),
            HeaderSliceError::Content(source) => SegmentError::Ipv4Header { offset: l3, source },
        })?;
        if ip.is_fragmenting_payload() {
            return Err(SegmentError::Fragment);
        }
        let header_len = ip.slice().len();
        let end = match usize::from(ip.total_len()) {
            // BIG TCP: the length does not fit 16 bits; the frame is the packet.
            0 => frame.len(),
            total if total < header_len => {
                return Err(SegmentError::Ipv4TotalLength {
                    total_len: ip.total_len(),
                    header_len,
                });
            }
            total => ip_end(
                frame,
                l3,
                total,
                Layer::Ipv4Packet,
                LenSource::Ipv4HeaderTotalLen,
            )?,
        };
        Self::parse_transport(frame, Ip::V4, l3, l3 + header_len, ip.protocol(), end)
    }

    fn parse_ipv6(frame: &[u8], l3: usize) -> Result<Layout, SegmentError> {
        use etherparse::err::ipv6::HeaderSliceError;
        let ip = Ipv6HeaderSlice::from_slice(&frame[l3..]).map_err(|e| match e {
            HeaderSliceError::Len(e) => SegmentError::truncated(e, l3),
            HeaderSliceError::Content(source) => SegmentError::Ipv6Header { offset: l3, source },
        })?;
        let end = match usize::from(ip.payload_length()) {
            // BIG TCP / jumbogram: the length does not fit 16 bits; the frame is the packet.
            0 => frame.len(),
            len => ip_end(
                frame,
                l3,
                field::IPV6_HEADER_LEN + len,
                Layer::Ipv6Packet,
                LenSource::Ipv6HeaderPayloadLen,
            )?,
        };
        let mut next = ip.next_header();
        let mut offset = l3 + field::IPV6_HEADER_LEN;
        loop {
            match next {
                IpNumber::IPV6_HEADER_HOP_BY_HOP | IpNumber::IPV6_DESTINATION_OPTIONS => {
                    let ext = Ipv6RawExtHeaderSlice::from_slice(&frame[offset..end]).map_err(
                        |mut e| {
                            e.len_source = LenSource::Ipv6HeaderPayloadLen;
                            SegmentError::truncated(e, offset)
                        },
                    )?;
                    next = ext.next_header();
                    offset += ext.slice().len();
                }
                IpNumber::TCP | IpNumber::UDP => break,
                other
                    if Ipv6RawExtHeaderSlice::header_type_supported(other)
                        || other == IpNumber::IPV6_FRAGMENTATION_HEADER
                        || other == IpNumber::AUTHENTICATION_HEADER =>
                {
                    return Err(SegmentError::UnsupportedIpv6Extension {
                        ip_number: other.0,
                        offset,
                    });
                }
                // Anything else is the transport; parse_transport names it.
                _ => break,
            }
        }
        Self::parse_transport(frame, Ip::V6, l3, offset, next, end)
    }

    fn parse_transport(
        frame: &[u8],
        ip: Ip,
        l3: usize,
        l4: usize,
        protocol: IpNumber,
        end: usize,
    ) -> Result<Layout, SegmentError> {
        let (transport, header_len) = match protocol {
            IpNumber::TCP => {
                use etherparse::err::tcp::HeaderSliceError;
                let tcp = TcpHeaderSlice::from_slice(&frame[l4..end]).map_err(|e| match e {
                    HeaderSliceError::Len(e) => SegmentError::truncated(e, l4),
                    HeaderSliceError::Content(source) => {
                        SegmentError::TcpHeader { offset: l4, source }
                    }
                })?;
                (Transport::Tcp, tcp.slice().len())
            }
            IpNumber::UDP => {
                let udp = UdpHeaderSlice::from_slice(&frame[l4..end])
                    .map_err(|e| SegmentError::truncated(e, l4))?;
                (Transport::Udp, udp.slice().len())
            }
            other => {
                return Err(SegmentError::UnsupportedTransport {
                    ip_number: other.0,
                    offset: l4,
                });
            }
        };
        Ok(Layout {
            ip,
            transport,
            l3,
            l4,
            payload: l4 + header_len,
            end,
        })
    }

    /// Header bytes counted by the IP length field (IPv4 total length, IPv6 payload length).
    fn ip_counted_header_len(&self) -> usize {
        match self.ip {
            Ip::V4 => self.payload - self.l3,
            Ip::V6 => self.payload - self.l3 - field::IPV6_HEADER_LEN,
        }
    }
}

/// End of an IP packet of `len` bytes starting at `l3`, or a truncation error.
fn ip_end(
    frame: &[u8],
    l3: usize,
    len: usize,
    layer: Layer,
    len_source: LenSource,
) -> Result<usize, SegmentError> {
    let available = frame.len() - l3;
    if len > available {
        return Err(SegmentError::truncated(
            LenError {
                required_len: len,
                len: available,
                len_source,
                layer,
                layer_start_offset: 0,
            },
            l3,
        ));
    }
    Ok(l3 + len)
}

/// Cuts GSO/TSO super-packets into wire-size frames; see the [module documentation](self).
/// Keep one per thread and reuse it: its scratch buffer is what makes segmentation
/// allocation-free.
#[derive(Debug, Clone)]
pub struct Segmenter {
    scratch: Vec<u8>,
}

impl Default for Segmenter {
    fn default() -> Self {
        Self::new()
    }
}

impl Segmenter {
    /// A segmenter with a scratch buffer big enough for any segment of a 64 KiB super-packet.
    pub fn new() -> Self {
        Segmenter {
            scratch: Vec::with_capacity(INITIAL_SCRATCH),
        }
    }

    /// Splits an Ethernet frame (with up to two 802.1Q/802.1ad tags) carrying IPv4 or IPv6
    /// (hop-by-hop and destination options allowed) and TCP or UDP into frames whose transport
    /// payload is at most `gso_size` bytes, calling `emit` with each finished frame in order.
    /// Returns the number of segments (at least 1; a payload that fits in `gso_size`, even an
    /// empty one, gives one segment with recomputed lengths and checksums).
    ///
    /// On error nothing has been emitted.
    pub fn segment(
        &mut self,
        frame: &[u8],
        gso_size: u16,
        mut emit: impl FnMut(&[u8]),
    ) -> Result<usize, SegmentError> {
        if gso_size == 0 {
            return Err(SegmentError::ZeroGsoSize);
        }
        let layout = Layout::parse(frame)?;
        let gso = usize::from(gso_size);
        let payload = &frame[layout.payload..layout.end];
        let header_len = layout.ip_counted_header_len();
        if header_len + gso.min(payload.len()) > field::MAX_IP_LEN {
            return Err(SegmentError::SegmentTooLarge {
                gso_size,
                header_len,
            });
        }

        let headers = &frame[..layout.payload];
        let first_id = match layout.ip {
            Ip::V4 => u16::from_be_bytes(read2(frame, layout.l3 + field::IPV4_ID.start)),
            Ip::V6 => 0,
        };
        let (first_seq, tcp_flags) = match layout.transport {
            Transport::Tcp => (
                u32::from_be_bytes(read4(frame, layout.l4 + field::TCP_SEQ.start)),
                frame[layout.l4 + field::TCP_FLAGS],
            ),
            Transport::Udp => (0, 0),
        };

        let count = payload.len().div_ceil(gso).max(1);
        let mut chunks = payload.chunks(gso);
        for i in 0..count {
            // `chunks` yields nothing for an empty payload: that is the one empty segment.
            let chunk = chunks.next().unwrap_or_default();
            let offset = i * gso;
            let first = i == 0;
            let last = i + 1 == count;

            let seg = &mut self.scratch;
            seg.clear();
            seg.extend_from_slice(headers);
            seg.extend_from_slice(chunk);

            // Truncation is intended: IPv4 ids and TCP sequence numbers wrap.
            match layout.ip {
                Ip::V4 => {
                    let l3 = layout.l3;
                    let total_len = (seg.len() - l3) as u16;
                    write2(seg, l3 + field::IPV4_TOTAL_LEN.start, total_len);
                    let id = first_id.wrapping_add(i as u16);
                    write2(seg, l3 + field::IPV4_ID.start, id);
                    write2(seg, l3 + field::IPV4_CHECKSUM.start, 0);
                    let sum = Sum16BitWords::new().add_slice(&seg[l3..layout.l4]);
                    put_checksum(seg, l3 + field::IPV4_CHECKSUM.start, sum.ones_complement());
                }
                Ip::V6 => {
                    let l3 = layout.l3;
                    let payload_len = (seg.len() - l3 - field::IPV6_HEADER_LEN) as u16;
                    write2(seg, l3 + field::IPV6_PAYLOAD_LEN.start, payload_len);
                }
            }

            let l4 = layout.l4;
            let checksum_at = match layout.transport {
                Transport::Tcp => {
                    let seq = first_seq.wrapping_add(offset as u32);
                    seg[l4 + field::TCP_SEQ.start..l4 + field::TCP_SEQ.end]
                        .copy_from_slice(&seq.to_be_bytes());
                    let mut flags = tcp_flags;
                    if !first {
                        flags &= !field::TCP_CWR;
                    }
                    if !last {
                        flags &= !(field::TCP_FIN | field::TCP_PSH);
                    }
                    seg[l4 + field::TCP_FLAGS] = flags;
                    l4 + field::TCP_CHECKSUM.start
                }
                Transport::Udp => {
                    let udp_len = (seg.len() - l4) as u16;
                    write2(seg, l4 + field::UDP_LEN.start, udp_len);
                    l4 + field::UDP_CHECKSUM.start
                }
            };
            write2(seg, checksum_at, 0);
            let sum = pseudo_header_sum(seg, &layout).add_slice(&seg[l4..]);
            put_checksum(seg, checksum_at, sum.to_ones_complement_with_no_zero());

            emit(seg);
        }
        Ok(count)
    }
}

/// The pseudo-header sum for the transport segment in `seg` (whose IP header is already
/// rewritten).
fn pseudo_header_sum(seg: &[u8], layout: &Layout) -> Sum16BitWords {
    let l3 = layout.l3;
    let l4_len = seg.len() - layout.l4;
    let protocol = match layout.transport {
        Transport::Tcp => IpNumber::TCP.0,
        Transport::Udp => IpNumber::UDP.0,
    };
    let sum = Sum16BitWords::new();
    match layout.ip {
        Ip::V4 => sum
            .add_slice(&seg[l3 + field::IPV4_SRC.start..l3 + field::IPV4_DST.end])
            .add_2bytes([0, protocol])
            // Fits: the segment's IPv4 total length does.
            .add_2bytes((l4_len as u16).to_be_bytes()),
        Ip::V6 => sum
            .add_slice(&seg[l3 + field::IPV6_SRC.start..l3 + field::IPV6_DST.end])
            .add_slice(&(l4_len as u32).to_be_bytes())
            .add_slice(&[0, 0, 0, protocol]),
    }
}

/// Stores a checksum computed by [`Sum16BitWords`], which sums in native byte order.
fn put_checksum(buf: &mut [u8], at: usize, checksum: u16) {
    buf[at..at + 2].copy_from_slice(&checksum.to_ne_bytes());
}

fn write2(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn read2(buf: &[u8], at: usize) -> [u8; 2] {
    [buf[at], buf[at + 1]]
}

fn read4(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId, ip_number,
    };
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const V4_A: [u8; 4] = [10, 244, 1, 2];
    const V4_B: [u8; 4] = [10, 244, 2, 3];
    const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// What a test super-packet is made of.
    #[derive(Debug, Clone, Copy)]
    struct Spec {
        ipv6: bool,
        udp: bool,
        vlan_tags: usize,
        payload_len: usize,
        /// TCP flags of the super-packet: CWR, ECE, PSH, FIN all set when true.
        all_flags: bool,
        seq: u32,
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
    }

    /// Builds a super-packet like the one a TC hook sees: headers of the whole thing, the
    /// transport checksum holding garbage (the kernel leaves a partial pseudo-header sum).
    fn super_packet(spec: Spec) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let vid = |v| VlanId::try_new(v).unwrap();
        let mut frame = Vec::new();
        let data = payload(spec.payload_len);
        macro_rules! finish {
            ($ip:expr) => {{
                let ip = $ip;
                if spec.udp {
                    ip.udp(5353, 53).write(&mut frame, &data).unwrap();
                } else {
                    let mut tcp = ip.tcp(40000, 443, spec.seq, 502).ack(77);
                    if spec.all_flags {
                        tcp = tcp.cwr().ece().psh().fin();
                    }
                    tcp.write(&mut frame, &data).unwrap();
                }
            }};
        }
        macro_rules! ip {
            ($link:expr) => {{
                let link = $link;
                if spec.ipv6 {
                    finish!(link.ipv6(V6_A, V6_B, 64))
                } else {
                    finish!(link.ipv4(V4_A, V4_B, 64))
                }
            }};
        }
        match spec.vlan_tags {
            0 => ip!(eth),
            1 => ip!(eth.single_vlan(vid(100))),
            _ => ip!(eth.double_vlan(vid(100), vid(200))),
        }
        let headers = PacketHeaders::from_ethernet_slice(&frame).unwrap();
        let l4 = frame.len() - data.len() - if spec.udp { 8 } else { 20 };
        if let Some(NetHeaders::Ipv4(..)) = headers.net {
            // An id close to wrapping, to see id + i wrap.
            let l3 = l4 - 20;
            frame[l3 + 4..l3 + 6].copy_from_slice(&0xfffeu16.to_be_bytes());
        }
        let checksum_at = l4 + if spec.udp { 6 } else { 16 };
        frame[checksum_at..checksum_at + 2].copy_from_slice(&[0x12, 0x34]);
        frame
    }

    fn run(frame: &[u8], gso: u16) -> Result<Vec<Vec<u8>>, SegmentError> {
        let mut segs = Vec::new();
        let n = Segmenter::new().segment(frame, gso, |s| segs.push(s.to_vec()))?;
        assert_eq!(n, segs.len());
        Ok(segs)
    }

    /// Checks `segs` against the super-packet they were cut from, with etherparse as the
    /// judge of lengths and checksums.
    fn check(spec: Spec, frame: &[u8], gso: u16, segs: &[Vec<u8>]) {
        let original = PacketHeaders::from_ethernet_slice(frame).unwrap();
        let want_payload = original.payload.slice();
        let gso = usize::from(gso);
        assert_eq!(segs.len(), want_payload.len().div_ceil(gso).max(1));

        let mut joined = Vec::new();
        let last = segs.len() - 1;
        for (i, seg) in segs.iter().enumerate() {
            let h = PacketHeaders::from_ethernet_slice(seg)
                .unwrap_or_else(|e| panic!("segment {i} does not parse: {e}"));
            assert_eq!(h.link, original.link, "segment {i}");
            assert_eq!(h.link_exts, original.link_exts, "segment {i}");
            let p = h.payload.slice();
            assert!(
                p.len() <= gso && (p.len() == gso || i == last),
                "segment {i}"
            );
            joined.extend_from_slice(p);
            let transport = h.transport.clone().unwrap();

            match (h.net.as_ref().unwrap(), original.net.as_ref().unwrap()) {
                (NetHeaders::Ipv4(ip, _), NetHeaders::Ipv4(orig, _)) => {
                    assert!(!spec.ipv6);
                    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "segment {i}");
                    assert_eq!(
                        ip.identification,
                        orig.identification.wrapping_add(i as u16)
                    );
                    assert_eq!(
                        usize::from(ip.total_len),
                        seg.len() - 14 - 4 * spec.vlan_tags
                    );
                    match &transport {
                        TransportHeader::Tcp(t) => {
                            assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, p).unwrap())
                        }
                        TransportHeader::Udp(u) => {
                            assert_eq!(u.checksum, u.calc_checksum_ipv4(ip, p).unwrap())
                        }
                        other => panic!("{other:?}"),
                    }
                }
                (NetHeaders::Ipv6(ip, _), NetHeaders::Ipv6(..)) => {
                    assert!(spec.ipv6);
                    assert_eq!(
                        usize::from(ip.payload_length),
                        seg.len() - 14 - 4 * spec.vlan_tags - 40
                    );
                    match &transport {
                        TransportHeader::Tcp(t) => {
                            assert_eq!(t.checksum, t.calc_checksum_ipv6(ip, p).unwrap())
                        }
                        TransportHeader::Udp(u) => {
                            assert_eq!(u.checksum, u.calc_checksum_ipv6(ip, p).unwrap())
                        }
                        other => panic!("{other:?}"),
                    }
                }
                other => panic!("IP version changed: {other:?}"),
            }

            match (transport, original.transport.clone().unwrap()) {
                (TransportHeader::Tcp(t), TransportHeader::Tcp(o)) => {
                    assert_eq!(
                        t.sequence_number,
                        o.sequence_number.wrapping_add((i * gso) as u32)
                    );
                    assert_eq!(t.acknowledgment_number, o.acknowledgment_number);
                    assert_eq!(t.cwr, o.cwr && i == 0, "CWR of segment {i}");
                    assert_eq!(t.fin, o.fin && i == last, "FIN of segment {i}");
                    assert_eq!(t.psh, o.psh && i == last, "PSH of segment {i}");
                    assert_eq!((t.ece, t.ack, t.window_size), (o.ece, o.ack, o.window_size));
                }
                (TransportHeader::Udp(u), TransportHeader::Udp(o)) => {
                    assert_eq!(usize::from(u.length), 8 + p.len());
                    assert_eq!(
                        (u.source_port, u.destination_port),
                        (o.source_port, o.destination_port)
                    );
                }
                other => panic!("transport changed: {other:?}"),
            }
        }
        assert_eq!(
            joined, want_payload,
            "payloads joined differ from the original"
        );
    }

    fn tcp4(payload_len: usize) -> Spec {
        Spec {
            ipv6: false,
            udp: false,
            vlan_tags: 0,
            payload_len,
            all_flags: true,
            seq: 1_000,
        }
    }

    #[test]
    fn tcp_ipv4_super_packet_is_cut_at_the_mss() {
        let spec = tcp4(3 * 1448 + 100);
        let frame = super_packet(spec);
        let segs = run(&frame, 1448).unwrap();
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [
                14 + 20 + 20 + 1448,
                14 + 20 + 20 + 1448,
                14 + 20 + 20 + 1448,
                14 + 20 + 20 + 100
            ]
        );
        check(spec, &frame, 1448, &segs);
    }

    #[test]
    fn every_combination_of_ip_transport_and_vlan_tags() {
        for ipv6 in [false, true] {
            for udp in [false, true] {
                for vlan_tags in 0..=2 {
                    let spec = Spec {
                        ipv6,
                        udp,
                        vlan_tags,
                        payload_len: 5000,
                        all_flags: true,
                        seq: u32::MAX - 3000, // wraps inside the packet
                    };
                    let frame = super_packet(spec);
                    let segs = run(&frame, 1400).unwrap();
                    assert_eq!(segs.len(), 4, "{spec:?}");
                    check(spec, &frame, 1400, &segs);
                }
            }
        }
    }

    #[test]
    fn payload_that_fits_gives_one_segment_with_a_valid_checksum() {
        for payload_len in [0, 1, 1448] {
            let spec = tcp4(payload_len);
            let frame = super_packet(spec);
            let segs = run(&frame, 1448).unwrap();
            assert_eq!(segs.len(), 1);
            assert_eq!(segs[0].len(), frame.len());
            check(spec, &frame, 1448, &segs);
        }
    }

    #[test]
    fn ethernet_padding_is_not_copied() {
        let spec = tcp4(2);
        let mut frame = super_packet(spec);
        let unpadded = frame.len();
        frame.resize(60, 0);
        let segs = run(&frame, 1).unwrap();
        assert_eq!(segs.len(), 2);
        assert!(segs.iter().all(|s| s.len() == unpadded - 1));
    }

    #[test]
    fn ipv4_big_tcp_total_length_zero_uses_the_frame() {
        let spec = tcp4(4000);
        let mut frame = super_packet(spec);
        frame[14 + 2..14 + 4].copy_from_slice(&[0, 0]);
        let segs = run(&frame, 1000).unwrap();
        let mut fixed = frame.clone();
        let total = (frame.len() - 14) as u16;
        fixed[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
        check(spec, &fixed, 1000, &segs);
    }

    #[test]
    fn ipv6_destination_options_are_kept() {
        let spec = Spec {
            ipv6: true,
            ..tcp4(3000)
        };
        let plain = super_packet(spec);
        // Insert an 8-byte destination options header (PadN) between IPv6 and TCP.
        let mut frame = plain[..14 + 40].to_vec();
        frame.extend_from_slice(&[ip_number::TCP.0, 0, 1, 4, 0, 0, 0, 0]);
        frame.extend_from_slice(&plain[14 + 40..]);
        frame[14 + 6] = ip_number::IPV6_DEST_OPTIONS.0;
        let plen = u16::from_be_bytes([frame[18], frame[19]]) + 8;
        frame[18..20].copy_from_slice(&plen.to_be_bytes());

        let segs = run(&frame, 1000).unwrap();
        assert_eq!(segs.len(), 3);
        for seg in &segs {
            assert_eq!(seg[14 + 6], ip_number::IPV6_DEST_OPTIONS.0);
            let h = PacketHeaders::from_ethernet_slice(seg).unwrap();
            let (Some(NetHeaders::Ipv6(ip, exts)), Some(TransportHeader::Tcp(tcp))) =
                (h.net, h.transport)
            else {
                panic!("not IPv6/TCP")
            };
            assert!(exts.destination_options.is_some());
            assert_eq!(usize::from(ip.payload_length), seg.len() - 14 - 40);
            assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv6(&ip, h.payload.slice()).unwrap()
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        let good = super_packet(tcp4(3000));
        let err = |frame: &[u8], gso| run(frame, gso).map(|segs| segs.len()).unwrap_err();

        assert_eq!(err(&good, 0), SegmentError::ZeroGsoSize);
        assert_eq!(
            err(&good[..10], 1000),
            SegmentError::Truncated {
                layer: Layer::Ethernet2Header,
                offset: 0,
                needed: 14,
                available: 10
            }
        );
        assert_eq!(
            err(&good[..30], 1000),
            SegmentError::Truncated {
                layer: Layer::Ipv4Header,
                offset: 14,
                needed: 20,
                available: 16
            }
        );
        // The IPv4 total length says more than the frame has.
        let cut = &good[..good.len() - 1];
        assert_eq!(
            err(cut, 1000),
            SegmentError::Truncated {
                layer: Layer::Ipv4Packet,
                offset: 14,
                needed: good.len() - 14,
                available: good.len() - 15
            }
        );
        let msg = err(cut, 1000).to_string();
        assert!(
            msg.contains("IPv4 packet") && msg.contains("byte 14"),
            "{msg}"
        );

        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            err(&arp, 1000),
            SegmentError::NotIp {
                ether_type: 0x0806,
                offset: 12
            }
        );

        let mut icmp = good.clone();
        icmp[14 + 9] = 1;
        assert_eq!(
            err(&icmp, 1000),
            SegmentError::UnsupportedTransport {
                ip_number: 1,
                offset: 34
            }
        );

        let mut fragment = good.clone();
        fragment[14 + 6] |= 0x20; // more fragments
        assert_eq!(err(&fragment, 1000), SegmentError::Fragment);

        let mut short_total = good.clone();
        short_total[14 + 2..14 + 4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            err(&short_total, 1000),
            SegmentError::Ipv4TotalLength {
                total_len: 10,
                header_len: 20
            }
        );

        let mut bad_offset = good.clone();
        bad_offset[34 + 12] = 0x40; // data offset 4
        assert!(matches!(
            err(&bad_offset, 1000),
            SegmentError::TcpHeader { offset: 34, .. }
        ));

        let mut three_tags = good[..12].to_vec();
        for _ in 0..3 {
            three_tags.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        three_tags.extend_from_slice(&good[12..]);
        assert_eq!(
            err(&three_tags, 1000),
            SegmentError::TooManyVlanTags { offset: 22 }
        );

        let v6 = super_packet(Spec {
            ipv6: true,
            ..tcp4(100)
        });
        let mut routing = v6[..54].to_vec();
        routing.extend_from_slice(&[ip_number::TCP.0, 0, 0, 0, 0, 0, 0, 0]);
        routing.extend_from_slice(&v6[54..]);
        routing[14 + 6] = ip_number::IPV6_ROUTE.0;
        let plen = u16::from_be_bytes([routing[18], routing[19]]) + 8;
        routing[18..20].copy_from_slice(&plen.to_be_bytes());
        assert_eq!(
            err(&routing, 1000),
            SegmentError::UnsupportedIpv6Extension {
                ip_number: 43,
                offset: 54
            }
        );
        assert_eq!(err(&routing, 1000).reason(), "unsupported_ipv6_extension");
    }

    #[test]
    fn segment_that_would_overflow_the_ip_length_is_refused() {
        // A BIG TCP super-packet (IPv4 total length 0) of 70000 payload bytes.
        let spec = tcp4(65_000);
        let mut frame = super_packet(spec);
        frame.extend_from_slice(&payload(5_000));
        frame[14 + 2..14 + 4].copy_from_slice(&[0, 0]);
        assert_eq!(
            run(&frame, 65_500).map(|segs| segs.len()),
            Err(SegmentError::SegmentTooLarge {
                gso_size: 65_500,
                header_len: 40
            })
        );
        // Cut small enough, it is fine.
        assert_eq!(run(&frame, 9000).map(|segs| segs.len()), Ok(8));
    }

    #[test]
    fn scratch_buffer_does_not_grow_for_a_64k_super_packet() {
        let frame = super_packet(tcp4(65_535 - 40));
        let mut segmenter = Segmenter::new();
        let before = segmenter.scratch.capacity();
        for gso in [1, 1448, 9000, 65_495] {
            segmenter.segment(&frame, gso, |_| {}).unwrap();
        }
        assert_eq!(segmenter.scratch.capacity(), before);
    }

    proptest! {
        #[test]
        fn segments_agree_with_the_super_packet(
            ipv6 in any::<bool>(),
            udp in any::<bool>(),
            vlan_tags in 0usize..=2,
            payload_len in 0usize..6000,
            all_flags in any::<bool>(),
            seq in any::<u32>(),
            gso in 1u16..3000,
        ) {
            let spec = Spec { ipv6, udp, vlan_tags, payload_len, all_flags, seq };
            let frame = super_packet(spec);
            let segs = run(&frame, gso).unwrap();
            check(spec, &frame, gso, &segs);
        }

        #[test]
        fn random_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200), gso in any::<u16>()) {
            let _ = Segmenter::new().segment(&frame, gso, |_| {});
        }

        #[test]
        fn mutated_packets_never_panic(
            ipv6 in any::<bool>(),
            udp in any::<bool>(),
            vlan_tags in 0usize..=2,
            payload_len in 0usize..300,
            cut in any::<proptest::sample::Index>(),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..6),
            gso in any::<u16>(),
        ) {
            let spec = Spec { ipv6, udp, vlan_tags, payload_len, all_flags: true, seq: 1 };
            let mut frame = super_packet(spec);
            for (at, value) in flips {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            let end = cut.index(frame.len() + 1);
            let _ = Segmenter::new().segment(&frame[..end], gso, |_| {});
        }
    }
}
