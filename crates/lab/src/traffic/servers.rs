//! The small servers a pod runs: HTTP on 8080, TCP and UDP echo on 7, TCP and UDP sink
//! (discard) on 9. Sockets are created inside the pod's netns and then served from ordinary
//! threads (a socket stays in the namespace it was created in). Every loop polls a stop flag at
//! least every [`POLL`]; dropping [`PodServers`] stops and joins all threads.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

use crate::LabError;
use crate::netns::in_netns;

/// HTTP server port.
pub const HTTP_PORT: u16 = 8080;
/// TCP and UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// TCP and UDP sink (discard) port.
pub const SINK_PORT: u16 = 9;

/// How often server loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How long `start` retries ports that are still in use.
const BIND_RETRY: Duration = Duration::from_secs(2);
/// A connection idle this long is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Most connections served at once per listener; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Most client addresses a sink remembers before it forgets them all.
const MAX_PEERS: usize = 65_536;
/// Receive buffer of the UDP sink and echo sockets, so bursts are not dropped.
const UDP_RCVBUF: usize = 8 << 20;
/// Longest HTTP request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Write timeout of every server socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a sink received from one client address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCount {
    /// Datagrams (UDP) or connections (TCP).
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// TCP: the client closed its side and the sink has counted everything.
    pub closed: bool,
}

/// Totals of one set of pod servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// HTTP requests answered.
    pub http_requests: u64,
    /// Bytes echoed by the TCP echo server.
    pub tcp_echo_bytes: u64,
    /// Datagrams echoed by the UDP echo server.
    pub udp_echo_datagrams: u64,
    /// Bytes received by the TCP sink.
    pub tcp_sink_bytes: u64,
    /// Datagrams received by the UDP sink.
    pub udp_sink_datagrams: u64,
    /// Payload bytes received by the UDP sink.
    pub udp_sink_bytes: u64,
}

/// State shared by the server threads and the handles.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    http_requests: AtomicU64,
    tcp_echo_bytes: AtomicU64,
    udp_echo_datagrams: AtomicU64,
    tcp_sink_bytes: AtomicU64,
    udp_sink_datagrams: AtomicU64,
    udp_sink_bytes: AtomicU64,
    tcp_sink_peers: Mutex<HashMap<SocketAddr, PeerCount>>,
    udp_sink_peers: Mutex<HashMap<SocketAddr, PeerCount>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Locks a peer table; a poisoned lock still holds usable counts.
fn lock(
    peers: &Mutex<HashMap<SocketAddr, PeerCount>>,
) -> MutexGuard<'_, HashMap<SocketAddr, PeerCount>> {
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds to a peer's count, forgetting everyone when the table is full.
fn count_peer(
    peers: &Mutex<HashMap<SocketAddr, PeerCount>>,
    peer: SocketAddr,
    f: impl FnOnce(&mut PeerCount),
) {
    let mut peers = lock(peers);
    if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
        peers.clear();
    }
    f(peers.entry(peer).or_default());
}

/// A cloneable view of the counters of running pod servers.
#[derive(Clone)]
pub struct ServerCounters(Arc<Shared>);

impl ServerCounters {
    /// The totals so far.
    pub fn stats(&self) -> ServerStats {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            http_requests: get(&s.http_requests),
            tcp_echo_bytes: get(&s.tcp_echo_bytes),
            udp_echo_datagrams: get(&s.udp_echo_datagrams),
            tcp_sink_bytes: get(&s.tcp_sink_bytes),
            udp_sink_datagrams: get(&s.udp_sink_datagrams),
            udp_sink_bytes: get(&s.udp_sink_bytes),
        }
    }

    /// What the UDP sink has received from `peer` so far.
    pub fn udp_sink_peer(&self, peer: SocketAddr) -> PeerCount {
        lock(&self.0.udp_sink_peers)
            .get(&peer)
            .copied()
            .unwrap_or_default()
    }

    /// What the TCP sink has received from `peer` (connections and bytes) so far.
    pub fn tcp_sink_peer(&self, peer: SocketAddr) -> PeerCount {
        lock(&self.0.tcp_sink_peers)
            .get(&peer)
            .copied()
            .unwrap_or_default()
    }

    /// Forgets a client address of both sinks (after its counts were read).
    pub fn forget_peer(&self, peer: SocketAddr) {
        lock(&self.0.udp_sink_peers).remove(&peer);
        lock(&self.0.tcp_sink_peers).remove(&peer);
    }
}

/// Pod servers running in this process, by netns, so `drive` can reuse them.
static RUNNING: Mutex<Vec<(String, Weak<Shared>)>> = Mutex::new(Vec::new());

/// Counters of pod servers this process runs in `netns`, if any.
pub(crate) fn running_in(netns: &str) -> Option<ServerCounters> {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    running
        .iter()
        .filter(|(n, _)| n == netns)
        .find_map(|(_, w)| w.upgrade())
        .filter(|s| !s.stopped())
        .map(ServerCounters)
}

/// The servers of one pod: threads plus a stop flag; stops and joins them on drop.
pub struct PodServers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    netns: String,
    bind_ip: Ipv4Addr,
}

/// The sockets of a pod's servers, bound inside its netns.
struct Sockets {
    http: TcpListener,
    tcp_echo: TcpListener,
    tcp_sink: TcpListener,
    udp_echo: UdpSocket,
    udp_sink: UdpSocket,
}

impl PodServers {
    /// Binds HTTP (8080), TCP/UDP echo (7) and TCP/UDP sink (9) on `bind_ip` inside the pod's
    /// netns and serves them until dropped.
    ///
    /// A port still held by sockets that were just closed is retried for up to 2 s: a child
    /// process forked by another thread (e.g. for `ip`) keeps copies of our sockets open until
    /// it execs.
    pub fn start(pod_netns: &str, bind_ip: Ipv4Addr) -> Result<PodServers, LabError> {
        let where_ = format!("in netns {pod_netns}");
        let deadline = Instant::now() + BIND_RETRY;
        let sockets = loop {
            let where_ = where_.clone();
            match in_netns(pod_netns, move || bind_all(bind_ip, &where_))? {
                Err(LabError::Socket { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    thread::sleep(POLL);
                }
                other => break other?,
            }
        };
        let shared = Arc::new(Shared::default());
        let mut servers = PodServers {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
            netns: pod_netns.to_string(),
            bind_ip,
        };
        // On an early return, dropping `servers` stops the threads already started.
        let listeners = [
            ("http", sockets.http, serve_http as Handler),
            ("tcp echo", sockets.tcp_echo, serve_tcp_echo as Handler),
            ("tcp sink", sockets.tcp_sink, serve_tcp_sink as Handler),
        ];
        for (what, listener, handler) in listeners {
            let shared = Arc::clone(&shared);
            servers.spawn(what, move || accept_loop(listener, shared, handler))?;
        }
        let udp = [
            ("udp echo", sockets.udp_echo, true),
            ("udp sink", sockets.udp_sink, false),
        ];
        for (what, socket, echo) in udp {
            let shared = Arc::clone(&shared);
            servers.spawn(what, move || udp_loop(socket, &shared, echo))?;
        }
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(_, w)| w.strong_count() > 0);
        running.push((pod_netns.to_string(), Arc::downgrade(&shared)));
        Ok(servers)
    }

    fn spawn(&mut self, what: &str, f: impl FnOnce() + Send + 'static) -> Result<(), LabError> {
        let handle = thread::Builder::new()
            .name(format!("pod {what}"))
            .spawn(f)
            .map_err(|source| LabError::Thread {
                what: format!("{what} server in {}", self.netns),
                source,
            })?;
        self.threads.push(handle);
        Ok(())
    }

    /// The servers' counters (a handle that stays valid after the servers stop).
    pub fn counters(&self) -> ServerCounters {
        ServerCounters(Arc::clone(&self.shared))
    }

    /// The totals so far.
    pub fn stats(&self) -> ServerStats {
        self.counters().stats()
    }

    /// The netns the servers run in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The address the servers are bound to.
    pub fn bind_ip(&self) -> Ipv4Addr {
        self.bind_ip
    }
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!(netns = %self.netns, "a pod server thread panicked");
            }
        }
    }
}

/// Binds every server socket (run inside the pod's netns).
fn bind_all(ip: Ipv4Addr, where_: &str) -> Result<Sockets, LabError> {
    let tcp = |port| {
        TcpListener::bind((ip, port))
            .map_err(LabError::socket(format!("bind TCP {ip}:{port} {where_}")))
    };
    let udp = |port| -> Result<UdpSocket, LabError> {
        let what = format!("bind UDP {ip}:{port} {where_}");
        let s = UdpSocket::bind((ip, port)).map_err(LabError::socket(&what))?;
        setsockopt(&s, sockopt::RcvBufForce, &UDP_RCVBUF)
            .map_err(|e| LabError::socket(&what)(io::Error::from(e)))?;
        s.set_read_timeout(Some(POLL))
            .map_err(LabError::socket(&what))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(LabError::socket(&what))?;
        Ok(s)
    };
    Ok(Sockets {
        http: tcp(HTTP_PORT)?,
        tcp_echo: tcp(ECHO_PORT)?,
        tcp_sink: tcp(SINK_PORT)?,
        udp_echo: udp(ECHO_PORT)?,
        udp_sink: udp(SINK_PORT)?,
    })
}

/// Serves one accepted TCP connection.
type Handler = fn(TcpStream, SocketAddr, &Shared) -> io::Result<()>;

/// Accepts connections until stopped; one thread per connection, joined before returning.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Handler) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::warn!(error = %e, "pod server: cannot poll listener");
        return;
    }
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, peer)) => {
                connections.retain(|c| !c.is_finished());
                if connections.len() >= MAX_CONNECTIONS {
                    continue; // dropping the stream closes it
                }
                let shared = Arc::clone(&shared);
                let spawned =
                    thread::Builder::new()
                        .name("pod conn".to_string())
                        .spawn(move || {
                            let prepared = stream
                                .set_nonblocking(false)
                                .and_then(|()| stream.set_read_timeout(Some(POLL)))
                                .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
                                .and_then(|()| stream.set_nodelay(true));
                            if let Err(e) = prepared.and_then(|()| handler(stream, peer, &shared)) {
                                tracing::debug!(%peer, error = %e, "pod server connection ended");
                            }
                        });
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(e) => tracing::warn!(error = %e, "pod server: cannot start a thread"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                tracing::debug!(error = %e, "pod server: accept failed");
                thread::sleep(POLL);
            }
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Reads from a connection until data, EOF (`Ok(0)`), stop or idle timeout (both `Ok(None)`).
fn read_some(stream: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> io::Result<Option<usize>> {
    let idle_since = Instant::now();
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stopped() || idle_since.elapsed() > IDLE_LIMIT {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve_tcp_echo(mut stream: TcpStream, _peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_some(&mut stream, &mut buf, shared)? {
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        shared.tcp_echo_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn serve_tcp_sink(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    count_peer(&shared.tcp_sink_peers, peer, |c| c.packets += 1);
    while let Some(n) = read_some(&mut stream, &mut buf, shared)? {
        if n == 0 {
            // Recorded before the stream is closed, so a client that waits for our FIN reads
            // the final count.
            count_peer(&shared.tcp_sink_peers, peer, |c| c.closed = true);
            break;
        }
        shared.tcp_sink_bytes.fetch_add(n as u64, Ordering::Relaxed);
        count_peer(&shared.tcp_sink_peers, peer, |c| c.bytes += n as u64);
    }
    Ok(())
}

/// HTTP/1.1 server: answers every request head with 200 and a short body; keep-alive unless
/// the client asks for `Connection: close`. Request bodies are not expected (GET).
fn serve_http(mut stream: TcpStream, _peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let local = stream.local_addr()?;
    let body = format!("hello from podtap lab pod {}\n", local.ip());
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(end) = find(&pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            let close = head.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim() == "connection" && v.trim() == "close")
            });
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            stream.write_all(response.as_bytes())?;
            shared.http_requests.fetch_add(1, Ordering::Relaxed);
            if close {
                return Ok(());
            }
        }
        if pending.len() > MAX_REQUEST_HEAD {
            stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
        match read_some(&mut stream, &mut buf, shared)? {
            Some(0) | None => return Ok(()),
            Some(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Serves a UDP socket until stopped: echoes datagrams back, or counts and discards them.
fn udp_loop(socket: UdpSocket, shared: &Shared, echo: bool) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stopped() {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) if echo => {
                if socket.send_to(&buf[..n], peer).is_ok() {
                    shared.udp_echo_datagrams.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok((n, peer)) => {
                shared.udp_sink_datagrams.fetch_add(1, Ordering::Relaxed);
                shared.udp_sink_bytes.fetch_add(n as u64, Ordering::Relaxed);
                count_peer(&shared.udp_sink_peers, peer, |c| {
                    c.packets += 1;
                    c.bytes += n as u64;
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(error = %e, "pod server: UDP receive failed");
                thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_finds() {
        assert_eq!(find(b"GET /\r\n\r\nx", b"\r\n\r\n"), Some(5));
        assert_eq!(find(b"GET /\r\n", b"\r\n\r\n"), None);
    }

    #[test]
    fn peer_table_is_bounded() {
        let shared = Shared::default();
        for port in 0..(MAX_PEERS as u32 + 10) {
            let peer =
                SocketAddr::from(([10, 0, (port >> 16) as u8, (port >> 8) as u8], port as u16));
            count_peer(&shared.udp_sink_peers, peer, |c| c.packets += 1);
        }
        assert!(lock(&shared.udp_sink_peers).len() <= MAX_PEERS);
    }
}
