//! The `pcap` output judged by what a user sees in the directory: file names, rotation by size
//! and by time, retention, `.part` files, and the files as `pcap-file` and tshark read them.
//!
//! tshark is required: the tshark test fails (never skips) when it is missing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use etherparse::PacketBuilder;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use podtap_broker::output::pcap::{PcapConfig, PcapOutput};
use podtap_broker::output::{Labelled, OutputConfig};
use podtap_broker::{Direction, Packet, Source};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000_000_000;
const SECOND: u64 = 1_000_000_000;

fn config(dir: &Path) -> PcapConfig {
    PcapConfig {
        directory: dir.to_path_buf(),
        prefix: None,
        rotate_bytes: None,
        rotate_seconds: None,
        keep_files: None,
        snaplen: None,
    }
}

/// An Ethernet/IPv4/UDP frame of exactly `len` bytes (at least 42), its payload filled with
/// `fill`.
fn udp_frame(len: usize, fill: u8) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(40000, 53);
    let payload = vec![fill; len - 42];
    let mut frame = Vec::with_capacity(len);
    builder.write(&mut frame, &payload).unwrap();
    assert_eq!(frame.len(), len);
    frame
}

fn packet(
    ts: u64,
    tap: u16,
    direction: Direction,
    data: Vec<u8>,
    original_len: u32,
) -> Packet<'static> {
    Packet {
        timestamp_ns: ts,
        data: data.into(),
        original_len,
        source: Source {
            policy: 0,
            tap,
            direction,
            agent: IpAddr::from([192, 0, 2, 1]),
        },
    }
}

fn write(out: &mut PcapOutput, p: &Packet, pod: Option<&str>) {
    out.write(Labelled { packet: p, pod }).unwrap();
}

/// File names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Complete pcapng files in `dir` whose name starts with `prefix-`, sorted.
fn complete(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".pcapng"))
        .map(|n| dir.join(n))
        .collect()
}

/// A packet as `pcap-file` reads it: interface, timestamp ns, captured bytes, original length,
/// `epb_flags`.
type ReadPacket = (u32, u64, Vec<u8>, u32, Option<u32>);

/// What `pcap-file` reads from a file.
struct ReadBack {
    /// (if_name, if_description, snaplen) per interface.
    interfaces: Vec<(String, String, u32)>,
    /// Its packets.
    packets: Vec<ReadPacket>,
}

fn read_back(path: &Path) -> ReadBack {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = PcapNgReader::new(&bytes[..]).unwrap();
    let mut back = ReadBack {
        interfaces: Vec::new(),
        packets: Vec::new(),
    };
    while let Some(block) = reader.next_block() {
        match block.unwrap() {
            Block::InterfaceDescription(idb) => {
                let mut name = String::new();
                let mut description = String::new();
                for o in &idb.options {
                    match o {
                        InterfaceDescriptionOption::IfName(n) => name = n.to_string(),
                        InterfaceDescriptionOption::IfDescription(d) => description = d.to_string(),
                        _ => {}
                    }
                }
                back.interfaces.push((name, description, idb.snaplen));
            }
            Block::EnhancedPacket(epb) => {
                let flags = epb.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Flags(f) => Some(*f),
                    _ => None,
                });
                back.packets.push((
                    epb.interface_id,
                    epb.timestamp.as_nanos() as u64,
                    epb.data.to_vec(),
                    epb.original_len,
                    flags,
                ));
            }
            other => panic!("unexpected block {other:?}"),
        }
    }
    back
}

#[test]
fn yaml_defaults_and_unknown_fields() {
    let cfg: OutputConfig = serde_yaml_ng::from_str("type: pcap\ndirectory: /tmp/x\n").unwrap();
    let OutputConfig::Pcap(cfg) = cfg else {
        panic!("not pcap: {cfg:?}");
    };
    assert_eq!(cfg, config(Path::new("/tmp/x")));
    assert!(cfg.problems().is_empty());

    let full = "type: pcap\ndirectory: d\nprefix: p\nrotate_bytes: 100000000\n\
                rotate_seconds: 300\nkeep_files: 5\nsnaplen: 128\n";
    let OutputConfig::Pcap(cfg) = serde_yaml_ng::from_str(full).unwrap() else {
        panic!("not pcap");
    };
    assert_eq!(
        (
            cfg.prefix.as_deref(),
            cfg.rotate_bytes,
            cfg.rotate_seconds,
            cfg.keep_files,
            cfg.snaplen
        ),
        (Some("p"), Some(100_000_000), Some(300), Some(5), Some(128))
    );

    let err = serde_yaml_ng::from_str::<OutputConfig>("type: pcap\ndirectory: d\nrotate: 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `rotate`"), "{err}");
}

#[test]
fn part_file_is_renamed_when_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("not/yet/there");
    let mut out = PcapOutput::new(&config(&sub), "shop").unwrap();
    assert!(names(&sub).is_empty(), "no file before the first packet");

    write(
        &mut out,
        &packet(T0, 1, Direction::ToPod, udp_frame(60, 1), 60),
        None,
    );
    out.tick(T0 + SECOND).unwrap();
    assert_eq!(names(&sub), ["shop-20231114T221320-000000.pcapng.part"]);

    out.finish().unwrap();
    assert_eq!(names(&sub), ["shop-20231114T221320-000000.pcapng"]);
    assert_eq!(
        read_back(&sub.join("shop-20231114T221320-000000.pcapng"))
            .packets
            .len(),
        1
    );
    let c = out.counters();
    assert_eq!((c.kind, c.packets, c.bytes), ("pcap", 1, 60));
    assert_eq!(c.extra["files_written"], 1);
    assert!(c.errors.is_empty());

    // Finishing twice is harmless; dropping without finish completes the file too.
    out.finish().unwrap();
    write(
        &mut out,
        &packet(T0 + 2 * SECOND, 1, Direction::ToPod, udp_frame(60, 2), 60),
        None,
    );
    drop(out);
    assert_eq!(
        names(&sub),
        [
            "shop-20231114T221320-000000.pcapng",
            "shop-20231114T221322-000001.pcapng"
        ]
    );
}

#[test]
fn rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1_000;
    let mut out = PcapOutput::new(
        &PcapConfig {
            prefix: Some("sized".into()),
            rotate_bytes: Some(limit),
            ..config(dir.path())
        },
        "shop",
    )
    .unwrap();
    let frame = udp_frame(100, 7);
    // An enhanced packet block for a 100-byte frame with direction flags.
    let block = 28 + 100 + 8 + 4 + 4;
    for i in 0..40 {
        write(
            &mut out,
            &packet(T0 + i, 3, Direction::FromPod, frame.clone(), 100),
            None,
        );
    }
    out.finish().unwrap();

    let files = complete(dir.path(), "sized");
    assert_eq!(names(dir.path()).len(), files.len(), "no .part left");
    let mut packets = 0;
    for (i, f) in files.iter().enumerate() {
        assert!(
            f.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(&format!("-{i:06}.pcapng")),
            "{f:?}"
        );
        let size = std::fs::metadata(f).unwrap().len();
        if i + 1 < files.len() {
            assert!(
                (limit..limit + block).contains(&size),
                "file {i} has {size} bytes"
            );
        } else {
            assert!(size <= limit + block, "last file has {size} bytes");
        }
        packets += read_back(f).packets.len();
    }
    assert_eq!(packets, 40);
    // Section header (40) + interface (44) + 6 blocks (144) = 948 < 1000, the 7th crosses.
    assert_eq!(files.len(), 6, "{files:?}");
    assert_eq!(out.counters().extra["files_written"], 6);
}

#[test]
fn rotates_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = PcapOutput::new(
        &PcapConfig {
            rotate_seconds: Some(10),
            ..config(dir.path())
        },
        "shop",
    )
    .unwrap();
    let p = |ts| packet(ts, 1, Direction::ToPod, udp_frame(60, 0), 60);
    write(&mut out, &p(T0), None);
    write(&mut out, &p(T0 + 4 * SECOND), None);
    out.tick(T0 + 9 * SECOND).unwrap();
    assert!(complete(dir.path(), "shop").is_empty(), "not 10 s old yet");

    // The broker loop's tick closes the file even when no packet comes.
    out.tick(T0 + 10 * SECOND).unwrap();
    assert_eq!(names(dir.path()), ["shop-20231114T221320-000000.pcapng"]);
    out.tick(T0 + 20 * SECOND).unwrap();
    assert_eq!(
        out.counters().extra["files_written"],
        1,
        "idle: no new file"
    );

    // The next file is named after its first packet; a packet 10 s after that rotates even
    // before a tick sees it.
    write(&mut out, &p(T0 + 61 * SECOND), None);
    write(&mut out, &p(T0 + 71 * SECOND), None);
    out.finish().unwrap();
    let files = complete(dir.path(), "shop");
    let got: Vec<_> = files
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            (name, read_back(f).packets.len())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("shop-20231114T221320-000000.pcapng".to_string(), 2),
            ("shop-20231114T221421-000001.pcapng".to_string(), 1),
            ("shop-20231114T221431-000002.pcapng".to_string(), 1),
        ]
    );
}

#[test]
fn retention_deletes_exactly_the_oldest_of_this_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Not this output's: another prefix, a longer prefix, other names, a crash leftover.
    let foreign = [
        "other-20200101T000000-000000.pcapng",
        "shop-x-20200101T000000-000000.pcapng",
        "shop-20200101T000000-000009.pcap",
        "notes.txt",
        "shop-20200101T000000-000001.pcapng.part",
    ];
    for f in foreign {
        std::fs::write(d.join(f), b"not mine").unwrap();
    }
    // An earlier run's complete file: this output's oldest.
    std::fs::write(d.join("shop-20200101T000000-000000.pcapng"), b"old").unwrap();

    let mut out = PcapOutput::new(
        &PcapConfig {
            rotate_bytes: Some(1),
            keep_files: Some(3),
            ..config(d)
        },
        "shop",
    )
    .unwrap();
    // rotate_bytes 1: one packet per file. Sequence numbers continue after the .part (1).
    for i in 0..5 {
        write(
            &mut out,
            &packet(
                T0 + i * SECOND,
                1,
                Direction::ToPod,
                udp_frame(60, i as u8),
                60,
            ),
            None,
        );
    }
    out.finish().unwrap();

    let mut expected: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
    expected.extend([
        "shop-20231114T221322-000004.pcapng".to_string(),
        "shop-20231114T221323-000005.pcapng".to_string(),
        "shop-20231114T221324-000006.pcapng".to_string(),
    ]);
    expected.sort();
    assert_eq!(names(d), expected);
    for f in foreign {
        assert_eq!(std::fs::read(d.join(f)).unwrap(), b"not mine");
    }
    let c = out.counters();
    assert_eq!((c.extra["files_written"], c.extra["files_deleted"]), (5, 3));
}

/// Writes the labelled sample used by the read-back tests; returns the file.
fn write_sample(dir: &Path) -> PathBuf {
    let mut out = PcapOutput::new(
        &PcapConfig {
            snaplen: Some(80),
            ..config(dir)
        },
        "shop",
    )
    .unwrap();
    let samples = [
        (7, Direction::FromPod, Some("shop/cart-1"), 100),
        (9, Direction::ToPod, None, 60),
        (7, Direction::ToPod, Some("shop/cart-1"), 200),
        (0, Direction::Unknown, None, 70),
        (9, Direction::FromPod, None, 64),
    ];
    for (i, (tap, direction, pod, len)) in samples.into_iter().enumerate() {
        let mut frame = udp_frame(len, i as u8);
        // As if the agent had cut the 200-byte frame to 150.
        let original_len = len as u32;
        if len == 200 {
            frame.truncate(150);
        }
        write(
            &mut out,
            &packet(T0 + i as u64 * 1_000, tap, direction, frame, original_len),
            pod,
        );
    }
    out.finish().unwrap();
    let files = complete(dir, "shop");
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[test]
fn pcap_file_reads_interfaces_directions_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let back = read_back(&write_sample(dir.path()));
    assert_eq!(
        back.interfaces,
        [
            ("shop/cart-1".to_string(), "tap 7".to_string(), 80),
            ("tap-9".to_string(), "tap 9".to_string(), 80),
            ("unknown".to_string(), "tap 0".to_string(), 80),
        ]
    );
    let summary: Vec<_> = back
        .packets
        .iter()
        .map(|(iface, ts, data, orig, flags)| (*iface, *ts - T0, data.len(), *orig, *flags))
        .collect();
    assert_eq!(
        summary,
        [
            (0, 0, 80, 100, Some(0b10)),
            (1, 1_000, 60, 60, Some(0b01)),
            (0, 2_000, 80, 200, Some(0b01)),
            (2, 3_000, 70, 70, None),
            (1, 4_000, 64, 64, Some(0b10)),
        ]
    );
    assert_eq!(back.packets[1].2, udp_frame(60, 1));
    assert_eq!(back.packets[0].2[..], udp_frame(100, 0)[..80]);
}

#[test]
fn tshark_reads_count_interface_names_and_directions() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_sample(dir.path());
    let lines = podtap_testkit::tshark(
        &file,
        &[
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "udp.dstport",
        ],
    );
    // Direction: 1 = inbound (to the pod), 2 = outbound (from the pod), empty = not given.
    assert_eq!(
        lines,
        [
            "shop/cart-1,0x00000002,100,80,53",
            "tap-9,0x00000001,60,60,53",
            "shop/cart-1,0x00000001,200,80,53",
            "unknown,,70,70,53",
            "tap-9,0x00000002,64,64,53",
        ]
    );
}
