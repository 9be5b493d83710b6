//! `podtap broker`: load and validate the configuration, receive tunnels, run the pipelines,
//! reload when the file changes (or on SIGHUP), and print the counters on exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use podtap_broker::{Broker, BrokerConfig};

/// Flags of `podtap broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// The broker configuration (YAML; see docs/configuration.md).
    #[arg(
        short,
        long,
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    pub config: Option<PathBuf>,
    /// Take the policies from the controller at this address (`https://HOST:PORT`) instead of
    /// a file; needs --name and --endpoint, and --tls-dir's certificates.
    #[arg(long, requires_all = ["name", "endpoint"], conflicts_with_all = ["check", "replay"])]
    pub controller: Option<String>,
    /// This replica's name, with --controller (unique among brokers; a pod's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where agents send copies, with --controller: `vxlan://ADDR[:PORT]` or `l2gre://ADDR`.
    /// The broker listens there.
    #[arg(long)]
    pub endpoint: Option<podtap_tunnel::TunnelEndpoint>,
    /// With --controller: relative output paths of policies are placed under this directory,
    /// and no policy may write outside it.
    #[arg(long, default_value = "/var/lib/podtap")]
    pub data: PathBuf,
    /// With --controller: serve Prometheus metrics here (e.g. 0.0.0.0:9464).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// The broker certificate, its key and the CA (`broker.crt`, `broker.key`, `ca.crt`), with
    /// --controller.
    #[arg(long, default_value = "/etc/podtap/tls")]
    pub tls_dir: PathBuf,
    /// Run the broker inside this network namespace (`ip netns` name), e.g. a lab host's.
    #[arg(long)]
    pub netns: Option<String>,
    /// Only check the configuration: print every problem, or "valid", and exit.
    #[arg(long)]
    pub check: bool,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Instead of receiving tunnels, run this capture (pcap or pcapng of Ethernet frames)
    /// through one policy as fast as possible, with the capture's timestamps as the clock,
    /// and print the counters and the processing rate.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// The policy a replay runs through (default: the first).
    #[arg(long, requires = "replay")]
    pub policy: Option<String>,
}

/// Runs `podtap broker`.
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    if let Some(url) = args.controller.clone() {
        return crate::broker_driven::run(url, args);
    }
    let Some(path) = args.config.clone() else {
        anyhow::bail!("give --config FILE or --controller URL");
    };
    let config = BrokerConfig::load(&path)?;
    if args.check {
        println!(
            "{}: valid ({} policies)",
            path.display(),
            config.policies.len()
        );
        return Ok(());
    }
    if let Some(capture) = &args.replay {
        return replay(config, capture, args.policy.as_deref());
    }
    enter_netns(args.netns.as_deref())?;
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing SIGHUP")?;

    let metrics = config.listen.metrics;
    let mut broker = Broker::start(config)?;
    tracing::info!("broker receiving VXLAN on {}", broker.vxlan_addr()?);
    if let Some(addr) = metrics {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?;
        let stats = broker.shared_stats();
        podtap_metrics::serve(listener, move || podtap_broker::metrics::render(&stats))?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let mut last = std::fs::read(&path).unwrap_or_default();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        broker.run(&stop, Some(Instant::now() + Duration::from_secs(1)));
        let now = std::fs::read(&path).unwrap_or_default();
        if now != last || hup.swap(false, Ordering::Relaxed) {
            last = now;
            match BrokerConfig::load(&path)
                .map_err(anyhow::Error::from)
                .and_then(|c| broker.reload(c).map_err(anyhow::Error::from))
            {
                Ok(changes) if changes.is_empty() => {
                    tracing::info!("configuration reloaded: no policy changed")
                }
                Ok(changes) => tracing::info!("configuration reloaded: {}", changes.join(", ")),
                Err(e) => {
                    tracing::error!("configuration not reloaded, the running one stays: {e:#}")
                }
            }
        }
    }
    print!("{}", broker.finish().render());
    Ok(())
}

/// Enters the network namespace `netns` (a lab host's). Called before any thread exists, so
/// every thread of the broker lives there.
pub fn enter_netns(netns: Option<&str>) -> anyhow::Result<()> {
    if let Some(n) = netns {
        podtap_cluster::netns::enter(n)
            .with_context(|| format!("entering network namespace {n}"))?;
    }
    Ok(())
}

/// Runs a capture through one policy of an offline broker and prints the counters and the rate.
fn replay(
    config: BrokerConfig,
    capture: &std::path::Path,
    policy: Option<&str>,
) -> anyhow::Result<()> {
    let name = policy
        .map(str::to_string)
        .unwrap_or_else(|| config.policies[0].name.clone());
    let mut broker = Broker::offline(config)?;
    let index = broker
        .policy_index(&name)
        .with_context(|| format!("no policy named {name:?}"))?;
    let started_cpu = cpu_seconds();
    let started = Instant::now();
    let packets = podtap_broker::replay::replay(&mut broker, index, capture)?;
    let stats = broker.finish();
    let cpu = cpu_seconds() - started_cpu;
    print!("{}", stats.render());
    println!(
        "replay: {packets} packets through policy {name} in {:.3} s wall, {:.3} s CPU: {:.0} packets per CPU-second",
        started.elapsed().as_secs_f64(),
        cpu,
        packets as f64 / cpu.max(1e-9)
    );
    Ok(())
}

/// User + system CPU time of this process.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
