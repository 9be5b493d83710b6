//! `podtap`: the command line. Subcommands: `demo` (the whole thing on a local lab), `lab`
//! (the emulated cluster), `agent` (the tap), `broker` (the packet broker), `controller` (the
//! fabric manager).

mod agent_cmd;
mod agent_driven;
mod broker_cmd;
mod broker_driven;
mod calls_cmd;
mod controller_cmd;
mod demo;
mod install_cmd;

use clap::{Parser, Subcommand};

/// podtap: copies of your pods' traffic, for the tools that expect packets.
#[derive(Debug, Parser)]
#[command(name = "podtap", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (e.g. `info`, `podtap_agent=debug`); also the RUST_LOG variable.
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a local lab, tap its pods, drive traffic, write a pcapng and print a summary.
    Demo(demo::DemoArgs),
    /// The local lab: an emulated Kubernetes cluster of network namespaces.
    #[command(subcommand)]
    Lab(podtap_lab::cli::LabCommand),
    /// Tap the selected pods' veths and write their traffic as pcapng or send it to a broker.
    Agent(agent_cmd::AgentArgs),
    /// Receive tapped copies over VXLAN/L2GRE and run per-policy pipelines to the tools.
    Broker(broker_cmd::BrokerArgs),
    /// Show the call records and anomalies a broker's `calls` output stored.
    Calls(calls_cmd::CallsArgs),
    /// The fabric manager: turn TapPolicies and pods into agents' taps and brokers' pipelines.
    Controller(controller_cmd::ControllerArgs),
    /// Write a CA and the controller's, agents' and brokers' certificates for the fabric API.
    Certs(controller_cmd::CertsArgs),
    /// Print the TapPolicy CustomResourceDefinition (YAML, for `kubectl apply -f -`).
    Crd,
    /// Print the manifests that run podtap on a cluster (CRD, RBAC, DaemonSet, Deployments).
    Install(install_cmd::InstallArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files or container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Lab(cmd) => podtap_lab::cli::run(cmd),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Broker(args) => broker_cmd::run(args),
        Command::Calls(args) => calls_cmd::run(args),
        Command::Controller(args) => controller_cmd::run(args),
        Command::Certs(args) => controller_cmd::certs(args),
        Command::Install(args) => install_cmd::run(args),
        Command::Crd => {
            print!("{}", podtap_api::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podtap: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A flag that SIGINT and SIGTERM set: long-running commands stop cleanly (detach, flush,
/// print their counters) when it is.
fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use anyhow::Context;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// The small runtime a member's fabric session runs on (agent or broker driven by the
/// controller), with the TLS provider installed.
fn fabric_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    podtap_controller::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the fabric session's runtime")
}
