//! Receiving tunnels: a UDP socket for VXLAN and a raw socket for GRE, polled together. Every
//! packet that is not a well-formed podtap tunnel packet is counted by reason (and the first of
//! each reason logged), never fatal.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use podtap_wire::gre::{self, GrePacket, GreRepr};
use podtap_wire::vxlan::{VxlanPacket, VxlanRepr};

use crate::sock;

/// The encapsulation a packet arrived in, and its policy label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// VXLAN with this VNI.
    Vxlan {
        /// The VNI (podtap: the policy).
        vni: u32,
    },
    /// L2GRE with this policy key (the high 16 bits of the GRE key; 0 without a key).
    L2gre {
        /// The policy key.
        policy_key: u16,
    },
}

/// A received tunnel packet: what it says, and where its inner frame is in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Encapsulation and policy label.
    pub encap: Encap,
    /// Tap point id (0: not carried).
    pub tap: u16,
    /// Direction: `Some(true)` to the pod, `Some(false)` from it, `None` when not carried.
    pub to_pod: Option<bool>,
    /// The sender (outer source address).
    pub agent: IpAddr,
    /// The inner Ethernet frame, as a range of the receive buffer.
    pub frame: Range<usize>,
}

/// What the receiver counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveCounters {
    /// Well-formed tunnel packets.
    pub packets: u64,
    /// Their inner frame bytes.
    pub bytes: u64,
    /// Packets that are not usable, by reason (`vxlan_truncated`, `not_l2gre`, ...).
    pub malformed: BTreeMap<&'static str, u64>,
    /// Packets the kernel dropped because a receive buffer was full (the broker could not keep
    /// up), as of the last [`TunnelReceiver::refresh_drops`].
    pub socket_dropped: u64,
}

/// The receiving end of podtap's tunnels.
pub struct TunnelReceiver {
    vxlan: UdpSocket,
    gre: Option<OwnedFd>,
    counters: ReceiveCounters,
    /// Which socket to read first next time (fairness).
    gre_first: bool,
}

/// Largest datagram accepted (a 64 KiB frame plus headers).
pub const MAX_DATAGRAM: usize = 65536 + 128;

impl TunnelReceiver {
    /// Binds VXLAN's UDP socket on `address:vxlan_port` and, with `gre`, a raw GRE socket, in
    /// the calling thread's network namespace. Receive buffers are raised to `buffer_bytes`.
    pub fn bind(
        address: IpAddr,
        vxlan_port: u16,
        gre: bool,
        buffer_bytes: i32,
    ) -> io::Result<TunnelReceiver> {
        let vxlan = UdpSocket::bind(SocketAddr::new(address, vxlan_port))?;
        vxlan.set_nonblocking(true)?;
        sock::set_receive_buffer(vxlan.as_raw_fd(), buffer_bytes);
        let gre = if gre {
            let fd = sock::raw_gre_v4()?;
            sock::set_receive_buffer(fd.as_raw_fd(), buffer_bytes);
            Some(fd)
        } else {
            None
        };
        Ok(TunnelReceiver {
            vxlan,
            gre,
            counters: ReceiveCounters::default(),
            gre_first: false,
        })
    }

    /// The VXLAN socket's address (useful when bound to port 0).
    pub fn vxlan_addr(&self) -> io::Result<SocketAddr> {
        self.vxlan.local_addr()
    }

    /// Receives the next usable tunnel packet into `buf`, waiting up to `timeout`. Returns
    /// `None` when nothing usable arrived in time. Unusable packets are counted and skipped.
    pub fn recv(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Option<Received> {
        buf.resize(MAX_DATAGRAM, 0);
        let mut waited = false;
        loop {
            // Drain what is already queued before waiting.
            let order = if self.gre_first {
                [true, false]
            } else {
                [false, true]
            };
            self.gre_first = !self.gre_first;
            for is_gre in order {
                if let Some(r) = self.try_one(is_gre, buf) {
                    return Some(r);
                }
            }
            if waited {
                return None;
            }
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            let vx = self.vxlan.as_raw_fd();
            let ready = match &self.gre {
                Some(g) => sock::wait_readable([vx, g.as_raw_fd()], ms).contains(&true),
                None => sock::wait_readable([vx], ms)[0],
            };
            if !ready {
                return None;
            }
            waited = true;
        }
    }

    /// Reads and decodes one packet from one socket, if any is queued; loops over unusable ones.
    fn try_one(&mut self, is_gre: bool, buf: &mut [u8]) -> Option<Received> {
        loop {
            let fd = if is_gre {
                self.gre.as_ref()?.as_raw_fd()
            } else {
                self.vxlan.as_raw_fd()
            };
            let (n, agent) = match sock::recv_from(fd, buf) {
                Ok(d) => (d.len, d.from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.count("receive_error");
                    return None;
                }
            };
            if n > buf.len() {
                self.count("oversized");
                continue;
            }
            let decoded = if is_gre {
                decode_gre(&buf[..n], agent)
            } else {
                decode_vxlan(&buf[..n], agent)
            };
            match decoded {
                Ok(r) => {
                    self.counters.packets += 1;
                    self.counters.bytes += r.frame.len() as u64;
                    return Some(r);
                }
                Err(reason) => self.count(reason),
            }
        }
    }

    fn count(&mut self, reason: &'static str) {
        let n = self.counters.malformed.entry(reason).or_default();
        if *n == 0 {
            tracing::warn!(
                reason,
                "unusable tunnel packet (counting further ones of this kind)"
            );
        }
        *n += 1;
    }

    /// Reads the kernel's drop counters of the sockets into [`ReceiveCounters::socket_dropped`]
    /// (cheap: one getsockopt per socket; the broker calls it on every timer tick).
    pub fn refresh_drops(&mut self) {
        let mut total = u64::from(sock::drops(self.vxlan.as_raw_fd()).unwrap_or(0));
        if let Some(g) = &self.gre {
            total += u64::from(sock::drops(g.as_raw_fd()).unwrap_or(0));
        }
        if total > self.counters.socket_dropped && self.counters.socket_dropped == 0 {
            tracing::warn!(
                "the kernel dropped tunnel packets: the broker is not keeping up (counting)"
            );
        }
        self.counters.socket_dropped = total;
    }

    /// What was received and skipped so far.
    pub fn counters(&self) -> &ReceiveCounters {
        &self.counters
    }
}

/// Smallest inner frame accepted: an Ethernet header.
const MIN_FRAME: usize = 14;

/// Decodes a VXLAN UDP payload.
pub fn decode_vxlan(datagram: &[u8], agent: IpAddr) -> Result<Received, &'static str> {
    let packet = VxlanPacket::new_checked(datagram).map_err(|_| "vxlan_truncated")?;
    let repr = VxlanRepr::parse(&packet).map_err(|_| "vxlan_no_vni")?;
    let start = repr.header_len();
    if datagram.len() < start + MIN_FRAME {
        return Err("vxlan_frame_truncated");
    }
    let (tap, to_pod) = repr.tap_label();
    Ok(Received {
        encap: Encap::Vxlan { vni: repr.vni },
        tap,
        to_pod: repr.group_policy_id.map(|_| to_pod),
        agent,
        frame: start..datagram.len(),
    })
}

/// Decodes an IPv4 packet carrying GRE (as a raw socket delivers it).
pub fn decode_gre(ip_packet: &[u8], agent: IpAddr) -> Result<Received, &'static str> {
    if ip_packet.len() < 20 || ip_packet[0] >> 4 != 4 {
        return Err("gre_bad_ip_header");
    }
    let ihl = usize::from(ip_packet[0] & 0x0f) * 4;
    if ihl < 20 || ip_packet.len() < ihl {
        return Err("gre_bad_ip_header");
    }
    let packet = GrePacket::new_checked(&ip_packet[ihl..]).map_err(|_| "gre_truncated")?;
    let repr = GreRepr::parse(&packet).map_err(|_| "gre_unsupported")?;
    if repr.protocol != gre::PROTOCOL_ETHERNET {
        return Err("not_l2gre");
    }
    let start = ihl + repr.header_len();
    if ip_packet.len() < start + MIN_FRAME {
        return Err("gre_frame_truncated");
    }
    let (policy_key, tap, to_pod) = match repr.key {
        Some(k) => {
            let (p, t, d) = gre::split_gre_key(k);
            (p, t, Some(d))
        }
        None => (0, 0, None),
    };
    Ok(Received {
        encap: Encap::L2gre { policy_key },
        tap,
        to_pod,
        agent,
        frame: start..ip_packet.len(),
    })
}
