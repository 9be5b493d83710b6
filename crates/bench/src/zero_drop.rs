//! `podtap-bench zero-drop`: the highest paced packet rate podtap's agent copies with zero
//! dropped copies, for 64-byte and 1400-byte frames. The agent (the real binary, default
//! 16 MiB ring, writing pcapng to a file) taps the sender's veth; the lab's paced UDP flood
//! drives the rate, which doubles until copies drop and is then bisected. The rate that really
//! crossed the veth is measured too: a paced sender on a small machine may top out before the
//! tap drops anything, and then the answer is "no drops up to the highest rate the sender
//! reached".

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use podtap_lab::{PodServers, Traffic, TrafficReport};
use serde_json::{Value, json};

use crate::bench_lab::{self, BenchLab};
use crate::tap::{RunningTap, Scenario};
use crate::veth_meter::VethMeter;

/// Ethernet + IPv4 + UDP headers: frame size minus this is the UDP payload.
const FRAME_OVERHEAD: usize = 42;
/// Pause after the agent starts, so its start-up is not measured.
const SETTLE: Duration = Duration::from_millis(300);
/// Datagrams of the short unpaced run that sizes the full unpaced run.
const CALIBRATION_PACKETS: u32 = 100_000;
/// A paced run "reached" its rate if the veth saw at least this share of it.
const REACHED: f64 = 0.9;
/// The search stops when the lowest dropping rate is within this factor of the highest clean one.
const PRECISION: f64 = 1.1;

/// Flags of `podtap-bench zero-drop`.
#[derive(Debug, Args)]
pub struct ZeroDropArgs {
    /// Seconds of traffic per step.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub seconds: u32,
    /// Frame sizes to search, in bytes on the veth (Ethernet header included, no FCS).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1400])]
    pub frames: Vec<usize>,
    /// First paced rate tried, in packets per second.
    #[arg(long, default_value_t = 10_000)]
    pub start_rate: u32,
    /// Most paced steps per frame size.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=30))]
    pub max_steps: u32,
    /// The agent's ring buffer size (`podtap agent --ring-size`).
    #[arg(long, default_value = "16M")]
    pub ring_size: String,
    /// Concurrent paced senders in the sending pod (each at an equal share of the rate); one
    /// sender alone tops out before the tap on a small machine.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub senders: u32,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One step: a flood at one rate with the agent on the veth.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The paced rate asked for; `None` for unpaced.
    target: Option<u32>,
    /// Whether this was the short unpaced run that sizes the full one (not a result).
    calibration: bool,
    /// Datagrams the sender sent.
    sent: u64,
    /// Packets that crossed the sender's veth, and the rate they did so at.
    veth_packets: u64,
    veth_pps: f64,
    /// Datagrams the receiving pod's sink counted.
    received: u64,
    /// The agent's written packets and dropped copies.
    written: u64,
    dropped: u64,
}

impl Step {
    /// What was asked for, for tables.
    fn asked(&self) -> String {
        match self.target {
            Some(t) => format!("{:.1} kpps", f64::from(t) / 1e3),
            None if self.calibration => "calibration".to_string(),
            None => "unpaced".to_string(),
        }
    }

    /// Whether the veth saw (nearly) the asked-for rate.
    fn reached(&self) -> bool {
        self.target
            .is_none_or(|t| self.veth_pps >= REACHED * f64::from(t))
    }

    fn to_json(self) -> Value {
        json!({
            "target_pps": self.target,
            "calibration": self.calibration,
            "sent": self.sent,
            "veth_packets": self.veth_packets,
            "veth_pps": self.veth_pps,
            "received": self.received,
            "written": self.written,
            "dropped": self.dropped,
        })
    }
}

/// The search's outcome for one frame size.
#[derive(Debug, Clone)]
struct Search {
    frame: usize,
    /// Every step, in order (a calibration, the unpaced run, then paced steps if any).
    steps: Vec<Step>,
    /// The fastest step without dropped copies.
    best_clean: Option<Step>,
    /// The slowest step with dropped copies.
    first_dropping: Option<Step>,
    /// The unpaced run: the sender's top rate with the tap on.
    unpaced: Step,
}

impl Search {
    /// Whether the sender topped out before the tap dropped anything.
    fn sender_bound(&self) -> bool {
        self.first_dropping.is_none()
    }

    fn to_json(&self) -> Value {
        json!({
            "frame_bytes": self.frame,
            "payload_bytes": self.frame - FRAME_OVERHEAD,
            "sender_bound": self.sender_bound(),
            "zero_drop_veth_pps": self.best_clean.map(|s| s.veth_pps),
            "zero_drop_target_pps": self.best_clean.and_then(|s| s.target),
            "first_dropping_veth_pps": self.first_dropping.map(|s| s.veth_pps),
            "unpaced_veth_pps": self.unpaced.veth_pps,
            "unpaced_dropped": self.unpaced.dropped,
            "steps": self.steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        })
    }
}

/// Runs `podtap-bench zero-drop`.
pub fn run(args: ZeroDropArgs) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    for &f in &args.frames {
        if !(FRAME_OVERHEAD + 1..=1514).contains(&f) {
            anyhow::bail!("frame size {f} is not in {}..=1514", FRAME_OVERHEAD + 1);
        }
    }
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench zero-drop: {machine}");
    let bench = BenchLab::up(&podtap)?;
    let dir = tempfile::Builder::new()
        .prefix("podtap-bench-")
        .tempdir()
        .context("creating a directory for the capture files")?;
    let receiver_ip: Ipv4Addr = bench
        .receiver
        .ip
        .parse()
        .with_context(|| format!("receiver address {}", bench.receiver.ip))?;
    // One set of servers for every step, so steps do not pay for starting them.
    let _servers = PodServers::start(&bench.receiver.netns, receiver_ip)
        .context("starting the receiver's servers")?;

    let mut searches = Vec::new();
    for &frame in &args.frames {
        searches.push(
            search(&bench, &dir, frame, &args).with_context(|| format!("{frame}-byte frames"))?,
        );
    }

    if args.json {
        let out = json!({
            "benchmark": "zero-drop",
            "machine": machine,
            "seconds": args.seconds,
            "ring_size": args.ring_size,
            "senders": args.senders,
            "searches": searches.iter().map(Search::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&args, &machine, &searches);
    }
    Ok(())
}

/// Searches one frame size: two unpaced runs (a short one to size the second), then paced
/// steps, doubling from `start_rate` until copies drop, then bisecting.
fn search(
    bench: &BenchLab,
    dir: &tempfile::TempDir,
    frame: usize,
    args: &ZeroDropArgs,
) -> anyhow::Result<Search> {
    let payload = frame - FRAME_OVERHEAD;
    let mut steps = Vec::new();
    let mut run = |target: Option<u32>, count: u32, calibration: bool| -> anyhow::Result<Step> {
        let s = Step {
            calibration,
            ..step(bench, dir, payload, target, count, args)?
        };
        eprintln!(
            "  {frame:>4} B: {:>12} -> veth {:>8.1} kpps, written {:>9}, dropped {:>8}",
            s.asked(),
            s.veth_pps / 1e3,
            s.written,
            s.dropped
        );
        steps.push(s);
        Ok(s)
    };

    let calibration = run(None, CALIBRATION_PACKETS, true)?;
    let count = (calibration.veth_pps * f64::from(args.seconds)).clamp(1e4, 1e8) as u32;
    let unpaced = run(None, count, false)?;

    let mut best_clean: Option<Step> = None;
    let mut first_dropping: Option<Step> = None;
    if unpaced.dropped == 0 {
        best_clean = Some(unpaced);
    } else {
        first_dropping = Some(unpaced);
    }
    if first_dropping.is_some() {
        // Paced search: `lo` is the highest clean rate asked for, `hi` the lowest dropping one.
        let mut lo = 0u32;
        let mut hi = first_dropping.map_or(u32::MAX, |s| s.veth_pps as u32);
        let mut rate = args.start_rate.min(hi / 2).max(1000);
        for _ in 0..args.max_steps {
            let s = run(Some(rate), rate.saturating_mul(args.seconds), false)?;
            if s.dropped == 0 {
                best_clean = faster(best_clean, s);
                lo = rate;
                if !s.reached() {
                    // The paced sender cannot go faster: nothing above this is reachable.
                    break;
                }
            } else {
                first_dropping = slower(first_dropping, s);
                hi = hi.min(rate);
            }
            if f64::from(hi) <= f64::from(lo) * PRECISION || hi < 1000 {
                break;
            }
            rate = if u64::from(lo) * 2 < u64::from(hi) && s.dropped == 0 {
                lo.saturating_mul(2)
            } else {
                lo + (hi - lo) / 2
            };
        }
    }
    Ok(Search {
        frame,
        steps,
        best_clean,
        first_dropping,
        unpaced,
    })
}

/// The faster (by veth rate) of a kept step and a new one.
fn faster(kept: Option<Step>, new: Step) -> Option<Step> {
    match kept {
        Some(k) if k.veth_pps >= new.veth_pps => Some(k),
        _ => Some(new),
    }
}

/// The slower (by veth rate) of a kept step and a new one.
fn slower(kept: Option<Step>, new: Step) -> Option<Step> {
    match kept {
        Some(k) if k.veth_pps <= new.veth_pps => Some(k),
        _ => Some(new),
    }
}

/// One flood of `count` datagrams of `payload` bytes at `target` pps (unpaced if `None`),
/// split over `args.senders` concurrent senders, with a fresh agent on the sender's veth.
fn step(
    bench: &BenchLab,
    dir: &tempfile::TempDir,
    payload: usize,
    target: Option<u32>,
    count: u32,
    args: &ZeroDropArgs,
) -> anyhow::Result<Step> {
    let senders = args.senders;
    let tap = RunningTap::start(
        Scenario::Podtap,
        &bench.target,
        dir.path(),
        &["--ring-size".to_string(), args.ring_size.clone()],
    )?;
    std::thread::sleep(SETTLE);
    let meter = VethMeter::start(&bench.target.node_netns, &bench.target.veth)?;
    let traffic = Traffic::UdpFlood {
        count: count.div_ceil(senders),
        size: payload,
        rate_pps: target.map(|t| (t / senders).max(1)),
    };
    let reports: Vec<anyhow::Result<TrafficReport>> = std::thread::scope(|scope| {
        let floods: Vec<_> = (0..senders)
            .map(|_| {
                scope.spawn(|| {
                    bench
                        .lab
                        .drive(&bench.sender.pod, &bench.receiver.pod, &traffic)
                        .context("driving the flood")
                })
            })
            .collect();
        floods
            .into_iter()
            .map(|f| {
                f.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))
            })
            .collect()
    });
    let veth = meter.stop();
    let summary = tap.stop();
    let (veth, summary) = (veth?, summary?);
    let mut sent = 0;
    let mut received = 0;
    for r in reports {
        let r = r?;
        sent += r.sent_packets;
        received += r.received_packets;
    }
    Ok(Step {
        target,
        calibration: false,
        sent,
        veth_packets: veth.packets,
        veth_pps: veth.pps(),
        received,
        written: summary.written,
        dropped: summary.dropped,
    })
}

/// Prints the steps and the answer per frame size.
fn print_report(args: &ZeroDropArgs, machine: &str, searches: &[Search]) {
    println!(
        "zero-drop: podtap agent ({} ring, pcapng to a file) on {}'s veth, lab UDP flood \
         {} -> {} ({} paced sender(s)), {} s per step",
        args.ring_size,
        bench_lab::SENDER,
        bench_lab::SENDER,
        bench_lab::RECEIVER,
        args.senders,
        args.seconds
    );
    println!("machine: {machine}");
    println!();
    println!(
        "{:>5} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "FRAME", "ASKED", "ON VETH", "SENT", "VETH PKTS", "SINK RCVD", "WRITTEN", "DROPPED"
    );
    for s in searches {
        for st in &s.steps {
            println!(
                "{:>5} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9}",
                s.frame,
                st.asked(),
                format!("{:.1} kpps", st.veth_pps / 1e3),
                st.sent,
                st.veth_packets,
                st.received,
                st.written,
                st.dropped
            );
        }
    }
    println!();
    for s in searches {
        let clean = s.best_clean.map_or("none".to_string(), |c| {
            format!("{:.1} kpps", c.veth_pps / 1e3)
        });
        if s.sender_bound() {
            println!(
                "{} B frames: no dropped copies up to the highest rate the sender reached, \
                 {clean} (unpaced; the sender, not the tap, is the limit on this machine)",
                s.frame
            );
        } else {
            let dropping = s
                .first_dropping
                .map_or("?".to_string(), |d| format!("{:.1} kpps", d.veth_pps / 1e3));
            println!(
                "{} B frames: highest rate with zero dropped copies {clean} on the veth; copies \
                 dropped at {dropping}; unpaced sender reached {:.1} kpps ({} dropped)",
                s.frame,
                s.unpaced.veth_pps / 1e3,
                s.unpaced.dropped
            );
        }
    }
}
