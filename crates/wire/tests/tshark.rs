//! The pcapng writer and the segmenter judged by tshark: what Wireshark shows for the files
//! podtap writes, and whether it finds any bad checksum in segmented frames.
//!
//! tshark is required: these tests fail (never skip) when it is missing.

use podtap_testkit::tshark;

use etherparse::PacketBuilder;
use podtap_wire::{Direction, InterfaceDescription, PcapngWriter, Segmenter};

fn ethernet(name: &str) -> InterfaceDescription<'_> {
    InterfaceDescription {
        name,
        description: "",
        snaplen: 262_144,
        link_type: 1,
    }
}

#[test]
fn tshark_reads_interfaces_lengths_comments_and_directions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fields.pcapng");
    let frame = udp_frame(false, 100);
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = PcapngWriter::new(file, "podtap test").unwrap();
        let a = w
            .add_interface(&InterfaceDescription {
                description: "shop/cart-1",
                ..ethernet("cali0123456789a")
            })
            .unwrap();
        w.write_packet(
            a,
            1_700_000_000_123_456_789,
            200,
            &frame,
            Direction::Inbound,
        )
        .unwrap();
        let b = w.add_interface(&ethernet("veth-b")).unwrap();
        w.write_packet_with_comment(
            b,
            1_700_000_000_987_654_321,
            frame.len() as u32,
            &frame,
            Direction::Outbound,
            "decrypted",
        )
        .unwrap();
        w.write_packet(
            a,
            1_700_000_001_000_000_000,
            0,
            &frame[..61],
            Direction::Unknown,
        )
        .unwrap();
        w.flush().unwrap();
    }

    let lines = tshark(
        &path,
        &[
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.interface_description",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "frame.comment",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "frame.time_epoch",
        ],
    );
    let len = frame.len();
    assert_eq!(
        lines,
        [
            format!("cali0123456789a|shop/cart-1|200|{len}||0x00000001|1700000000.123456789"),
            format!("veth-b||{len}|{len}|decrypted|0x00000002|1700000000.987654321"),
            "cali0123456789a|shop/cart-1|61|61|||1700000001.000000000".to_string(),
        ]
    );
}

/// A UDP super-packet of `payload_len` bytes.
fn udp_frame(ipv6: bool, payload_len: usize) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 13) as u8).collect();
    let mut frame = Vec::new();
    if ipv6 {
        builder
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(4000, 4001)
            .write(&mut frame, &payload)
            .unwrap();
    } else {
        builder
            .ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
            .udp(4000, 4001)
            .write(&mut frame, &payload)
            .unwrap();
    }
    frame
}

/// A TCP super-packet of `payload_len` bytes whose checksum holds a partial sum, as the
/// kernel leaves it for offload.
fn tcp_frame(ipv6: bool, payload_len: usize) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
    let mut frame = Vec::new();
    if ipv6 {
        builder
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 443, 1, 500)
            .ack(1)
            .psh()
            .write(&mut frame, &payload)
            .unwrap();
    } else {
        builder
            .ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
            .tcp(40000, 443, 1, 500)
            .ack(1)
            .psh()
            .write(&mut frame, &payload)
            .unwrap();
    }
    let checksum_at = frame.len() - payload_len - 20 + 16;
    frame[checksum_at..checksum_at + 2].copy_from_slice(&[0xab, 0xcd]);
    frame
}

#[test]
fn tshark_finds_no_bad_checksum_in_segmented_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segments.pcapng");
    let mut segmenter = Segmenter::new();
    let mut expected = Vec::new();
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = PcapngWriter::new(file, "podtap test").unwrap();
        let id = w.add_interface(&ethernet("veth0")).unwrap();
        let supers = [
            ("ipv4 tcp", tcp_frame(false, 3 * 1448 + 100), 1448),
            ("ipv6 tcp", tcp_frame(true, 3 * 1428 + 7), 1428),
            ("ipv4 udp", udp_frame(false, 3 * 1400 + 1), 1400),
            ("ipv6 udp", udp_frame(true, 4001), 1200),
        ];
        let mut ts = 1_700_000_000_000_000_000;
        for (what, frame, gso) in supers {
            let n = segmenter
                .segment(&frame, gso, |seg| {
                    ts += 1000;
                    w.write_packet(id, ts, seg.len() as u32, seg, Direction::Outbound)
                        .unwrap();
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(n, 4, "{what}");
            expected.extend(std::iter::repeat_n(what, n));
        }
        w.flush().unwrap();
    }

    let lines = tshark(
        &path,
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.checksum.status",
            "-e",
            "tcp.checksum.status",
            "-e",
            "udp.checksum.status",
        ],
    );
    assert_eq!(lines.len(), expected.len());
    // Status 1 is "Good" (0 "Bad", 2 "Unverified").
    for (i, (line, what)) in lines.iter().zip(&expected).enumerate() {
        let want = match *what {
            "ipv4 tcp" => "1|1|",
            "ipv4 udp" => "1||1",
            "ipv6 tcp" => "|1|",
            _ => "||1",
        };
        assert_eq!(line, want, "frame {} ({what})", i + 1);
    }

    // And the display filter the brief of the test names: nothing bad.
    let bad = tshark(
        &path,
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-Y",
            "ip.checksum.status==0 || tcp.checksum.status==0 || udp.checksum.status==0",
        ],
    );
    assert!(bad.is_empty(), "tshark found bad checksums: {bad:#?}");
}
