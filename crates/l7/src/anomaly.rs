//! Anomaly detection on the service map's edges.
//!
//! It owns the per-edge baselines, learned online over fixed intervals (default 5 s): an
//! exponentially weighted mean and variance of the interval's p90 latency, error ratio and
//! request rate. Once a baseline has seen `warmup_intervals` intervals with traffic, an
//! interval whose value is above `mean + k * stddev` *and* above a minimum absolute change is an
//! anomaly. Anomalous intervals update the baseline only with a small weight, so a spike does
//! not teach the detector that spikes are normal, while a lasting shift is learned in time.
//!
//! It also owns what the detector has learned about the topology: which edges exist and which
//! ports each server answers on. After the learning period (the first `warmup_intervals`
//! intervals of the detector, or of a server first seen later) a new edge or a new server port
//! is reported once.
//!
//! Detection latency: a spike is reported when its interval closes, that is at the first
//! [`AnomalyDetector::observe`] or [`AnomalyDetector::advance`] at or after the interval's end,
//! so at most one interval (plus the caller's `advance` period) after the calls that caused it.
//! New edges and unexpected ports are reported on the call that shows them.
//!
//! Time is never read from the clock: calls count at [`finished_ns`] and `advance` takes
//! `now_ns`. A call that arrives after its interval closed counts in the open interval.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::call::CallRecord;
use crate::servicemap::{EdgeKey, LatencyHistogram, finished_ns};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Most examples kept in an anomaly's evidence.
pub const MAX_EXAMPLES: usize = 3;

/// How the detector learns and what it calls an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Length of one interval, in milliseconds (0 is read as 1).
    pub interval_ms: u64,
    /// Intervals with traffic a baseline needs before it judges; also the length of the
    /// learning period for edges and ports.
    pub warmup_intervals: u32,
    /// How many standard deviations above the mean an interval must be.
    pub k: f64,
    /// Weight of a normal interval in the exponentially weighted baselines.
    pub alpha: f64,
    /// Weight of an anomalous interval (small: spikes barely move the baseline).
    pub anomalous_alpha: f64,
    /// A latency spike's p90 must also be this fraction above the mean (0.5 = +50 %).
    pub min_latency_increase: f64,
    /// ... and this many milliseconds above it.
    pub min_latency_ms: f64,
    /// Fewest calls with a latency for an interval's p90 to count.
    pub min_latency_calls: u64,
    /// An error spike's ratio must also be this much above the mean (0.10 = 10 points).
    pub min_error_ratio_increase: f64,
    /// ... with at least this many failed calls in the interval.
    pub min_errors: u64,
    /// A rate spike's request rate must also be this many times the mean.
    pub min_rate_factor: f64,
    /// ... with at least this many more calls in the interval than the mean predicts.
    pub min_rate_calls: u64,
    /// Most edges with a baseline; calls of further edges are counted, not judged.
    pub max_edges: usize,
    /// Most ports remembered per server.
    pub max_ports: usize,
    /// Edges and servers idle longer than this (seconds) are forgotten (and new again if they
    /// come back).
    pub retention_secs: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            interval_ms: 5000,
            warmup_intervals: 6,
            k: 4.0,
            alpha: 0.1,
            anomalous_alpha: 0.01,
            min_latency_increase: 0.5,
            min_latency_ms: 5.0,
            min_latency_calls: 3,
            min_error_ratio_increase: 0.10,
            min_errors: 5,
            min_rate_factor: 2.0,
            min_rate_calls: 50,
            max_edges: 10_000,
            max_ports: 64,
            retention_secs: 24 * 3600,
        }
    }
}

/// What kind of anomaly was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The interval's p90 latency rose well above the edge's baseline.
    LatencySpike,
    /// The interval's error ratio rose well above the edge's baseline.
    ErrorSpike,
    /// The interval's request rate rose well above the edge's baseline.
    RateSpike,
    /// An edge never seen before, after the learning period.
    NewEdge,
    /// A server answered on a port it had not used while it was learned.
    UnexpectedPort,
}

impl AnomalyKind {
    /// The snake_case name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::LatencySpike => "latency_spike",
            AnomalyKind::ErrorSpike => "error_spike",
            AnomalyKind::RateSpike => "rate_spike",
            AnomalyKind::NewEdge => "new_edge",
            AnomalyKind::UnexpectedPort => "unexpected_port",
        }
    }

    /// The kind named `name` ([`AnomalyKind::as_str`]).
    pub fn from_name(name: &str) -> Option<AnomalyKind> {
        [
            AnomalyKind::LatencySpike,
            AnomalyKind::ErrorSpike,
            AnomalyKind::RateSpike,
            AnomalyKind::NewEdge,
            AnomalyKind::UnexpectedPort,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// What the numbers of an [`Evidence`] measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The interval's p90 latency, in milliseconds.
    LatencyP90Ms,
    /// Failed calls / calls in the interval.
    ErrorRatio,
    /// Calls per second in the interval.
    CallsPerSecond,
    /// The server port (for [`AnomalyKind::UnexpectedPort`]).
    Port,
    /// Calls seen (for [`AnomalyKind::NewEdge`]).
    Calls,
}

/// One call quoted as an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// HTTP method, DNS query type.
    pub method: String,
    /// Path, gRPC method path, DNS name.
    pub path: String,
    /// HTTP status or DNS response code.
    pub status: Option<u32>,
    /// gRPC status.
    pub grpc_status: Option<u32>,
    /// Latency in milliseconds, if the response was seen.
    pub latency_ms: Option<f64>,
}

impl Example {
    fn of(rec: &CallRecord) -> Example {
        Example {
            method: rec.call.method.clone(),
            path: rec.call.path.clone(),
            status: rec.call.status,
            grpc_status: rec.call.grpc.as_ref().and_then(|g| g.status),
            latency_ms: rec.call.latency_ns().map(ms),
        }
    }
}

/// The numbers behind an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What `observed`, `baseline_mean`, `baseline_stddev` and `threshold` measure.
    pub measure: Measure,
    /// The value seen.
    pub observed: f64,
    /// The baseline's mean before this interval (0 for new edges and ports).
    pub baseline_mean: f64,
    /// The baseline's standard deviation before this interval.
    pub baseline_stddev: f64,
    /// The value `observed` had to exceed: the largest of `mean + k * stddev` and the
    /// minimum absolute change.
    pub threshold: f64,
    /// Calls on the edge in the interval (1 for new edges and ports: the call that showed it).
    pub calls: u64,
    /// Failed calls among them.
    pub errors: u64,
    /// Ports the server was known to use (for [`AnomalyKind::UnexpectedPort`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_ports: Vec<u16>,
    /// Up to [`MAX_EXAMPLES`] calls: failed ones for error spikes, the slowest for latency
    /// spikes, the first ones otherwise.
    pub examples: Vec<Example>,
}

/// Something unusual on an edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// What was seen.
    pub kind: AnomalyKind,
    /// Where.
    pub edge: EdgeKey,
    /// When: the end of the interval for spikes, the call's time for new edges and ports.
    pub at_ns: u64,
    /// The numbers.
    pub evidence: Evidence,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS as f64
}

/// An exponentially weighted mean and variance. The first samples weigh `1/n` (a plain mean
/// and variance) until `1/n` falls below the configured weight.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    mean: f64,
    var: f64,
    samples: u32,
}

impl Baseline {
    /// Moves the baseline towards `x` with weight `a` (see [`alpha`]).
    fn update(&mut self, x: f64, a: f64) {
        self.samples = self.samples.saturating_add(1);
        let diff = x - self.mean;
        let step = a * diff;
        self.mean += step;
        self.var = (1.0 - a) * (self.var + diff * step);
    }

    fn stddev(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// What one edge did in the open interval.
#[derive(Debug, Clone, Default)]
struct Interval {
    calls: u64,
    errors: u64,
    latency: LatencyHistogram,
    first: Vec<Example>,
    failed: Vec<Example>,
    /// The slowest calls, slowest first, with their latency in ns.
    slowest: Vec<(u64, Example)>,
}

impl Interval {
    fn add(&mut self, rec: &CallRecord) {
        let is_error = rec.call.is_error();
        self.calls += 1;
        self.errors += u64::from(is_error);
        if self.first.len() < MAX_EXAMPLES {
            self.first.push(Example::of(rec));
        }
        if is_error && self.failed.len() < MAX_EXAMPLES {
            self.failed.push(Example::of(rec));
        }
        if let Some(latency) = rec.call.latency_ns() {
            self.latency.record(latency);
            let pos = self.slowest.partition_point(|(l, _)| *l >= latency);
            if pos < MAX_EXAMPLES {
                self.slowest.insert(pos, (latency, Example::of(rec)));
                self.slowest.truncate(MAX_EXAMPLES);
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct EdgeState {
    open: Interval,
    latency: Baseline,
    errors: Baseline,
    rate: Baseline,
    last_seen_ns: u64,
}

#[derive(Debug, Clone)]
struct ServerPorts {
    /// The first interval after this server's learning period.
    learned_at: u64,
    ports: BTreeSet<u16>,
    last_seen_ns: u64,
}

/// Learns each edge's normal latency, error ratio, request rate, and the topology, and
/// reports what departs from them.
#[derive(Debug, Clone)]
pub struct AnomalyDetector {
    config: AnomalyConfig,
    interval_ns: u64,
    /// The first interval the detector saw.
    started: Option<u64>,
    /// The open interval.
    current: u64,
    edges: foldhash::HashMap<EdgeKey, EdgeState>,
    servers: foldhash::HashMap<String, ServerPorts>,
    untracked: u64,
}

impl AnomalyDetector {
    /// A detector that has learned nothing yet.
    pub fn new(config: AnomalyConfig) -> AnomalyDetector {
        AnomalyDetector {
            interval_ns: config.interval_ms.max(1) * NS_PER_MS,
            config,
            started: None,
            current: 0,
            edges: foldhash::HashMap::default(),
            servers: foldhash::HashMap::default(),
            untracked: 0,
        }
    }

    /// Counts one call; closes the intervals its time has passed (their anomalies go to
    /// `out` first), then reports a new edge or an unexpected port at once.
    pub fn observe(&mut self, rec: &CallRecord, out: &mut Vec<Anomaly>) {
        let at_ns = finished_ns(&rec.call);
        self.advance(at_ns, out);
        let learning = self.learning();
        let key = EdgeKey::of(rec);
        let warmup = u64::from(self.config.warmup_intervals);

        let server = rec.server.label();
        if !self.servers.contains_key(&server) && self.servers.len() < self.config.max_edges {
            self.servers.insert(
                server.clone(),
                ServerPorts {
                    learned_at: self.current + warmup,
                    ports: BTreeSet::new(),
                    last_seen_ns: at_ns,
                },
            );
        }
        let ports = self.servers.get_mut(&server);
        if let Some(p) = ports {
            p.last_seen_ns = p.last_seen_ns.max(at_ns);
            let port = rec.server.port;
            if !p.ports.contains(&port) && p.ports.len() < self.config.max_ports {
                if self.current >= p.learned_at {
                    out.push(Anomaly {
                        kind: AnomalyKind::UnexpectedPort,
                        edge: key.clone(),
                        at_ns,
                        evidence: Evidence {
                            measure: Measure::Port,
                            observed: f64::from(port),
                            baseline_mean: 0.0,
                            baseline_stddev: 0.0,
                            threshold: 0.0,
                            calls: 1,
                            errors: u64::from(rec.call.is_error()),
                            known_ports: p.ports.iter().copied().collect(),
                            examples: vec![Example::of(rec)],
                        },
                    });
                }
                p.ports.insert(port);
            }
        }

        if !self.edges.contains_key(&key) {
            if self.edges.len() >= self.config.max_edges {
                self.untracked += 1;
                return;
            }
            if !learning {
                out.push(Anomaly {
                    kind: AnomalyKind::NewEdge,
                    edge: key.clone(),
                    at_ns,
                    evidence: Evidence {
                        measure: Measure::Calls,
                        observed: 1.0,
                        baseline_mean: 0.0,
                        baseline_stddev: 0.0,
                        threshold: 0.0,
                        calls: 1,
                        errors: u64::from(rec.call.is_error()),
                        known_ports: Vec::new(),
                        examples: vec![Example::of(rec)],
                    },
                });
            }
        }
        let edge = self.edges.entry(key).or_default();
        edge.last_seen_ns = edge.last_seen_ns.max(at_ns);
        edge.open.add(rec);
    }

    /// Closes every interval that ended at or before `now_ns`, judging each edge's interval
    /// (anomalies go to `out`), and forgets edges and servers idle past the retention.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Anomaly>) {
        let index = now_ns / self.interval_ns;
        if self.started.is_none() {
            self.started = Some(index);
            self.current = index;
            return;
        }
        if index <= self.current {
            return;
        }
        let end_ns = (self.current + 1) * self.interval_ns;
        let mut keys: Vec<&EdgeKey> = self
            .edges
            .iter()
            .filter(|(_, e)| e.open.calls > 0)
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let keys: Vec<EdgeKey> = keys.into_iter().cloned().collect();
        for key in keys {
            if let Some(edge) = self.edges.get_mut(&key) {
                let interval = std::mem::take(&mut edge.open);
                judge(
                    &self.config,
                    self.interval_ns,
                    &key,
                    edge,
                    &interval,
                    end_ns,
                    out,
                );
            }
        }
        self.current = index;
        let retention_ns = self.config.retention_secs.saturating_mul(NS_PER_SEC);
        self.edges
            .retain(|_, e| e.last_seen_ns.saturating_add(retention_ns) >= now_ns);
        self.servers
            .retain(|_, s| s.last_seen_ns.saturating_add(retention_ns) >= now_ns);
    }

    /// Whether the detector is still in its learning period (new edges are not reported).
    pub fn learning(&self) -> bool {
        self.started
            .is_none_or(|s| self.current - s < u64::from(self.config.warmup_intervals))
    }

    /// Calls not judged because `max_edges` edges had baselines.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
}

/// Judges one edge's closed interval against its baselines, then updates them.
fn judge(
    config: &AnomalyConfig,
    interval_ns: u64,
    key: &EdgeKey,
    edge: &mut EdgeState,
    interval: &Interval,
    end_ns: u64,
    out: &mut Vec<Anomaly>,
) {
    let seconds = interval_ns as f64 / NS_PER_SEC as f64;
    let warm = |b: &Baseline| b.samples >= config.warmup_intervals;
    let mut report =
        |kind, measure, observed: f64, b: &Baseline, threshold, examples: &[Example]| {
            out.push(Anomaly {
                kind,
                edge: key.clone(),
                at_ns: end_ns,
                evidence: Evidence {
                    measure,
                    observed,
                    baseline_mean: b.mean,
                    baseline_stddev: b.stddev(),
                    threshold,
                    calls: interval.calls,
                    errors: interval.errors,
                    known_ports: Vec::new(),
                    examples: examples.to_vec(),
                },
            });
        };

    if interval.latency.count() >= config.min_latency_calls.max(1)
        && let Some(p90) = interval.latency.quantile(0.9).map(ms)
    {
        let b = edge.latency;
        let threshold = (b.mean + config.k * b.stddev())
            .max(b.mean * (1.0 + config.min_latency_increase))
            .max(b.mean + config.min_latency_ms);
        let spike = warm(&b) && p90 > threshold;
        if spike {
            let slowest: Vec<Example> = interval.slowest.iter().map(|(_, e)| e.clone()).collect();
            report(
                AnomalyKind::LatencySpike,
                Measure::LatencyP90Ms,
                p90,
                &b,
                threshold,
                &slowest,
            );
        }
        edge.latency
            .update(p90, alpha(config, &edge.latency, spike));
    }

    let ratio = interval.errors as f64 / interval.calls as f64;
    let b = edge.errors;
    let threshold = (b.mean + config.k * b.stddev()).max(b.mean + config.min_error_ratio_increase);
    // Above the threshold with too few failures to report (a fault that began late in the
    // interval) is still not normal: it must not raise the baseline the next interval is
    // judged against.
    let above = warm(&b) && ratio > threshold;
    let spike = above && interval.errors >= config.min_errors;
    if spike {
        report(
            AnomalyKind::ErrorSpike,
            Measure::ErrorRatio,
            ratio,
            &b,
            threshold,
            &interval.failed,
        );
    }
    edge.errors
        .update(ratio, alpha(config, &edge.errors, above));

    let rate = interval.calls as f64 / seconds;
    let b = edge.rate;
    let threshold = (b.mean + config.k * b.stddev())
        .max(b.mean * config.min_rate_factor)
        .max(b.mean + config.min_rate_calls as f64 / seconds);
    let spike = warm(&b) && rate > threshold;
    if spike {
        report(
            AnomalyKind::RateSpike,
            Measure::CallsPerSecond,
            rate,
            &b,
            threshold,
            &interval.first,
        );
    }
    edge.rate.update(rate, alpha(config, &edge.rate, spike));
}

/// The weight of the next sample in baseline `b`: a young baseline is a plain mean of its
/// samples (weight 1/n until that falls below `alpha`), an anomalous sample weighs
/// `anomalous_alpha` however young the baseline is (a spike must not become the baseline).
fn alpha(config: &AnomalyConfig, b: &Baseline, anomalous: bool) -> f64 {
    if anomalous {
        config.anomalous_alpha
    } else {
        config
            .alpha
            .max(1.0 / (f64::from(b.samples.saturating_add(1))))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::call::{Call, Endpoint, Outcome, Protocol};

    const MS: u64 = NS_PER_MS;
    const INTERVAL: u64 = 5 * NS_PER_SEC;
    const T0: u64 = 1_700_000_000 * NS_PER_SEC;

    fn endpoint(name: &str, port: u16) -> Endpoint {
        Endpoint {
            ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            port,
            namespace: Some("shop".into()),
            pod: Some(format!("{name}-7f9c-x")),
            workload: Some(name.into()),
            service: Some(name.into()),
        }
    }

    fn call(
        client: &str,
        server: &str,
        port: u16,
        at_ns: u64,
        latency_ns: u64,
        status: u32,
    ) -> CallRecord {
        CallRecord {
            call: Call {
                protocol: Protocol::Http1,
                method: "GET".into(),
                path: format!("/{server}"),
                authority: None,
                status: Some(status),
                grpc: None,
                request_ns: at_ns - latency_ns,
                response_ns: Some(at_ns),
                response_end_ns: Some(at_ns),
                request_bytes: 0,
                response_bytes: 100,
                headers: vec![],
                outcome: Outcome::Complete,
            },
            client: endpoint(client, 40_000),
            server: endpoint(server, port),
            decrypted: false,
        }
    }

    /// A small deterministic generator for noise.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What an edge does in one interval.
    #[derive(Clone, Copy)]
    struct Traffic {
        calls: u64,
        latency_ms: u64,
        error_percent: u64,
    }

    const NORMAL: Traffic = Traffic {
        calls: 50,
        latency_ms: 2,
        error_percent: 1,
    };

    /// Runs interval `i` of the edges (client, server, traffic) with noise, then closes it.
    fn run_interval(
        d: &mut AnomalyDetector,
        noise: &mut Noise,
        i: u64,
        edges: &[(&str, &str, Traffic)],
    ) -> Vec<Anomaly> {
        let mut out = Vec::new();
        let start = T0 + i * INTERVAL;
        for (client, server, t) in edges {
            // +-20 % calls, latency +-50 %, an occasional slow call.
            let n = t.calls * 8 / 10 + noise.below(t.calls * 4 / 10 + 1);
            for c in 0..n {
                let at = start + 1 + c * (INTERVAL - 2) / n;
                let base = t.latency_ms * MS;
                let mut latency = base / 2 + noise.below(base + 1);
                if noise.below(100) == 0 {
                    latency *= 3;
                }
                let status = if noise.below(100) < t.error_percent {
                    503
                } else {
                    200
                };
                d.observe(&call(client, server, 8080, at, latency, status), &mut out);
            }
        }
        d.advance(T0 + (i + 1) * INTERVAL, &mut out);
        out
    }

    fn steady() -> Vec<(&'static str, &'static str, Traffic)> {
        vec![
            ("front", "cart", NORMAL),
            ("front", "catalog", NORMAL),
            ("cart", "db", NORMAL),
        ]
    }

    /// A detector that has run `n` steady intervals.
    fn warmed(n: u64, noise: &mut Noise) -> AnomalyDetector {
        let mut d = AnomalyDetector::new(AnomalyConfig::default());
        for i in 0..n {
            let out = run_interval(&mut d, noise, i, &steady());
            assert!(out.is_empty(), "interval {i}: {out:?}");
        }
        d
    }

    #[test]
    fn a_steady_noisy_edge_yields_nothing_for_100_intervals() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut d = warmed(100, &mut noise);
        assert!(!d.learning());
        // The baselines did learn: p90 of 1..3 ms noise is near 2.6 ms.
        let b = d
            .edges
            .get(&EdgeKey::of(&call("front", "cart", 8080, T0, MS, 200)));
        let mean = b.map_or(0.0, |e| e.latency.mean);
        assert!((2.0..3.5).contains(&mean), "{mean}");
        let out = run_interval(&mut d, &mut noise, 100, &steady());
        assert!(out.is_empty());
    }

    #[test]
    fn an_error_jump_is_flagged_on_its_edge_within_one_interval() {
        let mut noise = Noise(7);
        let mut d = warmed(10, &mut noise);
        let mut edges = steady();
        edges[1].2 = Traffic {
            error_percent: 50,
            ..NORMAL
        };
        let out = run_interval(&mut d, &mut noise, 10, &edges);
        assert_eq!(out.len(), 1, "{out:?}");
        let a = &out[0];
        assert_eq!(a.kind, AnomalyKind::ErrorSpike);
        assert_eq!(
            (a.edge.client.as_str(), a.edge.server.as_str()),
            ("shop/front", "shop/catalog")
        );
        assert_eq!(a.at_ns, T0 + 11 * INTERVAL);
        let e = &a.evidence;
        assert!((0.3..0.7).contains(&e.observed), "{e:?}");
        assert!(e.baseline_mean < 0.05 && e.observed > e.threshold);
        assert!(e.errors >= 5 && e.calls >= 40);
        assert_eq!(e.examples.len(), MAX_EXAMPLES);
        assert!(e.examples.iter().all(|x| x.status == Some(503)));
        // The spike did not become the baseline: the same jump is flagged again.
        let out = run_interval(&mut d, &mut noise, 11, &edges);
        assert_eq!(
            out.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [AnomalyKind::ErrorSpike]
        );
        // And back to normal, nothing.
        assert!(run_interval(&mut d, &mut noise, 12, &steady()).is_empty());
    }

    #[test]
    fn a_fault_starting_late_in_an_interval_does_not_raise_the_next_threshold() {
        let mut noise = Noise(7);
        let mut d = warmed(10, &mut noise);
        let key = EdgeKey::of(&call("front", "catalog", 8080, T0, MS, 200));
        let before = d.edges.get(&key).map_or(1.0, |e| e.errors.mean);
        // Interval 10: 20 good calls, then 4 failures at its end: a ratio of 0.17, above the
        // threshold (about 0.11), but fewer failures than min_errors (5).
        let start = T0 + 10 * INTERVAL;
        let mut out = Vec::new();
        for c in 0..24 {
            let status = if c >= 20 { 503 } else { 200 };
            let at = start + 1 + c * (INTERVAL / 30);
            d.observe(
                &call("front", "catalog", 8080, at, 2 * MS, status),
                &mut out,
            );
        }
        d.advance(start + INTERVAL, &mut out);
        assert!(out.is_empty(), "too few failures to report: {out:?}");
        let after = d.edges.get(&key).map_or(1.0, |e| e.errors.mean);
        // Learned with the anomalous weight (0.01: +0.0016), not the normal one (0.1: +0.016).
        assert!(after - before < 0.003, "{before} -> {after}");
    }

    #[test]
    fn a_latency_jump_is_flagged() {
        let mut noise = Noise(11);
        let mut d = warmed(10, &mut noise);
        let mut edges = steady();
        edges[2].2 = Traffic {
            latency_ms: 50,
            ..NORMAL
        };
        let out = run_interval(&mut d, &mut noise, 10, &edges);
        assert_eq!(out.len(), 1, "{out:?}");
        let a = &out[0];
        assert_eq!(a.kind, AnomalyKind::LatencySpike);
        assert_eq!(a.edge.server, "shop/db");
        let e = &a.evidence;
        assert_eq!(e.measure, Measure::LatencyP90Ms);
        assert!(e.observed > 40.0 && e.baseline_mean < 4.0, "{e:?}");
        assert!(e.threshold >= e.baseline_mean + 5.0);
        let slowest: Vec<f64> = e.examples.iter().filter_map(|x| x.latency_ms).collect();
        assert_eq!(slowest.len(), 3);
        assert!(
            slowest.windows(2).all(|w| w[0] >= w[1]) && slowest[0] > 70.0,
            "{slowest:?}"
        );
    }

    #[test]
    fn a_rate_jump_is_flagged() {
        let mut noise = Noise(13);
        let mut d = warmed(10, &mut noise);
        let mut edges = steady();
        edges[0].2 = Traffic {
            calls: 500,
            ..NORMAL
        };
        let out = run_interval(&mut d, &mut noise, 10, &edges);
        assert_eq!(
            out.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [AnomalyKind::RateSpike]
        );
        assert_eq!(out[0].edge.server, "shop/cart");
        assert!(out[0].evidence.observed > 70.0);
    }

    #[test]
    fn a_new_edge_after_warmup_is_flagged_once() {
        let mut noise = Noise(17);
        let mut d = warmed(8, &mut noise);
        let mut edges = steady();
        edges.push(("front", "payments", NORMAL));
        let out = run_interval(&mut d, &mut noise, 8, &edges);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, AnomalyKind::NewEdge);
        assert_eq!(out[0].edge.server, "shop/payments");
        assert_eq!(out[0].evidence.examples[0].path, "/payments");
        for i in 9..30 {
            assert!(run_interval(&mut d, &mut noise, i, &edges).is_empty());
        }
    }

    #[test]
    fn an_unexpected_port_is_flagged_once() {
        let mut noise = Noise(19);
        let mut d = warmed(8, &mut noise);
        let mut out = Vec::new();
        let at = T0 + 8 * INTERVAL + 10;
        d.observe(&call("front", "cart", 8080, at, MS, 200), &mut out);
        assert!(out.is_empty());
        d.observe(&call("front", "cart", 9090, at + 1, MS, 200), &mut out);
        d.observe(&call("front", "cart", 9090, at + 2, MS, 200), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, AnomalyKind::UnexpectedPort);
        assert_eq!(out[0].evidence.observed, 9090.0);
        assert_eq!(out[0].evidence.known_ports, [8080]);
        assert_eq!(out[0].edge.server, "shop/cart");
    }

    #[test]
    fn nothing_is_flagged_while_learning() {
        let mut noise = Noise(23);
        let mut d = AnomalyDetector::new(AnomalyConfig::default());
        let wild = Traffic {
            calls: 400,
            latency_ms: 80,
            error_percent: 60,
        };
        for i in 0..6u64 {
            // Edges appear one by one, ports change, and an edge swings wildly.
            let mut edges = steady()[..(i as usize % 3 + 1)].to_vec();
            edges.push(("batch", "db", if i % 2 == 0 { NORMAL } else { wild }));
            let mut out = Vec::new();
            let port = 5000 + i as u16;
            d.observe(
                &call("batch", "db", port, T0 + i * INTERVAL + 1, MS, 200),
                &mut out,
            );
            out.extend(run_interval(&mut d, &mut noise, i, &edges));
            assert!(out.is_empty(), "interval {i}: {out:?}");
        }
        assert!(!d.learning());
        // Just past the learning period, a new edge is news.
        let mut out = Vec::new();
        d.observe(
            &call("batch", "cache", 6379, T0 + 7 * INTERVAL, MS, 200),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [AnomalyKind::NewEdge]
        );
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in [
            AnomalyKind::LatencySpike,
            AnomalyKind::ErrorSpike,
            AnomalyKind::RateSpike,
            AnomalyKind::NewEdge,
            AnomalyKind::UnexpectedPort,
        ] {
            assert_eq!(AnomalyKind::from_name(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::json!(k.as_str()))
            );
        }
        assert_eq!(AnomalyKind::from_name("nope"), None);
    }
}
