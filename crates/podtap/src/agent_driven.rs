//! `podtap agent --controller`: the agent as the controller drives it. The fabric session runs
//! on a small tokio runtime; this thread applies each desired state to the taps, retries pods
//! whose veth was not found yet, and hands the report to the session.

use std::net::{IpAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use podtap_agent::driven::{Desired, DrivenAgent, DrivenConfig, PodTap, PolicyTap, Report};
use podtap_agent::metrics;
use podtap_agent::routes::Directions;
use podtap_cluster::PodRef;
use podtap_controller::member::{AgentRole, Member};
use podtap_controller::proto;
use podtap_controller::tls;
use podtap_tunnel::TunnelEndpoint;

use crate::agent_cmd::AgentArgs;

/// How often pods not tapped for a passing reason (veth not found yet) are tried again, and
/// tapped veths checked for being re-created.
const RETRY: Duration = Duration::from_secs(2);
/// How often the report handed to the session is refreshed.
const REFRESH: Duration = Duration::from_millis(500);

/// Runs the agent for one node, driven by the controller at `url`.
pub fn run(url: String, args: AgentArgs) -> anyhow::Result<()> {
    let node = match args.nodes.as_slice() {
        [n] => n.clone(),
        [] => bail!("--controller needs --node NAME (the node this agent runs on)"),
        _ => bail!("--controller serves one node: give --node once"),
    };
    tls::client_config(&args.tls_dir, "agent")
        .with_context(|| format!("the agent's certificates in {}", args.tls_dir.display()))?;
    let listener = match args.metrics {
        Some(addr) => {
            Some(TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?)
        }
        None => None,
    };
    let stop = crate::stop_on_signals()?;
    let rt = crate::fabric_runtime()?;

    let mut agent = DrivenAgent::start(DrivenConfig {
        node: node.clone(),
        snaplen: args.snaplen,
        ring_bytes: args.ring_size,
        gso: args.gso,
        attach: args.attach,
        oversize: args.oversize,
    })?;
    if let Some(l) = listener {
        let addr = l.local_addr()?;
        metrics::serve(l, agent.shared_stats()).context("starting the metrics endpoint")?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let mut member = Member::<AgentRole>::start(
        rt.handle(),
        url.clone(),
        args.tls_dir.clone(),
        to_report(&node, &Report::default()),
    );
    tracing::info!("agent of {node}: following the controller at {url}");

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut current: Option<Desired> = None;
    let mut last_check = Instant::now();
    let mut last_refresh = Instant::now();
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(50));
        let changed = member.desired.has_changed().unwrap_or(false);
        if changed {
            let taps = member.desired.borrow_and_update().clone();
            if let Some(taps) = taps {
                current = Some(to_desired(&taps));
            }
        }
        let due = last_check.elapsed() >= RETRY;
        if due {
            last_check = Instant::now();
        }
        let retry = due && (agent.has_retries() || agent.has_stale_taps());
        if let Some(d) = current.as_ref().filter(|_| changed || retry) {
            if let Err(e) = agent.apply(d) {
                result = Err(e.into());
                break;
            }
            member.report(to_report(&node, &agent.report()));
        }
        if last_refresh.elapsed() >= REFRESH {
            last_refresh = Instant::now();
            agent.refresh_stats();
            member.report(to_report(&node, &agent.report()));
        }
    }
    rt.block_on(member.stop());
    let stats = agent.stop()?;
    print!("{}", stats.render(None));
    result
}

/// The controller's NodeTaps in the agent's terms. A broker endpoint that does not parse
/// leaves its slots without a broker (their copies are counted lost).
fn to_desired(t: &proto::NodeTaps) -> Desired {
    let table = t.brokers.clone().unwrap_or_default();
    let mut brokers = Vec::new();
    let mut index = Vec::new();
    for b in &table.brokers {
        match b.endpoint.parse::<TunnelEndpoint>() {
            Ok(ep) => {
                index.push(brokers.len() as u32);
                brokers.push(ep);
            }
            Err(e) => {
                tracing::warn!(broker = %b.name, "{e}");
                index.push(u32::MAX);
            }
        }
    }
    let slots = table
        .slots
        .iter()
        .map(|&s| index.get(s as usize).copied().unwrap_or(u32::MAX))
        .collect();
    let policies = t
        .policies
        .iter()
        .map(|p| PolicyTap {
            name: p.name.clone(),
            vni: p.vni,
            directions: match proto::Direction::try_from(p.direction) {
                Ok(proto::Direction::FromPod) => Directions::FromPod,
                Ok(proto::Direction::ToPod) => Directions::ToPod,
                _ => Directions::Both,
            },
            prefilter: p.prefilter.clone(),
        })
        .collect();
    let pods = t
        .pods
        .iter()
        .map(|p| PodTap {
            pod: PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            ip: p.ip.parse::<IpAddr>().ok(),
            tap_id: u16::try_from(p.tap_id).unwrap_or(0),
            vnis: p.vnis.clone(),
            host_network: p.host_network,
        })
        .collect();
    Desired {
        generation: t.generation,
        policies,
        pods,
        brokers,
        slots,
    }
}

fn to_report(node: &str, r: &Report) -> proto::AgentReport {
    proto::AgentReport {
        node: node.to_string(),
        applied_generation: r.applied_generation,
        pods: r
            .pods
            .iter()
            .map(|p| proto::PodState {
                namespace: p.pod.namespace.clone(),
                name: p.pod.name.clone(),
                tapped: p.tapped,
                reason: p.reason.clone(),
                message: p.message.clone(),
            })
            .collect(),
        counters: r
            .counters
            .iter()
            .map(|c| proto::PolicyCounters {
                vni: c.vni,
                copied_packets: c.copied,
                dropped_packets: c.dropped,
            })
            .collect(),
    }
}
