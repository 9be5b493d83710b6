//! `podtap calls`: read the call records and anomalies a broker's `calls` output stored
//! (SQLite, see docs/configuration.md): the last N, one edge's, by status, or the anomalies,
//! as a table or as JSON lines.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use podtap_l7::anomaly::Anomaly;
use podtap_l7::store::{CallStore, StoreConfig, StoredCall};

/// Flags of `podtap calls`.
#[derive(Debug, Args)]
pub struct CallsArgs {
    /// The store a `calls` output writes (its `store:` path).
    pub store: PathBuf,
    /// How many records to show, newest first.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub last: usize,
    /// Only calls from this client to this server (labels as stored: `namespace/workload`,
    /// or an address for endpoints outside the inventory).
    #[arg(long, num_args = 2, value_names = ["CLIENT", "SERVER"])]
    pub edge: Option<Vec<String>>,
    /// Only calls with a status in this range: `404`, `500-599` (HTTP status, DNS rcode).
    #[arg(long, value_parser = parse_statuses, conflicts_with = "edge")]
    pub status: Option<RangeInclusive<u32>>,
    /// Show the anomalies instead of calls.
    #[arg(long, conflicts_with_all = ["edge", "status"])]
    pub anomalies: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_statuses(s: &str) -> Result<RangeInclusive<u32>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("{t:?} is not a status number (want 404 or 500-599)"))
    };
    let range = match s.split_once('-') {
        Some((a, b)) => num(a)?..=num(b)?,
        None => num(s)?..=num(s)?,
    };
    if range.start() > range.end() {
        return Err(format!("empty range {s:?}"));
    }
    Ok(range)
}

/// Runs `podtap calls`.
pub fn run(args: CallsArgs) -> anyhow::Result<()> {
    // Opening creates a missing file: a query must not.
    if !args.store.is_file() {
        bail!(
            "no call store at {} (the `store:` path of a broker's calls output)",
            args.store.display()
        );
    }
    let store = CallStore::open(&args.store, StoreConfig::default())
        .with_context(|| format!("opening {}", args.store.display()))?;
    let mut out = std::io::stdout().lock();
    if args.anomalies {
        let anomalies = store.anomalies(args.last)?;
        if args.json {
            return json_lines(&mut out, &anomalies);
        }
        return anomaly_table(&mut out, &anomalies);
    }
    let calls = match (&args.edge, &args.status) {
        (Some(edge), _) => store.by_edge(&edge[0], &edge[1], args.last)?,
        (None, Some(statuses)) => store.by_status(statuses.clone(), args.last)?,
        (None, None) => store.last(args.last)?,
    };
    if args.json {
        return json_lines(&mut out, &calls);
    }
    call_table(&mut out, &calls)
}

fn json_lines<T: serde::Serialize>(out: &mut impl Write, items: &[T]) -> anyhow::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        writeln!(out)?;
    }
    Ok(())
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in nanoseconds.
fn clock(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

fn call_table(out: &mut impl Write, calls: &[StoredCall]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<12} {:<6} {:<24} {:<24} {:<7} {:<32} {:>6} {:>10}  OUTCOME",
        "TIME (UTC)", "PROTO", "CLIENT", "SERVER", "METHOD", "PATH", "STATUS", "LATENCY"
    )?;
    for c in calls {
        let status = match (c.grpc_status, c.status) {
            (Some(g), _) => format!("grpc {g}"),
            (None, Some(s)) => s.to_string(),
            (None, None) => "-".into(),
        };
        let latency = c
            .latency_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.2}ms"));
        let outcome = match &c.outcome_reason {
            Some(r) => format!("{} ({r})", c.outcome),
            None => c.outcome.clone(),
        };
        let proto = if c.decrypted {
            format!("{}*", c.protocol.as_str())
        } else {
            c.protocol.as_str().to_string()
        };
        writeln!(
            out,
            "{:<12} {:<6} {:<24} {:<24} {:<7} {:<32} {:>6} {:>10}  {outcome}",
            clock(c.time_ns),
            proto,
            c.client,
            c.server,
            c.method,
            c.path,
            status,
            latency
        )?;
    }
    if calls.iter().any(|c| c.decrypted) {
        writeln!(out, "(* seen in decrypted TLS plaintext)")?;
    }
    Ok(())
}

fn anomaly_table(out: &mut impl Write, anomalies: &[Anomaly]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<12} {:<16} {:<24} {:<24} {:<6} {:>10} {:>10} {:>10}",
        "TIME (UTC)", "KIND", "CLIENT", "SERVER", "PROTO", "OBSERVED", "BASELINE", "THRESHOLD"
    )?;
    for a in anomalies {
        let e = &a.evidence;
        writeln!(
            out,
            "{:<12} {:<16} {:<24} {:<24} {:<6} {:>10.3} {:>10.3} {:>10.3}",
            clock(a.at_ns),
            a.kind.as_str(),
            a.edge.client,
            a.edge.server,
            a.edge.protocol.as_str(),
            e.observed,
            e.baseline_mean,
            e.threshold
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_statuses("404"), Ok(404..=404));
        assert_eq!(parse_statuses("500-599"), Ok(500..=599));
        assert!(parse_statuses("5xx").unwrap_err().contains("not a status"));
        assert!(parse_statuses("599-500").unwrap_err().contains("empty"));
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        // 1970-01-02 01:02:03.456
        let ns = ((24 + 1) * 3600 + 2 * 60 + 3) * 1_000_000_000 + 456_000_000;
        assert_eq!(clock(ns), "01:02:03.456");
    }
}
