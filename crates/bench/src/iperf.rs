//! iperf3 between two lab pods: a one-off server in the receiver's netns and a JSON client in
//! the sender's, with the numbers the benchmarks use read from the client's report.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::child::{Spawned, in_netns};

/// The iperf3 port inside the receiver pod.
const PORT: &str = "5201";
/// Longest wait for the server to listen.
const SERVER_READY: Duration = Duration::from_secs(5);
/// Time a client may take beyond its test duration (connect, UDP wrap-up, report).
const CLIENT_GRACE: Duration = Duration::from_secs(20);

/// What iperf3 sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One TCP stream, as fast as it goes.
    Tcp,
    /// UDP datagrams of `payload` bytes, unpaced (`-b 0`).
    UdpFlood { payload: usize },
}

impl Workload {
    /// Short name for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Tcp => "tcp",
            Workload::UdpFlood { .. } => "udp",
        }
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct IperfResult {
    /// Test duration the client reports, in seconds.
    pub seconds: f64,
    /// Payload bytes the server received.
    pub received_bytes: f64,
    /// Datagrams sent (UDP only).
    pub sent_packets: f64,
    /// Datagrams the server received (UDP only: sent minus lost).
    pub received_packets: f64,
}

impl IperfResult {
    /// Received payload bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.received_bytes * 8.0 / self.seconds
    }

    /// Received datagrams per second.
    pub fn received_pps(&self) -> f64 {
        self.received_packets / self.seconds
    }

    /// Sent datagrams per second.
    pub fn sent_pps(&self) -> f64 {
        self.sent_packets / self.seconds
    }
}

/// A one-off iperf3 server (`-s -1`) listening in a pod's netns.
pub struct IperfServer(Spawned);

impl IperfServer {
    /// Starts the server on `ip` in `netns` and waits until it listens.
    pub fn start(netns: &str, ip: &str) -> anyhow::Result<IperfServer> {
        let cmd = in_netns(
            netns,
            "iperf3",
            &["-s", "-1", "-B", ip, "-p", PORT, "--forceflush"],
        );
        let mut server = Spawned::start("iperf3 server", cmd)?;
        server.wait_for_output("Server listening", SERVER_READY)?;
        Ok(IperfServer(server))
    }

    /// Waits for the server to exit after its one test (killing it if it does not).
    pub fn finish(self) -> anyhow::Result<()> {
        let done = self.0.finish(Duration::from_secs(5))?;
        if !done.status.success() {
            bail!("iperf3 server failed: {}\n{}", done.status, done.stderr);
        }
        Ok(())
    }
}

/// Starts an iperf3 client in `netns` against `server_ip`, for `seconds`.
pub fn start_client(
    netns: &str,
    server_ip: &str,
    workload: Workload,
    seconds: u32,
) -> anyhow::Result<Spawned> {
    let seconds = seconds.to_string();
    let mut args = vec![
        "-c",
        server_ip,
        "-p",
        PORT,
        "-t",
        &seconds,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    let payload;
    if let Workload::UdpFlood { payload: p } = workload {
        payload = p.to_string();
        args.extend(["-u", "-b", "0", "-l", &payload]);
    }
    Spawned::start("iperf3 client", in_netns(netns, "iperf3", &args))
}

/// Waits for a client started by [`start_client`] and reads its report.
pub fn finish_client(
    client: Spawned,
    workload: Workload,
    seconds: u32,
) -> anyhow::Result<IperfResult> {
    let done = client.finish(Duration::from_secs(u64::from(seconds)) + CLIENT_GRACE)?;
    let report: Value = serde_json::from_str(&done.stdout).with_context(|| {
        format!(
            "iperf3 client printed no JSON report ({}): {}",
            done.status, done.stderr
        )
    })?;
    if let Some(e) = report.get("error").and_then(Value::as_str) {
        bail!("iperf3 client: {e}");
    }
    if !done.status.success() {
        bail!("iperf3 client failed: {}\n{}", done.status, done.stderr);
    }
    parse_report(&report, workload)
}

/// Reads the numbers of an iperf3 client's JSON report.
fn parse_report(report: &Value, workload: Workload) -> anyhow::Result<IperfResult> {
    let number = |pointer: &str| -> anyhow::Result<f64> {
        report
            .pointer(pointer)
            .and_then(Value::as_f64)
            .with_context(|| format!("iperf3 report has no number at {pointer}"))
    };
    let seconds = number("/end/sum_received/seconds")?;
    if seconds <= 0.0 {
        bail!("iperf3 report says the test took {seconds} s");
    }
    let received_bytes = number("/end/sum_received/bytes")?;
    let (sent_packets, received_packets) = match workload {
        Workload::Tcp => (0.0, 0.0),
        Workload::UdpFlood { .. } => {
            let sent = number("/end/sum_received/packets")?;
            let lost = number("/end/sum_received/lost_packets")?;
            (sent, (sent - lost).max(0.0))
        }
    };
    Ok(IperfResult {
        seconds,
        received_bytes,
        sent_packets,
        received_packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcp_and_udp_reports() {
        let tcp = serde_json::json!({"end": {"sum_received": {
            "seconds": 2.0, "bytes": 1_000_000_000.0, "bits_per_second": 4e9}}});
        let r = parse_report(&tcp, Workload::Tcp).unwrap();
        assert_eq!(r.bits_per_second(), 4e9);

        let udp = serde_json::json!({"end": {"sum_received": {
            "seconds": 1.0, "bytes": 1_875_434, "packets": 310_060, "lost_packets": 224_813}}});
        let r = parse_report(&udp, Workload::UdpFlood { payload: 22 }).unwrap();
        assert_eq!(r.received_pps(), 85_247.0);
        assert_eq!(r.sent_pps(), 310_060.0);

        assert!(parse_report(&serde_json::json!({}), Workload::Tcp).is_err());
    }
}
