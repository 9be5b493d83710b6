//! Where a tunnel goes: `vxlan://ADDR[:PORT]` or `l2gre://ADDR`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// VXLAN over UDP (with the GBP extension for the tap label).
    Vxlan,
    /// Ethernet over GRE (protocol 0x6558) with a key.
    L2gre,
}

/// A tunnel's far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelEndpoint {
    /// The encapsulation.
    pub kind: TunnelKind,
    /// The far end's address; the port is VXLAN's UDP port (unused for L2GRE).
    pub addr: SocketAddr,
}

/// A tunnel endpoint that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad tunnel endpoint {given:?}: {reason} (expected vxlan://ADDR[:PORT] or l2gre://ADDR)")]
pub struct EndpointError {
    /// The text given.
    pub given: String,
    /// What is wrong.
    pub reason: String,
}

impl TunnelEndpoint {
    /// A VXLAN endpoint.
    pub fn vxlan(addr: SocketAddr) -> Self {
        TunnelEndpoint {
            kind: TunnelKind::Vxlan,
            addr,
        }
    }

    /// An L2GRE endpoint.
    pub fn l2gre(addr: IpAddr) -> Self {
        TunnelEndpoint {
            kind: TunnelKind::L2gre,
            addr: SocketAddr::new(addr, 0),
        }
    }
}

impl FromStr for TunnelEndpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let err = |reason: &str| EndpointError {
            given: s.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| err("no scheme"))?;
        match scheme {
            "vxlan" => {
                let addr = match rest.parse::<SocketAddr>() {
                    Ok(a) => a,
                    Err(_) => {
                        let ip: IpAddr = rest
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse()
                            .map_err(|_| err("not an address"))?;
                        SocketAddr::new(ip, podtap_wire::vxlan::UDP_PORT)
                    }
                };
                if addr.port() == 0 {
                    return Err(err("port 0"));
                }
                Ok(TunnelEndpoint::vxlan(addr))
            }
            "l2gre" => {
                let ip: IpAddr = rest.parse().map_err(|_| err("not an IP address"))?;
                if !ip.is_ipv4() {
                    return Err(err("L2GRE is sent over IPv4 only"));
                }
                Ok(TunnelEndpoint::l2gre(ip))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for TunnelEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TunnelKind::Vxlan => write!(f, "vxlan://{}", self.addr),
            TunnelKind::L2gre => write!(f, "l2gre://{}", self.addr.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, shown) in [
            ("vxlan://198.18.0.101:4789", "vxlan://198.18.0.101:4789"),
            ("vxlan://198.18.0.101", "vxlan://198.18.0.101:4789"),
            ("vxlan://[fd00::1]:8472", "vxlan://[fd00::1]:8472"),
            ("l2gre://198.18.0.101", "l2gre://198.18.0.101"),
        ] {
            assert_eq!(text.parse::<TunnelEndpoint>().unwrap().to_string(), shown);
        }
        for bad in [
            "198.18.0.1",
            "gre://1.2.3.4",
            "vxlan://nope",
            "l2gre://fd00::1",
            "vxlan://1.2.3.4:0",
        ] {
            assert!(bad.parse::<TunnelEndpoint>().is_err(), "{bad}");
        }
    }
}
