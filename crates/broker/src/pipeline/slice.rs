//! The `slice` stage (placeholder; being written).

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::packet::Packet;

/// Configuration of the `slice` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SliceConfig {}

impl SliceConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running `slice` stage.
#[derive(Debug)]
pub struct Slice {}

impl Slice {
    /// Builds the stage.
    pub fn new(_cfg: &SliceConfig) -> Result<Self, String> {
        Ok(Slice {})
    }

    /// Processes one packet.
    pub fn process(&mut self, _pkt: &mut Packet) -> Verdict {
        Verdict::Keep
    }
}
