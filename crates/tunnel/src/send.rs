//! Sending copies into a tunnel: one connected socket per far end, a header written per copy
//! and gathered with the frame into one datagram (no copy of the frame in user space).

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};

use podtap_wire::gre::{self, GrePacket, GreRepr};
use podtap_wire::vxlan::{self, VxlanPacket, VxlanRepr};

use crate::endpoint::{TunnelEndpoint, TunnelKind};
use crate::sock;

/// What to do with a copy that does not fit in the path MTU once encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Oversize {
    /// Send it anyway and let IP fragment the tunnel packet (the receiver reassembles; nothing is
    /// lost unless a fragment is). The default.
    #[default]
    Fragment,
    /// Cut the copy so that the tunnel packet fits (the copy's tail is lost; counted).
    Truncate,
}

impl std::str::FromStr for Oversize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fragment" => Ok(Oversize::Fragment),
            "truncate" => Ok(Oversize::Truncate),
            _ => Err(format!(
                "unknown oversize policy {s:?} (fragment or truncate)"
            )),
        }
    }
}

/// What the tunnel header says besides the encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// podtap's labels (agent to broker): VNI or GRE policy key = the policy, plus the tap id
    /// and direction (VXLAN GBP id, low half of the GRE key).
    Podtap {
        /// VNI (VXLAN) or 16-bit policy key (L2GRE).
        policy: u32,
    },
    /// Plain encapsulation for tools (broker to tool port): this VNI, or this GRE key (none:
    /// no key), nothing else.
    Plain {
        /// VNI (VXLAN) or the whole 32-bit GRE key.
        id: Option<u32>,
    },
}

/// What a sender counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendCounters {
    /// Copies sent.
    pub packets: u64,
    /// Their frame bytes (without tunnel headers).
    pub bytes: u64,
    /// Copies larger than the path MTU allows, sent fragmented.
    pub fragmented: u64,
    /// Copies cut to fit the path MTU.
    pub truncated: u64,
    /// Copies the kernel refused (e.g. socket buffer full, no route): lost.
    pub errors: u64,
    /// ICMP "unreachable" reports from the far end (nothing listening there yet); the copy
    /// that collected the report is sent again.
    pub refused: u64,
}

impl SendCounters {
    /// Field-wise sum (the senders of several nodes).
    pub fn add(&mut self, o: &SendCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.fragmented += o.fragmented;
        self.truncated += o.truncated;
        self.errors += o.errors;
        self.refused += o.refused;
    }
}

enum Socket {
    Udp(UdpSocket),
    Raw(OwnedFd),
}

impl Socket {
    fn fd(&self) -> i32 {
        match self {
            Socket::Udp(s) => s.as_raw_fd(),
            Socket::Raw(f) => f.as_raw_fd(),
        }
    }
}

/// Sends copies to one tunnel endpoint under one policy label.
pub struct TunnelSender {
    socket: Socket,
    endpoint: TunnelEndpoint,
    labels: Labels,
    /// Largest frame that fits in one unfragmented tunnel packet.
    max_frame: usize,
    oversize: Oversize,
    counters: SendCounters,
    last_error: Option<io::ErrorKind>,
}

/// IPv4 header without options.
const IPV4_HEADER: usize = 20;
/// IPv6 fixed header.
const IPV6_HEADER: usize = 40;
/// UDP header.
const UDP_HEADER: usize = 8;
/// podtap's GRE header: base + key.
const GRE_HEADER: usize = 8;

impl TunnelSender {
    /// Opens a socket to `endpoint` (in the calling thread's network namespace) for copies of
    /// the policy `policy` (the VNI for VXLAN, the 16-bit policy key for L2GRE), labelled with
    /// their tap point and direction.
    pub fn connect(
        endpoint: TunnelEndpoint,
        policy: u32,
        oversize: Oversize,
    ) -> io::Result<TunnelSender> {
        Self::open(endpoint, Labels::Podtap { policy }, oversize)
    }

    /// Opens a socket to `endpoint` with the given labels (see [`Labels`]).
    pub fn open(
        endpoint: TunnelEndpoint,
        labels: Labels,
        oversize: Oversize,
    ) -> io::Result<TunnelSender> {
        let v6 = endpoint.addr.is_ipv6();
        let ip_header = if v6 { IPV6_HEADER } else { IPV4_HEADER };
        let (socket, overhead) = match endpoint.kind {
            TunnelKind::Vxlan => {
                let bind = if v6 { "[::]:0" } else { "0.0.0.0:0" };
                let s = UdpSocket::bind(bind)?;
                s.connect(endpoint.addr)?;
                (Socket::Udp(s), ip_header + UDP_HEADER + vxlan::HEADER_LEN)
            }
            TunnelKind::L2gre => {
                let fd = sock::raw_gre_v4()?;
                sock::connect(&fd, endpoint.addr)?;
                sock::drop_all_input(fd.as_raw_fd())?;
                (Socket::Raw(fd), ip_header + GRE_HEADER)
            }
        };
        sock::allow_fragmentation(socket.fd(), v6)?;
        let mtu = sock::path_mtu(socket.fd(), v6).unwrap_or(1500);
        Ok(TunnelSender {
            socket,
            endpoint,
            labels,
            max_frame: mtu.saturating_sub(overhead),
            oversize,
            counters: SendCounters::default(),
            last_error: None,
        })
    }

    /// The far end.
    pub fn endpoint(&self) -> TunnelEndpoint {
        self.endpoint
    }

    /// The largest copy that travels unfragmented.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sends one copy labelled with its tap point and direction. Failures are counted (and the
    /// first of each kind logged), never returned: a tap must not stop over a lost copy.
    pub fn send(&mut self, tap: u16, to_pod: bool, frame: &[u8]) {
        self.send_labelled(self.labels, tap, to_pod, frame);
    }

    /// Sends one copy under the policy label `policy` instead of the sender's own (one socket
    /// to a broker carries every policy). True if it went out.
    pub fn send_policy(&mut self, policy: u32, tap: u16, to_pod: bool, frame: &[u8]) -> bool {
        self.send_labelled(Labels::Podtap { policy }, tap, to_pod, frame)
    }

    fn send_labelled(&mut self, labels: Labels, tap: u16, to_pod: bool, frame: &[u8]) -> bool {
        let mut frame = frame;
        if frame.len() > self.max_frame {
            match self.oversize {
                Oversize::Fragment => self.counters.fragmented += 1,
                Oversize::Truncate => {
                    frame = &frame[..self.max_frame];
                    self.counters.truncated += 1;
                }
            }
        }
        let label = vxlan::group_policy_id(tap, to_pod);
        let (id, gbp, key) = match labels {
            Labels::Podtap { policy } => (
                policy,
                Some(label),
                Some(gre::gre_key(policy as u16, tap, to_pod)),
            ),
            Labels::Plain { id } => (id.unwrap_or(0), None, id),
        };
        let mut header = [0u8; 16];
        let header_len = match self.endpoint.kind {
            TunnelKind::Vxlan => {
                let repr = VxlanRepr {
                    vni: id,
                    group_policy_id: gbp,
                };
                let mut packet = VxlanPacket::new_unchecked(&mut header[..vxlan::HEADER_LEN]);
                repr.emit(&mut packet);
                vxlan::HEADER_LEN
            }
            TunnelKind::L2gre => {
                let repr = GreRepr {
                    protocol: gre::PROTOCOL_ETHERNET,
                    key,
                    sequence: None,
                    checksum: false,
                };
                let len = repr.header_len();
                // No checksum: the header alone is written, the frame is gathered on send.
                let mut packet = GrePacket::new_unchecked(&mut header[..len]);
                if repr.emit(&mut packet, |_| {}).is_err() {
                    self.counters.errors += 1;
                    return false;
                }
                len
            }
        };
        let mut sent = sock::send2(self.socket.fd(), &header[..header_len], frame);
        if let Err(e) = &sent
            && e.kind() == io::ErrorKind::ConnectionRefused
        {
            // A connected socket reports an earlier ICMP error on the next send, which then
            // did not go out: note it and send again.
            self.counters.refused += 1;
            sent = sock::send2(self.socket.fd(), &header[..header_len], frame);
        }
        match sent {
            Ok(_) => {
                self.counters.packets += 1;
                self.counters.bytes += frame.len() as u64;
                true
            }
            Err(e) => {
                self.counters.errors += 1;
                if self.last_error != Some(e.kind()) {
                    tracing::warn!(endpoint = %self.endpoint, "sending copies: {e} (counting further failures)");
                    self.last_error = Some(e.kind());
                }
                false
            }
        }
    }

    /// What was sent and lost so far.
    pub fn counters(&self) -> SendCounters {
        self.counters
    }
}
