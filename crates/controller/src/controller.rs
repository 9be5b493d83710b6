//! The reconcile loop: whenever the source or the fabric changes (and at least every half
//! heartbeat, for liveness), plan from the whole view, publish each member's part, and write
//! every policy status that changed. Level-triggered: each pass starts from the full state, so
//! a missed event costs nothing but latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podtap_api::TapPolicyStatus;

use crate::fabric::Fabric;
use crate::plan::{Planner, PolicyPlan};
use crate::source::Source;
use crate::status::policy_status;

/// A status that differs from the last written one only in its counters is written at most
/// this often (counters change with every heartbeat).
pub const COUNTER_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the loop until `stop` resolves.
pub async fn run(
    mut source: Source,
    fabric: Fabric,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut planner = Planner::default();
    let mut written: BTreeMap<String, (TapPolicyStatus, Instant)> = BTreeMap::new();
    let tick = fabric.timing().heartbeat / 2;
    let mut stop = std::pin::pin!(stop);
    loop {
        let now = Instant::now();
        let view = source.view();
        let plan = planner.plan(&view, &fabric.live_brokers(now));
        fabric.publish(&plan);
        let health = fabric.health(now);

        let mut policies = plan.policies.clone();
        for (name, why) in source.unreadable() {
            policies.entry(name).or_insert_with(|| PolicyPlan {
                problems: vec![why],
                ..PolicyPlan::default()
            });
        }
        let current = source.statuses();
        let time = Time(k8s_openapi::jiff::Timestamp::now());
        for (name, pp) in &policies {
            let previous = current.get(name);
            let status = policy_status(pp, &health, previous, &time);
            if previous == Some(&status) {
                continue;
            }
            let counters_only = previous.is_some_and(|p| same_but_counters(p, &status));
            if counters_only
                && written
                    .get(name)
                    .is_some_and(|(_, at)| at.elapsed() < COUNTER_WRITE_INTERVAL)
            {
                continue;
            }
            match source.write_status(name, &status).await {
                Ok(()) => {
                    if !counters_only {
                        log_status(name, &status);
                    }
                    written.insert(name.clone(), (status, Instant::now()));
                }
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        written.retain(|name, _| policies.contains_key(name));

        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = source.changed() => {}
            _ = fabric.changed() => {}
            _ = tokio::time::sleep(tick) => {}
        }
        // Let a burst of events (a deployment rolling, many reports) settle into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn same_but_counters(a: &TapPolicyStatus, b: &TapPolicyStatus) -> bool {
    let strip = |s: &TapPolicyStatus| {
        let mut s = s.clone();
        for n in &mut s.nodes {
            n.copied_packets = 0;
            n.dropped_packets = 0;
        }
        s
    };
    strip(a) == strip(b)
}

fn log_status(name: &str, s: &TapPolicyStatus) {
    let cond = |t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| format!("{}={} ({})", t, c.status, c.reason))
            .unwrap_or_default()
    };
    tracing::info!(
        "tappolicy {name}: {} {} {}, {} pod(s) matched{}",
        cond("Accepted"),
        cond("Ready"),
        cond("Degraded"),
        s.matched_pods,
        if s.problems.is_empty() {
            String::new()
        } else {
            format!("; problems: {}", s.problems.join("; "))
        }
    );
}
