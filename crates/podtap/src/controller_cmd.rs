//! `podtap controller` (the fabric manager) and `podtap certs` (the fabric's certificates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use podtap_controller::fabric::{Fabric, Timing};
use podtap_controller::leader::{self, LeaseConfig};
use podtap_controller::source::{Source, files::FileSource, kube::KubeSource};
use podtap_controller::{controller, health, tls};
use tokio::sync::watch;

/// Flags of `podtap controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Where agents and brokers connect (gRPC with mutual TLS).
    #[arg(long, default_value = "0.0.0.0:9650")]
    pub listen: SocketAddr,
    /// Directory with ca.crt, controller.crt and controller.key (`podtap certs`).
    #[arg(long, env = "PODTAP_TLS_DIR", default_value = "/etc/podtap/tls")]
    pub tls_dir: PathBuf,
    /// Serve /healthz, /readyz (leader) and /members here.
    #[arg(long, default_value = "0.0.0.0:9651")]
    pub health: SocketAddr,
    /// Read the cluster from this inventory file instead of the Kubernetes API (the lab).
    #[arg(long, requires = "policies", conflicts_with = "lab")]
    pub inventory: Option<PathBuf>,
    /// Read the cluster from this local lab's inventory instead of the Kubernetes API.
    #[arg(long, requires = "policies")]
    pub lab: Option<String>,
    /// With --inventory or --lab: the directory of TapPolicy YAML files.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// With --inventory or --lab: where statuses are written (default: POLICIES/status).
    #[arg(long)]
    pub status_dir: Option<PathBuf>,
    /// Namespace of the leader-election Lease (Kubernetes only).
    #[arg(long, env = "POD_NAMESPACE", default_value = "podtap-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "podtap-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// How often agents and brokers report, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub heartbeat_ms: u64,
    /// A member whose last report is older than this (ms) is Pending.
    #[arg(long, default_value_t = 6000)]
    pub pending_after_ms: u64,
    /// ... and older than this (ms), Disconnected.
    #[arg(long, default_value_t = 20000)]
    pub disconnected_after_ms: u64,
}

/// Flags of `podtap certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt and {controller,agent,broker}.{crt,key} to.
    #[arg(long)]
    pub out: PathBuf,
    /// Extra DNS names for the controller's certificate (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
}

/// Runs `podtap certs`.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let bundle = tls::generate(&args.dns)?;
    tls::write(&bundle, &args.out)?;
    println!(
        "wrote ca.crt and controller, agent and broker certificates to {}",
        args.out.display()
    );
    Ok(())
}

/// Runs `podtap controller` until SIGINT/SIGTERM.
pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let timing = Timing {
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        pending_after: Duration::from_millis(args.pending_after_ms),
        disconnected_after: Duration::from_millis(args.disconnected_after_ms),
        ..Timing::default()
    };
    let problems = timing.problems();
    if !problems.is_empty() {
        bail!("{}", problems.join("\n  "));
    }
    tls::install_crypto_provider();
    // Read the certificates before anything starts, so a missing file fails early.
    tls::server_config(&args.tls_dir)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run_async(args, timing))
}

async fn run_async(args: ControllerArgs, timing: Timing) -> anyhow::Result<()> {
    let fabric_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("fabric address {}", args.listen))?;
    let health_listener = tokio::net::TcpListener::bind(args.health)
        .await
        .with_context(|| format!("health address {}", args.health))?;

    let (source, leading) = match (&args.inventory, &args.lab) {
        (None, None) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
            let identity = args
                .identity
                .clone()
                .unwrap_or_else(|| format!("podtap-controller-{}", std::process::id()));
            let leading = leader::campaign(
                client.clone(),
                LeaseConfig {
                    namespace: args.lease_namespace.clone(),
                    name: args.lease_name.clone(),
                    identity,
                    duration: args.lease_duration,
                    grace: (args.lease_duration / 3).max(1),
                },
            )
            .await?;
            (Source::Kube(KubeSource::start(client).await?), leading)
        }
        (inventory, lab) => {
            let inventory = match (inventory, lab) {
                (Some(p), _) => p.clone(),
                (None, Some(lab)) => podtap_lab::Lab::open(lab)
                    .with_context(|| format!("opening lab {lab:?}"))?
                    .inventory_path(),
                (None, None) => unreachable!(),
            };
            let policies = args.policies.clone().expect("clap requires --policies");
            let status_dir = args
                .status_dir
                .clone()
                .unwrap_or_else(|| policies.join("status"));
            let source = FileSource::open(&inventory, &policies, &status_dir)?;
            // One controller per lab: it leads.
            (Source::Files(source), watch::channel(true).1)
        }
    };

    let fabric = Fabric::new(timing, leading.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });
    tracing::info!(
        "fabric API on {} (mutual TLS), health on http://{}",
        args.listen,
        args.health
    );
    let service = fabric.service();
    let tls_dir = args.tls_dir.clone();
    let server = tokio::spawn({
        let stop = stopped();
        async move { tls::serve(service, fabric_listener, &tls_dir, stop).await }
    });
    let health = tokio::spawn(health::serve(
        health_listener,
        leading,
        fabric.clone(),
        stopped(),
    ));
    controller::run(source, fabric, stopped()).await?;
    server.await??;
    health.await??;
    Ok(())
}
