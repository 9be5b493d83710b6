//! The `vxlan` and `l2gre` outputs: re-tunnel kept packets to a tool (placeholder; being written).

use serde::{Deserialize, Serialize};

/// Configuration of a `vxlan` tool port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VxlanOutputConfig {}

impl VxlanOutputConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Configuration of an `l2gre` tool port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GreOutputConfig {}

impl GreOutputConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}
