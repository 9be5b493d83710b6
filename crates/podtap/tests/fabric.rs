//! The fabric end to end in the lab (run as root): agents on two nodes send copies over VXLAN
//! (user space and in the kernel) and L2GRE to a broker in its own namespace, for both CNI
//! styles; the broker's outputs are checked against ground truth (the agent's own capture,
//! the clients' counts, tshark's decode of the tunnels, nfcapd/nfdump for flow export), and bad
//! input on the broker's ports is counted, never fatal.

mod common;
use common::RunningBroker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use podtap_agent::{Agent, AgentConfig, SendMode, TunnelConfig};
use podtap_broker::{Broker, BrokerConfig};
use podtap_cluster::{Cni, PodRef};
use podtap_lab::{Lab, Traffic};
use podtap_testkit::{Captured, Tcpdump, drive, lab, read_pcapng};
use podtap_tunnel::{Oversize, TunnelEndpoint};

const OUTBOUND: u32 = 2; // from the pod
const INBOUND: u32 = 1; // to the pod

fn agent(lab: &Lab, file: &Path, tunnel: Option<TunnelConfig>, namespaces: &[&str]) -> Agent {
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.selection.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    cfg.tunnel = tunnel;
    Agent::start(cfg, Some(Box::new(std::fs::File::create(file).unwrap()))).unwrap()
}

/// Every pcapng file a pcap output wrote, read in order.
fn broker_capture(dir: &Path) -> Vec<Captured> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_pcapng(f)).collect()
}

/// Packets per (interface, direction), as sorted multisets.
fn by_tap(cap: &[Captured]) -> BTreeMap<(String, u32), Vec<Vec<u8>>> {
    let mut m: BTreeMap<(String, u32), Vec<Vec<u8>>> = BTreeMap::new();
    for c in cap {
        m.entry((c.interface.clone(), c.direction))
            .or_default()
            .push(c.data.clone());
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

fn tunnel(endpoint: &str, policy: u32, mode: SendMode) -> TunnelConfig {
    TunnelConfig {
        endpoint: endpoint.parse::<TunnelEndpoint>().unwrap(),
        policy,
        oversize: Oversize::Fragment,
        mode,
    }
}

/// The broker's copies equal the agent's own capture, per pod and direction, for one tunnel
/// kind and sending mode; tshark decodes the tunnel on the wire.
fn copies_arrive(
    tag: &str,
    cni: Cni,
    endpoint_of: impl Fn(&str) -> String,
    policy: u32,
    mode: SendMode,
    decode: &str,
) {
    let mut lab = lab(tag, vec![cni, cni], 3);
    let host = lab.add_host("broker").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("broker");
    let yaml = format!(
        "inventory: {}\npolicies:\n  - name: shop\n    vni: 100\n    gre_key: 100\n    outputs:\n      - type: pcap\n        directory: {}\n",
        lab.inventory_path().display(),
        out.display()
    );
    let wire = Tcpdump::start(&host.netns, "eth0", "in");
    let broker = RunningBroker::start(&host.netns, &yaml);
    let own = dir.path().join("agent.pcapng");
    let a = agent(
        &lab,
        &own,
        Some(tunnel(&endpoint_of(&host.ip.to_string()), policy, mode)),
        &["shop"],
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 30,
            size: 200,
        },
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-2",
        Traffic::UdpEcho {
            count: 30,
            size: 600,
        },
    );
    drive(
        &lab,
        "shop/cart-2",
        "shop/frontend-2",
        Traffic::TcpBulk { bytes: 1 << 20 },
    );
    let agent_stats = a.stop_after(Duration::from_millis(200)).unwrap();
    let stats = broker.stop();
    let on_wire = wire.stop();

    let got = broker_capture(&out);
    let counts = |c: &[Captured], iface: &str, dir: u32, port: u16| {
        podtap_testkit::udp_with_port(c, iface, dir, port)
    };
    assert_eq!(
        counts(&got, "shop/frontend-1", OUTBOUND, 7),
        60,
        "{}",
        stats.render()
    );
    assert_eq!(counts(&got, "shop/cart-1", INBOUND, 7), 30);
    assert_eq!(counts(&got, "shop/cart-2", INBOUND, 7), 30);
    let sent = agent_stats.tunnel.map(|t| t.packets).unwrap_or(0)
        + agent_stats
            .pods
            .iter()
            .map(|p| p.kernel[0].redirected + p.kernel[1].redirected)
            .sum::<u64>();
    assert_eq!(
        stats.received.packets,
        sent,
        "every copy sent arrived: {}",
        stats.render()
    );
    assert!(
        stats.received.malformed.is_empty() && stats.unmatched.is_empty(),
        "{}",
        stats.render()
    );
    if mode == SendMode::UserSpace || mode == SendMode::Auto && !decode.contains("vxlan") {
        // Every copy went through the ring too: the broker has exactly the agent's capture.
        let own = read_pcapng(&own);
        assert!(
            by_tap(&got) == by_tap(&own),
            "broker copies differ from the agent's capture"
        );
    }
    // tshark decodes the tunnel and the inner packets on the broker's wire.
    let dump = dir.path().join("wire.pcap");
    write_pcap(&dump, &on_wire);
    let fields = tshark(&dump, decode);
    assert!(
        fields.len() as u64 >= stats.received.packets,
        "tshark decoded {} packets",
        fields.len()
    );
}

fn write_pcap(path: &Path, packets: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(f).unwrap();
    for (i, p) in packets.iter().enumerate() {
        w.write_packet(&pcap_file::pcap::PcapPacket::new(
            Duration::from_micros(i as u64),
            p.len() as u32,
            p,
        ))
        .unwrap();
    }
}

/// tshark's decode of the tunnel packets matching `filter` (`vxlan` or `gre`): every one must
/// be decoded down to its inner Ethernet frame, with the tunnel id shown. Returns the protocol
/// stacks, one per packet.
fn tshark(file: &Path, filter: &str) -> Vec<String> {
    let (id, extra): (&str, &[&str]) = if filter.contains("vxlan") {
        ("vxlan.vni", &["-d", "udp.port==4789,vxlan"])
    } else {
        ("gre.key", &[])
    };
    let mut args = extra.to_vec();
    args.extend([
        "-Y",
        filter,
        "-T",
        "fields",
        "-e",
        id,
        "-e",
        "frame.protocols",
    ]);
    let lines = podtap_testkit::tshark(file, &args);
    let inner = format!("{filter}:eth:ethertype:");
    for l in &lines {
        let cols: Vec<&str> = l.split('\t').collect();
        assert!(cols.len() == 2 && !cols[0].is_empty(), "tshark line {l:?}");
        assert!(cols[1].contains(&inner), "inner frame not decoded: {l:?}");
    }
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(&format!("{inner}ip:udp:echo")))
            .count()
            >= 120,
        "tshark decoded too few inner UDP echo packets"
    );
    lines
}

#[test]
fn vxlan_from_user_space_calico() {
    copies_arrive(
        "vu",
        Cni::Calico,
        |ip| format!("vxlan://{ip}:4789"),
        100,
        SendMode::UserSpace,
        "vxlan",
    );
}

#[test]
fn vxlan_in_kernel_flannel() {
    copies_arrive(
        "vk",
        Cni::Flannel,
        |ip| format!("vxlan://{ip}:4789"),
        100,
        SendMode::Kernel,
        "vxlan",
    );
}

#[test]
fn l2gre_flannel_and_calico() {
    copies_arrive(
        "gf",
        Cni::Flannel,
        |ip| format!("l2gre://{ip}"),
        100,
        SendMode::Auto,
        "gre",
    );
    copies_arrive(
        "gc",
        Cni::Calico,
        |ip| format!("l2gre://{ip}"),
        100,
        SendMode::Auto,
        "gre",
    );
}

/// Flows by (source, destination, source port, destination port, protocol) as nfdump prints
/// them: (packets, bytes).
type Flows = BTreeMap<(String, String, String, String, String), (u64, u64)>;

/// nfcapd (Debian's nfdump) in the broker's namespace, as a child we stop by pid.
struct Nfcapd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nfcapd {
    fn start(netns: &str, port: u16) -> Nfcapd {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "nfcapd",
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
            .expect("nfcapd is installed (scripts/install-deps.sh)");
        std::thread::sleep(Duration::from_millis(500));
        Nfcapd { child, dir }
    }

    /// Stops nfcapd (it writes its file) and returns nfdump's flows: (src, dst, sport, dport,
    /// proto) -> (packets, bytes).
    fn flows(mut self) -> Flows {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: a pid this test spawned (`ip netns exec` execs nfcapd).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        // Give nfcapd a moment to take the last datagrams off its socket.
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("nfdump")
            .arg("-R")
            .arg(self.dir.path())
            .args(["-N", "-o", "csv"])
            .env("TZ", "UTC")
            .output()
            .expect("nfdump is installed (scripts/install-deps.sh)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("nfdump csv has no {name}: {header:?}"))
        };
        let (sa, da, sp, dp, pr, pkt, byt) = (
            col("sa"),
            col("da"),
            col("sp"),
            col("dp"),
            col("pr"),
            col("ipkt"),
            col("ibyt"),
        );
        let mut m = BTreeMap::new();
        for line in lines.take_while(|l| !l.is_empty() && !l.starts_with("Summary")) {
            let f: Vec<String> = line.split(',').map(|s| s.trim().to_string()).collect();
            let e = m
                .entry((
                    f[sa].clone(),
                    f[da].clone(),
                    f[sp].clone(),
                    f[dp].clone(),
                    f[pr].clone(),
                ))
                .or_insert((0, 0));
            e.0 += f[pkt].parse::<u64>().unwrap_or(0);
            e.1 += f[byt].parse::<u64>().unwrap_or(0);
        }
        m
    }
}

#[test]
fn netflow_v9_and_ipfix_reach_nfcapd_with_the_right_totals() {
    let mut lab = lab("nf", vec![Cni::Calico, Cni::Flannel], 3);
    let host = lab.add_host("broker").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (v9, ipfix) = (
        Nfcapd::start(&host.netns, 2055),
        Nfcapd::start(&host.netns, 4739),
    );
    let yaml = format!(
        "policies:\n  - name: flows\n    vni: 7\n    outputs:\n      - type: netflow_v9\n        collector: 127.0.0.1:2055\n      - type: ipfix\n        collector: 127.0.0.1:4739\n      - type: pcap\n        directory: {}\n",
        dir.path().join("p").display()
    );
    let broker = RunningBroker::start(&host.netns, &yaml);
    // Tap only frontend-1 so each 5-tuple is seen at one tap.
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.selection.pods = vec![PodRef::parse("shop/frontend-1").unwrap()];
    cfg.prefilter = podtap_agent::Prefilter::parse("proto udp,tcp").unwrap();
    cfg.tunnel = Some(tunnel(
        &format!("vxlan://{}:4789", host.ip),
        7,
        SendMode::UserSpace,
    ));
    let a = Agent::start(cfg, None).unwrap();
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 25,
            size: 300,
        },
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-2",
        Traffic::UdpEcho {
            count: 40,
            size: 900,
        },
    );
    a.stop_after(Duration::from_millis(200)).unwrap();
    let stats = broker.stop();
    let truth = broker_capture(&dir.path().join("p"));
    let (v9, ipfix) = (v9.flows(), ipfix.flows());

    // Ground truth per 5-tuple from the packets the broker received (IP bytes, as NetFlow counts).
    let mut want = Flows::new();
    for c in &truth {
        let d = &c.data;
        if d.len() < 42 || d[12..14] != [8, 0] || d[23] != 17 {
            continue;
        }
        let ip = |o: usize| format!("{}.{}.{}.{}", d[o], d[o + 1], d[o + 2], d[o + 3]);
        let port = |o: usize| u16::from_be_bytes([d[o], d[o + 1]]).to_string();
        let e = want
            .entry((ip(26), ip(30), port(34), port(36), "UDP".into()))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += u64::from(c.original_len) - 14;
    }
    assert_eq!(
        want.values().map(|v| v.0).sum::<u64>(),
        130,
        "{}",
        stats.render()
    );
    for (name, got) in [("netflow_v9", &v9), ("ipfix", &ipfix)] {
        let udp: BTreeMap<_, _> = got
            .iter()
            .filter(|(k, _)| k.4 == "UDP")
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            udp, want,
            "{name}: nfdump's UDP flows differ from what was sent"
        );
    }
}

#[test]
fn dedupe_removes_exactly_the_same_node_pair_duplicates() {
    for (tag, cni) in [("dc", Cni::Calico), ("df", Cni::Flannel)] {
        let mut lab = lab(tag, vec![cni], 3);
        let host = lab.add_host("broker").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (all, dedup) = (dir.path().join("all"), dir.path().join("dedup"));
        let yaml = format!(
            "policies:\n  - name: all\n    vni: 1\n    outputs:\n      - type: pcap\n        directory: {}\n  - name: dedup\n    vni: 2\n    stages:\n      - type: dedupe\n        window_ms: 100\n    outputs:\n      - type: pcap\n        directory: {}\n",
            all.display(),
            dedup.display()
        );
        let broker = RunningBroker::start(&host.netns, &yaml);
        let ep = format!("vxlan://{}:4789", host.ip);
        // Two agents on the same node, one per policy, tapping every pod of `shop`: the
        // frontend-1 <-> cart-1 pair is tapped at both ends.
        let a1 = agent(
            &lab,
            &dir.path().join("a1.pcapng"),
            Some(tunnel(&ep, 1, SendMode::UserSpace)),
            &["shop"],
        );
        let a2 = agent(
            &lab,
            &dir.path().join("a2.pcapng"),
            Some(tunnel(&ep, 2, SendMode::UserSpace)),
            &["shop"],
        );
        drive(
            &lab,
            "shop/frontend-1",
            "shop/cart-1",
            Traffic::UdpEcho {
                count: 40,
                size: 120,
            },
        );
        // Tapped at one end only (payments is not tapped): nothing to remove.
        drive(
            &lab,
            "shop/frontend-1",
            "payments/ledger-1",
            Traffic::UdpEcho {
                count: 20,
                size: 120,
            },
        );
        a1.stop_after(Duration::from_millis(200)).unwrap();
        a2.stop_after(Duration::from_millis(200)).unwrap();
        let stats = broker.stop();
        let (all, dedup) = (broker_capture(&all), broker_capture(&dedup));
        let udp7 = |c: &[Captured]| {
            c.iter()
                .filter(|p| {
                    p.data.len() >= 42 && p.data[23] == 17 && p.data[36..38] == [0, 7]
                        || p.data.len() >= 42 && p.data[23] == 17 && p.data[34..36] == [0, 7]
                })
                .count()
        };
        // Without dedupe: the pair's 80 packets twice, the one-sided flow's 40 once.
        assert_eq!(udp7(&all), 80 * 2 + 40, "{}", stats.render());
        assert_eq!(udp7(&dedup), 80 + 40, "{cni:?}: {}", stats.render());
        // The two agents started a moment apart, so the policies' inputs differ by a few ARP
        // packets; the duplicates dropped cover at least the pair's 80.
        let dropped = stats.policies[1].stages[0]
            .dropped
            .get("duplicate")
            .copied()
            .unwrap_or(0);
        assert!(dropped >= 80, "{}", stats.render());
    }
}

#[test]
fn filter_slice_and_tool_port_deliver_exactly_the_filtered_stream() {
    let mut lab = lab("tp", vec![Cni::Calico], 2);
    let host = lab.add_host("broker").unwrap();
    let tool = lab.add_host("tool").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let yaml = format!(
        "policies:\n  - name: web\n    vni: 9\n    stages:\n      - type: filter\n        expression: \"udp port 7\"\n      - type: slice\n        length: 64\n    outputs:\n      - type: pcap\n        directory: {}\n      - type: vxlan\n        remote: {}:4789\n        vni: 77\n",
        out.display(),
        tool.ip
    );
    let at_tool = Tcpdump::start(&tool.netns, "eth0", "in");
    let broker = RunningBroker::start(&host.netns, &yaml);
    let a = agent(
        &lab,
        &dir.path().join("a.pcapng"),
        Some(tunnel(
            &format!("vxlan://{}:4789", host.ip),
            9,
            SendMode::UserSpace,
        )),
        &["shop"],
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 25,
            size: 300,
        },
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::TcpEcho {
            messages: 10,
            size: 100,
        },
    );
    a.stop_after(Duration::from_millis(200)).unwrap();
    let stats = broker.stop();
    let kept = broker_capture(&out);
    // 25 requests + 25 echoes, at both taps.
    assert_eq!(kept.len(), 100, "{}", stats.render());
    for p in &kept {
        assert_eq!(p.data.len(), 64);
        assert_eq!(p.original_len, 14 + 20 + 8 + 300);
    }
    // The tool received the same stream, in VXLAN with VNI 77 and no podtap labels.
    let mut sent_to_tool: Vec<Vec<u8>> = at_tool
        .stop()
        .into_iter()
        .filter(|f| f.len() > 50 && f[23] == 17 && f[36..38] == [0x12, 0xb5])
        .map(|f| {
            assert_eq!(f[42], 0x08, "plain VXLAN flags");
            assert_eq!(&f[46..49], &[0, 0, 77]);
            f[50..].to_vec()
        })
        .collect();
    let mut from_pcap: Vec<Vec<u8>> = kept.iter().map(|p| p.data.clone()).collect();
    sent_to_tool.sort();
    from_pcap.sort();
    assert!(
        sent_to_tool == from_pcap,
        "the tool port's stream differs from the kept packets"
    );
}

#[test]
fn garbage_and_unknown_labels_are_counted_never_fatal() {
    let mut lab = lab("gb", vec![Cni::Calico], 1);
    let host = lab.add_host("broker").unwrap();
    let sender = lab.add_host("noise").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "policies:\n  - name: p\n    vni: 5\n    gre_key: 5\n    outputs:\n      - type: pcap\n        directory: {}\n",
        dir.path().display()
    );
    let broker = RunningBroker::start(&host.netns, &yaml);
    let target = host.ip;
    podtap_cluster::netns::run_in(Some(&sender.netns), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let to = (target, 4789);
        let frame = [0u8; 60];
        s.send_to(b"garbage", to).unwrap(); // truncated VXLAN
        s.send_to(&[0u8; 8], to).unwrap(); // no I flag
        let mut hdr = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
        hdr.extend_from_slice(&[0u8; 4]); // frame cut short
        s.send_to(&hdr, to).unwrap();
        let mut unknown = vec![0x08, 0, 0, 0, 0, 0, 9, 0];
        unknown.extend_from_slice(&frame);
        s.send_to(&unknown, to).unwrap(); // VNI 9: no policy
        let mut good = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
        good.extend_from_slice(&frame);
        s.send_to(&good, to).unwrap();
        // GRE: wrong protocol type, and a good L2GRE packet.
        let g = podtap_tunnel_raw_gre();
        let mut not_l2 = vec![0x20, 0, 0x08, 0x00, 0, 5, 0, 1];
        not_l2.extend_from_slice(&frame);
        let _ = g.send(&not_l2, target);
        let mut l2 = vec![0x20, 0, 0x65, 0x58, 0, 5, 0, 1];
        l2.extend_from_slice(&frame);
        let _ = g.send(&l2, target);
    })
    .unwrap();
    let stats = broker.stop();
    let m = &stats.received.malformed;
    assert_eq!(m.get("vxlan_truncated"), Some(&1), "{}", stats.render());
    assert_eq!(m.get("vxlan_no_vni"), Some(&1), "{}", stats.render());
    assert_eq!(
        m.get("vxlan_frame_truncated"),
        Some(&1),
        "{}",
        stats.render()
    );
    assert_eq!(m.get("not_l2gre"), Some(&1), "{}", stats.render());
    assert_eq!(stats.unmatched.get("unknown_vni"), Some(&1));
    assert_eq!(stats.policies[0].received, 2, "{}", stats.render());
}

/// A raw GRE socket for the garbage test.
struct RawGre(std::os::fd::OwnedFd);

fn podtap_tunnel_raw_gre() -> RawGre {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2), owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 47) };
    assert!(fd >= 0);
    // SAFETY: fd is ours.
    RawGre(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl RawGre {
    fn send(&self, payload: &[u8], to: std::net::Ipv4Addr) -> isize {
        use std::os::fd::AsRawFd;
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffers for the call.
        unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                payload.as_ptr() as *const libc::c_void,
                payload.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        }
    }
}

#[test]
fn an_invalid_pipeline_is_refused_with_every_problem() {
    let yaml = "policies:\n  - name: Bad_Name\n    vni: 0\n    stages:\n      - type: filter\n        expression: \"tcp port\"\n      - type: sample\n        one_in: 0\n    outputs: []\n  - name: ok\n    vni: 5\n    outputs:\n      - type: vxlan\n        remote: 198.18.0.9:0\n        vni: 99999999\n";
    let err = BrokerConfig::parse(yaml, Path::new("bad.yaml"))
        .unwrap_err()
        .to_string();
    for needle in [
        "Bad_Name",
        "vni 0",
        "stages[0] (filter)",
        "stages[1] (sample)",
        "outputs: at least one",
        "port 0",
        "99999999",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    let unknown = BrokerConfig::parse(
        "policies:\n  - name: x\n    vni: 1\n    colour: red\n    outputs: []\n",
        Path::new("u.yaml"),
    );
    assert!(unknown.unwrap_err().to_string().contains("colour"));
}

#[test]
fn overload_loss_is_counted_exactly_and_metrics_show_drops_by_reason() {
    let mut lab = lab("ov", vec![Cni::Calico], 1);
    let host = lab.add_host("broker").unwrap();
    let sender = lab.add_host("flood").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen:\n  metrics: 127.0.0.1:9465\npolicies:\n  - name: p\n    vni: 5\n    stages:\n      - type: filter\n        expression: \"udp\"\n    outputs:\n      - type: pcap\n        directory: {}\n",
        dir.path().display()
    );
    let config = BrokerConfig::parse(&yaml, Path::new("t.yaml")).unwrap();
    // The broker binds its sockets, then does not read while a burst far larger than its
    // receive buffer arrives: the kernel drops the excess and says how many.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let netns = host.netns.clone();
    let handle = std::thread::spawn(move || {
        podtap_cluster::netns::enter(&netns).unwrap();
        let mut broker = Broker::start(config).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:9465").unwrap();
        let stats = broker.shared_stats();
        podtap_metrics::serve(listener, move || podtap_broker::metrics::render(&stats)).unwrap();
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        broker.run(&flag, None);
        let body =
            podtap_cluster::netns::run_in(None, || podtap_testkit::scrape_metrics(9465)).unwrap();
        (broker.finish(), body)
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let sent = 60_000u64;
    let target = host.ip;
    podtap_cluster::netns::run_in(Some(&sender.netns), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut udp = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
        let mut frame = vec![0u8; 1000];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[23] = 17; // UDP
        udp.extend_from_slice(&frame);
        for i in 0..sent {
            // Every 3rd one is TCP, for the filter to drop.
            udp[8 + 23] = if i % 3 == 0 { 6 } else { 17 };
            while s.send_to(&udp, (target, 4789)).is_err() {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    })
    .unwrap();
    go_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (stats, metrics) = handle.join().unwrap();
    let r = &stats.received;
    assert!(
        r.socket_dropped > 0,
        "the burst did not overflow the socket: {}",
        stats.render()
    );
    assert_eq!(
        r.packets + r.socket_dropped,
        sent,
        "received + dropped by the kernel != sent: {}",
        stats.render()
    );
    let p = &stats.policies[0];
    let filtered = p.stages[0].dropped.get("unmatched").copied().unwrap_or(0);
    assert_eq!(p.received, r.packets);
    assert_eq!(p.kept + filtered, p.received);
    assert!(
        metrics.contains("podtap_broker_socket_dropped_packets_total"),
        "{metrics}"
    );
    let line = format!(
        "podtap_stage_dropped_packets_total{{policy=\"p\",stage=\"0:filter\",reason=\"unmatched\"}} {filtered}"
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
}

#[test]
fn oversize_copies_are_fragmented_or_truncated_and_counted() {
    let mut lab = lab("mt", vec![Cni::Calico], 2);
    let host = lab.add_host("broker").unwrap();
    for (oversize, tag) in [(Oversize::Fragment, "frag"), (Oversize::Truncate, "trunc")] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "policies:\n  - name: {tag}\n    vni: 3\n    outputs:\n      - type: pcap\n        directory: {}\n",
            dir.path().display()
        );
        let broker = RunningBroker::start(&host.netns, &yaml);
        // GSO super-packets kept whole: far bigger than the 1550-byte underlay allows.
        let mut cfg = AgentConfig::new(lab.inventory_path());
        cfg.selection.pods = vec![PodRef::parse("shop/frontend-1").unwrap()];
        cfg.gso = podtap_agent::GsoMode::Keep;
        cfg.tunnel = Some(TunnelConfig {
            endpoint: format!("vxlan://{}:4789", host.ip).parse().unwrap(),
            policy: 3,
            oversize,
            mode: SendMode::UserSpace,
        });
        let a = Agent::start(cfg, None).unwrap();
        drive(
            &lab,
            "shop/frontend-1",
            "shop/cart-1",
            Traffic::TcpBulk { bytes: 2 << 20 },
        );
        let agent_stats = a.stop_after(Duration::from_millis(200)).unwrap();
        let stats = broker.stop();
        let t = agent_stats.tunnel.unwrap();
        let got = broker_capture(dir.path());
        let largest = got.iter().map(|c| c.data.len()).max().unwrap_or(0);
        assert_eq!(
            stats.received.packets,
            t.packets,
            "{tag}: every copy arrives: {}",
            stats.render()
        );
        // The policy has no stages: every copy that arrived is written.
        assert_eq!(got.len() as u64, stats.received.packets, "{tag}: written");
        match oversize {
            Oversize::Fragment => {
                assert!(t.fragmented > 0 && t.truncated == 0, "{t:?}");
                assert!(
                    largest > 1514,
                    "reassembled copies keep their size ({largest})"
                );
            }
            Oversize::Truncate => {
                assert!(t.truncated > 0 && t.fragmented == 0, "{t:?}");
                assert!(
                    largest <= 1514,
                    "truncated copies fit the underlay ({largest})"
                );
            }
        }
    }
}
