//! The packet rate that really crossed a veth: a thread inside the node's netns samples the
//! host-side veth's receive counter (`/proc/thread-self/net/dev`) every few milliseconds, and
//! the rate is taken over the span in which the counter moved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Time between samples.
const INTERVAL: Duration = Duration::from_millis(10);
/// Longest a meter runs, whatever happens.
const LIMIT: Duration = Duration::from_secs(600);

/// One reading of the counter.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    packets: u64,
}

/// A running meter.
pub struct VethMeter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Sample>>>,
}

/// What crossed the veth while the meter ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct VethTraffic {
    /// Packets the host side received (i.e. the pod sent).
    pub packets: u64,
    /// Seconds from the first to the last change of the counter.
    pub seconds: f64,
}

impl VethTraffic {
    /// Packets per second over the active span.
    pub fn pps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.packets as f64 / self.seconds
        } else {
            0.0
        }
    }
}

impl VethMeter {
    /// Starts sampling `veth`'s receive counter in `netns`; fails if the first sample fails.
    pub fn start(netns: &str, veth: &str) -> anyhow::Result<VethMeter> {
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (netns, veth) = (netns.to_string(), veth.to_string());
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            podtap_lab::in_netns(&netns, move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                let mut first = Some(first_tx);
                while !flag.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
                    let packets = match read_rx_packets(&veth) {
                        Ok(p) => p,
                        Err(e) => {
                            if let Some(tx) = first.take() {
                                let _ = tx.send(Err(e.to_string()));
                            }
                            return Err(e);
                        }
                    };
                    samples.push(Sample {
                        at: Instant::now(),
                        packets,
                    });
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    thread::sleep(INTERVAL);
                }
                // A last sample at the stop, so the span covers everything sent before it.
                samples.push(Sample {
                    at: Instant::now(),
                    packets: read_rx_packets(&veth)?,
                });
                Ok(samples)
            })
            .with_context(|| format!("entering netns {netns}"))?
        });
        match first_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(VethMeter { stop, thread }),
            Ok(Err(e)) => bail!("reading the veth counters: {e}"),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => bail!("the veth meter did not start"),
                }
            }
        }
    }

    /// Stops sampling and says what crossed the veth.
    pub fn stop(self) -> anyhow::Result<VethTraffic> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the veth meter panicked"))??;
        Ok(active_span(&samples))
    }
}

/// Packets counted and the span from the last sample before the counter first moved to the
/// first sample after it last moved.
fn active_span(samples: &[Sample]) -> VethTraffic {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return VethTraffic::default();
    };
    let packets = last.packets.saturating_sub(first.packets);
    if packets == 0 {
        return VethTraffic::default();
    }
    let start = samples
        .iter()
        .take_while(|s| s.packets == first.packets)
        .last()
        .map_or(first.at, |s| s.at);
    let end = samples
        .iter()
        .find(|s| s.packets == last.packets)
        .map_or(last.at, |s| s.at);
    VethTraffic {
        packets,
        seconds: end.duration_since(start).as_secs_f64(),
    }
}

/// The receive packet counter of `dev` in this thread's netns.
fn read_rx_packets(dev: &str) -> anyhow::Result<u64> {
    let table = std::fs::read_to_string("/proc/thread-self/net/dev")
        .context("reading /proc/thread-self/net/dev")?;
    rx_packets(&table, dev).with_context(|| format!("no counters for {dev} in net/dev"))
}

/// The receive packet counter of `dev` in a `/proc/net/dev` table.
fn rx_packets(table: &str, dev: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != dev {
            return None;
        }
        // receive: bytes packets errs drop ...
        counters.split_whitespace().nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_net_dev() {
        let table = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
             cali12345678901: 6400 100    0    0    0     0          0         0     1280      20    0    0    0     0       0          0\n";
        assert_eq!(rx_packets(table, "cali12345678901"), Some(100));
        assert_eq!(rx_packets(table, "lo"), Some(0));
        assert_eq!(rx_packets(table, "eth0"), None);
    }

    #[test]
    fn rate_over_the_active_span() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = [
            Sample {
                at: at(0),
                packets: 5,
            },
            Sample {
                at: at(100),
                packets: 5,
            },
            Sample {
                at: at(200),
                packets: 505,
            },
            Sample {
                at: at(1100),
                packets: 1005,
            },
            Sample {
                at: at(1200),
                packets: 1005,
            },
        ];
        let t = active_span(&samples);
        assert_eq!(t.packets, 1000);
        assert!((t.seconds - 1.0).abs() < 1e-9);
        assert!((t.pps() - 1000.0).abs() < 1e-6);
        assert_eq!(active_span(&samples[..2]).packets, 0);
    }

    #[test]
    fn reads_this_thread_s_counters() {
        assert!(read_rx_packets("lo").is_ok());
    }
}
