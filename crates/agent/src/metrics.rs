//! The Prometheus `/metrics` endpoint: the agent's [`Stats`] in the text exposition format,
//! served by a small HTTP server on its own thread.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use podtap_metrics::prometheus_client::collector::Collector;
use podtap_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use podtap_metrics::prometheus_client::metrics::counter::ConstCounter;
use podtap_metrics::prometheus_client::metrics::gauge::ConstGauge;

use crate::stats::{DIRECTIONS, Stats};

/// Stats shared between the agent loop (writer) and the endpoint (reader).
pub type SharedStats = Arc<Mutex<Stats>>;

#[derive(Debug)]
struct StatsCollector(SharedStats);

type Labels<'a> = [(&'static str, &'a str); 4];

/// Reads one per-pod counter for one direction.
type PodCounter = fn(&crate::stats::PodStats, usize) -> u64;

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let per_pod: [(&str, &str, PodCounter); 11] = [
            (
                "podtap_tap_excluded_packets",
                "Packets not copied because they are podtap tunnel traffic",
                |p, d| p.kernel[d].excluded,
            ),
            (
                "podtap_tap_redirected_copies",
                "Copies sent to the broker in the kernel",
                |p, d| p.kernel[d].redirected,
            ),
            (
                "podtap_tap_redirect_failed_copies",
                "In-kernel copies the kernel refused",
                |p, d| p.kernel[d].redirect_failed,
            ),
            (
                "podtap_tap_packets",
                "Wire packets seen on the pod's veth",
                |p, d| p.kernel[d].packets,
            ),
            (
                "podtap_tap_bytes",
                "Bytes seen on the pod's veth",
                |p, d| p.kernel[d].bytes,
            ),
            (
                "podtap_tap_filtered_packets",
                "Packets the in-kernel prefilter skipped",
                |p, d| p.kernel[d].filtered,
            ),
            (
                "podtap_tap_dropped_ring_full_packets",
                "Copies lost because the ring buffer was full",
                |p, d| p.kernel[d].ring_full,
            ),
            (
                "podtap_tap_dropped_unreadable_packets",
                "Copies lost because the packet could not be read",
                |p, d| p.kernel[d].load_failed,
            ),
            (
                "podtap_tap_truncated_copies",
                "Copies cut at the snap length",
                |p, d| p.kernel[d].truncated,
            ),
            (
                "podtap_tap_gso_super_packets",
                "GSO super-packets seen",
                |p, d| p.kernel[d].gso,
            ),
            (
                "podtap_output_packets",
                "Packets written to the output",
                |p, d| p.output[d].packets,
            ),
        ];
        for (name, help, get) in per_pod {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for p in &stats.pods {
                let (ns, pod) = (p.pod.namespace.as_str(), p.pod.name.as_str());
                for (d, dir) in DIRECTIONS.iter().enumerate() {
                    let labels: Labels = [
                        ("namespace", ns),
                        ("pod", pod),
                        ("node", &p.node),
                        ("direction", dir),
                    ];
                    ConstCounter::new(get(p, d)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let errors = [
            ("malformed_record", stats.output_errors.malformed_records),
            ("unknown_veth", stats.output_errors.unknown_interface),
        ];
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "podtap_output_record_errors",
            "Ring records the output could not use, by reason",
            None,
            counter.metric_type(),
        )?;
        for (reason, v) in errors {
            ConstCounter::new(v).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        if let Some(t) = &stats.tunnel {
            for (name, help, v) in [
                (
                    "podtap_tunnel_sent_copies",
                    "Copies sent to the broker from user space",
                    t.packets,
                ),
                (
                    "podtap_tunnel_fragmented_copies",
                    "Copies larger than the path MTU, sent fragmented",
                    t.fragmented,
                ),
                (
                    "podtap_tunnel_truncated_copies",
                    "Copies cut to fit the path MTU",
                    t.truncated,
                ),
                (
                    "podtap_tunnel_lost_copies",
                    "Copies the kernel refused to send",
                    t.errors,
                ),
            ] {
                let c = ConstCounter::new(v);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
        }
        let tapped = stats.pods.iter().filter(|p| p.tapped).count() as i64;
        let gauge = ConstGauge::new(tapped);
        gauge.encode(encoder.encode_descriptor(
            "podtap_tapped_pods",
            "Pods tapped now",
            None,
            gauge.metric_type(),
        )?)?;
        let failed = ConstGauge::new(stats.failures.len() as i64);
        failed.encode(encoder.encode_descriptor(
            "podtap_untappable_pods",
            "Pods selected but not tapped",
            None,
            failed.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Renders the stats in the Prometheus text format.
pub fn render(stats: &SharedStats) -> String {
    podtap_metrics::render(StatsCollector(stats.clone()))
}

/// Serves `GET /metrics` on `listener` from a background thread until the process ends.
pub fn serve(listener: TcpListener, stats: SharedStats) -> std::io::Result<()> {
    podtap_metrics::serve(listener, move || render(&stats))
}
