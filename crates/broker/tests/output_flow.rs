//! The flow cache over simulated time (FIN/RST, inactive and active timeouts, eviction,
//! directions, taps, protocols), and the `netflow_v9` / `ipfix` outputs judged by a real
//! collector: nfcapd receives what the output sends, nfdump's totals per 5-tuple must equal the
//! packets fed in.

use podtap_testkit::nfdump_csv as nfdump;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etherparse::PacketBuilder;
use podtap_broker::output::flow::{
    Expiry, Flow, FlowCache, FlowExportConfig, FlowExporter, FlowKey, FlowPacket,
};
use podtap_broker::output::{Labelled, OutputConfig};
use podtap_broker::{Direction, Packet, Source};
use podtap_wire::netflow::FlowVersion;

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000 * SECOND;

/// TCP flags for test frames.
#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}
const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
const FIN_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

fn l3(
    builder: etherparse::PacketBuilderStep<etherparse::Ethernet2Header>,
    src: IpAddr,
    dst: IpAddr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => builder.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => builder.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

fn tcp_frame(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: usize,
) -> Vec<u8> {
    let mut b = l3(eth(), src.parse().unwrap(), dst.parse().unwrap()).tcp(sport, dport, 1, 65535);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut frame = Vec::new();
    b.write(&mut frame, &vec![0x61; payload]).unwrap();
    frame
}

fn udp_frame(src: &str, dst: &str, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let b = l3(eth(), src.parse().unwrap(), dst.parse().unwrap()).udp(sport, dport);
    let mut frame = Vec::new();
    b.write(&mut frame, &vec![0x75; payload]).unwrap();
    frame
}

fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend([0; 20]);
    frame
}

fn packet(ts: u64, tap: u16, direction: Direction, data: Vec<u8>) -> Packet<'static> {
    Packet {
        timestamp_ns: ts,
        original_len: data.len() as u32,
        data: data.into(),
        source: Source {
            policy: 0,
            tap,
            direction,
            agent: IpAddr::from([192, 0, 2, 1]),
        },
    }
}

/// A flow as a test compares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    why: &'static str,
    src: String,
    dst: String,
    ports: (u16, u16),
    protocol: u8,
    tap: u16,
    to_pod: bool,
    packets: u64,
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
}

fn seen(flow: &Flow, why: Expiry) -> Seen {
    let k = flow.key;
    Seen {
        why: match why {
            Expiry::Ended => "ended",
            Expiry::Inactive => "inactive",
            Expiry::Active => "active",
            Expiry::Evicted => "evicted",
            Expiry::Flushed => "flushed",
        },
        src: k.src.to_string(),
        dst: k.dst.to_string(),
        ports: (k.src_port, k.dst_port),
        protocol: k.protocol,
        tap: k.tap,
        to_pod: k.direction == Direction::ToPod,
        packets: flow.packets,
        bytes: flow.bytes,
        first_ms: (flow.first_ns - T0) / MS,
        last_ms: (flow.last_ns - T0) / MS,
    }
}

/// A cache and everything it exported so far.
struct Harness {
    cache: FlowCache,
    out: Vec<Seen>,
}

impl Harness {
    fn new(max_flows: usize, active_s: u64, inactive_s: u64) -> Self {
        Harness {
            cache: FlowCache::new(max_flows, active_s * SECOND, inactive_s * SECOND),
            out: Vec::new(),
        }
    }
    fn feed(&mut self, p: &Packet) -> bool {
        let out = &mut self.out;
        self.cache.observe(
            Labelled {
                packet: p,
                pod: Some("shop/cart-1"),
            },
            |f, why| out.push(seen(f, why)),
        )
    }
    fn tick(&mut self, now: u64) -> Vec<Seen> {
        let out = &mut self.out;
        self.cache.expire(now, |f, why| out.push(seen(f, why)));
        std::mem::take(&mut self.out)
    }
    fn flush(&mut self) -> Vec<Seen> {
        let out = &mut self.out;
        self.cache.flush(|f, why| out.push(seen(f, why)));
        std::mem::take(&mut self.out)
    }
}

#[test]
fn fin_and_rst_end_flows_at_the_next_tick() {
    let mut h = Harness::new(100, 60, 15);
    let c = "10.0.0.1";
    let s = "10.0.0.2";
    let from = Direction::FromPod;
    h.feed(&packet(T0, 1, from, tcp_frame(c, s, 40000, 80, SYN, 0)));
    h.feed(&packet(
        T0 + MS,
        1,
        from,
        tcp_frame(c, s, 40000, 80, ACK, 100),
    ));
    h.feed(&packet(
        T0 + 2 * MS,
        1,
        from,
        tcp_frame(c, s, 40000, 80, FIN_ACK, 0),
    ));
    // The last ACK after the FIN, before the tick, still counts in the same record.
    h.feed(&packet(
        T0 + 3 * MS,
        1,
        from,
        tcp_frame(c, s, 40000, 80, ACK, 0),
    ));
    h.feed(&packet(
        T0 + 3 * MS,
        1,
        from,
        tcp_frame(c, s, 40001, 80, RST, 0),
    ));
    h.feed(&packet(T0 + 3 * MS, 1, from, udp_frame(c, s, 5353, 53, 10)));
    assert!(h.out.is_empty(), "nothing leaves before a tick");
    assert_eq!(h.cache.len(), 3);

    let mut got = h.tick(T0 + 100 * MS);
    got.sort();
    // Bytes are IP bytes: a 54-byte frame without payload is 40.
    let empty = 40;
    assert_eq!(
        got.iter()
            .map(|s| (s.why, s.ports, s.packets, s.bytes, s.first_ms, s.last_ms))
            .collect::<Vec<_>>(),
        [
            ("ended", (40000, 80), 4, 4 * empty + 100, 0, 3),
            ("ended", (40001, 80), 1, empty, 3, 3),
        ]
    );
    assert_eq!(h.cache.len(), 1, "the UDP flow stays");
}

#[test]
fn inactive_timeout() {
    let mut h = Harness::new(100, 60, 15);
    let p = |ts| {
        packet(
            ts,
            2,
            Direction::ToPod,
            udp_frame("fd00::1", "fd00::2", 1000, 2000, 50),
        )
    };
    h.feed(&p(T0));
    h.feed(&p(T0 + 5 * SECOND));
    assert!(h.tick(T0 + 20 * SECOND - 1).is_empty());
    let got = h.tick(T0 + 20 * SECOND);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].why, got[0].packets, got[0].last_ms, got[0].to_pod),
        ("inactive", 2, 5000, true)
    );
    assert!(h.cache.is_empty());
}

#[test]
fn active_timeout_splits_a_long_flow() {
    // With the broker's ticks, and without: the packet path splits the flow too.
    for with_ticks in [true, false] {
        let mut h = Harness::new(100, 60, 15);
        let mut records = Vec::new();
        for s in 0..150 {
            let ts = T0 + s * SECOND;
            if with_ticks {
                records.extend(h.tick(ts));
            }
            h.feed(&packet(
                ts,
                1,
                Direction::FromPod,
                udp_frame("10.0.0.1", "10.0.0.9", 1, 2, 0),
            ));
        }
        records.extend(h.tick(T0 + 150 * SECOND));
        records.extend(h.flush());
        assert_eq!(
            records
                .iter()
                .map(|r| (r.why, r.packets, r.first_ms / 1000, r.last_ms / 1000))
                .collect::<Vec<_>>(),
            [
                ("active", 60, 0, 59),
                ("active", 60, 60, 119),
                ("flushed", 30, 120, 149)
            ],
            "with_ticks {with_ticks}"
        );
    }
}

#[test]
fn a_full_cache_evicts_the_longest_idle_flow() {
    let mut h = Harness::new(3, 60, 15);
    let flow = |port, ts| {
        packet(
            ts,
            1,
            Direction::FromPod,
            udp_frame("10.0.0.1", "10.0.0.2", port, 53, 0),
        )
    };
    h.feed(&flow(1, T0));
    h.feed(&flow(2, T0 + MS));
    h.feed(&flow(3, T0 + 2 * MS));
    h.feed(&flow(1, T0 + 3 * MS)); // 1 is busy again: 2 is now the longest idle
    assert!(h.out.is_empty());
    h.feed(&flow(4, T0 + 4 * MS));
    let got = std::mem::take(&mut h.out);
    assert_eq!(
        got.iter().map(|s| (s.why, s.ports.0)).collect::<Vec<_>>(),
        [("evicted", 2)]
    );
    assert_eq!((h.cache.len(), h.cache.evicted()), (3, 1));

    // A flow that ended goes first, and is not counted as evicted.
    h.feed(&packet(
        T0 + 5 * MS,
        1,
        Direction::FromPod,
        tcp_frame("10.0.0.1", "10.0.0.2", 9, 80, SYN, 0),
    ));
    assert_eq!(
        std::mem::take(&mut h.out)
            .iter()
            .map(|s| (s.why, s.ports.0))
            .collect::<Vec<_>>(),
        [("evicted", 3)]
    );
    h.feed(&packet(
        T0 + 6 * MS,
        1,
        Direction::FromPod,
        tcp_frame("10.0.0.1", "10.0.0.2", 9, 80, RST, 0),
    ));
    h.feed(&flow(5, T0 + 7 * MS));
    assert_eq!(
        std::mem::take(&mut h.out)
            .iter()
            .map(|s| (s.why, s.ports.0, s.packets))
            .collect::<Vec<_>>(),
        [("ended", 9, 2)]
    );
    assert_eq!((h.cache.len(), h.cache.evicted()), (3, 2));
}

#[test]
fn directions_and_taps_are_separate_flows() {
    let mut h = Harness::new(100, 60, 15);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    // One connection seen leaving the client pod (tap 1) and entering the server pod (tap 2).
    for (tap, dir_req, dir_resp) in [
        (1, Direction::FromPod, Direction::ToPod),
        (2, Direction::ToPod, Direction::FromPod),
    ] {
        h.feed(&packet(
            T0,
            tap,
            dir_req,
            tcp_frame(c, s, 40000, 80, SYN, 0),
        ));
        h.feed(&packet(
            T0 + MS,
            tap,
            dir_resp,
            tcp_frame(s, c, 80, 40000, ACK, 0),
        ));
        h.feed(&packet(
            T0 + 2 * MS,
            tap,
            dir_req,
            tcp_frame(c, s, 40000, 80, ACK, 300),
        ));
    }
    let mut got = h.flush();
    got.sort_by_key(|s| (s.tap, s.src.clone()));
    assert_eq!(
        got.iter()
            .map(|s| (s.tap, s.src.as_str(), s.ports, s.to_pod, s.packets))
            .collect::<Vec<_>>(),
        [
            (1, "10.0.0.1", (40000, 80), false, 2),
            (1, "10.0.0.2", (80, 40000), true, 1),
            (2, "10.0.0.1", (40000, 80), true, 2),
            (2, "10.0.0.2", (80, 40000), false, 1),
        ]
    );
}

#[test]
fn protocols_non_ip_and_cut_frames() {
    let mut h = Harness::new(100, 60, 15);
    assert!(!h.feed(&packet(T0, 1, Direction::ToPod, arp_frame())));
    assert!(!h.feed(&packet(T0, 1, Direction::ToPod, vec![1, 2, 3])));
    assert_eq!(h.cache.non_ip_packets(), 2);
    assert!(h.cache.is_empty());

    // ICMP echo request: type 8, code 0.
    let mut icmp = Vec::new();
    l3(
        eth(),
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
    )
    .icmpv4_echo_request(1, 1)
    .write(&mut icmp, &[0; 8])
    .unwrap();
    // A VLAN-tagged IPv6 UDP frame.
    let mut vlan = Vec::new();
    eth()
        .single_vlan(100.try_into().unwrap())
        .ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(5000, 6000)
        .write(&mut vlan, &[0; 20])
        .unwrap();
    // A TCP frame cut to its ports (as a `slice` stage or the agent may): its wire length counts.
    let full = tcp_frame("10.0.0.1", "10.0.0.2", 7, 8, ACK, 1000);
    let mut cut = packet(T0, 1, Direction::FromPod, full[..14 + 20 + 4].to_vec());
    cut.original_len = full.len() as u32;

    for p in [
        packet(T0, 1, Direction::FromPod, icmp),
        packet(T0, 1, Direction::FromPod, vlan),
        cut,
    ] {
        assert!(h.feed(&p));
    }
    let mut got = h.flush();
    got.sort();
    assert_eq!(
        got.iter()
            .map(|s| (s.src.as_str(), s.ports, s.protocol, s.bytes))
            .collect::<Vec<_>>(),
        [
            // IP bytes: without the Ethernet header, and the VLAN tag.
            ("10.0.0.1", (0, 0x0800), 1, 20 + 8 + 8),
            ("10.0.0.1", (7, 8), 6, 20 + 20 + 1000),
            ("fd00::1", (5000, 6000), 17, 40 + 8 + 20),
        ]
    );
}

#[test]
fn flow_packet_of_frame() {
    let frame = udp_frame("10.1.2.3", "10.4.5.6", 1111, 2222, 0);
    let p = FlowPacket::of_frame(&frame, 7, Direction::ToPod).unwrap();
    assert_eq!(
        p.key,
        FlowKey {
            src: "10.1.2.3".parse().unwrap(),
            dst: "10.4.5.6".parse().unwrap(),
            src_port: 1111,
            dst_port: 2222,
            protocol: 17,
            tap: 7,
            direction: Direction::ToPod,
        }
    );
    assert_eq!((p.tcp_flags, p.ip_offset), (0, 14));
    let p = FlowPacket::of_frame(
        &tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, FIN_ACK, 0),
        0,
        Direction::Unknown,
    )
    .unwrap();
    assert_eq!(p.tcp_flags, 0x11);
}

#[test]
fn yaml_defaults_unknown_fields_and_problems() {
    for (kind, yaml) in [
        (
            "netflow_v9",
            "type: netflow_v9\ncollector: 198.18.0.150:2055\n",
        ),
        ("ipfix", "type: ipfix\ncollector: 198.18.0.150:2055\n"),
    ] {
        let cfg: OutputConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(cfg.kind(), kind);
        let (OutputConfig::NetflowV9(c) | OutputConfig::Ipfix(c)) = cfg else {
            panic!("not a flow output");
        };
        assert_eq!(
            c,
            FlowExportConfig {
                collector: "198.18.0.150:2055".parse().unwrap(),
                active_timeout_s: 60,
                inactive_timeout_s: 15,
                template_refresh_s: 60,
                max_flows: 65536,
                observation_domain: 0,
            }
        );
        assert!(c.problems().is_empty());
    }
    let err = serde_yaml_ng::from_str::<OutputConfig>(
        "type: ipfix\ncollector: 192.0.2.1:2055\ntimeout: 5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `timeout`"), "{err}");

    let bad = FlowExportConfig {
        collector: "0.0.0.0:0".parse().unwrap(),
        active_timeout_s: 0,
        inactive_timeout_s: 0,
        template_refresh_s: 0,
        max_flows: 0,
        observation_domain: 1,
    };
    let problems = bad.problems();
    assert_eq!(problems.len(), 6, "{problems:?}");
    for field in [
        "collector",
        "active_timeout_s",
        "inactive_timeout_s",
        "template_refresh_s",
        "max_flows",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(field)),
            "{field}: {problems:?}"
        );
    }
}

/// A running nfcapd on 127.0.0.1, writing to its own temporary directory. Stopped (SIGTERM to
/// its pid, which makes it close its file) by [`Nfcapd::stop`] or on drop.
struct Nfcapd {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nfcapd {
    fn start() -> Nfcapd {
        let dir = tempfile::tempdir().unwrap();
        // A port that was free a moment ago.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("nfcapd")
            .args([
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "3600",
                "-w",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nfcapd could not be run ({e}): install it with scripts/install-deps.sh")
            });
        let nfcapd = Nfcapd {
            child: Some(child),
            dir,
            port,
        };
        // Wait until it listens: its socket shows in /proc/net/udp.
        let needle = format!("0100007F:{port:04X} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string("/proc/net/udp")
            .unwrap()
            .contains(&needle)
        {
            assert!(Instant::now() < deadline, "nfcapd did not bind port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nfcapd
    }

    fn collector(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until nfcapd has read everything sent to it, stops it (it writes its file on
    /// SIGTERM) and returns the flow directory.
    fn stop(&mut self) -> &Path {
        let needle = format!("0100007F:{:04X} ", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = std::fs::read_to_string("/proc/net/udp").unwrap();
            // Columns: sl local_address rem_address st tx_queue:rx_queue ...
            let queued = table
                .lines()
                .find(|l| l.contains(&needle))
                .and_then(|l| l.split_whitespace().nth(4))
                .and_then(|q| q.split_once(':'))
                .map(|(_, rx)| rx.to_string());
            if queued.as_deref() == Some("00000000") || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -TERM nfcapd");
            let status = child.wait().unwrap();
            assert!(status.success(), "nfcapd exited with {status}");
        }
        self.dir.path()
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = self.child.take().map(|mut c| c.wait());
        }
    }
}

/// One thing the collector test does.
enum Step {
    /// Hand the output a packet (with its pod name, if known).
    Packet(Packet<'static>, Option<&'static str>),
    /// Call `tick` this long after the start.
    Tick(u64),
}

/// A flow as nfdump keys it: addresses, ports, protocol, ingress interface (tap) and
/// direction (0: to the pod, 1: from it).
type NfKey = (IpAddr, IpAddr, u16, u16, u8, u16, u8);

/// The collector test's traffic, times from `t0`, and how many records each flow must become.
fn collector_scenario(t0: u64) -> (Vec<Step>, BTreeMap<NfKey, u64>) {
    let mut steps = Vec::new();
    let mut records = BTreeMap::new();
    let at = |ms: u64, tap: u16, dir: Direction, frame: Vec<u8>, pod| {
        Step::Packet(packet(t0 + ms * MS, tap, dir, frame), pod)
    };
    let (from, to) = (Direction::FromPod, Direction::ToPod);
    let cart = Some("shop/cart-1");
    let api = Some("shop/api-0");

    // A TCP/IPv4 connection seen at both ends: leaving cart (tap 1) and entering api (tap 2).
    let (c, s) = ("10.1.0.1", "10.1.0.2");
    for (tap, out, back, pod) in [(1, from, to, cart), (2, to, from, api)] {
        steps.push(at(0, tap, out, tcp_frame(c, s, 40001, 80, SYN, 0), pod));
        steps.push(at(1, tap, back, tcp_frame(s, c, 80, 40001, SYN, 0), pod));
        steps.push(at(2, tap, out, tcp_frame(c, s, 40001, 80, ACK, 500), pod));
        for i in 0..3 {
            steps.push(at(
                3 + i,
                tap,
                back,
                tcp_frame(s, c, 80, 40001, ACK, 1000),
                pod,
            ));
        }
        steps.push(at(
            1500,
            tap,
            out,
            tcp_frame(c, s, 40001, 80, FIN_ACK, 0),
            pod,
        ));
        steps.push(at(
            1501,
            tap,
            back,
            tcp_frame(s, c, 80, 40001, FIN_ACK, 0),
            pod,
        ));
        records.insert(key(c, s, 40001, 80, 6, tap, out), 1);
        records.insert(key(s, c, 80, 40001, 6, tap, back), 1);
    }
    // A TCP/IPv6 connection whose last ACK comes after the FIN's record was exported: that
    // direction makes two records.
    let (c6, s6) = ("fd00::1", "fd00::2");
    steps.push(at(10, 3, from, tcp_frame(c6, s6, 40002, 443, SYN, 0), None));
    steps.push(at(11, 3, to, tcp_frame(s6, c6, 443, 40002, SYN, 0), None));
    steps.push(at(
        12,
        3,
        from,
        tcp_frame(c6, s6, 40002, 443, ACK, 300),
        None,
    ));
    steps.push(at(
        900,
        3,
        to,
        tcp_frame(s6, c6, 443, 40002, FIN_ACK, 700),
        None,
    ));
    steps.push(at(
        901,
        3,
        from,
        tcp_frame(c6, s6, 40002, 443, FIN_ACK, 0),
        None,
    ));
    // A RST from a server that refuses.
    steps.push(at(
        20,
        1,
        from,
        tcp_frame(c, "10.1.0.3", 40003, 8080, SYN, 0),
        cart,
    ));
    steps.push(at(
        21,
        1,
        to,
        tcp_frame("10.1.0.3", c, 8080, 40003, RST, 0),
        cart,
    ));
    records.insert(key(c, "10.1.0.3", 40003, 8080, 6, 1, from), 1);
    records.insert(key("10.1.0.3", c, 8080, 40003, 6, 1, to), 1);
    // DNS over UDP/IPv4, five queries and answers over 1.234 s.
    for i in 0..5 {
        steps.push(at(
            30 + i * 301,
            1,
            from,
            udp_frame(c, "10.96.0.10", 5353, 53, 40),
            cart,
        ));
        steps.push(at(
            31 + i * 301,
            1,
            to,
            udp_frame("10.96.0.10", c, 53, 5353, 120),
            cart,
        ));
    }
    records.insert(key(c, "10.96.0.10", 5353, 53, 17, 1, from), 1);
    records.insert(key("10.96.0.10", c, 53, 5353, 17, 1, to), 1);
    // UDP/IPv6, one way.
    for i in 0..3 {
        steps.push(at(
            40 + i,
            3,
            from,
            udp_frame(c6, "fd00::3", 6000, 6001, 200),
            None,
        ));
    }
    records.insert(key(c6, "fd00::3", 6000, 6001, 17, 3, from), 1);
    // Frames the agent cut to 100 bytes: their wire length counts.
    for i in 0..2 {
        let mut p = packet(
            t0 + (50 + i) * MS,
            1,
            from,
            udp_frame(c, "10.1.0.4", 7000, 7001, 1400),
        );
        p.original_len = p.data.len() as u32;
        p.data.truncate(100);
        steps.push(Step::Packet(p, cart));
    }
    records.insert(key(c, "10.1.0.4", 7000, 7001, 17, 1, from), 1);
    // Forty small flows, more than one message holds.
    for i in 0..40 {
        steps.push(at(
            60,
            4,
            to,
            udp_frame("10.2.0.1", "10.2.0.2", 10000 + i, 9, 0),
            None,
        ));
        records.insert(key("10.2.0.1", "10.2.0.2", 10000 + i, 9, 17, 4, to), 1);
    }
    // Not IP: counted, not exported.
    steps.push(at(70, 1, from, arp_frame(), cart));
    steps.push(at(71, 1, to, arp_frame(), cart));

    // Everything so far is in; a tick exports the FIN/RST flows.
    steps.sort_by_key(|s| match s {
        Step::Packet(p, _) => p.timestamp_ns,
        Step::Tick(ms) => t0 + ms * MS,
    });
    steps.push(Step::Tick(2000));
    // The IPv6 client's last ACK, after its flow was exported.
    steps.push(at(
        2100,
        3,
        from,
        tcp_frame(c6, s6, 40002, 443, ACK, 0),
        None,
    ));
    records.insert(key(c6, s6, 40002, 443, 6, 3, from), 2);
    records.insert(key(s6, c6, 443, 40002, 6, 3, to), 1);
    steps.push(Step::Tick(2200));
    (steps, records)
}

fn key(src: &str, dst: &str, sp: u16, dp: u16, protocol: u8, tap: u16, dir: Direction) -> NfKey {
    let d = if dir == Direction::ToPod { 0 } else { 1 };
    (
        src.parse().unwrap(),
        dst.parse().unwrap(),
        sp,
        dp,
        protocol,
        tap,
        d,
    )
}

fn nf_key(f: &Packet) -> NfKey {
    let p = FlowPacket::of_frame(&f.data, f.source.tap, f.source.direction).unwrap();
    let k = p.key;
    let d = if k.direction == Direction::ToPod {
        0
    } else {
        1
    };
    (k.src, k.dst, k.src_port, k.dst_port, k.protocol, k.tap, d)
}

/// Feeds the scenario to a `version` output exporting to a fresh nfcapd, and checks nfdump's
/// records against it: per flow, the number of records, packets, bytes and duration.
fn collector_receives_what_was_fed(version: FlowVersion) {
    let mut nfcapd = Nfcapd::start();
    let cfg = FlowExportConfig {
        collector: nfcapd.collector(),
        active_timeout_s: 60,
        inactive_timeout_s: 15,
        template_refresh_s: 60,
        max_flows: 1000,
        observation_domain: 7,
    };
    // Recent times, so that nfdump shows sensible dates.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let t0 = (now.as_secs() - 60) * SECOND;
    let (steps, expected_records) = collector_scenario(t0);

    // Ground truth: packets, IP bytes (wire length less the 14-byte Ethernet header) and
    // first/last ms of each flow.
    let mut truth: BTreeMap<NfKey, (u64, u64, u64, u64)> = BTreeMap::new();
    let mut out = FlowExporter::new(&cfg, version, "shop").unwrap();
    let (mut packets, mut non_ip) = (0, 0);
    for step in &steps {
        match step {
            Step::Packet(p, pod) => {
                packets += 1;
                if p.data[12..14] == [0x08, 0x06] {
                    non_ip += 1;
                } else {
                    let ms = (p.timestamp_ns - t0) / MS;
                    let e = truth.entry(nf_key(p)).or_insert((0, 0, ms, ms));
                    e.0 += 1;
                    e.1 += u64::from(p.original_len) - 14;
                    e.3 = ms;
                }
                out.write(Labelled {
                    packet: p,
                    pod: *pod,
                })
                .unwrap();
            }
            Step::Tick(ms) => out.tick(t0 + ms * MS).unwrap(),
        }
    }
    out.finish().unwrap();
    let counters = out.counters();
    let dir = nfcapd.stop().to_path_buf();

    assert_eq!(
        truth.keys().collect::<Vec<_>>(),
        expected_records.keys().collect::<Vec<_>>()
    );
    let flows = nfdump(&dir);
    let mut got: BTreeMap<NfKey, (u64, u64, u64, Vec<String>)> = BTreeMap::new();
    for f in &flows {
        let protocol = match f["pr"].as_str() {
            "TCP" => 6,
            "UDP" => 17,
            other => panic!("unexpected protocol {other}"),
        };
        let k: NfKey = (
            f["sa"].parse().unwrap(),
            f["da"].parse().unwrap(),
            f["sp"].parse().unwrap(),
            f["dp"].parse().unwrap(),
            protocol,
            f["in"].parse().unwrap(),
            f["dir"].parse().unwrap(),
        );
        let e = got.entry(k).or_default();
        e.0 += 1;
        e.1 += f["ipkt"].parse::<u64>().unwrap();
        e.2 += f["ibyt"].parse::<u64>().unwrap();
        e.3.push(f["td"].clone());
    }
    for g in got.values_mut() {
        g.3.sort();
    }
    let want: BTreeMap<NfKey, (u64, u64, u64, Vec<String>)> = truth
        .iter()
        .map(|(k, &(packets, bytes, first, last))| {
            let records = expected_records[k];
            let durations = if records == 1 {
                vec![format!("{:.3}", (last - first) as f64 / 1000.0)]
            } else {
                // Only the IPv6 client's flow splits: SYN to FIN (10 ms to 901 ms), then the
                // late ACK alone (sorted, as `got`'s are).
                assert_eq!(records, 2, "{k:?}");
                vec!["0.000".to_string(), "0.891".to_string()]
            };
            (*k, (records, packets, bytes, durations))
        })
        .collect();
    assert_eq!(got, want, "{version:?}: nfdump per flow vs what was fed");
    // Absolute times: the first packet was at t0, a whole second.
    let first = flows.iter().map(|f| f["ts"].as_str()).min().unwrap();
    assert_eq!(first, utc(t0 / SECOND), "{version:?}: first flow start");

    let exported: u64 = expected_records.values().sum();
    assert_eq!(counters.packets, packets);
    assert_eq!(counters.extra["flows_exported"], exported);
    assert_eq!(counters.extra["flows_active"], 0);
    assert_eq!(counters.extra["flows_evicted"], 0);
    assert_eq!(counters.extra["non_ip_packets"], non_ip);
    assert!(
        counters.extra["messages_sent"] >= 4,
        "{:?}: {} records need several messages",
        version,
        exported
    );
    assert!(counters.errors.is_empty(), "{:?}", counters.errors);
}

#[test]
fn netflow_v9_to_nfcapd() {
    collector_receives_what_was_fed(FlowVersion::V9);
}

#[test]
fn ipfix_to_nfcapd() {
    collector_receives_what_was_fed(FlowVersion::Ipfix);
}

/// Unix seconds as nfdump prints them in UTC: `YYYY-mm-dd HH:MM:SS`.
fn utc(secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = secs / 86_400 + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Set ids at the start of each set of an IPFIX message, with the set lengths.
fn ipfix_sets(message: &[u8]) -> Vec<(u16, usize)> {
    assert_eq!(message[0..2], [0, 10], "IPFIX version");
    assert_eq!(
        usize::from(u16::from_be_bytes([message[2], message[3]])),
        message.len()
    );
    let mut sets = Vec::new();
    let mut rest = &message[16..];
    while rest.len() >= 4 {
        let id = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        sets.push((id, len));
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
    sets
}

#[test]
fn templates_first_and_on_refresh_messages_within_1400_bytes() {
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let cfg = FlowExportConfig {
        collector: collector.local_addr().unwrap(),
        active_timeout_s: 60,
        inactive_timeout_s: 15,
        template_refresh_s: 2,
        max_flows: 1000,
        observation_domain: 0,
    };
    let mut out = FlowExporter::new(&cfg, FlowVersion::Ipfix, "shop").unwrap();
    let mut buf = [0u8; 65536];
    let mut receive = || -> Vec<Vec<(u16, usize)>> {
        let mut messages = Vec::new();
        while let Ok(n) = collector.recv(&mut buf) {
            assert!(n <= 1400, "a {n}-byte message");
            messages.push(ipfix_sets(&buf[..n]));
        }
        messages
    };
    const TEMPLATE_SET: u16 = 2;

    // The first tick sends the templates, even before any flow.
    out.tick(T0).unwrap();
    assert_eq!(receive(), [vec![(TEMPLATE_SET, 4 + 2 * (4 + 13 * 4))]]);

    // Forty flows; nothing is due at the next tick.
    for i in 0..40 {
        let frame = udp_frame("10.2.0.1", "10.2.0.2", 10000 + i, 9, 0);
        let p = packet(T0 + 100 * MS, 4, Direction::ToPod, frame);
        out.write(Labelled {
            packet: &p,
            pod: None,
        })
        .unwrap();
    }
    out.tick(T0 + SECOND).unwrap();
    assert!(receive().is_empty());

    // Their records in several messages, without templates (not due yet).
    out.finish().unwrap();
    let messages = receive();
    assert!(messages.len() >= 3, "{messages:?}");
    let records: usize = messages
        .iter()
        .flatten()
        .map(|&(id, len)| {
            assert_eq!(id, 256, "IPv4 data set");
            // 116-byte records, padded to four.
            (len - 4) / 116
        })
        .sum();
    assert_eq!(records, 40);

    // template_refresh_s later, the templates again.
    out.tick(T0 + 2 * SECOND).unwrap();
    assert_eq!(receive(), [vec![(TEMPLATE_SET, 4 + 2 * (4 + 13 * 4))]]);
    let c = out.counters();
    assert_eq!(c.extra["messages_sent"], 2 + messages.len() as u64);
    assert_eq!(c.extra["flows_exported"], 40);
    assert!(c.errors.is_empty());
}

#[test]
fn send_errors_are_counted_not_fatal() {
    // A port nobody listens on: loopback answers with port unreachable, and the connected
    // socket's next sends fail.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = FlowExportConfig {
        collector: SocketAddr::from(([127, 0, 0, 1], port)),
        active_timeout_s: 60,
        inactive_timeout_s: 15,
        template_refresh_s: 1,
        max_flows: 1000,
        observation_domain: 0,
    };
    let mut out = FlowExporter::new(&cfg, FlowVersion::V9, "shop").unwrap();
    for s in 0..10 {
        let frame = udp_frame("10.2.0.1", "10.2.0.2", 10000 + s as u16, 9, 0);
        let p = packet(T0 + s * SECOND, 4, Direction::ToPod, frame);
        out.write(Labelled {
            packet: &p,
            pod: None,
        })
        .unwrap();
        out.tick(T0 + s * SECOND).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    out.finish().unwrap();
    let c = out.counters();
    assert!(c.errors.get("send").copied().unwrap_or(0) >= 5, "{c:?}");
    assert_eq!(c.extra["flows_exported"], 10);
}
