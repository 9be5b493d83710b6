//! The `pcap` output (placeholder; being written).

use serde::{Deserialize, Serialize};

/// Configuration of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PcapConfig {}

impl PcapConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}
