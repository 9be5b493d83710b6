//! Fuzzes the HTTP/1 decoder: arbitrary bytes on both sides, in arbitrary chunks, with gaps.
//!
//! Input: a sequence of records, each one control byte (bits 0-5: length - 1, bit 6: server
//! side, bit 7: a gap of that length instead of bytes) followed, for data, by its bytes.
//!
//! Checks: no panic; every call is well formed (bounded, redacted headers; a complete call
//! has its status and times in order); and the calls and problems do not depend on how each
//! side's bytes were cut into chunks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_l7::call::{Emit, Outcome, Protocol, REDACTED, Redaction, Side, StreamDecoder};
use podtap_l7::http1::{Http1Decoder, looks_like_http1};

/// One step read from the input.
#[derive(Clone, Copy)]
enum Op<'a> {
    Data(Side, &'a [u8]),
    Gap(Side, u64),
}

fn ops(mut input: &[u8]) -> Vec<Op<'_>> {
    let mut out = Vec::new();
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x3f) + 1;
        let side = if control & 0x40 == 0 {
            Side::Client
        } else {
            Side::Server
        };
        if control & 0x80 != 0 {
            out.push(Op::Gap(side, len as u64));
            input = rest;
        } else {
            let (bytes, after) = rest.split_at(len.min(rest.len()));
            out.push(Op::Data(side, bytes));
            input = after;
        }
    }
    out
}

/// Runs `ops`, with a time that grows by one per op when `clock` is set (else always 1).
fn run(ops: &[Op<'_>], clock: bool) -> Emit {
    let mut decoder = Http1Decoder::new(Redaction::default());
    let mut emit = Emit::default();
    let mut ts = 1;
    for op in ops {
        match *op {
            Op::Data(side, bytes) => decoder.data(side, bytes, ts, &mut emit),
            Op::Gap(side, len) => decoder.gap(side, len, ts, &mut emit),
        }
        if clock {
            ts += 1;
        }
    }
    decoder.close(ts, &mut emit);
    emit
}

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_http1(data);
    let ops = ops(data);

    let timed = run(&ops, true);
    let redaction = Redaction::default();
    for call in &timed.calls {
        assert_eq!(call.protocol, Protocol::Http1);
        assert!(call.headers.len() <= 16);
        for (name, value) in &call.headers {
            assert!(value.len() <= 256);
            assert_eq!(*name, name.to_ascii_lowercase());
            if redaction.is_sensitive(name) {
                assert_eq!(value, REDACTED);
            }
        }
        if let Some(response_ns) = call.response_ns {
            assert!(response_ns >= call.request_ns, "{call:?}");
            if let Some(end) = call.response_end_ns {
                assert!(end >= response_ns, "{call:?}");
            }
        }
        match call.outcome {
            Outcome::Complete => {
                assert!(
                    call.status.is_some() && call.response_end_ns.is_some(),
                    "{call:?}"
                );
            }
            Outcome::NoResponse => assert!(call.status.is_none(), "{call:?}"),
            Outcome::Incomplete(reason) => assert!(!reason.is_empty()),
        }
    }

    // The same bytes with each run of same-side chunks (between gaps) joined into one chunk:
    // at one constant time, the calls and problems are the same.
    let mut joined: Vec<(Side, Option<Vec<u8>>, u64)> = Vec::new();
    for op in &ops {
        match *op {
            Op::Data(side, bytes) => match joined.last_mut() {
                Some((last, Some(buf), _)) if *last == side => buf.extend_from_slice(bytes),
                _ => joined.push((side, Some(bytes.to_vec()), 0)),
            },
            Op::Gap(side, len) => joined.push((side, None, len)),
        }
    }
    let rejoined: Vec<Op<'_>> = joined
        .iter()
        .map(|(side, bytes, len)| match bytes {
            Some(bytes) => Op::Data(*side, bytes),
            None => Op::Gap(*side, *len),
        })
        .collect();
    let split = run(&ops, false);
    let whole = run(&rejoined, false);
    assert_eq!(split.calls, whole.calls);
    assert_eq!(split.problems, whole.problems);
});
