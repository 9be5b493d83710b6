//! The agent: decides which pods of the inventory are tapped on which node, keeps the taps in
//! step with the inventory while it runs, and collects the counters. This is where a policy
//! (selection + prefilter) becomes attached programs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podtap_abi::TapCounters;
use podtap_cluster::{Inventory, InventoryError, PodRef, PodSelection, SelectorError};

use crate::metrics::SharedStats;
use crate::output::{GsoMode, Output, PacketSink};
use crate::prefilter::Prefilter;
use crate::program::{AttachMode, LoadOptions, ProgramError, RuntimeConfig, TapProgram};
use crate::reader::RingReader;
use crate::stats::{PodStats, Stats, TapFailure};
use crate::tunnel::{self, SendMode, TunnelConfig};

/// Default ring buffer size per node.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
/// Default snap length: whole packets.
pub const DEFAULT_SNAPLEN: u32 = 65535;

/// What the agent taps and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The inventory file (the lab writes one; re-read while running).
    pub inventory: PathBuf,
    /// Nodes this agent serves; empty: every node in the inventory.
    pub nodes: Vec<String>,
    /// Which pods to tap.
    pub selection: PodSelection,
    /// In-kernel prefilter.
    pub prefilter: Prefilter,
    /// Bytes kept of each packet (1..=65536).
    pub snaplen: u32,
    /// Ring buffer bytes per node (a power of two, at least 4096).
    pub ring_bytes: u32,
    /// What to do with GSO super-packets.
    pub gso: GsoMode,
    /// How to attach.
    pub attach: AttachMode,
    /// How often the inventory is checked for changes.
    pub inventory_poll: Duration,
    /// Send copies to a broker through this tunnel (besides any file).
    pub tunnel: Option<TunnelConfig>,
    /// Capture the selected pods' TLS plaintext too (uprobes on OpenSSL).
    pub decrypt: bool,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the inventory.
    pub fn new(inventory: PathBuf) -> Self {
        AgentConfig {
            inventory,
            nodes: Vec::new(),
            selection: PodSelection::default(),
            prefilter: Prefilter::default(),
            snaplen: DEFAULT_SNAPLEN,
            ring_bytes: DEFAULT_RING_BYTES,
            gso: GsoMode::Segment,
            attach: AttachMode::Auto,
            inventory_poll: Duration::from_millis(500),
            tunnel: None,
            decrypt: false,
        }
    }

    /// Every problem with the settings, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut p = size_problems(self.snaplen, self.ring_bytes);
        if let Some(t) = &self.tunnel {
            p.extend(
                t.problems(self.snaplen)
                    .into_iter()
                    .map(|m| format!("tunnel: {m}")),
            );
        }
        p
    }
}

/// Problems with a snap length and a ring size.
pub(crate) fn size_problems(snaplen: u32, ring_bytes: u32) -> Vec<String> {
    let mut p = Vec::new();
    if snaplen == 0 || snaplen > podtap_abi::MAX_COPY {
        p.push(format!(
            "snap length {snaplen} is not in 1..={}",
            podtap_abi::MAX_COPY
        ));
    }
    if ring_bytes < 4096 || !ring_bytes.is_power_of_two() {
        p.push(format!(
            "ring size {ring_bytes} is not a power of two of at least 4096 bytes"
        ));
    }
    p
}

/// Errors starting or running the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid agent configuration: {}", problems.join("; "))]
    Config { problems: Vec<String> },
    /// The inventory could not be read.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The selection is invalid for this inventory.
    #[error(transparent)]
    Selection(#[from] SelectorError),
    /// Named nodes are not in the inventory.
    #[error("unknown node(s) {}: the inventory has {}", unknown.join(", "), known.join(", "))]
    UnknownNodes {
        unknown: Vec<String>,
        known: Vec<String>,
    },
    /// Explicitly named pods run on nodes this agent does not serve.
    #[error("pod(s) not on the tapped node(s): {}", pods.join(", "))]
    PodsElsewhere { pods: Vec<String> },
    /// The kernel or the process lacks something the tap needs.
    #[error("cannot run the tap: {}", missing.join("; "))]
    Unsupported { missing: Vec<String> },
    /// The eBPF side failed (boxed: aya's errors are large).
    #[error(transparent)]
    Program(Box<ProgramError>),
    /// The tunnel to the broker could not be set up.
    /// The decrypted view (TLS uprobes) could not start.
    #[error("decrypted view (--decrypt): {reason}")]
    Decrypt {
        /// Why.
        reason: String,
    },
    #[error("tunnel to {endpoint} on node {node}: {reason}")]
    Tunnel {
        endpoint: String,
        node: String,
        reason: String,
    },
    /// Explicitly named pods could not be tapped.
    #[error("could not tap {}", failures.join("; "))]
    Attach { failures: Vec<String> },
    /// The output failed.
    #[error("writing the capture: {source}")]
    Output {
        #[source]
        source: std::io::Error,
    },
}

impl From<ProgramError> for AgentError {
    fn from(e: ProgramError) -> Self {
        AgentError::Program(Box::new(e))
    }
}

/// A tapped pod on a node.
#[derive(Debug, Clone)]
struct Tapped {
    ifindex: u32,
    veth: String,
}

/// The tap of one node.
struct NodeTap {
    name: String,
    index: u16,
    program: TapProgram,
    reader: RingReader,
    tapped: BTreeMap<PodRef, Tapped>,
    /// What the node's programs read per packet (tunnel device and exclusion differ by node).
    runtime: RuntimeConfig,
    /// podtap's VXLAN device when copies are sent in the kernel; removed with the NodeTap.
    _device: Option<KernelDevice>,
    /// How this node sends copies, for the summary.
    sending: String,
}

/// podtap's VXLAN device on a node, deleted when dropped.
struct KernelDevice {
    netns: Option<String>,
    cfg: TunnelConfig,
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        tunnel::delete_device(self.netns.as_deref(), &self.cfg);
    }
}

/// A running agent.
pub struct Agent {
    cfg: AgentConfig,
    nodes: Vec<NodeTap>,
    output: Arc<Mutex<Output>>,
    inventory: Inventory,
    inventory_raw: Vec<u8>,
    /// Final kernel counters of veths no longer tapped, per pod.
    retired: HashMap<PodRef, (String, String, [TapCounters; 2])>,
    failures: Vec<TapFailure>,
    stats: SharedStats,
    started: Instant,
    /// The decrypted view, when asked for.
    tls: Option<crate::tls::TlsView>,
}

impl Agent {
    /// Checks everything, loads the tap on each node, attaches to the selected pods and starts
    /// reading. On error nothing stays attached.
    pub fn start(cfg: AgentConfig, sink: Option<PacketSink>) -> Result<Agent, AgentError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(AgentError::Config { problems });
        }
        let inventory_raw = std::fs::read(&cfg.inventory).map_err(|source| InventoryError::Io {
            path: cfg.inventory.clone(),
            source,
        })?;
        let inventory = Inventory::load(&cfg.inventory)?;

        let known: Vec<String> = inventory.nodes.iter().map(|n| n.name.clone()).collect();
        let unknown: Vec<String> = cfg
            .nodes
            .iter()
            .filter(|n| !known.contains(n))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(AgentError::UnknownNodes { unknown, known });
        }
        let node_names: Vec<String> = if cfg.nodes.is_empty() {
            known
        } else {
            cfg.nodes.clone()
        };

        // Explicit pods must exist in the inventory.
        cfg.selection.select(&inventory, None)?;
        let elsewhere: Vec<String> = cfg
            .selection
            .pods
            .iter()
            .filter_map(|r| inventory.pod(r))
            .filter(|p| !node_names.contains(&p.node))
            .map(|p| format!("{}/{} runs on {}", p.namespace, p.name, p.node))
            .collect();
        if !elsewhere.is_empty() {
            return Err(AgentError::PodsElsewhere { pods: elsewhere });
        }

        let enters_namespaces = inventory
            .nodes
            .iter()
            .any(|n| node_names.contains(&n.name) && n.netns.is_some());
        let missing = missing_capabilities(enters_namespaces);
        if !missing.is_empty() {
            return Err(AgentError::Unsupported { missing });
        }
        let missing = missing_kernel_features(&probe_kernel());
        if !missing.is_empty() {
            return Err(AgentError::Unsupported { missing });
        }

        let output = Output::new(sink, cfg.gso, cfg.snaplen)
            .map_err(|source| AgentError::Output { source })?;
        let output = Arc::new(Mutex::new(output));

        let mut nodes = Vec::new();
        for (i, name) in node_names.iter().enumerate() {
            let node = inventory
                .node(name)
                .ok_or_else(|| AgentError::UnknownNodes {
                    unknown: vec![name.clone()],
                    known: vec![],
                })?;
            let mut program = TapProgram::load(
                node.netns.as_deref(),
                &LoadOptions {
                    ring_bytes: cfg.ring_bytes,
                    attach: cfg.attach,
                },
            )?;
            let mut runtime = runtime_config(&cfg);
            let mut device = None;
            let mut sending = String::from("file only");
            if let Some(t) = &cfg.tunnel {
                let tunnel_err = |reason: String| AgentError::Tunnel {
                    endpoint: t.endpoint.to_string(),
                    node: name.clone(),
                    reason,
                };
                if let Some(ex) = t.exclusion() {
                    program.set_exclusions(&[ex])?;
                    runtime.exclude = true;
                }
                sending = format!("user space to {}", t.endpoint);
                let kernel_possible = t.endpoint.kind == podtap_tunnel::TunnelKind::Vxlan
                    && cfg.snaplen >= podtap_abi::MAX_COPY - 1;
                if t.mode != SendMode::UserSpace && kernel_possible {
                    match tunnel::create_device(node.netns.as_deref(), t) {
                        Ok(ifindex) => {
                            runtime.tunnel_ifindex = ifindex;
                            device = Some(KernelDevice {
                                netns: node.netns.clone(),
                                cfg: t.clone(),
                            });
                            sending = format!(
                                "in kernel to {} via {} (GSO super-packets from user space)",
                                t.endpoint,
                                t.device_name()
                            );
                        }
                        Err(why) if t.mode == SendMode::Kernel => return Err(tunnel_err(why)),
                        Err(why) => tracing::warn!(
                            node = %name,
                            "in-kernel sending unavailable ({why}); sending from user space"
                        ),
                    }
                } else if t.mode == SendMode::Kernel {
                    return Err(tunnel_err(
                        "in-kernel sending needs VXLAN and whole packets".into(),
                    ));
                }
                let sender = podtap_cluster::netns::run_in(node.netns.as_deref(), || {
                    podtap_tunnel::TunnelSender::connect(t.endpoint, t.policy, t.oversize)
                })
                .map_err(|e| tunnel_err(e.to_string()))?
                .map_err(|e| tunnel_err(e.to_string()))?;
                lock(&output).set_tunnel(i as u16, Some(sender));
                tracing::info!(node = %name, "sending copies {sending}");
            }
            program.set_prefilter(runtime, &cfg.prefilter)?;
            let ring = program.take_ring().ok_or(ProgramError::Missing {
                what: "map",
                name: podtap_abi::MAP_TAP_RING,
            })?;
            let reader = RingReader::spawn(i as u16, ring, output.clone())
                .map_err(|source| AgentError::Output { source })?;
            nodes.push(NodeTap {
                name: name.clone(),
                index: i as u16,
                program,
                reader,
                tapped: BTreeMap::new(),
                runtime,
                _device: device,
                sending,
            });
        }

        let mut agent = Agent {
            cfg,
            nodes,
            output,
            inventory,
            inventory_raw,
            retired: HashMap::new(),
            failures: Vec::new(),
            stats: SharedStats::default(),
            started: Instant::now(),
            tls: None,
        };
        if agent.cfg.decrypt {
            let view = crate::tls::TlsView::start(agent.cfg.ring_bytes, agent.output.clone())
                .map_err(|e| AgentError::Decrypt {
                    reason: e.to_string(),
                })?;
            agent.tls = Some(view);
        }
        agent.apply()?;
        let explicit: Vec<String> = agent
            .failures
            .iter()
            .filter(|f| agent.cfg.selection.pods.contains(&f.pod))
            .map(|f| format!("{}: {}", f.pod, f.reason))
            .collect();
        if !explicit.is_empty() {
            return Err(AgentError::Attach { failures: explicit });
        }
        agent.refresh_stats();
        Ok(agent)
    }

    /// Re-reads the inventory and, if it changed, taps new pods and untaps gone ones. Returns
    /// whether anything was re-evaluated. A broken inventory keeps the current taps.
    pub fn reconcile(&mut self) -> Result<bool, AgentError> {
        let raw = match std::fs::read(&self.cfg.inventory) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "inventory {}: {e}; keeping the current taps",
                    self.cfg.inventory.display()
                );
                return Ok(false);
            }
        };
        if raw == self.inventory_raw {
            return Ok(false);
        }
        match serde_json::from_slice::<Inventory>(&raw) {
            Ok(inv) => {
                self.inventory = inv;
                self.inventory_raw = raw;
                self.apply()?;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(
                    "inventory {} is not valid ({e}); keeping the current taps",
                    self.cfg.inventory.display()
                );
                self.inventory_raw = raw;
                Ok(false)
            }
        }
    }

    /// Makes the attached set equal to the selected set on every node.
    fn apply(&mut self) -> Result<(), AgentError> {
        let mut failures = Vec::new();
        let selected = self.selected_pods()?;
        for node in &mut self.nodes {
            let want: BTreeMap<PodRef, (String, u16)> = selected
                .iter()
                .filter(|p| p.node == node.name)
                .map(|p| (p.key(), (p.host_veth.clone(), p.tap_id.unwrap_or(0))))
                .collect();

            let gone: Vec<PodRef> = node
                .tapped
                .iter()
                .filter(|(pod, t)| want.get(*pod).map(|(v, _)| v) != Some(&t.veth))
                .map(|(pod, _)| pod.clone())
                .collect();
            for pod in gone {
                if let Some(t) = node.tapped.remove(&pod) {
                    let last = node.program.detach(t.ifindex)?;
                    tracing::info!(pod = %pod, node = %node.name, veth = %t.veth, "untapped");
                    let e = self
                        .retired
                        .entry(pod.clone())
                        .or_insert_with(|| (node.name.clone(), t.veth.clone(), Default::default()));
                    e.2[0].add(&last[0]);
                    e.2[1].add(&last[1]);
                }
            }

            for (pod, (veth, tap_id)) in want {
                if node.tapped.contains_key(&pod) {
                    continue;
                }
                match node.program.attach(&veth, tap_id) {
                    Ok(ifindex) => {
                        let description = format!("node {} veth {}", node.name, veth);
                        let registered = lock(&self.output).add_interface(
                            node.index,
                            ifindex,
                            &pod,
                            tap_id,
                            &description,
                        );
                        if let Err(source) = registered {
                            let _ = node.program.detach(ifindex);
                            return Err(AgentError::Output { source });
                        }
                        tracing::info!(pod = %pod, node = %node.name, veth = %veth, mode = %node.program.mode(), "tapped");
                        node.tapped.insert(pod, Tapped { ifindex, veth });
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod, node = %node.name, "cannot tap: {e}");
                        failures.push(TapFailure {
                            pod,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        self.failures = failures;
        self.follow_tls(&selected);
        Ok(())
    }

    /// Probes the TLS libraries of the selected pods' processes (new processes appear, old ones
    /// end: called on every poll, not only when the inventory changes).
    fn follow_tls(&mut self, selected: &[podtap_cluster::Pod]) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        let pods: Vec<crate::tls::TlsPod> = selected
            .iter()
            .filter_map(|p| {
                let node = self.nodes.iter().find(|n| n.name == p.node)?.index;
                Some(crate::tls::TlsPod {
                    pod: p.key(),
                    netns: p.netns.clone()?,
                    tap_id: p.tap_id.unwrap_or(0),
                    node,
                })
            })
            .collect();
        let output = &self.output;
        tls.follow(&pods, &mut |p| {
            if let Err(e) = lock(output).add_decrypted_interface(p.node, &p.pod, p.tap_id) {
                tracing::warn!(pod = %p.pod, "decrypted view: {e}");
            }
        });
    }

    /// The pods the selection picks from the current inventory. An explicitly named pod that
    /// left the inventory is skipped (the ones still there stay selected).
    fn selected_pods(&self) -> Result<Vec<podtap_cluster::Pod>, SelectorError> {
        match self.cfg.selection.select(&self.inventory, None) {
            Ok(s) => Ok(s.into_iter().cloned().collect()),
            Err(SelectorError::UnknownPods { .. }) => {
                let mut sel = self.cfg.selection.clone();
                sel.pods.retain(|p| self.inventory.pod(p).is_some());
                if sel.pods.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(sel
                    .select(&self.inventory, None)?
                    .into_iter()
                    .cloned()
                    .collect())
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the in-kernel prefilter on every node, without reloading anything.
    pub fn set_prefilter(&mut self, prefilter: Prefilter) -> Result<(), AgentError> {
        for node in &mut self.nodes {
            node.program.set_prefilter(node.runtime, &prefilter)?;
        }
        self.cfg.prefilter = prefilter;
        Ok(())
    }

    /// The pods tapped now, with their node and veth.
    pub fn tapped(&self) -> Vec<(PodRef, String, String)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.tapped
                    .iter()
                    .map(|(p, t)| (p.clone(), n.name.clone(), t.veth.clone()))
            })
            .collect()
    }

    /// Kernel ids of the loaded programs, per node.
    pub fn program_ids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .flat_map(|n| n.program.program_ids())
            .collect()
    }

    /// The stats shared with the metrics endpoint.
    pub fn shared_stats(&self) -> SharedStats {
        self.stats.clone()
    }

    /// Recomputes the stats from the kernel and output counters.
    pub fn refresh_stats(&mut self) -> Stats {
        let stats = self.collect_stats();
        if let Ok(mut s) = self.stats.lock() {
            *s = stats.clone();
        }
        stats
    }

    fn collect_stats(&self) -> Stats {
        let (by_pod, output_errors, tunnel) = {
            let o = lock(&self.output);
            (o.counters_by_pod(), o.errors(), o.tunnel_counters())
        };
        let mut pods: BTreeMap<PodRef, PodStats> = BTreeMap::new();
        for (pod, (node, veth, counters)) in &self.retired {
            pods.insert(
                pod.clone(),
                PodStats {
                    pod: pod.clone(),
                    node: node.clone(),
                    veth: veth.clone(),
                    tapped: false,
                    kernel: *counters,
                    output: Default::default(),
                },
            );
        }
        for node in &self.nodes {
            for (pod, t) in &node.tapped {
                let e = pods.entry(pod.clone()).or_insert_with(|| PodStats {
                    pod: pod.clone(),
                    ..Default::default()
                });
                e.node = node.name.clone();
                e.veth = t.veth.clone();
                e.tapped = true;
                for (d, dir) in [podtap_abi::DIR_FROM_POD, podtap_abi::DIR_TO_POD]
                    .into_iter()
                    .enumerate()
                {
                    if let Ok(c) = node.program.counters(t.ifindex, dir) {
                        e.kernel[d].add(&c);
                    }
                }
            }
        }
        for (pod, stats) in pods.iter_mut() {
            if let Some(o) = by_pod.get(pod) {
                stats.output = *o;
            }
        }
        Stats {
            pods: pods.into_values().collect(),
            failures: self.failures.clone(),
            output_errors,
            uptime: self.started.elapsed(),
            attach_mode: self
                .nodes
                .first()
                .map(|n| n.program.mode().to_string())
                .unwrap_or_default(),
            nodes: self.nodes.len(),
            sending: if self.cfg.tunnel.is_some() {
                self.nodes
                    .iter()
                    .map(|n| format!("{}: {}", n.name, n.sending))
                    .collect()
            } else {
                Vec::new()
            },
            tunnel,
            decrypted: self.tls.as_ref().map(|t| {
                let mut s = t.stats();
                s.frames = lock(&self.output).decrypted_counters();
                s
            }),
        }
    }

    /// Runs until `stop` is set: follows the inventory and refreshes the stats. Returns early
    /// with an error when the output fails (for example, the reader of `-w -` went away).
    pub fn run(&mut self, stop: &AtomicBool, deadline: Option<Instant>) -> Result<(), AgentError> {
        let tick = Duration::from_millis(100);
        let mut last_poll = Instant::now();
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(tick);
            if last_poll.elapsed() >= self.cfg.inventory_poll {
                last_poll = Instant::now();
                if !self.reconcile()? && self.tls.is_some() {
                    let selected = self.selected_pods()?;
                    self.follow_tls(&selected);
                }
                self.refresh_stats();
            }
            if let Some(e) = self.output_error() {
                return Err(AgentError::Output { source: e });
            }
        }
        Ok(())
    }

    fn output_error(&self) -> Option<std::io::Error> {
        let o = lock(&self.output);
        o.write_error()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()))
    }

    /// Runs for `settle` more (copies still on their way through the veths and the ring
    /// arrive), then stops.
    pub fn stop_after(mut self, settle: Duration) -> Result<Stats, AgentError> {
        self.run(&AtomicBool::new(false), Some(Instant::now() + settle))?;
        self.stop()
    }

    /// Detaches everything, drains the rings, closes the output and returns the final stats.
    pub fn stop(mut self) -> Result<Stats, AgentError> {
        let mut first_err = None;
        if let Some(tls) = self.tls.as_mut() {
            tls.stop();
        }
        for node in &mut self.nodes {
            match node.program.detach_all() {
                Ok(finals) => {
                    for (ifindex, last) in finals {
                        let Some(pod) = node
                            .tapped
                            .iter()
                            .find(|(_, t)| t.ifindex == ifindex)
                            .map(|(p, _)| p.clone())
                        else {
                            continue;
                        };
                        let veth = node.tapped.remove(&pod).map(|t| t.veth).unwrap_or_default();
                        let e = self
                            .retired
                            .entry(pod)
                            .or_insert_with(|| (node.name.clone(), veth, Default::default()));
                        e.2[0].add(&last[0]);
                        e.2[1].add(&last[1]);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(AgentError::from(e));
                }
            }
            node.reader.stop();
        }
        let finished = lock(&self.output).finish();
        let stats = self.refresh_stats();
        if let Err(source) = finished {
            first_err.get_or_insert(AgentError::Output { source });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

/// Locks shared state; a reader thread that panicked leaves it usable (its counters are still
/// worth reporting).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime_config(cfg: &AgentConfig) -> RuntimeConfig {
    RuntimeConfig {
        snaplen: cfg.snaplen,
        gso_whole: cfg.gso == GsoMode::Segment,
        // Wake the reader once an eighth of the ring is pending, at most every 1 MiB.
        wakeup_bytes: (cfg.ring_bytes / 8).min(1 << 20),
        tunnel_ifindex: 0,
        exclude: false,
    }
}

/// What the kernel offers, as far as the tap cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    /// BPF ring buffer maps (5.8+).
    pub ring_buffer: bool,
    /// TC classifier programs.
    pub tc_classifier: bool,
}

/// Probes the running kernel.
pub fn probe_kernel() -> KernelFeatures {
    use aya::maps::MapType;
    use aya::programs::ProgramType;
    KernelFeatures {
        ring_buffer: aya::sys::is_map_supported(MapType::RingBuf).unwrap_or(false),
        tc_classifier: aya::sys::is_program_supported(ProgramType::SchedClassifier)
            .unwrap_or(false),
    }
}

/// What is missing from `features`, each with what to do about it.
pub fn missing_kernel_features(features: &KernelFeatures) -> Vec<String> {
    let mut missing = Vec::new();
    if !features.ring_buffer {
        missing.push(
            "the kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF needs Linux 5.8 or later)"
                .into(),
        );
    }
    if !features.tc_classifier {
        missing.push("the kernel cannot load TC classifier programs (CONFIG_NET_CLS_BPF, CONFIG_NET_SCH_INGRESS)".into());
    }
    missing
}

/// Capabilities the agent needs and lacks (from /proc/self/status). CAP_SYS_ADMIN only when
/// it must enter node namespaces (the lab); on a real node it runs in the node's own.
pub fn missing_capabilities(enters_namespaces: bool) -> Vec<String> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    const NET_ADMIN: u32 = 12;
    const SYS_ADMIN: u32 = 21;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;
    let mut missing = Vec::new();
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF (to load eBPF programs)".to_string());
    }
    if !has(PERFMON) && !has(SYS_ADMIN) {
        missing.push("CAP_PERFMON (for the ring buffer and packet reads)".to_string());
    }
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (to attach to veths)".to_string());
    }
    if enters_namespaces && !has(SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN (to enter the node's network namespace)".to_string());
    }
    if !missing.is_empty() {
        missing.insert(
            0,
            "the process lacks capabilities: run as root or grant them".to_string(),
        );
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_are_all_reported() {
        let mut cfg = AgentConfig::new("x".into());
        cfg.snaplen = 0;
        cfg.ring_bytes = 5000;
        assert_eq!(cfg.problems().len(), 2);
    }

    #[test]
    fn missing_features_say_what_is_missing() {
        let none = KernelFeatures {
            ring_buffer: false,
            tc_classifier: false,
        };
        let m = missing_kernel_features(&none);
        assert_eq!(m.len(), 2);
        assert!(m[0].contains("ring buffer") && m[1].contains("TC classifier"));
        let all = KernelFeatures {
            ring_buffer: true,
            tc_classifier: true,
        };
        assert!(missing_kernel_features(&all).is_empty());
    }

    #[test]
    fn this_kernel_has_what_the_tap_needs() {
        assert!(missing_kernel_features(&probe_kernel()).is_empty());
    }
}
