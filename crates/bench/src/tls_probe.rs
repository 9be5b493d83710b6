//! `podtap-bench tls-probe`: what the decrypted view's uprobes cost an HTTPS server. nginx
//! (one process, HTTPS with keep-alive) serves `shop/cart-1` of a one-node lab; wrk drives it
//! from `shop/frontend-1` over TLS with `--latency`, for a small body (`/`) and a 64 KiB one
//! (`/big`). Three scenarios interleave round by round (their order rotates every round):
//!
//! - `off`: no agent; the baseline.
//! - `tap`: `podtap agent --pod shop/cart-1 -w FILE`: the pod's veth is tapped, no uprobes.
//! - `probes`: the same with `--decrypt`: the veth tap plus uprobes on nginx's OpenSSL and the
//!   syscall tracepoints. wrk starts only once the agent logged the probes on nginx's pid and
//!   its veth hooks are in place; afterwards tshark counts the HTTP requests and responses on
//!   the `shop/cart-1 (decrypted)` interface of the agent's pcapng, which proves the probes
//!   were live during the measured run.
//!
//! Each figure is the median over the rounds (with the spread); the loss is against `off`
//! (whole agent) and against `tap` (the uprobes alone, which the 5% target is about). CPU is
//! read from /proc over wrk's run: nginx's, the agent's (all threads, user space plus the
//! kernel work done in its context), wrk's (its rusage) and the machine's. Unless
//! `--no-bpf-stats`, one more `probes` run per workload is made afterwards with the kernel's
//! BPF run-time statistics on (`BPF_ENABLE_STATS`, held only for that run), and the run count
//! and run time of each of the agent's programs are reported per call and per request. That run
//! is not in the medians: the statistics themselves cost time.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use podtap_cluster::{Cni, PodRef};
use podtap_lab::{LabGuard, LabSpec};
use podtap_testkit::apps::{Nginx, TlsCert, WrkReport, parse_wrk};
use serde_json::{Value, json};

use crate::bench_lab;
use crate::child::{Spawned, in_netns};
use crate::cpu::{self, CpuWindow};
use crate::measure::{self, median, yes_no};
use crate::tap::TapTarget;

/// Name of this benchmark's own lab (other benchmarks may run beside it on `bench`).
const LAB_NAME: &str = "tlsprobe";
/// The HTTPS server pod.
const SERVER: &str = "shop/cart-1";
/// The wrk pod, on the same node.
const CLIENT: &str = "shop/frontend-1";
/// nginx's HTTPS port.
const PORT: u16 = 8443;
/// The most a scenario may cost, as a share of the requests per second (and of p99).
const TARGET_LOSS: f64 = 0.05;
/// Longest wait for the agent to tap the veth and probe nginx.
const READY: Duration = Duration::from_secs(30);
/// Longest wait for the agent to drain and exit after SIGTERM.
const STOP: Duration = Duration::from_secs(60);
/// Pause after the agent is ready, so its start-up is not measured.
const SETTLE: Duration = Duration::from_millis(500);
/// Seconds of each warm-up run (not counted).
const WARM_UP_SECONDS: u32 = 3;

/// Flags of `podtap-bench tls-probe`.
#[derive(Debug, Args)]
pub struct TlsProbeArgs {
    /// Seconds of wrk per run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub seconds: u32,
    /// Rounds; each round runs every workload under every scenario (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// wrk threads (`-t`).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// wrk connections (`-c`), kept alive for the whole run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub connections: u32,
    /// Workloads (comma-separated): `small` (nginx's 18-byte `/`), `big` (64 KiB `/big`).
    #[arg(long, value_delimiter = ',', default_value = "small,big")]
    pub workloads: Vec<Workload>,
    /// Skip the extra `probes` run with the kernel's BPF run-time statistics.
    #[arg(long)]
    pub no_bpf_stats: bool,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What wrk asks nginx for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// `GET /`: a short text body, so the cost per request dominates.
    Small,
    /// `GET /big`: a 64 KiB body, several SSL_write chunks per response.
    Big,
}

impl Workload {
    /// Short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Small => "small",
            Workload::Big => "big",
        }
    }

    /// The request path.
    fn path(self) -> &'static str {
        match self {
            Workload::Small => "/",
            Workload::Big => "/big",
        }
    }
}

/// What runs beside nginx during a measured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// No agent.
    Off,
    /// The agent tapping the server pod's veth (no `--decrypt`).
    Tap,
    /// The agent with `--decrypt`: the veth tap plus the uprobes on nginx's OpenSSL.
    Probes,
}

impl Scenario {
    /// Every scenario, in the order of the first round.
    pub const ALL: [Scenario; 3] = [Scenario::Off, Scenario::Tap, Scenario::Probes];

    /// Short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Off => "off",
            Scenario::Tap => "tap",
            Scenario::Probes => "probes",
        }
    }
}

/// The lab, nginx in the server pod and what the runs need to know about both.
struct Stage {
    _lab: LabGuard,
    nginx: Nginx,
    server_ip: String,
    client_netns: String,
    target: TapTarget,
    /// Holds the certificate, nginx's files and the capture files; removed at the end.
    dir: tempfile::TempDir,
}

impl Stage {
    /// Brings the lab up and starts nginx in the server pod.
    fn up(podtap: &Path) -> anyhow::Result<Stage> {
        let spec = LabSpec::new(LAB_NAME, vec![Cni::Calico], 2);
        let lab = LabGuard::up(&spec).context("bringing up the tls-probe lab")?;
        let pod_of = |name: &str| -> anyhow::Result<podtap_cluster::Pod> {
            let r = PodRef::parse(name).with_context(|| format!("pod {name}"))?;
            lab.pod(&r)
                .cloned()
                .with_context(|| format!("the lab has no pod {name}"))
        };
        let server = pod_of(SERVER)?;
        let client = pod_of(CLIENT)?;
        let server_netns = server
            .netns
            .clone()
            .with_context(|| format!("{SERVER} has no netns"))?;
        let client_netns = client
            .netns
            .clone()
            .with_context(|| format!("{CLIENT} has no netns"))?;
        let node_netns = lab
            .node_netns(&server.node)
            .with_context(|| format!("node {} has no netns", server.node))?
            .to_string();
        let dir = tempfile::Builder::new()
            .prefix("podtap-tls-probe-")
            .tempdir()
            .context("creating a working directory")?;
        let cert = TlsCert::self_signed(&dir.path().join("tls"))
            .context("making the server's certificate")?;
        let nginx = Nginx::start(&server_netns, &dir.path().join("nginx"), &cert, PORT)
            .with_context(|| format!("starting nginx in {SERVER}"))?;
        let target = TapTarget {
            podtap: podtap.to_path_buf(),
            inventory: lab.inventory_path(),
            pod: SERVER.to_string(),
            node_netns,
            veth: server.host_veth.clone(),
        };
        Ok(Stage {
            _lab: lab,
            nginx,
            server_ip: server.ip,
            client_netns,
            target,
            dir,
        })
    }

    fn url(&self, workload: Workload) -> String {
        format!("https://{}:{PORT}{}", self.server_ip, workload.path())
    }
}

/// What the agent said about a run when it stopped.
#[derive(Debug, Clone, Default)]
struct AgentSummary {
    /// Packets written to the pcapng (veth copies and decrypted frames).
    written: u64,
    /// Veth copies lost.
    dropped: u64,
    /// The decrypted view (`probes` only).
    decrypted: Option<DecryptedSummary>,
}

/// The agent's decrypted-view counters and what tshark found in its output.
#[derive(Debug, Clone, Default)]
struct DecryptedSummary {
    /// SSL calls that moved data, as the kernel side counted them.
    calls: u64,
    /// Plaintext bytes of those calls.
    bytes: u64,
    /// Events lost to a full ring.
    ring_full: u64,
    /// Buffers that could not be read.
    unreadable: u64,
    /// Bytes beyond the per-call limit.
    truncated: u64,
    /// Chunks with no connection.
    unbound: u64,
    /// Synthesized frames from the pod and to it.
    frames: [u64; 2],
    /// HTTP requests tshark decodes on the decrypted interface.
    http_requests: u64,
    /// HTTP responses tshark decodes there.
    http_responses: u64,
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    round: u32,
    workload: Workload,
    scenario: Scenario,
    wrk: WrkReport,
    /// Wall seconds of the CPU window (wrk's run).
    window: f64,
    /// Busy CPU seconds of the machine over the window.
    machine_cpu: f64,
    /// nginx's CPU seconds over the window.
    nginx_cpu: f64,
    /// wrk's CPU seconds (its rusage).
    wrk_cpu: f64,
    /// The agent's CPU seconds over the window.
    agent_cpu: Option<f64>,
    agent: AgentSummary,
}

impl Run {
    /// A CPU figure in microseconds per completed request.
    fn us_per_request(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.wrk.requests.max(1) as f64
    }

    fn to_json(&self) -> Value {
        let d = self.agent.decrypted.as_ref().map(|d| {
            json!({
                "tls_calls": d.calls,
                "plaintext_bytes": d.bytes,
                "ring_full": d.ring_full,
                "unreadable": d.unreadable,
                "truncated_bytes": d.truncated,
                "unbound_chunks": d.unbound,
                "frames_from_pod": d.frames[0],
                "frames_to_pod": d.frames[1],
                "tshark_http_requests": d.http_requests,
                "tshark_http_responses": d.http_responses,
            })
        });
        json!({
            "round": self.round,
            "workload": self.workload.name(),
            "scenario": self.scenario.name(),
            "requests": self.wrk.requests,
            "requests_per_sec": self.wrk.requests_per_sec,
            "p99_us": self.wrk.p99.as_secs_f64() * 1e6,
            "non_2xx_3xx": self.wrk.non_2xx_3xx,
            "socket_errors": self.wrk.socket_errors,
            "window_seconds": self.window,
            "machine_cpu_seconds": self.machine_cpu,
            "nginx_cpu_seconds": self.nginx_cpu,
            "wrk_cpu_seconds": self.wrk_cpu,
            "agent_cpu_seconds": self.agent_cpu,
            "agent_written": self.agent.written,
            "agent_dropped": self.agent.dropped,
            "decrypted": d,
        })
    }
}

/// Medians (and the spread of the rate) of one workload under one scenario.
#[derive(Debug, Clone, Copy, Default)]
struct Medians {
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    p99_us: f64,
    p99_min_us: f64,
    p99_max_us: f64,
    nginx_us_per_req: f64,
    machine_us_per_req: f64,
    /// The agent's CPU, in % of one core.
    agent_core_pct: Option<f64>,
    /// The agent's share of the machine's busy time, in %.
    agent_share_pct: Option<f64>,
    /// nginx's CPU, in % of one core.
    nginx_core_pct: f64,
    /// Machine busy, in % of all cores.
    machine_pct: f64,
}

impl Medians {
    fn of(runs: &[&Run]) -> Medians {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let spread = |f: &dyn Fn(&Run) -> f64| {
            runs.iter()
                .map(|r| f(r))
                .fold(None, |acc: Option<(f64, f64)>, x| {
                    Some(acc.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
                })
                .unwrap_or_default()
        };
        let rps = |r: &Run| r.wrk.requests_per_sec;
        let p99 = |r: &Run| r.wrk.p99.as_secs_f64() * 1e6;
        let agent: Vec<&Run> = runs
            .iter()
            .copied()
            .filter(|r| r.agent_cpu.is_some())
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let agent_m = |f: &dyn Fn(&Run) -> f64| {
            (!agent.is_empty()).then(|| median(agent.iter().map(|r| f(r)).collect()))
        };
        Medians {
            rps: m(&rps),
            rps_min: spread(&rps).0,
            rps_max: spread(&rps).1,
            p99_us: m(&p99),
            p99_min_us: spread(&p99).0,
            p99_max_us: spread(&p99).1,
            nginx_us_per_req: m(&|r| r.us_per_request(r.nginx_cpu)),
            machine_us_per_req: m(&|r| r.us_per_request(r.machine_cpu)),
            agent_core_pct: agent_m(&|r| r.agent_cpu.unwrap_or(0.0) / r.window * 100.0),
            agent_share_pct: agent_m(&|r| r.agent_cpu.unwrap_or(0.0) / r.machine_cpu * 100.0),
            nginx_core_pct: m(&|r| r.nginx_cpu / r.window * 100.0),
            machine_pct: m(&|r| r.machine_cpu / (r.window * cores) * 100.0),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "requests_per_sec": self.rps,
            "requests_per_sec_min": self.rps_min,
            "requests_per_sec_max": self.rps_max,
            "p99_us": self.p99_us,
            "p99_us_min": self.p99_min_us,
            "p99_us_max": self.p99_max_us,
            "nginx_cpu_us_per_request": self.nginx_us_per_req,
            "machine_cpu_us_per_request": self.machine_us_per_req,
            "nginx_cpu_percent_of_a_core": self.nginx_core_pct,
            "agent_cpu_percent_of_a_core": self.agent_core_pct,
            "agent_share_of_busy_cpu_percent": self.agent_share_pct,
            "machine_busy_percent": self.machine_pct,
        })
    }
}

/// The loss of `x` against `base`: the share of requests per second lost, and the rise of p99.
#[derive(Debug, Clone, Copy)]
struct Loss {
    rps: f64,
    p99: f64,
}

impl Loss {
    fn of(x: &Medians, base: &Medians) -> Loss {
        Loss {
            rps: 1.0 - x.rps / base.rps,
            p99: x.p99_us / base.p99_us - 1.0,
        }
    }

    fn rps_met(self) -> bool {
        self.rps <= TARGET_LOSS
    }

    fn p99_met(self) -> bool {
        self.p99 <= TARGET_LOSS
    }

    fn to_json(self) -> Value {
        json!({
            "requests_per_sec_loss": self.rps,
            "p99_rise": self.p99,
            "requests_per_sec_within_target": self.rps_met(),
            "p99_within_target": self.p99_met(),
        })
    }
}

/// One workload's three scenarios.
#[derive(Debug, Clone, Copy)]
struct Comparison {
    workload: Workload,
    off: Medians,
    tap: Medians,
    probes: Medians,
}

impl Comparison {
    /// The whole agent with the decrypted view against no agent.
    fn probes_vs_off(&self) -> Loss {
        Loss::of(&self.probes, &self.off)
    }
    /// The veth tap against no agent.
    fn tap_vs_off(&self) -> Loss {
        Loss::of(&self.tap, &self.off)
    }
    /// The uprobes alone: the agent with `--decrypt` against the agent without.
    fn probes_vs_tap(&self) -> Loss {
        Loss::of(&self.probes, &self.tap)
    }

    fn to_json(self) -> Value {
        json!({
            "workload": self.workload.name(),
            "off": self.off.to_json(),
            "tap": self.tap.to_json(),
            "probes": self.probes.to_json(),
            "loss": {
                "tap_vs_off": self.tap_vs_off().to_json(),
                "probes_vs_off": self.probes_vs_off().to_json(),
                "uprobes_probes_vs_tap": self.probes_vs_tap().to_json(),
            },
        })
    }
}

/// Runs `podtap-bench tls-probe`.
pub fn run(args: TlsProbeArgs) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    for program in ["wrk", "nginx", "tshark"] {
        bench_lab::require_program(program)?;
    }
    if !args.no_bpf_stats {
        bench_lab::require_program("bpftool")?;
    }
    if args.threads > args.connections {
        bail!(
            "--threads {} is more than --connections {}: wrk needs a connection per thread",
            args.threads,
            args.connections
        );
    }
    let mut workloads = args.workloads.clone();
    workloads.sort();
    workloads.dedup();
    if workloads.is_empty() {
        bail!("--workloads names none");
    }
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench tls-probe: {machine}");
    let stage = Stage::up(&podtap)?;
    eprintln!(
        "  nginx pid {} in {SERVER} ({}), wrk in {CLIENT}",
        stage.nginx.pid(),
        stage.server_ip
    );

    // Warm-up, not counted: TLS sessions, page cache, CPU frequency, and a first check that
    // the agent probes nginx and its output decodes.
    for scenario in [Scenario::Off, Scenario::Probes] {
        measure_run(&stage, &args, 0, workloads[0], scenario, WARM_UP_SECONDS)
            .with_context(|| format!("warm-up run with {}", scenario.name()))?;
    }

    let mut runs = Vec::new();
    for round in 1..=args.repeat {
        for &workload in &workloads {
            // Rotate the order every round, so no scenario always follows the same one.
            let mut order = Scenario::ALL;
            order.rotate_left((round as usize - 1) % Scenario::ALL.len());
            for scenario in order {
                let run = measure_run(&stage, &args, round, workload, scenario, args.seconds)
                    .with_context(|| {
                        format!(
                            "round {round}: {} with {}",
                            workload.name(),
                            scenario.name()
                        )
                    })?;
                eprintln!(
                    "  round {round}/{}: {:<5} {:<6} {:>9.0} req/s  p99 {:>8.0} us{}",
                    args.repeat,
                    workload.name(),
                    scenario.name(),
                    run.wrk.requests_per_sec,
                    run.wrk.p99.as_secs_f64() * 1e6,
                    describe_decrypted(&run)
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
                off: of(Scenario::Off),
                tap: of(Scenario::Tap),
                probes: of(Scenario::Probes),
            }
        })
        .collect();

    let mut profiles = Vec::new();
    if !args.no_bpf_stats {
        for &workload in &workloads {
            let p = profile_run(&stage, &args, workload)
                .with_context(|| format!("BPF statistics run of {}", workload.name()))?;
            profiles.push(p);
        }
    }

    if args.json {
        let out = json!({
            "benchmark": "tls-probe",
            "machine": machine,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "threads": args.threads,
            "connections": args.connections,
            "server": SERVER,
            "client": CLIENT,
            "target_loss": TARGET_LOSS,
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "comparisons": comparisons.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            "bpf_stats": profiles.iter().map(Profile::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&args, &machine, &comparisons, &runs, &profiles);
    }
    Ok(())
}

/// A short note of what the decrypted view captured in a run, for the progress lines.
fn describe_decrypted(run: &Run) -> String {
    match &run.agent.decrypted {
        Some(d) => format!(
            "  decrypted: {} requests / {} responses (wrk: {}), {} TLS calls, lost {}",
            d.http_requests,
            d.http_responses,
            run.wrk.requests,
            d.calls,
            d.ring_full + d.unreadable + d.unbound
        ),
        None => String::new(),
    }
}

/// The agent of a `tap` or `probes` run, ready (veth hooked; nginx probed with `--decrypt`).
struct RunningAgent {
    process: Spawned,
    file: PathBuf,
    decrypt: bool,
}

impl RunningAgent {
    /// Starts `podtap agent` on the server pod (with `--decrypt` if asked) and waits until its
    /// hooks are on the veth and, with `--decrypt`, it logged the probes on nginx's pid.
    fn start(stage: &Stage, decrypt: bool, name: &str) -> anyhow::Result<RunningAgent> {
        let t = &stage.target;
        let file = stage.dir.path().join(format!("{name}.pcapng"));
        let mut cmd = Command::new(&t.podtap);
        cmd.arg("agent")
            .arg("--inventory")
            .arg(&t.inventory)
            .args(["--pod", &t.pod, "-w"])
            .arg(&file)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        if decrypt {
            cmd.arg("--decrypt");
        }
        let mut process = Spawned::start("podtap agent", cmd)?;
        process.wait_for_output("tapping 1 pod(s)", READY)?;
        process.wait_until(READY, "hooking the server's veth", |_| {
            Ok(!t.hooks()?.is_empty())
        })?;
        if decrypt {
            let pid = stage.nginx.pid();
            process.wait_until(READY, &format!("probing nginx (pid {pid})"), |p| {
                Ok(probed_in_log(&p.stderr(), pid))
            })?;
        }
        Ok(RunningAgent {
            process,
            file,
            decrypt,
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the agent (SIGTERM), reads its summary and, with `--decrypt`, counts the HTTP
    /// messages tshark decodes on the decrypted interface. Deletes the capture file.
    fn stop(self) -> anyhow::Result<AgentSummary> {
        let done = self.process.terminate(STOP)?;
        let result = (|| {
            if !done.status.success() {
                bail!("podtap agent failed: {}\n{}", done.status, done.stderr);
            }
            let mut summary = parse_agent_summary(&done.stdout, self.decrypt)
                .with_context(|| format!("reading the agent's summary:\n{}", done.stdout))?;
            if let Some(d) = summary.decrypted.as_mut() {
                let iface = format!("{SERVER} (decrypted)");
                (d.http_requests, d.http_responses) =
                    count_decrypted_http(&self.file, &iface, PORT)?;
            }
            Ok(summary)
        })();
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(self.file.with_extension("decrypted.pcapng"));
        result
    }
}

/// Whether the agent's log says it attached the TLS probes to process `pid` (escape sequences
/// of a coloured log are skipped).
fn probed_in_log(log: &str, pid: u32) -> bool {
    let want = format!("pid={pid}");
    log.lines()
        .filter(|l| l.contains("TLS probes attached"))
        .any(|l| strip_ansi(l).split_whitespace().any(|w| w == want.as_str()))
}

/// `text` without ANSI CSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every unsigned number in `text`, in order.
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Reads `wrote N packet(s)`, `copies dropped: N` and, with `decrypt`, the `decrypted:` lines
/// of the agent's summary.
fn parse_agent_summary(stdout: &str, decrypt: bool) -> anyhow::Result<AgentSummary> {
    let first_number = |prefix: &str| -> anyhow::Result<u64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| numbers(rest).first().copied())
            .with_context(|| format!("no `{prefix} N` line"))
    };
    let mut summary = AgentSummary {
        written: first_number("wrote")?,
        dropped: first_number("copies dropped:")?,
        decrypted: None,
    };
    if decrypt {
        let calls_line = stdout
            .lines()
            .find(|l| l.starts_with("decrypted:") && l.contains("TLS calls"))
            .context("no `decrypted: N TLS calls` line")?;
        let n = numbers(calls_line);
        if n.len() < 6 {
            bail!("cannot read {calls_line:?}");
        }
        let frames_prefix = format!("decrypted: {SERVER}:");
        let frames_line = stdout
            .lines()
            .find(|l| l.starts_with(&frames_prefix))
            .with_context(|| format!("no `{frames_prefix} N frames` line"))?;
        let f = numbers(frames_line.trim_start_matches(&frames_prefix));
        if f.len() < 2 {
            bail!("cannot read {frames_line:?}");
        }
        summary.decrypted = Some(DecryptedSummary {
            calls: n[0],
            bytes: n[1],
            ring_full: n[2],
            unreadable: n[3],
            truncated: n[4],
            unbound: n[5],
            frames: [f[0], f[1]],
            http_requests: 0,
            http_responses: 0,
        });
    }
    Ok(summary)
}

/// Runs tshark on `file` with `args`, failing with its stderr.
fn tshark(file: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(args);
    let out = measure::run("tshark", cmd, Duration::from_secs(600))?.success()?;
    Ok(out.stdout)
}

/// HTTP requests and responses tshark decodes on interface `iface` of `file`, as HTTP on
/// `port`. The interface is cut out first: the decrypted view and the veth carry the same
/// 5-tuple, and tshark would follow TCP streams across both.
fn count_decrypted_http(file: &Path, iface: &str, port: u16) -> anyhow::Result<(u64, u64)> {
    let only = file.with_extension("decrypted.pcapng");
    let only_arg = only.to_string_lossy().into_owned();
    let filter = format!("frame.interface_name == \"{iface}\"");
    tshark(file, &["-Y", &filter, "-w", &only_arg])
        .with_context(|| format!("cutting {iface:?} out of {}", file.display()))?;
    let decode = format!("tcp.port=={port},http");
    let fields = tshark(
        &only,
        &[
            "-d",
            &decode,
            "-Y",
            "http.request || http.response",
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.response.code",
        ],
    )
    .with_context(|| format!("decoding HTTP in {}", only.display()))?;
    let (mut requests, mut responses) = (0, 0);
    for line in fields.lines() {
        let mut f = line.split('\t');
        let method = f.next().unwrap_or("");
        let code = f.next().unwrap_or("");
        // A frame may hold several messages: tshark joins their values with commas.
        if !method.is_empty() {
            requests += method.split(',').count() as u64;
        }
        if !code.is_empty() {
            responses += code.split(',').count() as u64;
        }
    }
    Ok((requests, responses))
}

/// wrk against nginx from the client pod, measured (its own CPU from rusage).
fn run_wrk(
    stage: &Stage,
    args: &TlsProbeArgs,
    workload: Workload,
    seconds: u32,
) -> anyhow::Result<(WrkReport, f64)> {
    let threads = args.threads.to_string();
    let connections = args.connections.to_string();
    let duration = format!("{seconds}s");
    let url = stage.url(workload);
    let cmd = in_netns(
        &stage.client_netns,
        "wrk",
        &[
            "-t",
            &threads,
            "-c",
            &connections,
            "-d",
            &duration,
            "--latency",
            &url,
        ],
    );
    let limit = Duration::from_secs(u64::from(seconds) + 60);
    let out = measure::run("wrk", cmd, limit)?.success()?;
    let report =
        parse_wrk(&out.stdout).with_context(|| format!("wrk's output:\n{}", out.stdout))?;
    if report.requests == 0 {
        bail!("wrk completed no request:\n{}", out.stdout);
    }
    if report.non_2xx_3xx > 0 || report.socket_errors > 0 {
        bail!(
            "wrk saw {} non-2xx/3xx responses and {} socket errors:\n{}",
            report.non_2xx_3xx,
            report.socket_errors,
            out.stdout
        );
    }
    Ok((report, out.cpu()))
}

/// One run: the scenario's agent (if any) ready, wrk for `seconds`, CPU over wrk's run, then
/// the agent stopped and its output checked.
fn measure_run(
    stage: &Stage,
    args: &TlsProbeArgs,
    round: u32,
    workload: Workload,
    scenario: Scenario,
    seconds: u32,
) -> anyhow::Result<Run> {
    let name = format!("{}-{}-{round}", workload.name(), scenario.name());
    let agent = match scenario {
        Scenario::Off => {
            let hooks = stage.target.hooks()?;
            if !hooks.is_empty() {
                bail!(
                    "{} still has eBPF programs attached ({}): the baseline would be tapped",
                    stage.target.veth,
                    hooks.join(", ")
                );
            }
            None
        }
        Scenario::Tap => Some(RunningAgent::start(stage, false, &name)?),
        Scenario::Probes => Some(RunningAgent::start(stage, true, &name)?),
    };
    std::thread::sleep(SETTLE);
    let nginx_pid = stage.nginx.pid();
    let nginx_before = cpu::process_seconds(nginx_pid)?;
    let window = CpuWindow::start(agent.as_ref().map(RunningAgent::pid))?;
    let wrk = run_wrk(stage, args, workload, seconds);
    let cpu = window.stop();
    let nginx_cpu = cpu::process_seconds(nginx_pid).map(|after| after - nginx_before);
    let summary = match agent {
        Some(a) => a.stop()?,
        None => AgentSummary::default(),
    };
    let ((wrk, wrk_cpu), cpu, nginx_cpu) = (wrk?, cpu?, nginx_cpu?);
    if let Some(d) = &summary.decrypted
        && (d.http_requests == 0 || d.calls == 0)
    {
        bail!(
            "the decrypted view holds no HTTP request ({} TLS calls): the probes were not live",
            d.calls
        );
    }
    Ok(Run {
        round,
        workload,
        scenario,
        wrk,
        window: cpu.wall,
        machine_cpu: cpu.machine,
        nginx_cpu,
        wrk_cpu,
        agent_cpu: cpu.process,
        agent: summary,
    })
}

/// The kernel's BPF run-time statistics, on while this is held (`BPF_ENABLE_STATS`: the kernel
/// turns them off again when the last such fd closes, also if this program dies).
struct BpfStatsOn {
    _fd: OwnedFd,
}

impl BpfStatsOn {
    fn enable() -> anyhow::Result<BpfStatsOn> {
        /// `BPF_ENABLE_STATS` of `enum bpf_cmd`.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // `union bpf_attr`'s `enable_stats { __u32 type; }`, zero-padded; type 0 is
        // BPF_STATS_RUN_TIME.
        let attr = [0u64; 2];
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`, which lives across the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("enabling BPF run-time statistics (bpf BPF_ENABLE_STATS)");
        }
        let fd = i32::try_from(fd).context("fd out of range")?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(BpfStatsOn {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Ids of the BPF programs process `pid` holds open (the `prog_id:` of its fds' fdinfo).
fn bpf_program_ids(pid: u32) -> anyhow::Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(entry) = entry else { continue };
        // An fd may close while we look: skip it.
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Run count and run time (ns) of every BPF program process `pid` holds, by program name
/// (programs of one name are summed), from `bpftool prog show --json`.
fn bpf_programs_of(pid: u32) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let ids = bpf_program_ids(pid)?;
    let mut cmd = Command::new("bpftool");
    cmd.args(["prog", "show", "--json"]);
    let out = measure::run("bpftool prog show", cmd, Duration::from_secs(30))?.success()?;
    let progs: Value = serde_json::from_str(&out.stdout).context("bpftool's JSON")?;
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in progs.as_array().context("bpftool's JSON is not a list")? {
        let id = p["id"].as_u64();
        if id.is_none_or(|id| ids.binary_search(&id).is_err()) {
            continue;
        }
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e = by_name.entry(name).or_default();
        e.0 += p["run_cnt"].as_u64().unwrap_or(0);
        e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(by_name)
}

/// One program's cost in the statistics run.
#[derive(Debug, Clone)]
struct ProgramCost {
    name: String,
    calls: u64,
    ns: u64,
}

/// The statistics run of one workload.
#[derive(Debug, Clone)]
struct Profile {
    workload: Workload,
    run: Run,
    programs: Vec<ProgramCost>,
}

impl Profile {
    fn requests(&self) -> f64 {
        self.run.wrk.requests.max(1) as f64
    }

    fn total_ns(&self) -> u64 {
        self.programs.iter().map(|p| p.ns).sum()
    }

    fn to_json(&self) -> Value {
        json!({
            "workload": self.workload.name(),
            "run": self.run.to_json(),
            "programs": self.programs.iter().map(|p| json!({
                "name": p.name,
                "run_cnt": p.calls,
                "run_time_ns": p.ns,
                "ns_per_call": p.ns as f64 / p.calls.max(1) as f64,
                "calls_per_request": p.calls as f64 / self.requests(),
                "ns_per_request": p.ns as f64 / self.requests(),
            })).collect::<Vec<_>>(),
            "bpf_ns_per_request": self.total_ns() as f64 / self.requests(),
        })
    }
}

/// A `probes` run with the BPF statistics on: the agent's programs' counters are read just
/// before and just after wrk.
fn profile_run(stage: &Stage, args: &TlsProbeArgs, workload: Workload) -> anyhow::Result<Profile> {
    let stats = BpfStatsOn::enable()?;
    let agent = RunningAgent::start(stage, true, &format!("{}-bpf-stats", workload.name()))?;
    std::thread::sleep(SETTLE);
    let nginx_pid = stage.nginx.pid();
    let before = bpf_programs_of(agent.pid())?;
    if before.is_empty() {
        bail!(
            "bpftool lists no program of the agent (pid {})",
            agent.pid()
        );
    }
    let nginx_before = cpu::process_seconds(nginx_pid)?;
    let window = CpuWindow::start(Some(agent.pid()))?;
    let wrk = run_wrk(stage, args, workload, args.seconds);
    let cpu = window.stop();
    let nginx_cpu = cpu::process_seconds(nginx_pid).map(|after| after - nginx_before);
    let after = bpf_programs_of(agent.pid());
    let summary = agent.stop()?;
    drop(stats);
    let ((wrk, wrk_cpu), cpu, nginx_cpu, after) = (wrk?, cpu?, nginx_cpu?, after?);
    let mut programs: Vec<ProgramCost> = after
        .iter()
        .map(|(name, &(calls, ns))| {
            let (c0, n0) = before.get(name).copied().unwrap_or_default();
            ProgramCost {
                name: name.clone(),
                calls: calls.saturating_sub(c0),
                ns: ns.saturating_sub(n0),
            }
        })
        .collect();
    programs.sort_by(|a, b| b.ns.cmp(&a.ns).then(a.name.cmp(&b.name)));
    Ok(Profile {
        workload,
        run: Run {
            round: 0,
            workload,
            scenario: Scenario::Probes,
            wrk,
            window: cpu.wall,
            machine_cpu: cpu.machine,
            nginx_cpu,
            wrk_cpu,
            agent_cpu: cpu.process,
            agent: summary,
        },
        programs,
    })
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// Prints the table, the losses, the targets, what the decrypted view captured and the BPF
/// statistics.
fn print_report(
    args: &TlsProbeArgs,
    machine: &str,
    comparisons: &[Comparison],
    runs: &[Run],
    profiles: &[Profile],
) {
    println!(
        "tls-probe: wrk -t{} -c{} -d{}s --latency from {CLIENT} against nginx in {SERVER} \
         (HTTPS :{PORT}, one process, keep-alive; small = `/`, big = `/big`), median of {} \
         round(s)",
        args.threads, args.connections, args.seconds, args.repeat
    );
    println!("machine: {machine}");
    println!(
        "off: no agent; tap: podtap agent on {SERVER}'s veth; probes: the same with --decrypt \
         (uprobes on nginx's libssl)"
    );
    println!();
    println!(
        "{:<6} {:<7} {:>9} {:>17} {:>8} {:>17} {:>8} {:>10} {:>11} {:>11} {:>9}",
        "LOAD",
        "SCEN",
        "REQ/S",
        "(min-max)",
        "LOSS",
        "P99 us (min-max)",
        "P99 +",
        "NGINX us/r",
        "MACH us/r",
        "AGENT CPU",
        "NGINX CPU"
    );
    for c in comparisons {
        for (scenario, m) in [
            (Scenario::Off, &c.off),
            (Scenario::Tap, &c.tap),
            (Scenario::Probes, &c.probes),
        ] {
            let loss = Loss::of(m, &c.off);
            let (l, p) = if scenario == Scenario::Off {
                ("-".to_string(), "-".to_string())
            } else {
                (pct(loss.rps), pct(loss.p99))
            };
            println!(
                "{:<6} {:<7} {:>9.0} {:>17} {:>8} {:>17} {:>8} {:>10.1} {:>11.1} {:>11} {:>8.0}%",
                c.workload.name(),
                scenario.name(),
                m.rps,
                format!("({:.0}-{:.0})", m.rps_min, m.rps_max),
                l,
                format!("{:.0} ({:.0}-{:.0})", m.p99_us, m.p99_min_us, m.p99_max_us),
                p,
                m.nginx_us_per_req,
                m.machine_us_per_req,
                m.agent_core_pct
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.1}%")),
                m.nginx_core_pct
            );
        }
    }
    println!();
    println!(
        "LOSS and P99 +: against off. us/r: CPU microseconds per request (nginx's; the \
         machine's). AGENT/NGINX CPU: % of one core over wrk's run."
    );
    println!();
    println!("uprobes alone (probes vs tap) and the whole agent (probes vs off):");
    for c in comparisons {
        let u = c.probes_vs_tap();
        let a = c.probes_vs_off();
        println!(
            "  {:<5} uprobes: req/s {}, p99 {}, nginx CPU/request {:+.1} us; \
             agent with --decrypt: req/s {}, p99 {}; agent CPU {} of one core ({} of the busy CPU)",
            c.workload.name(),
            pct(-u.rps),
            pct(u.p99),
            c.probes.nginx_us_per_req - c.tap.nginx_us_per_req,
            pct(-a.rps),
            pct(a.p99),
            c.probes
                .agent_core_pct
                .map_or_else(|| "-".to_string(), |x| format!("{x:.1}%")),
            c.probes
                .agent_share_pct
                .map_or_else(|| "-".to_string(), |x| format!("{x:.1}%")),
        );
    }
    println!();
    println!(
        "targets (loss at most {:.0}%, medians):",
        TARGET_LOSS * 100.0
    );
    for c in comparisons {
        let u = c.probes_vs_tap();
        let a = c.probes_vs_off();
        println!(
            "  {:<5} uprobes (probes vs tap): req/s {} ({:.1}% lost), p99 {} ({:+.1}%)",
            c.workload.name(),
            yes_no(u.rps_met()),
            u.rps * 100.0,
            yes_no(u.p99_met()),
            u.p99 * 100.0
        );
        println!(
            "  {:<5} agent --decrypt (probes vs off): req/s {} ({:.1}% lost), p99 {} ({:+.1}%)",
            c.workload.name(),
            yes_no(a.rps_met()),
            a.rps * 100.0,
            yes_no(a.p99_met()),
            a.p99 * 100.0
        );
    }
    println!();
    println!("decrypted view (probes runs; tshark on the `{SERVER} (decrypted)` interface):");
    for r in runs.iter().filter(|r| r.scenario == Scenario::Probes) {
        if let Some(d) = &r.agent.decrypted {
            println!(
                "  round {} {:<5}: wrk completed {}, tshark decodes {} requests and {} \
                 responses; {} TLS calls, {} plaintext bytes; lost {} (ring full {}, \
                 unreadable {}, no connection {}), {} bytes truncated",
                r.round,
                r.workload.name(),
                r.wrk.requests,
                d.http_requests,
                d.http_responses,
                d.calls,
                d.bytes,
                d.ring_full + d.unreadable + d.unbound,
                d.ring_full,
                d.unreadable,
                d.unbound,
                d.truncated
            );
        }
    }
    for p in profiles {
        println!();
        let r = &p.run;
        println!(
            "BPF run time, {} (one extra probes run with BPF_ENABLE_STATS: {:.0} req/s, \
             {} requests; not in the medians):",
            p.workload.name(),
            r.wrk.requests_per_sec,
            r.wrk.requests
        );
        println!(
            "  {:<18} {:>11} {:>9} {:>9} {:>9}",
            "PROGRAM", "CALLS", "NS/CALL", "CALLS/REQ", "NS/REQ"
        );
        for prog in &p.programs {
            println!(
                "  {:<18} {:>11} {:>9.0} {:>9.2} {:>9.0}",
                prog.name,
                prog.calls,
                prog.ns as f64 / prog.calls.max(1) as f64,
                prog.calls as f64 / p.requests(),
                prog.ns as f64 / p.requests()
            );
        }
        println!(
            "  all programs: {:.0} ns per request; nginx {:.1} us CPU per request; agent \
             {:.1}% of one core ({:.1} us per request), wrk {:.1} us per request",
            p.total_ns() as f64 / p.requests(),
            r.us_per_request(r.nginx_cpu),
            r.agent_cpu.unwrap_or(0.0) / r.window * 100.0,
            r.us_per_request(r.agent_cpu.unwrap_or(0.0)),
            r.us_per_request(r.wrk_cpu)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_summary() {
        let out = "podtap: tapped 1 pod(s) on 1 node(s) for 3.1 s (attach: tcx)\n\
            decrypted: shop/cart-1: 2000 frames from the pod, 1000 to it\n\
            decrypted: probing pid 4242 of shop/cart-1 (/usr/lib/x86_64-linux-gnu/libssl.so.3)\n\
            decrypted: 3000 TLS calls, 123456 plaintext bytes; lost: 1 events (ring full), 2 unreadable, 3 bytes beyond the per-call limit, 4 chunks with no connection\n\
            copies dropped: 5 (ring full 5, unreadable 0); malformed records 0, records of unknown veths 0\n\
            wrote 7000 packet(s) to /tmp/x.pcapng\n";
        let s = parse_agent_summary(out, true).unwrap();
        assert_eq!((s.written, s.dropped), (7000, 5));
        let d = s.decrypted.unwrap();
        assert_eq!(
            (
                d.calls,
                d.bytes,
                d.ring_full,
                d.unreadable,
                d.truncated,
                d.unbound
            ),
            (3000, 123456, 1, 2, 3, 4)
        );
        assert_eq!(d.frames, [2000, 1000]);
        let plain = parse_agent_summary(out, false).unwrap();
        assert!(plain.decrypted.is_none());
        assert!(parse_agent_summary("nothing", false).is_err());
    }

    #[test]
    fn finds_the_probe_line_in_a_coloured_log() {
        let log = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m TLS probes attached \
            \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m4242 \u{1b}[3mpod\u{1b}[0m\u{1b}[2m=\u{1b}[0mshop/cart-1\n";
        assert!(probed_in_log(log, 4242));
        assert!(!probed_in_log(log, 424));
        assert!(probed_in_log(
            " INFO TLS probes attached pid=7 pod=shop/cart-1 library=/x\n",
            7
        ));
    }

    #[test]
    fn loss_against_a_baseline() {
        let base = Medians {
            rps: 1000.0,
            p99_us: 100.0,
            ..Medians::default()
        };
        let x = Medians {
            rps: 960.0,
            p99_us: 110.0,
            ..Medians::default()
        };
        let l = Loss::of(&x, &base);
        assert!((l.rps - 0.04).abs() < 1e-9 && l.rps_met());
        assert!((l.p99 - 0.10).abs() < 1e-9 && !l.p99_met());
    }
}
