//! Reloading a configuration: unchanged policies keep running untouched (their counters, their
//! open files), changed ones are rebuilt, removed ones finished, and a bad configuration
//! changes nothing.

use std::net::IpAddr;
use std::path::Path;

use podtap_broker::{Broker, BrokerConfig, Direction, Source};

fn config(dir: &Path, b_slice: u32) -> BrokerConfig {
    let yaml = format!(
        "policies:\n  - name: a\n    vni: 1\n    outputs:\n      - type: pcap\n        directory: {a}\n  - name: b\n    vni: 2\n    stages:\n      - type: slice\n        length: {b_slice}\n    outputs:\n      - type: pcap\n        directory: {b}\n",
        a = dir.join("a").display(),
        b = dir.join("b").display()
    );
    BrokerConfig::parse(&yaml, Path::new("t.yaml")).unwrap()
}

fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 200];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    f
}

fn feed(b: &mut Broker, policy: usize, n: u64, t0: u64) {
    let src = Source {
        policy,
        tap: 1,
        direction: Direction::FromPod,
        agent: IpAddr::from([0, 0, 0, 0]),
    };
    for i in 0..n {
        b.process(src, t0 + i * 1000, &frame());
    }
}

#[test]
fn unchanged_policies_keep_running_changed_ones_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::offline(config(dir.path(), 64)).unwrap();
    feed(&mut b, 0, 10, 1);
    feed(&mut b, 1, 10, 1);

    let changes = b.reload(config(dir.path(), 100)).unwrap();
    assert_eq!(changes, ["rebuilt b"]);
    feed(&mut b, 0, 5, 2_000_000);
    feed(&mut b, 1, 5, 2_000_000);
    let stats = b.stats();
    // a kept its counters and its file; b started afresh.
    assert_eq!(
        (stats.policies[0].name.as_str(), stats.policies[0].received),
        ("a", 15)
    );
    assert_eq!(
        stats.policies[0].outputs[0].extra.get("files_written"),
        Some(&0),
        "a's file is still the one it had before the reload"
    );
    assert_eq!(stats.policies[1].received, 5);

    // A bad configuration changes nothing.
    let mut bad = config(dir.path(), 100);
    bad.policies[0].vni = Some(0);
    assert!(b.reload(bad).is_err());
    feed(&mut b, 0, 1, 3_000_000);
    assert_eq!(b.stats().policies[0].received, 16);

    let stats = b.finish();
    // a wrote one file with all 16 packets; b's first file (10, cut at 64) and second (5, at 100).
    let read = |sub: &str| -> Vec<(usize, u32)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                let bytes = std::fs::read(f).unwrap();
                let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
                let mut v = Vec::new();
                while let Some(b) = r.next_block() {
                    if let pcap_file::pcapng::Block::EnhancedPacket(p) = b.unwrap() {
                        v.push((p.data.len(), p.original_len));
                    }
                }
                v
            })
            .collect()
    };
    assert_eq!(read("a").len(), 16, "{stats:?}");
    let b_packets = read("b");
    assert_eq!(
        b_packets
            .iter()
            .filter(|(len, orig)| *len == 64 && *orig == 200)
            .count(),
        10
    );
    assert_eq!(
        b_packets
            .iter()
            .filter(|(len, orig)| *len == 100 && *orig == 200)
            .count(),
        5
    );

    // Removing a policy finishes it.
    let mut only_a = config(dir.path(), 100);
    only_a.policies.truncate(1);
    let mut b2 = Broker::offline(config(dir.path(), 64)).unwrap();
    assert_eq!(b2.reload(only_a).unwrap(), ["removed b"]);
}

#[test]
fn changing_where_the_broker_listens_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Broker::offline(config(dir.path(), 64)).unwrap();
    let mut moved = config(dir.path(), 64);
    moved.listen.vxlan_port = 4790;
    assert!(b.reload(moved).unwrap_err().to_string().contains("restart"));
}
