//! Anomaly detection live in the lab (run as root): two TLS servers, each called at a steady
//! pace by its own client, their decrypted view sent by the agent over VXLAN to a running
//! broker whose `calls` output detects anomalies with one-second intervals. A fault injected in
//! one server (500s, then slow answers) must be flagged on exactly that edge, as the right
//! kind, within the documented time, with evidence that matches what the client saw; the
//! healthy edge, and both edges before the faults, must have no spike at all.
//!
//! The documented bound, from the first faulty answer a client received to the anomaly in the
//! store: `2 × interval_ms + FLUSH + 2 × TICK + DELIVERY` (3.4 s here). The broker stamps calls
//! when their frames arrive (up to `DELIVERY` after the client's answer); the fault's first
//! interval may hold too few faulty calls to judge, and the next one ends at most two intervals
//! after the onset. The broker closes intervals and flushes anomalies to the store on its timer
//! (ticks at most `2 × TICK` apart); the first flush after an interval's end comes at most
//! `FLUSH + 2 × TICK` after it, since the flush before it was earlier than that end.

mod common;
use common::RunningBroker;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podtap_agent::{Agent, AgentConfig, SendMode, TunnelConfig};
use podtap_cluster::{Cni, PodRef};
use podtap_l7::anomaly::{Anomaly, AnomalyKind, Measure};
use podtap_l7::call::Protocol;
use podtap_l7::store::{CallStore, StoreConfig};
use podtap_testkit::apps::{
    Fault, PacedClient, PacedPlan, PacedReport, PyTlsServer, TimedCall, TlsCert,
};
use podtap_testkit::{lab, pod};
use podtap_tunnel::Oversize;

/// The detector's interval (`anomalies.interval_ms`).
const INTERVAL: Duration = Duration::from_millis(1000);
/// Intervals with traffic a baseline needs (`anomalies.warmup_intervals`).
const WARMUP: u32 = 5;
/// Failed calls an error spike needs (`anomalies.min_errors`).
const MIN_ERRORS: u64 = 3;
/// How far above its baseline a latency spike's p90 must be (`anomalies.min_latency_ms`): far
/// above the scheduling hiccups of a busy two-core machine.
const MIN_LATENCY_MS: f64 = 150.0;
/// How long the slow fault delays each answer.
const SLOW: Duration = Duration::from_millis(500);
/// Requests per second on each edge, and the connections that carry them.
const RATE: f64 = 10.0;
const WORKERS: u32 = 4;
/// The broker's timer period (`TICK` in crates/broker/src/broker.rs).
const TICK: Duration = Duration::from_millis(100);
/// How often the `calls` output writes records and anomalies to the store (`FLUSH_NS` in
/// crates/broker/src/output/calls.rs).
const FLUSH: Duration = Duration::from_secs(1);
/// From a server's answer to the broker's receive: uprobe, ring buffer (read every ~10 ms),
/// tunnel.
const DELIVERY: Duration = Duration::from_millis(200);

const CLIENT: &str = "shop/frontend";
const FAULTY: &str = "shop/cart";
const HEALTHY: &str = "payments/ledger";

/// The documented detection time: from the first faulty answer to the anomaly in the store.
fn detection_bound() -> Duration {
    2 * INTERVAL + FLUSH + 2 * TICK + DELIVERY
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Keeps the agent following its pods while waiting for `check` to give an answer (checked
/// every ~100 ms); `None` once `limit` has passed.
fn poll<T>(
    agent: &mut Agent,
    limit: Duration,
    mut check: impl FnMut(&mut Agent) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = check(agent) {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        agent
            .run(
                &AtomicBool::new(false),
                Some(Instant::now() + Duration::from_millis(100)),
            )
            .unwrap();
    }
}

fn is_spike(a: &Anomaly) -> bool {
    matches!(
        a.kind,
        AnomalyKind::ErrorSpike | AnomalyKind::LatencySpike | AnomalyKind::RateSpike
    )
}

fn on(a: &Anomaly, server: &str) -> bool {
    a.edge.client == CLIENT && a.edge.server == server
}

fn render(anomalies: &[Anomaly]) -> String {
    anomalies
        .iter()
        .map(|a| {
            format!(
                "{:.3} {} {} -> {} {}\n",
                secs(a.at_ns),
                a.kind.as_str(),
                a.edge.client,
                a.edge.server,
                serde_json::to_string(&a.evidence).unwrap_or_default()
            )
        })
        .collect()
}

/// Intervals in which the store has calls of `CLIENT -> server` that started after `since_ns`.
fn intervals_with_calls(store: &CallStore, server: &str, since_ns: u64) -> usize {
    let interval = INTERVAL.as_nanos() as u64;
    store
        .by_edge(CLIENT, server, 100_000)
        .unwrap()
        .iter()
        .filter(|c| c.time_ns > since_ns)
        .map(|c| c.time_ns / interval)
        .collect::<BTreeSet<_>>()
        .len()
}

/// The first spike of `kind` on `CLIENT -> server` for an interval that ended after
/// `after_ns`, and when it was found in the store.
fn wait_for_spike(
    agent: &mut Agent,
    store: &CallStore,
    server: &str,
    kind: AnomalyKind,
    after_ns: u64,
) -> (Anomaly, u64) {
    let found = poll(agent, 4 * detection_bound(), |_| {
        let all = store.anomalies(10_000).unwrap();
        all.into_iter()
            .filter(|a| a.kind == kind && on(a, server) && a.at_ns > after_ns)
            .min_by_key(|a| a.at_ns)
            .map(|a| (a, now_ns()))
    });
    found.unwrap_or_else(|| {
        panic!(
            "no {} on {CLIENT} -> {server} within {:?}; anomalies:\n{}",
            kind.as_str(),
            4 * detection_bound(),
            render(&store.anomalies(10_000).unwrap())
        )
    })
}

/// The client's answers that ended in the interval ending at `end_ns`.
fn in_interval(calls: &[TimedCall], end_ns: u64) -> Vec<TimedCall> {
    let start = end_ns - INTERVAL.as_nanos() as u64;
    calls
        .iter()
        .filter(|c| c.end_ns > start && c.end_ns <= end_ns)
        .copied()
        .collect()
}

/// Checks one measured detection against the bound and prints it for the record.
fn check_detection_time(what: &str, onset_ns: u64, anomaly: &Anomaly, seen_ns: u64) {
    let flagged = Duration::from_nanos(anomaly.at_ns.saturating_sub(onset_ns));
    let stored = Duration::from_nanos(seen_ns.saturating_sub(onset_ns));
    println!(
        "{what}: interval flagged {flagged:?} and stored {stored:?} after the first faulty \
         answer (bound {:?})",
        detection_bound()
    );
    // The detector's part: the interval that ends at most two intervals after the onset.
    assert!(
        flagged <= 2 * INTERVAL + DELIVERY,
        "{what}: the flagged interval ended {flagged:?} after the onset"
    );
    assert!(
        stored <= detection_bound(),
        "{what}: in the store {stored:?} after the onset, bound {:?}",
        detection_bound()
    );
}

#[test]
fn faults_are_flagged_on_their_edge_within_the_documented_time() {
    let mut lab = lab("an", vec![Cni::Calico, Cni::Flannel], 3);
    let host = lab.add_host("broker").unwrap();
    let netns = |r: &str| pod(&lab, r).netns.clone().unwrap();
    let (cart, ledger) = (
        pod(&lab, "shop/cart-1").clone(),
        pod(&lab, "payments/ledger-2").clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::self_signed(dir.path()).unwrap();
    let cart_server =
        PyTlsServer::start(&netns("shop/cart-1"), &dir.path().join("cart"), &cert, 8443).unwrap();
    let ledger_server = PyTlsServer::start(
        &netns("payments/ledger-2"),
        &dir.path().join("ledger"),
        &cert,
        8443,
    )
    .unwrap();

    // The broker: a `calls` output with a detector tuned for a test.
    let store_path = dir.path().join("calls.db");
    let yaml = format!(
        "inventory: {}\npolicies:\n  - name: l7\n    vni: 100\n    outputs:\n      - type: calls\n        store: {}\n        anomalies:\n          interval_ms: {}\n          warmup_intervals: {WARMUP}\n          min_errors: {MIN_ERRORS}\n          min_latency_ms: {MIN_LATENCY_MS}\n",
        lab.inventory_path().display(),
        store_path.display(),
        INTERVAL.as_millis(),
    );
    let broker = RunningBroker::start(&host.netns, &yaml);
    let store = CallStore::open(&store_path, StoreConfig::default()).unwrap();

    // The agent decrypts both servers and sends everything to the broker.
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.inventory_poll = Duration::from_millis(100);
    cfg.selection.pods = vec![
        PodRef::parse("shop/cart-1").unwrap(),
        PodRef::parse("payments/ledger-2").unwrap(),
    ];
    cfg.decrypt = true;
    cfg.tunnel = Some(TunnelConfig {
        endpoint: format!("vxlan://{}:4789", host.ip).parse().unwrap(),
        policy: 100,
        oversize: Oversize::Fragment,
        mode: SendMode::UserSpace,
    });
    let mut agent = Agent::start(cfg, None).unwrap();
    let servers = [cart_server.pid(), ledger_server.pid()];
    poll(&mut agent, Duration::from_secs(10), |agent| {
        let probed = agent.refresh_stats().decrypted?.probed;
        servers
            .iter()
            .all(|pid| probed.iter().any(|p| p.0 == *pid))
            .then_some(())
    })
    .expect("both servers probed");

    // Steady traffic on both edges through the warm-up.
    let plan = |path: &str| PacedPlan::new("GET", path, RATE, WORKERS);
    let faulty = PacedClient::start(
        &netns("shop/frontend-1"),
        &format!("https://{}:8443", cart.ip),
        &plan("/api/cart"),
    )
    .unwrap();
    let healthy = PacedClient::start(
        &netns("shop/frontend-2"),
        &format!("https://{}:8443", ledger.ip),
        &plan("/api/ledger"),
    )
    .unwrap();
    let started_ns = now_ns();
    let warm = (WARMUP + 2) as usize;
    poll(&mut agent, Duration::from_secs(60), |_| {
        (intervals_with_calls(&store, FAULTY, started_ns) >= warm
            && intervals_with_calls(&store, HEALTHY, started_ns) >= warm)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "calls of both edges in {warm} intervals within 60 s; calls: {:?}",
            store.last(5).unwrap()
        )
    });
    // Every call so far is complete and answered 200, on both edges.
    for server in [FAULTY, HEALTHY] {
        let calls = store.by_edge(CLIENT, server, 100_000).unwrap();
        let bad: Vec<_> = calls
            .iter()
            .filter(|c| c.status != Some(200) || c.outcome != "complete" || !c.decrypted)
            .collect();
        assert!(bad.is_empty(), "{server}: {bad:?}");
    }
    let before = store.anomalies(10_000).unwrap();
    assert!(
        !before.iter().any(is_spike),
        "spikes in steady traffic:\n{}",
        render(&before)
    );

    // Phase 1: the cart answers 500.
    let error_ns = now_ns();
    cart_server.set_fault(Fault::Error).unwrap();
    let (error_spike, error_seen_ns) = wait_for_spike(
        &mut agent,
        &store,
        FAULTY,
        AnomalyKind::ErrorSpike,
        error_ns,
    );

    // Back to normal until the store shows a few clean intervals.
    let off_ns = now_ns();
    cart_server.set_fault(Fault::Off).unwrap();
    let recovered_ns = now_ns() + INTERVAL.as_nanos() as u64;
    poll(&mut agent, Duration::from_secs(30), |_| {
        (intervals_with_calls(&store, FAULTY, recovered_ns) >= 3).then_some(())
    })
    .expect("calls after the recovery");

    // Phase 2: the cart answers slowly.
    let slow_ns = now_ns();
    cart_server.set_fault(Fault::Slow(SLOW)).unwrap();
    let (latency_spike, latency_seen_ns) = wait_for_spike(
        &mut agent,
        &store,
        FAULTY,
        AnomalyKind::LatencySpike,
        slow_ns,
    );

    let faulty = faulty.finish().unwrap();
    let healthy = healthy.finish().unwrap();
    // The fault stays on while the clients wind down: the intervals up to here may still
    // (rightly) be flagged.
    let slow_off_ns = now_ns();
    cart_server.set_fault(Fault::Off).unwrap();
    agent.stop().unwrap();
    let stats = broker.stop();
    let anomalies = store.anomalies(10_000).unwrap();
    let all = render(&anomalies);
    println!("{}anomalies:\n{all}", stats.render());

    // The clients saw what was injected, and nothing else went wrong.
    for (name, r) in [("faulty", &faulty), ("healthy", &healthy)] {
        assert!(r.report.errors.is_empty(), "{name}: {:?}", r.report.errors);
    }
    assert_eq!(
        healthy.report.count("GET", "/api/ledger", 200),
        healthy.report.total()
    );
    let error_onset =
        first(&faulty, |c| c.start_ns > error_ns && c.status == 500).expect("the client got 500s");
    let slow_onset = first(&faulty, |c| c.start_ns > slow_ns && c.latency() >= SLOW)
        .expect("the client got slow answers");

    // Detection times.
    check_detection_time(
        "error spike",
        error_onset.end_ns,
        &error_spike,
        error_seen_ns,
    );
    check_detection_time(
        "latency spike",
        slow_onset.end_ns,
        &latency_spike,
        latency_seen_ns,
    );

    // Only the faulty edge, only while faulty, only the injected kind.
    let interval_ns = INTERVAL.as_nanos() as u64;
    for a in anomalies.iter().filter(|a| is_spike(a)) {
        let expected = on(a, FAULTY)
            && a.edge.protocol == Protocol::Http1
            && match a.kind {
                AnomalyKind::ErrorSpike => {
                    a.at_ns > error_ns && a.at_ns <= off_ns + 2 * interval_ns
                }
                AnomalyKind::LatencySpike => {
                    a.at_ns > slow_ns && a.at_ns <= slow_off_ns + 2 * interval_ns
                }
                AnomalyKind::RateSpike => false,
                _ => unreachable!(),
            };
        assert!(
            expected,
            "unexpected spike {:?} on {:?}:\n{all}",
            a.kind, a.edge
        );
    }

    // The error spike's evidence: a baseline of (nearly) no errors (it may have learned the
    // fault's first interval, when that held fewer than `min_errors` failures), the interval's
    // failed calls are the client's 500s of that interval, and the examples are those calls.
    let e = &error_spike.evidence;
    let seen = in_interval(&faulty.calls, error_spike.at_ns);
    let failed = seen.iter().filter(|c| c.status == 500).count() as u64;
    assert_eq!(e.measure, Measure::ErrorRatio);
    assert!(e.baseline_mean < 0.1, "{e:?}");
    assert!(e.observed > e.threshold && e.errors >= MIN_ERRORS, "{e:?}");
    assert!(
        e.errors.abs_diff(failed) <= 2 && e.calls.abs_diff(seen.len() as u64) <= 2,
        "evidence {}/{} calls failed, the client saw {failed}/{} in that interval",
        e.errors,
        e.calls,
        seen.len()
    );
    assert!(
        (e.observed - failed as f64 / seen.len().max(1) as f64).abs() < 0.25,
        "{e:?}"
    );
    assert!(!e.examples.is_empty(), "{e:?}");
    for x in &e.examples {
        assert_eq!(
            (x.method.as_str(), x.path.as_str(), x.status),
            ("GET", "/api/cart", Some(500)),
            "{e:?}"
        );
    }

    // The latency spike's evidence: p90 near the injected delay, far above a baseline of fast
    // answers, and the slowest calls as examples.
    let e = &latency_spike.evidence;
    let slow_ms = SLOW.as_secs_f64() * 1000.0;
    assert_eq!(e.measure, Measure::LatencyP90Ms);
    assert!(e.baseline_mean < slow_ms / 5.0, "{e:?}");
    assert!(e.observed > e.threshold, "{e:?}");
    assert!(
        e.observed >= slow_ms * 0.9 && e.observed < slow_ms * 3.0,
        "p90 {} ms for a {slow_ms} ms delay",
        e.observed
    );
    assert!(e.threshold >= e.baseline_mean + MIN_LATENCY_MS, "{e:?}");
    assert!(!e.examples.is_empty(), "{e:?}");
    for x in &e.examples {
        assert_eq!(
            (x.path.as_str(), x.status),
            ("/api/cart", Some(200)),
            "{e:?}"
        );
    }
    // Slowest first; the slowest was delayed (an interval with fewer slow calls than examples,
    // the fault's first one, also quotes fast calls).
    let latencies: Vec<f64> = e.examples.iter().filter_map(|x| x.latency_ms).collect();
    assert_eq!(latencies.len(), e.examples.len(), "{e:?}");
    assert!(latencies.windows(2).all(|w| w[0] >= w[1]), "{e:?}");
    assert!(latencies[0] >= slow_ms * 0.95, "{e:?}");
}

/// The first answer (by arrival) that `pick` accepts.
fn first(report: &PacedReport, pick: impl Fn(&TimedCall) -> bool) -> Option<TimedCall> {
    report
        .calls
        .iter()
        .filter(|c| pick(c))
        .min_by_key(|c| c.end_ns)
        .copied()
}
