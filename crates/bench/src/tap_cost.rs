//! `podtap-bench tap`: what tapping a pod costs its traffic. iperf3 TCP throughput and an
//! unpaced UDP flood's received packet rate between two lab pods, with nothing on the sender's
//! veth, with podtap's agent on it, and with `tcpdump -w` on it instead; runs interleave
//! (none, podtap, tcpdump, none, ...) and each figure is the median over the repeats. Prints a
//! table, the ratios against the untapped run and against tcpdump, and whether the targets
//! hold.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::bench_lab::{self, BenchLab};
use crate::cpu::{CpuUse, CpuWindow};
use crate::iperf::{self, IperfResult, IperfServer, Workload};
use crate::measure::{median, yes_no};
use crate::tap::{RunningTap, Scenario, TapSummary};

/// UDP payload of the flood: 22 bytes make a 64-byte frame on the veth (14 Ethernet + 20 IPv4
/// + 8 UDP + 22; no FCS on a veth).
pub const UDP_PAYLOAD: usize = 22;
/// The least share of the untapped throughput podtap must keep.
const THROUGHPUT_TARGET: f64 = 0.95;
/// Pause after a tap starts, so its start-up is not measured.
const SETTLE: Duration = Duration::from_millis(300);

/// Flags of `podtap-bench tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub seconds: u32,
    /// Runs per workload and scenario (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// An argument for `podtap agent` (repeatable), e.g. `--agent-arg=--gso --agent-arg=keep`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    workload: Workload,
    scenario: Scenario,
    iperf: IperfResult,
    cpu: CpuUse,
    tap: TapSummary,
}

impl Run {
    /// The headline rate: received bits/s (TCP) or received packets/s (UDP).
    fn rate(&self) -> f64 {
        match self.workload {
            Workload::Tcp => self.iperf.bits_per_second(),
            Workload::UdpFlood { .. } => self.iperf.received_pps(),
        }
    }

    /// Units of work done: GB received (TCP) or million packets received (UDP).
    fn units(&self) -> f64 {
        match self.workload {
            Workload::Tcp => self.iperf.received_bytes / 1e9,
            Workload::UdpFlood { .. } => self.iperf.received_packets / 1e6,
        }
    }

    /// Machine CPU seconds per unit of work.
    fn cpu_per_unit(&self) -> f64 {
        self.cpu.machine / self.units()
    }

    /// Share of the packets the tap saw whose copy was lost.
    fn lost_share(&self) -> f64 {
        if self.tap.seen == 0 {
            0.0
        } else {
            self.tap.dropped as f64 / self.tap.seen as f64
        }
    }

    /// The tap process's CPU seconds per unit of work.
    fn tap_cpu_per_unit(&self) -> Option<f64> {
        self.cpu.process.map(|p| p / self.units())
    }

    fn to_json(self) -> Value {
        json!({
            "workload": self.workload.name(),
            "scenario": self.scenario.name(),
            "seconds": self.iperf.seconds,
            "received_bytes": self.iperf.received_bytes,
            "sent_packets": self.iperf.sent_packets,
            "received_packets": self.iperf.received_packets,
            "rate": self.rate(),
            "machine_cpu_seconds": self.cpu.machine,
            "tap_cpu_seconds": self.cpu.process,
            "window_seconds": self.cpu.wall,
            "tap_seen": self.tap.seen,
            "tap_written": self.tap.written,
            "tap_dropped": self.tap.dropped,
            "capture_file_bytes": self.tap.file_bytes,
        })
    }
}

/// Medians of one workload and scenario.
#[derive(Debug, Clone, Copy, Default)]
struct Medians {
    rate: f64,
    sent_pps: f64,
    cpu_per_unit: f64,
    tap_cpu_per_unit: Option<f64>,
    seen: f64,
    written: f64,
    dropped: f64,
    lost_share: f64,
    file_bytes: f64,
}

impl Medians {
    fn of(runs: &[&Run]) -> Medians {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let tap: Vec<f64> = runs.iter().filter_map(|r| r.tap_cpu_per_unit()).collect();
        Medians {
            rate: m(&|r| r.rate()),
            sent_pps: m(&|r| r.iperf.sent_pps()),
            cpu_per_unit: m(&|r| r.cpu_per_unit()),
            tap_cpu_per_unit: (!tap.is_empty()).then(|| median(tap)),
            seen: m(&|r| r.tap.seen as f64),
            written: m(&|r| r.tap.written as f64),
            dropped: m(&|r| r.tap.dropped as f64),
            lost_share: m(&|r| r.lost_share()),
            file_bytes: m(&|r| r.tap.file_bytes as f64),
        }
    }
}

/// The comparison of one workload.
#[derive(Debug, Clone, Copy)]
struct Comparison {
    workload: Workload,
    none: Medians,
    podtap: Medians,
    tcpdump: Medians,
}

impl Comparison {
    fn podtap_vs_none(&self) -> f64 {
        self.podtap.rate / self.none.rate
    }
    fn tcpdump_vs_none(&self) -> f64 {
        self.tcpdump.rate / self.none.rate
    }
    /// Extra machine CPU per unit of work with podtap.
    fn podtap_cost(&self) -> f64 {
        self.podtap.cpu_per_unit - self.none.cpu_per_unit
    }
    /// Extra machine CPU per unit of work with tcpdump.
    fn tcpdump_cost(&self) -> f64 {
        self.tcpdump.cpu_per_unit - self.none.cpu_per_unit
    }
    /// podtap's CPU cost over tcpdump's (meaningless unless tcpdump's is positive).
    fn cost_ratio(&self) -> Option<f64> {
        (self.tcpdump_cost() > 0.0).then(|| self.podtap_cost() / self.tcpdump_cost())
    }
    /// podtap's dropped copies over tcpdump's kernel drops (counts in different units: wire
    /// packets and skbs).
    fn drop_ratio(&self) -> Option<f64> {
        (self.tcpdump.dropped > 0.0).then(|| self.podtap.dropped / self.tcpdump.dropped)
    }
    /// podtap's lost share over tcpdump's (each relative to what that tap saw).
    fn lost_share_ratio(&self) -> Option<f64> {
        (self.tcpdump.lost_share > 0.0).then(|| self.podtap.lost_share / self.tcpdump.lost_share)
    }
    fn meets_throughput(&self) -> bool {
        self.podtap_vs_none() >= THROUGHPUT_TARGET
    }
    fn beats_tcpdump_throughput(&self) -> bool {
        self.podtap.rate > self.tcpdump.rate
    }
    fn beats_tcpdump_cpu(&self) -> bool {
        self.podtap_cost() < self.tcpdump_cost()
    }

    fn to_json(self) -> Value {
        let m = |x: &Medians| {
            json!({
                "rate": x.rate,
                "sent_pps": x.sent_pps,
                "cpu_per_unit": x.cpu_per_unit,
                "tap_cpu_per_unit": x.tap_cpu_per_unit,
                "seen": x.seen,
                "written": x.written,
                "dropped": x.dropped,
                "lost_share": x.lost_share,
                "capture_file_bytes": x.file_bytes,
            })
        };
        json!({
            "workload": self.workload.name(),
            "rate_unit": rate_unit(self.workload),
            "cpu_unit": cpu_unit(self.workload),
            "none": m(&self.none),
            "podtap": m(&self.podtap),
            "tcpdump": m(&self.tcpdump),
            "ratios": {
                "podtap_vs_none": self.podtap_vs_none(),
                "tcpdump_vs_none": self.tcpdump_vs_none(),
                "podtap_cpu_cost": self.podtap_cost(),
                "tcpdump_cpu_cost": self.tcpdump_cost(),
                "podtap_vs_tcpdump_cpu_cost": self.cost_ratio(),
                "podtap_vs_tcpdump_drops": self.drop_ratio(),
                "podtap_vs_tcpdump_lost_share": self.lost_share_ratio(),
            },
            "targets": {
                "podtap_keeps_95_percent": self.meets_throughput(),
                "podtap_costs_less_throughput_than_tcpdump": self.beats_tcpdump_throughput(),
                "podtap_costs_less_cpu_than_tcpdump": self.beats_tcpdump_cpu(),
            },
        })
    }
}

fn rate_unit(w: Workload) -> &'static str {
    match w {
        Workload::Tcp => "bit/s received",
        Workload::UdpFlood { .. } => "packets/s received",
    }
}

fn cpu_unit(w: Workload) -> &'static str {
    match w {
        Workload::Tcp => "CPU s/GB",
        Workload::UdpFlood { .. } => "CPU s/Mpkt",
    }
}

/// Runs `podtap-bench tap`.
pub fn run(args: TapArgs) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    bench_lab::require_program("iperf3")?;
    bench_lab::require_program("tcpdump")?;
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench tap: {machine}");
    let bench = BenchLab::up(&podtap)?;
    let dir = tempfile::Builder::new()
        .prefix("podtap-bench-")
        .tempdir()
        .context("creating a directory for the capture files")?;

    let workloads = [
        Workload::Tcp,
        Workload::UdpFlood {
            payload: UDP_PAYLOAD,
        },
    ];
    // Warm-up, not counted: first connections, page cache, CPU frequency.
    measure(
        &bench,
        &dir,
        Workload::Tcp,
        Scenario::None,
        1,
        &args.agent_args,
    )
    .context("warm-up run")?;

    let mut runs = Vec::new();
    for repeat in 1..=args.repeat {
        for workload in workloads {
            for scenario in Scenario::ALL {
                let run = measure(
                    &bench,
                    &dir,
                    workload,
                    scenario,
                    args.seconds,
                    &args.agent_args,
                )
                .with_context(|| {
                    format!(
                        "run {repeat} of {} with tap {}",
                        workload.name(),
                        scenario.name()
                    )
                })?;
                eprintln!(
                    "  run {repeat}/{}: {:<3} {:<7} {}",
                    args.repeat,
                    workload.name(),
                    scenario.name(),
                    format_rate(workload, run.rate())
                );
                runs.push(run);
            }
        }
    }

    let comparisons: Vec<Comparison> = workloads
        .iter()
        .map(|&w| {
            let of = |s: Scenario| {
                let picked: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.scenario == s)
                    .collect();
                Medians::of(&picked)
            };
            Comparison {
                workload: w,
                none: of(Scenario::None),
                podtap: of(Scenario::Podtap),
                tcpdump: of(Scenario::Tcpdump),
            }
        })
        .collect();

    if args.json {
        let out = json!({
            "benchmark": "tap",
            "machine": machine,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "sender": bench_lab::SENDER,
            "receiver": bench_lab::RECEIVER,
            "udp_payload": UDP_PAYLOAD,
            "runs": runs.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "comparisons": comparisons.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&args, &machine, &comparisons);
    }
    Ok(())
}

/// One run: iperf3 server in the receiver, the tap on the sender's veth, the client in the
/// sender; CPU is measured over the client's run.
fn measure(
    bench: &BenchLab,
    dir: &tempfile::TempDir,
    workload: Workload,
    scenario: Scenario,
    seconds: u32,
    agent_args: &[String],
) -> anyhow::Result<Run> {
    let server = IperfServer::start(&bench.receiver.netns, &bench.receiver.ip)?;
    let tap = RunningTap::start(scenario, &bench.target, dir.path(), agent_args)?;
    std::thread::sleep(SETTLE);
    let window = CpuWindow::start(tap.pid())?;
    let client = iperf::start_client(&bench.sender.netns, &bench.receiver.ip, workload, seconds)?;
    let iperf = iperf::finish_client(client, workload, seconds);
    let cpu = window.stop();
    let summary = tap.stop();
    let server_done = server.finish();
    let (iperf, cpu, summary) = (iperf?, cpu?, summary?);
    server_done?;
    Ok(Run {
        workload,
        scenario,
        iperf,
        cpu,
        tap: summary,
    })
}

/// A rate with its unit.
fn format_rate(w: Workload, rate: f64) -> String {
    match w {
        Workload::Tcp => format!("{:.2} Gbit/s", rate / 1e9),
        Workload::UdpFlood { .. } => format!("{:.1} kpps", rate / 1e3),
    }
}

/// A count with a k/M suffix.
fn format_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// An optional ratio.
fn format_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "n/a".into())
}

/// Prints the table, the ratios and the targets.
fn print_report(args: &TapArgs, machine: &str, comparisons: &[Comparison]) {
    println!(
        "tap cost: iperf3 {} -> {} (same node, calico lab), {} s per run, median of {} run(s)",
        bench_lab::SENDER,
        bench_lab::RECEIVER,
        args.seconds,
        args.repeat
    );
    println!("machine: {machine}");
    println!(
        "UDP: iperf3 -u -b 0 -l {UDP_PAYLOAD} (64-byte frames on the veth); rate = datagrams \
         received by the server"
    );
    println!();
    println!(
        "{:<4} {:<8} {:>14} {:>7} {:>11} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "LOAD",
        "TAP",
        "RECEIVED",
        "x NONE",
        "SENT",
        "CPU/UNIT",
        "CPU COST",
        "TAP PROC",
        "WRITTEN",
        "DROPPED",
        "LOST",
        "FILE MB"
    );
    for c in comparisons {
        let unit = cpu_unit(c.workload);
        for (scenario, m) in [
            (Scenario::None, &c.none),
            (Scenario::Podtap, &c.podtap),
            (Scenario::Tcpdump, &c.tcpdump),
        ] {
            let tapped = scenario != Scenario::None;
            let dash = || "-".to_string();
            println!(
                "{:<4} {:<8} {:>14} {:>7.3} {:>11} {:>13} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
                c.workload.name(),
                scenario.name(),
                format_rate(c.workload, m.rate),
                m.rate / c.none.rate,
                match c.workload {
                    Workload::Tcp => dash(),
                    Workload::UdpFlood { .. } => format!("{:.1} kpps", m.sent_pps / 1e3),
                },
                format!("{:.3} {}", m.cpu_per_unit, unit.trim_start_matches("CPU ")),
                if tapped {
                    format!("{:+.3}", m.cpu_per_unit - c.none.cpu_per_unit)
                } else {
                    dash()
                },
                m.tap_cpu_per_unit
                    .map(|t| format!("{t:.3}"))
                    .unwrap_or_else(dash),
                if tapped {
                    format_count(m.written)
                } else {
                    dash()
                },
                if tapped {
                    format_count(m.dropped)
                } else {
                    dash()
                },
                if tapped {
                    format!("{:.1}%", m.lost_share * 100.0)
                } else {
                    dash()
                },
                if tapped {
                    format!("{:.0}", m.file_bytes / 1e6)
                } else {
                    dash()
                },
            );
        }
    }
    println!();
    println!(
        "CPU/UNIT: busy CPU seconds of the whole machine (user+nice+system+irq+softirq, \
         /proc/stat) per GB (TCP) or million datagrams (UDP) received; CPU COST: minus the \
         untapped run's; TAP PROC: the tap process's own user+system time per unit. WRITTEN, \
         DROPPED: podtap counts wire packets (GSO segmented), tcpdump counts skbs (a TCP skb is \
         up to ~45 wire packets); LOST: dropped / seen by that tap."
    );
    println!();
    println!("ratios:");
    for c in comparisons {
        let w = c.workload.name();
        println!(
            "  {w}: podtap/untapped {:.3}, tcpdump/untapped {:.3}, podtap/tcpdump throughput {:.3}",
            c.podtap_vs_none(),
            c.tcpdump_vs_none(),
            c.podtap.rate / c.tcpdump.rate
        );
        println!(
            "  {w}: CPU cost podtap {:+.3} vs tcpdump {:+.3} {} -> podtap/tcpdump {}",
            c.podtap_cost(),
            c.tcpdump_cost(),
            cpu_unit(c.workload),
            format_ratio(c.cost_ratio())
        );
        println!(
            "  {w}: copies dropped podtap {} (wire packets) vs tcpdump kernel drops {} (skbs) -> \
             podtap/tcpdump {}; lost share {:.1}% vs {:.1}% -> podtap/tcpdump {}",
            format_count(c.podtap.dropped),
            format_count(c.tcpdump.dropped),
            format_ratio(c.drop_ratio()),
            c.podtap.lost_share * 100.0,
            c.tcpdump.lost_share * 100.0,
            format_ratio(c.lost_share_ratio())
        );
    }
    println!();
    println!("targets:");
    for c in comparisons {
        let w = c.workload.name();
        println!(
            "  {w}: podtap keeps >= {:.0}% of untapped throughput: {} ({:.1}%)",
            THROUGHPUT_TARGET * 100.0,
            yes_no(c.meets_throughput()),
            c.podtap_vs_none() * 100.0
        );
        println!(
            "  {w}: podtap costs less throughput than tcpdump: {}",
            yes_no(c.beats_tcpdump_throughput())
        );
        println!(
            "  {w}: podtap costs less CPU than tcpdump: {}",
            yes_no(c.beats_tcpdump_cpu())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_format() {
        assert_eq!(format_count(950.0), "950");
        assert_eq!(format_count(12_345.0), "12.3k");
        assert_eq!(format_count(2_500_000.0), "2.50M");
    }
}
