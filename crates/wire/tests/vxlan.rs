//! The VXLAN header: property tests (round trips, no panic on any input) and tshark's decode
//! of Ethernet/IPv4/UDP(4789)/VXLAN(GBP)/Ethernet/IPv4/UDP frames podtap would send.
//!
//! tshark is required: the tshark test fails (never skips) when it is missing.

use podtap_testkit::tshark;

use etherparse::PacketBuilder;
use podtap_wire::vxlan::{
    HEADER_LEN, MAX_TAP, MAX_VNI, UDP_PORT, VxlanPacket, VxlanRepr, group_policy_id, tap_label,
};
use podtap_wire::{Direction, InterfaceDescription, PcapngWriter};
use proptest::prelude::*;

fn arb_repr() -> impl Strategy<Value = VxlanRepr> {
    (0..=MAX_VNI, proptest::option::of(any::<u16>())).prop_map(|(vni, group_policy_id)| VxlanRepr {
        vni,
        group_policy_id,
    })
}

proptest! {
    /// repr → emit → parse gives the repr back, and the payload is left alone.
    #[test]
    fn repr_round_trip(repr in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = vec![0xa5; HEADER_LEN];
        buf.extend_from_slice(&payload);
        let mut packet = VxlanPacket::new_checked(&mut buf[..]).unwrap();
        repr.emit(&mut packet);
        let packet = VxlanPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(VxlanRepr::parse(&packet), Ok(repr));
        prop_assert_eq!(packet.payload(), &payload[..]);
        prop_assert!(!packet.dont_learn() && !packet.policy_applied());
        prop_assert_eq!(packet.reserved(), 0);
    }

    /// Any bytes: checking, every accessor and parsing never panic, and parse succeeds exactly
    /// when the header is whole and the I flag is set.
    #[test]
    fn no_panic_on_any_input(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        let parsed = VxlanRepr::parse(&VxlanPacket::new_unchecked(&bytes[..]));
        match VxlanPacket::new_checked(&bytes[..]) {
            Ok(packet) => {
                let _ = (
                    packet.flags(),
                    packet.gbp_flags(),
                    packet.dont_learn(),
                    packet.policy_applied(),
                    packet.reserved(),
                    packet.payload().len(),
                );
                prop_assert!(packet.vni() <= MAX_VNI);
                prop_assert_eq!(parsed.is_ok(), packet.vni_valid());
                if let Ok(repr) = parsed {
                    prop_assert_eq!(repr.vni, packet.vni());
                    prop_assert_eq!(repr.group_policy_id.is_some(), packet.gbp_present());
                    // Re-emitting keeps what podtap reads.
                    let mut out = bytes.clone();
                    repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
                    prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_unchecked(&out[..])), Ok(repr));
                }
            }
            Err(err) => {
                prop_assert!(bytes.len() < HEADER_LEN);
                prop_assert_eq!(parsed, Err(err));
            }
        }
    }

    /// podtap's tap label: every tap id and direction survives the Group Policy ID.
    #[test]
    fn tap_label_round_trip(tap in 0..=MAX_TAP, to_pod in any::<bool>()) {
        prop_assert_eq!(tap_label(group_policy_id(tap, to_pod)), (tap, to_pod));
    }

    /// Every Group Policy ID is some tap label.
    #[test]
    fn group_policy_id_round_trip(id in any::<u16>()) {
        let (tap, to_pod) = tap_label(id);
        prop_assert_eq!(group_policy_id(tap, to_pod), id);
    }
}

/// A tapped frame: Ethernet/IPv4/UDP from `src` to `dst`.
fn inner_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x0a, 0, 0, 0, 0, 1], [0x0a, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(40000, 40001)
        .write(&mut frame, b"tapped payload")
        .unwrap();
    frame
}

/// The tapped frame sent to the broker: Ethernet/IPv4/UDP(4789)/VXLAN/`inner`.
fn vxlan_frame(repr: &VxlanRepr, inner: &[u8]) -> Vec<u8> {
    let mut vxlan = vec![0; repr.header_len() + inner.len()];
    repr.emit(&mut VxlanPacket::new_checked(&mut vxlan[..]).unwrap());
    vxlan[repr.header_len()..].copy_from_slice(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
        .udp(49152, UDP_PORT)
        .write(&mut frame, &vxlan)
        .unwrap();
    frame
}

#[test]
fn tshark_decodes_vxlan_gbp() {
    let repr = |vni, label: Option<(u16, bool)>| VxlanRepr {
        vni,
        group_policy_id: label.map(|(tap, to_pod)| group_policy_id(tap, to_pod)),
    };
    // (VXLAN header, inner source, inner destination); the last is plain VXLAN.
    let cases = [
        (repr(7, Some((5, true))), [10, 244, 1, 2], [10, 244, 2, 3]),
        (
            repr(0x12_3456, Some((5, false))),
            [10, 244, 2, 3],
            [10, 244, 1, 2],
        ),
        (
            repr(MAX_VNI, Some((MAX_TAP, true))),
            [172, 16, 0, 1],
            [172, 16, 0, 2],
        ),
        (repr(1, None), [10, 0, 0, 9], [10, 0, 0, 10]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxlan.pcapng");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = PcapngWriter::new(file, "podtap vxlan test").unwrap();
        let iface = w
            .add_interface(&InterfaceDescription {
                name: "eth0",
                description: "",
                snaplen: 0,
                link_type: 1,
            })
            .unwrap();
        for (i, (repr, src, dst)) in cases.iter().enumerate() {
            let frame = vxlan_frame(repr, &inner_frame(*src, *dst));
            w.write_packet(
                iface,
                1_700_000_000_000_000_000 + i as u64,
                0,
                &frame,
                Direction::Outbound,
            )
            .unwrap();
        }
        w.flush().unwrap();
    }

    let complaints = tshark(&path, &["-Y", "_ws.malformed || _ws.expert"]);
    assert!(complaints.is_empty(), "tshark complains: {complaints:#?}");

    let lines = tshark(
        &path,
        &[
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "vxlan.flag_g",
            "-e",
            "vxlan.flag_i",
            "-e",
            "vxlan.vni",
            "-e",
            "vxlan.gbp",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
        ],
    );
    // Flags print as 1/0; without G, tshark shows the (reserved) group policy field as 0.
    let expected = [
        "1|1|7|32773|192.0.2.1,10.244.1.2|192.0.2.2,10.244.2.3|4789,40001",
        "1|1|1193046|5|192.0.2.1,10.244.2.3|192.0.2.2,10.244.1.2|4789,40001",
        "1|1|16777215|65535|192.0.2.1,172.16.0.1|192.0.2.2,172.16.0.2|4789,40001",
        "0|1|1|0|192.0.2.1,10.0.0.9|192.0.2.2,10.0.0.10|4789,40001",
    ];
    // 32773 = 0x8005: tap 5, to the pod; 1193046 = 0x123456.
    assert_eq!(tap_label(32773), (5, true));
    assert_eq!(lines, expected);
}
