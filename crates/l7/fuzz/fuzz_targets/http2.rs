//! Fuzzes the HTTP/2 decoder: arbitrary bytes on both sides, in arbitrary chunks, with gaps.
//!
//! Input: the first byte holds options (bit 0: send the client preface first, bit 1: let
//! chunk headers announce gaps); then a sequence of chunks, each one control byte (bits 0-5:
//! length - 1, bit 6: server side, bit 7: a gap of that length before it) and its bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_l7::call::{Emit, Outcome, Protocol, Redaction, Side, StreamDecoder};
use podtap_l7::http2::{Http2Decoder, PREFACE, looks_like_http2};

fuzz_target!(|data: &[u8]| {
    let Some((&options, mut input)) = data.split_first() else {
        return;
    };
    let _ = looks_like_http2(input, input);
    let mut decoder = Http2Decoder::new(Redaction::default());
    let mut emit = Emit::default();
    if options & 1 != 0 {
        decoder.data(Side::Client, PREFACE, 0, &mut emit);
    }
    let mut ts = 1;
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x3f) + 1;
        let side = if control & 0x40 == 0 {
            Side::Client
        } else {
            Side::Server
        };
        if control & 0x80 != 0 && options & 2 != 0 {
            decoder.gap(side, len as u64, ts, &mut emit);
        }
        let (chunk, after) = rest.split_at(len.min(rest.len()));
        decoder.data(side, chunk, ts, &mut emit);
        input = after;
        ts += 1;
    }
    decoder.close(ts, &mut emit);

    // Every call is a stream opened by its own 9-byte frame header.
    assert!(emit.calls.len() <= data.len() / 9);
    for call in &emit.calls {
        assert!(matches!(call.protocol, Protocol::Http2 | Protocol::Grpc));
        assert_eq!(call.grpc.is_some(), call.protocol == Protocol::Grpc);
        assert!(call.headers.len() <= 16);
        assert!(call.headers.iter().all(|(_, value)| value.len() <= 256));
        if let Some(end) = call.response_end_ns {
            assert!(end <= ts);
        }
        if call.outcome == Outcome::Complete {
            // Complete means the request headers and a final response were both read.
            assert!(call.status.is_some());
            assert!(call.response_ns.is_some());
            assert!(call.response_end_ns.is_some());
        }
    }
    assert!(emit.problems.keys().all(|reason| {
        reason
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }));
});
