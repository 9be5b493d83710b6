//! `podtap-bench broker-tunnel`: the highest VXLAN packet rate `podtap broker` takes through a
//! full pipeline (filter, dedupe, slice, pcapng output) on one core without losing a packet.
//!
//! A lab with two hosts on its underlay: the broker (the real binary, `taskset -c
//! BROKER_CPU podtap broker --config F --netns HOST`) and a sender whose thread is pinned to
//! the other CPU. The sender replays frames of the synthetic capture (one conversation in four
//! duplicated, as the dedupe benchmark) in plain VXLAN at a paced rate for `--seconds`; then
//! the broker is stopped with SIGTERM and its summary gives what it received. Loss is sent
//! minus received; the broker netns's UDP `RcvbufErrors` say how much of it the kernel dropped
//! at the broker's socket. Rates double while nothing is lost and are bisected once something
//! is, until the bounds are within 10% or `--max-steps` runs were made.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use podtap_cluster::Cni;
use podtap_lab::{LabGuard, LabSpec};
use serde_json::{Value, json};

use crate::bench_lab;
use crate::child::Spawned;
use crate::cpu;
use crate::synth::{self, SynthSpec};
use crate::vxlan_flood::{self, DatagramPool, FloodReport};

/// The lab's name (namespaces `pt-benchtun-*`).
const LAB_NAME: &str = "benchtun";
/// VXLAN port the broker listens on.
const VXLAN_PORT: u16 = 4789;
/// The policy's VNI.
const VNI: u32 = 1;
/// Time for the last datagrams to be read before the broker is stopped.
const DRAIN: Duration = Duration::from_millis(500);
/// The search stops when the lowest lossy rate is within this factor of the highest clean one.
const PRECISION: f64 = 1.1;
/// A step "reached" its rate if the sender sent at least this share of it.
const REACHED: f64 = 0.95;

/// Flags of `podtap-bench broker-tunnel`.
#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Seconds of traffic per step.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub seconds: u32,
    /// First rate tried, in packets per second.
    #[arg(long, default_value_t = 50_000)]
    pub start_rate: u64,
    /// Most steps of the search.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=30))]
    pub max_steps: u32,
    /// Frames in the sender's pool (taken from the synthetic capture, sent round robin).
    #[arg(long, default_value_t = 200_000)]
    pub frames: u64,
    /// Slice length of the pipeline.
    #[arg(long, default_value_t = 96)]
    pub slice: usize,
    /// CPU the broker is pinned to (`taskset -c`).
    #[arg(long, default_value_t = 1)]
    pub broker_cpu: usize,
    /// CPU the sender thread is pinned to.
    #[arg(long, default_value_t = 0)]
    pub sender_cpu: usize,
    /// Steer the kernel's receive path of the broker's interface (IP, UDP, the socket queue)
    /// to the broker's CPU with RPS, as a NIC queue bound to that core would; without it that
    /// work runs on the sender's CPU, after the bridge.
    #[arg(long)]
    pub receive_on_broker_cpu: bool,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The kernel's UDP counters of one network namespace (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default)]
struct UdpCounters {
    in_datagrams: u64,
    in_errors: u64,
    rcvbuf_errors: u64,
}

/// One step of the search.
#[derive(Debug, Clone, Copy)]
struct Step {
    target: u64,
    flood: FloodReport,
    /// The broker's `received` (well-formed tunnel packets).
    received: u64,
    /// Packets the policy kept (after filter and dedupe) and the pcap output wrote.
    kept: u64,
    written: u64,
    /// Kernel drops at the broker's socket (`RcvbufErrors` delta).
    socket_drops: u64,
    /// Datagrams that reached the broker netns's UDP layer (`InDatagrams` + `InErrors` delta):
    /// what was sent less what was lost on the way (veth backlog, bridge).
    arrived: u64,
    /// Broker CPU seconds from the first datagram until the drain after the last.
    broker_cpu: f64,
}

impl Step {
    fn lost(&self) -> u64 {
        self.flood.sent.saturating_sub(self.received)
    }
    fn clean(&self) -> bool {
        self.lost() == 0 && self.flood.errors == 0
    }
    fn reached(&self) -> bool {
        self.flood.pps() >= REACHED * self.target as f64
    }
    /// Share of one core the broker used while the sender sent.
    fn busy(&self) -> f64 {
        self.broker_cpu / self.flood.seconds.max(1e-9)
    }
    /// Broker CPU per received packet, in microseconds.
    fn us_per_packet(&self) -> f64 {
        1e6 * self.broker_cpu / self.received.max(1) as f64
    }
    fn to_json(self) -> Value {
        json!({
            "target_pps": self.target,
            "sent": self.flood.sent,
            "send_errors": self.flood.errors,
            "sent_pps": self.flood.pps(),
            "frame_bytes": self.flood.frame_bytes,
            "received": self.received,
            "kept": self.kept,
            "written": self.written,
            "lost": self.lost(),
            "socket_drops": self.socket_drops,
            "arrived_at_udp": self.arrived,
            "broker_cpu_s": self.broker_cpu,
            "broker_busy_share": self.busy(),
            "broker_us_per_packet": self.us_per_packet(),
        })
    }
}

/// Runs `podtap-bench broker-tunnel`.
pub fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    bench_lab::require_program("taskset")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.broker_cpu >= cpus || args.sender_cpu >= cpus || args.broker_cpu == args.sender_cpu {
        bail!(
            "--broker-cpu {} and --sender-cpu {} must be different CPUs below {cpus}",
            args.broker_cpu,
            args.sender_cpu
        );
    }
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench broker-tunnel: {machine}");
    let tmp = tempfile::Builder::new()
        .prefix("podtap-bench-tunnel")
        .tempdir()
        .context("a work directory")?;

    // The frames: the synthetic capture, with duplicates for the dedupe stage.
    let capture = tmp.path().join("frames.pcap");
    let truth = synth::write_capture(
        &SynthSpec {
            packets: args.frames,
            connections: (args.frames / 100).max(1) as u32,
            seconds: 10,
            seed: 1,
            duplicate_one_in: Some(4),
        },
        &capture,
    )?;
    let pool = DatagramPool::new(read_frames(&capture)?, VNI);
    std::fs::remove_file(&capture).ok();
    eprintln!(
        "{} frames in the pool ({} duplicates), {:.0} bytes on average",
        pool.len(),
        truth.duplicates,
        pool.mean_frame()
    );

    let mut lab = LabGuard::up(&LabSpec::new(LAB_NAME, vec![Cni::Calico], 0))
        .context("bringing up the lab")?;
    let broker_host = lab.add_host("broker").context("adding the broker host")?;
    let sender_host = lab.add_host("sender").context("adding the sender host")?;
    if args.receive_on_broker_cpu {
        steer_receive(&broker_host.netns, args.broker_cpu)?;
    }
    let out_dir = tmp.path().join("out");
    let config = tmp.path().join("broker.yaml");
    let yaml = format!(
        "listen:\n  vxlan_port: {VXLAN_PORT}\n  gre: false\npolicies:\n  - name: tunnel\n    vni: {VNI}\n    stages:\n      - type: filter\n        expression: \"tcp or udp\"\n      - type: dedupe\n        window_ms: 10\n      - type: slice\n        length: {}\n    outputs:\n      - type: pcap\n        directory: {}\n",
        args.slice,
        out_dir.display()
    );
    std::fs::write(&config, &yaml).context("writing the broker configuration")?;

    let run_step = |rate: u64| -> anyhow::Result<Step> {
        if out_dir.exists() {
            std::fs::remove_dir_all(&out_dir).context("clearing the output directory")?;
        }
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &args.broker_cpu.to_string()])
            .arg(&podtap)
            .arg("broker")
            .arg("--config")
            .arg(&config)
            .args(["--netns", &broker_host.netns]);
        let mut broker = Spawned::start("podtap broker", cmd)?;
        broker.wait_for_output("broker receiving VXLAN", Duration::from_secs(10))?;
        let before = udp_counters(&broker_host.netns)?;
        let window = cpu::CpuWindow::start(Some(broker.pid()))?;
        let to = std::net::SocketAddr::from((broker_host.ip, VXLAN_PORT));
        let duration = Duration::from_secs(u64::from(args.seconds));
        let sender_cpu = args.sender_cpu;
        let flood = podtap_cluster::netns::run_in(Some(&sender_host.netns), || {
            vxlan_flood::flood(&pool, to, rate, duration, sender_cpu)
        })
        .context("entering the sender's namespace")??;
        std::thread::sleep(DRAIN);
        let used = window.stop()?;
        let after = udp_counters(&broker_host.netns)?;
        let done = broker.terminate(Duration::from_secs(30))?;
        if !done.status.success() {
            bail!("podtap broker failed ({}):\n{}", done.status, done.stderr);
        }
        let summary = parse_summary(&done.stdout)
            .with_context(|| format!("no summary from the broker:\n{}", done.stdout))?;
        let step = Step {
            target: rate,
            flood,
            received: summary.received,
            kept: summary.kept,
            written: summary.written,
            socket_drops: after.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            arrived: (after.in_datagrams + after.in_errors)
                .saturating_sub(before.in_datagrams + before.in_errors),
            broker_cpu: used.process.unwrap_or(0.0),
        };
        eprintln!(
            "  {:>8.1} kpps asked, {:>8.1} sent, received {:>9} of {:>9}, lost {:>8} (socket drops {}), kept {}, written {}, broker busy {:.0}%, {:.2} µs/packet",
            rate as f64 / 1e3,
            step.flood.pps() / 1e3,
            step.received,
            step.flood.sent,
            step.lost(),
            step.socket_drops,
            step.kept,
            step.written,
            100.0 * step.busy(),
            step.us_per_packet()
        );
        Ok(step)
    };

    let mut steps: Vec<Step> = Vec::new();
    let mut clean: Option<u64> = None;
    let mut lossy: Option<u64> = None;
    let mut sender_limited = false;
    let mut rate = args.start_rate.max(1000);
    for _ in 0..args.max_steps {
        let step = run_step(rate)?;
        steps.push(step);
        if step.clean() {
            if !step.reached() {
                // The sender could not go faster; nothing was lost at what it reached.
                sender_limited = true;
                break;
            }
            clean = Some(clean.map_or(rate, |c| c.max(rate)));
        } else {
            lossy = Some(lossy.map_or(rate, |l| l.min(rate)));
        }
        rate = match (clean, lossy) {
            (Some(c), None) => c * 2,
            (None, Some(l)) => l / 2,
            (Some(c), Some(l)) => {
                if l as f64 <= c as f64 * PRECISION {
                    break;
                }
                (c + l) / 2
            }
            (None, None) => break,
        };
        if rate < 1000 {
            break;
        }
    }
    drop(lab);

    let best = steps
        .iter()
        .filter(|s| s.clean())
        .max_by(|a, b| a.flood.pps().total_cmp(&b.flood.pps()))
        .copied();
    let first_lossy = steps
        .iter()
        .filter(|s| !s.clean())
        .min_by_key(|s| s.target)
        .copied();
    if args.json {
        let out = json!({
            "machine": machine,
            "seconds": args.seconds,
            "pool_frames": pool.len(),
            "mean_frame": pool.mean_frame(),
            "pipeline": yaml,
            "steps": steps.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
            "best_clean_pps": best.map(|s| s.flood.pps()),
            "lowest_lossy_target_pps": first_lossy.map(|s| s.target),
            "sender_limited": sender_limited,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("machine: {machine}");
    println!(
        "pipeline: filter (tcp or udp), dedupe (10 ms), slice ({} bytes), pcapng output; broker on CPU {}, sender on CPU {}",
        args.slice, args.broker_cpu, args.sender_cpu
    );
    println!(
        "frames: {} from the synthetic capture ({} duplicates), {:.0} bytes on average, in plain VXLAN; {} s per step",
        pool.len(),
        truth.duplicates,
        pool.mean_frame(),
        args.seconds
    );
    println!();
    println!(
        "| asked | sent | sent rate | arrived at UDP | socket drops | received | lost | kept | written | broker busy | broker µs/packet |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &steps {
        println!(
            "| {:.1} kpps | {} | {:.1} kpps | {} | {} | {} | {} | {} | {} | {:.0}% | {:.2} |",
            s.target as f64 / 1e3,
            s.flood.sent,
            s.flood.pps() / 1e3,
            s.arrived,
            s.socket_drops,
            s.received,
            s.lost(),
            s.kept,
            s.written,
            100.0 * s.busy(),
            s.us_per_packet()
        );
    }
    println!();
    match best {
        Some(b) => println!(
            "highest zero-loss rate: {:.1} kpps ({:.2} Gbit/s of inner frames){}{}",
            b.flood.pps() / 1e3,
            b.flood.frame_bytes as f64 * 8.0 / b.flood.seconds / 1e9,
            if sender_limited {
                "; the sender could not go faster, so this is a lower bound"
            } else {
                ""
            },
            first_lossy
                .map(|l| format!(
                    "; loss from {:.1} kpps asked ({} lost of {})",
                    l.target as f64 / 1e3,
                    l.lost(),
                    l.flood.sent
                ))
                .unwrap_or_default()
        ),
        None => println!("no rate without loss (lowest tried {} pps)", rate),
    }
    if let Some(b) = best {
        println!(
            "broker CPU at that rate: {:.0}% of its core, {:.2} µs per packet: one core would take about {:.0} kpps (a projection, not a measurement)",
            100.0 * b.busy(),
            b.us_per_packet(),
            1e3 / b.us_per_packet()
        );
    }
    Ok(())
}

/// Sends what arrives on the host's `eth0` to `cpu`'s backlog (RPS), from there on up the
/// stack.
fn steer_receive(netns: &str, cpu: usize) -> anyhow::Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    let path = format!(
        "/sys/class/net/{}/queues/rx-0/rps_cpus",
        podtap_lab::naming::ETH0
    );
    // `ip netns exec` mounts the namespace's own /sys.
    let status = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c"])
        .arg(format!("echo {mask} > {path}"))
        .status()
        .context("running ip netns exec")?;
    if !status.success() {
        bail!("setting {path} to {mask} in {netns} failed ({status})");
    }
    Ok(())
}

/// What the broker's summary says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BrokerSummary {
    received: u64,
    kept: u64,
    written: u64,
}

/// Reads `broker: received N tunnel packets`, `policy P: received N, kept M` and the pcap
/// output's `packets N`.
fn parse_summary(text: &str) -> Option<BrokerSummary> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let mut s = BrokerSummary::default();
    let mut seen = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("broker: received") {
            s.received = number_after(t, "received")?;
            seen = true;
        } else if t.starts_with("policy ") {
            s.kept = number_after(t, "kept")?;
        } else if t.starts_with("output pcap") {
            s.written = number_after(t, "packets")?;
        }
    }
    seen.then_some(s)
}

/// The kernel's UDP counters in network namespace `netns`.
fn udp_counters(netns: &str) -> anyhow::Result<UdpCounters> {
    // /proc/thread-self/net shows the reading thread's namespace.
    let text = podtap_cluster::netns::run_in(Some(netns), || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
    })
    .context("entering the broker's namespace")?
    .context("reading /proc/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(header), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |name: &str| -> u64 {
        header
            .split_whitespace()
            .position(|h| h == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(UdpCounters {
        in_datagrams: field("InDatagrams"),
        in_errors: field("InErrors"),
        rcvbuf_errors: field("RcvbufErrors"),
    })
}

/// Every frame of a pcap file, in order.
fn read_frames(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let file = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut reader = pcap_file::pcap::PcapReader::new(file)?;
    let mut frames = Vec::new();
    while let Some(p) = reader.next_packet() {
        frames.push(p?.data.into_owned());
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_broker_summary() {
        let text = "broker: received 1200 tunnel packets (900000 bytes of frames)\npolicy tunnel: received 1200, kept 1000\n  stage filter  in      1200 kept      1200 dropped 0\n  output pcap       packets      1000 bytes       96000 failed 0 files_deleted 0, files_written 1\n";
        assert_eq!(
            parse_summary(text),
            Some(BrokerSummary {
                received: 1200,
                kept: 1000,
                written: 1000
            })
        );
        assert_eq!(parse_summary("nothing"), None);
    }
}
