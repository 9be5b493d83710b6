//! Decapsulation never panics and never returns a frame outside the packet, whatever arrives
//! on the tunnel ports; and what podtap sends decodes to the labels it was sent with.

use std::net::IpAddr;

use podtap_tunnel::{Encap, decode_gre, decode_vxlan};
use proptest::prelude::*;

const AGENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 11));

proptest! {
    #[test]
    fn vxlan_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(r) = decode_vxlan(&bytes, AGENT) {
            prop_assert!(r.frame.end <= bytes.len() && r.frame.len() >= 14);
        }
    }

    #[test]
    fn gre_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(r) = decode_gre(&bytes, AGENT) {
            prop_assert!(r.frame.end <= bytes.len() && r.frame.len() >= 14);
        }
    }

    #[test]
    fn labels_survive_the_round_trip(vni in 1u32..=0xFF_FFFF, key in any::<u16>(), tap in 1u16..=0x7fff, to_pod: bool) {
        let frame = [0xabu8; 60];
        let mut vx = vec![0x88, 0, 0, 0, 0, 0, 0, 0];
        let gbp = podtap_wire::vxlan::group_policy_id(tap, to_pod);
        vx[2..4].copy_from_slice(&gbp.to_be_bytes());
        vx[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
        vx.extend_from_slice(&frame);
        let r = decode_vxlan(&vx, AGENT).unwrap();
        prop_assert_eq!(r.encap, Encap::Vxlan { vni });
        prop_assert_eq!((r.tap, r.to_pod), (tap, Some(to_pod)));
        prop_assert_eq!(&vx[r.frame], &frame[..]);

        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 47, 0, 0, 198, 18, 0, 11, 198, 18, 0, 101];
        ip.extend_from_slice(&[0x20, 0, 0x65, 0x58]);
        ip.extend_from_slice(&podtap_wire::gre::gre_key(key, tap, to_pod).to_be_bytes());
        ip.extend_from_slice(&frame);
        let r = decode_gre(&ip, AGENT).unwrap();
        prop_assert_eq!(r.encap, Encap::L2gre { policy_key: key });
        prop_assert_eq!((r.tap, r.to_pod), (tap, Some(to_pod)));
        prop_assert_eq!(&ip[r.frame], &frame[..]);
    }
}
