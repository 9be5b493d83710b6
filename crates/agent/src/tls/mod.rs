//! The decrypted view: TLS plaintext of the selected pods' processes, captured by uprobes on
//! OpenSSL ([`program`]), bound to the real connection, and written as synthesized TCP
//! segments ([`synth`]) to the same outputs as tapped packets, marked as decrypted.
//!
//! The agent calls [`TlsView::follow`] with the selected pods on every poll: processes that
//! appeared in a pod's network namespace are probed, processes that ended (or whose pod is no
//! longer selected) lose their probes ([`processes`]). A reader thread drains the ring.

pub mod placement;
pub mod processes;
pub mod program;
pub mod synth;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use podtap_abi::tls::TlsCounters;
use podtap_cluster::PodRef;

use crate::agent::lock;
use crate::output::Output;
use crate::reader::wait_readable;
pub use program::{TlsProgram, TlsProgramError};
pub use synth::SynthCounters;

/// A pod whose processes' TLS is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPod {
    /// The pod.
    pub pod: PodRef,
    /// Its network namespace (a name under `/run/netns`, or a path).
    pub netns: String,
    /// Its tap id (the decrypted view is labelled `tap_id | DECRYPTED`).
    pub tap_id: u16,
    /// Index of its node in the agent's output.
    pub node: u16,
}

/// What the decrypted view counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Kernel side: calls, bytes, events, losses.
    pub kernel: TlsCounters,
    /// User side: chunks, frames, connections, drops.
    pub synth: SynthCounters,
    /// Processes probed now, with their pod and what is probed (`LIBRARY: FUNCTIONS`).
    pub probed: Vec<(u32, PodRef, String)>,
    /// Processes that could not be probed, with why.
    pub unprobed: Vec<(u32, PodRef, String)>,
    /// Frames written per pod (from the pod, to the pod), filled in by the agent.
    pub frames: Vec<(PodRef, [crate::output::OutputCounters; 2])>,
}

/// The decrypted view of the agent.
pub struct TlsView {
    program: TlsProgram,
    /// Probed processes: pid → (pod, tap id, library).
    probed: HashMap<u32, (PodRef, u16, String)>,
    /// Processes of selected pods that could not be probed (yet): pid → (pod, why).
    unprobed: BTreeMap<u32, (PodRef, String)>,
    /// Process → tap id, read by the reader thread for every frame.
    taps: Arc<Mutex<HashMap<u32, u16>>>,
    synth: Arc<Mutex<SynthCounters>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl TlsView {
    /// Loads the programs and starts the reader, which writes into `output`.
    pub fn start(ring_bytes: u32, output: Arc<Mutex<Output>>) -> Result<Self, TlsProgramError> {
        let mut program = TlsProgram::load(ring_bytes)?;
        let ring = program.take_ring().ok_or(TlsProgramError::Missing {
            what: "map",
            name: podtap_abi::tls::MAP_RING,
        })?;
        let taps = Arc::new(Mutex::new(HashMap::new()));
        let synth = Arc::new(Mutex::new(SynthCounters::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = spawn_reader(ring, output, taps.clone(), synth.clone(), stop.clone())
            .map_err(|e| TlsProgramError::Tracefs {
                reason: format!("starting the TLS reader thread: {e}"),
            })?;
        Ok(TlsView {
            program,
            probed: HashMap::new(),
            unprobed: BTreeMap::new(),
            taps,
            synth,
            stop,
            reader: Some(reader),
        })
    }

    /// Probes the processes of `pods` not probed yet, and unprobes processes that ended or
    /// whose pod is no longer in `pods`. `register` is called once per pod before its first
    /// frame can arrive (the output adds the pod's decrypted interface).
    pub fn follow(&mut self, pods: &[TlsPod], register: &mut dyn FnMut(&TlsPod)) {
        let by_ns = processes::processes_by_netns();
        let mut want: HashMap<u32, &TlsPod> = HashMap::new();
        for p in pods {
            match processes::netns_inode(&p.netns) {
                Ok(ino) => {
                    for pid in by_ns.get(&ino).into_iter().flatten() {
                        want.insert(*pid, p);
                    }
                }
                Err(e) => tracing::debug!(pod = %p.pod, "network namespace {}: {e}", p.netns),
            }
        }
        let gone: Vec<u32> = self
            .probed
            .keys()
            .filter(|pid| !want.contains_key(pid))
            .copied()
            .collect();
        for pid in gone {
            self.program.unprobe(pid);
            if let Some((pod, _, _)) = self.probed.remove(&pid) {
                tracing::info!(pid, pod = %pod, "TLS probes removed (process ended or pod unselected)");
            }
            lock(&self.taps).remove(&pid);
        }
        self.unprobed.retain(|pid, _| want.contains_key(pid));
        for (pid, p) in want {
            if self.probed.contains_key(&pid) {
                continue;
            }
            // Map the process to its pod before the probes can fire.
            lock(&self.taps).insert(pid, p.tap_id);
            register(p);
            // A process that failed before had its executable searched then.
            let check_exe = !self.unprobed.contains_key(&pid);
            match self.program.probe(pid, p.tap_id, check_exe) {
                Ok(lib) => {
                    tracing::info!(pid, pod = %p.pod, library = %lib, "TLS probes attached");
                    self.unprobed.remove(&pid);
                    self.probed.insert(pid, (p.pod.clone(), p.tap_id, lib));
                }
                Err(e) => {
                    lock(&self.taps).remove(&pid);
                    let why = e.to_string();
                    if self.unprobed.get(&pid).map(|(_, w)| w) != Some(&why) {
                        tracing::debug!(pid, pod = %p.pod, "not probed: {why}");
                    }
                    self.unprobed.insert(pid, (p.pod.clone(), why));
                }
            }
        }
    }

    /// The counters and the probed processes.
    pub fn stats(&self) -> TlsStats {
        let mut probed: Vec<_> = self
            .probed
            .iter()
            .map(|(pid, (pod, _, lib))| (*pid, pod.clone(), lib.clone()))
            .collect();
        probed.sort();
        TlsStats {
            kernel: self.program.counters(),
            synth: *lock(&self.synth),
            probed,
            unprobed: self
                .unprobed
                .iter()
                .map(|(pid, (pod, why))| (*pid, pod.clone(), why.clone()))
                .collect(),
            frames: Vec::new(),
        }
    }

    /// Removes every probe, drains the ring a last time and stops the reader.
    pub fn stop(&mut self) {
        let pids: Vec<u32> = self.probed.keys().copied().collect();
        for pid in pids {
            self.program.unprobe(pid);
        }
        self.probed.clear();
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for TlsView {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The reader thread: ring records → synthesized frames → the output.
fn spawn_reader(
    mut ring: RingBuf<MapData>,
    output: Arc<Mutex<Output>>,
    taps: Arc<Mutex<HashMap<u32, u16>>>,
    counters: Arc<Mutex<SynthCounters>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("podtap-tls".into())
        .spawn(move || {
            let fd = ring.as_raw_fd();
            let mut synth = synth::Synthesizer::new();
            let mut servers: HashMap<(u32, u16), bool> = HashMap::new();
            let mut unknown_process = 0u64;
            loop {
                let stopping = stop.load(Ordering::Acquire);
                {
                    let taps = lock(&taps);
                    let mut out = lock(&output);
                    while let Some(item) = ring.next() {
                        synth.record(
                            &item,
                            &mut |pid, port| {
                                *servers
                                    .entry((pid, port))
                                    .or_insert_with(|| processes::listens_on(pid, port))
                            },
                            &mut |frame| match taps.get(&frame.tgid) {
                                Some(tap) => {
                                    out.write_decrypted(
                                        *tap,
                                        frame.to_pod,
                                        frame.timestamp_ns,
                                        frame.bytes,
                                    );
                                }
                                None => unknown_process += 1,
                            },
                        );
                    }
                    out.end_batch();
                }
                synth.expire(monotonic_ns());
                if servers.len() > 65536 {
                    servers.clear();
                }
                *lock(&counters) = synth.counters();
                if unknown_process > 0 {
                    tracing::debug!(
                        unknown_process,
                        "decrypted frames of processes no longer probed"
                    );
                    unknown_process = 0;
                }
                if stopping {
                    break;
                }
                wait_readable(fd, Duration::from_millis(10));
            }
        })
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
