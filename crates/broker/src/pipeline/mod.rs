//! Per-policy pipelines: the stages a copy goes through before the outputs. Each stage is a
//! typed configuration (what the YAML says) paired with a runtime type (what runs per packet);
//! the closed [`StageConfig`] enum is the list of stages. Transforms are verbs.

pub mod dedupe;
pub mod filter;
pub mod layers;
pub mod mask;
pub mod sample;
pub mod slice;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::packet::Packet;

/// What a stage decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on.
    Keep,
    /// Drop it, for this reason (a short snake_case word, used as a metrics label).
    Drop(&'static str),
}

/// One stage's configuration; the YAML key `type` names the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageConfig {
    /// Keep (or drop) packets that match L2-L4 fields and/or a tcpdump expression.
    Filter(filter::FilterConfig),
    /// Drop copies of a packet already seen within a time window (the same packet tapped twice).
    Dedupe(dedupe::DedupeConfig),
    /// Keep only the first bytes of each packet.
    Slice(slice::SliceConfig),
    /// Overwrite byte ranges or regex matches with a fill byte.
    Mask(mask::MaskConfig),
    /// Keep 1 in N packets or flows, and/or at most a rate.
    Sample(sample::SampleConfig),
}

impl StageConfig {
    /// The stage's name as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Filter(_) => "filter",
            StageConfig::Dedupe(_) => "dedupe",
            StageConfig::Slice(_) => "slice",
            StageConfig::Mask(_) => "mask",
            StageConfig::Sample(_) => "sample",
        }
    }

    /// Every problem with the stage's settings.
    pub fn problems(&self) -> Vec<String> {
        match self {
            StageConfig::Filter(c) => c.problems(),
            StageConfig::Dedupe(c) => c.problems(),
            StageConfig::Slice(c) => c.problems(),
            StageConfig::Mask(c) => c.problems(),
            StageConfig::Sample(c) => c.problems(),
        }
    }

    /// Builds the runtime stage (after [`problems`](Self::problems) came back empty).
    pub fn build(&self) -> Result<Stage, String> {
        Ok(match self {
            StageConfig::Filter(c) => Stage::Filter(filter::Filter::new(c)?),
            StageConfig::Dedupe(c) => Stage::Dedupe(dedupe::Dedupe::new(c)?),
            StageConfig::Slice(c) => Stage::Slice(slice::Slice::new(c)?),
            StageConfig::Mask(c) => Stage::Mask(mask::Mask::new(c)?),
            StageConfig::Sample(c) => Stage::Sample(sample::Sample::new(c)?),
        })
    }
}

/// A running stage.
#[derive(Debug)]
pub enum Stage {
    /// See [`filter::Filter`].
    Filter(filter::Filter),
    /// See [`dedupe::Dedupe`].
    Dedupe(dedupe::Dedupe),
    /// See [`slice::Slice`].
    Slice(slice::Slice),
    /// See [`mask::Mask`].
    Mask(mask::Mask),
    /// See [`sample::Sample`].
    Sample(sample::Sample),
}

impl Stage {
    /// Runs the stage on one packet.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        match self {
            Stage::Filter(s) => s.process(pkt),
            Stage::Dedupe(s) => s.process(pkt),
            Stage::Slice(s) => s.process(pkt),
            Stage::Mask(s) => s.process(pkt),
            Stage::Sample(s) => s.process(pkt),
        }
    }
}

/// What one stage counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounters {
    /// The stage's `type`.
    pub kind: &'static str,
    /// Packets that reached the stage.
    pub received: u64,
    /// Packets it passed on.
    pub kept: u64,
    /// Packets it dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// The stages of one policy, in order, with their counters.
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<(Stage, StageCounters)>,
}

impl Pipeline {
    /// Builds the stages; every problem of every stage is reported, prefixed with its place
    /// (`stages[2] (dedupe): ...`).
    pub fn build(configs: &[StageConfig]) -> Result<Pipeline, Vec<String>> {
        let mut problems = Vec::new();
        let mut stages = Vec::new();
        for (i, cfg) in configs.iter().enumerate() {
            let at = format!("stages[{i}] ({})", cfg.kind());
            let p = cfg.problems();
            if !p.is_empty() {
                problems.extend(p.into_iter().map(|m| format!("{at}: {m}")));
                continue;
            }
            match cfg.build() {
                Ok(stage) => stages.push((
                    stage,
                    StageCounters {
                        kind: cfg.kind(),
                        ..Default::default()
                    },
                )),
                Err(m) => problems.push(format!("{at}: {m}")),
            }
        }
        if problems.is_empty() {
            Ok(Pipeline { stages })
        } else {
            Err(problems)
        }
    }

    /// Runs a packet through every stage. Returns false when a stage dropped it.
    pub fn run(&mut self, pkt: &mut Packet) -> bool {
        for (stage, counters) in &mut self.stages {
            counters.received += 1;
            match stage.process(pkt) {
                Verdict::Keep => counters.kept += 1,
                Verdict::Drop(reason) => {
                    *counters.dropped.entry(reason).or_default() += 1;
                    return false;
                }
            }
        }
        true
    }

    /// The counters of every stage, in order.
    pub fn counters(&self) -> impl Iterator<Item = &StageCounters> {
        self.stages.iter().map(|(_, c)| c)
    }
}
