//! The client side of lab traffic, run inside the source pod's netns. Every socket operation
//! has a timeout and every loop is bounded by a count, so a run always ends.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::servers::{ECHO_PORT, HTTP_PORT, SINK_PORT, find};
use super::{ServerCounters, Traffic, TrafficReport, fill_pattern};
use crate::LabError;

/// How long to wait for one reply (UDP echo, ping).
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect, read and write timeout of TCP clients.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a flood, how long the sink may go without new datagrams before we stop waiting.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// After a flood, the longest wait for the sink to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Chunk size of TCP bulk writes.
const BULK_CHUNK: usize = 64 * 1024;
/// ICMP echo payload size, as `ping`'s default.
const PING_PAYLOAD: usize = 56;
/// Longest HTTP response head or body accepted.
const MAX_RESPONSE: usize = 1 << 20;

/// Runs `traffic` against `dst` (inside the source netns) and reports.
pub(super) fn run(
    dst: Ipv4Addr,
    traffic: &Traffic,
    sink: Option<&ServerCounters>,
) -> Result<TrafficReport, LabError> {
    let start = Instant::now();
    let mut report = match *traffic {
        Traffic::UdpEcho { count, size } => udp_echo(dst, count, size)?,
        Traffic::UdpFlood {
            count,
            size,
            rate_pps,
        } => udp_flood(dst, count, size, rate_pps, sink)?,
        Traffic::TcpEcho { messages, size } => tcp_echo(dst, messages, size)?,
        Traffic::TcpBulk { bytes } => tcp_bulk(dst, bytes, sink)?,
        Traffic::HttpGet { requests } => http_get(dst, requests)?,
        Traffic::Ping { count } => ping(dst, count)?,
    };
    report.elapsed = start.elapsed();
    Ok(report)
}

/// A UDP socket connected to `dst:port`.
fn udp_connect(dst: Ipv4Addr, port: u16) -> Result<UdpSocket, LabError> {
    let what = format!("UDP client to {dst}:{port}");
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(LabError::socket(&what))?;
    s.connect((dst, port)).map_err(LabError::socket(&what))?;
    s.set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(LabError::socket(&what))?;
    Ok(s)
}

/// A TCP connection to `dst:port` with timeouts.
fn tcp_connect(dst: Ipv4Addr, port: u16) -> Result<TcpStream, LabError> {
    let what = format!("TCP connect to {dst}:{port}");
    let s = TcpStream::connect_timeout(&SocketAddr::from((dst, port)), TCP_TIMEOUT)
        .map_err(LabError::socket(&what))?;
    s.set_read_timeout(Some(TCP_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TCP_TIMEOUT)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(LabError::socket(&what))?;
    Ok(s)
}

fn udp_echo(dst: Ipv4Addr, count: u32, size: usize) -> Result<TrafficReport, LabError> {
    let socket = udp_connect(dst, ECHO_PORT)?;
    let mut report = TrafficReport::default();
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; 65_536];
    for i in 0..u64::from(count) {
        fill_pattern(i * size as u64, &mut out);
        match socket.send(&out) {
            Ok(n) => {
                report.sent_packets += 1;
                report.sent_bytes += n as u64;
            }
            Err(_) => {
                report.errors += 1;
                continue;
            }
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                report.errors += 1;
                break;
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(LabError::socket("UDP echo client"))?;
            match socket.recv(&mut back) {
                Ok(n) if back[..n] == out[..] => {
                    report.received_packets += 1;
                    report.received_bytes += n as u64;
                    break;
                }
                Ok(_) => {} // a late echo of an earlier datagram
                Err(_) => {
                    report.errors += 1;
                    break;
                }
            }
        }
    }
    Ok(report)
}

fn udp_flood(
    dst: Ipv4Addr,
    count: u32,
    size: usize,
    rate_pps: Option<u32>,
    sink: Option<&ServerCounters>,
) -> Result<TrafficReport, LabError> {
    let socket = udp_connect(dst, SINK_PORT)?;
    let local = socket
        .local_addr()
        .map_err(LabError::socket("UDP flood client"))?;
    let mut report = TrafficReport::default();
    let mut out = vec![0u8; size];
    let start = Instant::now();
    for i in 0..u64::from(count) {
        if let Some(rate) = rate_pps.filter(|&r| r > 0) {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        fill_pattern(i * size as u64, &mut out);
        match socket.send(&out) {
            Ok(n) => {
                report.sent_packets += 1;
                report.sent_bytes += n as u64;
            }
            Err(_) => report.errors += 1,
        }
    }
    if let Some(sink) = sink {
        let got = wait_for_udp_sink(sink, local, report.sent_packets);
        sink.forget_peer(local);
        report.received_packets = got.packets;
        report.received_bytes = got.bytes;
    }
    Ok(report)
}

/// Waits until the sink has counted `expected` datagrams from `peer`, or went quiet.
fn wait_for_udp_sink(sink: &ServerCounters, peer: SocketAddr, expected: u64) -> super::PeerCount {
    let start = Instant::now();
    let mut last = sink.udp_sink_peer(peer);
    let mut last_change = Instant::now();
    while last.packets < expected
        && last_change.elapsed() < DRAIN_QUIET
        && start.elapsed() < DRAIN_LIMIT
    {
        thread::sleep(Duration::from_millis(10));
        let now = sink.udp_sink_peer(peer);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    last
}

fn tcp_echo(dst: Ipv4Addr, messages: u32, size: usize) -> Result<TrafficReport, LabError> {
    let mut stream = tcp_connect(dst, ECHO_PORT)?;
    let mut report = TrafficReport::default();
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    for i in 0..u64::from(messages) {
        fill_pattern(i * size as u64, &mut out);
        let exchanged = stream
            .write_all(&out)
            .map(|()| {
                report.sent_packets += 1;
                report.sent_bytes += size as u64;
            })
            .and_then(|()| stream.read_exact(&mut back));
        match exchanged {
            Ok(()) if back == out => {
                report.received_packets += 1;
                report.received_bytes += size as u64;
            }
            _ => {
                // The stream is out of step: every message not echoed is an error.
                report.errors += u64::from(messages) - i;
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok(report)
}

fn tcp_bulk(
    dst: Ipv4Addr,
    bytes: u64,
    sink: Option<&ServerCounters>,
) -> Result<TrafficReport, LabError> {
    let mut stream = tcp_connect(dst, SINK_PORT)?;
    let local = stream
        .local_addr()
        .map_err(LabError::socket("TCP bulk client"))?;
    let mut report = TrafficReport {
        sent_packets: 1,
        ..TrafficReport::default()
    };
    let mut chunk = vec![0u8; BULK_CHUNK];
    while report.sent_bytes < bytes {
        let n = (bytes - report.sent_bytes).min(BULK_CHUNK as u64) as usize;
        fill_pattern(report.sent_bytes, &mut chunk[..n]);
        if stream.write_all(&chunk[..n]).is_err() {
            report.errors += 1;
            break;
        }
        report.sent_bytes += n as u64;
    }
    // Half-close, then wait for the sink's FIN: it counts everything before closing.
    let _ = stream.shutdown(Shutdown::Write);
    let mut rest = [0u8; 64];
    loop {
        match stream.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                report.errors += 1;
                break;
            }
        }
    }
    if let Some(sink) = sink {
        let got = sink.tcp_sink_peer(local);
        sink.forget_peer(local);
        if got.closed {
            report.received_packets = got.packets;
        } else {
            report.errors += 1;
        }
        report.received_bytes = got.bytes;
    }
    Ok(report)
}

fn http_get(dst: Ipv4Addr, requests: u32) -> Result<TrafficReport, LabError> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {dst}:{HTTP_PORT}\r\nUser-Agent: podtap-lab\r\nAccept: */*\r\n\r\n"
    );
    let mut report = TrafficReport::default();
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    for _ in 0..requests {
        let (stream, pending) = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert((tcp_connect(dst, HTTP_PORT)?, Vec::new())),
        };
        report.sent_packets += 1;
        let result = stream
            .write_all(request.as_bytes())
            .map(|()| report.sent_bytes += request.len() as u64)
            .and_then(|()| read_response(stream, pending));
        match result {
            Ok(response) => {
                if response.status == 200 {
                    report.received_packets += 1;
                    report.received_bytes += response.body_len as u64;
                } else {
                    report.errors += 1;
                }
                if response.close {
                    conn = None;
                }
            }
            Err(_) => {
                report.errors += 1;
                conn = None;
            }
        }
    }
    Ok(report)
}

/// The parts of an HTTP response the client checks.
struct Response {
    status: u16,
    body_len: usize,
    close: bool,
}

/// Reads one response with a `Content-Length` body; bytes after it stay in `pending`.
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            break end;
        }
        if pending.len() > MAX_RESPONSE {
            return Err(bad("response head too long"));
        }
        match stream.read(&mut buf)? {
            0 => return Err(bad("connection closed before a response")),
            n => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut body_len = 0usize;
    let mut close = false;
    for (key, value) in lines.filter_map(|l| l.split_once(':')) {
        match key.trim() {
            "content-length" => {
                body_len = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad content-length"))?;
            }
            "connection" => close = value.trim() == "close",
            _ => {}
        }
    }
    if body_len > MAX_RESPONSE {
        return Err(bad("response body too long"));
    }
    pending.drain(..head_end + 4);
    while pending.len() < body_len {
        match stream.read(&mut buf)? {
            0 => return Err(bad("connection closed inside a body")),
            n => pending.extend_from_slice(&buf[..n]),
        }
    }
    pending.drain(..body_len);
    Ok(Response {
        status,
        body_len,
        close,
    })
}

/// Distinguishes concurrent ping runs of this process.
static PING_RUN: AtomicU16 = AtomicU16::new(0);

fn ping(dst: Ipv4Addr, count: u32) -> Result<TrafficReport, LabError> {
    let what = || format!("ICMP raw socket to {dst}");
    let nix_err = |e: nix::errno::Errno| LabError::socket(what())(io::Error::from(e));
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(nix_err)?;
    let poll = TimeVal::new(0, 50_000);
    setsockopt(&fd, sockopt::ReceiveTimeout, &poll).map_err(nix_err)?;
    let ident =
        (std::process::id() as u16) ^ PING_RUN.fetch_add(1, Ordering::Relaxed).rotate_left(8);
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut report = TrafficReport::default();
    let mut back = [0u8; 2048];
    for seq in 0..count {
        let seq = seq as u16;
        let request = echo_request(ident, seq);
        match sendto(fd.as_raw_fd(), &request, &to, MsgFlags::empty()) {
            Ok(_) => {
                report.sent_packets += 1;
                report.sent_bytes += PING_PAYLOAD as u64;
            }
            Err(_) => {
                report.errors += 1;
                continue;
            }
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let answered = loop {
            if Instant::now() >= deadline {
                break false;
            }
            match recv(fd.as_raw_fd(), &mut back, MsgFlags::empty()) {
                Ok(n) if is_echo_reply(&back[..n], dst, ident, seq) => break true,
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(_) => break false,
            }
        };
        if answered {
            report.received_packets += 1;
            report.received_bytes += PING_PAYLOAD as u64;
        } else {
            report.errors += 1;
        }
    }
    Ok(report)
}

/// An ICMP echo request with the deterministic payload.
fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![0u8; 8 + PING_PAYLOAD];
    packet[0] = 8; // echo request
    packet[4..6].copy_from_slice(&ident.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    fill_pattern(0, &mut packet[8..]);
    let sum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Whether a raw-socket read (IPv4 header + ICMP) is the echo reply from `src` to our request.
fn is_echo_reply(packet: &[u8], src: Ipv4Addr, ident: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if packet.len() < ihl + 8 || ihl < 20 || packet[12..16] != src.octets() {
        return false;
    }
    let icmp = &packet[ihl..];
    icmp[0] == 0 && icmp[4..6] == ident.to_be_bytes() && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(internet_checksum(&packet), 0);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn echo_reply_is_matched_by_source_ident_and_seq() {
        let src = Ipv4Addr::new(10, 244, 1, 2);
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&src.octets());
        let mut icmp = echo_request(9, 3);
        icmp[0] = 0;
        packet.extend_from_slice(&icmp);
        assert!(is_echo_reply(&packet, src, 9, 3));
        assert!(!is_echo_reply(&packet, src, 9, 4));
        assert!(!is_echo_reply(&packet, Ipv4Addr::new(10, 244, 1, 3), 9, 3));
        assert!(!is_echo_reply(&packet[..25], src, 9, 3));
        assert!(!is_echo_reply(&[], src, 9, 3));
    }
}
