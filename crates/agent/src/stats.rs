//! What the agent counted: per pod and direction, the kernel's view (seen, filtered, dropped)
//! and the output's (written). Shown in the summary on exit and on `/metrics`.

use std::fmt::Write as _;
use std::time::Duration;

use podtap_abi::TapCounters;
use podtap_cluster::PodRef;

use crate::output::{OutputCounters, OutputErrors};

/// Index of the from-pod direction in per-direction arrays.
pub const FROM_POD: usize = 0;
/// Index of the to-pod direction in per-direction arrays.
pub const TO_POD: usize = 1;
/// Direction names, by index.
pub const DIRECTIONS: [&str; 2] = ["from-pod", "to-pod"];

/// Counters of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStats {
    /// The pod.
    pub pod: PodRef,
    /// Its node.
    pub node: String,
    /// Its host-side veth.
    pub veth: String,
    /// Whether it is tapped now.
    pub tapped: bool,
    /// Kernel counters, by direction (FROM_POD, TO_POD).
    pub kernel: [TapCounters; 2],
    /// Output counters, by direction.
    pub output: [OutputCounters; 2],
}

impl PodStats {
    /// Copies lost in one direction, in wire packets: ring full or unreadable.
    pub fn dropped(&self, dir: usize) -> u64 {
        self.kernel[dir].ring_full + self.kernel[dir].load_failed
    }
}

/// A pod the agent should tap but could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFailure {
    /// The pod.
    pub pod: PodRef,
    /// Why.
    pub reason: String,
}

/// Everything the agent counted, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per pod, sorted by pod.
    pub pods: Vec<PodStats>,
    /// Pods selected but not tapped, with the reason.
    pub failures: Vec<TapFailure>,
    /// Record errors in the output.
    pub output_errors: OutputErrors,
    /// How long the agent has run.
    pub uptime: Duration,
    /// The attach mode in use (tcx or netlink).
    pub attach_mode: String,
    /// Nodes tapped.
    pub nodes: usize,
    /// How each node sends copies to a broker (`node: how`), empty without a tunnel.
    pub sending: Vec<String>,
    /// What the user-space tunnel senders sent and lost, summed over nodes.
    pub tunnel: Option<podtap_tunnel::SendCounters>,
    /// The decrypted view (with `--decrypt`).
    pub decrypted: Option<crate::tls::TlsStats>,
}

impl Stats {
    /// Total copies lost, in wire packets.
    pub fn dropped(&self) -> u64 {
        self.pods
            .iter()
            .map(|p| p.dropped(FROM_POD) + p.dropped(TO_POD))
            .sum()
    }

    /// Total packets written.
    pub fn written(&self) -> u64 {
        self.pods
            .iter()
            .map(|p| p.output[FROM_POD].packets + p.output[TO_POD].packets)
            .sum()
    }

    /// The human summary printed when the agent stops.
    pub fn render(&self, output: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "podtap: tapped {} pod(s) on {} node(s) for {:.1} s (attach: {})",
            self.pods.len(),
            self.nodes,
            self.uptime.as_secs_f64(),
            self.attach_mode
        );
        let _ = writeln!(
            s,
            "{:<24} {:<8} {:<16} {:<9} {:>9} {:>11} {:>9} {:>8} {:>8} {:>6}",
            "POD",
            "NODE",
            "VETH",
            "DIR",
            "PACKETS",
            "BYTES",
            "WRITTEN",
            "DROPPED",
            "FILTERED",
            "CUT"
        );
        for p in &self.pods {
            for dir in [FROM_POD, TO_POD] {
                let k = &p.kernel[dir];
                let _ = writeln!(
                    s,
                    "{:<24} {:<8} {:<16} {:<9} {:>9} {:>11} {:>9} {:>8} {:>8} {:>6}",
                    p.pod.to_string(),
                    p.node,
                    p.veth,
                    DIRECTIONS[dir],
                    k.packets,
                    k.bytes,
                    p.output[dir].packets,
                    p.dropped(dir),
                    k.filtered,
                    k.truncated
                );
            }
        }
        for line in &self.sending {
            let _ = writeln!(s, "sending: {line}");
        }
        if let Some(t) = &self.tunnel {
            let kernel: u64 = self
                .pods
                .iter()
                .map(|p| p.kernel[0].redirected + p.kernel[1].redirected)
                .sum();
            let kernel_failed: u64 = self
                .pods
                .iter()
                .map(|p| p.kernel[0].redirect_failed + p.kernel[1].redirect_failed)
                .sum();
            let _ = writeln!(
                s,
                "tunnel: {} copies sent in the kernel ({} refused), {} from user space ({} fragmented, {} truncated, {} lost)",
                kernel, kernel_failed, t.packets, t.fragmented, t.truncated, t.errors
            );
        }
        for f in &self.failures {
            let _ = writeln!(s, "not tapped: {}: {}", f.pod, f.reason);
        }
        if let Some(d) = &self.decrypted {
            for (pod, c) in &d.frames {
                let _ = writeln!(
                    s,
                    "decrypted: {pod}: {} frames from the pod, {} to it",
                    c[FROM_POD].packets, c[TO_POD].packets
                );
            }
            for (pid, pod, lib) in &d.probed {
                let _ = writeln!(s, "decrypted: probing pid {pid} of {pod} ({lib})");
            }
            for (pid, pod, why) in &d.unprobed {
                let _ = writeln!(s, "decrypted: not probed: pid {pid} of {pod}: {why}");
            }
            let k = &d.kernel;
            let _ = writeln!(
                s,
                "decrypted: {} TLS calls, {} plaintext bytes; lost: {} events (ring full), {} unreadable, {} bytes beyond the per-call limit, {} chunks with no connection",
                k.calls, k.bytes, k.ring_full, k.read_failed, k.truncated, d.synth.unbound_dropped
            );
        }
        let ring_full: u64 = self
            .pods
            .iter()
            .map(|p| p.kernel[0].ring_full + p.kernel[1].ring_full)
            .sum();
        let unreadable: u64 = self
            .pods
            .iter()
            .map(|p| p.kernel[0].load_failed + p.kernel[1].load_failed)
            .sum();
        let _ = writeln!(
            s,
            "copies dropped: {} (ring full {}, unreadable {}); malformed records {}, records of unknown veths {}",
            self.dropped(),
            ring_full,
            unreadable,
            self.output_errors.malformed_records,
            self.output_errors.unknown_interface
        );
        match output {
            Some(path) => {
                let _ = writeln!(s, "wrote {} packet(s) to {path}", self.written());
            }
            None => {
                let _ = writeln!(
                    s,
                    "no capture file written (counted {} packet(s))",
                    self.written()
                );
            }
        }
        s
    }
}
