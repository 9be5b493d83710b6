//! The in-kernel prefilter: which packets of a tapped pod are copied at all. It is evaluated by
//! the tap program from maps, so it changes without reloading or re-attaching anything.
//!
//! Syntax: conditions joined by `and`, each at most once; a comma list inside one condition
//! means any of them.
//!
//! ```text
//! net 10.244.1.0/24,fd00::/8 and proto tcp,udp and port 80,443
//! ```
//!
//! `net` matches the source or destination address, `proto` the IP protocol (name or number),
//! `port` the TCP/UDP/SCTP source or destination port. An empty prefilter copies everything;
//! a non-empty one copies only IP packets that match every condition. (Full tcpdump-style
//! filters run in the broker, where they can be as rich as needed.)

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// A parsed prefilter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefilter {
    /// Networks: the source or destination must be in one of them (empty: no condition).
    pub networks: Vec<Network>,
    /// IP protocols (empty: no condition).
    pub protocols: BTreeSet<u8>,
    /// Ports (empty: no condition).
    pub ports: BTreeSet<u16>,
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Network {
    /// The address as IPv4-mapped IPv6 and the prefix length over 128 bits, as the LPM trie
    /// holds it.
    pub fn mapped(&self) -> ([u8; 16], u32) {
        match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + u32::from(self.prefix)),
            IpAddr::V6(a) => (a.octets(), u32::from(self.prefix)),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Every problem found in a prefilter expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prefilter {input:?}: {}", problems.join("; "))]
pub struct PrefilterError {
    /// The expression as given.
    pub input: String,
    /// What is wrong, one entry per problem.
    pub problems: Vec<String>,
}

impl Prefilter {
    /// Parses a prefilter expression, reporting every problem at once.
    pub fn parse(input: &str) -> Result<Prefilter, PrefilterError> {
        let mut out = Prefilter::default();
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        if input.trim().is_empty() {
            return Ok(out);
        }
        for (i, term) in split_and(input).into_iter().enumerate() {
            let mut words = term.split_whitespace();
            let (Some(kind), Some(values), None) = (words.next(), words.next(), words.next())
            else {
                problems.push(format!(
                    "condition {} {term:?}: expected `net LIST`, `proto LIST` or `port LIST`",
                    i + 1
                ));
                continue;
            };
            if !seen.insert(kind.to_string()) && matches!(kind, "net" | "proto" | "port") {
                problems.push(format!(
                    "`{kind}` given twice: put all values in one comma list"
                ));
                continue;
            }
            for value in values.split(',') {
                match kind {
                    "net" => match parse_network(value) {
                        Ok(n) => out.networks.push(n),
                        Err(e) => problems.push(e),
                    },
                    "proto" => match parse_protocol(value) {
                        Ok(p) => {
                            out.protocols.insert(p);
                        }
                        Err(e) => problems.push(e),
                    },
                    "port" => match value.parse::<u16>() {
                        Ok(p) => {
                            out.ports.insert(p);
                        }
                        Err(_) => problems.push(format!("port {value:?} is not a number 0-65535")),
                    },
                    other => {
                        problems.push(format!("unknown condition {other:?} (net, proto or port)"));
                        break;
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(PrefilterError {
                input: input.to_string(),
                problems,
            })
        }
    }

    /// The `FILTER_*` flags of the active conditions.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if !self.networks.is_empty() {
            f |= podtap_abi::FILTER_CIDR;
        }
        if !self.protocols.is_empty() {
            f |= podtap_abi::FILTER_PROTO;
        }
        if !self.ports.is_empty() {
            f |= podtap_abi::FILTER_PORT;
        }
        f
    }

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.flags() == 0
    }
}

impl fmt::Display for Prefilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms = Vec::new();
        if !self.networks.is_empty() {
            let v: Vec<String> = self.networks.iter().map(|n| n.to_string()).collect();
            terms.push(format!("net {}", v.join(",")));
        }
        if !self.protocols.is_empty() {
            let v: Vec<String> = self.protocols.iter().map(|p| protocol_name(*p)).collect();
            terms.push(format!("proto {}", v.join(",")));
        }
        if !self.ports.is_empty() {
            let v: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
            terms.push(format!("port {}", v.join(",")));
        }
        f.write_str(&terms.join(" and "))
    }
}

/// Splits on the word `and`, allowing spaces around commas (`port 80, 443`).
fn split_and(input: &str) -> Vec<String> {
    let normalized = input.replace(", ", ",").replace(" ,", ",");
    let mut terms = vec![String::new()];
    for word in normalized.split_whitespace() {
        if word == "and" {
            terms.push(String::new());
        } else if let Some(last) = terms.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    terms
}

fn parse_network(s: &str) -> Result<Network, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("net {s:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(format!("net {s:?}: prefix length must be 0-{max}")),
        },
    };
    Ok(Network { addr, prefix })
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    match s.to_ascii_lowercase().as_str() {
        "icmp" => Ok(1),
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp6" | "ipv6-icmp" | "icmpv6" => Ok(58),
        "sctp" => Ok(132),
        "gre" => Ok(47),
        other => other.parse::<u8>().map_err(|_| {
            format!("proto {s:?}: not a protocol name (icmp, tcp, udp, icmp6, sctp, gre) or number 0-255")
        }),
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmp6".into(),
        132 => "sctp".into(),
        47 => "gre".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_conditions() {
        let f = Prefilter::parse("net 10.244.1.0/24,fd00::/8 and proto tcp, udp and port 80,443")
            .unwrap();
        assert_eq!(f.networks.len(), 2);
        assert_eq!(f.protocols, [6, 17].into());
        assert_eq!(f.ports, [80, 443].into());
        assert_eq!(f.flags(), 0b111);
        assert_eq!(
            f.to_string(),
            "net 10.244.1.0/24,fd00::/8 and proto tcp,udp and port 80,443"
        );
        assert_eq!(Prefilter::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn empty_is_everything() {
        assert!(Prefilter::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn ipv4_maps_into_ipv6() {
        let n = parse_network("10.1.0.0/16").unwrap();
        let (addr, len) = n.mapped();
        assert_eq!(len, 112);
        assert_eq!(&addr[10..], &[0xff, 0xff, 10, 1, 0, 0]);
    }

    #[test]
    fn reports_every_problem() {
        let err = Prefilter::parse("net 10.0.0.0/33 and proto bogus and port 70000 and color red")
            .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        for needle in ["prefix length", "bogus", "70000", "color"] {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
        assert!(Prefilter::parse("port 80 and port 81").is_err());
        assert!(Prefilter::parse("port").is_err());
    }
}
