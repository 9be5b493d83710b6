//! Replaying a capture through a policy: every frame of a pcap or a pcapng reaches the policy
//! in order, with its timestamp and (pcapng) direction, and what the stages keep is written.

use std::path::Path;
use std::time::Duration;

use podtap_broker::{Broker, BrokerConfig};
use podtap_testkit::read_pcapng;
use podtap_wire::pcapng::{Direction, InterfaceDescription, PcapngWriter};

/// Ethernet/IPv4/UDP frames; every third one to port 53.
fn frames(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let port = if i % 3 == 0 { 53 } else { 9000 };
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, port)
                .write(&mut f, &[i as u8; 40])
                .unwrap();
            f
        })
        .collect()
}

fn config(out: &Path) -> BrokerConfig {
    let yaml = format!(
        "policies:\n  - name: dns\n    vni: 1\n    stages:\n      - type: filter\n        expression: \"udp port 53\"\n    outputs:\n      - type: pcap\n        directory: {}\n",
        out.display()
    );
    BrokerConfig::parse(&yaml, Path::new("t.yaml")).unwrap()
}

fn written(dir: &Path) -> Vec<podtap_testkit::Captured> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_pcapng(f)).collect()
}

#[test]
fn a_pcap_replays_every_frame_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let f = std::fs::File::create(&input).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(f).unwrap();
    let all = frames(300);
    for (i, frame) in all.iter().enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(
            ts,
            frame.len() as u32,
            frame,
        ))
        .unwrap();
    }
    drop(w);
    let out = dir.path().join("out");
    let mut broker = Broker::offline(config(&out)).unwrap();
    let n = podtap_broker::replay::replay(&mut broker, 0, &input).unwrap();
    let stats = broker.finish();
    assert_eq!(n, 300);
    assert_eq!(
        (stats.policies[0].received, stats.policies[0].kept),
        (300, 100)
    );
    let got: Vec<Vec<u8>> = written(&out).into_iter().map(|c| c.data).collect();
    let want: Vec<Vec<u8>> = all.into_iter().step_by(3).collect();
    assert!(got == want, "the kept frames, in order");
}

#[test]
fn a_pcapng_keeps_directions_and_a_bad_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcapng");
    let mut w = PcapngWriter::new(std::fs::File::create(&input).unwrap(), "test").unwrap();
    let id = w
        .add_interface(&InterfaceDescription {
            name: "shop/cart-1",
            description: "",
            snaplen: 0,
            link_type: 1,
        })
        .unwrap();
    for (i, frame) in frames(30).iter().enumerate() {
        let dir = if i % 2 == 0 {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        w.write_packet(
            id,
            1_700_000_000_000_000_000 + i as u64 * 1_000_000,
            frame.len() as u32,
            frame,
            dir,
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let out = dir.path().join("out");
    let mut broker = Broker::offline(config(&out)).unwrap();
    assert_eq!(
        podtap_broker::replay::replay(&mut broker, 0, &input).unwrap(),
        30
    );
    broker.finish();
    let got = written(&out);
    assert_eq!(got.len(), 10);
    // Frames 0, 3, 6, ... alternate between to the pod (inbound) and from it (outbound).
    let dirs: Vec<u32> = got.iter().map(|c| c.direction).collect();
    assert_eq!(dirs, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);

    let bad = dir.path().join("bad.pcap");
    std::fs::write(&bad, b"not a capture at all").unwrap();
    let mut broker = Broker::offline(config(&dir.path().join("o2"))).unwrap();
    let err = podtap_broker::replay::replay(&mut broker, 0, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.pcap"), "{err}");
}
