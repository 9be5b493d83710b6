//! The `sample` stage (placeholder; being written).

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::packet::Packet;

/// Configuration of the `sample` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {}

impl SampleConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running `sample` stage.
#[derive(Debug)]
pub struct Sample {}

impl Sample {
    /// Builds the stage.
    pub fn new(_cfg: &SampleConfig) -> Result<Self, String> {
        Ok(Sample {})
    }

    /// Processes one packet.
    pub fn process(&mut self, _pkt: &mut Packet) -> Verdict {
        Verdict::Keep
    }
}
