//! Finding a pod's host-side veth from its IP, with nothing CNI-specific: the node's route to
//! the IP leaves either through the pod's veth (routed CNIs: Calico, Cilium) or through a
//! bridge (Flannel and other bridge CNIs), and then the neighbour table gives the pod's MAC and
//! the bridge's forwarding table the port it was learned on.
//!
//! A route through a gateway means the IP is not on this node. Cilium with BPF host routing
//! has no per-pod route or bridge to follow; it is not covered yet.
//!
//! Read with `ip -j` and `bridge -j` (iproute2), as the tunnel device is made.

use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use podtap_cluster::netns;
use serde_json::Value;

/// How long a silent pod gets to answer the neighbour probe.
const PROBE_WAIT: Duration = Duration::from_millis(300);

/// Finds the host-side veth of the pod with address `ip` in the node's network namespace
/// (`netns`; None: this one). `Err` says what was found instead.
pub fn find_veth(netns: Option<&str>, ip: IpAddr) -> Result<String, String> {
    let route = json(netns, "ip", &["-j", "route", "get", &ip.to_string()])?;
    let route = route.get(0).ok_or_else(|| format!("no route to {ip}"))?;
    if route.get("type").and_then(Value::as_str) == Some("local") {
        return Err(format!("{ip} is an address of the node itself"));
    }
    let dev = route
        .get("dev")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the route to {ip} has no device"))?
        .to_string();
    // A pod of this node is reached on-link; a gateway means another node (or the outside).
    if let Some(gw) = route.get("gateway").and_then(Value::as_str) {
        return Err(format!(
            "the route to {ip} goes via {gw} on {dev}, not to a pod's veth or bridge: is the pod on this node?"
        ));
    }
    match link_kind(netns, &dev)?.as_str() {
        "veth" => Ok(dev),
        "bridge" => match bridge_port(netns, &dev, ip) {
            Ok(port) => Ok(port),
            Err(_) => {
                // The pod was silent: its neighbour entry or the bridge's MAC entry is missing
                // or aged out. One datagram to the discard port makes the node resolve it and
                // the pod's reply teaches the bridge its port.
                probe(netns, ip);
                let mut last = String::new();
                for _ in 0..6 {
                    std::thread::sleep(PROBE_WAIT / 6);
                    match bridge_port(netns, &dev, ip) {
                        Ok(port) => return Ok(port),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        },
        other => Err(format!(
            "the route to {ip} leaves through {dev} ({}), not a pod's veth or bridge: is the pod on this node?",
            if other.is_empty() { "a device" } else { other }
        )),
    }
}

/// The kind of a link (`veth`, `bridge`, `vxlan`, ...; empty for plain devices).
fn link_kind(netns: Option<&str>, dev: &str) -> Result<String, String> {
    let link = json(netns, "ip", &["-j", "-d", "link", "show", "dev", dev])?;
    Ok(link
        .get(0)
        .and_then(|l| l.pointer("/linkinfo/info_kind"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// The veth on `bridge` behind which `ip`'s MAC address was learned.
fn bridge_port(netns: Option<&str>, bridge: &str, ip: IpAddr) -> Result<String, String> {
    let neigh = json(
        netns,
        "ip",
        &["-j", "neigh", "show", "to", &ip.to_string(), "dev", bridge],
    )?;
    let mac = neigh
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            !n.get("state")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|v| v == "FAILED" || v == "INCOMPLETE"))
        })
        .find_map(|n| n.get("lladdr").and_then(Value::as_str))
        .ok_or_else(|| format!("no neighbour entry for {ip} on {bridge}"))?
        .to_ascii_lowercase();
    let fdb = json(netns, "bridge", &["-j", "fdb", "show", "br", bridge])?;
    let port = fdb
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("mac")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                == Some(mac.clone())
        })
        .filter_map(|e| e.get("ifname").and_then(Value::as_str))
        .find(|ifname| *ifname != bridge)
        .ok_or_else(|| format!("{bridge} has not learned {ip}'s address {mac} on any port"))?;
    match link_kind(netns, port)?.as_str() {
        "veth" => Ok(port.to_string()),
        kind => Err(format!(
            "{ip}'s address {mac} is behind {port} ({kind}) on {bridge}, not a pod's veth"
        )),
    }
}

/// Sends one empty datagram to `ip`'s discard port from the node.
fn probe(netns: Option<&str>, ip: IpAddr) {
    let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let _ = netns::run_in(netns, || {
        UdpSocket::bind(bind).and_then(|s| s.send_to(&[], (ip, 9)))
    });
}

/// Runs an iproute2 command with `-j` in the namespace and parses its JSON (empty output is
/// an empty list).
fn json(netns: Option<&str>, program: &str, args: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new(program);
    if let Some(n) = netns {
        cmd.args(["-n", n]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{program} {}: unexpected output: {e}", args.join(" ")))
}
