//! `podtap agent`: flags → [`AgentConfig`], then run until a signal, the duration, or an
//! output failure, and print the summary.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use podtap_agent::{Agent, AgentConfig, AttachMode, GsoMode, Prefilter, metrics};
use podtap_cluster::{LabelSelector, PodRef, PodSelection};

/// Flags of `podtap agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Inventory file to read pods from (re-read when it changes).
    #[arg(long, conflicts_with_all = ["lab", "controller"], required_unless_present_any = ["lab", "controller"])]
    pub inventory: Option<PathBuf>,
    /// Use the inventory of this local lab.
    #[arg(long, conflicts_with = "controller")]
    pub lab: Option<String>,
    /// Take what to tap from the controller at this address (`https://HOST:PORT`), for the
    /// one node given with --node, instead of an inventory and flags. Copies go to the
    /// brokers the controller assigns, per flow. Needs --tls-dir's certificates.
    #[arg(long, conflicts_with_all = ["namespaces", "namespace_selector", "selector", "pods", "filter", "write", "tunnel", "vni", "gre_key", "send", "decrypt"])]
    pub controller: Option<String>,
    /// The agent certificate, its key and the CA (`agent.crt`, `agent.key`, `ca.crt`), with
    /// --controller.
    #[arg(long, default_value = "/etc/podtap/tls")]
    pub tls_dir: PathBuf,
    /// Node(s) to tap (repeatable); default: every node in the inventory. With --controller:
    /// the node this agent runs on (exactly one).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Only pods in these namespaces (repeatable).
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Only pods in namespaces whose labels match this selector (kubectl syntax).
    #[arg(long, default_value = "")]
    pub namespace_selector: String,
    /// Only pods whose labels match this selector (kubectl syntax, e.g. `app in (cart,web)`).
    #[arg(short = 'l', long, default_value = "")]
    pub selector: String,
    /// Only these pods, as namespace/name (repeatable; must exist).
    #[arg(long = "pod")]
    pub pods: Vec<String>,
    /// In-kernel prefilter, e.g. `net 10.244.0.0/16 and proto tcp,udp and port 80,443`.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Bytes kept of each packet (1-65536).
    #[arg(short = 's', long, default_value_t = podtap_agent::agent::DEFAULT_SNAPLEN)]
    pub snaplen: u32,
    /// Ring buffer size per node, in bytes (power of two; K/M suffixes allowed).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub ring_size: u32,
    /// GSO super-packets: `segment` into wire-size packets, or `keep` as the kernel has them.
    #[arg(long, default_value = "segment")]
    pub gso: GsoMode,
    /// Attach with TCX links, netlink clsact filters, or whichever the kernel has (auto).
    #[arg(long, default_value = "auto")]
    pub attach: AttachMode,
    /// Write packets to this pcapng file; `-` streams to stdout.
    #[arg(short = 'w', long)]
    pub write: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Send copies to a broker: `vxlan://ADDR[:PORT]` or `l2gre://ADDR` (besides any -w file).
    #[arg(long)]
    pub tunnel: Option<podtap_tunnel::TunnelEndpoint>,
    /// VNI that labels this policy's copies (with a vxlan:// tunnel).
    #[arg(long)]
    pub vni: Option<u32>,
    /// 16-bit policy key in the GRE key of this policy's copies (with an l2gre:// tunnel).
    #[arg(long)]
    pub gre_key: Option<u16>,
    /// Send copies in the kernel where possible (auto), always from user space, or only in the kernel.
    #[arg(long, default_value = "auto")]
    pub send: podtap_agent::SendMode,
    /// Copies too big for the path MTU once encapsulated: `fragment` (IP fragments, nothing
    /// lost) or `truncate` (cut to fit, counted).
    #[arg(long, default_value = "fragment")]
    pub oversize: podtap_tunnel::Oversize,
    /// Also capture the selected pods' TLS plaintext (uprobes on OpenSSL's SSL_read/SSL_write
    /// in their processes), written as synthesized TCP on the real connection to an interface
    /// `namespace/pod (decrypted)` and sent to the broker with the label's decrypted bit.
    #[arg(long)]
    pub decrypt: bool,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

/// Parses `4096`, `64K`, `16M`.
fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 64K, 16M)"))?;
    u32::try_from(n * mult).map_err(|_| format!("{s:?} is too large"))
}

/// Builds the selection, reporting every bad selector or pod reference at once.
pub fn selection(
    namespaces: &[String],
    namespace_selector: &str,
    selector: &str,
    pods: &[String],
) -> anyhow::Result<PodSelection> {
    let mut problems = Vec::new();
    let namespace_selector = LabelSelector::parse(namespace_selector)
        .map_err(|e| problems.push(format!("--namespace-selector: {e}")))
        .unwrap_or_else(|_| LabelSelector::everything());
    let pod_selector = LabelSelector::parse(selector)
        .map_err(|e| problems.push(format!("--selector: {e}")))
        .unwrap_or_else(|_| LabelSelector::everything());
    let mut refs = Vec::new();
    for p in pods {
        match PodRef::parse(p) {
            Ok(r) => refs.push(r),
            Err(e) => problems.push(format!("--pod: {e}")),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n  "));
    }
    Ok(PodSelection {
        namespaces: namespaces.to_vec(),
        namespace_selector,
        pod_selector,
        pods: refs,
    })
}

/// Runs `podtap agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(url) = args.controller.clone() {
        return crate::agent_driven::run(url, args);
    }
    let inventory = match (&args.inventory, &args.lab) {
        (Some(p), _) => p.clone(),
        (None, Some(lab)) => podtap_lab::Lab::open(lab)
            .with_context(|| {
                format!("opening lab {lab:?} (is it up? `podtap lab up --name {lab}`)")
            })?
            .inventory_path(),
        (None, None) => bail!("give --inventory FILE or --lab NAME"),
    };
    let mut cfg = AgentConfig::new(inventory);
    cfg.nodes = args.nodes.clone();
    cfg.decrypt = args.decrypt;
    cfg.selection = selection(
        &args.namespaces,
        &args.namespace_selector,
        &args.selector,
        &args.pods,
    )?;
    cfg.prefilter = Prefilter::parse(&args.filter)?;
    cfg.snaplen = args.snaplen;
    cfg.ring_bytes = args.ring_size;
    cfg.gso = args.gso;
    cfg.attach = args.attach;
    cfg.tunnel = match (args.tunnel, args.vni, args.gre_key) {
        (None, None, None) => None,
        (None, _, _) => {
            bail!("--vni and --gre-key label copies sent with --tunnel: give --tunnel too")
        }
        (Some(endpoint), vni, key) => {
            let policy = match (endpoint.kind, vni, key) {
                (podtap_tunnel::TunnelKind::Vxlan, Some(v), None) => v,
                (podtap_tunnel::TunnelKind::L2gre, None, Some(k)) => u32::from(k),
                (podtap_tunnel::TunnelKind::Vxlan, _, _) => {
                    bail!("a vxlan:// tunnel needs --vni (and no --gre-key)")
                }
                (podtap_tunnel::TunnelKind::L2gre, _, _) => {
                    bail!("an l2gre:// tunnel needs --gre-key (and no --vni)")
                }
            };
            Some(podtap_agent::TunnelConfig {
                endpoint,
                policy,
                oversize: args.oversize,
                mode: args.send,
            })
        }
    };

    let to_stdout = args.write.as_deref() == Some("-");
    let sink: Option<podtap_agent::output::PacketSink> = match args.write.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        )),
    };
    // Bind before loading anything, so a busy port fails early and nothing is attached.
    let listener = match args.metrics {
        Some(addr) => {
            Some(TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?)
        }
        None => None,
    };

    let stop = crate::stop_on_signals()?;

    let mut agent = Agent::start(cfg, sink)?;
    if let Some(l) = listener {
        let addr = l.local_addr()?;
        metrics::serve(l, agent.shared_stats()).context("starting the metrics endpoint")?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let tapped = agent.tapped();
    tracing::info!("tapping {} pod(s); stop with Ctrl-C", tapped.len());

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let ran = agent.run(&stop, deadline);
    let stats = agent.stop()?;
    let where_to = args.write.as_deref().map(|w| {
        if w == "-" {
            "stdout".to_string()
        } else {
            absolute(w)
        }
    });
    let summary = stats.render(where_to.as_deref());
    if to_stdout {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    match ran {
        // The reader of `-w -` went away (e.g. `| head`, tshark -c): a normal end.
        Err(podtap_agent::AgentError::Output { source })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// The absolute form of a path, for telling the user where a file is.
pub fn absolute(path: &str) -> String {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}
