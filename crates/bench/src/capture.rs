//! `podtap-bench capture`: writes the broker benchmarks' synthetic capture to a file and prints
//! its ground truth, to rerun a comparison tool by hand on exactly what the benchmark used.

use std::path::PathBuf;

use clap::Args;

use crate::synth::{self, SynthSpec};

/// Flags of `podtap-bench capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Where to write the pcap.
    #[arg(long)]
    pub out: PathBuf,
    /// Packets (duplicates not counted).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Conversations (each up to two unidirectional flows).
    #[arg(long, default_value_t = 10_000)]
    pub connections: u32,
    /// Seconds the capture spans.
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Duplicate every packet of one conversation in N (exact copies 20-500 µs later).
    #[arg(long)]
    pub duplicate_one_in: Option<u32>,
}

/// Runs `podtap-bench capture`.
pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let spec = SynthSpec {
        packets: args.packets,
        connections: args.connections,
        seconds: args.seconds,
        seed: args.seed,
        duplicate_one_in: args.duplicate_one_in,
    };
    let summary = synth::write_capture(&spec, &args.out)?;
    println!("{}: {summary:#?}", args.out.display());
    Ok(())
}
