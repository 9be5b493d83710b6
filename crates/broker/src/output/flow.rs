//! The `flow` output (placeholder; being written).

use serde::{Deserialize, Serialize};

/// Configuration of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlowExportConfig {}

impl FlowExportConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}
