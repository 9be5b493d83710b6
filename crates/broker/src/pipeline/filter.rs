//! The `filter` stage (placeholder; being written).

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::packet::Packet;

/// Configuration of the `filter` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {}

impl FilterConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running `filter` stage.
#[derive(Debug)]
pub struct Filter {}

impl Filter {
    /// Builds the stage.
    pub fn new(_cfg: &FilterConfig) -> Result<Self, String> {
        Ok(Filter {})
    }

    /// Processes one packet.
    pub fn process(&mut self, _pkt: &mut Packet) -> Verdict {
        Verdict::Keep
    }
}
