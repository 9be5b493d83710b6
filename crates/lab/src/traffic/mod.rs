//! Traffic between lab pods: the servers a pod runs ([`PodServers`]), the kinds of traffic a
//! client sends ([`Traffic`]) and what came of it ([`TrafficReport`]), and [`Lab::drive`],
//! which runs a client in one pod against the servers of another.
//!
//! Payloads are deterministic: byte `k` of a stream is `(k % 251) as u8`; the UDP datagrams and
//! TCP echo messages of one run are consecutive slices of that stream, so datagram `i` of size
//! `s` carries bytes `i*s .. (i+1)*s`.

mod clients;
pub(crate) mod servers;

use std::net::Ipv4Addr;
use std::time::Duration;

use podtap_cluster::PodRef;

use crate::netns::in_netns;
use crate::{Lab, LabError};

pub use servers::{
    ECHO_PORT, HTTP_PORT, PeerCount, PodServers, SINK_PORT, ServerCounters, ServerStats,
};

/// What to send from one pod to another. `size` is the UDP or TCP payload size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traffic {
    /// `count` datagrams to UDP echo (port 7), one at a time, each waiting up to 1 s for its
    /// echo.
    UdpEcho { count: u32, size: usize },
    /// `count` datagrams to the UDP sink (port 9), as fast as possible or paced at `rate_pps`;
    /// the report says what the sink received.
    UdpFlood {
        count: u32,
        size: usize,
        rate_pps: Option<u32>,
    },
    /// `messages` messages of `size` bytes over one connection to TCP echo (port 7), each
    /// waiting for its echo.
    TcpEcho { messages: u32, size: usize },
    /// One connection writing `bytes` bytes to the TCP sink (port 9); the report says what the
    /// sink received.
    TcpBulk { bytes: u64 },
    /// `requests` HTTP/1.1 `GET /` on a keep-alive connection to port 8080.
    HttpGet { requests: u32 },
    /// `count` ICMP echo requests (56-byte payload) on a raw socket, each waiting up to 1 s.
    Ping { count: u32 },
}

impl Traffic {
    /// Whether the report needs the counters of the destination's sink.
    fn needs_sink_counters(&self) -> bool {
        matches!(self, Traffic::UdpFlood { .. } | Traffic::TcpBulk { .. })
    }

    /// Short name of the traffic kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Traffic::UdpEcho { .. } => "udp-echo",
            Traffic::UdpFlood { .. } => "udp-flood",
            Traffic::TcpEcho { .. } => "tcp-echo",
            Traffic::TcpBulk { .. } => "tcp-bulk",
            Traffic::HttpGet { .. } => "http-get",
            Traffic::Ping { .. } => "ping",
        }
    }
}

/// What a traffic run sent and got back. "Packets" are datagrams (UDP), messages (TCP echo),
/// requests and 200 responses (HTTP), echo requests and replies (ping), or connections (TCP
/// bulk); bytes are payload bytes (HTTP: request bytes sent, response body bytes received).
/// For sinks (UDP flood, TCP bulk), `received_*` is what the sink counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficReport {
    /// Packets (see the type's doc) sent.
    pub sent_packets: u64,
    /// Payload bytes sent.
    pub sent_bytes: u64,
    /// Packets received back, or counted by the sink.
    pub received_packets: u64,
    /// Payload bytes received back, or counted by the sink.
    pub received_bytes: u64,
    /// Timeouts, mismatched replies, refused or failed operations.
    pub errors: u64,
    /// Time the client ran.
    pub elapsed: Duration,
}

/// Fills `buf` with the deterministic stream pattern starting at stream offset `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (k, b) in (offset..).zip(buf.iter_mut()) {
        *b = (k % 251) as u8;
    }
}

impl Lab {
    /// Sends `traffic` from pod `from` to pod `to`. Servers in `to` are started for the
    /// duration unless this process already runs them there; if another process runs them
    /// (their ports stay in use, see [`PodServers::start`]), echo and HTTP traffic use those,
    /// while sink traffic fails with [`LabError::ForeignServers`].
    pub fn drive(
        &self,
        from: &PodRef,
        to: &PodRef,
        traffic: &Traffic,
    ) -> Result<TrafficReport, LabError> {
        let from_netns = self.pod_netns(from)?.to_string();
        let to_netns = self.pod_netns(to)?;
        let to_ip: Ipv4Addr = self
            .pod(to)
            .and_then(|p| p.ip.parse().ok())
            .ok_or_else(|| self.unknown_pod(to))?;

        let mut owned = None;
        let mut counters = None;
        if !matches!(traffic, Traffic::Ping { .. }) {
            counters = servers::running_in(to_netns);
            if counters.is_none() {
                match PodServers::start(to_netns, to_ip) {
                    Ok(s) => {
                        counters = Some(s.counters());
                        owned = Some(s);
                    }
                    Err(LabError::Socket { source, .. })
                        if source.kind() == std::io::ErrorKind::AddrInUse => {}
                    Err(e) => return Err(e),
                }
            }
            if counters.is_none() && traffic.needs_sink_counters() {
                return Err(LabError::ForeignServers {
                    netns: to_netns.to_string(),
                    kind: traffic.kind().to_string(),
                });
            }
        }
        let traffic = traffic.clone();
        let report = in_netns(&from_netns, move || {
            clients::run(to_ip, &traffic, counters.as_ref())
        })?;
        drop(owned);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_one_stream() {
        let mut whole = vec![0u8; 600];
        fill_pattern(0, &mut whole);
        assert_eq!(whole[250], 250);
        assert_eq!(whole[251], 0);
        let mut part = vec![0u8; 100];
        fill_pattern(300, &mut part);
        assert_eq!(&whole[300..400], &part[..]);
    }
}
