//! Where a policy's packets leave the broker. Sinks are nouns: `pcap` files, a `vxlan` or
//! `l2gre` tool port, `netflow_v9` / `ipfix` export. Each is a typed configuration paired with a
//! runtime type; the closed [`OutputConfig`] enum is the list.

pub mod calls;
pub mod flow;
pub mod pcap;
pub mod tunnel;

use serde::{Deserialize, Serialize};

use crate::packet::Packet;

/// One output's configuration; the YAML key `type` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// pcapng files, rotated by size and time, with a retention limit.
    Pcap(pcap::PcapConfig),
    /// Re-tunnel to a tool over VXLAN.
    Vxlan(tunnel::VxlanOutputConfig),
    /// Re-tunnel to a tool over L2GRE.
    L2gre(tunnel::GreOutputConfig),
    /// NetFlow v9 export to a collector.
    NetflowV9(flow::FlowExportConfig),
    /// IPFIX export to a collector.
    Ipfix(flow::FlowExportConfig),
    /// L7 call records (HTTP/1.1, HTTP/2, gRPC, DNS), the service map and anomalies.
    Calls(calls::CallsConfig),
}

impl OutputConfig {
    /// The output's name as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            OutputConfig::Pcap(_) => "pcap",
            OutputConfig::Vxlan(_) => "vxlan",
            OutputConfig::L2gre(_) => "l2gre",
            OutputConfig::NetflowV9(_) => "netflow_v9",
            OutputConfig::Ipfix(_) => "ipfix",
            OutputConfig::Calls(_) => "calls",
        }
    }

    /// The files and directories the output writes to.
    pub fn paths_mut(&mut self) -> Vec<&mut std::path::PathBuf> {
        match self {
            OutputConfig::Pcap(c) => vec![&mut c.directory],
            OutputConfig::Calls(c) => c.store.iter_mut().chain(c.json.iter_mut()).collect(),
            OutputConfig::Vxlan(_)
            | OutputConfig::L2gre(_)
            | OutputConfig::NetflowV9(_)
            | OutputConfig::Ipfix(_) => Vec::new(),
        }
    }

    /// Every problem with the output's settings.
    pub fn problems(&self) -> Vec<String> {
        match self {
            OutputConfig::Pcap(c) => c.problems(),
            OutputConfig::Vxlan(c) => c.problems(),
            OutputConfig::L2gre(c) => c.problems(),
            OutputConfig::NetflowV9(c) | OutputConfig::Ipfix(c) => c.problems(),
            OutputConfig::Calls(c) => c.problems(),
        }
    }
}

/// What one output counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputCounters {
    /// The output's `type`.
    pub kind: &'static str,
    /// Packets handed to it.
    pub packets: u64,
    /// Their bytes (as captured).
    pub bytes: u64,
    /// Packets it could not deliver (write or send failures), by reason.
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    /// Output-specific figures (files written, flows exported, ...).
    pub extra: std::collections::BTreeMap<&'static str, u64>,
}

/// The packet plus what outputs need to label it.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// The packet.
    pub packet: &'a Packet<'a>,
    /// `namespace/pod` of its tap point, if known.
    pub pod: Option<&'a str>,
}
