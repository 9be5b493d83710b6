//! The broker's Prometheus metrics: what was received and skipped, and for every policy what
//! each stage kept and dropped (by reason) and what each output wrote or failed.

use std::sync::{Arc, Mutex};

use podtap_metrics::prometheus_client::collector::Collector;
use podtap_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use podtap_metrics::prometheus_client::metrics::counter::ConstCounter;

use crate::broker::BrokerStats;

/// Stats shared between the broker loop (writer) and the endpoint (reader).
pub type SharedStats = Arc<Mutex<BrokerStats>>;

#[derive(Debug)]
struct BrokerCollector(SharedStats);

/// Writes one counter family: `rows` are label sets and values.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[([(&'static str, &str); N], u64)],
) -> Result<(), std::fmt::Error> {
    let kind = ConstCounter::new(0u64);
    let mut f = encoder.encode_descriptor(name, help, None, kind.metric_type())?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(f.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        family::<0>(
            &mut encoder,
            "podtap_broker_received_packets",
            "Well-formed tunnel packets received",
            &[([], s.received.packets)],
        )?;
        family::<0>(
            &mut encoder,
            "podtap_broker_received_bytes",
            "Bytes of the frames they carried",
            &[([], s.received.bytes)],
        )?;
        family::<0>(
            &mut encoder,
            "podtap_broker_socket_dropped_packets",
            "Tunnel packets the kernel dropped because the broker's socket buffers were full",
            &[([], s.received.socket_dropped)],
        )?;
        let unusable: Vec<_> = s
            .received
            .malformed
            .iter()
            .map(|(r, v)| ([("reason", *r)], *v))
            .collect();
        family(
            &mut encoder,
            "podtap_broker_unusable_packets",
            "Packets on the tunnel ports that are not usable, by reason",
            &unusable,
        )?;
        let unmatched: Vec<_> = s
            .unmatched
            .iter()
            .map(|(r, v)| ([("reason", *r)], *v))
            .collect();
        family(
            &mut encoder,
            "podtap_broker_unmatched_packets",
            "Tunnel packets for no policy, by reason",
            &unmatched,
        )?;

        let mut received = Vec::new();
        let mut kept = Vec::new();
        let mut stage_in = Vec::new();
        let mut stage_drop = Vec::new();
        let mut out_packets = Vec::new();
        let mut out_bytes = Vec::new();
        let mut out_fail = Vec::new();
        let mut out_events = Vec::new();
        let stage_names: Vec<Vec<String>> = s
            .policies
            .iter()
            .map(|p| {
                p.stages
                    .iter()
                    .enumerate()
                    .map(|(i, st)| format!("{i}:{}", st.kind))
                    .collect()
            })
            .collect();
        let output_names: Vec<Vec<String>> = s
            .policies
            .iter()
            .map(|p| {
                p.outputs
                    .iter()
                    .enumerate()
                    .map(|(i, o)| format!("{i}:{}", o.kind))
                    .collect()
            })
            .collect();
        for (pi, p) in s.policies.iter().enumerate() {
            let policy = p.name.as_str();
            received.push(([("policy", policy)], p.received));
            kept.push(([("policy", policy)], p.kept));
            for (si, st) in p.stages.iter().enumerate() {
                let stage = stage_names[pi][si].as_str();
                stage_in.push(([("policy", policy), ("stage", stage)], st.received));
                for (reason, v) in &st.dropped {
                    stage_drop.push((
                        [("policy", policy), ("stage", stage), ("reason", *reason)],
                        *v,
                    ));
                }
            }
            for (oi, o) in p.outputs.iter().enumerate() {
                let output = output_names[pi][oi].as_str();
                out_packets.push(([("policy", policy), ("output", output)], o.packets));
                out_bytes.push(([("policy", policy), ("output", output)], o.bytes));
                for (reason, v) in &o.errors {
                    out_fail.push((
                        [("policy", policy), ("output", output), ("reason", *reason)],
                        *v,
                    ));
                }
                if let Some(f) = p.output_failures.get(oi).copied().filter(|f| *f > 0) {
                    out_fail.push((
                        [("policy", policy), ("output", output), ("reason", "write")],
                        f,
                    ));
                }
                for (event, v) in &o.extra {
                    out_events.push((
                        [("policy", policy), ("output", output), ("event", *event)],
                        *v,
                    ));
                }
            }
        }
        family(
            &mut encoder,
            "podtap_policy_received_packets",
            "Packets that reached the policy",
            &received,
        )?;
        family(
            &mut encoder,
            "podtap_policy_kept_packets",
            "Packets the policy's stages kept",
            &kept,
        )?;
        family(
            &mut encoder,
            "podtap_stage_received_packets",
            "Packets that reached the stage",
            &stage_in,
        )?;
        family(
            &mut encoder,
            "podtap_stage_dropped_packets",
            "Packets the stage dropped, by reason",
            &stage_drop,
        )?;
        family(
            &mut encoder,
            "podtap_output_packets",
            "Packets handed to the output",
            &out_packets,
        )?;
        family(
            &mut encoder,
            "podtap_output_bytes",
            "Bytes handed to the output",
            &out_bytes,
        )?;
        family(
            &mut encoder,
            "podtap_output_failed_packets",
            "Packets the output could not deliver, by reason",
            &out_fail,
        )?;
        family(
            &mut encoder,
            "podtap_output_events",
            "Output events: files written or deleted, flows exported, ...",
            &out_events,
        )?;
        Ok(())
    }
}

/// Renders the stats in the Prometheus text format.
/// The service maps of `calls` outputs follow the broker's own families (one text, one
/// `# EOF`); with several `calls` outputs only the first one's map is exported, since their
/// families would collide.
pub fn render(stats: &SharedStats) -> String {
    let mut text = podtap_metrics::render(BrokerCollector(stats.clone()));
    let first_map = stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .service_maps
        .first()
        .map(|(_, m)| m.clone());
    if let Some(map) = first_map
        && let Some(head) = text.strip_suffix("# EOF\n")
    {
        text = format!("{head}{}", podtap_metrics::render(map));
    }
    text
}
