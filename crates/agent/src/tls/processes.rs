//! Which processes belong to which pod: a process is in a pod when it lives in the pod's network
//! namespace (every container of a pod shares it). Found by scanning `/proc`, which also says
//! when a process ended.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The network namespace inode of a named namespace (`/run/netns/NAME`, as `ip netns` and the
/// lab create them), or of a path to a namespace file.
pub fn netns_inode(name_or_path: &str) -> std::io::Result<u64> {
    let path = if name_or_path.starts_with('/') {
        Path::new(name_or_path).to_path_buf()
    } else {
        Path::new("/run/netns").join(name_or_path)
    };
    Ok(std::fs::metadata(path)?.ino())
}

/// Every process (not thread) by the inode of its network namespace. Processes that vanish or
/// cannot be read during the scan are skipped.
pub fn processes_by_netns() -> HashMap<u64, Vec<u32>> {
    let mut by_ns: HashMap<u64, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return by_ns;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            by_ns.entry(meta.ino()).or_default().push(pid);
        }
    }
    by_ns
}

/// Whether process `pid` has a TCP socket listening on `port` in its network namespace (then
/// it is the server of connections on that local port).
pub fn listens_on(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{t}"))
            .map(|s| listening_ports(&s).any(|p| p == port))
            .unwrap_or(false)
    })
}

/// Local ports in state LISTEN (0A) of a `/proc/net/tcp`-format table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1)?;
        let state = f.nth(1)?;
        if state != "0A" {
            return None;
        }
        let port = local.rsplit(':').next()?;
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_come_from_state_0a() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert_eq!(listening_ports(table).collect::<Vec<_>>(), vec![8080]);
    }

    #[test]
    fn a_child_is_found_in_our_namespace() {
        let ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let all = processes_by_netns();
        let _ = child.kill();
        let _ = child.wait();
        let ours = all.get(&ino).cloned().unwrap_or_default();
        assert!(ours.contains(&child.id()), "{ours:?}");
        assert!(
            !ours.contains(&std::process::id()),
            "the scanner skips itself"
        );
    }
}
