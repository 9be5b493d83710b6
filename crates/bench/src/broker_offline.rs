//! `podtap-bench broker`: podtap's broker pipelines against the usual offline tools, on the
//! same synthetic capture (see [`crate::synth`]), in the same run, with the results checked
//! against each other and against the capture's ground truth:
//!
//! - `flows`: pcap to NetFlow v9 and IPFIX: `podtap broker --replay` with a `netflow_v9` /
//!   `ipfix` output, `softflowd -r`, and `pmacctd` (`nfprobe` plugin), each exporting to an
//!   `nfcapd` on loopback; totals from `nfdump`.
//! - `dedupe`: the `dedupe` stage writing pcapng against `editcap -w SECONDS` (time window, the
//!   same semantics) and `editcap -D FRAMES` (frame window), on a capture where one
//!   conversation in four appears twice, byte for byte.
//! - `slice`: a `filter` (`tcp`) + `slice` + `pcap` policy against `tcpdump -r IN -w OUT tcp`
//!   (filter and write; `-s` does not cut packets read from a file), `editcap -s` (cut and
//!   write) and the two piped (the same result as podtap's).
//!
//! CPU is what the kernel charged to each tool's process and the descendants it waited for
//! (`wait4`), from start to exit: reading the file, the work, writing the result. For podtap
//! the replay's own CPU figure (from after the capture is opened to the end) is shown as well.
//! Each comparison runs a warm-up round, then `--repeat` rounds with the tools interleaved;
//! figures are medians.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::bench_lab::{self, require_program};
use crate::capture_digest::{self, CaptureDigest};
use crate::flow_collector::{FlowCollector, FlowTotals};
use crate::measure::{self, Measured, count, median, own_cpu, rate};
use crate::synth::{self, SynthSpec, SynthSummary};

/// Longest any single tool run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// NetFlow target: podtap's packets per CPU-second over softflowd's.
const FLOW_TARGET: f64 = 3.0;
/// Dedupe target: podtap's packets per CPU-second over editcap's.
const DEDUPE_TARGET: f64 = 10.0;
/// Filter + slice + write target: faster than each tool.
const SLICE_TARGET: f64 = 1.0;

/// Which comparisons to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// pcap to NetFlow v9 and IPFIX against softflowd and pmacctd.
    Flows,
    /// dedupe against editcap -w / -D.
    Dedupe,
    /// filter + slice + pcapng write against tcpdump and editcap.
    Slice,
}

/// Flags of `podtap-bench broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Packets in the synthetic capture (the dedupe capture adds its duplicates).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Conversations in the capture (each up to two unidirectional flows).
    #[arg(long, default_value_t = 10_000)]
    pub connections: u32,
    /// Seconds the capture spans.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Dedupe capture: every packet of one conversation in N appears twice.
    #[arg(long, default_value_t = 4)]
    pub duplicate_one_in: u32,
    /// Dedupe window in milliseconds (podtap `window_ms`, editcap `-w` in seconds).
    #[arg(long, default_value_t = 10)]
    pub window_ms: u64,
    /// Slice length in bytes from the start of the frame (podtap `slice.length`, editcap `-s`).
    #[arg(long, default_value_t = 96)]
    pub slice: usize,
    /// Which comparisons to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Flows, Part::Dedupe, Part::Slice])]
    pub only: Vec<Part>,
    /// Timed rounds per comparison (the median is reported), after one warm-up round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Directory for the captures and outputs (default: a new one in the temporary directory,
    /// removed at the end). Needs about 3 GB with the defaults.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// NetFlow flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowVersion {
    V9,
    Ipfix,
}

impl FlowVersion {
    fn label(self) -> &'static str {
        match self {
            FlowVersion::V9 => "NetFlow v9",
            FlowVersion::Ipfix => "IPFIX",
        }
    }
    fn number(self) -> u32 {
        match self {
            FlowVersion::V9 => 9,
            FlowVersion::Ipfix => 10,
        }
    }
    fn podtap_output(self) -> &'static str {
        match self {
            FlowVersion::V9 => "netflow_v9",
            FlowVersion::Ipfix => "ipfix",
        }
    }
}

/// One tool's job in a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    FlowPodtap(FlowVersion),
    FlowSoftflowd(FlowVersion),
    FlowPmacctd(FlowVersion),
    DedupePodtap,
    DedupeEditcapTime,
    DedupeEditcapFrames,
    SlicePodtap,
    SliceTcpdump,
    SliceEditcap,
    SliceTcpdumpEditcap,
}

impl Job {
    fn tool(self) -> &'static str {
        match self {
            Job::FlowPodtap(_) | Job::DedupePodtap | Job::SlicePodtap => "podtap",
            Job::FlowSoftflowd(_) => "softflowd",
            Job::FlowPmacctd(_) => "pmacctd",
            Job::DedupeEditcapTime => "editcap -w",
            Job::DedupeEditcapFrames => "editcap -D",
            Job::SliceTcpdump => "tcpdump (filter only)",
            Job::SliceEditcap => "editcap -s (slice only)",
            Job::SliceTcpdumpEditcap => "tcpdump + editcap -s (piped)",
        }
    }

    fn is_podtap(self) -> bool {
        self.tool() == "podtap"
    }
}

/// Everything the jobs need.
struct Inputs {
    podtap: PathBuf,
    dir: PathBuf,
    base: PathBuf,
    dup: PathBuf,
    base_truth: SynthSummary,
    dup_truth: SynthSummary,
    window_ms: u64,
    slice: usize,
}

/// What a job produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Flows(FlowTotals),
    Capture(CaptureDigest),
}

/// One measured run of a job.
#[derive(Debug, Clone)]
struct JobRun {
    measured: Measured,
    /// podtap's own CPU figure (the replay's, from after the capture is opened).
    own_cpu: Option<f64>,
    outcome: Outcome,
    /// The command, with the work directory written as `$DIR` and the collector as `$COLLECTOR`.
    command: String,
}

/// A job's runs, summarised.
#[derive(Debug, Clone)]
struct JobSummary {
    job: Job,
    command: String,
    input_frames: u64,
    cpu: f64,
    user: f64,
    system: f64,
    wall: f64,
    own_cpu: Option<f64>,
    outcome: Outcome,
    /// Whether every timed run produced the same outcome.
    stable: bool,
}

impl JobSummary {
    fn pps(&self) -> f64 {
        self.input_frames as f64 / self.cpu.max(1e-9)
    }
    fn own_pps(&self) -> Option<f64> {
        self.own_cpu.map(|c| self.input_frames as f64 / c.max(1e-9))
    }
}

/// A comparison's results.
struct Comparison {
    title: String,
    input: &'static str,
    jobs: Vec<JobSummary>,
    checks: Vec<(String, bool)>,
    /// (tool, target ratio) pairs podtap is held to.
    targets: Vec<(Job, f64)>,
}

/// Runs `podtap-bench broker`.
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    let mut programs = Vec::new();
    if args.only.contains(&Part::Flows) {
        programs.extend(["softflowd", "pmacctd", "nfcapd", "nfdump"]);
    }
    if args.only.contains(&Part::Dedupe) || args.only.contains(&Part::Slice) {
        programs.extend(["editcap", "tcpdump"]);
    }
    for p in programs {
        require_on_path(p)?;
    }
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench broker: {machine}");
    let tmp = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("podtap-bench-broker")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new()
            .prefix("podtap-bench-broker")
            .tempdir(),
    }
    .context("creating the work directory")?;
    let dir = tmp.path().to_path_buf();

    let spec = SynthSpec {
        packets: args.packets,
        connections: args.connections,
        seconds: args.seconds,
        seed: args.seed,
        duplicate_one_in: None,
    };
    let base = dir.join("base.pcap");
    let started = Instant::now();
    let base_truth = synth::write_capture(&spec, &base)?;
    eprintln!(
        "wrote {} ({} frames, {} flows, {:.1} MB) in {:.1} s",
        base.display(),
        base_truth.frames,
        base_truth.flows,
        base_truth.frame_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let dup = dir.join("dup.pcap");
    let dup_truth = if args.only.contains(&Part::Dedupe) {
        let t = synth::write_capture(
            &SynthSpec {
                duplicate_one_in: Some(args.duplicate_one_in),
                ..spec
            },
            &dup,
        )?;
        eprintln!(
            "wrote {} ({} frames, {} of them duplicates)",
            dup.display(),
            t.frames,
            t.duplicates
        );
        t
    } else {
        SynthSummary::default()
    };
    let ctx = Inputs {
        podtap,
        dir,
        base,
        dup,
        base_truth,
        dup_truth,
        window_ms: args.window_ms,
        slice: args.slice,
    };

    let mut comparisons = Vec::new();
    if args.only.contains(&Part::Flows) {
        for v in [FlowVersion::V9, FlowVersion::Ipfix] {
            comparisons.push(flows(&ctx, v, args.repeat)?);
        }
    }
    if args.only.contains(&Part::Dedupe) {
        comparisons.push(dedupe(&ctx, args.repeat)?);
    }
    if args.only.contains(&Part::Slice) {
        comparisons.push(slice(&ctx, args.repeat)?);
    }
    if args.json {
        let out = json!({
            "machine": machine,
            "capture": truth_json(&ctx.base_truth),
            "dedupe_capture": truth_json(&ctx.dup_truth),
            "comparisons": comparisons.iter().map(comparison_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&ctx, &machine, &args, &comparisons);
    }
    Ok(())
}

fn require_on_path(program: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()));
    if !found {
        // Fall back to running it (some tools live outside PATH for non-root users).
        require_program(program)?;
    }
    Ok(())
}

/// The NetFlow comparison for one version.
fn flows(ctx: &Inputs, v: FlowVersion, repeat: u32) -> anyhow::Result<Comparison> {
    let jobs = [
        Job::FlowPodtap(v),
        Job::FlowSoftflowd(v),
        Job::FlowPmacctd(v),
    ];
    let summaries = run_rounds(ctx, &jobs, repeat)?;
    let truth = ctx.base_truth;
    let mut checks = Vec::new();
    for s in &summaries {
        if let Outcome::Flows(t) = s.outcome {
            checks.push((
                format!(
                    "{}: {} packets and {} bytes, the capture has {} and {} IP bytes",
                    s.job.tool(),
                    t.packets,
                    t.bytes,
                    truth.frames,
                    truth.ip_bytes
                ),
                t.packets == truth.frames && t.bytes == truth.ip_bytes,
            ));
        }
        checks.push((
            format!("{}: the same totals in every round", s.job.tool()),
            s.stable,
        ));
    }
    Ok(Comparison {
        title: format!("pcap to {}", v.label()),
        input: "base",
        jobs: summaries,
        checks,
        targets: vec![(Job::FlowSoftflowd(v), FLOW_TARGET)],
    })
}

/// The dedupe comparison.
fn dedupe(ctx: &Inputs, repeat: u32) -> anyhow::Result<Comparison> {
    let jobs = [
        Job::DedupePodtap,
        Job::DedupeEditcapTime,
        Job::DedupeEditcapFrames,
    ];
    let summaries = run_rounds(ctx, &jobs, repeat)?;
    let truth = ctx.dup_truth;
    let expected = truth.frames - truth.duplicates;
    let mut checks = Vec::new();
    let podtap = capture_of(&summaries, Job::DedupePodtap);
    for s in &summaries {
        if let Outcome::Capture(d) = s.outcome {
            checks.push((
                format!(
                    "{}: kept {} frames, the capture has {} without its {} duplicates",
                    s.job.tool(),
                    d.frames,
                    expected,
                    truth.duplicates
                ),
                d.frames == expected,
            ));
            if !s.job.is_podtap() {
                checks.push((
                    format!("{}: kept the same frames as podtap (digest)", s.job.tool()),
                    podtap.is_some_and(|p| p.digest == d.digest),
                ));
            }
        }
        checks.push((
            format!("{}: the same output in every round", s.job.tool()),
            s.stable,
        ));
    }
    Ok(Comparison {
        title: "dedupe".to_string(),
        input: "dup",
        jobs: summaries,
        checks,
        targets: vec![(Job::DedupeEditcapTime, DEDUPE_TARGET)],
    })
}

/// The filter + slice + write comparison.
fn slice(ctx: &Inputs, repeat: u32) -> anyhow::Result<Comparison> {
    let jobs = [
        Job::SlicePodtap,
        Job::SliceTcpdump,
        Job::SliceEditcap,
        Job::SliceTcpdumpEditcap,
    ];
    let summaries = run_rounds(ctx, &jobs, repeat)?;
    let truth = ctx.base_truth;
    let mut checks = Vec::new();
    let podtap = capture_of(&summaries, Job::SlicePodtap);
    for s in &summaries {
        if let Outcome::Capture(d) = s.outcome {
            let (expected, what) = match s.job {
                Job::SliceEditcap => (truth.frames, "every frame"),
                _ => (truth.tcp_frames, "the TCP frames"),
            };
            checks.push((
                format!(
                    "{}: wrote {} frames, {what} of the capture: {expected}",
                    s.job.tool(),
                    d.frames
                ),
                d.frames == expected,
            ));
            let cut = d.captured_bytes <= d.frames * ctx.slice as u64;
            if s.job != Job::SliceTcpdump {
                checks.push((
                    format!(
                        "{}: every frame cut to at most {} bytes",
                        s.job.tool(),
                        ctx.slice
                    ),
                    cut,
                ));
            }
            if s.job == Job::SliceTcpdumpEditcap {
                checks.push((
                    format!("{}: the same frames as podtap (digest)", s.job.tool()),
                    podtap.is_some_and(|p| p.digest == d.digest),
                ));
            }
        }
        checks.push((
            format!("{}: the same output in every round", s.job.tool()),
            s.stable,
        ));
    }
    Ok(Comparison {
        title: "filter + slice + write".to_string(),
        input: "base",
        jobs: summaries,
        checks,
        targets: vec![
            (Job::SliceTcpdump, SLICE_TARGET),
            (Job::SliceEditcap, SLICE_TARGET),
            (Job::SliceTcpdumpEditcap, SLICE_TARGET),
        ],
    })
}

fn capture_of(summaries: &[JobSummary], job: Job) -> Option<CaptureDigest> {
    summaries
        .iter()
        .find(|s| s.job == job)
        .and_then(|s| match s.outcome {
            Outcome::Capture(d) => Some(d),
            Outcome::Flows(_) => None,
        })
}

/// Runs a warm-up round and `repeat` timed rounds of `jobs`, interleaved (each round starts
/// one job later), and summarises each job.
fn run_rounds(ctx: &Inputs, jobs: &[Job], repeat: u32) -> anyhow::Result<Vec<JobSummary>> {
    let mut runs: Vec<Vec<JobRun>> = vec![Vec::new(); jobs.len()];
    for round in 0..=repeat {
        for k in 0..jobs.len() {
            let i = (k + round as usize) % jobs.len();
            let job = jobs[i];
            let r = run_job(ctx, job).with_context(|| format!("{job:?}"))?;
            eprintln!(
                "  {} {:<28} cpu {:>7.3} s (user {:.3}, system {:.3})  wall {:>7.3} s{}",
                if round == 0 { "warm-up" } else { "round  " },
                job.tool(),
                r.measured.cpu(),
                r.measured.user,
                r.measured.system,
                r.measured.wall,
                r.own_cpu
                    .map(|c| format!("  (replay's own figure {c:.3} s)"))
                    .unwrap_or_default()
            );
            if round > 0 {
                runs[i].push(r);
            }
        }
    }
    Ok(jobs
        .iter()
        .zip(runs)
        .map(|(&job, runs)| {
            let input_frames = match job {
                Job::DedupePodtap | Job::DedupeEditcapTime | Job::DedupeEditcapFrames => {
                    ctx.dup_truth.frames
                }
                _ => ctx.base_truth.frames,
            };
            let own: Vec<f64> = runs.iter().filter_map(|r| r.own_cpu).collect();
            JobSummary {
                job,
                command: runs[0].command.clone(),
                input_frames,
                cpu: median(runs.iter().map(|r| r.measured.cpu()).collect()),
                user: median(runs.iter().map(|r| r.measured.user).collect()),
                system: median(runs.iter().map(|r| r.measured.system).collect()),
                wall: median(runs.iter().map(|r| r.measured.wall).collect()),
                own_cpu: (!own.is_empty()).then(|| median(own)),
                outcome: runs[0].outcome,
                stable: runs.iter().all(|r| r.outcome == runs[0].outcome),
            }
        })
        .collect())
}

/// Runs one job once: its command, measured, then what it produced.
fn run_job(ctx: &Inputs, job: Job) -> anyhow::Result<JobRun> {
    let out_dir = ctx.dir.join("out");
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir).context("clearing the output directory")?;
    }
    std::fs::create_dir_all(&out_dir).context("creating the output directory")?;
    let result = match job {
        Job::FlowPodtap(v) | Job::FlowSoftflowd(v) | Job::FlowPmacctd(v) => {
            let collector = FlowCollector::start()?;
            let cmd = flow_command(ctx, job, v, &collector.address().to_string())?;
            let shown = show(&cmd, ctx, Some(&collector.address().to_string()));
            let measured = measure::run(job.tool(), cmd, RUN_TIMEOUT)?.success()?;
            let totals = collector.finish()?;
            JobRun {
                own_cpu: own_cpu(&measured),
                measured,
                outcome: Outcome::Flows(totals),
                command: shown,
            }
        }
        _ => {
            let (cmd, output) = capture_command(ctx, job, &out_dir)?;
            let shown = show(&cmd, ctx, None);
            let measured = measure::run(job.tool(), cmd, RUN_TIMEOUT)?.success()?;
            let digest = capture_digest::digest(&output)?;
            JobRun {
                own_cpu: own_cpu(&measured),
                measured,
                outcome: Outcome::Capture(digest),
                command: shown,
            }
        }
    };
    std::fs::remove_dir_all(&out_dir).context("removing the outputs")?;
    Ok(result)
}

/// The command of a flow job (writing its configuration file first).
fn flow_command(
    ctx: &Inputs,
    job: Job,
    v: FlowVersion,
    collector: &str,
) -> anyhow::Result<Command> {
    let base = ctx.base.to_string_lossy().to_string();
    Ok(match job {
        Job::FlowPodtap(_) => {
            let config = ctx.dir.join(format!("flows-{}.yaml", v.podtap_output()));
            std::fs::write(&config, podtap_flow_config(v, collector))?;
            podtap_replay(ctx, &config, &ctx.base)
        }
        Job::FlowSoftflowd(_) => {
            let mut cmd = Command::new("softflowd");
            // -d: foreground; -c none: no control socket (with one, softflowd 1.1.0 reading
            // a file waits on it forever).
            cmd.args(["-r", &base, "-n", collector, "-v", &v.number().to_string()])
                .args(["-d", "-c", "none"]);
            cmd
        }
        Job::FlowPmacctd(_) => {
            let config = ctx.dir.join(format!("pmacctd-{}.conf", v.number()));
            std::fs::write(&config, pmacctd_config(&base, v, collector))?;
            let mut cmd = Command::new("pmacctd");
            cmd.arg("-f").arg(&config);
            cmd
        }
        _ => bail!("{job:?} is not a flow job"),
    })
}

/// The command of a capture job (writing its configuration file first), and where its output
/// will be.
fn capture_command(ctx: &Inputs, job: Job, out: &Path) -> anyhow::Result<(Command, PathBuf)> {
    let window_s = format!("{}", ctx.window_ms as f64 / 1e3);
    let slice = ctx.slice.to_string();
    Ok(match job {
        Job::DedupePodtap => {
            let config = ctx.dir.join("dedupe.yaml");
            std::fs::write(
                &config,
                format!(
                    "policies:\n  - name: dedupe\n    vni: 1\n    stages:\n      - type: dedupe\n        window_ms: {}\n    outputs:\n      - type: pcap\n        directory: {}\n",
                    ctx.window_ms,
                    out.display()
                ),
            )?;
            (podtap_replay(ctx, &config, &ctx.dup), out.to_path_buf())
        }
        Job::DedupeEditcapTime => {
            let file = out.join("editcap.pcapng");
            let mut cmd = Command::new("editcap");
            cmd.args(["-w", &window_s]).arg(&ctx.dup).arg(&file);
            (cmd, file)
        }
        Job::DedupeEditcapFrames => {
            let file = out.join("editcap.pcapng");
            let mut cmd = Command::new("editcap");
            // The window holds the current frame too: N compares with the previous N - 1.
            let frames = (ctx.dup_truth.max_duplicate_distance + 1).to_string();
            cmd.args(["-D", &frames]).arg(&ctx.dup).arg(&file);
            (cmd, file)
        }
        Job::SlicePodtap => {
            let config = ctx.dir.join("slice.yaml");
            std::fs::write(
                &config,
                format!(
                    "policies:\n  - name: slice\n    vni: 1\n    stages:\n      - type: filter\n        expression: \"tcp\"\n      - type: slice\n        length: {}\n    outputs:\n      - type: pcap\n        directory: {}\n",
                    ctx.slice,
                    out.display()
                ),
            )?;
            (podtap_replay(ctx, &config, &ctx.base), out.to_path_buf())
        }
        Job::SliceTcpdump => {
            let file = out.join("tcpdump.pcap");
            let mut cmd = Command::new("tcpdump");
            cmd.arg("-r").arg(&ctx.base).arg("-w").arg(&file).arg("tcp");
            (cmd, file)
        }
        Job::SliceEditcap => {
            let file = out.join("editcap.pcapng");
            let mut cmd = Command::new("editcap");
            cmd.args(["-s", &slice]).arg(&ctx.base).arg(&file);
            (cmd, file)
        }
        Job::SliceTcpdumpEditcap => {
            let file = out.join("editcap.pcapng");
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(format!(
                "tcpdump -r '{}' -w - tcp | editcap -s {slice} - '{}'",
                ctx.base.display(),
                file.display()
            ));
            (cmd, file)
        }
        _ => bail!("{job:?} is not a capture job"),
    })
}

fn podtap_replay(ctx: &Inputs, config: &Path, capture: &Path) -> Command {
    let mut cmd = Command::new(&ctx.podtap);
    cmd.arg("broker")
        .arg("--config")
        .arg(config)
        .arg("--replay")
        .arg(capture);
    cmd
}

/// podtap's flow policy: one output to the collector, default timeouts (60 s active, 15 s
/// inactive: longer than any conversation of the capture).
fn podtap_flow_config(v: FlowVersion, collector: &str) -> String {
    format!(
        "policies:\n  - name: flows\n    vni: 1\n    outputs:\n      - type: {}\n        collector: {collector}\n",
        v.podtap_output()
    )
}

/// pmacctd reading the capture with the `nfprobe` plugin (default timeouts; larger plugin
/// buffers than the defaults, which cost pmacctd three times the CPU on this capture).
fn pmacctd_config(capture: &str, v: FlowVersion, collector: &str) -> String {
    format!(
        "daemonize: false\npcap_savefile: {capture}\nplugins: nfprobe\nnfprobe_receiver: {collector}\nnfprobe_version: {}\naggregate: src_host, dst_host, src_port, dst_port, proto, tos\nplugin_pipe_size: 102400000\nplugin_buffer_size: 102400\n",
        v.number()
    )
}

/// A command as text, with the work directory as `$DIR` and the collector as `$COLLECTOR`.
fn show(cmd: &Command, ctx: &Inputs, collector: Option<&str>) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().to_string()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().to_string()));
    let podtap = ctx.podtap.to_string_lossy().to_string();
    let dir = ctx.dir.to_string_lossy().to_string();
    parts
        .iter()
        .map(|p| {
            let mut p = p.replace(&podtap, "podtap").replace(&dir, "$DIR");
            if let Some(c) = collector {
                p = p.replace(c, "$COLLECTOR");
            }
            if p.contains(' ') {
                format!("\"{p}\"")
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn truth_json(t: &SynthSummary) -> Value {
    json!({
        "frames": t.frames,
        "frame_bytes": t.frame_bytes,
        "ip_bytes": t.ip_bytes,
        "duplicates": t.duplicates,
        "max_duplicate_distance": t.max_duplicate_distance,
        "flows": t.flows,
        "connections": t.connections,
        "tcp_frames": t.tcp_frames,
        "ipv6_frames": t.ipv6_frames,
        "span_s": t.span_s,
    })
}

fn comparison_json(c: &Comparison) -> Value {
    let podtap = c.jobs.iter().find(|j| j.job.is_podtap());
    json!({
        "title": c.title,
        "input": c.input,
        "jobs": c.jobs.iter().map(|j| json!({
            "tool": j.job.tool(),
            "command": j.command,
            "input_frames": j.input_frames,
            "cpu_s": j.cpu,
            "user_s": j.user,
            "system_s": j.system,
            "wall_s": j.wall,
            "own_cpu_s": j.own_cpu,
            "packets_per_cpu_s": j.pps(),
            "outcome": match j.outcome {
                Outcome::Flows(t) => json!({"flows": t.flows, "packets": t.packets, "bytes": t.bytes}),
                Outcome::Capture(d) => json!({"frames": d.frames, "captured_bytes": d.captured_bytes, "wire_bytes": d.wire_bytes, "digest": d.hex()}),
            },
            "stable": j.stable,
        })).collect::<Vec<_>>(),
        "checks": c.checks.iter().map(|(what, ok)| json!({"check": what, "ok": ok})).collect::<Vec<_>>(),
        "targets": c.targets.iter().filter_map(|(job, target)| {
            let p = podtap?;
            let other = c.jobs.iter().find(|j| j.job == *job)?;
            Some(json!({
                "against": other.job.tool(),
                "target": target,
                "ratio": other.cpu / p.cpu,
                "ratio_after_loading": p.own_cpu.map(|o| other.cpu / o),
            }))
        }).collect::<Vec<_>>(),
    })
}

fn print_report(ctx: &Inputs, machine: &str, args: &BrokerArgs, comparisons: &[Comparison]) {
    println!("machine: {machine}");
    let t = &ctx.base_truth;
    println!(
        "capture: {} frames ({} TCP, {} IPv6), {} conversations, {} unidirectional flows, {} frame bytes, {} IP bytes, {:.1} s, seed {}",
        count(t.frames),
        count(t.tcp_frames),
        count(t.ipv6_frames),
        count(t.connections),
        count(t.flows),
        count(t.frame_bytes),
        count(t.ip_bytes),
        t.span_s,
        args.seed
    );
    if ctx.dup_truth.frames > 0 {
        let d = &ctx.dup_truth;
        println!(
            "dedupe capture: the same plus {} exact duplicates (every packet of one conversation in {}, {}-{} µs after the original, at most {} frames later): {} frames",
            count(d.duplicates),
            args.duplicate_one_in,
            synth::DUPLICATE_DELAY_US.0,
            synth::DUPLICATE_DELAY_US.1,
            d.max_duplicate_distance,
            count(d.frames)
        );
    }
    println!(
        "CPU: user + system of the whole process (and what it waited for), median of {} after a warm-up round",
        args.repeat
    );
    for c in comparisons {
        println!();
        println!(
            "## {} ({} input frames)",
            c.title,
            count(c.jobs.first().map_or(0, |j| j.input_frames))
        );
        println!();
        println!("| tool | CPU s | user s | system s | wall s | packets per CPU-second | result |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        for j in &c.jobs {
            let result = match j.outcome {
                Outcome::Flows(f) => format!(
                    "{} flows, {} packets, {} bytes",
                    count(f.flows),
                    count(f.packets),
                    count(f.bytes)
                ),
                Outcome::Capture(d) => format!(
                    "{} frames, {} bytes captured, digest {}",
                    count(d.frames),
                    count(d.captured_bytes),
                    &d.hex()[..8]
                ),
            };
            println!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
                j.job.tool(),
                j.cpu,
                j.user,
                j.system,
                j.wall,
                rate(j.pps()),
                result
            );
            if let (Some(own), Some(own_pps)) = (j.own_cpu, j.own_pps()) {
                println!(
                    "| {}, replay's own figure | {:.3} | | | | {} | |",
                    j.job.tool(),
                    own,
                    rate(own_pps)
                );
            }
        }
        println!();
        for (what, ok) in &c.checks {
            println!("- [{}] {what}", if *ok { "ok" } else { "MISMATCH" });
        }
        let podtap = c.jobs.iter().find(|j| j.job.is_podtap());
        if let Some(p) = podtap {
            println!();
            for (job, target) in &c.targets {
                let Some(other) = c.jobs.iter().find(|j| j.job == *job) else {
                    continue;
                };
                let ratio = other.cpu / p.cpu;
                let own = p.own_cpu.map(|o| other.cpu / o);
                println!(
                    "podtap / {}: {:.2}x whole process ({}){}; target {}: {}",
                    other.job.tool(),
                    ratio,
                    if ratio >= *target { "met" } else { "missed" },
                    own.map(|o| format!(
                        ", {o:.2}x by the replay's own figure ({})",
                        if o >= *target { "met" } else { "missed" }
                    ))
                    .unwrap_or_default(),
                    if *target > 1.0 {
                        format!("at least {target}x")
                    } else {
                        "faster".to_string()
                    },
                    if ratio >= *target { "MET" } else { "MISSED" },
                );
            }
        }
        println!();
        println!("commands:");
        for j in &c.jobs {
            println!("  {}: {}", j.job.tool(), j.command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_replay_line() {
        let m = Measured {
            what: "podtap".into(),
            code: Some(0),
            wall: 1.0,
            user: 0.5,
            system: 0.5,
            stdout: "policy x: received 1, kept 1\nreplay: 1000000 packets through policy flows in 0.329 s wall, 0.331 s CPU: 3039033 packets per CPU-second\n".into(),
            stderr: String::new(),
        };
        assert_eq!(own_cpu(&m), Some(0.331));
    }

    #[test]
    fn counts_and_medians() {
        assert_eq!(count(1_247_505), "1,247,505");
        assert_eq!(count(12), "12");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
