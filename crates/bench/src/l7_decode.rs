//! `podtap-bench l7`: HTTP/1.1, HTTP/2 and gRPC call decoding of one plaintext capture (see
//! [`crate::l7_synth`]) by podtap and by tshark, in the same run, with both tools' request
//! counts checked against each other and against the capture's ground truth.
//!
//! - podtap: `podtap broker --replay FILE` with one policy whose only output is `calls`
//!   writing JSON lines (no SQLite file: the output then keeps its store in memory, which it
//!   always has). Requests are the records, by `protocol`, `method`, `path`; responses by
//!   `status`; gRPC calls by `grpc.status`.
//! - tshark: `tshark -r FILE -T fields` exporting the fields an operator would (HTTP request
//!   method and URI, response code; HTTP/2 `:method`, `:path`, `:status`; tshark 4.0 has no
//!   `grpc-status` field and crashes on a custom HTTP/2 header field, so gRPC statuses are
//!   checked for podtap only), the HTTP/2 ports decoded as HTTP/2 (`-d`), TCP
//!   reassembly and HTTP body reassembly and de-chunking on (the defaults, given explicitly).
//!   Requests are the method values, responses the status values; the protocol is told by the
//!   server port.
//!
//! Before the timed runs, tshark checks a small capture from the same generator: valid
//! checksums, no TCP analysis flag (lost, retransmitted or out-of-order segments, ACKs of
//! unseen data), nothing malformed, and every request and response found.
//!
//! CPU is what the kernel charged to each tool's process (`wait4`), from start to exit; for
//! podtap the replay's own figure (after the capture is opened) is shown as well. A warm-up
//! round, then `--repeat` rounds with the tools interleaved; figures are medians.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::bench_lab::{self, require_program};
use crate::l7_synth::{self, CallTally, GRPC_PORT, H2C_PORT, L7Protocol, L7Spec, L7Truth};
use crate::measure::{self, Measured, count, median, own_cpu, rate};

/// Longest any single tool run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);
/// podtap's requests per CPU-second over tshark's.
const TARGET: f64 = 20.0;
/// Packets of the capture tshark checks before the timed runs.
const CHECK_PACKETS: u64 = 20_000;
/// Separates the values of one field that occurs several times in a frame (tshark
/// `-E aggregator`); no path of the capture contains it.
const AGGREGATOR: char = '|';
/// Differences shown when a tally does not match.
const SHOWN_DIFFERENCES: usize = 12;

/// Flags of `podtap-bench l7`.
#[derive(Debug, Args)]
pub struct L7Args {
    /// Packets to aim at in the capture (connections are added until it has at least this many).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Seconds over which connections start.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Timed rounds (the median is reported), after one warm-up round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Directory for the capture and outputs (default: a new one in the temporary directory,
    /// removed at the end). Needs about 1 GB with the defaults.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the capture in the work directory (with `--workdir`) to rerun a tool by hand.
    #[arg(long, requires = "workdir")]
    pub keep: bool,
    /// The podtap binary (default: `podtap` next to this program).
    #[arg(long)]
    pub podtap: Option<PathBuf>,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The two tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Podtap,
    Tshark,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Podtap => "podtap",
            Tool::Tshark => "tshark",
        }
    }
}

/// One measured run of a tool, and what it decoded.
struct ToolRun {
    measured: Measured,
    /// podtap's own CPU figure (the replay's, after the capture is opened).
    own_cpu: Option<f64>,
    tally: CallTally,
    /// podtap: records by outcome (`complete`, `no_response`, `incomplete`).
    outcomes: BTreeMap<String, u64>,
    /// The command, with the work directory written as `$DIR`.
    command: String,
}

/// A tool's runs, summarised.
struct ToolSummary {
    tool: Tool,
    command: String,
    cpu: f64,
    user: f64,
    system: f64,
    wall: f64,
    own_cpu: Option<f64>,
    tally: CallTally,
    outcomes: BTreeMap<String, u64>,
    /// Whether every timed run decoded the same tally.
    stable: bool,
}

impl ToolSummary {
    fn requests(&self) -> u64 {
        L7Protocol::ALL
            .iter()
            .map(|&p| self.tally.requests_of(p))
            .sum()
    }
}

/// Everything the runs need.
struct Inputs {
    podtap: PathBuf,
    dir: PathBuf,
    capture: PathBuf,
}

/// Runs `podtap-bench l7`.
pub fn run(args: L7Args) -> anyhow::Result<()> {
    let podtap = bench_lab::podtap_binary(args.podtap.clone())?;
    require_program("tshark")?;
    let machine = bench_lab::machine_description();
    eprintln!("podtap-bench l7: {machine}");
    let tmp = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("podtap-bench-l7")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("podtap-bench-l7").tempdir(),
    }
    .context("creating the work directory")?;
    let dir = if args.keep {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };

    let check = check_capture(&dir, args.seed)?;
    eprintln!("{check}");

    let spec = L7Spec {
        packets: args.packets,
        seconds: args.seconds,
        seed: args.seed,
    };
    let capture = dir.join("l7.pcap");
    let started = Instant::now();
    let truth = l7_synth::write_capture(&spec, &capture)?;
    eprintln!(
        "wrote {} ({} frames, {} requests, {:.1} MB) in {:.1} s",
        capture.display(),
        truth.frames,
        truth.requests(),
        truth.frame_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let ctx = Inputs {
        podtap,
        dir: dir.clone(),
        capture,
    };
    let summaries = run_rounds(&ctx, args.repeat)?;
    let checks = checks(&truth, &summaries);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(
                &machine, &args, &truth, &check, &summaries, &checks
            ))?
        );
    } else {
        print_report(&machine, &args, &truth, &check, &summaries, &checks);
    }
    if args.keep {
        eprintln!("kept {}", ctx.capture.display());
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(what, _, _)| what.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} check(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Writes a small capture with the same generator and has tshark check it: checksums, TCP
/// analysis, malformed packets, and every request and response found. Returns a line saying
/// what was checked.
fn check_capture(dir: &Path, seed: u64) -> anyhow::Result<String> {
    let path = dir.join("check.pcap");
    let truth = l7_synth::write_capture(
        &L7Spec {
            packets: CHECK_PACKETS,
            seconds: 5,
            seed,
        },
        &path,
    )?;
    let mut cmd = Command::new("tshark");
    cmd.arg("-n")
        .arg("-r")
        .arg(&path)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(decode_as())
        .args([
            "-Y",
            "_ws.malformed or _ws.expert.severity >= 6291456 or tcp.analysis.flags \
             or ip.checksum.status == 0 or tcp.checksum.status == 0",
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.expert.message",
        ]);
    let m = measure::run("tshark (capture check)", cmd, RUN_TIMEOUT)?.success()?;
    let bad: Vec<&str> = m.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    if !bad.is_empty() {
        bail!(
            "tshark finds {} suspicious frames in the generated capture {} (first: {})",
            bad.len(),
            path.display(),
            bad.iter().take(5).copied().collect::<Vec<_>>().join("; ")
        );
    }
    let run = run_tshark(&path, dir)?;
    let diff = truth
        .tally
        .differences(&run.tally, SHOWN_DIFFERENCES, false);
    if !diff.is_empty() {
        bail!(
            "tshark decodes the generated capture {} differently from its ground truth \
             (truth vs tshark):\n  {}",
            path.display(),
            diff.join("\n  ")
        );
    }
    std::fs::remove_file(&path).context("removing the check capture")?;
    Ok(format!(
        "tshark check of a {}-frame capture from the same generator: checksums valid, no TCP \
         analysis flag, nothing malformed, all {} requests and responses (method, path, status) \
         as generated",
        truth.frames,
        truth.requests()
    ))
}

/// tshark's decode-as rules: the HTTP/2 ports are HTTP/2 (prior knowledge, no upgrade).
fn decode_as() -> [String; 4] {
    [
        "-d".into(),
        format!("tcp.port=={H2C_PORT},http2"),
        "-d".into(),
        format!("tcp.port=={GRPC_PORT},http2"),
    ]
}

/// The tshark field export: reassembly and de-chunking given explicitly (the defaults), HTTP
/// and HTTP/2 HEADERS frames only.
fn tshark_command(capture: &Path) -> Command {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(capture);
    for pref in [
        "tcp.desegment_tcp_streams:TRUE",
        "http.desegment_headers:TRUE",
        "http.desegment_body:TRUE",
        "http.dechunk_body:TRUE",
    ] {
        cmd.args(["-o", pref]);
    }
    cmd.args(decode_as());
    cmd.args([
        "-Y",
        "http.request or http.response or http2.type == 1",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        &format!("aggregator={AGGREGATOR}"),
    ]);
    for field in TSHARK_FIELDS {
        cmd.args(["-e", field]);
    }
    cmd
}

/// The exported fields, in column order.
const TSHARK_FIELDS: [&str; 8] = [
    "tcp.srcport",
    "tcp.dstport",
    "http.request.method",
    "http.request.uri",
    "http.response.code",
    "http2.headers.method",
    "http2.headers.path",
    "http2.headers.status",
];

/// Runs tshark on `capture` (output into `dir`) and counts what it exported.
fn run_tshark(capture: &Path, dir: &Path) -> anyhow::Result<ToolRun> {
    let cmd = tshark_command(capture);
    let command = show(&cmd, dir);
    let measured = measure::run("tshark", cmd, RUN_TIMEOUT)?.success()?;
    let tally = tshark_tally(&measured.stdout)?;
    Ok(ToolRun {
        measured,
        own_cpu: None,
        tally,
        outcomes: BTreeMap::new(),
        command,
    })
}

/// Counts requests and responses in tshark's field export (one line per frame, the columns of
/// [`TSHARK_FIELDS`]).
fn tshark_tally(out: &str) -> anyhow::Result<CallTally> {
    let mut tally = CallTally::default();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != TSHARK_FIELDS.len() {
            bail!("tshark line with {} columns: {line:?}", cols.len());
        }
        let port = |i: usize| -> anyhow::Result<u16> {
            cols[i]
                .parse()
                .with_context(|| format!("tshark port {:?} in {line:?}", cols[i]))
        };
        let (src, dst) = (port(0)?, port(1)?);
        let protocol = L7Protocol::of_server_port(dst)
            .or_else(|| L7Protocol::of_server_port(src))
            .with_context(|| format!("tshark line on no server port: {line:?}"))?;
        let values = |i: usize| -> Vec<&str> {
            if cols[i].is_empty() {
                Vec::new()
            } else {
                cols[i].split(AGGREGATOR).collect()
            }
        };
        let (methods, paths, statuses) = if protocol == L7Protocol::Http1 {
            (values(2), values(3), values(4))
        } else {
            (values(5), values(6), values(7))
        };
        if methods.len() != paths.len() {
            bail!("tshark line with methods and paths that do not pair: {line:?}");
        }
        for (m, p) in methods.iter().zip(&paths) {
            tally.request(protocol, m, p);
        }
        for s in statuses {
            let s = s
                .parse()
                .with_context(|| format!("tshark status {s:?} in {line:?}"))?;
            tally.response(protocol, s);
        }
    }
    Ok(tally)
}

/// podtap's broker configuration: one policy, one `calls` output writing JSON lines.
fn podtap_config(json: &Path) -> String {
    format!(
        "policies:\n  - name: calls\n    vni: 1\n    outputs:\n      - type: calls\n        json: {}\n",
        json.display()
    )
}

/// Runs podtap on the capture and counts its records.
fn run_podtap(ctx: &Inputs) -> anyhow::Result<ToolRun> {
    let out = ctx.dir.join("out");
    if out.exists() {
        std::fs::remove_dir_all(&out).context("clearing the output directory")?;
    }
    std::fs::create_dir_all(&out).context("creating the output directory")?;
    let json = out.join("calls.jsonl");
    let config = ctx.dir.join("calls.yaml");
    std::fs::write(&config, podtap_config(&json))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(&ctx.podtap);
    cmd.arg("broker")
        .arg("--config")
        .arg(&config)
        .arg("--replay")
        .arg(&ctx.capture);
    let command = show(&cmd, &ctx.dir).replace(&ctx.podtap.to_string_lossy().to_string(), "podtap");
    let measured = measure::run("podtap", cmd, RUN_TIMEOUT)?.success()?;
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let (tally, outcomes) = podtap_tally(&text)?;
    std::fs::remove_dir_all(&out).context("removing the outputs")?;
    Ok(ToolRun {
        own_cpu: own_cpu(&measured),
        measured,
        tally,
        outcomes,
        command,
    })
}

/// Counts podtap's call records (JSON lines) and their outcomes.
fn podtap_tally(text: &str) -> anyhow::Result<(CallTally, BTreeMap<String, u64>)> {
    let mut tally = CallTally::default();
    let mut outcomes = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let rec: Value =
            serde_json::from_str(line).with_context(|| format!("call record {}", n + 1))?;
        let field = |name: &str| -> anyhow::Result<&str> {
            rec.get(name)
                .and_then(Value::as_str)
                .with_context(|| format!("call record {} has no {name}: {line}", n + 1))
        };
        let protocol = field("protocol")?;
        let Some(protocol) = L7Protocol::from_name(protocol) else {
            bail!("call record {} of an unexpected protocol: {line}", n + 1);
        };
        tally.request(protocol, field("method")?, field("path")?);
        if let Some(s) = rec.get("status").and_then(Value::as_u64) {
            tally.response(protocol, s as u32);
        }
        if let Some(s) = rec
            .get("grpc")
            .and_then(|g| g.get("status"))
            .and_then(Value::as_u64)
        {
            tally.grpc_status(s as u32);
        }
        let outcome = match rec.get("outcome") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            _ => "?".to_string(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    Ok((tally, outcomes))
}

/// A warm-up round and `repeat` timed rounds, the tools interleaved (each round starts with the
/// other tool), summarised per tool.
fn run_rounds(ctx: &Inputs, repeat: u32) -> anyhow::Result<Vec<ToolSummary>> {
    let tools = [Tool::Podtap, Tool::Tshark];
    let mut runs: Vec<Vec<ToolRun>> = vec![Vec::new(), Vec::new()];
    for round in 0..=repeat {
        for k in 0..tools.len() {
            let i = (k + round as usize) % tools.len();
            let tool = tools[i];
            let r = match tool {
                Tool::Podtap => run_podtap(ctx),
                Tool::Tshark => run_tshark(&ctx.capture, &ctx.dir),
            }
            .with_context(|| format!("running {}", tool.name()))?;
            eprintln!(
                "  {} {:<7} cpu {:>8.3} s (user {:.3}, system {:.3})  wall {:>8.3} s  {} requests{}",
                if round == 0 { "warm-up" } else { "round  " },
                tool.name(),
                r.measured.cpu(),
                r.measured.user,
                r.measured.system,
                r.measured.wall,
                L7Protocol::ALL
                    .iter()
                    .map(|&p| r.tally.requests_of(p))
                    .sum::<u64>(),
                r.own_cpu
                    .map(|c| format!("  (replay's own figure {c:.3} s)"))
                    .unwrap_or_default()
            );
            if round > 0 {
                runs[i].push(r);
            }
        }
    }
    let mut out = Vec::new();
    for (tool, mut runs) in tools.into_iter().zip(runs) {
        let stable = runs.iter().all(|r| r.tally == runs[0].tally);
        let own: Vec<f64> = runs.iter().filter_map(|r| r.own_cpu).collect();
        let cpu = median(runs.iter().map(|r| r.measured.cpu()).collect());
        let user = median(runs.iter().map(|r| r.measured.user).collect());
        let system = median(runs.iter().map(|r| r.measured.system).collect());
        let wall = median(runs.iter().map(|r| r.measured.wall).collect());
        let first = runs.swap_remove(0);
        out.push(ToolSummary {
            tool,
            command: first.command,
            cpu,
            user,
            system,
            wall,
            own_cpu: (!own.is_empty()).then(|| median(own)),
            tally: first.tally,
            outcomes: first.outcomes,
            stable,
        });
    }
    Ok(out)
}

/// The checks: (what, passed, differences shown when it failed).
fn checks(truth: &L7Truth, summaries: &[ToolSummary]) -> Vec<(String, bool, Vec<String>)> {
    let mut out = Vec::new();
    let mut tallies = Vec::new();
    for s in summaries {
        let name = s.tool.name();
        // tshark 4.0 does not finish a chunked response whose last segment holds only the end
        // of `0\r\n\r\n`: those (all 200) are counted as found, at most as many as the
        // capture has; every other count must be exact.
        let mut tally = s.tally.clone();
        let missing = truth
            .tally
            .responses_of(L7Protocol::Http1)
            .saturating_sub(tally.responses_of(L7Protocol::Http1));
        if s.tool == Tool::Tshark && missing > 0 && missing <= truth.split_chunk_terminators {
            *tally.statuses.entry((L7Protocol::Http1, 200)).or_default() += missing;
            out.push((
                format!(
                    "{name}: missed {missing} chunked HTTP/1.1 responses, of the {} whose \
                     last segment holds only the end of the last-chunk terminator (a tshark \
                     de-chunking limit); counted as found below",
                    truth.split_chunk_terminators
                ),
                true,
                Vec::new(),
            ));
        }
        let s = &ToolSummary {
            tally,
            command: String::new(),
            outcomes: s.outcomes.clone(),
            ..*s
        };
        for p in L7Protocol::ALL {
            let (got, want) = (s.tally.requests_of(p), truth.tally.requests_of(p));
            out.push((
                format!(
                    "{name}: {got} {} requests, the capture has {want}",
                    p.as_str()
                ),
                got == want,
                Vec::new(),
            ));
            let (got, want) = (s.tally.responses_of(p), truth.tally.responses_of(p));
            out.push((
                format!(
                    "{name}: {got} {} responses, the capture has {want}",
                    p.as_str()
                ),
                got == want,
                Vec::new(),
            ));
        }
        // tshark 4.0 has no grpc-status field (a custom HTTP/2 header field crashes it).
        let grpc = s.tool == Tool::Podtap;
        let diff = truth.tally.differences(&s.tally, SHOWN_DIFFERENCES, grpc);
        out.push((
            format!(
                "{name}: every request's method and path, every status{} as generated ({} \
                 distinct requests)",
                if grpc { " and grpc-status" } else { "" },
                truth.tally.distinct_requests()
            ),
            diff.is_empty(),
            diff,
        ));
        if s.tool == Tool::Podtap {
            let complete = s.outcomes.get("complete").copied().unwrap_or(0);
            let total: u64 = s.outcomes.values().sum();
            out.push((
                format!("{name}: {complete} of {total} records complete"),
                complete == total,
                s.outcomes
                    .iter()
                    .map(|(o, n)| format!("{o}: {n}"))
                    .collect(),
            ));
        }
        out.push((
            format!("{name}: the same counts in every round"),
            s.stable,
            Vec::new(),
        ));
        tallies.push(s.tally.clone());
    }
    if let [a, b] = &tallies[..] {
        out.push((
            "podtap and tshark: the same requests and responses, protocol by protocol".to_string(),
            a.differences(b, 0, false).is_empty(),
            a.differences(b, SHOWN_DIFFERENCES, false),
        ));
    }
    out
}

/// A command as text, with the work directory as `$DIR`.
fn show(cmd: &Command, dir: &Path) -> String {
    let dir = dir.to_string_lossy().to_string();
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let p = a.to_string_lossy().replace(&dir, "$DIR");
            if p.contains([' ', '"', '|', '=']) && !p.starts_with("$DIR") {
                format!("'{p}'")
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The capture's make-up in one paragraph.
fn describe(truth: &L7Truth, seed: u64) -> String {
    let conns = |p| truth.connections.get(&p).copied().unwrap_or(0);
    let by_protocol = |f: &dyn Fn(L7Protocol) -> u64| {
        L7Protocol::ALL
            .iter()
            .map(|&p| format!("{} {}", p.as_str(), count(f(p))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} frames ({} MB, {} MB of TCP payload) over {:.1} s, seed {seed}; {} TCP connections \
         ({}; {} over IPv6); {} requests ({}); {} chunked HTTP/1.1 responses ({} with the \
         terminator split across segments); {} messages over \
         several segments; up to {} concurrent HTTP/2 streams; HPACK: {} dynamic-table insertions, \
         {} references, {} evictions",
        count(truth.frames),
        count(truth.frame_bytes / 1_000_000),
        count(truth.payload_bytes / 1_000_000),
        truth.span_s,
        count(truth.connections.values().sum()),
        by_protocol(&conns),
        count(truth.ipv6_connections),
        count(truth.requests()),
        by_protocol(&|p| truth.tally.requests_of(p)),
        count(truth.chunked_responses),
        count(truth.split_chunk_terminators),
        count(truth.multi_segment_messages),
        truth.max_concurrent_streams,
        count(truth.hpack_insertions),
        count(truth.hpack_dynamic_references),
        count(truth.hpack_evictions),
    )
}

fn ratio(summaries: &[ToolSummary]) -> Option<(f64, Option<f64>)> {
    let p = summaries.iter().find(|s| s.tool == Tool::Podtap)?;
    let t = summaries.iter().find(|s| s.tool == Tool::Tshark)?;
    Some((
        t.cpu / p.cpu.max(1e-9),
        p.own_cpu.map(|o| t.cpu / o.max(1e-9)),
    ))
}

fn print_report(
    machine: &str,
    args: &L7Args,
    truth: &L7Truth,
    check: &str,
    summaries: &[ToolSummary],
    checks: &[(String, bool, Vec<String>)],
) {
    println!("machine: {machine}");
    println!("capture: {}", describe(truth, args.seed));
    println!("{check}");
    println!(
        "CPU: user + system of the whole process, median of {} after a warm-up round",
        args.repeat
    );
    println!();
    println!(
        "| tool | CPU s | user s | system s | wall s | requests per CPU-second | packets per CPU-second | http1 | http2 | grpc |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        let reqs = s.requests() as f64;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            s.tool.name(),
            s.cpu,
            s.user,
            s.system,
            s.wall,
            rate(reqs / s.cpu.max(1e-9)),
            rate(truth.frames as f64 / s.cpu.max(1e-9)),
            count(s.tally.requests_of(L7Protocol::Http1)),
            count(s.tally.requests_of(L7Protocol::Http2)),
            count(s.tally.requests_of(L7Protocol::Grpc)),
        );
        if let Some(own) = s.own_cpu {
            println!(
                "| {}, replay's own figure | {own:.3} | | | | {} | {} | | | |",
                s.tool.name(),
                rate(reqs / own.max(1e-9)),
                rate(truth.frames as f64 / own.max(1e-9)),
            );
        }
    }
    println!(
        "| ground truth | | | | | | | {} | {} | {} |",
        count(truth.tally.requests_of(L7Protocol::Http1)),
        count(truth.tally.requests_of(L7Protocol::Http2)),
        count(truth.tally.requests_of(L7Protocol::Grpc)),
    );
    println!();
    for (what, ok, details) in checks {
        println!("- [{}] {what}", if *ok { "ok" } else { "MISMATCH" });
        if !ok {
            for d in details {
                println!("    {d}");
            }
        }
    }
    if let Some((r, own)) = ratio(summaries) {
        println!();
        println!(
            "podtap / tshark: {r:.1}x whole process{}; target at least {TARGET}x: {}",
            own.map(|o| format!(", {o:.1}x by the replay's own figure"))
                .unwrap_or_default(),
            if r >= TARGET { "MET" } else { "MISSED" }
        );
    }
    println!();
    println!("commands:");
    for s in summaries {
        println!("  {}: {}", s.tool.name(), s.command);
    }
}

fn report_json(
    machine: &str,
    args: &L7Args,
    truth: &L7Truth,
    check: &str,
    summaries: &[ToolSummary],
    checks: &[(String, bool, Vec<String>)],
) -> Value {
    let by_protocol = |t: &CallTally| -> Value {
        L7Protocol::ALL
            .iter()
            .map(|&p| {
                (
                    p.as_str().to_string(),
                    json!({
                        "requests": t.requests_of(p),
                        "responses": t.responses_of(p),
                        "methods": t.methods_of(p),
                        "statuses": t.statuses_of(p).iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "machine": machine,
        "capture": {
            "packets_flag": args.packets,
            "seed": args.seed,
            "frames": truth.frames,
            "frame_bytes": truth.frame_bytes,
            "payload_bytes": truth.payload_bytes,
            "span_s": truth.span_s,
            "connections": truth.connections.iter().map(|(p, n)| (p.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "ipv6_connections": truth.ipv6_connections,
            "chunked_responses": truth.chunked_responses,
            "split_chunk_terminators": truth.split_chunk_terminators,
            "multi_segment_messages": truth.multi_segment_messages,
            "max_concurrent_streams": truth.max_concurrent_streams,
            "hpack_insertions": truth.hpack_insertions,
            "hpack_dynamic_references": truth.hpack_dynamic_references,
            "hpack_evictions": truth.hpack_evictions,
            "requests": truth.requests(),
            "by_protocol": by_protocol(&truth.tally),
            "grpc_statuses": truth.tally.grpc_statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        },
        "capture_check": check,
        "repeat": args.repeat,
        "tools": summaries.iter().map(|s| json!({
            "tool": s.tool.name(),
            "command": s.command,
            "cpu_s": s.cpu,
            "user_s": s.user,
            "system_s": s.system,
            "wall_s": s.wall,
            "own_cpu_s": s.own_cpu,
            "requests": s.requests(),
            "requests_per_cpu_s": s.requests() as f64 / s.cpu.max(1e-9),
            "packets_per_cpu_s": truth.frames as f64 / s.cpu.max(1e-9),
            "by_protocol": by_protocol(&s.tally),
            "outcomes": s.outcomes,
            "stable": s.stable,
        })).collect::<Vec<_>>(),
        "checks": checks.iter().map(|(what, ok, details)| json!({"check": what, "ok": ok, "differences": details})).collect::<Vec<_>>(),
        "target": TARGET,
        "ratio": ratio(summaries).map(|r| r.0),
        "ratio_after_loading": ratio(summaries).and_then(|r| r.1),
        "target_met": ratio(summaries).is_some_and(|r| r.0 >= TARGET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tshark_lines_are_counted_by_server_port() {
        let out = "34000\t80\tGET\t/api/v1/cart/1\t\t\t\t\n\
                   80\t34000\t\t\t200\t\t\t\n\
                   34001\t8081\t\t\t\tGET|POST\t/a|/b\t\n\
                   8081\t34001\t\t\t\t\t\t201|200\n\
                   50051\t34002\t\t\t\t\t\t200\n";
        let t = tshark_tally(out).unwrap();
        assert_eq!(t.requests_of(L7Protocol::Http1), 1);
        assert_eq!(t.requests_of(L7Protocol::Http2), 2);
        assert_eq!(t.responses_of(L7Protocol::Http2), 2);
        assert_eq!(t.responses_of(L7Protocol::Grpc), 1);
    }

    #[test]
    fn reads_the_replay_line() {
        let m = Measured {
            what: "podtap".into(),
            code: Some(0),
            wall: 1.0,
            user: 0.5,
            system: 0.5,
            stdout: "replay: 1000 packets through policy calls in 0.329 s wall, 0.331 s CPU: 3021 packets per CPU-second\n".into(),
            stderr: String::new(),
        };
        assert_eq!(own_cpu(&m), Some(0.331));
    }

    /// The generator's capture, checked by tshark (checksums, TCP analysis, malformed frames,
    /// every request and response as generated).
    #[test]
    fn tshark_agrees_with_the_generator() {
        let dir = tempfile::tempdir().unwrap();
        let line = check_capture(dir.path(), 11).unwrap();
        assert!(line.contains("as generated"), "{line}");
    }
}
