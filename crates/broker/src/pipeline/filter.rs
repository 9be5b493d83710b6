//! The `filter` stage: keeps the packets that match a tcpdump expression and/or typed L2-L4
//! fields (or, with `action: drop`, drops them and keeps the rest).
//!
//! ```yaml
//! - type: filter
//!   expression: "tcp port 80 and not net 10.0.0.0/8"   # tcpdump / libpcap syntax
//!   src_mac: ["02:42:ac:11:00:02"]
//!   dst_mac: ["02:42:ac:11:00:03"]
//!   vlan: [100, 200]
//!   ethertype: [ipv4, ipv6, arp, 0x88cc]
//!   ip_version: 4
//!   src_cidr: [10.0.0.0/8]
//!   dst_cidr: ["2001:db8::/32"]
//!   cidr: [192.168.1.7]              # source or destination
//!   protocol: [tcp, udp, icmp, icmp6, sctp, gre, 89]
//!   src_port: [53]
//!   dst_port: [443, "8000-8080"]
//!   port: [80]                       # source or destination
//!   tcp_flags: { set: [syn], unset: [ack] }
//!   action: keep                     # keep (default) what matches, or drop it
//! ```
//!
//! Every field given must match (AND); within a list, any entry may match (OR). A packet
//! without the layer a field is about (a port on ICMP, an address on ARP, or a header cut short
//! by the agent's snap length or an earlier `slice`) does not match that field. Typed fields
//! look through up to four VLAN tags; IPv6 extension headers are followed to the transport
//! header; later IP fragments have no ports or TCP flags, so they match no port or flag field
//! (as with libpcap).
//!
//! The expression is compiled once by libpcap and run as a BPF program over the frame as it is
//! when it reaches this stage: after a `slice`, libpcap sees only the bytes kept (a field past
//! the cut does not match) and `len`, `greater` and `less` compare the kept length. libpcap's
//! own rules apply: VLAN-tagged frames match `tcp port 80` only as `vlan and tcp port 80`.
//!
//! Drop reasons: `unmatched` (`action: keep`, the packet does not match), `matched`
//! (`action: drop`, it does).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Verdict;
use super::layers::{Layers, ethertype, ip_proto};
use crate::packet::Packet;

/// Configuration of the `filter` stage.
// Lists are boxed slices rather than `Vec`s to keep this, the largest stage configuration,
// small within `StageConfig`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// A tcpdump (libpcap) filter expression, e.g. `tcp port 80 and not net 10.0.0.0/8`. It sees
    /// the frame as it is at this stage: after a `slice`, only the bytes kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Source MAC addresses (any of), e.g. `02:42:ac:11:00:02`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub src_mac: Box<[String]>,
    /// Destination MAC addresses (any of).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub dst_mac: Box<[String]>,
    /// VLAN IDs (any of, 0-4095): a frame matches when any of its tags, outer or inner, has one.
    /// Untagged frames do not match.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub vlan: Box<[u32]>,
    /// EtherTypes after any VLAN tags (any of): `ipv4`, `ipv6`, `arp`, or a number (decimal, or
    /// hexadecimal as `"0x88cc"`).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub ethertype: Box<[NumberOrName]>,
    /// IP version: 4 or 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Source networks (any of), IPv4 or IPv6: `10.0.0.0/8`, `2001:db8::/32`, or an address.
    /// Only IP headers are looked at (libpcap's `net` and `host` also match ARP's addresses).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub src_cidr: Box<[String]>,
    /// Destination networks (any of), as in `src_cidr`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub dst_cidr: Box<[String]>,
    /// Networks (any of) that the source or the destination is in, as in `src_cidr`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub cidr: Box<[String]>,
    /// IP protocols (any of), after IPv6 extension headers: `tcp`, `udp`, `icmp`, `icmp6`,
    /// `sctp`, `gre`, or a number (0-255).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub protocol: Box<[NumberOrName]>,
    /// TCP, UDP, UDP-Lite or SCTP source ports (any of): numbers, or ranges such as `"8000-8080"`
    /// (both ends included).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub src_port: Box<[PortSpec]>,
    /// Destination ports (any of), as in `src_port`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub dst_port: Box<[PortSpec]>,
    /// Ports (any of) that the source or the destination port is, as in `src_port`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub port: Box<[PortSpec]>,
    /// TCP flags that must be set and flags that must be clear (only TCP packets match, IPv4 or
    /// IPv6; libpcap's `tcp[tcpflags]` sees IPv4 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlagsMatch>,
    /// What to do with a matching packet: `keep` it (default; the others are dropped) or `drop`
    /// it (the others are kept).
    #[serde(default)]
    pub action: FilterAction,
}

/// A number, or a name for one (EtherTypes, IP protocols).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrName {
    /// A number as such.
    Number(u64),
    /// A name (`tcp`, `ipv6`, ...) or a number in text (`"0x88cc"`).
    Name(String),
}

/// A port or a port range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// One port.
    Number(u64),
    /// A range `"low-high"` (both included), or one port in text.
    Range(String),
}

/// TCP flags to test.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFlagsMatch {
    /// Flags that must all be set: `fin`, `syn`, `rst`, `psh`, `ack`, `urg`, `ece`, `cwr`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub set: Box<[String]>,
    /// Flags that must all be clear (same names).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub unset: Box<[String]>,
}

/// What a filter does with the packets that match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Keep what matches, drop the rest.
    #[default]
    Keep,
    /// Drop what matches, keep the rest.
    Drop,
}

fn is_empty<T>(list: &[T]) -> bool {
    list.is_empty()
}

const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];

impl FilterConfig {
    /// Every problem with these settings (libpcap's message for a bad expression).
    pub fn problems(&self) -> Vec<String> {
        let (_, mut problems) = self.compile_fields();
        if let Some(expr) = &self.expression
            && let Err(m) = compile_expression(expr)
        {
            problems.push(m);
        }
        problems
    }

    /// The typed fields, compiled, and every problem with them.
    fn compile_fields(&self) -> (FieldMatch, Vec<String>) {
        let mut p = Vec::new();
        let mut m = FieldMatch {
            src_mac: macs("src_mac", &self.src_mac, &mut p),
            dst_mac: macs("dst_mac", &self.dst_mac, &mut p),
            vlan: self
                .vlan
                .iter()
                .filter_map(|&v| u16::try_from(v).ok())
                .collect(),
            ethertype: numbers("ethertype", &self.ethertype, 0xffff, ethertype_name, &mut p)
                .into_iter()
                .map(|n| n as u16)
                .collect(),
            ip_version: self.ip_version,
            src_cidr: cidrs("src_cidr", &self.src_cidr, &mut p),
            dst_cidr: cidrs("dst_cidr", &self.dst_cidr, &mut p),
            cidr: cidrs("cidr", &self.cidr, &mut p),
            protocol: numbers("protocol", &self.protocol, 255, protocol_name, &mut p)
                .into_iter()
                .map(|n| n as u8)
                .collect(),
            src_port: ports("src_port", &self.src_port, &mut p),
            dst_port: ports("dst_port", &self.dst_port, &mut p),
            port: ports("port", &self.port, &mut p),
            tcp_flags: None,
            needs_layers: false,
        };
        for v in self.vlan.iter().filter(|&&v| v > 4095) {
            p.push(format!("vlan {v} is not a VLAN ID (0-4095)"));
        }
        if let Some(v) = self.ip_version {
            if v != 4 && v != 6 {
                p.push(format!("ip_version {v} is neither 4 nor 6"));
            }
            for (field, list) in [
                ("src_cidr", &m.src_cidr),
                ("dst_cidr", &m.dst_cidr),
                ("cidr", &m.cidr),
            ] {
                for c in list
                    .iter()
                    .filter(|c| (c.v6 && v == 4) || (!c.v6 && v == 6))
                {
                    p.push(format!(
                        "{field} {} is IPv{} but ip_version is {v}: it can never match",
                        c.text,
                        if c.v6 { 6 } else { 4 }
                    ));
                }
            }
        }
        if let Some(flags) = &self.tcp_flags {
            let set = tcp_flags("tcp_flags.set", &flags.set, &mut p);
            let unset = tcp_flags("tcp_flags.unset", &flags.unset, &mut p);
            if set & unset != 0 {
                p.push("tcp_flags: a flag is both in set and in unset".into());
            }
            if flags.set.is_empty() && flags.unset.is_empty() {
                p.push("tcp_flags: give set, unset or both".into());
            }
            m.tcp_flags = Some((set, unset));
        }
        let has_ports = !(m.src_port.is_empty() && m.dst_port.is_empty() && m.port.is_empty());
        if !m.protocol.is_empty() {
            let with_ports = [
                ip_proto::TCP,
                ip_proto::UDP,
                ip_proto::UDPLITE,
                ip_proto::SCTP,
            ];
            if has_ports && !m.protocol.iter().any(|p| with_ports.contains(p)) {
                p.push(
                    "src_port/dst_port/port: only TCP, UDP, UDP-Lite and SCTP have ports, and \
                     protocol has none of them"
                        .into(),
                );
            }
            if m.tcp_flags.is_some() && !m.protocol.contains(&ip_proto::TCP) {
                p.push("tcp_flags: protocol does not include tcp".into());
            }
        }
        let l3_fields = self.ip_version.is_some()
            || !(m.src_cidr.is_empty() && m.dst_cidr.is_empty() && m.cidr.is_empty())
            || !m.protocol.is_empty()
            || has_ports
            || m.tcp_flags.is_some();
        if l3_fields
            && !m.ethertype.is_empty()
            && !m
                .ethertype
                .iter()
                .any(|&e| e == ethertype::IPV4 || e == ethertype::IPV6)
        {
            p.push("ethertype has neither ipv4 nor ipv6, but IP fields are given".into());
        }
        m.needs_layers = l3_fields || !m.vlan.is_empty() || !m.ethertype.is_empty();
        let any_field = m.needs_layers || !(self.src_mac.is_empty() && self.dst_mac.is_empty());
        if !any_field && self.expression.is_none() {
            p.push(
                "nothing to match: give an expression and/or at least one of src_mac, dst_mac, \
                 vlan, ethertype, ip_version, src_cidr, dst_cidr, cidr, protocol, src_port, \
                 dst_port, port, tcp_flags"
                    .into(),
            );
        }
        (m, p)
    }
}

/// Compiles a tcpdump expression for Ethernet frames.
fn compile_expression(expr: &str) -> Result<pcap::BpfProgram, String> {
    if expr.trim().is_empty() {
        return Err("expression is empty (leave it out to match every packet)".into());
    }
    let message = |e: pcap::Error| match e {
        pcap::Error::PcapError(m) => format!("expression {expr:?}: {m}"),
        other => format!("expression {expr:?}: {other}"),
    };
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(message)?;
    dead.compile(expr, true).map_err(message)
}

fn macs(field: &str, list: &[String], problems: &mut Vec<String>) -> Vec<[u8; 6]> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match parse_mac(text) {
            Some(mac) => out.push(mac),
            None => problems.push(format!(
                "{field}[{i}] {text:?} is not a MAC address (like 02:42:ac:11:00:02)"
            )),
        }
    }
    out
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn ethertype_name(name: &str) -> Option<u64> {
    Some(u64::from(match name {
        "ipv4" | "ip" => ethertype::IPV4,
        "ipv6" | "ip6" => ethertype::IPV6,
        "arp" => ethertype::ARP,
        _ => return None,
    }))
}

fn protocol_name(name: &str) -> Option<u64> {
    Some(u64::from(match name {
        "tcp" => ip_proto::TCP,
        "udp" => ip_proto::UDP,
        "icmp" => ip_proto::ICMP,
        "icmp6" | "icmpv6" => ip_proto::ICMPV6,
        "sctp" => ip_proto::SCTP,
        "gre" => ip_proto::GRE,
        _ => return None,
    }))
}

fn numbers(
    field: &str,
    list: &[NumberOrName],
    max: u64,
    name: fn(&str) -> Option<u64>,
    problems: &mut Vec<String>,
) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let (n, text) = match v {
            NumberOrName::Number(n) => (Some(*n), n.to_string()),
            NumberOrName::Name(s) => (
                name(&s.to_ascii_lowercase()).or_else(|| parse_number(s)),
                format!("{s:?}"),
            ),
        };
        match n {
            Some(n) if n <= max => out.push(n),
            Some(_) => problems.push(format!("{field}[{i}] {text} is more than {max}")),
            None => problems.push(format!(
                "{field}[{i}] {text} is not a known name or a number"
            )),
        }
    }
    out
}

fn ports(field: &str, list: &[PortSpec], problems: &mut Vec<String>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for (i, spec) in list.iter().enumerate() {
        let range = match spec {
            PortSpec::Number(n) => u16::try_from(*n).ok().map(|p| (p, p)),
            PortSpec::Range(s) => {
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                    (Ok(lo), Ok(hi)) if lo <= hi => Some((lo, hi)),
                    _ => None,
                }
            }
        };
        match range {
            Some(r) => out.push(r),
            None => problems.push(format!(
                "{field}[{i}] {} is not a port (0-65535) or a range like \"8000-8080\"",
                match spec {
                    PortSpec::Number(n) => n.to_string(),
                    PortSpec::Range(s) => format!("{s:?}"),
                }
            )),
        }
    }
    out
}

fn tcp_flags(field: &str, names: &[String], problems: &mut Vec<String>) -> u8 {
    let mut bits = 0;
    for (i, name) in names.iter().enumerate() {
        match TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, bit)) => bits |= bit,
            None => problems.push(format!(
                "{field}[{i}] {name:?} is not a TCP flag (fin, syn, rst, psh, ack, urg, ece, cwr)"
            )),
        }
    }
    bits
}

/// A network: address bits and mask, IPv4 in the low 32 bits.
#[derive(Debug, Clone)]
struct Cidr {
    text: String,
    v6: bool,
    net: u128,
    mask: u128,
}

impl Cidr {
    fn contains(&self, v6: bool, addr: u128) -> bool {
        self.v6 == v6 && addr & self.mask == self.net
    }
}

fn cidrs(field: &str, list: &[String], problems: &mut Vec<String>) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.as_str(), None),
        };
        let Ok(addr) = addr.trim().parse::<std::net::IpAddr>() else {
            problems.push(format!(
                "{field}[{i}] {text:?} is not an address or network (like 10.0.0.0/8)"
            ));
            continue;
        };
        let (v6, bits, width) = match addr {
            std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32u32),
            std::net::IpAddr::V6(a) => (true, u128::from(a), 128u32),
        };
        let prefix = match len.map(|l| l.trim().parse::<u32>()) {
            None => width,
            Some(Ok(l)) if l <= width => l,
            Some(_) => {
                problems.push(format!(
                    "{field}[{i}] {text:?}: the prefix length must be 0-{width}"
                ));
                continue;
            }
        };
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        let mask = all & !(all.checked_shr(prefix).unwrap_or(0));
        if bits & !mask != 0 {
            problems.push(format!(
                "{field}[{i}] {text:?} has bits set after the /{prefix} prefix"
            ));
            continue;
        }
        out.push(Cidr {
            text: text.clone(),
            v6,
            net: bits,
            mask,
        });
    }
    out
}

/// The typed fields, ready to test.
#[derive(Debug, Clone)]
struct FieldMatch {
    src_mac: Vec<[u8; 6]>,
    dst_mac: Vec<[u8; 6]>,
    vlan: Vec<u16>,
    ethertype: Vec<u16>,
    ip_version: Option<u8>,
    src_cidr: Vec<Cidr>,
    dst_cidr: Vec<Cidr>,
    cidr: Vec<Cidr>,
    protocol: Vec<u8>,
    src_port: Vec<(u16, u16)>,
    dst_port: Vec<(u16, u16)>,
    port: Vec<(u16, u16)>,
    /// Flags that must be set, flags that must be clear.
    tcp_flags: Option<(u8, u8)>,
    /// Whether any field beyond the MACs is given.
    needs_layers: bool,
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
}

fn mac_at(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

fn addr_bits(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0u128, |acc, &b| acc << 8 | u128::from(b))
}

impl FieldMatch {
    fn matches(&self, frame: &[u8]) -> bool {
        if !self.src_mac.is_empty() && !mac_at(frame, 6).is_some_and(|m| self.src_mac.contains(&m))
        {
            return false;
        }
        if !self.dst_mac.is_empty() && !mac_at(frame, 0).is_some_and(|m| self.dst_mac.contains(&m))
        {
            return false;
        }
        if !self.needs_layers {
            return true;
        }
        let l = Layers::parse(frame);
        if !self.vlan.is_empty()
            && !l.vlan_ids[..l.vlan_count]
                .iter()
                .any(|id| self.vlan.contains(id))
        {
            return false;
        }
        if !self.ethertype.is_empty() && !l.ethertype.is_some_and(|e| self.ethertype.contains(&e)) {
            return false;
        }
        if self.ip_version.is_some_and(|v| v != l.ip_version) {
            return false;
        }
        if !(self.src_cidr.is_empty() && self.dst_cidr.is_empty() && self.cidr.is_empty()) {
            let Some((src, dst)) = l.ip_addresses(frame) else {
                return false;
            };
            let v6 = l.ip_version == 6;
            let (src, dst) = (addr_bits(src), addr_bits(dst));
            let any = |list: &[Cidr], a: u128| list.iter().any(|c| c.contains(v6, a));
            if !self.src_cidr.is_empty() && !any(&self.src_cidr, src)
                || !self.dst_cidr.is_empty() && !any(&self.dst_cidr, dst)
                || !self.cidr.is_empty() && !any(&self.cidr, src) && !any(&self.cidr, dst)
            {
                return false;
            }
        }
        if !self.protocol.is_empty() && !l.protocol.is_some_and(|p| self.protocol.contains(&p)) {
            return false;
        }
        if !(self.src_port.is_empty() && self.dst_port.is_empty() && self.port.is_empty()) {
            let Some((sp, dp)) = l.ports(frame) else {
                return false;
            };
            if !self.src_port.is_empty() && !in_ranges(&self.src_port, sp)
                || !self.dst_port.is_empty() && !in_ranges(&self.dst_port, dp)
                || !self.port.is_empty() && !in_ranges(&self.port, sp) && !in_ranges(&self.port, dp)
            {
                return false;
            }
        }
        if let Some((set, unset)) = self.tcp_flags {
            let Some(flags) = l.tcp_flags(frame) else {
                return false;
            };
            if flags & set != set || flags & unset != 0 {
                return false;
            }
        }
        true
    }
}

/// The running `filter` stage.
pub struct Filter {
    fields: Box<FieldMatch>,
    expression: Option<String>,
    program: Option<pcap::BpfProgram>,
    action: FilterAction,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("fields", &self.fields)
            .field("expression", &self.expression)
            .field("action", &self.action)
            .finish()
    }
}

impl Filter {
    /// Builds the stage: compiles the typed fields and the expression.
    pub fn new(cfg: &FilterConfig) -> Result<Self, String> {
        let (fields, problems) = cfg.compile_fields();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let program = cfg
            .expression
            .as_deref()
            .map(compile_expression)
            .transpose()?;
        Ok(Filter {
            fields: Box::new(fields),
            expression: cfg.expression.clone(),
            program,
            action: cfg.action,
        })
    }

    /// Whether the packet matches every field and the expression.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.fields.matches(frame) && self.program.as_ref().is_none_or(|p| p.filter(frame))
    }

    /// Keeps or drops the packet per `action`.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        match (self.action, self.matches(&pkt.data)) {
            (FilterAction::Keep, true) | (FilterAction::Drop, false) => Verdict::Keep,
            (FilterAction::Keep, false) => Verdict::Drop("unmatched"),
            (FilterAction::Drop, true) => Verdict::Drop("matched"),
        }
    }
}
