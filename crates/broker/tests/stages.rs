//! The pipeline stages (filter, dedupe, slice, mask, sample) against what a user would check:
//! exact bytes out, exactly which packets are kept, libpcap and tcpdump agreeing with the typed
//! filter, every problem of a bad configuration at once, and no panic on any input.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, VlanId};
use podtap_broker::pipeline::dedupe::{DEDUPE_SEED, Dedupe, DedupeConfig};
use podtap_broker::pipeline::filter::Filter;
use podtap_broker::pipeline::layers::Layers;
use podtap_broker::pipeline::sample::flow_hash;
use podtap_broker::pipeline::{Pipeline, Stage, StageConfig, Verdict};
use podtap_broker::{Direction, Frame, Packet, Source};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MAC_GW: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
const MAC_HOST: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x01];

fn config(yaml: &str) -> StageConfig {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

fn stage(yaml: &str) -> Stage {
    let cfg = config(yaml);
    let problems = cfg.problems();
    assert!(problems.is_empty(), "{yaml}: {problems:?}");
    cfg.build().unwrap()
}

fn packet(data: Vec<u8>, timestamp_ns: u64) -> Packet<'static> {
    Packet {
        timestamp_ns,
        original_len: data.len() as u32,
        data: data.into(),
        source: Source {
            policy: 0,
            tap: 1,
            direction: Direction::FromPod,
            agent: IpAddr::from([192, 0, 2, 1]),
        },
    }
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535)
        .ack(1)
        .psh()
        .write(&mut v, payload)
        .unwrap();
    v
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 7, 1000)
        .syn()
        .write(&mut v, payload)
        .unwrap();
    v
}

fn v6(last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

fn arp(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&sender_mac);
    v.extend_from_slice(&sender_ip);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target_ip);
    v
}

/// Verdicts of a stage on frames given at 1 ms intervals.
fn verdicts(stage: &mut Stage, frames: &[Vec<u8>]) -> Vec<Verdict> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| stage.process(&mut packet(f.clone(), i as u64 * 1_000_000)))
        .collect()
}

fn kept(verdicts: &[Verdict]) -> Vec<usize> {
    (0..verdicts.len())
        .filter(|&i| verdicts[i] == Verdict::Keep)
        .collect()
}

/// Runs one packet through a stage and returns its bytes. The stage gets the frame borrowed,
/// as the broker hands it over (copied only when the stage writes).
fn output(stage: &mut Stage, frame: &[u8]) -> Vec<u8> {
    let mut p = packet(Vec::new(), 0);
    p.data = Frame::borrowed(frame, Vec::new());
    p.original_len = frame.len() as u32;
    assert_eq!(stage.process(&mut p), Verdict::Keep);
    assert_eq!(p.original_len as usize, frame.len(), "original_len changed");
    p.data.to_vec()
}

/// Offset of `inner` within `outer` (both from the same frame).
fn offset(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// A varied set of untagged packets for filter comparisons.
fn filter_corpus() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (src, dst) in [
        ([10, 1, 2, 3], [192, 168, 0, 9]),
        ([192, 168, 0, 9], [10, 1, 2, 3]),
        ([172, 16, 0, 1], [172, 16, 0, 2]),
    ] {
        for (sport, dport) in [
            (40000, 80),
            (80, 40000),
            (5000, 8080),
            (8081, 53),
            (443, 443),
        ] {
            v.push(tcp4(src, dst, sport, dport, b"GET / HTTP/1.1\r\n\r\n"));
            v.push(udp4(src, dst, sport, dport, b"datagram"));
        }
        let mut syn = Vec::new();
        PacketBuilder::ethernet2(MAC_B, MAC_A)
            .ipv4(src, dst, 64)
            .tcp(33000, 80, 1, 100)
            .syn()
            .write(&mut syn, &[])
            .unwrap();
        v.push(syn);
        let mut ping = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(src, dst, 64)
            .icmpv4_echo_request(1, 2)
            .write(&mut ping, b"ping")
            .unwrap();
        v.push(ping);
    }
    for (a, b) in [(1, 2), (2, 1)] {
        v.push(tcp6(v6(a), v6(b), 40000, 80, b"x"));
        let mut ping = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(v6(a), v6(b), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut ping, b"ping6")
            .unwrap();
        v.push(ping);
    }
    let mut other6 = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6([0xfd; 16], v6(1), 64)
        .udp(8000, 9000)
        .write(&mut other6, b"u")
        .unwrap();
    v.push(other6);
    v.push(arp(MAC_A, [10, 1, 2, 3], [10, 1, 2, 4]));
    v
}

// ---------------------------------------------------------------------------------------------
// Layers

#[test]
fn layers_agree_with_etherparse() {
    let mut frames = filter_corpus();
    let mut tagged = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
        .ipv6(v6(1), v6(2), 5)
        .udp(1, 2)
        .write(&mut tagged, b"payload")
        .unwrap();
    frames.push(tagged);
    let mut options = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
        .tcp(1, 2, 3, 4)
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap()
        .write(&mut options, b"data")
        .unwrap();
    frames.push(options);
    for f in &frames {
        let l = Layers::parse(f);
        let s = SlicedPacket::from_ethernet(f).unwrap();
        let Some(net) = &s.net else {
            assert_eq!(l.ip_version, 0);
            continue;
        };
        let Some(ip) = net.ip_payload_ref() else {
            assert_eq!((l.ip_version, l.ethertype), (0, Some(0x0806)));
            continue;
        };
        assert_eq!(l.ip_payload, Some(offset(f, ip.payload)), "{f:02x?}");
        match &s.transport {
            Some(t) => {
                let (hdr, payload) = match t {
                    etherparse::TransportSlice::Tcp(t) => (t.slice(), t.payload()),
                    etherparse::TransportSlice::Udp(u) => (u.slice(), u.payload()),
                    etherparse::TransportSlice::Icmpv4(i) => (i.slice(), i.payload()),
                    etherparse::TransportSlice::Icmpv6(i) => (i.slice(), i.payload()),
                    _ => unreachable!(),
                };
                assert_eq!(l.transport, Some(offset(f, hdr)));
                assert_eq!(l.payload, Some(offset(f, payload)), "{f:02x?}");
            }
            None => panic!("etherparse found no transport in {f:02x?}"),
        }
        assert_eq!(l.end, f.len());
    }
    let l = Layers::parse(frames.last().unwrap());
    assert_eq!(l.payload, Some(14 + 20 + 20 + 8));
    let l = Layers::parse(&frames[frames.len() - 2]);
    assert_eq!((l.vlan_count, &l.vlan_ids[..2]), (2, &[10, 20][..]));
    assert_eq!(l.network, Some(22));
}

#[test]
fn layers_of_cut_and_padded_frames() {
    let f = tcp4([1, 2, 3, 4], [5, 6, 7, 8], 1234, 80, b"");
    // Cut in the middle of the TCP header: the ports are known, the payload is not.
    let cut = &f[..14 + 20 + 6];
    let l = Layers::parse(cut);
    assert_eq!(l.ports(cut), Some((1234, 80)));
    assert_eq!(l.tcp_flags(cut), None);
    assert_eq!(l.payload, None);
    // Cut inside the IP header: not IP any more.
    let l = Layers::parse(&f[..14 + 12]);
    assert_eq!(
        (l.ip_version, l.ethertype, l.network),
        (0, Some(0x0800), Some(14))
    );
    // Ethernet padding is not part of the IP packet.
    let mut padded = f.clone();
    padded.resize(60, 0);
    let l = Layers::parse(&padded);
    assert_eq!(l.end, f.len());
    assert_eq!(l.payload, Some(f.len()));
}

/// Ethernet + IPv6 with a hop-by-hop options header + UDP.
fn ipv6_with_extension(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&MAC_B);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0x86, 0xdd]);
    let plen = (8 + 8 + payload.len()) as u16;
    v.extend_from_slice(&[0x60, 0, 0, 0]);
    v.extend_from_slice(&plen.to_be_bytes());
    v.extend_from_slice(&[0, 64]); // next header: hop-by-hop; hop limit
    v.extend_from_slice(&v6(1));
    v.extend_from_slice(&v6(2));
    v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next: UDP, 8 bytes, PadN
    v.extend_from_slice(&5353u16.to_be_bytes());
    v.extend_from_slice(&53u16.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

#[test]
fn layers_follow_ipv6_extension_headers() {
    let f = ipv6_with_extension(b"query");
    let l = Layers::parse(&f);
    assert_eq!(l.protocol, Some(17));
    assert_eq!(l.ip_payload, Some(14 + 40 + 8));
    assert_eq!(l.ports(&f), Some((5353, 53)));
    assert_eq!(l.payload, Some(14 + 40 + 8 + 8));
}

// ---------------------------------------------------------------------------------------------
// slice

#[test]
fn slice_frame_keeps_the_first_bytes() {
    let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, &[0x55; 100]);
    let mut s = stage("type: slice\nlength: 60");
    assert_eq!(output(&mut s, &f), f[..60]);
    // Shorter than the cut: whole.
    let short = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"");
    assert_eq!(output(&mut s, &short), short);
}

#[test]
fn slice_after_transport_keeps_all_headers_and_n_payload_bytes() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1, 2, 3, 4)
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::Noop,
        ])
        .unwrap()
        .write(&mut f, b"0123456789")
        .unwrap();
    let mut s = stage("type: slice\nlength: 4\nafter: transport");
    let headers = 14 + 20 + 28;
    assert_eq!(output(&mut s, &f), f[..headers + 4]);

    let mut tagged = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv6(v6(1), v6(2), 64)
        .udp(1, 2)
        .write(&mut tagged, b"0123456789")
        .unwrap();
    assert_eq!(output(&mut s, &tagged), tagged[..14 + 4 + 40 + 8 + 4]);

    let ext = ipv6_with_extension(b"0123456789");
    assert_eq!(output(&mut s, &ext), ext[..14 + 40 + 8 + 8 + 4]);

    // A padded ACK with no payload loses its Ethernet padding.
    let mut ack = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"");
    let unpadded = ack.clone();
    ack.resize(60, 0);
    let mut s0 = stage("type: slice\nlength: 0\nafter: transport");
    assert_eq!(output(&mut s0, &ack), unpadded);
}

#[test]
fn slice_after_ethernet_and_ip() {
    let mut tagged = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 64)
        .udp(1, 2)
        .write(&mut tagged, b"0123456789")
        .unwrap();
    let mut eth = stage("type: slice\nlength: 20\nafter: ethernet");
    assert_eq!(output(&mut eth, &tagged), tagged[..18 + 20]);
    let mut ip = stage("type: slice\nlength: 8\nafter: ip");
    assert_eq!(output(&mut ip, &tagged), tagged[..18 + 20 + 8]);
    // ARP has no IP header: cut after its Ethernet header.
    let a = arp(MAC_A, [10, 0, 0, 1], [10, 0, 0, 2]);
    let mut ip0 = stage("type: slice\nlength: 0\nafter: ip");
    assert_eq!(output(&mut ip0, &a), a[..14]);
    // Headers cut short already: left whole.
    let mut tr = stage("type: slice\nlength: 0\nafter: transport");
    let cut = &tagged[..18 + 20 + 4];
    assert_eq!(output(&mut tr, cut), cut);
}

// ---------------------------------------------------------------------------------------------
// mask

#[test]
fn mask_ranges_are_exact_and_clipped() {
    let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"hello world");
    let payload = 14 + 20 + 20;
    let mut m = stage(
        "type: mask\nfill: 0xAA\nranges:\n  - { offset: 2, length: 3, from: payload }\n  \
         - { offset: 6, length: 6 }\n  - { offset: 12, length: 4, from: ip }\n  \
         - { offset: 9, length: 1000, from: payload }\n  - { offset: 0, length: 2, from: transport }",
    );
    let mut want = f.clone();
    want[payload + 2..payload + 5].fill(0xaa); // "llo"
    want[6..12].fill(0xaa); // source MAC
    want[14 + 12..14 + 16].fill(0xaa); // source IP
    want[payload + 9..].fill(0xaa); // "ld", clipped
    want[34..36].fill(0xaa); // source port
    assert_eq!(output(&mut m, &f), want);
    assert_eq!(&want[payload..payload + 11], b"he\xaa\xaa\xaa wor\xaa\xaa");

    // A range from a layer the packet lacks masks nothing.
    let a = arp(MAC_A, [10, 0, 0, 1], [10, 0, 0, 2]);
    let mut ip = stage("type: mask\nranges: [{ offset: 0, length: 4, from: ip }]");
    assert_eq!(output(&mut ip, &a), a);
}

#[test]
fn mask_patterns_overwrite_matches_in_the_payload_only() {
    let http: &[u8] =
        b"GET / HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer s3cr\xff\xfet\r\nCookie: id=42\r\n\r\n";
    let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80, http);
    let mut m = stage(
        r#"
type: mask
patterns: ["(?i)authorization: [^\r\n]*", "(?i)cookie: [^\r\n]*"]
"#,
    );
    let out = output(&mut m, &f);
    let mut want_payload = http.to_vec();
    let auth = 28..28 + "Authorization: Bearer s3cr??t".len();
    let cookie = auth.end + 2..auth.end + 2 + "Cookie: id=42".len();
    want_payload[auth].fill(0);
    want_payload[cookie].fill(0);
    assert_eq!(out[..54], f[..54], "headers untouched");
    assert_eq!(out[54..], want_payload[..]);
    assert!(
        out.windows(4).any(|w| w == b"Host"),
        "other lines are left alone"
    );

    // Matches are found on the packet as it arrived: overlapping patterns both apply.
    let f = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"xabcdefy");
    let mut m = stage("type: mask\nfill: 0x2e\npatterns: [abc, bcdef]");
    assert_eq!(&output(&mut m, &f)[42..], b"x......y");

    // The IP header is not searched, nor are non-IP frames.
    let a = arp(MAC_A, [10, 0, 0, 1], [10, 0, 0, 2]);
    let mut m = stage(r#"{ type: mask, patterns: ["\\x0a\\x00"] }"#);
    assert_eq!(output(&mut m, &a), a);
    let f = udp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"payload");
    assert_eq!(output(&mut m, &f), f);
}

// ---------------------------------------------------------------------------------------------
// filter

fn filter(yaml: &str) -> Filter {
    match config(&format!("type: filter\n{yaml}")) {
        StageConfig::Filter(c) => Filter::new(&c).unwrap_or_else(|e| panic!("{yaml}: {e}")),
        _ => unreachable!(),
    }
}

/// The tcpdump expression and the typed fields select the same packets, and neither all nor
/// none of them.
fn assert_same_selection(frames: &[Vec<u8>], expression: &str, typed: &str) -> usize {
    let bpf = filter(&format!("expression: {expression:?}"));
    let fields = filter(typed);
    let mut n = 0;
    for f in frames {
        let (a, b) = (bpf.matches(f), fields.matches(f));
        assert_eq!(a, b, "{expression:?} vs {typed:?} on {f:02x?}");
        n += usize::from(a);
    }
    assert!(0 < n && n < frames.len(), "{expression:?} matched {n}");
    n
}

const SAME_SELECTIONS: [(&str, &str); 10] = [
    ("tcp port 80", "protocol: [tcp]\nport: [80]"),
    (
        "tcp dst port 80 and src net 10.0.0.0/8",
        "protocol: [tcp]\ndst_port: [80]\nsrc_cidr: [10.0.0.0/8]",
    ),
    (
        "udp portrange 8000-8080",
        "protocol: [udp]\nport: [\"8000-8080\"]",
    ),
    ("ip6 and icmp6", "ip_version: 6\nprotocol: [icmp6]"),
    // libpcap indexes TCP headers in IPv4 only; the typed field knows both.
    (
        "ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
        "ip_version: 4\ntcp_flags: { set: [syn], unset: [ack] }",
    ),
    ("arp", "ethertype: [arp]"),
    (
        "ether src 02:00:00:00:00:0b",
        "src_mac: [\"02:00:00:00:00:0b\"]",
    ),
    ("ip6 net 2001:db8::/32", "cidr: [\"2001:db8::/32\"]"),
    (
        "host 172.16.0.1 and (tcp or udp)",
        "cidr: [172.16.0.1]\nprotocol: [tcp, udp]",
    ),
    ("src port 443 or src port 5000", "src_port: [443, 5000]"),
];

#[test]
fn filter_expression_and_typed_fields_select_the_same_packets() {
    let frames = filter_corpus();
    for (expression, typed) in SAME_SELECTIONS {
        assert_same_selection(&frames, expression, typed);
    }
    // action: drop is the negation. (libpcap's `net` alone also looks into ARP; `ip net` does not,
    // like the typed fields.)
    let bpf = filter("expression: \"not ip net 10.0.0.0/8\"");
    let mut typed = Stage::Filter(filter("cidr: [10.0.0.0/8]\naction: drop"));
    for f in &frames {
        let v = typed.process(&mut packet(f.clone(), 0));
        assert_eq!(v == Verdict::Keep, bpf.matches(f), "{f:02x?}");
    }
}

#[test]
fn filter_vlan_tags() {
    let mut frames = filter_corpus();
    for id in [100, 200] {
        let mut t = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(VlanId::try_new(id).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1)
            .write(&mut t, b"x")
            .unwrap();
        frames.push(t);
    }
    assert_eq!(
        assert_same_selection(
            &frames,
            "vlan 100 and tcp port 80",
            "vlan: [100]\nport: [80]"
        ),
        1
    );
    // The typed fields look through tags; libpcap needs `vlan`.
    let typed = filter("protocol: [tcp]\nport: [80]");
    let bpf = filter("expression: \"tcp port 80\"");
    let tagged = &frames[frames.len() - 1];
    assert!(typed.matches(tagged) && !bpf.matches(tagged));
}

#[test]
fn filter_verdicts_and_reasons() {
    let web = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80, b"");
    let dns = udp4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53, b"");
    let mut keep = stage("type: filter\nexpression: \"tcp port 80\"");
    assert_eq!(
        verdicts(&mut keep, &[web.clone(), dns.clone()]),
        [Verdict::Keep, Verdict::Drop("unmatched")]
    );
    let mut drop = stage("type: filter\nport: [80]\naction: drop");
    assert_eq!(
        verdicts(&mut drop, &[web.clone(), dns]),
        [Verdict::Drop("matched"), Verdict::Keep]
    );
    // Expression and fields together: both must match.
    let mut both = stage("type: filter\nexpression: \"tcp port 80\"\nsrc_cidr: [10.9.0.0/16]");
    assert_eq!(
        verdicts(&mut both, std::slice::from_ref(&web)),
        [Verdict::Drop("unmatched")]
    );
    // After a slice, libpcap cannot see past the cut (as documented).
    let mut p = packet(web, 0);
    stage("type: slice\nlength: 30").process(&mut p);
    assert_eq!(keep.process(&mut p), Verdict::Drop("unmatched"));
}

#[test]
fn filter_counts_match_tcpdump() {
    // Ground truth: fail, never skip, without it.
    if Command::new("tcpdump").arg("--version").output().is_err() {
        panic!("tcpdump is not installed (run scripts/install-deps.sh)");
    }
    let frames = filter_corpus();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.pcap");
    let mut w = pcap_file::pcap::PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&pcap_file::pcap::PcapPacket::new(
            Duration::from_millis(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
    drop(w);
    for (expression, _) in SAME_SELECTIONS {
        let f = filter(&format!("expression: {expression:?}"));
        let ours = frames.iter().filter(|p| f.matches(p)).count();
        assert_eq!(ours, tcpdump_count(&path, expression), "{expression}");
    }
}

fn tcpdump_count(pcap: &Path, expression: &str) -> usize {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(expression)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

// ---------------------------------------------------------------------------------------------
// dedupe

/// The same TCP segment as the sending pod's veth and the receiving pod's veth see it when the
/// node routes between them (Calico): other MACs, TTL one less, other IPv4 header checksum.
fn routed_pair(payload: &[u8], ip_id: u16) -> (Vec<u8>, Vec<u8>) {
    let build = |src_mac, dst_mac, ttl| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4([10, 244, 0, 5], [10, 244, 0, 6], ttl)
            .tcp(40000, 8080, 77, 500)
            .ack(5)
            .write(&mut v, payload)
            .unwrap();
        v[14 + 4..14 + 6].copy_from_slice(&ip_id.to_be_bytes());
        fix_ipv4_checksum(&mut v);
        v
    };
    (build(MAC_A, MAC_GW, 64), build(MAC_HOST, MAC_B, 63))
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24..26].fill(0);
    let sum: u32 = frame[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    frame[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

#[test]
fn dedupe_removes_exactly_the_routed_copies() {
    let (a1, b1) = routed_pair(b"request 1", 1);
    assert_ne!(a1[..14], b1[..14]);
    assert_ne!(a1[22], b1[22], "TTL");
    assert_ne!(a1[24..26], b1[24..26], "IPv4 checksum");
    let (a2, b2) = routed_pair(b"request 2", 2);
    let (retransmit, retransmit_b) = routed_pair(b"request 1", 1);
    let ms = 1_000_000;
    // (frame, time, is a duplicate)
    let stream = [
        (a1.clone(), 0, false),
        (b1.clone(), 40_000, true), // 40 µs later, at the receiver
        (a2.clone(), ms, false),
        (b2.clone(), ms + 30_000, true),
        (b2.clone(), ms + 9 * ms, true), // a third copy, still within 10 ms of a2
        (retransmit, 300 * ms, false),   // same bytes, later than the window
        (retransmit_b, 300 * ms + 50_000, true),
        (b1, 400 * ms, false),
    ];
    let mut d = Stage::Dedupe(Dedupe::new(&DedupeConfig::default()).unwrap());
    for (i, (frame, t, dup)) in stream.iter().enumerate() {
        let v = d.process(&mut packet(frame.clone(), *t));
        let want = if *dup {
            Verdict::Drop("duplicate")
        } else {
            Verdict::Keep
        };
        assert_eq!(v, want, "packet {i}");
    }
    let Stage::Dedupe(d) = d else { unreachable!() };
    assert_eq!((d.dropped(), d.evictions()), (4, 0));
}

#[test]
fn dedupe_bridge_pairs_and_non_duplicates() {
    let mut d = stage("type: dedupe\nwindow_ms: 5");
    let f = udp4([10, 0, 0, 1], [10, 0, 0, 2], 5000, 53, b"query");
    let other_payload = udp4([10, 0, 0, 1], [10, 0, 0, 2], 5000, 53, b"querz");
    let other_port = udp4([10, 0, 0, 1], [10, 0, 0, 2], 5001, 53, b"query");
    let (other_id, _) = routed_pair(b"x", 1);
    let (other_id2, _) = routed_pair(b"x", 2);
    let a = arp(MAC_A, [10, 0, 0, 1], [10, 0, 0, 2]);
    let mut padded = f.clone();
    padded.resize(60, 0);
    let mut v6a = tcp6(v6(1), v6(2), 1, 2, b"six");
    let mut v6b = v6a.clone();
    v6b[..12].copy_from_slice(&[9; 12]);
    v6b[14 + 7] -= 1; // hop limit
    let mut p = |frame: &Vec<u8>, t: u64| d.process(&mut packet(frame.clone(), t));
    assert_eq!(p(&f, 0), Verdict::Keep);
    assert_eq!(p(&f, 1_000), Verdict::Drop("duplicate")); // bridge: identical frame
    assert_eq!(p(&padded, 2_000), Verdict::Drop("duplicate")); // padding is not compared
    assert_eq!(p(&other_payload, 3_000), Verdict::Keep);
    assert_eq!(p(&other_port, 4_000), Verdict::Keep);
    assert_eq!(p(&other_id, 5_000), Verdict::Keep);
    assert_eq!(p(&other_id2, 6_000), Verdict::Keep); // only the IP ID differs
    assert_eq!(p(&a, 7_000), Verdict::Keep);
    assert_eq!(p(&a, 8_000), Verdict::Drop("duplicate"));
    assert_eq!(p(&v6a, 9_000), Verdict::Keep);
    assert_eq!(p(&v6b, 10_000), Verdict::Drop("duplicate"));
    // At the edge of the window: 5 ms is in, 5 ms + 1 ns is out.
    assert_eq!(p(&f, 5_000_000), Verdict::Drop("duplicate"));
    assert_eq!(p(&f, 5_000_001), Verdict::Keep);
    // Different traffic class: not a copy, unless dscp is ignored.
    v6a[15] ^= 0x0c;
    assert_eq!(p(&v6a, 5_000_002), Verdict::Keep);
    let mut lenient = stage("type: dedupe\nignore: [ip_id, dscp]");
    let (x1, _) = routed_pair(b"x", 1);
    let (x2, _) = routed_pair(b"x", 2);
    let mut dscp = x1.clone();
    dscp[15] = 0xb8;
    fix_ipv4_checksum(&mut dscp);
    assert_eq!(
        verdicts(&mut lenient, &[x1, x2, dscp]),
        [
            Verdict::Keep,
            Verdict::Drop("duplicate"),
            Verdict::Drop("duplicate")
        ]
    );
}

#[test]
fn dedupe_l4_checksum_is_compared_unless_ignored() {
    let f = udp4([10, 0, 0, 1], [10, 0, 0, 2], 5000, 53, b"query");
    let mut g = f.clone();
    g[14 + 20 + 6..14 + 20 + 8].fill(0); // no UDP checksum (offload)
    let mut strict = stage("type: dedupe");
    assert_eq!(
        verdicts(&mut strict, &[f.clone(), g.clone()]),
        [Verdict::Keep; 2]
    );
    let mut lenient = stage("type: dedupe\nignore: [l4_checksum]");
    assert_eq!(
        verdicts(&mut lenient, &[f, g]),
        [Verdict::Keep, Verdict::Drop("duplicate")]
    );
}

#[test]
fn dedupe_hash_is_xxh3_of_the_invariant_bytes() {
    let (a, b) = routed_pair(b"payload", 9);
    let mut invariant = a[14..].to_vec();
    invariant[8] = 0; // TTL
    invariant[10..12].fill(0); // header checksum
    let want = xxhash_rust::xxh3::xxh3_64_with_seed(&invariant, DEDUPE_SEED);
    let mut d = Dedupe::new(&DedupeConfig::default()).unwrap();
    assert_eq!(d.hash(&a), Some(want));
    assert_eq!(d.hash(&b), Some(want));
    assert_eq!(d.hash(&a[..10]), None);
}

#[test]
fn dedupe_capacity_forgets_the_oldest_and_counts_it() {
    let cfg = DedupeConfig {
        capacity: 4,
        ..DedupeConfig::default()
    };
    let mut d = Dedupe::new(&cfg).unwrap();
    let frames: Vec<_> = (0..6)
        .map(|i| udp4([10, 0, 0, 1], [10, 0, 0, 2], 1000 + i, 53, b"q"))
        .collect();
    for f in &frames {
        assert_eq!(d.process(&mut packet(f.clone(), 0)), Verdict::Keep);
    }
    assert_eq!(d.evictions(), 2);
    // The two oldest were forgotten, the four newest are remembered.
    assert_eq!(d.process(&mut packet(frames[0].clone(), 1)), Verdict::Keep);
    assert_eq!(
        d.process(&mut packet(frames[5].clone(), 1)),
        Verdict::Drop("duplicate")
    );
    assert_eq!(d.evictions(), 3);
}

#[test]
fn dedupe_many_packets_expire_and_stay_exact() {
    // 200k distinct packets at 1 µs intervals, each copied 3 µs later: the table turns over
    // many times (window 1 ms ~ 2000 live entries) and every copy is still found.
    let mut d = Dedupe::new(&DedupeConfig {
        window_ms: 1,
        capacity: 4096,
        ..DedupeConfig::default()
    })
    .unwrap();
    let mut frame = udp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, &[0; 8]);
    let n = 200_000u64;
    let mut kept = 0;
    for i in 0..n {
        let at = frame.len() - 8;
        frame[at..].copy_from_slice(&i.to_be_bytes());
        kept += usize::from(d.process(&mut packet(frame.clone(), i * 1000)) == Verdict::Keep);
        if i >= 3 {
            frame[at..].copy_from_slice(&(i - 3).to_be_bytes());
            kept +=
                usize::from(d.process(&mut packet(frame.clone(), i * 1000 + 1)) == Verdict::Keep);
        }
    }
    assert_eq!(kept as u64, n);
    assert_eq!(d.dropped(), n - 3);
    assert_eq!(d.evictions(), 0);
}

// ---------------------------------------------------------------------------------------------
// sample

#[test]
fn sample_packets_keeps_exactly_every_nth() {
    let f = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"");
    let mut s = stage("type: sample\none_in: 3");
    let v = verdicts(&mut s, &vec![f; 10]);
    assert_eq!(kept(&v), [0, 3, 6, 9]);
    assert_eq!(v[1], Verdict::Drop("sampled_out"));
}

#[test]
fn sample_flows_keeps_whole_flows_both_ways() {
    let mut s = stage("type: sample\none_in: 4\nby: flow");
    let mut kept_flows = 0;
    let flows = 400u16;
    for i in 0..flows {
        let client = [10, 0, (i >> 8) as u8, i as u8];
        let server = [10, 1, 0, 1];
        let sport = 30000 + i;
        let packets = [
            tcp4(client, server, sport, 443, b"hello"),
            tcp4(server, client, 443, sport, b"world"),
            tcp4(client, server, sport, 443, b"more"),
        ];
        assert_eq!(flow_hash(&packets[0]), flow_hash(&packets[1]));
        let v = verdicts(&mut s, &packets);
        assert!(v.iter().all(|x| *x == v[0]), "flow {i}: {v:?}");
        kept_flows += usize::from(v[0] == Verdict::Keep);
    }
    // 1 in 4 of 400 flows: 100 expected; a fair hash stays well within 60..140.
    assert!((60..140).contains(&kept_flows), "{kept_flows} flows kept");
}

#[test]
fn sample_rate_limit_is_accurate() {
    // 10 s of 10000 pps, limited to 1000 pps with a burst of 1000.
    let mut s = stage("type: sample\nmax_pps: 1000");
    let f = udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"");
    let mut per_second = [0u32; 10];
    for i in 0..100_000u64 {
        let t = i * 100_000;
        if s.process(&mut packet(f.clone(), t)) == Verdict::Keep {
            per_second[(t / 1_000_000_000) as usize] += 1;
        }
    }
    // The full bucket, then the refill rate.
    assert_eq!(per_second[0], 1000 + 999);
    for (sec, n) in per_second.iter().enumerate().skip(1) {
        assert!((999..=1001).contains(n), "second {sec}: {n}");
    }
    // A burst at one instant passes exactly `burst` packets.
    let mut b = stage("type: sample\nmax_pps: 10\nburst: 100");
    let v = verdicts(&mut b, &vec![f.clone(); 150]);
    // (verdicts spaces packets 1 ms apart: 150 ms refills 1 token.)
    assert_eq!(kept(&v).len(), 101);
    assert_eq!(v[149], Verdict::Drop("rate_limited"));
}

// ---------------------------------------------------------------------------------------------
// configuration

#[test]
fn problems_are_all_reported_at_once() {
    let bad_filter = config(
        r#"
type: filter
expression: "tcp prot 80"
src_mac: ["02:00:00:00:00"]
vlan: [5000]
ethertype: [ipx]
ip_version: 5
src_cidr: [10.0.0.1/8]
dst_cidr: [not-an-address]
protocol: [tcpp, 300]
port: ["9000-8000"]
tcp_flags: { set: [syn, bogus], unset: [syn] }
"#,
    );
    let p = bad_filter.problems();
    for needle in [
        "expression \"tcp prot 80\": can't parse filter expression: syntax error",
        "src_mac[0]",
        "vlan 5000",
        "ethertype[0] \"ipx\"",
        "ip_version 5",
        "src_cidr[0] \"10.0.0.1/8\" has bits set",
        "dst_cidr[0]",
        "protocol[0] \"tcpp\"",
        "protocol[1] 300",
        "port[0] \"9000-8000\"",
        "tcp_flags.set[1] \"bogus\"",
        "tcp_flags: a flag is both in set and in unset",
    ] {
        assert!(
            p.iter().any(|m| m.contains(needle)),
            "{needle:?} not in {p:#?}"
        );
    }
    assert_eq!(p.len(), 12, "{p:#?}");

    let configs = [
        config("type: dedupe\nwindow_ms: 0\ncapacity: 0"),
        config("type: slice\nlength: 5"),
        config("type: mask\nranges: [{ offset: 0, length: 0 }]\npatterns: [\"(abc\", \"a*\"]"),
        config("type: sample\none_in: 0\nburst: 5"),
        config("type: filter"),
    ];
    let counts: Vec<_> = configs.iter().map(|c| c.problems().len()).collect();
    assert_eq!(
        counts,
        [2, 1, 3, 2, 1],
        "{:#?}",
        configs.map(|c| c.problems())
    );
    let mask = configs[2].problems();
    assert!(
        mask[1].contains("patterns[0] \"(abc\": unclosed group"),
        "{mask:?}"
    );

    // The pipeline prefixes every problem with its stage.
    let err = Pipeline::build(&configs).unwrap_err();
    assert_eq!(err.len(), 9);
    assert!(err[0].starts_with("stages[0] (dedupe): window_ms 0"));
    assert!(err[8].starts_with("stages[4] (filter): nothing to match"));
}

#[test]
fn configs_reject_unknown_fields_and_round_trip() {
    for yaml in [
        "type: filter\nport: [80]\nprots: [1]",
        "type: dedupe\nignore: [ttl]",
        "type: slice\nlength: 64\nafter: udp",
        "type: mask\nranges: [{ offset: 0, length: 1, form: ip }]",
        "type: sample\none_in: 2\nby: host",
        "type: filter\ntcp_flags: { set: [syn], clear: [ack] }",
    ] {
        assert!(
            serde_yaml_ng::from_str::<StageConfig>(yaml).is_err(),
            "{yaml}"
        );
    }
    for (expression, typed) in SAME_SELECTIONS {
        for yaml in [
            format!("type: filter\nexpression: {expression:?}"),
            format!("type: filter\n{typed}"),
        ] {
            let c = config(&yaml);
            let back: StageConfig =
                serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// No stage panics on any bytes

fn all_stages() -> Vec<Stage> {
    [
        "type: filter\nexpression: \"tcp port 80 or udp or vlan or ip6 or arp\"",
        "type: filter\nsrc_mac: [\"02:00:00:00:00:0a\"]\nvlan: [1]\ncidr: [10.0.0.0/8]\nport: [80]\ntcp_flags: { set: [syn] }",
        "type: filter\nip_version: 6\nprotocol: [udp, tcp, 0]\nsrc_port: [\"0-65535\"]\naction: drop",
        "type: dedupe\nwindow_ms: 1\ncapacity: 8",
        "type: dedupe\nignore: [ip_id, dscp, ecn, l4_checksum]",
        "type: slice\nlength: 14",
        "type: slice\nlength: 0\nafter: ethernet",
        "type: slice\nlength: 3\nafter: ip",
        "type: slice\nlength: 0\nafter: transport",
        "type: mask\nranges: [{offset: 0, length: 9999, from: payload}, {offset: 3, length: 2, from: transport}, {offset: 1, length: 5, from: ip}, {offset: 60000, length: 1}]\npatterns: [\"(?i)a.\", \"\\\\x00+\"]",
        "type: sample\none_in: 3\nby: flow\nmax_pps: 5",
        "type: sample\none_in: 2",
    ]
    .iter()
    .map(|y| stage(y))
    .collect()
}

/// Valid frames of every shape, to be cut and corrupted.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = filter_corpus();
    v.push(ipv6_with_extension(b"abc"));
    let mut q = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(VlanId::try_new(1).unwrap(), VlanId::try_new(2).unwrap())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1)
        .tcp(1, 80, 1, 1)
        .syn()
        .write(&mut q, b"aaaa")
        .unwrap();
    v.push(q);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_stage_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        for mut s in all_stages() {
            let mut p = packet(data.clone(), 0);
            let len = p.data.len();
            s.process(&mut p);
            prop_assert!(p.data.len() <= len);
        }
    }

    #[test]
    fn no_stage_panics_on_cut_or_corrupted_frames(
        seed in 0usize..32,
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let seeds = seeds();
        let mut frame = seeds[seed % seeds.len()].clone();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        frame.truncate(cut.index(frame.len() + 1));
        let l = Layers::parse(&frame);
        for off in [l.network, l.ip_payload, l.transport, l.payload].into_iter().flatten() {
            prop_assert!(off <= l.end && l.end <= frame.len());
        }
        for mut s in all_stages() {
            let mut p = packet(frame.clone(), 0);
            s.process(&mut p);
        }
    }
}
