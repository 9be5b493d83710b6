//! The `mask` stage (placeholder; being written).

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::packet::Packet;

/// Configuration of the `mask` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {}

impl MaskConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running `mask` stage.
#[derive(Debug)]
pub struct Mask {}

impl Mask {
    /// Builds the stage.
    pub fn new(_cfg: &MaskConfig) -> Result<Self, String> {
        Ok(Mask {})
    }

    /// Processes one packet.
    pub fn process(&mut self, _pkt: &mut Packet) -> Verdict {
        Verdict::Keep
    }
}
