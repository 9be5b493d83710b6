//! Any bytes as a VXLAN header: the view and the parser never panic, and what parses re-emits
//! to the same repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_wire::vxlan::{VxlanPacket, VxlanRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = VxlanPacket::new_checked(data) else {
        return;
    };
    let _ = (packet.flags(), packet.gbp_flags(), packet.payload().len());
    if let Ok(repr) = VxlanRepr::parse(&packet) {
        let mut out = data.to_vec();
        repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
});
