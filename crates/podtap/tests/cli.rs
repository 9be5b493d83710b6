//! The `podtap` binary as a user runs it (as root, in lab namespaces): bad input is refused
//! with a clear error and leaves nothing attached; SIGKILL and SIGTERM leave no hook; `-w -`
//! streams into tshark; `/metrics` serves the counters; `lab up/status/down` work.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use podtap_cluster::Cni;
use podtap_lab::{Lab, LabGuard, LabSpec, Traffic};
use podtap_testkit::drive;

const PODTAP: &str = env!("CARGO_BIN_EXE_podtap");

/// A lab for one test, named `tc{tag}{pid}`, state in a temp dir; labs of dead runs swept.
fn lab(tag: &str) -> (LabGuard, tempfile::TempDir) {
    for netns in podtap_lab::netns::list_netns().unwrap_or_default() {
        let Some(rest) = netns.strip_prefix("pt-tc") else {
            continue;
        };
        let name = rest.split('-').next().unwrap_or("");
        let pid: String = name
            .chars()
            .skip_while(|c| c.is_ascii_alphabetic())
            .collect();
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Lab::down(&format!("tc{name}"));
        }
    }
    let root = tempfile::tempdir().unwrap();
    let spec = LabSpec::new(
        &format!("tc{tag}{}", std::process::id()),
        vec![Cni::Calico],
        2,
    );
    (LabGuard::up_in(root.path(), &spec).unwrap(), root)
}

fn agent(lab: &Lab) -> Command {
    let mut c = Command::new(PODTAP);
    c.args(["agent", "--inventory"]).arg(lab.inventory_path());
    c
}

/// Every hook on the lab's veths (should be none when no agent runs).
fn all_hooks(lab: &Lab) -> Vec<String> {
    lab.inventory()
        .pods
        .iter()
        .flat_map(|p| {
            let netns = lab.node_netns(&p.node).unwrap();
            podtap_agent::program::hooks_on(Some(netns), &p.host_veth).unwrap()
        })
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a pid this test spawned.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_stays_attached() {
    let (lab, _root) = lab("b");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--pod", "shop/nope"], &["unknown pod", "shop/nope"]),
        (&["--pod", "nope"], &["namespace/name"]),
        (
            &["-l", "app in (a", "--namespace-selector", "=x"],
            &["--selector", "--namespace-selector"],
        ),
        (
            &["--filter", "port 99999 and proto nonsense"],
            &["99999", "nonsense"],
        ),
        (&["--node", "node-9"], &["unknown node", "node-9"]),
        (
            &["--snaplen", "0", "--ring-size", "5000"],
            &["snap length", "ring size"],
        ),
        (&["--gso", "sometimes"], &["segment or keep"]),
    ];
    for (args, needles) in cases {
        let out = agent(&lab)
            .args(*args)
            .arg("--duration")
            .arg("1")
            .output()
            .unwrap();
        let (_, err) = text(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        for n in *needles {
            assert!(
                err.to_lowercase().contains(&n.to_lowercase()),
                "{args:?}: {n:?} not in {err}"
            );
        }
        assert!(all_hooks(&lab).is_empty(), "{args:?} left hooks");
    }
    let out = Command::new(PODTAP)
        .args(["agent", "--inventory", "/nonexistent/inventory.json"])
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).1.contains("/nonexistent/inventory.json"));
}

#[test]
fn without_privileges_the_agent_names_what_is_missing() {
    let (lab, _root) = lab("p");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(PODTAP)
        .args(["agent", "--inventory"])
        .arg(lab.inventory_path())
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(all_hooks(&lab).is_empty());
}

#[test]
fn sigkill_and_sigterm_leave_no_hook() {
    let (lab, _root) = lab("k");
    let dir = tempfile::tempdir().unwrap();

    // A crash: the kernel drops TCX links with the process.
    let mut child = agent(&lab)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the agent to attach", || all_hooks(&lab).len() == 4);
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    wait_for("hooks to go after SIGKILL", || all_hooks(&lab).is_empty());

    // SIGTERM: a clean stop with the summary.
    let file = dir.path().join("t.pcapng");
    let mut child = agent(&lab)
        .arg("-w")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the agent to attach", || all_hooks(&lab).len() == 4);
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 10,
            size: 80,
        },
    );
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let mut summary = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(status.success(), "{summary}");
    assert!(
        summary.contains("podtap: tapped 2 pod(s)")
            && summary.contains(&file.display().to_string()),
        "{summary}"
    );
    assert!(all_hooks(&lab).is_empty());
}

#[test]
fn streams_into_tshark() {
    let (lab, _root) = lab("s");
    let mut podtap = agent(&lab)
        .args(["--pod", "shop/frontend-1", "--duration", "4", "-w", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tshark = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "udp.dstport",
        ])
        .stdin(podtap.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tshark is installed (scripts/install-deps.sh)");
    wait_for("the agent to attach", || all_hooks(&lab).len() == 2);
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 10,
            size: 80,
        },
    );
    let status = podtap.wait().unwrap();
    let mut summary = String::new();
    podtap
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    let out = tshark.wait_with_output().unwrap();
    assert!(status.success(), "{summary}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.as_str() == "shop/frontend-1\t7")
            .count(),
        10,
        "{lines:?}"
    );
    let written = format!("wrote {} packet(s) to stdout", lines.len());
    assert!(
        summary.contains(&written),
        "tshark read {} packets; summary: {summary}",
        lines.len()
    );
}

#[test]
fn metrics_endpoint_serves_counters() {
    let (lab, _root) = lab("m");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = agent(&lab)
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the agent to attach", || all_hooks(&lab).len() == 4);
    drive(
        &lab,
        "shop/frontend-1",
        "shop/cart-1",
        Traffic::UdpEcho {
            count: 12,
            size: 80,
        },
    );
    let want = "podtap_tap_packets_total{namespace=\"shop\",pod=\"cart-1\",node=\"node-1\",direction=\"to-pod\"}";
    let mut body = String::new();
    wait_for("metrics with the traffic", || {
        body = podtap_testkit::scrape_metrics(port);
        body.lines()
            .find(|l| l.starts_with(want))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .is_some_and(|v| v >= 12)
    });
    for name in [
        "podtap_tap_dropped_ring_full_packets_total",
        "podtap_output_packets_total",
        "podtap_tapped_pods 2",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    signal(&child, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
}

#[test]
fn lab_cli_up_status_down() {
    let root = tempfile::tempdir().unwrap();
    let name = format!("tcl{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new(PODTAP)
            .arg("lab")
            .args(args)
            .env("PODTAP_LAB_DIR", root.path())
            .output()
            .unwrap()
    };
    let up = run(&["up", "--name", &name, "--cni", "calico,flannel"]);
    assert!(up.status.success(), "{:?}", text(&up));
    let again = run(&["up", "--name", &name, "--cni", "calico,flannel"]);
    assert!(
        again.status.success(),
        "second up with the same spec: {:?}",
        text(&again)
    );
    let other = run(&["up", "--name", &name, "--cni", "flannel"]);
    assert!(
        !other.status.success(),
        "a different spec under the same name was accepted"
    );
    let status = run(&["status", "--name", &name]);
    let (out, _) = text(&status);
    assert!(out.contains("shop/cart-2") && out.contains("cali"), "{out}");
    let down = run(&["down", "--name", &name]);
    assert!(down.status.success());
    let left: Vec<String> = podtap_lab::netns::list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("pt-{name}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        run(&["down", "--name", &name]).status.success(),
        "a second down failed"
    );
}
