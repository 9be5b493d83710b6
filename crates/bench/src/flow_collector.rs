//! A NetFlow v9 / IPFIX collector for the flow benchmarks: `nfcapd` as a child process on a
//! free loopback port, writing into a temporary directory, stopped with SIGTERM; its files
//! are then summed by `nfdump -R DIR -o csv` (the summary lines at the end of its output).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::child::Spawned;
use crate::measure;

/// Socket buffer asked of nfcapd: room for an exporter's end-of-file burst.
const SOCKET_BUFFER: &str = "8388608";
/// How long the last datagrams get to arrive before the collector is stopped.
const DRAIN: Duration = Duration::from_millis(300);

/// What the collector received, summed over every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowTotals {
    /// Flow records.
    pub flows: u64,
    /// Packets over all records.
    pub packets: u64,
    /// Bytes over all records.
    pub bytes: u64,
}

/// A running `nfcapd`.
pub struct FlowCollector {
    child: Spawned,
    port: u16,
    dir: tempfile::TempDir,
}

impl FlowCollector {
    /// Starts nfcapd on a free port of 127.0.0.1 and waits until it listens.
    pub fn start() -> anyhow::Result<FlowCollector> {
        let dir = tempfile::Builder::new()
            .prefix("podtap-bench-nfcapd")
            .tempdir()
            .context("a directory for nfcapd")?;
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .context("finding a free UDP port")?
            .port();
        let mut cmd = Command::new("nfcapd");
        cmd.arg("-w").arg(dir.path()).args([
            "-p",
            &port.to_string(),
            "-b",
            "127.0.0.1",
            "-B",
            SOCKET_BUFFER,
        ]);
        let mut child = Spawned::start("nfcapd", cmd)?;
        child.wait_for_output("Startup", Duration::from_secs(10))?;
        Ok(FlowCollector { child, port, dir })
    }

    /// Where exporters send.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Lets the last datagrams arrive, stops nfcapd and sums what it stored.
    pub fn finish(self) -> anyhow::Result<FlowTotals> {
        std::thread::sleep(DRAIN);
        let done = self.child.terminate(Duration::from_secs(10))?;
        if done.status.code().is_some_and(|c| c != 0) {
            bail!("nfcapd failed ({}):\n{}", done.status, done.stderr);
        }
        let mut cmd = Command::new("nfdump");
        cmd.arg("-R").arg(self.dir.path()).args(["-o", "csv"]);
        let out = measure::run("nfdump", cmd, Duration::from_secs(120))?.success()?;
        parse_summary(&out.stdout)
            .with_context(|| format!("nfdump printed no summary:\n{}", tail(&out.stdout)))
    }
}

/// Reads nfdump's CSV summary: a `Summary` line, a header (`flows,bytes,packets,...`), values.
fn parse_summary(csv: &str) -> Option<FlowTotals> {
    let mut lines = csv.lines().skip_while(|l| l.trim() != "Summary").skip(1);
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let values: Vec<&str> = lines.next()?.split(',').collect();
    let field = |name: &str| -> Option<u64> {
        let i = header.iter().position(|h| h.trim() == name)?;
        values.get(i)?.trim().parse().ok()
    };
    Some(FlowTotals {
        flows: field("flows")?,
        packets: field("packets")?,
        bytes: field("bytes")?,
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary() {
        let csv = "ts,te,td\n2026-01-01,2026-01-01,0.1\nSummary\nflows,bytes,packets,avg_bps,avg_pps,avg_bpp\n594,14674235,20000,23634765,4026,733\n";
        assert_eq!(
            parse_summary(csv),
            Some(FlowTotals {
                flows: 594,
                packets: 20000,
                bytes: 14674235
            })
        );
        assert_eq!(parse_summary("no summary"), None);
    }
}
