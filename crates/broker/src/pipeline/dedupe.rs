//! The `dedupe` stage (placeholder; being written).

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::packet::Packet;

/// Configuration of the `dedupe` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {}

impl DedupeConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running `dedupe` stage.
#[derive(Debug)]
pub struct Dedupe {}

impl Dedupe {
    /// Builds the stage.
    pub fn new(_cfg: &DedupeConfig) -> Result<Self, String> {
        Ok(Dedupe {})
    }

    /// Processes one packet.
    pub fn process(&mut self, _pkt: &mut Packet) -> Verdict {
        Verdict::Keep
    }
}
