//! The running broker: the receive loop, the policies' pipelines and outputs, reload.
//!
//! One thread does everything for every packet: receive, decapsulate, find the policy from the
//! VNI or GRE key, run its stages, hand the packet to each output. Timers (file rotation, flow
//! expiry) run between packets, at least every 100 ms. Nothing on that path allocates.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podtap_cluster::Inventory;
use podtap_tunnel::{Encap, ReceiveCounters, TunnelReceiver};
use podtap_wire::netflow::FlowVersion;

use crate::config::{BrokerConfig, PolicyConfig};
use crate::output::flow::FlowExporter;
use crate::output::pcap::PcapOutput;
use crate::output::tunnel::TunnelOutput;
use crate::output::{Labelled, OutputConfig, OutputCounters};
use crate::packet::{Direction, Frame, Packet, Source};
use crate::pipeline::{Pipeline, StageCounters};

/// How long the loop waits for a packet before running timers.
const TICK: Duration = Duration::from_millis(100);
/// How often the inventory file is checked for changes.
const INVENTORY_POLL: Duration = Duration::from_secs(1);
/// Receive buffer asked for on the tunnel sockets.
const RECEIVE_BUFFER: i32 = 32 << 20;

/// Errors starting or reloading the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The tunnel sockets could not be opened.
    #[error("listening on {address} (VXLAN port {port}, GRE {gre}): {source}")]
    Listen {
        address: std::net::IpAddr,
        port: u16,
        gre: bool,
        #[source]
        source: std::io::Error,
    },
    /// Policies could not be built; every problem is listed.
    #[error("cannot start the policies:\n  {}", problems.join("\n  "))]
    Policies { problems: Vec<String> },
    /// A reload asked for something only a restart can do.
    #[error("reload: {reason}")]
    Reload { reason: String },
}

/// A running output.
#[derive(Debug)]
enum Output {
    Pcap(PcapOutput),
    Tunnel(TunnelOutput),
    Flow(FlowExporter),
    Calls(Box<crate::output::calls::CallsOutput>),
}

impl Output {
    fn build(cfg: &OutputConfig, policy: &str) -> Result<Output, String> {
        Ok(match cfg {
            OutputConfig::Pcap(c) => {
                Output::Pcap(PcapOutput::new(c, policy).map_err(|e| e.to_string())?)
            }
            OutputConfig::Vxlan(c) => {
                Output::Tunnel(TunnelOutput::vxlan(c).map_err(|e| e.to_string())?)
            }
            OutputConfig::L2gre(c) => {
                Output::Tunnel(TunnelOutput::l2gre(c).map_err(|e| e.to_string())?)
            }
            OutputConfig::NetflowV9(c) => Output::Flow(
                FlowExporter::new(c, FlowVersion::V9, policy).map_err(|e| e.to_string())?,
            ),
            OutputConfig::Ipfix(c) => Output::Flow(
                FlowExporter::new(c, FlowVersion::Ipfix, policy).map_err(|e| e.to_string())?,
            ),
            OutputConfig::Calls(c) => Output::Calls(Box::new(
                crate::output::calls::CallsOutput::new(c).map_err(|e| e.to_string())?,
            )),
        })
    }

    /// Writes a packet; an error is returned as text for counting.
    fn write(&mut self, pkt: Labelled<'_>) -> Result<(), String> {
        match self {
            Output::Pcap(o) => o.write(pkt).map_err(|e| e.to_string()),
            Output::Tunnel(o) => {
                o.write(pkt);
                Ok(())
            }
            Output::Flow(o) => o.write(pkt).map_err(|e| e.to_string()),
            Output::Calls(o) => o.write(pkt).map_err(|e| e.to_string()),
        }
    }

    fn tick(&mut self, now_ns: u64) -> Result<(), String> {
        match self {
            Output::Pcap(o) => o.tick(now_ns).map_err(|e| e.to_string()),
            Output::Tunnel(_) => Ok(()),
            Output::Flow(o) => o.tick(now_ns).map_err(|e| e.to_string()),
            Output::Calls(o) => o.tick(now_ns).map_err(|e| e.to_string()),
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        match self {
            Output::Pcap(o) => o.finish().map_err(|e| e.to_string()),
            Output::Tunnel(_) => Ok(()),
            Output::Flow(o) => o.finish().map_err(|e| e.to_string()),
            Output::Calls(o) => o.finish().map_err(|e| e.to_string()),
        }
    }

    fn counters(&self) -> OutputCounters {
        match self {
            Output::Pcap(o) => o.counters(),
            Output::Tunnel(o) => o.counters(),
            Output::Flow(o) => o.counters(),
            Output::Calls(o) => o.counters(),
        }
    }
}

/// One policy at work.
#[derive(Debug)]
struct Policy {
    config: PolicyConfig,
    pipeline: Pipeline,
    outputs: Vec<Output>,
    /// Packets that reached the policy.
    received: u64,
    /// Packets its stages kept.
    kept: u64,
    /// Output failures, by output index; the first of each output is logged.
    output_failures: Vec<u64>,
}

impl Policy {
    fn build(config: &PolicyConfig) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let pipeline = Pipeline::build(&config.stages);
        let mut outputs = Vec::new();
        for (i, o) in config.outputs.iter().enumerate() {
            match Output::build(o, &config.name) {
                Ok(out) => outputs.push(out),
                Err(m) => problems.push(format!("outputs[{i}] ({}): {m}", o.kind())),
            }
        }
        match pipeline {
            Ok(pipeline) if problems.is_empty() => Ok(Policy {
                config: config.clone(),
                pipeline,
                output_failures: vec![0; outputs.len()],
                outputs,
                received: 0,
                kept: 0,
            }),
            Ok(_) => Err(problems),
            Err(mut p) => {
                p.extend(problems);
                Err(p)
            }
        }
    }

    fn finish(&mut self) {
        for (i, o) in self.outputs.iter_mut().enumerate() {
            if let Err(e) = o.finish() {
                tracing::warn!(policy = %self.config.name, output = i, "finishing output: {e}");
            }
        }
    }
}

/// What one policy counted.
#[derive(Debug, Clone, Default)]
pub struct PolicyStats {
    /// Policy name.
    pub name: String,
    /// Packets that reached it.
    pub received: u64,
    /// Packets its stages kept (and handed to the outputs).
    pub kept: u64,
    /// Each stage's counters, in order.
    pub stages: Vec<StageCounters>,
    /// Each output's counters, in order.
    pub outputs: Vec<OutputCounters>,
    /// Failed writes per output, in order.
    pub output_failures: Vec<u64>,
}

/// What the broker counted.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// The tunnel receiver's counters (packets and unusable ones by reason).
    pub received: ReceiveCounters,
    /// Well-formed tunnel packets that matched no policy, by reason (`unknown_vni`,
    /// `unknown_gre_key`).
    pub unmatched: BTreeMap<&'static str, u64>,
    /// Per policy, in configuration order.
    pub policies: Vec<PolicyStats>,
    /// The service map of each `calls` output (policy name, snapshot).
    pub service_maps: Vec<(String, podtap_l7::servicemap::ServiceMapMetrics)>,
}

/// A running broker.
pub struct Broker {
    config: BrokerConfig,
    /// None when replaying a capture (nothing is received from the network).
    receiver: Option<TunnelReceiver>,
    policies: Vec<Policy>,
    /// Policy by VNI and by GRE policy key, looked up for every packet. The keys come off the
    /// network: a fast hash, randomly seeded.
    by_vni: HashMap<u32, usize, foldhash::fast::RandomState>,
    by_gre_key: HashMap<u16, usize, foldhash::fast::RandomState>,
    unmatched: BTreeMap<&'static str, u64>,
    pods: HashMap<u16, String>,
    inventory_raw: Vec<u8>,
    buf: Vec<u8>,
    /// Where a stage that changes a frame copies it; reused for every packet.
    scratch: Vec<u8>,
    /// The counters as of the last tick, for the metrics endpoint.
    shared: crate::metrics::SharedStats,
}

impl Broker {
    /// Opens the tunnel sockets and builds every policy; on any problem, nothing runs and every
    /// problem is listed.
    pub fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let listen = &config.listen;
        let receiver = TunnelReceiver::bind(
            listen.address,
            listen.vxlan_port,
            listen.gre,
            RECEIVE_BUFFER,
        )
        .map_err(|source| BrokerError::Listen {
            address: listen.address,
            port: listen.vxlan_port,
            gre: listen.gre,
            source,
        })?;
        Self::build(config, Some(receiver))
    }

    /// A broker that receives nothing from the network: its policies process frames given to
    /// [`Broker::process`] (replaying a capture, benchmarks).
    pub fn offline(config: BrokerConfig) -> Result<Broker, BrokerError> {
        Self::build(config, None)
    }

    fn build(
        config: BrokerConfig,
        receiver: Option<TunnelReceiver>,
    ) -> Result<Broker, BrokerError> {
        let mut broker = Broker {
            receiver,
            policies: Vec::new(),
            by_vni: HashMap::default(),
            by_gre_key: HashMap::default(),
            unmatched: BTreeMap::new(),
            pods: HashMap::new(),
            inventory_raw: Vec::new(),
            buf: Vec::with_capacity(podtap_tunnel::MAX_DATAGRAM),
            scratch: Vec::with_capacity(podtap_tunnel::MAX_DATAGRAM),
            shared: Default::default(),
            config: config.clone(),
        };
        let mut problems = config.problems();
        if problems.is_empty() {
            for p in &config.policies {
                match Policy::build(p) {
                    Ok(policy) => broker.policies.push(policy),
                    Err(ps) => {
                        problems.extend(ps.into_iter().map(|m| format!("policy {}: {m}", p.name)))
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(BrokerError::Policies { problems });
        }
        broker.index();
        broker.refresh_inventory();
        for p in &broker.policies {
            tracing::info!(
                policy = %p.config.name,
                vni = ?p.config.vni,
                gre_key = ?p.config.gre_key,
                stages = p.config.stages.len(),
                outputs = p.config.outputs.len(),
                "policy ready"
            );
        }
        Ok(broker)
    }

    /// The address VXLAN is received on (useful with port 0).
    pub fn vxlan_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.receiver {
            Some(r) => r.vxlan_addr(),
            None => Err(std::io::Error::other("an offline broker receives nothing")),
        }
    }

    /// Index of the policy with this name.
    pub fn policy_index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.config.name == name)
    }

    fn index(&mut self) {
        self.by_vni.clear();
        self.by_gre_key.clear();
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(v) = p.config.vni {
                self.by_vni.insert(v, i);
            }
            if let Some(k) = p.config.gre_key {
                self.by_gre_key.insert(k, i);
            }
        }
    }

    /// Re-reads the inventory (tap id → pod) if it changed.
    fn refresh_inventory(&mut self) {
        let Some(path) = &self.config.inventory else {
            return;
        };
        let raw = match std::fs::read(path) {
            Ok(r) => r,
            Err(e) => {
                if !self.inventory_raw.is_empty() || self.pods.is_empty() {
                    tracing::warn!(
                        "inventory {}: {e}; keeping the last pod names",
                        path.display()
                    );
                }
                return;
            }
        };
        if raw == self.inventory_raw {
            return;
        }
        match serde_json::from_slice::<Inventory>(&raw) {
            Ok(inv) => {
                // Each pod's veth and its decrypted view (the label's decrypted bit).
                self.pods = inv
                    .pods
                    .iter()
                    .filter_map(|p| p.tap_id.map(|t| (t, format!("{}/{}", p.namespace, p.name))))
                    .flat_map(|(t, name)| {
                        let decrypted = format!("{name} (decrypted)");
                        [(t, name), (t | podtap_wire::vxlan::DECRYPTED, decrypted)]
                    })
                    .collect();
                for policy in &mut self.policies {
                    for o in &mut policy.outputs {
                        if let Output::Calls(c) = o {
                            c.set_inventory(&inv);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(
                "inventory {} is not valid ({e}); keeping the last pod names",
                path.display()
            ),
        }
        self.inventory_raw = raw;
    }

    /// Runs until `stop` is set (or `deadline` passes).
    pub fn run(&mut self, stop: &AtomicBool, deadline: Option<Instant>) {
        let mut next_tick = Instant::now() + TICK;
        let mut next_inventory = Instant::now() + INVENTORY_POLL;
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            let received = match self.receiver.as_mut() {
                Some(r) => r.recv(&mut self.buf, TICK),
                None => {
                    std::thread::sleep(TICK);
                    None
                }
            };
            if let Some(received) = received {
                self.dispatch(&received);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick();
            }
            if now >= next_inventory {
                next_inventory = now + INVENTORY_POLL;
                self.refresh_inventory();
            }
        }
    }

    /// Runs one received packet through its policy.
    fn dispatch(&mut self, r: &podtap_tunnel::Received) {
        let index = match r.encap {
            Encap::Vxlan { vni } => self.by_vni.get(&vni).copied().ok_or("unknown_vni"),
            Encap::L2gre { policy_key } => self
                .by_gre_key
                .get(&policy_key)
                .copied()
                .ok_or("unknown_gre_key"),
        };
        let index = match index {
            Ok(i) => i,
            Err(reason) => {
                let n = self.unmatched.entry(reason).or_default();
                if *n == 0 {
                    tracing::warn!(reason, encap = ?r.encap, "tunnel packet for no policy (counting further ones)");
                }
                *n += 1;
                return;
            }
        };
        let source = Source {
            policy: index,
            tap: r.tap,
            direction: match r.to_pod {
                Some(true) => Direction::ToPod,
                Some(false) => Direction::FromPod,
                None => Direction::Unknown,
            },
            agent: r.agent,
        };
        let frame = r.frame.clone();
        let buf = std::mem::take(&mut self.buf);
        self.process(source, now_ns(), &buf[frame]);
        self.buf = buf;
    }

    /// Runs one frame through the policy `source.policy`: its stages, then its outputs.
    pub fn process(&mut self, source: Source, timestamp_ns: u64, frame: &[u8]) {
        let Some(policy) = self.policies.get_mut(source.policy) else {
            return;
        };
        let mut pkt = Packet {
            timestamp_ns,
            data: Frame::borrowed(frame, std::mem::take(&mut self.scratch)),
            original_len: frame.len() as u32,
            source,
        };
        policy.received += 1;
        if policy.pipeline.run(&mut pkt) {
            policy.kept += 1;
            let labelled = Labelled {
                packet: &pkt,
                pod: self.pods.get(&source.tap).map(String::as_str),
            };
            for (i, out) in policy.outputs.iter_mut().enumerate() {
                if let Err(e) = out.write(labelled) {
                    if policy.output_failures[i] == 0 {
                        tracing::warn!(policy = %policy.config.name, output = i, "writing: {e} (counting further failures)");
                    }
                    policy.output_failures[i] += 1;
                }
            }
        }
        self.scratch = pkt.data.into_buffer();
    }

    /// Runs the outputs' timers at time `now_ns` (rotation, flow expiry); the receive loop
    /// does this itself, a replay calls it with the capture's time.
    pub fn tick_at(&mut self, now_ns: u64) {
        for p in &mut self.policies {
            for (i, o) in p.outputs.iter_mut().enumerate() {
                if let Err(e) = o.tick(now_ns) {
                    if p.output_failures[i] == 0 {
                        tracing::warn!(policy = %p.config.name, output = i, "timer: {e}");
                    }
                    p.output_failures[i] += 1;
                }
            }
        }
    }

    fn tick(&mut self) {
        self.tick_at(now_ns());
        if let Some(r) = self.receiver.as_mut() {
            r.refresh_drops();
        }
        let stats = self.stats();
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// The counters as of the last timer tick, shared with a metrics endpoint.
    pub fn shared_stats(&self) -> crate::metrics::SharedStats {
        self.shared.clone()
    }

    /// Applies a new configuration: unchanged policies keep running untouched (their files,
    /// flow caches and counters), changed ones are rebuilt, removed ones finished. Nothing
    /// changes if the new configuration has any problem, or changes where the broker listens.
    pub fn reload(&mut self, new: BrokerConfig) -> Result<Vec<String>, BrokerError> {
        if new.listen != self.config.listen {
            return Err(BrokerError::Reload {
                reason: "`listen` changed: restart the broker for that".into(),
            });
        }
        let problems = new.problems();
        if !problems.is_empty() {
            return Err(BrokerError::Policies { problems });
        }
        let mut old: HashMap<String, Policy> = self
            .policies
            .drain(..)
            .map(|p| (p.config.name.clone(), p))
            .collect();
        let mut next = Vec::new();
        let mut changes = Vec::new();
        let mut problems = Vec::new();
        for cfg in &new.policies {
            match old.remove(&cfg.name) {
                Some(p) if p.config == *cfg => next.push(p),
                existing => match Policy::build(cfg) {
                    Ok(p) => {
                        changes.push(format!(
                            "{} {}",
                            if existing.is_some() {
                                "rebuilt"
                            } else {
                                "added"
                            },
                            cfg.name
                        ));
                        if let Some(mut e) = existing {
                            e.finish();
                        }
                        next.push(p);
                    }
                    Err(ps) => {
                        problems
                            .extend(ps.into_iter().map(|m| format!("policy {}: {m}", cfg.name)));
                        if let Some(e) = existing {
                            next.push(e);
                        }
                    }
                },
            }
        }
        if !problems.is_empty() {
            // Put everything back as it was.
            next.extend(old.into_values());
            self.policies = next;
            self.policies.sort_by_key(|p| {
                self.config
                    .policies
                    .iter()
                    .position(|c| c.name == p.config.name)
                    .unwrap_or(usize::MAX)
            });
            self.index();
            return Err(BrokerError::Policies { problems });
        }
        for (name, mut p) in old {
            p.finish();
            changes.push(format!("removed {name}"));
        }
        self.policies = next;
        self.config = new;
        self.index();
        self.inventory_raw.clear();
        self.refresh_inventory();
        Ok(changes)
    }

    /// Everything counted so far.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            received: self
                .receiver
                .as_ref()
                .map(|r| r.counters().clone())
                .unwrap_or_default(),
            unmatched: self.unmatched.clone(),
            policies: self
                .policies
                .iter()
                .map(|p| PolicyStats {
                    name: p.config.name.clone(),
                    received: p.received,
                    kept: p.kept,
                    stages: p.pipeline.counters().cloned().collect(),
                    outputs: p.outputs.iter().map(Output::counters).collect(),
                    output_failures: p.output_failures.clone(),
                })
                .collect(),
            service_maps: self
                .policies
                .iter()
                .flat_map(|p| {
                    p.outputs.iter().filter_map(|o| match o {
                        Output::Calls(c) => Some((p.config.name.clone(), c.service_map_metrics())),
                        _ => None,
                    })
                })
                .collect(),
        }
    }

    /// Finishes every output (closes files, exports remaining flows) and returns the stats.
    pub fn finish(mut self) -> BrokerStats {
        if let Some(r) = self.receiver.as_mut() {
            r.refresh_drops();
        }
        for p in &mut self.policies {
            p.finish();
        }
        self.stats()
    }

    /// The configuration file's inventory path, if any.
    pub fn inventory(&self) -> Option<&PathBuf> {
        self.config.inventory.as_ref()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl BrokerStats {
    /// The human summary.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let r = &self.received;
        let _ = writeln!(
            s,
            "broker: received {} tunnel packets ({} bytes of frames)",
            r.packets, r.bytes
        );
        for (reason, n) in &r.malformed {
            let _ = writeln!(s, "  unusable: {reason} {n}");
        }
        for (reason, n) in &self.unmatched {
            let _ = writeln!(s, "  for no policy: {reason} {n}");
        }
        for p in &self.policies {
            let _ = writeln!(
                s,
                "policy {}: received {}, kept {}",
                p.name, p.received, p.kept
            );
            for st in &p.stages {
                let drops: Vec<String> =
                    st.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(
                    s,
                    "  stage {:<7} in {:>9} kept {:>9} dropped {}",
                    st.kind,
                    st.received,
                    st.kept,
                    if drops.is_empty() {
                        "0".into()
                    } else {
                        drops.join(", ")
                    }
                );
            }
            for (i, o) in p.outputs.iter().enumerate() {
                let extra: Vec<String> = o.extra.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let errors: Vec<String> =
                    o.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(
                    s,
                    "  output {:<10} packets {:>9} bytes {:>11} failed {} {}{}",
                    o.kind,
                    o.packets,
                    o.bytes,
                    p.output_failures.get(i).copied().unwrap_or(0),
                    extra.join(", "),
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!("; errors {}", errors.join(", "))
                    }
                );
            }
        }
        s
    }
}
