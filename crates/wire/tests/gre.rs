//! The GRE header: property tests (round trips with and without checksum, no panic on any
//! input) and tshark's decode of Ethernet/IPv4/GRE(key)/Ethernet/IPv4/UDP frames podtap would
//! send as L2GRE.
//!
//! tshark is required: the tshark test fails (never skips) when it is missing.

use podtap_testkit::tshark;

use etherparse::{IpNumber, PacketBuilder};
use podtap_wire::error::WireError;
use podtap_wire::gre::{
    self, BASE_HEADER_LEN, GrePacket, GreRepr, MAX_HEADER_LEN, PROTOCOL_ETHERNET, gre_key,
    split_gre_key,
};
use podtap_wire::vxlan::MAX_TAP;
use podtap_wire::{Direction, InterfaceDescription, PcapngWriter};
use proptest::prelude::*;

fn arb_repr() -> impl Strategy<Value = GreRepr> {
    (
        any::<u16>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
    )
        .prop_map(|(protocol, key, sequence, checksum)| GreRepr {
            protocol,
            key,
            sequence,
            checksum,
        })
}

/// A whole GRE packet for `repr` and `payload`.
fn emit(repr: &GreRepr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0x5a; repr.buffer_len(payload.len())];
    repr.emit(&mut GrePacket::new_unchecked(&mut buf[..]), |p| {
        p.copy_from_slice(payload)
    })
    .unwrap();
    buf
}

proptest! {
    /// repr → emit → parse gives the repr back; the payload and a valid checksum come with it.
    #[test]
    fn repr_round_trip(repr in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..80)) {
        let buf = emit(&repr, &payload);
        let packet = GrePacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(GreRepr::parse(&packet), Ok(repr));
        prop_assert_eq!(packet.header_len(), repr.header_len());
        prop_assert_eq!(packet.payload(), &payload[..]);
        prop_assert!(packet.verify_checksum());
        prop_assert_eq!(packet.flags_and_version() & 0x0fff, 0, "reserved bits and version zero");
    }

    /// Flipping any bit of a checksummed packet is caught (or changes what parse reports).
    #[test]
    fn checksum_catches_corruption(
        repr in arb_repr(),
        payload in proptest::collection::vec(any::<u8>(), 1..80),
        bit in any::<prop::sample::Index>(),
    ) {
        let repr = GreRepr { checksum: true, ..repr };
        let mut buf = emit(&repr, &payload);
        let bit = bit.index(buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        let parsed = GreRepr::parse(&GrePacket::new_unchecked(&buf[..]));
        if let Ok(got) = parsed {
            // Only a flag bit can turn into something else that parses (e.g. C cleared).
            prop_assert!(bit < 16, "bit {bit} flipped unnoticed");
            prop_assert_ne!(got, repr);
        }
    }

    /// Room for the header is checked before anything is written.
    #[test]
    fn short_buffers_are_refused(repr in arb_repr(), len in 0usize..16) {
        prop_assume!(len < repr.header_len());
        let mut buf = vec![0u8; len];
        let err = repr.emit(&mut GrePacket::new_unchecked(&mut buf[..]), |_| {}).unwrap_err();
        let is_truncated = matches!(err, WireError::Truncated { needed, available, .. }
            if needed == repr.header_len() && available == len);
        prop_assert!(is_truncated);
        prop_assert!(buf.iter().all(|&b| b == 0));
    }

    /// Any bytes: checking, every accessor and parsing never panic; parse fails on a short
    /// buffer, a version other than 0 and the routing bit.
    #[test]
    fn no_panic_on_any_input(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let parsed = GreRepr::parse(&GrePacket::new_unchecked(&bytes[..]));
        match GrePacket::new_checked(&bytes[..]) {
            Ok(packet) => {
                let _ = (
                    packet.checksum_present(),
                    packet.key_present(),
                    packet.sequence_present(),
                    packet.protocol(),
                    packet.checksum(),
                    packet.key(),
                    packet.sequence(),
                    packet.payload().len(),
                    packet.compute_checksum(),
                    packet.verify_checksum(),
                );
                prop_assert!(packet.header_len() <= MAX_HEADER_LEN);
                prop_assert!(packet.header_len() <= bytes.len());
                if packet.version() != 0 || packet.routing_present() {
                    prop_assert!(parsed.is_err());
                }
                if let Ok(repr) = parsed {
                    prop_assert_eq!(repr.key, packet.key());
                    prop_assert_eq!(repr.sequence, packet.sequence());
                    // Emitting what was parsed over the same bytes reproduces a packet that
                    // parses the same.
                    let mut out = bytes.clone();
                    repr.emit(&mut GrePacket::new_unchecked(&mut out[..]), |_| {}).unwrap();
                    prop_assert_eq!(GreRepr::parse(&GrePacket::new_unchecked(&out[..])), Ok(repr));
                }
            }
            Err(err) => {
                prop_assert!(parsed.is_err());
                let is_truncated = matches!(err, WireError::Truncated { .. });
                prop_assert!(is_truncated);
            }
        }
        // Setters on a buffer whose flags promise more than it holds write nothing, no panic.
        if bytes.len() >= BASE_HEADER_LEN {
            let mut out = bytes.clone();
            let mut packet = GrePacket::new_unchecked(&mut out[..]);
            packet.set_key(1);
            packet.set_sequence(2);
            packet.fill_checksum();
            let _ = packet.payload_mut().len();
        }
    }

    /// podtap's key: policy, tap and direction survive it.
    #[test]
    fn key_round_trip(policy in any::<u16>(), tap in 0..=MAX_TAP, to_pod in any::<bool>()) {
        prop_assert_eq!(split_gre_key(gre_key(policy, tap, to_pod)), (policy, tap, to_pod));
    }
}

/// A tapped frame: Ethernet/IPv4/UDP from `src` to `dst`, with an odd-length payload.
fn inner_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x0a, 0, 0, 0, 0, 1], [0x0a, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(40000, 40001)
        .write(&mut frame, b"tapped payload!")
        .unwrap();
    frame
}

/// The tapped frame sent to the broker: Ethernet/IPv4/GRE/`inner`.
fn gre_frame(repr: &GreRepr, inner: &[u8]) -> Vec<u8> {
    let gre = emit(repr, inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        .write(&mut frame, IpNumber(gre::IP_PROTOCOL), &gre)
        .unwrap();
    frame
}

#[test]
fn tshark_decodes_l2gre() {
    let l2gre = |key, sequence, checksum| GreRepr {
        protocol: PROTOCOL_ETHERNET,
        key,
        sequence,
        checksum,
    };
    // (GRE header, inner source, inner destination)
    let cases = [
        (
            l2gre(Some(gre_key(7, 5, true)), None, false),
            [10, 244, 1, 2],
            [10, 244, 2, 3],
        ),
        (
            l2gre(Some(gre_key(7, 5, false)), Some(1), true),
            [10, 244, 2, 3],
            [10, 244, 1, 2],
        ),
        (
            l2gre(Some(gre_key(0xffff, MAX_TAP, true)), Some(2), false),
            [172, 16, 0, 1],
            [172, 16, 0, 2],
        ),
        (l2gre(None, None, true), [10, 0, 0, 9], [10, 0, 0, 10]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gre.pcapng");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = PcapngWriter::new(file, "podtap gre test").unwrap();
        let iface = w
            .add_interface(&InterfaceDescription {
                name: "eth0",
                description: "",
                snaplen: 0,
                link_type: 1,
            })
            .unwrap();
        for (i, (repr, src, dst)) in cases.iter().enumerate() {
            let frame = gre_frame(repr, &inner_frame(*src, *dst));
            w.write_packet(
                iface,
                1_700_000_000_000_000_000 + i as u64,
                0,
                &frame,
                Direction::Outbound,
            )
            .unwrap();
        }
        // A fifth frame whose last payload byte was changed after the checksum was computed.
        let mut frame = gre_frame(
            &l2gre(None, None, true),
            &inner_frame([10, 0, 0, 9], [10, 0, 0, 10]),
        );
        *frame.last_mut().unwrap() ^= 0x20;
        w.write_packet(
            iface,
            1_700_000_000_000_000_009,
            0,
            &frame,
            Direction::Outbound,
        )
        .unwrap();
        w.flush().unwrap();
    }

    let complaints = tshark(&path, &["-Y", "_ws.malformed || _ws.expert"]);
    assert_eq!(complaints.len(), 1, "tshark complains: {complaints:#?}");
    assert!(
        complaints[0].trim_start().starts_with("5 "),
        "{complaints:#?}"
    );

    let lines = tshark(
        &path,
        &[
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "gre.proto",
            "-e",
            "gre.key",
            "-e",
            "gre.sequence_number",
            "-e",
            "gre.checksum.status",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ],
    );
    // Keys: 0x00078005 is policy 7, tap 5, to the pod. Checksum status 1 = good, 0 = bad.
    let expected = [
        "0x6558|0x00078005|||192.0.2.1,10.244.1.2|192.0.2.2,10.244.2.3|40001",
        "0x6558|0x00070005|1|1|192.0.2.1,10.244.2.3|192.0.2.2,10.244.1.2|40001",
        "0x6558|0xffffffff|2||192.0.2.1,172.16.0.1|192.0.2.2,172.16.0.2|40001",
        "0x6558|||1|192.0.2.1,10.0.0.9|192.0.2.2,10.0.0.10|40001",
        "0x6558|||0|192.0.2.1,10.0.0.9|192.0.2.2,10.0.0.10|40001",
    ];
    assert_eq!(lines, expected);
    assert_eq!(split_gre_key(0x0007_8005), (7, 5, true));
    assert_eq!(split_gre_key(0x0007_0005), (7, 5, false));
}
