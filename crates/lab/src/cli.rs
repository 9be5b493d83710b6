//! `podtap lab ...`: the command-line face of the lab (up, down, status, traffic, serve).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use podtap_cluster::{Cni, PodRef};

use crate::netns::{link_exists, list_netns, netns_exists};
use crate::traffic::{PodServers, ServerStats, Traffic};
use crate::{Lab, LabSpec, naming};

/// Default lab name.
pub const DEFAULT_LAB: &str = "lab";

/// The `podtap lab` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum LabCommand {
    /// Build a lab: nodes and pods in network namespaces (idempotent for the same spec).
    Up {
        /// Lab name, [a-z0-9]{1,12}.
        #[arg(long, short, default_value = DEFAULT_LAB)]
        name: String,
        /// Number of nodes (default 2, or the length of a per-node --cni list).
        #[arg(long)]
        nodes: Option<usize>,
        /// CNI style for every node (`flannel`, `calico`) or a comma list, one per node
        /// (`calico,flannel`).
        #[arg(long, default_value = "flannel")]
        cni: String,
        /// Pods per node.
        #[arg(long, default_value_t = 3)]
        pods_per_node: usize,
    },
    /// Remove a lab: every `pt-NAME-*` netns and its state, also after a crash.
    Down {
        /// Lab name.
        #[arg(long, short, default_value = DEFAULT_LAB)]
        name: String,
    },
    /// Add a host on the underlay (for a broker, a tool or a flow collector) and print its
    /// namespace and address; an existing host of that name is reused.
    Host {
        /// Lab name.
        #[arg(short, long, default_value = DEFAULT_LAB)]
        name: String,
        /// Host name, [a-z0-9]{1,8}.
        host: String,
    },
    /// Show nodes and pods with IPs, veths, and whether each netns exists.
    Status {
        /// Lab name.
        #[arg(long, short, default_value = DEFAULT_LAB)]
        name: String,
    },
    /// Send traffic from one pod to another and print what came back.
    Traffic {
        /// Lab name.
        #[arg(long, short, default_value = DEFAULT_LAB)]
        name: String,
        /// Source pod, `namespace/name`.
        from: String,
        /// Destination pod, `namespace/name`.
        to: String,
        /// Kind of traffic.
        #[arg(long, value_enum, default_value_t = TrafficKind::UdpEcho)]
        kind: TrafficKind,
        /// Datagrams, messages, requests or pings (tcp-bulk sends count × size bytes).
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Payload bytes per datagram or message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// udp-flood: packets per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Run the pod servers (HTTP 8080, echo 7, sink 9) in a pod until Ctrl-C.
    Serve {
        /// Lab name.
        #[arg(long, short, default_value = DEFAULT_LAB)]
        name: String,
        /// Pod, `namespace/name`.
        pod: String,
    },
}

/// Traffic kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrafficKind {
    /// UDP datagrams to echo (port 7), each waiting for its echo.
    UdpEcho,
    /// UDP datagrams to the sink (port 9), as fast as possible or at --rate.
    UdpFlood,
    /// TCP messages to echo (port 7).
    TcpEcho,
    /// count × size bytes to the TCP sink (port 9).
    TcpBulk,
    /// HTTP GET requests to port 8080.
    HttpGet,
    /// ICMP echo requests.
    Ping,
}

impl TrafficKind {
    /// The traffic this kind means with the given numbers.
    pub fn traffic(self, count: u32, size: usize, rate: Option<u32>) -> Traffic {
        match self {
            TrafficKind::UdpEcho => Traffic::UdpEcho { count, size },
            TrafficKind::UdpFlood => Traffic::UdpFlood {
                count,
                size,
                rate_pps: rate,
            },
            TrafficKind::TcpEcho => Traffic::TcpEcho {
                messages: count,
                size,
            },
            TrafficKind::TcpBulk => Traffic::TcpBulk {
                bytes: u64::from(count) * size as u64,
            },
            TrafficKind::HttpGet => Traffic::HttpGet { requests: count },
            TrafficKind::Ping => Traffic::Ping { count },
        }
    }
}

/// Runs one `podtap lab` command.
pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            name,
            nodes,
            cni,
            pods_per_node,
        } => {
            let spec = LabSpec::new(&name, node_cnis(&cni, nodes)?, pods_per_node);
            let lab = Lab::up(&spec).with_context(|| format!("bringing lab {name} up"))?;
            println!(
                "lab {name} is up ({}): inventory {}",
                lab.spec(),
                lab.inventory_path().display()
            );
            Ok(())
        }
        LabCommand::Down { name } => {
            let report = Lab::down(&name).with_context(|| format!("taking lab {name} down"))?;
            println!(
                "lab {name} is down: {} network namespaces removed{}",
                report.removed_netns.len(),
                if report.removed_state_dir {
                    ", state removed"
                } else {
                    ""
                }
            );
            Ok(())
        }
        LabCommand::Status { name } => status(&name),
        LabCommand::Host { name, host } => {
            let mut lab = Lab::open(&name).with_context(|| format!("opening lab {name:?}"))?;
            let h = lab.add_host(&host)?;
            println!("host {} in netns {} at {}", h.name, h.netns, h.ip);
            Ok(())
        }
        LabCommand::Traffic {
            name,
            from,
            to,
            kind,
            count,
            size,
            rate,
        } => {
            let lab = Lab::open(&name).with_context(|| format!("opening lab {name}"))?;
            let from = PodRef::parse(&from)?;
            let to = PodRef::parse(&to)?;
            let traffic = kind.traffic(count, size, rate);
            let r = lab
                .drive(&from, &to, &traffic)
                .with_context(|| format!("{} from {from} to {to}", traffic.kind()))?;
            println!(
                "{} {from} -> {to}: sent {} packets / {} bytes, received {} / {} bytes, \
                 {} errors, {:.1} ms",
                traffic.kind(),
                r.sent_packets,
                r.sent_bytes,
                r.received_packets,
                r.received_bytes,
                r.errors,
                r.elapsed.as_secs_f64() * 1000.0
            );
            if r.errors > 0 {
                bail!("{} errors", r.errors);
            }
            Ok(())
        }
        LabCommand::Serve { name, pod } => serve(&name, &pod),
    }
}

/// The per-node CNI list from `--cni` and `--nodes`.
fn node_cnis(cni: &str, nodes: Option<usize>) -> anyhow::Result<Vec<Cni>> {
    let list = cni
        .split(',')
        .map(|s| s.trim().parse::<Cni>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("--cni {cni}"))?;
    match (list.as_slice(), nodes) {
        ([one], nodes) => Ok(vec![*one; nodes.unwrap_or(2)]),
        (many, None) => Ok(many.to_vec()),
        (many, Some(n)) if n == many.len() => Ok(many.to_vec()),
        (many, Some(n)) => bail!("--cni lists {} nodes but --nodes is {n}", many.len()),
    }
}

fn exists(yes: bool) -> &'static str {
    if yes { "ok" } else { "MISSING" }
}

fn status(name: &str) -> anyhow::Result<()> {
    naming::validate_lab_name(name)?;
    let lab = match Lab::open(name) {
        Ok(lab) => lab,
        Err(crate::LabError::NotFound { .. }) => {
            let prefix = naming::lab_prefix(name);
            let leftovers: Vec<String> = list_netns()?
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            if leftovers.is_empty() {
                println!("lab {name} is not up");
            } else {
                println!(
                    "lab {name} has no state but these namespaces are left (run `podtap lab down --name {name}`): {}",
                    leftovers.join(" ")
                );
            }
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("opening lab {name}")),
    };
    let inv = lab.inventory();
    println!("lab {name}: {}", lab.spec());
    println!("inventory: {}", lab.inventory_path().display());
    let ul = lab.underlay_netns();
    println!("underlay: {ul} [{}]", exists(netns_exists(&ul)));
    println!();
    let nodes = inv
        .nodes
        .iter()
        .map(|n| {
            let netns = n.netns.as_deref().unwrap_or("-");
            vec![
                n.name.clone(),
                n.cni.to_string(),
                netns.to_string(),
                n.underlay_ip.clone(),
                n.pod_cidr.clone(),
                exists(netns_exists(netns)).to_string(),
            ]
        })
        .collect();
    print_table(
        &["NODE", "CNI", "NETNS", "UNDERLAY", "POD CIDR", "NETNS?"],
        nodes,
    );
    println!();
    let pods = inv
        .pods
        .iter()
        .map(|p| {
            let netns = p.netns.as_deref().unwrap_or("-");
            let veth_ok = lab
                .node_netns(&p.node)
                .is_some_and(|ns| link_exists(ns, &p.host_veth).unwrap_or(false));
            vec![
                format!("{}/{}", p.namespace, p.name),
                p.node.clone(),
                p.ip.clone(),
                p.host_veth.clone(),
                netns.to_string(),
                exists(netns_exists(netns)).to_string(),
                exists(veth_ok).to_string(),
            ]
        })
        .collect();
    print_table(
        &["POD", "NODE", "IP", "HOST VETH", "NETNS", "NETNS?", "VETH?"],
        pods,
    );
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Set by the SIGINT/SIGTERM handler of `serve`.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn serve(name: &str, pod: &str) -> anyhow::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let previous = unsafe {
        [
            sigaction(Signal::SIGINT, &action)?,
            sigaction(Signal::SIGTERM, &action)?,
        ]
    };
    let served = serve_until(name, pod, &STOP);
    // SAFETY: restores the dispositions saved above.
    unsafe {
        sigaction(Signal::SIGINT, &previous[0])?;
        sigaction(Signal::SIGTERM, &previous[1])?;
    }
    let s = served?;
    println!(
        "stopped: {} HTTP requests, {} TCP echo bytes, {} UDP echo datagrams, {} TCP sink bytes, \
         {} UDP sink datagrams / {} bytes",
        s.http_requests,
        s.tcp_echo_bytes,
        s.udp_echo_datagrams,
        s.tcp_sink_bytes,
        s.udp_sink_datagrams,
        s.udp_sink_bytes
    );
    Ok(())
}

/// Runs a pod's servers until `stop` is set; returns their totals.
fn serve_until(name: &str, pod: &str, stop: &AtomicBool) -> anyhow::Result<ServerStats> {
    let lab = Lab::open(name).with_context(|| format!("opening lab {name}"))?;
    let pod_ref = PodRef::parse(pod)?;
    let p = lab
        .pod(&pod_ref)
        .with_context(|| format!("lab {name} has no pod {pod_ref}"))?;
    let netns = lab.pod_netns(&pod_ref)?;
    let ip = p.ip.parse().with_context(|| format!("pod IP {}", p.ip))?;
    let servers = PodServers::start(netns, ip).with_context(|| format!("serving in {pod_ref}"))?;
    println!(
        "serving in {pod_ref} ({ip}, netns {netns}): HTTP :8080, TCP/UDP echo :7, TCP/UDP sink :9; \
         Ctrl-C stops"
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(servers.stats())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: LabCommand,
    }

    fn parse(args: &[&str]) -> LabCommand {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn cni_lists() {
        assert_eq!(node_cnis("flannel", None).unwrap(), vec![Cni::Flannel; 2]);
        assert_eq!(node_cnis("calico", Some(3)).unwrap(), vec![Cni::Calico; 3]);
        assert_eq!(
            node_cnis("calico,flannel", None).unwrap(),
            vec![Cni::Calico, Cni::Flannel]
        );
        assert!(node_cnis("calico,flannel", Some(3)).is_err());
        assert!(node_cnis("weave", None).is_err());
    }

    /// The commands against a real lab (state under the default root), and `serve` stopped by
    /// its flag while `drive` uses its servers.
    #[test]
    fn commands_run_against_a_real_lab() {
        let name = format!("tlu{}", std::process::id());
        /// Takes the lab down even when the test fails.
        struct Down(String);
        impl Drop for Down {
            fn drop(&mut self) {
                let _ = Lab::down(&self.0);
            }
        }
        let _down = Down(name.clone());
        let cmd = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--name", name.as_str()]);
            run(parse(&all))
        };
        cmd(&["up", "--cni", "calico,flannel", "--pods-per-node", "2"]).unwrap();
        cmd(&["up", "--cni", "calico,flannel", "--pods-per-node", "2"]).unwrap();
        assert!(cmd(&["up", "--cni", "calico", "--pods-per-node", "2"]).is_err());
        cmd(&["status"]).unwrap();
        for kind in [
            "udp-echo",
            "udp-flood",
            "tcp-echo",
            "tcp-bulk",
            "http-get",
            "ping",
        ] {
            let mut args = vec!["traffic", "shop/frontend-1", "shop/cart-2", "--kind", kind];
            if kind == "udp-flood" {
                args.extend(["--rate", "2000"]);
            }
            cmd(&args).unwrap();
        }

        static SERVE_STOP: AtomicBool = AtomicBool::new(false);
        let serve_name = name.clone();
        let serving =
            std::thread::spawn(move || serve_until(&serve_name, "shop/cart-2", &SERVE_STOP));
        let lab = Lab::open(&name).unwrap();
        let to = PodRef::parse("shop/cart-2").unwrap();
        let netns = lab.pod_netns(&to).unwrap().to_string();
        let started = std::time::Instant::now();
        while crate::traffic::servers::running_in(&netns).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "serve did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let from = PodRef::parse("shop/frontend-1").unwrap();
        let r = lab
            .drive(&from, &to, &Traffic::TcpBulk { bytes: 12_345 })
            .unwrap();
        assert_eq!((r.received_bytes, r.errors), (12_345, 0));
        SERVE_STOP.store(true, Ordering::SeqCst);
        let stats = serving.join().unwrap().unwrap();
        assert_eq!(stats.tcp_sink_bytes, 12_345);

        cmd(&["down"]).unwrap();
        cmd(&["down"]).unwrap();
        cmd(&["status"]).unwrap();
        assert!(
            list_netns()
                .unwrap()
                .iter()
                .all(|n| !n.starts_with(&naming::lab_prefix(&name)))
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse(&["up"]),
            LabCommand::Up {
                name: "lab".into(),
                nodes: None,
                cni: "flannel".into(),
                pods_per_node: 3
            }
        );
        let LabCommand::Traffic { kind, count, .. } = parse(&[
            "traffic",
            "shop/frontend-1",
            "shop/cart-2",
            "--kind",
            "tcp-bulk",
            "--count",
            "4",
        ]) else {
            panic!("not traffic");
        };
        assert_eq!(kind, TrafficKind::TcpBulk);
        assert_eq!(
            kind.traffic(count, 1000, None),
            Traffic::TcpBulk { bytes: 4000 }
        );
        assert_eq!(
            parse(&["down", "-n", "x1"]),
            LabCommand::Down { name: "x1".into() }
        );
    }
}
