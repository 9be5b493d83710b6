//! `podtap-bench`: podtap's benchmarks, each a program that runs podtap and its comparison tool
//! on the same input in the same run and prints the ratio.
//!
//! - `tap` ([`tap_cost`]): what tapping a pod costs its traffic, against `tcpdump -w`.
//! - `zero-drop` ([`zero_drop`]): the highest packet rate copied without a dropped copy.
//! - `broker` ([`broker_offline`]): broker pipelines on a synthetic capture against softflowd
//!   and pmacctd (NetFlow v9 / IPFIX), editcap (dedupe) and tcpdump / editcap (filter, slice
//!   and write), with the results checked against each other.
//! - `broker-tunnel` ([`broker_tunnel`]): the highest VXLAN rate through a full broker
//!   pipeline on one core with zero loss.
//! - `l7` ([`l7_decode`]): HTTP/1.1 and HTTP/2 call decoding of one capture against tshark's
//!   field export.
//! - `tls-probe` ([`tls_probe`]): what the decrypted view's uprobes cost an HTTPS server, with wrk.
//! - `capture` ([`capture`]): writes the synthetic capture ([`synth`]) the broker benchmarks use.
//!
//! The tap and tunnel benchmarks run on a lab of network namespaces that is removed at the
//! end, also on error; `broker` runs offline on files.

mod bench_lab;
mod broker_offline;
mod broker_tunnel;
mod capture;
mod capture_digest;
mod child;
mod cpu;
mod flow_collector;
mod iperf;
mod l7_decode;
mod l7_synth;
mod measure;
mod synth;
mod tap;
mod tap_cost;
mod tls_probe;
mod veth_meter;
mod vxlan_flood;
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
    /// Broker pipelines against softflowd/pmacctd (NetFlow), editcap (dedupe), tcpdump/editcap
    /// (filter + slice + write), on the same synthetic capture.
    Broker(broker_offline::BrokerArgs),
    /// Highest VXLAN packet rate through a full broker pipeline on one core with zero loss.
    BrokerTunnel(broker_tunnel::TunnelArgs),
    /// L7 decoding (HTTP/1.1, HTTP/2) of one capture against tshark's HTTP/HTTP2 field export.
    L7(l7_decode::L7Args),
    /// What the decrypted view's uprobes cost an HTTPS server: wrk with and without them.
    TlsProbe(tls_probe::TlsProbeArgs),
    /// Write the broker benchmarks' synthetic capture (deterministic pcap) and print its ground truth.
    Capture(capture::CaptureArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tap(args) => tap_cost::run(args),
        Command::ZeroDrop(args) => zero_drop::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Broker(args) => broker_offline::run(args),
        Command::BrokerTunnel(args) => broker_tunnel::run(args),
        Command::L7(args) => l7_decode::run(args),
        Command::TlsProbe(args) => tls_probe::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podtap-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
