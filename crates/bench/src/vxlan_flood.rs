//! A paced VXLAN sender for the tunnel benchmark: a pool of frames, each behind a plain VXLAN
//! header (flags `I`, one VNI), sent round robin from one connected UDP socket with
//! `sendmmsg` in batches of at most [`BATCH`], on an absolute schedule (datagram *i* is due at
//! `start + i / rate`; no sleep while behind), from a thread pinned to one CPU.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Most datagrams per `sendmmsg`: at 1 Mpps a burst of 32 lasts 32 µs.
pub const BATCH: usize = 32;
/// VXLAN header length.
const VXLAN_HEADER: usize = 8;
/// Sleeps shorter than this are not worth it: spin (yield) instead.
const MIN_SLEEP: Duration = Duration::from_micros(60);

/// Datagrams ready to send: VXLAN header and frame, back to back.
#[derive(Debug, Clone, Default)]
pub struct DatagramPool {
    bytes: Vec<u8>,
    /// Start and end of each datagram in `bytes`.
    bounds: Vec<(usize, usize)>,
    /// Inner frame bytes over the pool.
    frame_bytes: u64,
}

impl DatagramPool {
    /// Wraps each frame in a VXLAN header with `vni`.
    pub fn new(frames: impl IntoIterator<Item = Vec<u8>>, vni: u32) -> DatagramPool {
        let mut pool = DatagramPool::default();
        let vni = vni.to_be_bytes();
        for frame in frames {
            let start = pool.bytes.len();
            pool.bytes
                .extend_from_slice(&[0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
            pool.bytes.extend_from_slice(&frame);
            pool.bounds.push((start, pool.bytes.len()));
            pool.frame_bytes += frame.len() as u64;
        }
        pool
    }

    /// Datagrams in the pool.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// Average inner frame length.
    pub fn mean_frame(&self) -> f64 {
        self.frame_bytes as f64 / self.len().max(1) as f64
    }

    /// Inner frame length of datagram `i`.
    fn frame_len(&self, i: usize) -> usize {
        let (s, e) = self.bounds[i];
        e - s - VXLAN_HEADER
    }
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Their inner frame bytes.
    pub frame_bytes: u64,
    /// Datagrams the kernel refused (counted, not retried).
    pub errors: u64,
    /// Seconds from the first send to the last.
    pub seconds: f64,
}

impl FloodReport {
    /// Datagrams per second actually sent.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }
}

/// Sends the pool round robin to `to` at `rate` datagrams per second for `duration`, from the
/// calling thread pinned to `cpu`. Call it inside the sender's network namespace.
pub fn flood(
    pool: &DatagramPool,
    to: SocketAddr,
    rate: u64,
    duration: Duration,
    cpu: usize,
) -> anyhow::Result<FloodReport> {
    anyhow::ensure!(!pool.is_empty(), "no frames to send");
    pin_to(cpu)?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the sender's socket")?;
    socket
        .connect(to)
        .with_context(|| format!("connecting to {to}"))?;
    let fd = socket.as_raw_fd();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut report = FloodReport::default();
    let mut next = 0usize;
    let mut attempted = 0u64;
    let started = Instant::now();
    // SAFETY: zeroed iovec/mmsghdr are valid; every field used is set before the call.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    while attempted < total {
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate as f64) as u64).min(total);
        if due <= attempted {
            let wait = Duration::from_secs_f64((attempted + 1) as f64 / rate as f64 - elapsed);
            if wait >= MIN_SLEEP {
                std::thread::sleep(wait);
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        let n = ((due - attempted) as usize).min(BATCH);
        let mut lens = [0usize; BATCH];
        for k in 0..n {
            let (s, e) = pool.bounds[(next + k) % pool.len()];
            iov[k] = libc::iovec {
                iov_base: pool.bytes[s..e].as_ptr() as *mut libc::c_void,
                iov_len: e - s,
            };
            lens[k] = pool.frame_len((next + k) % pool.len());
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_len = 0;
        }
        // SAFETY: msgs[..n] point at iovecs into `pool`, which outlives the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        let done = if r < 0 {
            // The first datagram failed: count it and move past it.
            report.errors += 1;
            1
        } else {
            let r = r as usize;
            report.sent += r as u64;
            report.frame_bytes += lens[..r].iter().map(|&l| l as u64).sum::<u64>();
            r.max(1)
        };
        attempted += done as u64;
        next = (next + done) % pool.len();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the sender to CPU {cpu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_wraps_frames() {
        let pool = DatagramPool::new([vec![1u8; 60], vec![2u8; 100]], 0x010203);
        assert_eq!(pool.len(), 2);
        assert_eq!(&pool.bytes[..8], &[0x08, 0, 0, 0, 1, 2, 3, 0]);
        assert_eq!(pool.frame_len(1), 100);
        assert_eq!(pool.mean_frame(), 80.0);
    }

    #[test]
    fn paces_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let pool = DatagramPool::new([vec![0u8; 60]], 1);
        let r = flood(&pool, to, 2000, Duration::from_millis(200), 0).unwrap();
        assert_eq!(r.sent + r.errors, 400);
        assert!(r.seconds >= 0.19 && r.seconds < 0.5, "{r:?}");
    }
}
