//! The `mask` stage: overwrites byte ranges and regular-expression matches with a fill byte, so
//! secrets (credentials, cookies, personal data) never reach an output.
//!
//! ```yaml
//! - type: mask
//!   fill: 0x00                 # the byte written (default 0)
//!   ranges:
//!     - { offset: 0, length: 16, from: payload }   # from: frame (default) | ip | transport | payload
//!     - { offset: 6, length: 6 }                   # the source MAC
//!   patterns:
//!     - "(?i)authorization: [^\r\n]*"
//!     - "(?i)cookie: [^\r\n]*"
//! ```
//!
//! A range starts `offset` bytes after the start of the frame, of the IP header, of the
//! transport header or of the transport payload (as found by [`Layers`]) and is clipped at the
//! end of the packet. A range whose start layer the packet does not have (`ip` on ARP,
//! `transport` on a later IP fragment, `payload` on a non-IP frame) masks nothing in it.
//!
//! Patterns use the syntax of the `regex` crate and are compiled once. They match bytes, not
//! text: `.` and negated classes such as `[^\r\n]` match any byte, and `(?i)` is ASCII-only
//! (Unicode mode is off unless a pattern turns it on with `(?u)`). They are searched in the
//! transport payload of IP packets (up to the IP packet's end; for other IP protocols and later
//! fragments, everything after the IP headers), each pattern over the packet as it arrived, so
//! one pattern's mask cannot hide another's match. A secret split across two packets is not
//! matched: each packet is searched on its own.
//!
//! Checksums are not recomputed: tools that check them will flag masked packets.
//!
//! Drop reasons: none (a mask never drops).

use std::fmt;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, Span};
use serde::{Deserialize, Serialize};

use super::Verdict;
use super::layers::Layers;
use crate::packet::Packet;

/// Configuration of the `mask` stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Byte ranges to overwrite, each `{ offset, length, from }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<MaskRange>,
    /// Regular expressions (`regex` crate syntax, matching bytes) whose matches in the transport
    /// payload are overwritten, e.g. `(?i)authorization: [^\r\n]*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// The byte written over what is masked (0-255, default 0).
    #[serde(default)]
    pub fill: u8,
}

/// A byte range to overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRange {
    /// Where the range starts, in bytes after the start of `from`.
    pub offset: usize,
    /// How many bytes (at least 1); clipped at the end of the packet.
    pub length: usize,
    /// What `offset` counts from: `frame` (default), `ip` (the IP header), `transport` (the
    /// transport header) or `payload` (the transport payload).
    #[serde(default)]
    pub from: MaskFrom,
}

/// What a mask range's offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskFrom {
    /// The first byte of the frame.
    #[default]
    Frame,
    /// The first byte of the IP header.
    Ip,
    /// The first byte of the transport header.
    Transport,
    /// The first byte of the transport payload.
    Payload,
}

/// The largest `length` of a range that is not the whole packet anyway.
pub const MAX_RANGE_END: usize = 65535;

impl MaskConfig {
    /// Every problem with these settings (the regex error for a bad pattern).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.ranges.is_empty() && self.patterns.is_empty() {
            problems.push("nothing to mask: give ranges, patterns or both".into());
        }
        for (i, r) in self.ranges.iter().enumerate() {
            if r.length == 0 {
                problems.push(format!("ranges[{i}]: length 0 masks nothing"));
            }
            if r.offset > MAX_RANGE_END {
                problems.push(format!(
                    "ranges[{i}]: offset {} is past the end of any frame",
                    r.offset
                ));
            }
        }
        for (i, p) in self.patterns.iter().enumerate() {
            match compile_pattern(p) {
                Ok(re) => {
                    if re.search(&Input::new(b"")).is_some() {
                        problems.push(format!(
                            "patterns[{i}] {p:?} matches empty text: it masks nothing there and \
                             slows every packet (use + rather than *?)"
                        ));
                    }
                }
                Err(m) => problems.push(format!("patterns[{i}] {p:?}: {m}")),
            }
        }
        problems
    }
}

/// Compiles a pattern for bytes: Unicode off unless asked for, any byte matched.
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    meta::Builder::new()
        .configure(meta::Config::new().utf8_empty(false))
        .syntax(syntax::Config::new().utf8(false).unicode(false))
        .build(pattern)
        .map_err(|e| {
            if let Some(limit) = e.size_limit() {
                return format!("compiles to more than {limit} bytes");
            }
            let text = match e.syntax_error() {
                Some(s) => s.to_string(),
                None => e.to_string(),
            };
            // regex-syntax draws the pattern with a caret; keep its one-line explanation.
            match text.lines().find_map(|l| l.strip_prefix("error: ")) {
                Some(line) => line.to_string(),
                None => text.replace('\n', " "),
            }
        })
}

/// The running `mask` stage.
pub struct Mask {
    ranges: Vec<MaskRange>,
    /// Each pattern with its own search cache (no shared pool: no lock per packet).
    patterns: Vec<(String, Regex, meta::Cache)>,
    fill: u8,
    /// Pattern matches of the current packet (absolute ranges), reused.
    matches: Vec<(usize, usize)>,
    needs_layers: bool,
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mask")
            .field("ranges", &self.ranges)
            .field(
                "patterns",
                &self.patterns.iter().map(|p| &p.0).collect::<Vec<_>>(),
            )
            .field("fill", &self.fill)
            .finish()
    }
}

impl Mask {
    /// Builds the stage: compiles the patterns.
    pub fn new(cfg: &MaskConfig) -> Result<Self, String> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut patterns = Vec::with_capacity(cfg.patterns.len());
        for p in &cfg.patterns {
            let re = compile_pattern(p)?;
            let cache = re.create_cache();
            patterns.push((p.clone(), re, cache));
        }
        Ok(Mask {
            ranges: cfg.ranges.clone(),
            needs_layers: !patterns.is_empty()
                || cfg.ranges.iter().any(|r| r.from != MaskFrom::Frame),
            patterns,
            fill: cfg.fill,
            matches: Vec::with_capacity(64),
        })
    }

    /// Overwrites the ranges and pattern matches; always keeps the packet.
    pub fn process(&mut self, pkt: &mut Packet) -> Verdict {
        let layers = if self.needs_layers {
            Layers::parse(&pkt.data)
        } else {
            Layers::default()
        };
        self.matches.clear();
        if let Some(start) = layers.payload
            && let Some(hay) = pkt.data.get(start..layers.end)
        {
            for (_, re, cache) in &mut self.patterns {
                let mut at = 0;
                while at <= hay.len() {
                    let input = Input::new(hay).span(Span::from(at..hay.len()));
                    let Some(m) = re.search_with(cache, &input) else {
                        break;
                    };
                    if m.is_empty() {
                        at = m.end() + 1;
                    } else {
                        self.matches.push((start + m.start(), start + m.end()));
                        at = m.end();
                    }
                }
            }
        }
        let len = pkt.data.len();
        for r in &self.ranges {
            let base = match r.from {
                MaskFrom::Frame => Some(0),
                MaskFrom::Ip if layers.ip_version != 0 => layers.network,
                MaskFrom::Ip => None,
                MaskFrom::Transport => layers.transport,
                MaskFrom::Payload => layers.payload,
            };
            if let Some(base) = base {
                let start = base.saturating_add(r.offset).min(len);
                let end = start.saturating_add(r.length).min(len);
                if start < end {
                    pkt.data.to_mut()[start..end].fill(self.fill);
                }
            }
        }
        for &(start, end) in &self.matches {
            if let Some(bytes) = pkt.data.to_mut().get_mut(start..end) {
                bytes.fill(self.fill);
            }
        }
        Verdict::Keep
    }
}
