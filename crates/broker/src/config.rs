//! The broker's configuration: where it listens, and one pipeline per policy. Read from YAML,
//! validated up front with every problem reported at once (nothing runs from a config with a
//! problem), and compared policy by policy on reload so unchanged policies keep running.
//!
//! ```yaml
//! listen:
//!   address: 0.0.0.0
//!   vxlan_port: 4789
//!   gre: true
//! inventory: /run/podtap/labs/lab/inventory.json   # tap id -> pod, for labels
//! policies:
//!   - name: shop
//!     vni: 100            # VXLAN VNI of this policy's copies
//!     gre_key: 100        # high 16 bits of the GRE key of this policy's copies
//!     stages:
//!       - type: filter
//!         expression: "tcp port 8080"
//!       - type: dedupe
//!         window_ms: 50
//!     outputs:
//!       - type: pcap
//!         directory: /var/lib/podtap/shop
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::OutputConfig;
use crate::pipeline::{Pipeline, StageConfig};

/// The largest VXLAN network identifier.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("broker config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not fit the schema (unknown field, wrong type, ...).
    #[error("broker config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The configuration parsed but is not valid; every problem is listed.
    #[error("broker config {path} is invalid:\n  {}", problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where tunnels from agents arrive.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Inventory file that maps tap ids to pods, to label outputs (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<PathBuf>,
    /// One pipeline per policy.
    pub policies: Vec<PolicyConfig>,
}

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to bind (default: all).
    #[serde(default = "default_address")]
    pub address: IpAddr,
    /// UDP port for VXLAN (default 4789, the IANA port).
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// Receive L2GRE (IP protocol 47) too (default true).
    #[serde(default = "default_true")]
    pub gre: bool,
    /// Serve Prometheus metrics here (optional), e.g. `127.0.0.1:9465`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: default_address(),
            vxlan_port: default_vxlan_port(),
            gre: true,
            metrics: None,
        }
    }
}

fn default_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn default_vxlan_port() -> u16 {
    4789
}
fn default_true() -> bool {
    true
}

/// One policy: which tunnel traffic belongs to it, what to do with it, where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name, unique among policies (labels metrics and files).
    pub name: String,
    /// VXLAN VNI of this policy's copies (1-16777215).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// L2GRE policy key: the high 16 bits of the GRE key (the low 16 carry tap id and direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gre_key: Option<u16>,
    /// Stages, in order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Outputs; every packet the stages keep goes to each.
    pub outputs: Vec<OutputConfig>,
}

impl BrokerConfig {
    /// Reads and validates a YAML configuration file.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<BrokerConfig, ConfigError> {
        let cfg: BrokerConfig =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut problems = cfg.problems();
        if cfg.policies.is_empty() {
            // A configuration file with nothing in it is a mistake; a broker driven by the
            // controller starts with no policy and gets them over the fabric.
            problems.insert(0, "policies: at least one policy is needed".to_string());
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Every problem in the configuration, each prefixed with where it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.vxlan_port == 0 {
            problems.push("listen.vxlan_port: 0 is not a port".to_string());
        }
        let mut names = BTreeSet::new();
        let mut vnis = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}] ({})", p.name);
            for m in p.problems() {
                problems.push(format!("{at}: {m}"));
            }
            if !names.insert(p.name.as_str()) {
                problems.push(format!(
                    "{at}: name {:?} is used by an earlier policy",
                    p.name
                ));
            }
            if let Some(v) = p.vni
                && !vnis.insert(v)
            {
                problems.push(format!("{at}: vni {v} is used by an earlier policy"));
            }
            if let Some(k) = p.gre_key
                && !keys.insert(k)
            {
                problems.push(format!("{at}: gre_key {k} is used by an earlier policy"));
            }
        }
        problems
    }
}

impl PolicyConfig {
    /// Every problem in this policy (without its place; [`BrokerConfig::problems`] adds it).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            problems.push(format!(
                "name {:?} must be 1-63 characters of a-z, 0-9 and '-'",
                self.name
            ));
        }
        if self.vni.is_none() && self.gre_key.is_none() {
            problems.push(
                "give a vni, a gre_key or both: otherwise no copy can reach this policy".into(),
            );
        }
        if let Some(v) = self.vni
            && (v == 0 || v > MAX_VNI)
        {
            problems.push(format!("vni {v} is not in 1..={MAX_VNI}"));
        }
        if self.outputs.is_empty() {
            problems.push("outputs: at least one output is needed".into());
        }
        if let Err(stage_problems) = Pipeline::build(&self.stages) {
            problems.extend(stage_problems);
        }
        for (i, o) in self.outputs.iter().enumerate() {
            for m in o.problems() {
                problems.push(format!("outputs[{i}] ({}): {m}", o.kind()));
            }
        }
        problems
    }
}
