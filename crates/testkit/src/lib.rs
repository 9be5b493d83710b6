//! Test support for podtap's real-kernel tests: labs named per test process and test (swept
//! when their process is gone), tcpdump as ground truth on the same interface, pcapng reading,
//! and what the kernel says is hooked on a veth. Tests panic on failure, so this does too.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use podtap_cluster::{Cni, Pod, PodRef};
use podtap_lab::{Lab, LabGuard, LabSpec};

pub mod apiserver;
pub mod apps;

/// A lab for one test: named `ta{tag}{pid}`, state in a temp dir, removed on drop.
pub struct TestLab {
    pub lab: LabGuard,
    _root: tempfile::TempDir,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// Drives `t` from pod `from` to pod `to` (`namespace/name`) and asserts it had no errors.
pub fn drive(lab: &Lab, from: &str, to: &str, t: podtap_lab::Traffic) -> podtap_lab::TrafficReport {
    let r = lab
        .drive(
            &PodRef::parse(from).unwrap(),
            &PodRef::parse(to).unwrap(),
            &t,
        )
        .unwrap();
    assert_eq!(r.errors, 0, "{t:?} {from}->{to}: {r:?}");
    r
}

/// Brings up a lab for the test `tag` (letters only; unique per test binary and test).
pub fn lab(tag: &str, nodes: Vec<Cni>, pods_per_node: usize) -> TestLab {
    sweep_dead_test_labs();
    let root = tempfile::tempdir().unwrap();
    let name = format!("ta{tag}{}", std::process::id());
    assert!(
        tag.chars().all(|c| c.is_ascii_lowercase()),
        "test lab tags are letters"
    );
    let spec = LabSpec::new(&name, nodes, pods_per_node);
    TestLab {
        lab: LabGuard::up_in(root.path(), &spec).unwrap(),
        _root: root,
    }
}

/// Takes down `ta*` labs whose test process is gone (a crashed earlier run).
fn sweep_dead_test_labs() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        for netns in podtap_lab::netns::list_netns().unwrap_or_default() {
            let Some(rest) = netns.strip_prefix("pt-ta") else {
                continue;
            };
            let lab = rest.split('-').next().unwrap_or("");
            let pid: String = lab
                .chars()
                .skip_while(|c| c.is_ascii_alphabetic())
                .collect();
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Lab::down(&format!("ta{lab}"));
            }
        }
    });
}

/// The pod `namespace/name` of the lab.
pub fn pod<'a>(lab: &'a Lab, r: &str) -> &'a Pod {
    lab.pod(&PodRef::parse(r).unwrap())
        .unwrap_or_else(|| panic!("no pod {r}"))
}

/// A tcpdump capture on one host veth and direction (`in`: from the pod, `out`: to the pod).
pub struct Tcpdump {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tcpdump {
    /// Starts tcpdump on `veth` (any interface) in `netns` and waits until it listens.
    /// `direction` is tcpdump's `-Q`: `in`, `out` or `inout`.
    pub fn start(netns: &str, veth: &str, direction: &str) -> Tcpdump {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cap.pcap");
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", veth, "-Q", direction, "-s", "0", "-B",
                "65536",
            ])
            .args(["--immediate-mode", "-U", "-n", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is installed (scripts/install-deps.sh)");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(_)) => {}
                _ => panic!("tcpdump on {netns}/{veth} did not start"),
            }
            assert!(Instant::now() < deadline, "tcpdump start timed out");
        }
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Tcpdump {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops tcpdump (SIGTERM to the pid we started) and returns the packets it wrote.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        // `ip netns exec` execs tcpdump, so the child pid is tcpdump's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let f = std::fs::File::open(&self.file).unwrap();
        let mut r = PcapReader::new(f).unwrap();
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            out.push(p.unwrap().data.into_owned());
        }
        out
    }
}

/// One packet of a podtap pcapng.
#[derive(Debug, Clone)]
pub struct Captured {
    pub interface: String,
    /// 1 inbound (to the pod), 2 outbound (from the pod).
    pub direction: u32,
    pub original_len: u32,
    pub data: Vec<u8>,
}

/// Reads a pcapng written by podtap.
pub fn read_pcapng(path: &Path) -> Vec<Captured> {
    let bytes = std::fs::read(path).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let mut names = Vec::new();
    let mut out = Vec::new();
    while let Some(block) = r.next_block() {
        match block.unwrap() {
            Block::InterfaceDescription(idb) => {
                let name = idb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => {
                            Some(n.to_string())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                names.push(name);
            }
            Block::EnhancedPacket(epb) => {
                let direction = epb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(f & 3),
                        _ => None,
                    })
                    .unwrap_or(0);
                out.push(Captured {
                    interface: names[epb.interface_id as usize].clone(),
                    direction,
                    original_len: epb.original_len,
                    data: epb.data.into_owned(),
                });
            }
            _ => {}
        }
    }
    out
}

/// Packets of one interface and direction, sorted (a multiset).
pub fn packets_of(cap: &[Captured], interface: &str, direction: u32) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = cap
        .iter()
        .filter(|c| c.interface == interface && c.direction == direction)
        .map(|c| c.data.clone())
        .collect();
    v.sort();
    v
}

/// Sorted copy.
pub fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// Whether a BPF program with this id still exists.
pub fn program_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// UDP frames of one interface+direction whose UDP destination or source port is `port`.
pub fn udp_with_port(cap: &[Captured], interface: &str, direction: u32, port: u16) -> usize {
    cap.iter()
        .filter(|c| c.interface == interface && c.direction == direction)
        .filter(|c| {
            let d = &c.data;
            d.len() >= 42 && d[12..14] == [0x08, 0x00] && d[23] == 17 && {
                let ihl = usize::from(d[14] & 0x0f) * 4;
                let p = 14 + ihl;
                d.len() >= p + 4
                    && (u16::from_be_bytes([d[p], d[p + 1]]) == port
                        || u16::from_be_bytes([d[p + 2], d[p + 3]]) == port)
            }
        })
        .count()
}

/// Runs `tshark -r FILE ARGS...` and returns its output lines. Fails with the install hint when
/// tshark is missing (a test must not pass without its ground truth).
pub fn tshark(file: &Path, args: &[&str]) -> Vec<String> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("tshark could not be run ({e}): install it with scripts/install-deps.sh")
        });
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// nfdump's CSV output for the nfcapd files in `dir`: one map from column name (`sa`, `da`,
/// `sp`, `dp`, `pr`, `ipkt`, `ibyt`, `in`, `dir`, ...) to value per flow.
pub fn nfdump_csv(dir: &Path) -> Vec<BTreeMap<String, String>> {
    let output = Command::new("nfdump")
        .arg("-R")
        .arg(dir)
        .args(["-N", "-o", "csv"])
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| {
            panic!("nfdump could not be run ({e}): install it with scripts/install-deps.sh")
        });
    assert!(
        output.status.success(),
        "nfdump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .take_while(|l| !l.is_empty() && !l.starts_with("Summary"))
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(|v| v.trim().to_string()))
                .collect()
        })
        .collect()
}

/// `GET /metrics` from 127.0.0.1:`port` (in the caller's network namespace); empty when nothing
/// answers.
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A global allocator that counts the allocations of each thread, for tests that check the
/// packet path allocates nothing:
///
/// ```text
/// #[global_allocator]
/// static ALLOC: podtap_testkit::CountingAllocator = podtap_testkit::CountingAllocator;
/// let before = podtap_testkit::allocations();
/// // ... the work ...
/// assert_eq!(podtap_testkit::allocations(), before);
/// ```
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (and reallocations) of this thread so far, under [`CountingAllocator`].
pub fn allocations() -> u64 {
    ALLOCATIONS.with(std::cell::Cell::get)
}

/// kubernetes-validate from PyPI (scripts/install-deps.sh puts it in this venv).
pub const KUBERNETES_VALIDATE: &str = "/opt/podtap-tools/bin/kubernetes-validate";
/// The oldest Kubernetes podtap supports (k8s-openapi's `v1_34` feature).
pub const KUBERNETES_VERSION: &str = "1.34";

/// Runs `kubernetes-validate --strict -k 1.34 PATH` (offline: the schemas ship in the
/// package): whether it passed, and everything it printed.
pub fn kubernetes_validate(path: &Path) -> (bool, String) {
    let out = std::process::Command::new(KUBERNETES_VALIDATE)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{KUBERNETES_VALIDATE}: {e} (run scripts/install-deps.sh)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
