//! The service map: who calls whom, how often, how slowly and how often it fails.
//!
//! It owns the edges built from [`CallRecord`]s (client label, server label, protocol), their
//! running totals, a sliding window of per-bucket counts and latency histograms for rates and
//! percentiles, the bound on how many edges are kept (the rest fold into `other -> other`), and
//! the two ways out: a Prometheus collector snapshot ([`ServiceMapMetrics`]) and JSON for the
//! CLI and UI ([`ServiceMap::to_json`]).
//!
//! Time never comes from the clock: a call counts at the time it finished (see [`finished_ns`])
//! and queries take `now_ns`, so a replayed capture gives the same map as the live one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::call::{Call, CallRecord, Outcome, Protocol};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The label both ends of the overflow edge carry.
pub const OVERFLOW_LABEL: &str = "other";

/// Upper bounds (seconds) of the Prometheus duration histogram's buckets, `+Inf` aside.
pub const DURATION_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// When a call finished as far as the capture knows: its response's last byte, else the
/// response's first byte, else the request's first byte. Calls are counted in the window
/// bucket (and anomaly interval) of this time, which is close to when they are emitted.
pub fn finished_ns(call: &Call) -> u64 {
    call.response_end_ns
        .or(call.response_ns)
        .unwrap_or(call.request_ns)
}

/// How the service map is sized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceMapConfig {
    /// Length of the sliding window rates and percentiles are computed over, in seconds
    /// (0 is read as one bucket).
    pub window_secs: u64,
    /// Width of one window bucket, in milliseconds (0 is read as 1).
    pub bucket_ms: u64,
    /// Most edges kept; calls of further edges are folded into `other -> other`.
    pub max_edges: usize,
    /// Edges idle longer than this (seconds) are removed by [`ServiceMap::advance`].
    pub retention_secs: u64,
}

impl Default for ServiceMapConfig {
    fn default() -> Self {
        ServiceMapConfig {
            window_secs: 60,
            bucket_ms: 1000,
            max_edges: 1000,
            retention_secs: 3600,
        }
    }
}

/// A mergeable latency histogram with log-linear buckets (HDR-style): values below 64 are
/// exact, above that each power of two is split into 32 buckets, so a quantile is within
/// 1/64 (about 1.6 %) of the true value. Only buckets that hold values are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `(bucket index, count)`, sorted by index.
    buckets: Vec<(u16, u64)>,
    count: u64,
}

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of `v` (at most 1919).
fn bucket_index(v: u64) -> u16 {
    if v < 2 * SUB {
        return v as u16;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = v >> shift;
    ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as u16
}

/// The value a bucket stands for: the middle of its range.
fn bucket_value(index: u16) -> u64 {
    let index = u64::from(index);
    if index < 2 * SUB {
        return index;
    }
    let shift = index / SUB - 1;
    let low = (index % SUB + SUB) << shift;
    low + ((1u64 << shift) - 1) / 2
}

impl LatencyHistogram {
    /// Counts one value (nanoseconds, or any unit).
    pub fn record(&mut self, value: u64) {
        let index = bucket_index(value);
        match self.buckets.binary_search_by_key(&index, |b| b.0) {
            Ok(i) => self.buckets[i].1 += 1,
            Err(i) => self.buckets.insert(i, (index, 1)),
        }
        self.count += 1;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for &(index, n) in &other.buckets {
            match self.buckets.binary_search_by_key(&index, |b| b.0) {
                Ok(i) => self.buckets[i].1 += n,
                Err(i) => self.buckets.insert(i, (index, n)),
            }
        }
        self.count += other.count;
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for &(index, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(index));
            }
        }
        self.buckets.last().map(|b| bucket_value(b.0))
    }
}

/// What identifies an edge: both ends' labels ([`crate::call::Endpoint::label`]) and the
/// protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EdgeKey {
    /// The calling end's label.
    pub client: String,
    /// The answering end's label.
    pub server: String,
    /// The protocol of the calls.
    pub protocol: Protocol,
}

impl EdgeKey {
    /// The key of a record's edge.
    pub fn of(rec: &CallRecord) -> EdgeKey {
        EdgeKey {
            client: rec.client.label(),
            server: rec.server.label(),
            protocol: rec.call.protocol,
        }
    }

    fn overflow(protocol: Protocol) -> EdgeKey {
        EdgeKey {
            client: OVERFLOW_LABEL.to_string(),
            server: OVERFLOW_LABEL.to_string(),
            protocol,
        }
    }
}

/// One window bucket of an edge.
#[derive(Debug, Clone)]
struct Bucket {
    index: u64,
    calls: u64,
    errors: u64,
    latency: LatencyHistogram,
}

/// Cumulative latency counts in the Prometheus buckets.
#[derive(Debug, Clone, Default)]
struct DurationCounts {
    /// Per bucket of [`DURATION_BUCKETS_SECONDS`], then `+Inf`; not cumulative.
    counts: [u64; DURATION_BUCKETS_SECONDS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

impl DurationCounts {
    fn record(&mut self, latency_ns: u64) {
        let seconds = latency_ns as f64 / NS_PER_SEC as f64;
        let slot = DURATION_BUCKETS_SECONDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(DURATION_BUCKETS_SECONDS.len());
        self.counts[slot] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Clone)]
struct Edge {
    service: Option<String>,
    first_seen_ns: u64,
    last_seen_ns: u64,
    calls: u64,
    errors: u64,
    incomplete: u64,
    durations: DurationCounts,
    /// Buckets sorted by index, at most the window's length apart.
    window: VecDeque<Bucket>,
}

impl Edge {
    fn new(at_ns: u64) -> Edge {
        Edge {
            service: None,
            first_seen_ns: at_ns,
            last_seen_ns: at_ns,
            calls: 0,
            errors: 0,
            incomplete: 0,
            durations: DurationCounts::default(),
            window: VecDeque::new(),
        }
    }

    fn observe(&mut self, rec: &CallRecord, shape: &WindowShape) {
        let at_ns = finished_ns(&rec.call);
        let is_error = rec.call.is_error();
        let latency = rec.call.latency_ns();
        if rec.server.service.is_some() {
            self.service.clone_from(&rec.server.service);
        }
        self.first_seen_ns = self.first_seen_ns.min(at_ns);
        self.last_seen_ns = self.last_seen_ns.max(at_ns);
        self.calls += 1;
        self.errors += u64::from(is_error);
        self.incomplete += u64::from(matches!(rec.call.outcome, Outcome::Incomplete(_)));
        if let Some(l) = latency {
            self.durations.record(l);
        }
        if let Some(bucket) = self.bucket_mut(at_ns / shape.bucket_ns, shape.buckets) {
            bucket.calls += 1;
            bucket.errors += u64::from(is_error);
            if let Some(l) = latency {
                bucket.latency.record(l);
            }
        }
    }

    /// The bucket `index`, created if needed; `None` when it is older than the window.
    fn bucket_mut(&mut self, index: u64, len: u64) -> Option<&mut Bucket> {
        let newest = self.window.back().map_or(index, |b| b.index.max(index));
        if index + len <= newest {
            return None;
        }
        let pos = self.window.partition_point(|b| b.index < index);
        if self.window.get(pos).is_none_or(|b| b.index != index) {
            self.window.insert(
                pos,
                Bucket {
                    index,
                    calls: 0,
                    errors: 0,
                    latency: LatencyHistogram::default(),
                },
            );
        }
        self.trim(newest, len);
        let pos = self.window.partition_point(|b| b.index < index);
        self.window.get_mut(pos)
    }

    /// Drops buckets that left the window ending at bucket `newest`.
    fn trim(&mut self, newest: u64, len: u64) {
        while self.window.front().is_some_and(|b| b.index + len <= newest) {
            self.window.pop_front();
        }
    }

    fn stats(&self, key: &EdgeKey, now_ns: u64, shape: &WindowShape) -> EdgeStats {
        let now_index = now_ns / shape.bucket_ns;
        let mut calls = 0;
        let mut errors = 0;
        let mut latency = LatencyHistogram::default();
        for b in &self.window {
            if b.index + shape.buckets > now_index && b.index <= now_index {
                calls += b.calls;
                errors += b.errors;
                latency.merge(&b.latency);
            }
        }
        let window_start = (now_index + 1).saturating_sub(shape.buckets) * shape.bucket_ns;
        let span_ns = now_ns
            .saturating_sub(window_start.max(self.first_seen_ns))
            .max(shape.bucket_ns);
        let ms = |q: f64| latency.quantile(q).map(|v| v as f64 / NS_PER_MS as f64);
        EdgeStats {
            client: key.client.clone(),
            server: key.server.clone(),
            protocol: key.protocol,
            service: self.service.clone(),
            calls_total: self.calls,
            errors_total: self.errors,
            incomplete_total: self.incomplete,
            window_calls: calls,
            window_errors: errors,
            request_rate: calls as f64 * NS_PER_SEC as f64 / span_ns as f64,
            error_rate: if calls == 0 {
                0.0
            } else {
                errors as f64 / calls as f64
            },
            latency_p50_ms: ms(0.5),
            latency_p90_ms: ms(0.9),
            latency_p99_ms: ms(0.99),
            last_seen_ns: self.last_seen_ns,
        }
    }
}

/// The window's shape in buckets, from the config.
#[derive(Debug, Clone, Copy)]
struct WindowShape {
    bucket_ns: u64,
    buckets: u64,
}

/// What an edge looks like at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeStats {
    /// The calling end's label (`other` for the overflow edge).
    pub client: String,
    /// The answering end's label (`other` for the overflow edge).
    pub server: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The server's Kubernetes service, when known.
    pub service: Option<String>,
    /// Calls since the edge appeared.
    pub calls_total: u64,
    /// Failed calls ([`Call::is_error`]) since the edge appeared.
    pub errors_total: u64,
    /// Calls seen only in part ([`Outcome::Incomplete`]) since the edge appeared.
    pub incomplete_total: u64,
    /// Calls in the window.
    pub window_calls: u64,
    /// Failed calls in the window.
    pub window_errors: u64,
    /// Calls per second over the window (or over the edge's life, when shorter).
    pub request_rate: f64,
    /// Failed calls / calls in the window (0 without calls).
    pub error_rate: f64,
    /// Median latency in the window (ms), request's first byte to response's first byte.
    pub latency_p50_ms: Option<f64>,
    /// 90th percentile latency in the window (ms).
    pub latency_p90_ms: Option<f64>,
    /// 99th percentile latency in the window (ms).
    pub latency_p99_ms: Option<f64>,
    /// When the edge's last call finished (Unix ns).
    pub last_seen_ns: u64,
}

/// Edges between workloads with their totals and windowed stats.
#[derive(Debug, Clone)]
pub struct ServiceMap {
    config: ServiceMapConfig,
    shape: WindowShape,
    edges: foldhash::HashMap<EdgeKey, Edge>,
    /// The `other -> other` edges, one per protocol, outside the `max_edges` bound.
    overflow: BTreeMap<Protocol, Edge>,
    folded: u64,
}

impl ServiceMap {
    /// An empty map.
    pub fn new(config: ServiceMapConfig) -> ServiceMap {
        let bucket_ns = config.bucket_ms.max(1) * NS_PER_MS;
        let window_ns = config.window_secs.saturating_mul(NS_PER_SEC);
        let shape = WindowShape {
            bucket_ns,
            buckets: window_ns.div_ceil(bucket_ns).max(1),
        };
        ServiceMap {
            config,
            shape,
            edges: foldhash::HashMap::default(),
            overflow: BTreeMap::new(),
            folded: 0,
        }
    }

    /// Counts one call on its edge (or on the overflow edge when `max_edges` are taken).
    pub fn observe(&mut self, rec: &CallRecord) {
        let at_ns = finished_ns(&rec.call);
        let key = EdgeKey::of(rec);
        let edge = if let Some(edge) = self.edges.get_mut(&key) {
            edge
        } else if self.edges.len() < self.config.max_edges {
            self.edges.entry(key).or_insert_with(|| Edge::new(at_ns))
        } else {
            self.folded += 1;
            self.overflow
                .entry(rec.call.protocol)
                .or_insert_with(|| Edge::new(at_ns))
        };
        edge.observe(rec, &self.shape);
    }

    /// Removes edges idle longer than the retention and window buckets older than the window.
    pub fn advance(&mut self, now_ns: u64) {
        let retention_ns = self.config.retention_secs.saturating_mul(NS_PER_SEC);
        let keep = |e: &Edge| e.last_seen_ns.saturating_add(retention_ns) >= now_ns;
        self.edges.retain(|_, e| keep(e));
        self.overflow.retain(|_, e| keep(e));
        let now_index = now_ns / self.shape.bucket_ns;
        for e in self.edges.values_mut().chain(self.overflow.values_mut()) {
            e.trim(now_index, self.shape.buckets);
        }
    }

    /// Every edge's stats at `now_ns`, sorted by key, the overflow edges last.
    pub fn edges(&self, now_ns: u64) -> Vec<EdgeStats> {
        let mut keys: Vec<&EdgeKey> = self.edges.keys().collect();
        keys.sort();
        let mut out: Vec<EdgeStats> = keys
            .into_iter()
            .filter_map(|k| self.edges.get(k).map(|e| e.stats(k, now_ns, &self.shape)))
            .collect();
        for (protocol, e) in &self.overflow {
            out.push(e.stats(&EdgeKey::overflow(*protocol), now_ns, &self.shape));
        }
        out
    }

    /// Calls folded into the overflow edges because `max_edges` edges were taken.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// A snapshot of the totals for Prometheus.
    pub fn metrics(&self) -> ServiceMapMetrics {
        let all = self.edges.iter().map(|(k, e)| (k.clone(), e)).chain(
            self.overflow
                .iter()
                .map(|(p, e)| (EdgeKey::overflow(*p), e)),
        );
        let mut edges: Vec<EdgeMetrics> = all
            .map(|(key, e)| EdgeMetrics {
                key,
                calls: e.calls,
                errors: e.errors,
                durations: e.durations.clone(),
            })
            .collect();
        edges.sort_by(|a, b| a.key.cmp(&b.key));
        ServiceMapMetrics {
            edges,
            folded: self.folded,
        }
    }

    /// Nodes and edges with their stats at `now_ns`, for the CLI and UI:
    /// `{"at_ns", "nodes": [{"id", "namespace", "workload", "services", "requests_in",
    /// "requests_out"}], "edges": [EdgeStats...], "edges_folded"}`.
    pub fn to_json(&self, now_ns: u64) -> Value {
        #[derive(Default)]
        struct Node {
            services: BTreeSet<String>,
            requests_in: u64,
            requests_out: u64,
        }
        let edges = self.edges(now_ns);
        let mut nodes: BTreeMap<&str, Node> = BTreeMap::new();
        for e in &edges {
            nodes.entry(&e.client).or_default().requests_out += e.calls_total;
            let server = nodes.entry(&e.server).or_default();
            server.requests_in += e.calls_total;
            server.services.extend(e.service.clone());
        }
        let nodes: Vec<Value> = nodes
            .into_iter()
            .map(|(id, n)| {
                let (namespace, workload) = id.split_once('/').unzip();
                json!({
                    "id": id,
                    "namespace": namespace,
                    "workload": workload,
                    "services": n.services,
                    "requests_in": n.requests_in,
                    "requests_out": n.requests_out,
                })
            })
            .collect();
        json!({
            "at_ns": now_ns,
            "nodes": nodes,
            "edges": edges,
            "edges_folded": self.folded,
        })
    }
}

/// One edge's totals in a [`ServiceMapMetrics`] snapshot.
#[derive(Debug, Clone)]
struct EdgeMetrics {
    key: EdgeKey,
    calls: u64,
    errors: u64,
    durations: DurationCounts,
}

/// A snapshot of the service map's totals, encoded as `podtap_l7_requests_total`,
/// `podtap_l7_errors_total`, `podtap_l7_request_duration_seconds` (labels `client`,
/// `server`, `protocol`; buckets [`DURATION_BUCKETS_SECONDS`]) and
/// `podtap_l7_edges_folded_total`. Counters restart from 0 when an edge is removed for idleness
/// and comes back, which Prometheus reads as a counter reset.
#[derive(Debug, Clone)]
pub struct ServiceMapMetrics {
    edges: Vec<EdgeMetrics>,
    folded: u64,
}

impl Collector for ServiceMapMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |k: &EdgeKey| {
            [
                ("client", k.client.clone()),
                ("server", k.server.clone()),
                ("protocol", k.protocol.as_str().to_string()),
            ]
        };
        let mut family = encoder.encode_descriptor(
            "podtap_l7_requests",
            "Calls seen on the edge",
            None,
            MetricType::Counter,
        )?;
        for e in &self.edges {
            ConstCounter::new(e.calls).encode(family.encode_family(&labels(&e.key))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "podtap_l7_errors",
            "Failed calls on the edge (HTTP 5xx, gRPC status other than OK, DNS SERVFAIL or REFUSED, no response)",
            None,
            MetricType::Counter,
        )?;
        for e in &self.edges {
            ConstCounter::new(e.errors).encode(family.encode_family(&labels(&e.key))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "podtap_l7_request_duration_seconds",
            "Latency from the request's first byte to the response's first byte",
            None,
            MetricType::Histogram,
        )?;
        for e in &self.edges {
            let d = &e.durations;
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS_SECONDS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(d.counts)
                .collect();
            family
                .encode_family(&labels(&e.key))?
                .encode_histogram::<NoLabelSet>(d.sum_seconds, d.count, &buckets, None)?;
        }
        let family = encoder.encode_descriptor(
            "podtap_l7_edges_folded",
            "Calls counted on the other -> other edge because the edge limit was reached",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.folded).encode(family)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::call::Endpoint;

    const SEC: u64 = NS_PER_SEC;
    const MS: u64 = NS_PER_MS;

    fn workload(ns: &str, name: &str) -> Endpoint {
        Endpoint {
            ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            port: 8080,
            namespace: Some(ns.into()),
            pod: Some(format!("{name}-abc")),
            workload: Some(name.into()),
            service: None,
        }
    }

    fn record(
        client: Endpoint,
        server: Endpoint,
        at_ns: u64,
        latency_ns: u64,
        status: u32,
    ) -> CallRecord {
        CallRecord {
            call: Call {
                protocol: Protocol::Http1,
                method: "GET".into(),
                path: "/".into(),
                authority: None,
                status: Some(status),
                grpc: None,
                request_ns: at_ns - latency_ns,
                response_ns: Some(at_ns),
                response_end_ns: Some(at_ns),
                request_bytes: 0,
                response_bytes: 10,
                headers: vec![],
                outcome: Outcome::Complete,
            },
            client,
            server,
            decrypted: false,
        }
    }

    fn render(m: ServiceMapMetrics) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(m));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
        out
    }

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = LatencyHistogram::default();
        // 1..=10000 microseconds in ns.
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        for (q, exact) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = h.quantile(q).unwrap_or(0) as f64;
            assert!((got - exact).abs() / exact < 0.02, "q{q}: {got} vs {exact}");
        }
        for v in [0u64, 1, 63, 64, 65, 1000, 123_456_789, u64::MAX] {
            let mut one = LatencyHistogram::default();
            one.record(v);
            let got = one.quantile(0.5).unwrap_or(0) as f64;
            assert!((got - v as f64).abs() <= v as f64 / 60.0, "{v} -> {got}");
        }
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        (0..100).for_each(|_| a.record(1_000));
        (0..100).for_each(|_| b.record(100_000));
        a.merge(&b);
        assert_eq!(a.count(), 200);
        assert!(a.quantile(0.25).unwrap_or(0) < 1_100);
        assert!(a.quantile(0.75).unwrap_or(0) > 95_000);
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn window_gives_rates_errors_and_percentiles() {
        let mut map = ServiceMap::new(ServiceMapConfig::default());
        let (a, b) = (workload("shop", "front"), workload("shop", "cart"));
        let start = 1_000 * SEC;
        // 120 s at 10 calls/s: 2 ms for 9 calls of 10, 20 ms for the tenth; 1 in 5 is a 503.
        for i in 0..1200u64 {
            let at = start + i * SEC / 10;
            let latency = if i % 10 == 9 { 20 * MS } else { 2 * MS };
            let status = if i % 5 == 0 { 503 } else { 200 };
            map.observe(&record(a.clone(), b.clone(), at, latency, status));
        }
        let now = start + 120 * SEC;
        let edges = map.edges(now);
        assert_eq!(edges.len(), 1);
        let e = &edges[0];
        assert_eq!(
            (e.client.as_str(), e.server.as_str()),
            ("shop/front", "shop/cart")
        );
        assert_eq!(e.calls_total, 1200);
        assert_eq!(e.errors_total, 240);
        // The window holds the last 59 whole seconds and the current, empty, one: 59 s of calls.
        assert_eq!(e.window_calls, 590);
        assert!((e.request_rate - 10.0).abs() < 0.01, "{}", e.request_rate);
        assert!((e.error_rate - 0.2).abs() < 0.01, "{}", e.error_rate);
        let p50 = e.latency_p50_ms.unwrap_or(0.0);
        let p99 = e.latency_p99_ms.unwrap_or(0.0);
        assert!((p50 - 2.0).abs() < 0.05, "{p50}");
        assert!((p99 - 20.0).abs() < 0.4, "{p99}");
        assert_eq!(e.last_seen_ns, start + 1199 * SEC / 10);

        // Ten minutes later the window is empty but the totals stay.
        let later = map.edges(now + 600 * SEC);
        assert_eq!(later[0].window_calls, 0);
        assert_eq!(later[0].request_rate, 0.0);
        assert_eq!(later[0].latency_p90_ms, None);
        assert_eq!(later[0].calls_total, 1200);
    }

    #[test]
    fn a_young_edge_rate_uses_its_age() {
        let mut map = ServiceMap::new(ServiceMapConfig::default());
        let start = 50 * SEC;
        for i in 0..100u64 {
            let at = start + i * SEC / 10;
            map.observe(&record(workload("a", "x"), workload("a", "y"), at, MS, 200));
        }
        let rate = map.edges(start + 10 * SEC)[0].request_rate;
        assert!((rate - 10.0).abs() < 0.2, "{rate}");
    }

    #[test]
    fn edges_beyond_the_limit_fold_and_idle_edges_expire() {
        let config = ServiceMapConfig {
            max_edges: 3,
            retention_secs: 60,
            ..ServiceMapConfig::default()
        };
        let mut map = ServiceMap::new(config);
        let t = 10 * SEC;
        for i in 0..5 {
            let server = workload("ns", &format!("svc{i}"));
            map.observe(&record(
                workload("ns", "client"),
                server.clone(),
                t,
                MS,
                200,
            ));
            map.observe(&record(workload("ns", "client"), server, t, MS, 200));
        }
        let edges = map.edges(t);
        assert_eq!(edges.len(), 4);
        let other = &edges[3];
        assert_eq!(
            (other.client.as_str(), other.server.as_str()),
            ("other", "other")
        );
        assert_eq!(other.calls_total, 4);
        assert_eq!(map.folded(), 4);
        // A known edge keeps counting on itself.
        map.observe(&record(
            workload("ns", "client"),
            workload("ns", "svc0"),
            t + 100 * SEC,
            MS,
            200,
        ));
        map.advance(t + 120 * SEC);
        let edges = map.edges(t + 120 * SEC);
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].server, "ns/svc0");
        assert_eq!(edges[0].calls_total, 3);
        // Room again: a new edge is its own.
        map.observe(&record(
            workload("ns", "client"),
            workload("ns", "svc9"),
            t + 121 * SEC,
            MS,
            200,
        ));
        assert_eq!(map.edges(t + 121 * SEC).len(), 2);
        assert_eq!(map.folded(), 4);
    }

    #[test]
    fn prometheus_text_has_counters_and_histogram() {
        let mut map = ServiceMap::new(ServiceMapConfig {
            max_edges: 1,
            ..ServiceMapConfig::default()
        });
        let t = 5 * SEC;
        map.observe(&record(
            workload("a", "x"),
            workload("a", "y"),
            t,
            3 * MS,
            200,
        ));
        map.observe(&record(
            workload("a", "x"),
            workload("a", "y"),
            t,
            30 * MS,
            500,
        ));
        map.observe(&record(
            workload("a", "x"),
            workload("a", "z"),
            t,
            3 * MS,
            200,
        ));
        let text = render(map.metrics());
        let labels = r#"client="a/x",server="a/y",protocol="http1""#;
        for line in [
            format!("podtap_l7_requests_total{{{labels}}} 2"),
            format!("podtap_l7_errors_total{{{labels}}} 1"),
            format!(r#"podtap_l7_request_duration_seconds_bucket{{le="0.0025",{labels}}} 0"#),
            format!(r#"podtap_l7_request_duration_seconds_bucket{{le="0.005",{labels}}} 1"#),
            format!(r#"podtap_l7_request_duration_seconds_bucket{{le="0.05",{labels}}} 2"#),
            format!(r#"podtap_l7_request_duration_seconds_bucket{{le="+Inf",{labels}}} 2"#),
            format!("podtap_l7_request_duration_seconds_count{{{labels}}} 2"),
            r#"podtap_l7_requests_total{client="other",server="other",protocol="http1"} 1"#.into(),
            "podtap_l7_edges_folded_total 1".into(),
            "# TYPE podtap_l7_request_duration_seconds histogram".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn json_lists_nodes_and_edges() {
        let mut map = ServiceMap::new(ServiceMapConfig::default());
        let mut server = workload("shop", "cart");
        server.service = Some("cart".into());
        let bare = Endpoint {
            ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9))),
            port: 40000,
            ..Endpoint::default()
        };
        let t = 7 * SEC;
        map.observe(&record(
            workload("shop", "front"),
            server.clone(),
            t,
            MS,
            200,
        ));
        map.observe(&record(bare, server, t, MS, 200));
        let v = map.to_json(t);
        assert_eq!(v["edges"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["edges"][0]["client"], "192.168.1.9");
        assert_eq!(v["edges"][0]["service"], "cart");
        assert_eq!(v["edges_folded"], 0);
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(ids, ["192.168.1.9", "shop/cart", "shop/front"]);
        assert_eq!(nodes[1]["requests_in"], 2);
        assert_eq!(nodes[1]["services"][0], "cart");
        assert_eq!(nodes[1]["namespace"], "shop");
        assert_eq!(nodes[0]["namespace"], Value::Null);
        assert_eq!(nodes[2]["requests_out"], 1);
    }
}
