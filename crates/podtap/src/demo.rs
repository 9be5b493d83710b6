//! `podtap demo`: podtap's main job on one machine. Brings up a lab (one Calico-style and one
//! Flannel-style node by default), taps the pods of a namespace, drives traffic between pods on
//! the same node and across nodes, writes a pcapng and prints what was seen.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use podtap_agent::{Agent, AgentConfig};
use podtap_cluster::{Cni, PodRef};
use podtap_lab::traffic::Traffic;
use podtap_lab::{Lab, LabSpec};

use crate::agent_cmd::{absolute, selection};

/// Flags of `podtap demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab name.
    #[arg(long, default_value = "demo")]
    pub lab: String,
    /// CNI style per node, comma-separated (`calico`, `flannel`).
    #[arg(long, default_value = "calico,flannel", value_delimiter = ',')]
    pub cni: Vec<Cni>,
    /// Pods per node.
    #[arg(long, default_value_t = 3)]
    pub pods_per_node: usize,
    /// Tap the pods of these namespaces (repeatable).
    #[arg(short = 'n', long = "namespace", default_value = "shop")]
    pub namespaces: Vec<String>,
    /// Tap only pods whose labels match (kubectl syntax).
    #[arg(short = 'l', long, default_value = "")]
    pub selector: String,
    /// Where to write the capture.
    #[arg(short = 'w', long, default_value = "podtap-demo.pcapng")]
    pub write: String,
    /// Leave the lab up afterwards (remove it with `podtap lab down --name NAME`).
    #[arg(long)]
    pub keep_lab: bool,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let spec = LabSpec::new(&args.lab, args.cni.clone(), args.pods_per_node);
    println!(
        "podtap demo: bringing up lab {:?} ({} nodes: {})",
        args.lab,
        spec.nodes.len(),
        join(&args.cni)
    );
    let lab = Lab::up(&spec).with_context(|| format!("bringing up lab {:?}", args.lab))?;
    let result = tap_and_drive(&lab, &args);
    if !args.keep_lab {
        Lab::down(&args.lab).with_context(|| format!("taking down lab {:?}", args.lab))?;
        println!("lab {:?} removed", args.lab);
    } else {
        println!(
            "lab {:?} left up: podtap lab status --name {}",
            args.lab, args.lab
        );
    }
    result
}

fn tap_and_drive(lab: &Lab, args: &DemoArgs) -> anyhow::Result<()> {
    let inv = lab.inventory();
    for p in &inv.pods {
        println!(
            "  pod {:<22} node {:<7} ip {:<12} veth {}",
            p.key().to_string(),
            p.node,
            p.ip,
            p.host_veth
        );
    }
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.selection = selection(&args.namespaces, "", &args.selector, &[])?;
    let file =
        std::fs::File::create(&args.write).with_context(|| format!("creating {}", args.write))?;
    let started = Instant::now();
    let mut agent = Agent::start(cfg, Some(Box::new(file)))?;
    println!(
        "tapping {} pod(s) in namespace(s) {}: {}",
        agent.tapped().len(),
        args.namespaces.join(","),
        agent
            .tapped()
            .iter()
            .map(|(p, _, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Pairs on the same node and across nodes, between every pod and the next.
    let pods: Vec<PodRef> = inv.pods.iter().map(|p| p.key()).collect();
    let mut plan: Vec<(PodRef, PodRef, Traffic)> = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        let to = &pods[(i + 1) % pods.len()];
        plan.push((
            from.clone(),
            to.clone(),
            Traffic::UdpEcho {
                count: 50,
                size: 200,
            },
        ));
        plan.push((from.clone(), to.clone(), Traffic::HttpGet { requests: 10 }));
    }
    if pods.len() > 3 {
        plan.push((
            pods[0].clone(),
            pods[3].clone(),
            Traffic::TcpBulk { bytes: 4 << 20 },
        ));
    }
    println!("driving traffic:");
    for (from, to, traffic) in &plan {
        let report = lab
            .drive(from, to, traffic)
            .with_context(|| format!("driving {traffic:?} from {from} to {to}"))?;
        println!(
            "  {:<20} -> {:<20} {:<40} sent {:>6} pkts {:>9} B, answered {:>6} pkts, errors {}",
            from.to_string(),
            to.to_string(),
            format!("{traffic:?}"),
            report.sent_packets,
            report.sent_bytes,
            report.received_packets,
            report.errors
        );
    }
    // Give the last copies time to leave the ring (the reader polls every 10 ms).
    agent.run(
        &AtomicBool::new(false),
        Some(Instant::now() + Duration::from_millis(300)),
    )?;
    let stats = agent.stop()?;
    println!();
    print!("{}", stats.render(Some(&absolute(&args.write))));
    println!(
        "done in {:.1} s; open it with: tshark -r {} or wireshark",
        started.elapsed().as_secs_f64(),
        args.write
    );
    Ok(())
}

fn join(cni: &[Cni]) -> String {
    cni.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
