//! NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) export messages: what the broker sends a flow
//! collector for the flows it saw in tapped traffic.
//!
//! [`FlowEncoder::encode`] packs [`FlowRecord`]s into messages of at most a given size, with
//! the two templates first when asked to. It does no I/O: each finished message is handed to a
//! callback, typically one UDP datagram each (port 2055 for v9, 4739 for IPFIX by custom).
//!
//! # Templates
//!
//! Two templates, the same fields in the same order in both versions: 256 for IPv4 flows and
//! 257 for IPv6 flows (a flow with one IPv4 and one IPv6 address uses 257, the IPv4 address
//! written as `::ffff:a.b.c.d`).
//!
//! | IE        | IPFIX name (v9 name)                                 | bytes v9 / IPFIX | from         |
//! |-----------|------------------------------------------------------|------------------|--------------|
//! | 8 or 27   | sourceIPv4Address or sourceIPv6Address (IPV4/IPV6_SRC_ADDR) | 4 or 16   | `src`        |
//! | 12 or 28  | destinationIPv4Address or destinationIPv6Address (IPV4/IPV6_DST_ADDR) | 4 or 16 | `dst` |
//! | 7         | sourceTransportPort (L4_SRC_PORT)                    | 2                | `src_port`   |
//! | 11        | destinationTransportPort (L4_DST_PORT)               | 2                | `dst_port`   |
//! | 4         | protocolIdentifier (PROTOCOL)                        | 1                | `protocol`   |
//! | 6         | tcpControlBits (TCP_FLAGS)                           | 1 / 2            | `tcp_flags`  |
//! | 2         | packetDeltaCount (IN_PKTS)                           | 8                | `packets`    |
//! | 1         | octetDeltaCount (IN_BYTES)                           | 8                | `bytes`      |
//! | 22 / 152  | v9 FIRST_SWITCHED (sysUptime ms) / IPFIX flowStartMilliseconds | 4 / 8  | `start_ms`   |
//! | 21 / 153  | v9 LAST_SWITCHED (sysUptime ms) / IPFIX flowEndMilliseconds    | 4 / 8  | `end_ms`     |
//! | 10        | ingressInterface (INPUT_SNMP)                        | 4                | `tap`        |
//! | 61        | flowDirection (DIRECTION)                            | 1                | 0 when `to_pod`, else 1 |
//! | 82        | interfaceName (IF_NAME)                              | 64               | `pod`        |
//!
//! IPFIX's tcpControlBits is unsigned16 since RFC 7125; v9's TCP_FLAGS is one byte. Records
//! are 107 (v9 IPv4), 131 (v9 IPv6), 116 (IPFIX IPv4) and 140 (IPFIX IPv6) bytes long.
//!
//! # Pod identity
//!
//! Flow records carry where the broker saw the flow, with standard elements so any collector
//! can store them: ingressInterface is the tap point id (podtap's tap label without the
//! direction bit, see [`crate::vxlan`]), flowDirection says which way the packets went relative
//! to the pod (0 = ingress: the pod received them; 1 = egress: the pod sent them), and
//! interfaceName holds `namespace/pod`, zero-padded to 64 bytes (all zero when unknown; see
//! [`pod_field`]).
//!
//! What collectors keep (checked by this crate's tests): nfdump 1.7.1 (Debian 12) stores
//! ingressInterface and flowDirection for both v9 and IPFIX: `-o fmt:%in %dir` prints the tap
//! id and `I`/`E`, `-o csv` has them in its `in` and `dir` columns (0/1), `-o json` as
//! `input_snmp` and `direction`, and the filters `in if 5` and `flowdir ingress` select on
//! them. It has no element for interfaceName and drops it, so the pod name is lost in nfdump's
//! files. tshark decodes every field (`cflow.inputint`, `cflow.direction`, `cflow.if_name`).
//!
//! # Times, counts and sequence numbers
//!
//! - v9: the header holds `unix_secs` = `now_ms / 1000` and a sysUptime taken back to that
//!   whole second (`uptime_ms - now_ms % 1000`, not below 0), so a collector's `unix_secs *
//!   1000 - sysUptime + FIRST_SWITCHED` gives `start_ms` to the millisecond. FIRST_SWITCHED and
//!   LAST_SWITCHED are the exporter's uptime at the flow's first and last packet, modulo 2^32.
//!   The header's count is the number of records in the message, templates included; the
//!   sequence number counts messages (the first is 0).
//! - IPFIX: the export time is `now_ms / 1000`; the sequence number is the number of data
//!   records sent before the message, modulo 2^32 (template records do not count).
//!
//! Every set (FlowSet) is padded with zeros to a multiple of 4 bytes, and its length includes
//! the padding.

use std::net::{IpAddr, Ipv6Addr};

/// Length of `FlowRecord::pod` and of the interfaceName field.
pub const POD_LEN: usize = 64;

/// Largest message: IPFIX's length field, and a UDP datagram, hold at most this.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// Information element ids, template ids and header sizes.
mod field {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    /// v9 only.
    pub const LAST_SWITCHED: u16 = 21;
    /// v9 only.
    pub const FIRST_SWITCHED: u16 = 22;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const INTERFACE_NAME: u16 = 82;
    /// IPFIX only.
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    /// IPFIX only.
    pub const FLOW_END_MILLISECONDS: u16 = 153;

    pub const TEMPLATE_IPV4: u16 = 256;
    pub const TEMPLATE_IPV6: u16 = 257;

    pub const V9_VERSION: u16 = 9;
    pub const IPFIX_VERSION: u16 = 10;
    pub const V9_HEADER_LEN: usize = 20;
    pub const IPFIX_HEADER_LEN: usize = 16;
    /// Set ID of a template set.
    pub const V9_TEMPLATE_SET: u16 = 0;
    pub const IPFIX_TEMPLATE_SET: u16 = 2;
    /// Set ID and set length.
    pub const SET_HEADER_LEN: usize = 4;
    /// Template ID and field count.
    pub const TEMPLATE_HEADER_LEN: usize = 4;
    /// Field type and field length.
    pub const FIELD_SPECIFIER_LEN: usize = 4;
    /// Sets are padded to this.
    pub const ALIGN: usize = 4;
}

/// A template's fields as (information element id, length).
type Template = [(u16, u16); 13];

const V9_IPV4: Template = template(
    (
        field::SOURCE_IPV4_ADDRESS,
        field::DESTINATION_IPV4_ADDRESS,
        4,
    ),
    1,
    (field::FIRST_SWITCHED, field::LAST_SWITCHED, 4),
);
const V9_IPV6: Template = template(
    (
        field::SOURCE_IPV6_ADDRESS,
        field::DESTINATION_IPV6_ADDRESS,
        16,
    ),
    1,
    (field::FIRST_SWITCHED, field::LAST_SWITCHED, 4),
);
const IPFIX_IPV4: Template = template(
    (
        field::SOURCE_IPV4_ADDRESS,
        field::DESTINATION_IPV4_ADDRESS,
        4,
    ),
    2,
    (
        field::FLOW_START_MILLISECONDS,
        field::FLOW_END_MILLISECONDS,
        8,
    ),
);
const IPFIX_IPV6: Template = template(
    (
        field::SOURCE_IPV6_ADDRESS,
        field::DESTINATION_IPV6_ADDRESS,
        16,
    ),
    2,
    (
        field::FLOW_START_MILLISECONDS,
        field::FLOW_END_MILLISECONDS,
        8,
    ),
);

/// The field list both versions share, with the address, TCP flags and time fields given.
const fn template(
    (src, dst, addr_len): (u16, u16, u16),
    tcp_flags_len: u16,
    (start, end, time_len): (u16, u16, u16),
) -> Template {
    [
        (src, addr_len),
        (dst, addr_len),
        (field::SOURCE_TRANSPORT_PORT, 2),
        (field::DESTINATION_TRANSPORT_PORT, 2),
        (field::PROTOCOL_IDENTIFIER, 1),
        (field::TCP_CONTROL_BITS, tcp_flags_len),
        (field::PACKET_DELTA_COUNT, 8),
        (field::OCTET_DELTA_COUNT, 8),
        (start, time_len),
        (end, time_len),
        (field::INGRESS_INTERFACE, 4),
        (field::FLOW_DIRECTION, 1),
        (field::INTERFACE_NAME, POD_LEN as u16),
    ]
}

/// Sum of a template's field lengths: the length of one data record.
const fn record_len(template: &Template) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < template.len() {
        len += template[i].1 as usize;
        i += 1;
    }
    len
}

/// Bytes of padding that bring `len` to a multiple of four.
const fn padding(len: usize) -> usize {
    (field::ALIGN - len % field::ALIGN) % field::ALIGN
}

/// Which export protocol to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowVersion {
    /// NetFlow version 9 (RFC 3954).
    V9,
    /// IPFIX (RFC 7011), "version 10".
    Ipfix,
}

impl FlowVersion {
    const fn header_len(self) -> usize {
        match self {
            FlowVersion::V9 => field::V9_HEADER_LEN,
            FlowVersion::Ipfix => field::IPFIX_HEADER_LEN,
        }
    }

    const fn templates(self) -> [(u16, &'static Template); 2] {
        match self {
            FlowVersion::V9 => [
                (field::TEMPLATE_IPV4, &V9_IPV4),
                (field::TEMPLATE_IPV6, &V9_IPV6),
            ],
            FlowVersion::Ipfix => [
                (field::TEMPLATE_IPV4, &IPFIX_IPV4),
                (field::TEMPLATE_IPV6, &IPFIX_IPV6),
            ],
        }
    }

    const fn template_set_id(self) -> u16 {
        match self {
            FlowVersion::V9 => field::V9_TEMPLATE_SET,
            FlowVersion::Ipfix => field::IPFIX_TEMPLATE_SET,
        }
    }

    /// Length of the set holding both templates.
    const fn template_set_len(self) -> usize {
        let mut len = field::SET_HEADER_LEN;
        let templates = self.templates();
        let mut i = 0;
        while i < templates.len() {
            len += field::TEMPLATE_HEADER_LEN + templates[i].1.len() * field::FIELD_SPECIFIER_LEN;
            i += 1;
        }
        len
    }

    /// The smallest message size [`FlowEncoder::encode`] works with: room for the header and
    /// the templates, or for the header and one record of the longer kind.
    pub const fn min_message_len(self) -> usize {
        let templates = self.header_len() + self.template_set_len();
        let longest = record_len(self.templates()[1].1);
        let record = self.header_len() + field::SET_HEADER_LEN + longest + padding(longest);
        if templates > record {
            templates
        } else {
            record
        }
    }
}

/// One flow as the exporter reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowRecord {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port (0 when the protocol has none).
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// OR of the TCP flags of all the flow's packets.
    pub tcp_flags: u8,
    /// Packets in the flow.
    pub packets: u64,
    /// Bytes in the flow, IP headers included.
    pub bytes: u64,
    /// First packet, Unix milliseconds.
    pub start_ms: u64,
    /// Last packet, Unix milliseconds.
    pub end_ms: u64,
    /// Tap point id.
    pub tap: u16,
    /// Whether the packets went to the pod (it received them) rather than from it.
    pub to_pod: bool,
    /// `namespace/pod`, zero-padded, or all zero when unknown (see [`pod_field`]).
    pub pod: [u8; POD_LEN],
}

impl FlowRecord {
    /// Whether the record goes in the IPv4 template (both addresses IPv4).
    fn is_ipv4(&self) -> bool {
        self.src.is_ipv4() && self.dst.is_ipv4()
    }

    /// The pod's name: the bytes of `pod` up to the first zero, if they are UTF-8.
    pub fn pod_name(&self) -> Option<&str> {
        let end = self.pod.iter().position(|&b| b == 0).unwrap_or(POD_LEN);
        std::str::from_utf8(&self.pod[..end]).ok()
    }
}

/// The `pod` field for `name` (`namespace/pod`): its bytes, zero-padded to 64, cut at the last
/// character boundary that fits when longer.
pub fn pod_field(name: &str) -> [u8; POD_LEN] {
    let mut end = name.len().min(POD_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut pod = [0; POD_LEN];
    pod[..end].copy_from_slice(&name.as_bytes()[..end]);
    pod
}

/// The clock values a message's records are written against.
#[derive(Debug, Clone, Copy)]
struct ExportClock {
    /// Unix milliseconds of the whole second the header gives.
    second_ms: u64,
    /// v9: sysUptime at that second.
    uptime_at_second: u32,
}

impl ExportClock {
    fn new(now_ms: u64, uptime_ms: u32) -> Self {
        let past_second = (now_ms % 1000) as u32;
        ExportClock {
            second_ms: now_ms - u64::from(past_second),
            uptime_at_second: uptime_ms.saturating_sub(past_second),
        }
    }

    /// v9's sysUptime at Unix time `ms`, modulo 2^32.
    fn uptime_at(&self, ms: u64) -> u32 {
        u64::from(self.uptime_at_second).wrapping_add(ms.wrapping_sub(self.second_ms)) as u32
    }

    fn unix_secs(&self) -> u32 {
        (self.second_ms / 1000) as u32
    }
}

/// Writes NetFlow v9 or IPFIX messages for one observation domain (v9: source ID), keeping the
/// sequence number between calls. The message buffer is reused: encoding allocates nothing
/// once it has grown to the largest message.
#[derive(Debug, Clone)]
pub struct FlowEncoder {
    version: FlowVersion,
    observation_domain: u32,
    /// v9: messages sent; IPFIX: data records sent (both modulo 2^32).
    sequence: u32,
    /// The message being written.
    buf: Vec<u8>,
    /// Where the open data set starts, and its template id.
    open_set: Option<(usize, u16)>,
}

impl FlowEncoder {
    /// An encoder for `version`; `observation_domain` is the IPFIX observation domain ID or
    /// the v9 source ID.
    pub fn new(version: FlowVersion, observation_domain: u32) -> Self {
        FlowEncoder {
            version,
            observation_domain,
            sequence: 0,
            buf: Vec::new(),
            open_set: None,
        }
    }

    /// The version written.
    pub fn version(&self) -> FlowVersion {
        self.version
    }

    /// The sequence number the next message will carry.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// Encodes `records`, in order, into messages of at most `max_message` bytes (e.g. 1400)
    /// and calls `emit` once per message; with `templates` true the two templates (IPv4 and
    /// IPv6) go first, at the start of the first message. `now_ms` is the export time (Unix
    /// ms); `uptime_ms` is the exporter's sysUptime for v9 (ms since the exporter started).
    ///
    /// `max_message` is taken as at least [`FlowVersion::min_message_len`] (156 bytes for v9,
    /// 160 for IPFIX) and at most [`MAX_MESSAGE_LEN`]. Nothing is emitted when there are no
    /// records and no templates to send. Over UDP, send the templates again from time to
    /// time (RFC 7011 section 8.4) so a restarted collector learns them.
    pub fn encode(
        &mut self,
        records: &[FlowRecord],
        templates: bool,
        now_ms: u64,
        uptime_ms: u32,
        max_message: usize,
        mut emit: impl FnMut(&[u8]),
    ) {
        let max = max_message.clamp(self.version.min_message_len(), MAX_MESSAGE_LEN);
        let clock = ExportClock::new(now_ms, uptime_ms);
        let mut send_templates = templates;
        let mut rest = records;
        while send_templates || !rest.is_empty() {
            self.begin_message(max);
            let mut count = 0;
            if send_templates {
                self.write_templates();
                send_templates = false;
                count += 2;
            }
            let mut data_records = 0;
            while let Some((record, after)) = rest.split_first() {
                if !self.push_record(record, &clock, max) {
                    break;
                }
                data_records += 1;
                rest = after;
            }
            self.finish_message(&clock, count + data_records);
            emit(&self.buf);
            self.sequence = match self.version {
                FlowVersion::V9 => self.sequence.wrapping_add(1),
                FlowVersion::Ipfix => self.sequence.wrapping_add(data_records as u32),
            };
        }
    }

    /// Starts a message: clears the buffer and reserves the header.
    fn begin_message(&mut self, max: usize) {
        self.buf.clear();
        self.buf.reserve(max);
        self.buf.resize(self.version.header_len(), 0);
        self.open_set = None;
    }

    fn write_templates(&mut self) {
        let buf = &mut self.buf;
        buf.extend_from_slice(&self.version.template_set_id().to_be_bytes());
        buf.extend_from_slice(&(self.version.template_set_len() as u16).to_be_bytes());
        for (id, fields) in self.version.templates() {
            buf.extend_from_slice(&id.to_be_bytes());
            buf.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (element, len) in fields {
                buf.extend_from_slice(&element.to_be_bytes());
                buf.extend_from_slice(&len.to_be_bytes());
            }
        }
    }

    /// Adds a record if the message, with its last set padded, stays within `max`.
    fn push_record(&mut self, record: &FlowRecord, clock: &ExportClock, max: usize) -> bool {
        let [(v4_id, v4), (v6_id, v6)] = self.version.templates();
        let (template_id, fields) = if record.is_ipv4() {
            (v4_id, v4)
        } else {
            (v6_id, v6)
        };
        let len = record_len(fields);
        let end = match self.open_set {
            Some((start, id)) if id == template_id => {
                let set_len = self.buf.len() - start + len;
                start + set_len + padding(set_len)
            }
            _ => {
                let set_len = field::SET_HEADER_LEN + len;
                self.closed_len() + set_len + padding(set_len)
            }
        };
        if end > max {
            return false;
        }
        if !matches!(self.open_set, Some((_, id)) if id == template_id) {
            self.close_set();
            self.open_set = Some((self.buf.len(), template_id));
            self.buf.extend_from_slice(&template_id.to_be_bytes());
            self.buf.extend_from_slice(&[0, 0]);
        }
        for &(element, len) in fields {
            self.write_field(element, len, record, clock);
        }
        true
    }

    /// Length of the message once the open set is padded.
    fn closed_len(&self) -> usize {
        match self.open_set {
            Some((start, _)) => self.buf.len() + padding(self.buf.len() - start),
            None => self.buf.len(),
        }
    }

    /// Pads the open set and writes its length.
    fn close_set(&mut self) {
        let end = self.closed_len();
        if let Some((start, _)) = self.open_set.take() {
            self.buf.resize(end, 0);
            let set_len = (end - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&set_len.to_be_bytes());
        }
    }

    fn write_field(&mut self, element: u16, len: u16, r: &FlowRecord, clock: &ExportClock) {
        let buf = &mut self.buf;
        let uint = |buf: &mut Vec<u8>, value: u64| {
            buf.extend_from_slice(&value.to_be_bytes()[8 - usize::from(len)..]);
        };
        match element {
            field::SOURCE_IPV4_ADDRESS | field::DESTINATION_IPV4_ADDRESS => {
                let addr = if element == field::SOURCE_IPV4_ADDRESS {
                    r.src
                } else {
                    r.dst
                };
                // The IPv4 template is only used when both addresses are IPv4.
                let octets = match addr {
                    IpAddr::V4(v4) => v4.octets(),
                    IpAddr::V6(_) => [0; 4],
                };
                buf.extend_from_slice(&octets);
            }
            field::SOURCE_IPV6_ADDRESS | field::DESTINATION_IPV6_ADDRESS => {
                let addr = if element == field::SOURCE_IPV6_ADDRESS {
                    r.src
                } else {
                    r.dst
                };
                let v6: Ipv6Addr = match addr {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                buf.extend_from_slice(&v6.octets());
            }
            field::SOURCE_TRANSPORT_PORT => uint(buf, r.src_port.into()),
            field::DESTINATION_TRANSPORT_PORT => uint(buf, r.dst_port.into()),
            field::PROTOCOL_IDENTIFIER => uint(buf, r.protocol.into()),
            field::TCP_CONTROL_BITS => uint(buf, r.tcp_flags.into()),
            field::PACKET_DELTA_COUNT => uint(buf, r.packets),
            field::OCTET_DELTA_COUNT => uint(buf, r.bytes),
            field::FIRST_SWITCHED => uint(buf, clock.uptime_at(r.start_ms).into()),
            field::LAST_SWITCHED => uint(buf, clock.uptime_at(r.end_ms).into()),
            field::FLOW_START_MILLISECONDS => uint(buf, r.start_ms),
            field::FLOW_END_MILLISECONDS => uint(buf, r.end_ms),
            field::INGRESS_INTERFACE => uint(buf, r.tap.into()),
            field::FLOW_DIRECTION => uint(buf, if r.to_pod { 0 } else { 1 }),
            field::INTERFACE_NAME => buf.extend_from_slice(&r.pod),
            // Every element of the templates above is handled; keep the record length right
            // regardless.
            _ => buf.resize(buf.len() + usize::from(len), 0),
        }
    }

    /// Closes the last set and fills in the header.
    fn finish_message(&mut self, clock: &ExportClock, records: usize) {
        self.close_set();
        let mut header = [0u8; field::V9_HEADER_LEN];
        let header = match self.version {
            FlowVersion::V9 => {
                header[0..2].copy_from_slice(&field::V9_VERSION.to_be_bytes());
                header[2..4].copy_from_slice(&(records as u16).to_be_bytes());
                header[4..8].copy_from_slice(&clock.uptime_at_second.to_be_bytes());
                header[8..12].copy_from_slice(&clock.unix_secs().to_be_bytes());
                header[12..16].copy_from_slice(&self.sequence.to_be_bytes());
                header[16..20].copy_from_slice(&self.observation_domain.to_be_bytes());
                &header[..]
            }
            FlowVersion::Ipfix => {
                header[0..2].copy_from_slice(&field::IPFIX_VERSION.to_be_bytes());
                header[2..4].copy_from_slice(&(self.buf.len() as u16).to_be_bytes());
                header[4..8].copy_from_slice(&clock.unix_secs().to_be_bytes());
                header[8..12].copy_from_slice(&self.sequence.to_be_bytes());
                header[12..16].copy_from_slice(&self.observation_domain.to_be_bytes());
                &header[..field::IPFIX_HEADER_LEN]
            }
        };
        self.buf[..header.len()].copy_from_slice(header);
    }
}
