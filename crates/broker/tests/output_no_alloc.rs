//! Proves the outputs' per-packet paths allocate nothing: a counting global allocator watches
//! `PcapOutput::write` and `FlowExporter::write` once warmed up (file open, interfaces added,
//! flow cache and export queue in use).

use std::net::IpAddr;

use etherparse::PacketBuilder;
use podtap_broker::output::Labelled;
use podtap_broker::output::flow::{FlowExportConfig, FlowExporter};
use podtap_broker::output::pcap::{PcapConfig, PcapOutput};
use podtap_broker::{Direction, Packet, Source};
use podtap_wire::netflow::FlowVersion;

#[global_allocator]
static GLOBAL: podtap_testkit::CountingAllocator = podtap_testkit::CountingAllocator;

use podtap_testkit::allocations;

const T0: u64 = 1_700_000_000_000_000_000;

/// UDP/IPv4 frames from `port` to 53, in a packet reused for every write.
fn set_frame(p: &mut Packet, port: u16, tap: u16) {
    p.data.to_mut().clear();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(port, 53)
        .write(p.data.to_mut(), &[0x55; 200])
        .unwrap();
    p.original_len = p.data.len() as u32;
    p.source = Source {
        policy: 0,
        tap,
        direction: Direction::FromPod,
        agent: IpAddr::from([192, 0, 2, 1]),
    };
}

#[test]
fn pcap_write_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = PcapOutput::new(
        &PcapConfig {
            directory: dir.path().to_path_buf(),
            prefix: None,
            rotate_bytes: Some(1 << 30),
            rotate_seconds: Some(3600),
            keep_files: Some(10),
            snaplen: Some(128),
        },
        "shop",
    )
    .unwrap();
    let mut p = Packet::new();
    // Warm-up: the file is opened and both taps' interfaces added.
    for tap in [1, 2] {
        set_frame(&mut p, 1000, tap);
        p.timestamp_ns = T0;
        out.write(Labelled {
            packet: &p,
            pod: Some("shop/cart-1"),
        })
        .unwrap();
    }
    let before = allocations();
    for i in 0..10_000u64 {
        p.timestamp_ns = T0 + i * 1000;
        p.source.tap = 1 + (i % 2) as u16;
        out.write(Labelled {
            packet: &p,
            pod: Some("shop/cart-1"),
        })
        .unwrap();
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations in 10000 pcap writes"
    );
    out.finish().unwrap();
    assert_eq!(out.counters().packets, 10_002);
}

#[test]
fn flow_write_allocates_nothing() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut out = FlowExporter::new(
        &FlowExportConfig {
            collector: sink.local_addr().unwrap(),
            active_timeout_s: 60,
            inactive_timeout_s: 15,
            template_refresh_s: 60,
            max_flows: 1000,
            observation_domain: 0,
        },
        FlowVersion::Ipfix,
        "shop",
    )
    .unwrap();
    let mut p = Packet::new();
    let write = |out: &mut FlowExporter, p: &mut Packet, i: u64| {
        // 3000 ports over 1000 slots: new flows, existing flows and evictions, which fill the
        // export queue and send it.
        set_frame_port(p, (i % 3000) as u16);
        p.timestamp_ns = T0 + i * 1000;
        out.write(Labelled {
            packet: p,
            pod: Some("shop/cart-1"),
        })
        .unwrap();
    };
    set_frame(&mut p, 0, 1);
    // Warm-up: the cache fills, evicts, and the encoder sends its first messages.
    for i in 0..5_000 {
        write(&mut out, &mut p, i);
    }
    assert!(out.counters().extra["messages_sent"] > 0);
    let before = allocations();
    for i in 5_000..50_000 {
        write(&mut out, &mut p, i);
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations in 45000 flow writes"
    );
    let c = out.counters();
    assert!(c.extra["flows_evicted"] > 10_000, "{c:?}");
}

/// Changes the UDP source port of the frame `set_frame` built.
fn set_frame_port(p: &mut Packet, port: u16) {
    p.data.to_mut()[34..36].copy_from_slice(&port.to_be_bytes());
}
