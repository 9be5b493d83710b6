//! `podtap-bench`: podtap's benchmarks, each a program that runs podtap and its comparison tool
//! on the same input in the same run and prints the ratio.
//!
//! - `tap` ([`tap_cost`]): what tapping a pod costs its traffic, against `tcpdump -w`.
//! - `zero-drop` ([`zero_drop`]): the highest packet rate copied without a dropped copy.
//!
//! Both run on a lab ([`bench_lab`]) that is removed at the end, also on error.

mod bench_lab;
mod child;
mod cpu;
mod iperf;
mod tap;
mod tap_cost;
mod veth_meter;
mod zero_drop;

use clap::{Parser, Subcommand};

/// podtap's benchmarks (run as root; they build a lab of network namespaces).
#[derive(Debug, Parser)]
#[command(name = "podtap-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tap cost: iperf3 TCP and UDP between two lab pods, untapped, with podtap, with tcpdump.
    Tap(tap_cost::TapArgs),
    /// Highest paced packet rate with zero dropped copies, for 64- and 1400-byte frames.
    ZeroDrop(zero_drop::ZeroDropArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tap(args) => tap_cost::run(args),
        Command::ZeroDrop(args) => zero_drop::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podtap-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
