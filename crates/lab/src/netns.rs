//! Network namespaces and the commands that configure them: the one place that runs `ip` and
//! `bridge`, enters a namespace (`in_netns`), writes per-namespace sysctls, reads link
//! counters, and sweeps namespaces by prefix.

use std::io;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::LabError;
use crate::naming::NETNS_PREFIX;

/// Where `ip netns` keeps its named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Runs `program args...` and returns its stdout; a failure carries the command line and stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "run");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip -n NETNS args...`.
pub(crate) fn ip(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `bridge -n NETNS args...`.
pub(crate) fn bridge(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("bridge", &all)
}

/// Whether a named network namespace exists (names that are not one path component never do).
pub fn netns_exists(netns: &str) -> bool {
    !(netns.is_empty() || netns.contains('/') || netns == "." || netns == "..")
        && podtap_cluster::netns::exists(netns)
}

/// Names of all named network namespaces (`ip netns list`), sorted.
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::state(Path::new(NETNS_DIR))(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(LabError::state(Path::new(NETNS_DIR)))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Creates a named network namespace.
pub(crate) fn add_netns(netns: &str) -> Result<(), LabError> {
    run("ip", &["netns", "add", netns]).map(drop)
}

/// Deletes a named network namespace; a namespace that is already gone is not an error.
pub(crate) fn del_netns(netns: &str) -> Result<(), LabError> {
    match run("ip", &["netns", "del", netns]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_exists(netns) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes every network namespace whose name starts with `prefix` (which must start with
/// `pt-`, the prefix podtap owns) and returns the names deleted. Interfaces inside go with
/// them, and so does the other end of every veth pair that had one end inside.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    if !prefix.starts_with(NETNS_PREFIX) {
        return Err(LabError::BadPrefix {
            prefix: prefix.to_string(),
        });
    }
    let mut removed = Vec::new();
    for name in list_netns()? {
        if name.starts_with(prefix) {
            del_netns(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Runs `f` on a thread inside the named network namespace and returns its result; sockets
/// created there stay in that namespace. (The lab's errors around `podtap_cluster::netns`.)
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    podtap_cluster::netns::run_in(Some(netns), f).map_err(LabError::from)
}

/// Writes sysctls inside a network namespace. Keys are paths under `/proc/sys`, e.g.
/// `net/ipv4/ip_forward` (slashes, because interface names like `flannel.1` contain dots).
pub(crate) fn set_sysctls(netns: &str, settings: &[(String, &str)]) -> Result<(), LabError> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let name = netns.to_string();
    in_netns(netns, move || {
        for (key, value) in settings {
            // /proc/sys/net shows the namespace of the thread that looks it up.
            std::fs::write(Path::new("/proc/sys").join(&key), value).map_err(|source| {
                LabError::Sysctl {
                    netns: name.clone(),
                    key: key.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    })?
}

/// Whether interface `dev` exists in network namespace `netns`.
pub fn link_exists(netns: &str, dev: &str) -> Result<bool, LabError> {
    match ip(netns, &["link", "show", "dev", dev]) {
        Ok(_) => Ok(true),
        Err(LabError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Packet and byte counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Reads the counters of interface `dev` in network namespace `netns` (`ip -s -j link show`).
pub fn link_stats(netns: &str, dev: &str) -> Result<LinkStats, LabError> {
    #[derive(Deserialize)]
    struct Link {
        stats64: Stats64,
    }
    #[derive(Deserialize)]
    struct Stats64 {
        rx: Counters,
        tx: Counters,
    }
    #[derive(Deserialize)]
    struct Counters {
        packets: u64,
        bytes: u64,
    }
    let out = ip(netns, &["-j", "-s", "link", "show", "dev", dev])?;
    let links: Vec<Link> =
        serde_json::from_str(&out).map_err(|source| LabError::CommandOutput {
            command: format!("ip -n {netns} -j -s link show dev {dev}"),
            source,
        })?;
    Ok(links
        .first()
        .map(|l| LinkStats {
            rx_packets: l.stats64.rx.packets,
            rx_bytes: l.stats64.rx.bytes,
            tx_packets: l.stats64.tx.packets,
            tx_bytes: l.stats64.tx.bytes,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_refuses_foreign_prefixes() {
        for bad in ["", "p", "cni-", "/"] {
            assert!(matches!(sweep_stale(bad), Err(LabError::BadPrefix { .. })));
        }
    }

    #[test]
    fn failed_commands_carry_command_line_and_stderr() {
        let err = ip("pt-no-such-netns-x", &["link", "show"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ip -n pt-no-such-netns-x link show"),
            "{text}"
        );
        assert!(matches!(err, LabError::Command { stderr, .. } if !stderr.is_empty()));
    }

    #[test]
    fn in_netns_refuses_paths() {
        assert!(in_netns("../x", || ()).is_err());
        assert!(in_netns("pt-no-such-netns-x", || ()).is_err());
    }
}
