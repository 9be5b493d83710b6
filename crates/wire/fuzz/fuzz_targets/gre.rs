//! Any bytes as a GRE packet: the view and the parser never panic, and what parses re-emits
//! to the same repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_wire::gre::{GrePacket, GreRepr};

fuzz_target!(|data: &[u8]| {
    let packet = GrePacket::new_unchecked(data);
    let parsed = GreRepr::parse(&packet);
    if packet.check_len().is_err() {
        assert!(parsed.is_err());
        return;
    }
    let _ = (
        packet.key(),
        packet.sequence(),
        packet.checksum(),
        packet.payload().len(),
    );
    let _ = packet.verify_checksum();
    if let Ok(repr) = parsed {
        let mut out = data.to_vec();
        repr.emit(&mut GrePacket::new_unchecked(&mut out[..]), |_| {})
            .expect("a parsed header fits where it came from");
        assert_eq!(
            GreRepr::parse(&GrePacket::new_unchecked(&out[..])),
            Ok(repr)
        );
    }
});
