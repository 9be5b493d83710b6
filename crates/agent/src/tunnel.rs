//! Sending copies to a broker: the tunnel settings, and the in-kernel path's VXLAN device on a
//! node. The device is podtap's own (named `ptvx<VNI>`, UDP port of the broker, GBP on, fixed
//! remote): the CNI's devices, ports, VNIs and routes are never used or touched.

use std::process::Command;

use podtap_cluster::netns;
use podtap_tunnel::{Oversize, TunnelEndpoint, TunnelKind};

/// How copies get into the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendMode {
    /// In the kernel where the node allows it (VXLAN, whole packets), else user space.
    #[default]
    Auto,
    /// Always from user space: copies go through the ring, the agent encapsulates and sends.
    UserSpace,
    /// In the kernel or not at all: the TC program clones packets to podtap's VXLAN device.
    Kernel,
}

impl std::str::FromStr for SendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SendMode::Auto),
            "user" | "user-space" => Ok(SendMode::UserSpace),
            "kernel" => Ok(SendMode::Kernel),
            _ => Err(format!(
                "unknown send mode {s:?} (auto, user-space or kernel)"
            )),
        }
    }
}

/// Where and how copies are sent to a broker.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The broker's tunnel endpoint.
    pub endpoint: TunnelEndpoint,
    /// The policy label: VNI for VXLAN (1-16777215), policy key for L2GRE (0-65535).
    pub policy: u32,
    /// What to do with copies that do not fit the path MTU once encapsulated.
    pub oversize: Oversize,
    /// In-kernel or user-space sending.
    pub mode: SendMode,
}

impl TunnelConfig {
    /// Every problem with the settings.
    pub fn problems(&self, snaplen: u32) -> Vec<String> {
        let mut p = Vec::new();
        match self.endpoint.kind {
            TunnelKind::Vxlan if self.policy == 0 || self.policy > podtap_wire::vxlan::MAX_VNI => p
                .push(format!(
                    "VNI {} is not in 1..={}",
                    self.policy,
                    podtap_wire::vxlan::MAX_VNI
                )),
            TunnelKind::L2gre if self.policy > u32::from(u16::MAX) => p.push(format!(
                "GRE policy key {} is not in 0..=65535",
                self.policy
            )),
            _ => {}
        }
        if self.mode == SendMode::Kernel {
            if self.endpoint.kind != TunnelKind::Vxlan {
                p.push(
                    "in-kernel sending is VXLAN only (the kernel here has no GRE devices)".into(),
                );
            }
            if snaplen < podtap_abi::MAX_COPY - 1 {
                p.push(
                    "in-kernel sending copies whole packets: it cannot honour a snap length".into(),
                );
            }
        }
        p
    }

    /// The tunnel endpoint as the tap program's exclusion: (address, protocol, port).
    pub fn exclusion(&self) -> Option<(std::net::Ipv4Addr, u8, u16)> {
        let std::net::IpAddr::V4(ip) = self.endpoint.addr.ip() else {
            return None;
        };
        Some(match self.endpoint.kind {
            TunnelKind::Vxlan => (ip, 17, self.endpoint.addr.port()),
            TunnelKind::L2gre => (ip, 47, 0),
        })
    }

    /// Name of podtap's VXLAN device for this policy.
    pub fn device_name(&self) -> String {
        format!("ptvx{}", self.policy)
    }
}

/// Creates podtap's VXLAN device in a node's namespace (replacing a stale one of the same name
/// left by a crashed agent) and returns its ifindex; `Err` says why it cannot be made.
pub fn create_device(node_netns: Option<&str>, cfg: &TunnelConfig) -> Result<u32, String> {
    let name = cfg.device_name();
    let remote = cfg.endpoint.addr.ip().to_string();
    let port = cfg.endpoint.addr.port().to_string();
    let vni = cfg.policy.to_string();
    let _ = ip(node_netns, &["link", "del", &name]);
    ip(
        node_netns,
        &[
            "link",
            "add",
            &name,
            "type",
            "vxlan",
            "id",
            &vni,
            "remote",
            &remote,
            "dstport",
            &port,
            "gbp",
            "nolearning",
            "noudpcsum",
        ],
    )?;
    // No IPv6 on the device: neighbour discovery would be noise in the tunnel.
    let _ = netns::run_in(node_netns, || {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1")
    });
    ip(node_netns, &["link", "set", &name, "mtu", "65000", "up"])
        .inspect_err(|_| delete_device(node_netns, cfg))?;
    netns::run_in(node_netns, || nix::net::if_::if_nametoindex(name.as_str()))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{name}: {e}"))
}

/// Deletes podtap's VXLAN device (if it is there).
pub fn delete_device(node_netns: Option<&str>, cfg: &TunnelConfig) {
    let _ = ip(node_netns, &["link", "del", &cfg.device_name()]);
}

fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(n) = netns {
        cmd.args(["-n", n]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
