//! The tap against the real kernel, in lab namespaces (run as root): copies equal tcpdump's on
//! the same veth, selection and inventory changes, overload accounting, GSO handling, runtime
//! prefilter changes, and nothing left attached afterwards.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podtap_agent::{Agent, AgentConfig, GsoMode, Prefilter};
use podtap_cluster::{Cni, LabelSelector, PodRef, PodSelection};
use podtap_lab::{Lab, Traffic};
use podtap_testkit::drive;
use podtap_testkit::*;

/// BPF programs hooked on a veth (TCX or netlink tc), as the kernel reports them.
fn hooks(netns: &str, veth: &str) -> Vec<String> {
    podtap_agent::program::hooks_on(Some(netns), veth).unwrap()
}

const OUTBOUND: u32 = 2; // from the pod
const INBOUND: u32 = 1; // to the pod

fn start(lab: &Lab, cfg_edit: impl FnOnce(&mut AgentConfig), out: &Path) -> Agent {
    let mut cfg = AgentConfig::new(lab.inventory_path());
    cfg.inventory_poll = Duration::from_millis(100);
    cfg_edit(&mut cfg);
    Agent::start(cfg, Some(Box::new(std::fs::File::create(out).unwrap()))).unwrap()
}

/// Every packet once per veth and direction, byte-identical to tcpdump on the same veth.
fn copies_equal_tcpdump(tag: &str, cni: Cni) {
    let lab = lab(tag, vec![cni, cni], 3);
    let a = pod(&lab, "shop/frontend-1").clone();
    let b = pod(&lab, "shop/cart-1").clone();
    let c = pod(&lab, "shop/cart-2").clone();
    let dumps: Vec<(String, u32, Tcpdump)> = [&a, &b, &c]
        .iter()
        .flat_map(|p| {
            let netns = lab.node_netns(&p.node).unwrap().to_string();
            [("in", OUTBOUND), ("out", INBOUND)].map(|(q, dir)| {
                (
                    p.key().to_string(),
                    dir,
                    Tcpdump::start(&netns, &p.host_veth, q),
                )
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let agent = start(&lab, |c| c.namespaces_only(&["shop"]), &out);

    // Known count and size: same node (a->b) and across nodes (a->c).
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 40,
            size: 300,
        },
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-2",
        Traffic::UdpEcho {
            count: 30,
            size: 700,
        },
    );
    drive(
        &lab,
        "shop/cart-1",
        "shop/cart-2",
        Traffic::TcpEcho {
            messages: 20,
            size: 100,
        },
    );
    drive(
        &lab,
        "shop/cart-2",
        "shop/frontend-1",
        Traffic::Ping { count: 5 },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    let cap = read_pcapng(&out);

    // tcpdump starts before the agent and stops after it, so control packets the kernel sends
    // on its own timers (ARP probes, IGMP reports of the bridge: multicast MACs) may fall into
    // tcpdump's capture only: everything else must be identical, and those ours a subset of
    // tcpdump's.
    let is_control = |f: &Vec<u8>| f.len() >= 14 && (f[12..14] == [0x08, 0x06] || f[0] & 1 == 1);
    for (iface, dir, dump) in dumps {
        let truth = sorted(dump.stop());
        let ours = packets_of(&cap, &iface, dir);
        assert!(
            !truth.is_empty(),
            "tcpdump saw nothing on {iface} dir {dir}"
        );
        let (truth_ctl, truth_ip): (Vec<_>, Vec<_>) = truth.into_iter().partition(is_control);
        let (ours_ctl, ours_ip): (Vec<_>, Vec<_>) = ours.into_iter().partition(is_control);
        let missing: Vec<String> = truth_ip
            .iter()
            .filter(|p| !ours_ip.contains(p))
            .map(|p| format!("{:02x?}", &p[..p.len().min(64)]))
            .collect();
        assert_eq!(
            ours_ip.len(),
            truth_ip.len(),
            "{iface} dir {dir}: packet count differs from tcpdump; tcpdump only: {missing:?}"
        );
        assert!(
            ours_ip == truth_ip,
            "{iface} dir {dir}: bytes differ from tcpdump"
        );
        for a in &ours_ctl {
            assert!(
                truth_ctl.contains(a),
                "{iface} dir {dir}: a control packet tcpdump did not see"
            );
        }
        assert!(
            truth_ctl.len() - ours_ctl.len() <= 2,
            "{iface} dir {dir}: control packets missing"
        );
    }
    // Against the clients' own counts: 40 + 30 echo requests of exact size left frontend-1.
    let udp_from_a = cap
        .iter()
        .filter(|p| p.interface == "shop/frontend-1" && p.direction == OUTBOUND)
        .filter(|p| p.data.len() == 14 + 20 + 8 + 300 || p.data.len() == 14 + 20 + 8 + 700)
        .count();
    assert_eq!(udp_from_a, 70);
    assert_eq!(udp_with_port(&cap, "shop/cart-1", INBOUND, 7), 40);
    assert_eq!(stats.dropped(), 0);
    // ledger pods are in `payments`: never tapped.
    assert!(cap.iter().all(|p| p.interface.starts_with("shop/")));
}

#[test]
fn calico_copies_equal_tcpdump() {
    copies_equal_tcpdump("c", Cni::Calico);
}

#[test]
fn flannel_copies_equal_tcpdump() {
    copies_equal_tcpdump("f", Cni::Flannel);
}

trait SelectionExt {
    fn namespaces_only(&mut self, ns: &[&str]);
}
impl SelectionExt for AgentConfig {
    fn namespaces_only(&mut self, ns: &[&str]) {
        self.selection.namespaces = ns.iter().map(|s| s.to_string()).collect();
    }
}

fn wait_until(agent: &mut Agent, what: &str, cond: impl Fn(&Agent) -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond(agent) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not within 5 s: {what}"
        );
        agent
            .run(
                &AtomicBool::new(false),
                Some(Instant::now() + Duration::from_millis(100)),
            )
            .unwrap();
    }
    t0.elapsed()
}

#[test]
fn selection_and_inventory_changes() {
    let mut lab = lab("s", vec![Cni::Calico, Cni::Flannel], 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let mut agent = start(
        &lab,
        |c| {
            c.selection = PodSelection {
                pod_selector: LabelSelector::parse("app=cart").unwrap(),
                ..Default::default()
            }
        },
        &out,
    );
    let tapped: Vec<String> = agent
        .tapped()
        .iter()
        .map(|(p, _, _)| p.to_string())
        .collect();
    assert_eq!(tapped.len(), 2, "{tapped:?}");

    // Unselected pods produce nothing.
    drive(
        &lab,
        "shop/frontend-1",
        "payments/ledger-2",
        Traffic::UdpEcho {
            count: 10,
            size: 64,
        },
    );
    // A selected one does.
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-2",
        Traffic::UdpEcho {
            count: 10,
            size: 64,
        },
    );

    // A new pod with the label is tapped within seconds, and untapped when it goes.
    let labels = [("app".to_string(), "cart".to_string())].into();
    let new = lab.add_pod("node-1", "shop", "cart-new", labels).unwrap();
    let took = wait_until(&mut agent, "new pod tapped", |a| {
        a.tapped().iter().any(|(p, _, _)| p.name == "cart-new")
    });
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-new",
        Traffic::UdpEcho {
            count: 10,
            size: 64,
        },
    );
    lab.remove_pod(&new.key()).unwrap();
    wait_until(&mut agent, "removed pod untapped", |a| {
        !a.tapped().iter().any(|(p, _, _)| p.name == "cart-new")
    });
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();

    let cap = read_pcapng(&out);
    let ifaces: std::collections::BTreeSet<&str> =
        cap.iter().map(|p| p.interface.as_str()).collect();
    assert!(
        !ifaces.contains("shop/frontend-1") && !ifaces.contains("payments/ledger-2"),
        "{ifaces:?}"
    );
    assert_eq!(udp_with_port(&cap, "shop/cart-2", INBOUND, 7), 10);
    assert_eq!(udp_with_port(&cap, "shop/cart-new", INBOUND, 7), 10);
    let new_stats = stats
        .pods
        .iter()
        .find(|p| p.pod.name == "cart-new")
        .unwrap();
    assert!(!new_stats.tapped && new_stats.kernel[1].packets >= 10);
}

#[test]
fn overload_counts_every_lost_copy_and_traffic_flows() {
    let lab = lab("o", vec![Cni::Calico], 2);
    // Resolve neighbours first so the flood is the only traffic.
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho { count: 1, size: 64 },
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let agent = start(
        &lab,
        |c| {
            c.ring_bytes = 16 * 1024; // deliberately small
            c.prefilter = Prefilter::parse("proto udp and port 9").unwrap();
            c.selection.pods = vec![PodRef::parse("shop/frontend-1").unwrap()];
        },
        &out,
    );
    let sent = 200_000u32;
    let flood = lab
        .drive(
            &PodRef::parse("shop/frontend-1").unwrap(),
            &PodRef::parse("shop/cart-1").unwrap(),
            &Traffic::UdpFlood {
                count: sent,
                size: 22,
                rate_pps: None,
            },
        )
        .unwrap();
    // The pods' own traffic keeps flowing during and after the overload.
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::TcpEcho {
            messages: 20,
            size: 100,
        },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    let cap = read_pcapng(&out);

    let p = &stats.pods[0];
    let written = udp_with_port(&cap, "shop/frontend-1", OUTBOUND, 9) as u64;
    let dropped = p.kernel[0].ring_full;
    assert_eq!(flood.sent_packets, u64::from(sent));
    assert!(dropped > 0, "the small ring never overflowed: {p:?}");
    assert_eq!(
        written + dropped,
        flood.sent_packets,
        "written {written} + dropped {dropped} != sent"
    );
    assert_eq!(p.kernel[0].load_failed, 0);
    // The tap never drops the pod's packets: the sink got what a tap-less run gets, which on
    // a veth is everything the socket accepted, give or take the sink's own buffer.
    assert!(
        flood.received_packets * 100 >= flood.sent_packets * 90,
        "{flood:?}"
    );
}

#[test]
fn gso_kept_equals_tcpdump_and_segmented_rebuilds_the_stream() {
    let lab = lab("g", vec![Cni::Calico, Cni::Calico], 2);
    let a = pod(&lab, "shop/frontend-1").clone();
    let netns = lab.node_netns(&a.node).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();

    // keep: super-packets exactly as tcpdump on the veth sees them.
    let dump = Tcpdump::start(&netns, &a.host_veth, "in");
    let out = dir.path().join("keep.pcapng");
    let agent = start(
        &lab,
        |c| {
            c.gso = GsoMode::Keep;
            c.selection.pods = vec![a.key()];
        },
        &out,
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/frontend-2",
        Traffic::TcpBulk { bytes: 4 << 20 },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    let truth = sorted(dump.stop());
    let cap = read_pcapng(&out);
    assert!(
        stats.pods[0].kernel[0].gso > 0,
        "no GSO super-packets were made"
    );
    assert!(cap.iter().any(|p| p.data.len() > 1514));
    assert!(
        packets_of(&cap, "shop/frontend-1", OUTBOUND) == truth,
        "keep mode differs from tcpdump"
    );

    // segment: wire-size packets whose payload is the exact byte stream sent.
    let dump = Tcpdump::start(&netns, &a.host_veth, "in");
    let out = dir.path().join("segment.pcapng");
    let agent = start(&lab, |c| c.selection.pods = vec![a.key()], &out);
    let bytes = 3 << 20;
    drive(
        &lab,
        "shop/frontend-1",
        "shop/frontend-2",
        Traffic::TcpBulk { bytes },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    let truth = dump.stop();
    let cap = read_pcapng(&out);
    let pk = &stats.pods[0];
    assert!(pk.kernel[0].gso > 0 && pk.output[0].segmented == pk.kernel[0].gso);
    assert_eq!(pk.output[0].segment_failed, 0);
    assert_eq!(pk.output[0].packets, pk.kernel[0].packets);
    let mtu_frame = 14 + 1500;
    let mut segments = std::collections::BTreeMap::new();
    for p in cap.iter().filter(|p| p.direction == OUTBOUND) {
        assert!(p.data.len() <= mtu_frame, "frame of {} bytes", p.data.len());
        let eth = etherparse::SlicedPacket::from_ethernet(&p.data).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = eth.transport else {
            continue;
        };
        let Some(etherparse::NetSlice::Ipv4(ip)) = eth.net else {
            continue;
        };
        // Either passed through untouched (as tcpdump saw it) or a segment we built, whose
        // checksum must then be right.
        let valid = tcp
            .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
            .unwrap()
            == tcp.checksum();
        assert!(
            valid || truth.contains(&p.data),
            "a segment with a bad checksum"
        );
        if !tcp.payload().is_empty() {
            segments.insert(tcp.sequence_number(), tcp.payload().to_vec());
        }
    }
    // Rebuild the stream from sequence numbers (relative to the first data byte).
    let isn = *segments.keys().next().unwrap();
    let mut stream = Vec::new();
    for (seq, payload) in &segments {
        let off = seq.wrapping_sub(isn) as usize;
        if off + payload.len() > stream.len() {
            stream.resize(off + payload.len(), 0);
        }
        stream[off..off + payload.len()].copy_from_slice(payload);
    }
    assert_eq!(stream.len() as u64, bytes);
    let mut expected = vec![0u8; bytes as usize];
    podtap_lab::traffic::fill_pattern(0, &mut expected);
    assert!(
        stream == expected,
        "segment payloads do not rebuild the byte stream"
    );
}

#[test]
fn prefilter_changes_without_reload_and_stop_leaves_nothing() {
    let lab = lab("p", vec![Cni::Flannel], 2);
    let a = pod(&lab, "shop/frontend-1").clone();
    let netns = lab.node_netns(&a.node).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let mut agent = start(
        &lab,
        |c| {
            c.prefilter = Prefilter::parse("proto udp").unwrap();
            c.selection.pods = vec![a.key()];
        },
        &out,
    );
    let ids = agent.program_ids();
    assert_eq!(hooks(&netns, &a.host_veth), ["tap_from_pod", "tap_to_pod"]);
    // The same traffic before and after the prefilter changes: 10 UDP then 10 TCP echoes.
    let udp_then_tcp = || {
        drive(
            &lab,
            "shop/frontend-1",
            "shop/cart-1",
            Traffic::UdpEcho {
                count: 10,
                size: 100,
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
    };
    udp_then_tcp();
    agent
        .set_prefilter(Prefilter::parse("proto tcp and port 7").unwrap())
        .unwrap();
    udp_then_tcp();
    assert_eq!(agent.program_ids(), ids, "programs were reloaded");
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    assert!(hooks(&netns, &a.host_veth).is_empty(), "still attached");

    let cap = read_pcapng(&out);
    let protos: Vec<u8> = cap.iter().map(|p| p.data[23]).collect();
    let first_tcp = protos.iter().position(|&p| p == 6).unwrap();
    assert!(
        protos[..first_tcp].iter().all(|&p| p == 17),
        "TCP copied under `proto udp`"
    );
    assert!(
        protos[first_tcp..].iter().all(|&p| p == 6),
        "UDP copied under `proto tcp`"
    );
    assert_eq!(protos.iter().filter(|&&p| p == 17).count(), 20); // 10 requests, 10 echoes
    assert!(stats.pods[0].kernel[0].filtered > 0);
}

#[test]
fn netlink_fallback_taps_and_cleans_up() {
    let lab = lab("n", vec![Cni::Calico], 2);
    let a = pod(&lab, "shop/frontend-1").clone();
    let netns = lab.node_netns(&a.node).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let agent = start(
        &lab,
        |c| {
            c.attach = podtap_agent::AttachMode::Netlink;
            c.selection.pods = vec![a.key()];
        },
        &out,
    );
    assert_eq!(hooks(&netns, &a.host_veth), ["tap_from_pod", "tap_to_pod"]);
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 10,
            size: 100,
        },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    assert_eq!(stats.attach_mode, "netlink");
    assert!(
        hooks(&netns, &a.host_veth).is_empty(),
        "filters left behind"
    );
    let qdiscs = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "tc",
            "qdisc",
            "show",
            "dev",
            &a.host_veth,
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&qdiscs.stdout).contains("clsact"),
        "clsact qdisc left behind"
    );
    let cap = read_pcapng(&out);
    assert_eq!(udp_with_port(&cap, "shop/frontend-1", OUTBOUND, 7), 10);
    assert_eq!(udp_with_port(&cap, "shop/frontend-1", INBOUND, 7), 10);
}

#[test]
fn snaplen_cuts_copies_and_keeps_the_original_length() {
    let lab = lab("l", vec![Cni::Calico], 2);
    let a = pod(&lab, "shop/frontend-1").clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tap.pcapng");
    let agent = start(
        &lab,
        |c| {
            c.snaplen = 96;
            c.selection.pods = vec![a.key()];
            c.prefilter = Prefilter::parse("proto udp").unwrap();
        },
        &out,
    );
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 15,
            size: 500,
        },
    );
    let stats = agent.stop_after(Duration::from_millis(200)).unwrap();
    let cap = read_pcapng(&out);
    assert_eq!(cap.len(), 30);
    for p in &cap {
        assert_eq!(p.data.len(), 96);
        assert_eq!(p.original_len, 14 + 20 + 8 + 500);
    }
    let k = &stats.pods[0].kernel;
    assert_eq!((k[0].truncated, k[1].truncated), (15, 15));
}
