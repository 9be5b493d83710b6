//! The taps under test, as child processes on one pod's host veth: podtap's agent (the real
//! binary) or `tcpdump -w` on the same veth. Each is started, waited for until it captures,
//! stopped with SIGTERM, and its own summary read back (written packets, dropped copies).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::child::{Spawned, in_netns};

/// Longest wait for a tap to be capturing.
const READY: Duration = Duration::from_secs(20);
/// Longest wait for a tap to drain, write its summary and exit after SIGTERM.
const STOP: Duration = Duration::from_secs(60);

/// What taps the sender's veth during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Nothing: the baseline.
    None,
    /// `podtap agent` on the pod.
    Podtap,
    /// `tcpdump -i VETH -s 0 -w FILE` in the node's netns.
    Tcpdump,
}

impl Scenario {
    /// Every scenario, in the order runs interleave.
    pub const ALL: [Scenario; 3] = [Scenario::None, Scenario::Podtap, Scenario::Tcpdump];

    /// Short name for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Podtap => "podtap",
            Scenario::Tcpdump => "tcpdump",
        }
    }
}

/// The pod whose veth is tapped.
#[derive(Debug, Clone)]
pub struct TapTarget {
    /// The podtap binary.
    pub podtap: PathBuf,
    /// The lab's inventory file.
    pub inventory: PathBuf,
    /// The pod, as `namespace/name`.
    pub pod: String,
    /// The network namespace of the pod's node.
    pub node_netns: String,
    /// The pod's host-side veth.
    pub veth: String,
}

impl TapTarget {
    /// The names of eBPF programs attached to the veth now (TCX or netlink).
    pub fn hooks(&self) -> anyhow::Result<Vec<String>> {
        podtap_agent::program::hooks_on(Some(&self.node_netns), &self.veth)
            .with_context(|| format!("listing the hooks on {}", self.veth))
    }
}

/// What a tap said about its run when it stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct TapSummary {
    /// Packets the tap saw: podtap's kernel count (wire packets), tcpdump's "received by
    /// filter" (skbs, drops included).
    pub seen: u64,
    /// Packets written to the capture file.
    pub written: u64,
    /// Copies lost: podtap's dropped copies (in wire packets), tcpdump's "dropped by kernel".
    pub dropped: u64,
    /// Size of the capture file, in bytes.
    pub file_bytes: u64,
}

/// A tap that is capturing.
pub struct RunningTap {
    scenario: Scenario,
    process: Option<Spawned>,
    file: PathBuf,
}

impl RunningTap {
    /// Starts the tap of `scenario` on `target`, writing under `dir`, and returns once it
    /// captures. `agent_args` are passed to `podtap agent` as they are (e.g. `--gso keep`).
    pub fn start(
        scenario: Scenario,
        target: &TapTarget,
        dir: &Path,
        agent_args: &[String],
    ) -> anyhow::Result<RunningTap> {
        let file = dir.join(match scenario {
            Scenario::None => "none",
            Scenario::Podtap => "podtap.pcapng",
            Scenario::Tcpdump => "tcpdump.pcap",
        });
        let file_arg = file.to_string_lossy().into_owned();
        let process = match scenario {
            Scenario::None => {
                let hooks = target.hooks()?;
                if !hooks.is_empty() {
                    bail!(
                        "{} still has eBPF programs attached ({}): the baseline would be tapped",
                        target.veth,
                        hooks.join(", ")
                    );
                }
                None
            }
            Scenario::Podtap => {
                let mut cmd = std::process::Command::new(&target.podtap);
                cmd.arg("agent")
                    .arg("--inventory")
                    .arg(&target.inventory)
                    .args(["--pod", &target.pod, "-w", &file_arg]);
                cmd.args(agent_args);
                let mut agent = Spawned::start("podtap agent", cmd)?;
                agent.wait_for_output("tapping 1 pod(s)", READY)?;
                agent.wait_until(READY, "attaching to the veth", |_| {
                    Ok(!target.hooks()?.is_empty())
                })?;
                Some(agent)
            }
            Scenario::Tcpdump => {
                let cmd = in_netns(
                    &target.node_netns,
                    "tcpdump",
                    &["-i", &target.veth, "-s", "0", "-w", &file_arg],
                );
                let mut tcpdump = Spawned::start("tcpdump", cmd)?;
                tcpdump.wait_for_output("listening on", READY)?;
                Some(tcpdump)
            }
        };
        Ok(RunningTap {
            scenario,
            process,
            file,
        })
    }

    /// The tap's process id (none for the baseline).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Spawned::pid)
    }

    /// Stops the tap (SIGTERM), reads its summary and deletes its capture file.
    pub fn stop(self) -> anyhow::Result<TapSummary> {
        let Some(process) = self.process else {
            return Ok(TapSummary::default());
        };
        let done = process.terminate(STOP)?;
        let file_bytes = std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&self.file);
        let summary = match self.scenario {
            Scenario::None => TapSummary::default(),
            Scenario::Podtap => {
                if !done.status.success() {
                    bail!("podtap agent failed: {}\n{}", done.status, done.stderr);
                }
                parse_podtap_summary(&done.stdout).with_context(|| {
                    format!("reading the podtap agent's summary:\n{}", done.stdout)
                })?
            }
            Scenario::Tcpdump => parse_tcpdump_summary(&done.stderr)
                .with_context(|| format!("reading tcpdump's summary:\n{}", done.stderr))?,
        };
        Ok(TapSummary {
            file_bytes,
            ..summary
        })
    }
}

/// The first number after `prefix` on a line starting with it.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The number in front of `suffix` on a line ending with it.
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_suffix(suffix))
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|n| n.parse().ok())
}

/// Reads the per-direction rows (PACKETS is the 5th column), `copies dropped: N (...)` and
/// `wrote N packet(s) ...` from podtap's summary.
fn parse_podtap_summary(stdout: &str) -> anyhow::Result<TapSummary> {
    let seen = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() >= 5 && matches!(cols[3], "from-pod" | "to-pod"))
        .map(|cols| {
            cols[4]
                .parse::<u64>()
                .context("a PACKETS column that is not a number")
        })
        .sum::<anyhow::Result<u64>>()?;
    Ok(TapSummary {
        seen,
        dropped: number_after(stdout, "copies dropped:").context("no `copies dropped:` line")?,
        written: number_after(stdout, "wrote").context("no `wrote N packet(s)` line")?,
        file_bytes: 0,
    })
}

/// Reads `N packets captured` and `N packets dropped by kernel` from tcpdump's stderr.
fn parse_tcpdump_summary(stderr: &str) -> anyhow::Result<TapSummary> {
    Ok(TapSummary {
        seen: number_before(stderr, "packets received by filter")
            .context("no `packets received by filter`")?,
        written: number_before(stderr, "packets captured").context("no `packets captured`")?,
        dropped: number_before(stderr, "packets dropped by kernel")
            .context("no `packets dropped by kernel`")?,
        file_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_podtap_summary() {
        let out = "podtap: tapped 1 pod(s) on 2 node(s) for 3.1 s (attach: tcx)\n\
            POD NODE VETH DIR PACKETS BYTES WRITTEN DROPPED FILTERED CUT\n\
            shop/frontend-1 node-1 cali1 from-pod 10 1000 10 0 0 0\n\
            shop/frontend-1 node-1 cali1 to-pod 1300 1000 1234 42 0 0\n\
            copies dropped: 42 (ring full 42, unreadable 0); malformed records 0, records of unknown veths 0\n\
            wrote 1244 packet(s) to /tmp/x.pcapng\n";
        let s = parse_podtap_summary(out).unwrap();
        assert_eq!((s.seen, s.dropped, s.written), (1310, 42, 1244));
        assert!(parse_podtap_summary("nothing").is_err());
    }

    #[test]
    fn reads_tcpdump_summary() {
        let err = "tcpdump: listening on cali1, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
            1000 packets captured\n1200 packets received by filter\n200 packets dropped by kernel\n";
        let s = parse_tcpdump_summary(err).unwrap();
        assert_eq!((s.seen, s.written, s.dropped), (1200, 1000, 200));
    }
}
