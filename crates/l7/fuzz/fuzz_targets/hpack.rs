//! Fuzzes the HPACK decoder: a sequence of header blocks decoded by one decoder.
//!
//! Input: the first byte holds options (bit 0: joined mid-stream, bit 1: a larger allowed
//! table); then blocks, each a length byte and that many bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_l7::hpack::{Field, Header, HpackDecoder, MAX_TRACKED_TABLE_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((&options, mut input)) = data.split_first() else {
        return;
    };
    let mut decoder = if options & 1 == 0 {
        HpackDecoder::new()
    } else {
        HpackDecoder::joined_mid_stream()
    };
    if options & 2 != 0 {
        decoder.set_max_allowed(65_536);
    }
    let mut out = Vec::new();
    while let Some((&len, rest)) = input.split_first() {
        let (block, after) = rest.split_at(usize::from(len).min(rest.len()));
        input = after;

        // The borrowing and the copying interfaces agree, result and fields.
        let mut twin = decoder.clone();
        let mut borrowed = Vec::new();
        let twin_result = twin.decode_with(block, |name, value| {
            borrowed.push(Header {
                name: name.map_or(Field::Unknown, |n| Field::Known(n.to_vec())),
                value: value.map_or(Field::Unknown, |v| Field::Known(v.to_vec())),
            });
        });
        out.clear();
        let result = decoder.decode(block, &mut out);
        assert_eq!(result, twin_result);
        assert_eq!(out, borrowed);

        if result.is_err() {
            // A block that fails may have inserted entries we did not see.
            assert!(!decoder.table_known());
            assert_eq!(decoder.known_entries(), 0);
        }
        // Entries take at least 32 bytes each, within the tracked bound.
        assert!(decoder.known_entries() <= MAX_TRACKED_TABLE_SIZE / 32);
        // Literal values are always known; only table references can be unknown.
        assert!(
            out.iter()
                .all(|h| h.value != Field::Unknown || h.name == Field::Unknown)
        );
    }
});
