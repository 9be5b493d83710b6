//! Any bytes as an Ethernet frame through every pipeline stage: nothing panics, the layer
//! offsets stay within the frame, a slice only shortens, a mask keeps the length and
//! `original_len`. Run with `cargo +nightly fuzz run stages` in `crates/broker/fuzz`.
#![no_main]

use std::net::IpAddr;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use podtap_broker::pipeline::dedupe::{DedupeConfig, IgnoredField};
use podtap_broker::pipeline::filter::{FilterConfig, PortSpec, TcpFlagsMatch};
use podtap_broker::pipeline::mask::{MaskConfig, MaskFrom, MaskRange};
use podtap_broker::pipeline::sample::{SampleBy, SampleConfig};
use podtap_broker::pipeline::slice::{Layers, SliceAfter, SliceConfig};
use podtap_broker::pipeline::{Stage, StageConfig};
use podtap_broker::{Direction, Frame, Packet, Source};

fn build_stages() -> Vec<Stage> {
    let mut configs = vec![
        StageConfig::Filter(FilterConfig {
            expression: Some("tcp port 80 or udp or vlan or ip6 or arp".into()),
            ..FilterConfig::default()
        }),
        StageConfig::Filter(FilterConfig {
            vlan: [1].into(),
            cidr: ["10.0.0.0/8".to_string(), "2001:db8::/32".to_string()].into(),
            port: [PortSpec::Range("0-1024".into())].into(),
            tcp_flags: Some(TcpFlagsMatch {
                set: ["syn".to_string()].into(),
                unset: ["ack".to_string()].into(),
            }),
            ..FilterConfig::default()
        }),
        StageConfig::Dedupe(DedupeConfig {
            window_ms: 1,
            capacity: 16,
            ignore: vec![
                IgnoredField::IpId,
                IgnoredField::Dscp,
                IgnoredField::Ecn,
                IgnoredField::L4Checksum,
            ],
        }),
        StageConfig::Mask(MaskConfig {
            ranges: [
                MaskFrom::Frame,
                MaskFrom::Ip,
                MaskFrom::Transport,
                MaskFrom::Payload,
            ]
            .into_iter()
            .map(|from| MaskRange {
                offset: 2,
                length: 3,
                from,
            })
            .collect(),
            patterns: vec!["(?i)authorization: [^\r\n]*".into()],
            fill: 0,
        }),
        StageConfig::Sample(SampleConfig {
            one_in: 3,
            by: SampleBy::Flow,
            max_pps: Some(5),
            burst: None,
        }),
    ];
    for after in [SliceAfter::Ethernet, SliceAfter::Ip, SliceAfter::Transport] {
        configs.push(StageConfig::Slice(SliceConfig { length: 1, after }));
    }
    configs.iter().map(|c| c.build().expect("valid")).collect()
}

static STAGES: Mutex<Vec<Stage>> = Mutex::new(Vec::new());

fuzz_target!(|data: &[u8]| {
    let layers = Layers::parse(data);
    assert!(layers.end <= data.len());
    for at in [
        layers.network,
        layers.ip_payload,
        layers.transport,
        layers.payload,
    ]
    .into_iter()
    .flatten()
    {
        assert!(at <= layers.end);
    }
    let mut stages = STAGES.lock().unwrap();
    if stages.is_empty() {
        *stages = build_stages();
    }
    for (i, stage) in stages.iter_mut().enumerate() {
        let mut pkt = Packet {
            timestamp_ns: data.len() as u64 * 100_000,
            data: Frame::borrowed(data, Vec::new()),
            original_len: data.len() as u32,
            source: Source {
                policy: 0,
                tap: i as u16,
                direction: Direction::Unknown,
                agent: IpAddr::from([0, 0, 0, 0]),
            },
        };
        stage.process(&mut pkt);
        assert!(pkt.data.len() <= data.len());
        assert_eq!(pkt.original_len as usize, data.len());
        if matches!(stage, Stage::Mask(_)) {
            assert_eq!(pkt.data.len(), data.len());
        }
    }
});
