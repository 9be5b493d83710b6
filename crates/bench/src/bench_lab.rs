//! The lab every benchmark runs on: one calico node with two pods, traffic from
//! `shop/frontend-1` to `shop/cart-1`, and the sender's host veth as the tap point. The lab is
//! removed when [`BenchLab`] is dropped, also on error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use podtap_cluster::{Cni, PodRef};
use podtap_lab::{LabGuard, LabSpec};

use crate::tap::TapTarget;

/// Name of the benchmarks' lab.
pub const LAB_NAME: &str = "bench";
/// The sending pod, whose veth is tapped.
pub const SENDER: &str = "shop/frontend-1";
/// The receiving pod, on the same node.
pub const RECEIVER: &str = "shop/cart-1";

/// A pod's addresses.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The pod.
    pub pod: PodRef,
    /// Its IP address.
    pub ip: String,
    /// Its network namespace.
    pub netns: String,
}

/// The lab, the two pods and the tap point.
pub struct BenchLab {
    /// The lab (removed on drop).
    pub lab: LabGuard,
    /// The sending pod.
    pub sender: Endpoint,
    /// The receiving pod.
    pub receiver: Endpoint,
    /// The sender's veth, where taps attach.
    pub target: TapTarget,
}

impl BenchLab {
    /// Brings the lab up (a leftover `bench` lab of the same shape is reused, and removed at
    /// the end like a new one).
    pub fn up(podtap: &Path) -> anyhow::Result<BenchLab> {
        let spec = LabSpec::new(LAB_NAME, vec![Cni::Calico], 2);
        let lab = LabGuard::up(&spec).context("bringing up the benchmark lab")?;
        let endpoint = |name: &str| -> anyhow::Result<(Endpoint, String, String)> {
            let pod = PodRef::parse(name).with_context(|| format!("pod {name}"))?;
            let p = lab
                .pod(&pod)
                .with_context(|| format!("the lab has no pod {name}"))?;
            let netns = p
                .netns
                .clone()
                .with_context(|| format!("pod {name} has no netns"))?;
            Ok((
                Endpoint {
                    pod,
                    ip: p.ip.clone(),
                    netns,
                },
                p.node.clone(),
                p.host_veth.clone(),
            ))
        };
        let (sender, node, veth) = endpoint(SENDER)?;
        let (receiver, receiver_node, _) = endpoint(RECEIVER)?;
        if node != receiver_node {
            bail!("{SENDER} runs on {node} but {RECEIVER} on {receiver_node}");
        }
        let node_netns = lab
            .node_netns(&node)
            .with_context(|| format!("node {node} has no netns"))?
            .to_string();
        let target = TapTarget {
            podtap: podtap.to_path_buf(),
            inventory: lab.inventory_path(),
            pod: SENDER.to_string(),
            node_netns,
            veth,
        };
        Ok(BenchLab {
            lab,
            sender,
            receiver,
            target,
        })
    }
}

/// The podtap binary: `path` if given, else `podtap` next to this program.
pub fn podtap_binary(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match path {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("podtap"),
    };
    if !path.is_file() {
        bail!(
            "no podtap binary at {} (build it: cargo build --release -p podtap -p podtap-bench, \
             or pass --podtap PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Fails with a clear message if a program the benchmark runs is missing.
pub fn require_program(program: &str) -> anyhow::Result<()> {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("{program} is not installed (scripts/install-deps.sh installs it)");
    }
    Ok(())
}

/// A line describing the machine: CPUs, kernel and load average now.
pub fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    format!("{cpus} CPUs, Linux {kernel}, load average {load}")
}
