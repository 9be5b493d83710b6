//! Fuzzes DNS: the message parser, UDP pairing across datagrams and the TCP stream decoder.
//!
//! Input: the first byte holds options (bits 0-1: which flows the datagrams belong to, bits
//! 2-7: where the TCP streams are cut); the rest is a sequence of records, each one control
//! byte (bits 0-6: length - 1, bit 7: server side) and that many bytes. Each record is one
//! UDP datagram, and the records' bytes are also each side's TCP stream.
//!
//! Checks: no panic; parsed names are bounded; calls are well formed; UDP pairing stays
//! within its bound and expiry leaves nothing pending; TCP calls do not depend on how the
//! streams were cut into chunks.

#![no_main]

use libfuzzer_sys::fuzz_target;
use podtap_l7::call::{Emit, Outcome, Protocol, Side, StreamDecoder};
use podtap_l7::dns::{DnsStreamDecoder, DnsTransactions, parse_message, qtype_name};

/// Longest a parsed name can be: 255 wire octets, each written as at most `\DDD`.
const MAX_NAME_TEXT: usize = 255 * 4;

fn check_call(call: &podtap_l7::call::Call) {
    assert_eq!(call.protocol, Protocol::Dns);
    assert!(!call.method.is_empty());
    match call.outcome {
        Outcome::Complete => {
            assert!(call.status.is_some_and(|s| s < 16));
            assert!(call.response_ns.is_some());
        }
        Outcome::NoResponse | Outcome::Incomplete(_) => assert!(call.status.is_none()),
    }
}

fn run_tcp(client: &[u8], server: &[u8], cut: usize) -> Emit {
    let mut decoder = DnsStreamDecoder::new();
    let mut emit = Emit::default();
    for (side, stream) in [(Side::Client, client), (Side::Server, server)] {
        if cut == 0 {
            decoder.data(side, stream, 1, &mut emit);
        } else {
            for chunk in stream.chunks(cut) {
                decoder.data(side, chunk, 1, &mut emit);
            }
        }
    }
    decoder.close(2, &mut emit);
    emit
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, mut input)) = data.split_first() else {
        return;
    };
    let mut udp = DnsTransactions::with_max_pending(8);
    let mut out = Vec::new();
    let mut emit = Emit::default();
    let (mut client, mut server) = (Vec::new(), Vec::new());
    let mut ts = 0u64;
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x7f) + 1;
        let (bytes, after) = rest.split_at(len.min(rest.len()));
        input = after;
        ts += 1;

        if let Ok(msg) = parse_message(bytes) {
            assert!(msg.rcode < 16 && msg.opcode < 16);
            if let Some(q) = &msg.question {
                assert!(!q.name.is_empty() && q.name.len() <= MAX_NAME_TEXT);
                assert!(!q.name.bytes().any(|b| b.is_ascii_uppercase()));
                assert!(!qtype_name(q.qtype).is_empty());
            }
        }

        let side = if control & 0x80 == 0 {
            Side::Client
        } else {
            Side::Server
        };
        let flow = (options & 3) & (bytes.first().copied().unwrap_or(0) | 1);
        udp.datagram(flow, side, bytes, ts, &mut out, &mut emit);
        assert!(udp.pending() <= 8);

        match side {
            Side::Client => client.extend_from_slice(bytes),
            Side::Server => server.extend_from_slice(bytes),
        }
    }
    udp.expire(ts, 0, &mut out);
    assert_eq!(udp.pending(), 0);
    for (_, call) in &out {
        check_call(call);
    }

    let whole = run_tcp(&client, &server, 0);
    for call in &whole.calls {
        check_call(call);
    }
    let cut = run_tcp(&client, &server, usize::from(options >> 2) + 1);
    assert_eq!(cut.calls, whole.calls);
    assert_eq!(cut.problems, whole.problems);
});
