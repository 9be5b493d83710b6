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
    #[arg(short, long)]
    pub config: PathBuf,
    /// Run the broker inside this network namespace (`ip netns` name), e.g. a lab host's.
    #[arg(long)]
    pub netns: Option<String>,
    /// Only check the configuration: print every problem, or "valid", and exit.
    #[arg(long)]
    pub check: bool,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
}

/// Runs `podtap broker`.
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let config = BrokerConfig::load(&args.config)?;
    if args.check {
        println!(
            "{}: valid ({} policies)",
            args.config.display(),
            config.policies.len()
        );
        return Ok(());
    }
    if let Some(n) = &args.netns {
        // Before any thread exists, so every thread of the broker lives there.
        podtap_cluster::netns::enter(n)
            .with_context(|| format!("entering network namespace {n}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing SIGHUP")?;

    let mut broker = Broker::start(config)?;
    tracing::info!("broker receiving VXLAN on {}", broker.vxlan_addr()?);
    let mut last = std::fs::read(&args.config).unwrap_or_default();
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        broker.run(&stop, Some(Instant::now() + Duration::from_secs(1)));
        let now = std::fs::read(&args.config).unwrap_or_default();
        if now != last || hup.swap(false, Ordering::Relaxed) {
            last = now;
            match BrokerConfig::load(&args.config)
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
