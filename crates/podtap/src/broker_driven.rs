//! `podtap broker --controller`: a broker replica whose policies come from the controller.
//! It listens at its `--endpoint`, registers there with the controller (which puts it in the
//! agents' broker table), applies each set of policies it is sent (unchanged policies keep
//! running untouched), and reports its counters per policy and the policies it refused.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use podtap_broker::config::ListenConfig;
use podtap_broker::{Broker, BrokerConfig, PolicyConfig};
use podtap_controller::member::{BrokerRole, Member};
use podtap_controller::{proto, tls};
use podtap_tunnel::TunnelKind;

use crate::broker_cmd::{BrokerArgs, enter_netns};

/// How long the broker runs between looks at the session.
const SLICE: Duration = Duration::from_millis(100);
/// How often the report handed to the session is refreshed.
const REFRESH: Duration = Duration::from_millis(500);

/// Runs the broker replica driven by the controller at `url`.
pub fn run(url: String, args: BrokerArgs) -> anyhow::Result<()> {
    let (Some(name), Some(endpoint)) = (args.name.clone(), args.endpoint) else {
        bail!("--controller needs --name and --endpoint");
    };
    tls::client_config(&args.tls_dir, "broker")
        .with_context(|| format!("the broker's certificates in {}", args.tls_dir.display()))?;
    let data = std::path::absolute(&args.data)
        .with_context(|| format!("data directory {}", args.data.display()))?;
    enter_netns(args.netns.as_deref())?;
    let stop = crate::stop_on_signals()?;
    let rt = crate::fabric_runtime()?;

    let listen = ListenConfig {
        address: endpoint.addr.ip(),
        vxlan_port: match endpoint.kind {
            TunnelKind::Vxlan => endpoint.addr.port(),
            TunnelKind::L2gre => 4789,
        },
        gre: endpoint.kind == TunnelKind::L2gre,
        metrics: args.metrics,
    };
    let mut config = BrokerConfig {
        listen,
        inventory: None,
        policies: Vec::new(),
    };
    let mut broker = Broker::start(config.clone())?;
    if let Some(addr) = args.metrics {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?;
        let stats = broker.shared_stats();
        podtap_metrics::serve(listener, move || podtap_broker::metrics::render(&stats))?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let mut report = proto::BrokerReport {
        name: name.clone(),
        endpoint: endpoint.to_string(),
        ..Default::default()
    };
    let mut member = Member::<BrokerRole>::start(
        rt.handle(),
        url.clone(),
        args.tls_dir.clone(),
        report.clone(),
    );
    tracing::info!("broker {name} at {endpoint}: following the controller at {url}");

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut last_refresh = Instant::now();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        broker.run(&stop, Some(Instant::now() + SLICE));
        if member.desired.has_changed().unwrap_or(false) {
            let sent = member.desired.borrow_and_update().clone();
            if let Some(sent) = sent {
                let (policies, mut problems) = policies(&sent, &data);
                let next = BrokerConfig {
                    policies,
                    ..config.clone()
                };
                match broker.reload(next.clone()) {
                    Ok(changes) => {
                        if !changes.is_empty() {
                            tracing::info!("policies from the controller: {}", changes.join(", "));
                        }
                        config = next;
                        report.applied_generation = sent.generation;
                    }
                    Err(e) => {
                        tracing::error!(
                            "policies from the controller not applied, the running ones stay: {e}"
                        );
                        problems.push(e.to_string());
                    }
                }
                report.problems = problems;
            }
        }
        if last_refresh.elapsed() >= REFRESH {
            last_refresh = Instant::now();
            report.counters = counters(&broker, &config);
            member.report(report.clone());
        }
    }
    rt.block_on(member.stop());
    print!("{}", broker.finish().render());
    Ok(())
}

/// The broker's policies from the controller's, with relative output paths placed under
/// `data`. A policy that does not build or writes outside `data` is left out, with why.
fn policies(sent: &proto::BrokerPolicies, data: &Path) -> (Vec<PolicyConfig>, Vec<String>) {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for p in &sent.policies {
        match podtap_api::broker_policy(&p.name, p.vni, &p.pipeline_json) {
            Ok(mut policy) => {
                let outside = place_under(&mut policy, data);
                if outside.is_empty() {
                    ok.push(policy);
                } else {
                    problems.extend(
                        outside
                            .into_iter()
                            .map(|m| format!("policy {}: {m}", p.name)),
                    );
                }
            }
            Err(ps) => problems.extend(ps.into_iter().map(|m| format!("policy {}: {m}", p.name))),
        }
    }
    (ok, problems)
}

/// Joins relative output paths to `data`; returns the paths that would leave it.
fn place_under(policy: &mut PolicyConfig, data: &Path) -> Vec<String> {
    let mut outside = Vec::new();
    for (i, o) in policy.outputs.iter_mut().enumerate() {
        for path in o.paths_mut() {
            if path.is_relative() {
                *path = data.join(&*path);
            }
            let escapes = path.components().any(|c| c == Component::ParentDir);
            if escapes || !path.starts_with(data) {
                outside.push(format!(
                    "outputs[{i}]: {} is outside the broker's data directory {}",
                    path.display(),
                    data.display()
                ));
            }
        }
    }
    outside
}

/// Per policy: packets received, and packets its outputs failed to take.
fn counters(broker: &Broker, config: &BrokerConfig) -> Vec<proto::PolicyCounters> {
    let vni: BTreeMap<&str, u32> = config
        .policies
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.vni?)))
        .collect();
    broker
        .stats()
        .policies
        .iter()
        .filter_map(|p| {
            Some(proto::PolicyCounters {
                vni: *vni.get(p.name.as_str())?,
                copied_packets: p.received,
                dropped_packets: p.output_failures.iter().sum(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(pipeline: &str) -> proto::BrokerPolicies {
        proto::BrokerPolicies {
            generation: 1,
            policies: vec![proto::BrokerPolicy {
                name: "carts".into(),
                vni: 7,
                pipeline_json: pipeline.into(),
            }],
            heartbeat_ms: 100,
        }
    }

    #[test]
    fn relative_paths_go_under_the_data_directory() {
        let data = Path::new("/var/lib/podtap");
        let (ok, problems) = policies(
            &sent(r#"{"outputs":[{"type":"pcap","directory":"carts"}]}"#),
            data,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let yaml = serde_yaml_ng::to_string(&ok[0]).unwrap();
        assert!(yaml.contains("directory: /var/lib/podtap/carts"), "{yaml}");
        assert_eq!((ok[0].vni, ok[0].gre_key), (Some(7), Some(7)));
    }

    #[test]
    fn a_policy_cannot_write_outside_the_data_directory() {
        let data = Path::new("/var/lib/podtap");
        for dir in ["/etc", "../etc", "/var/lib/podtap/../../etc"] {
            let pipeline = format!(r#"{{"outputs":[{{"type":"pcap","directory":"{dir}"}}]}}"#);
            let (ok, problems) = policies(&sent(&pipeline), data);
            assert!(ok.is_empty(), "{dir}");
            assert!(
                problems[0].contains("outside the broker's data directory"),
                "{problems:?}"
            );
        }
        let (ok, problems) = policies(&sent(r#"{"outputs":[]}"#), data);
        assert!(
            ok.is_empty() && problems[0].contains("at least one output"),
            "{problems:?}"
        );
    }
}
