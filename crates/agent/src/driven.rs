//! The agent as the controller drives it (`podtap agent --controller`): one node, the one it
//! runs on. The controller says which pods to tap, with which policies, and which broker takes
//! which flows ([`Desired`]); the agent finds each pod's veth from its IP ([`crate::discover`]),
//! attaches, and reports what it tapped, what it could not and why, and its counters per
//! policy ([`Report`]).
//!
//! Copies always leave from user space here: each goes to the broker of its flow, once per
//! policy of its pod ([`crate::routes`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use podtap_abi::TapCounters;
use podtap_cluster::PodRef;
use podtap_tunnel::{Oversize, TunnelEndpoint};

use crate::agent::{AgentError, lock, missing_capabilities, missing_kernel_features, probe_kernel};
use crate::metrics::SharedStats;
use crate::output::{GsoMode, Output};
use crate::prefilter::Prefilter;
use crate::program::{AttachMode, LoadOptions, ProgramError, RuntimeConfig, TapProgram};
use crate::reader::RingReader;
use crate::routes::{Directions, Route, Routes};
use crate::stats::{PodStats, Stats, TapFailure};

/// Why a pod of the desired set is not tapped (the `reason` reported to the controller).
pub mod reason {
    /// The pod uses the node's network: it has no veth of its own.
    pub const HOST_NETWORK: &str = "HostNetwork";
    /// No veth was found for the pod's IP on this node.
    pub const VETH_NOT_FOUND: &str = "VethNotFound";
    /// The veth was found, attaching failed.
    pub const ATTACH_FAILED: &str = "AttachFailed";
}

/// Settings of a driven agent.
#[derive(Debug, Clone)]
pub struct DrivenConfig {
    /// The node it serves (labels its counters and interfaces).
    pub node: String,
    /// Bytes kept of each packet.
    pub snaplen: u32,
    /// Ring buffer bytes.
    pub ring_bytes: u32,
    /// GSO super-packets: segmented or kept.
    pub gso: GsoMode,
    /// How to attach.
    pub attach: AttachMode,
    /// Copies too large for the path MTU once encapsulated.
    pub oversize: Oversize,
}

/// One policy as the controller gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTap {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
    /// Which directions it copies.
    pub directions: Directions,
    /// Its prefilter (the agent's syntax; empty: every packet).
    pub prefilter: String,
}

/// One pod to tap.
#[derive(Debug, Clone, PartialEq)]
pub struct PodTap {
    /// The pod.
    pub pod: PodRef,
    /// Its IP (None: not assigned yet).
    pub ip: Option<IpAddr>,
    /// Its tap id.
    pub tap_id: u16,
    /// The VNIs of the policies that select it.
    pub vnis: Vec<u32>,
    /// It shares the node's network.
    pub host_network: bool,
}

/// The node's whole desired state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Increases with every change.
    pub generation: u64,
    /// The policies.
    pub policies: Vec<PolicyTap>,
    /// The pods.
    pub pods: Vec<PodTap>,
    /// The brokers, in table order.
    pub brokers: Vec<TunnelEndpoint>,
    /// Per flow slot, the index of its broker.
    pub slots: Vec<u32>,
}

/// What became of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The pod.
    pub pod: PodRef,
    /// Tapped now.
    pub tapped: bool,
    /// Why not (one of [`reason`]).
    pub reason: String,
    /// Details.
    pub message: String,
}

/// Copies of one policy on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyCounters {
    /// The policy's VNI.
    pub vni: u32,
    /// Copies sent to a broker.
    pub copied: u64,
    /// Copies lost: ring full, packet unreadable, send failed or no broker.
    pub dropped: u64,
}

/// What the agent reports to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The generation of the last applied desired state.
    pub applied_generation: u64,
    /// Every pod of it that some policy selects.
    pub pods: Vec<PodState>,
    /// Per policy.
    pub counters: Vec<PolicyCounters>,
}

/// Entries of the tap program's exclusion map (`TAP_EXCLUDE` in ebpf/tap.c).
const MAX_EXCLUSIONS: usize = 64;

struct Tapped {
    ifindex: u32,
    veth: String,
    tap_id: u16,
    vnis: Vec<u32>,
}

/// A running agent driven by the controller.
pub struct DrivenAgent {
    cfg: DrivenConfig,
    program: TapProgram,
    reader: RingReader,
    output: Arc<Mutex<Output>>,
    runtime: RuntimeConfig,
    kernel_prefilter: Prefilter,
    exclusions: Vec<(std::net::Ipv4Addr, u8, u16)>,
    tapped: BTreeMap<PodRef, Tapped>,
    states: Vec<PodState>,
    applied: u64,
    /// Ring drops of pods no longer tapped, per VNI.
    retired_drops: BTreeMap<u32, u64>,
    /// Final kernel counters of pods no longer tapped (for the summary).
    retired: BTreeMap<PodRef, (String, [TapCounters; 2])>,
    stats: SharedStats,
    started: Instant,
}

impl DrivenAgent {
    /// Loads the tap in this network namespace and starts reading; nothing is attached until
    /// the first [`DrivenAgent::apply`].
    pub fn start(cfg: DrivenConfig) -> Result<DrivenAgent, AgentError> {
        let problems = crate::agent::size_problems(cfg.snaplen, cfg.ring_bytes);
        if !problems.is_empty() {
            return Err(AgentError::Config { problems });
        }
        let missing = missing_capabilities(false);
        if !missing.is_empty() {
            return Err(AgentError::Unsupported { missing });
        }
        let missing = missing_kernel_features(&probe_kernel());
        if !missing.is_empty() {
            return Err(AgentError::Unsupported { missing });
        }
        let mut program = TapProgram::load(
            None,
            &LoadOptions {
                ring_bytes: cfg.ring_bytes,
                attach: cfg.attach,
            },
        )?;
        let runtime = RuntimeConfig {
            snaplen: cfg.snaplen,
            gso_whole: cfg.gso == GsoMode::Segment,
            wakeup_bytes: (cfg.ring_bytes / 8).min(1 << 20),
            tunnel_ifindex: 0,
            exclude: false,
        };
        program.set_prefilter(runtime, &Prefilter::default())?;
        let mut output = Output::new(None, cfg.gso, cfg.snaplen)
            .map_err(|source| AgentError::Output { source })?;
        output.set_routes(Routes::new(cfg.oversize));
        let output = Arc::new(Mutex::new(output));
        let ring = program.take_ring().ok_or(ProgramError::Missing {
            what: "map",
            name: podtap_abi::MAP_TAP_RING,
        })?;
        let reader = RingReader::spawn(0, ring, output.clone())
            .map_err(|source| AgentError::Output { source })?;
        Ok(DrivenAgent {
            cfg,
            program,
            reader,
            output,
            runtime,
            kernel_prefilter: Prefilter::default(),
            exclusions: Vec::new(),
            tapped: BTreeMap::new(),
            states: Vec::new(),
            applied: 0,
            retired_drops: BTreeMap::new(),
            retired: BTreeMap::new(),
            stats: SharedStats::default(),
            started: Instant::now(),
        })
    }

    /// Makes the node's taps what `desired` says. Pods that cannot be tapped are reported
    /// with a reason, never an error; calling again retries them (a pod's veth may appear
    /// after its IP is known). `Err` only when the tap program's maps fail.
    pub fn apply(&mut self, desired: &Desired) -> Result<(), AgentError> {
        let policies = self.policies(desired);
        self.set_kernel_side(desired)?;
        {
            let mut out = lock(&self.output);
            let routes = out.routes_mut().expect("driven output has routes");
            for (ep, why) in routes.set_brokers(&desired.brokers, &desired.slots) {
                tracing::warn!(broker = %ep, "cannot send to this broker: {why}; its flows' copies are counted lost");
            }
        }

        // What each wanted pod's veth is, or why it has none.
        let mut states = Vec::new();
        let mut want: BTreeMap<PodRef, (String, u32, &PodTap)> = BTreeMap::new();
        let mut seen: HashMap<u32, PodRef> = HashMap::new();
        for p in desired.pods.iter().filter(|p| !p.vnis.is_empty()) {
            let not_tapped = |reason: &str, message: String| PodState {
                pod: p.pod.clone(),
                tapped: false,
                reason: reason.to_string(),
                message,
            };
            if p.host_network {
                states.push(not_tapped(
                    reason::HOST_NETWORK,
                    "the pod uses the node's network: there is no veth of its own to tap".into(),
                ));
                continue;
            }
            match self.veth_of(p) {
                // Two pods on one veth (a deleted pod's IP reused before its object is
                // gone): the first keeps it, the other is refused.
                Ok((veth, ifindex)) => match seen.get(&ifindex) {
                    Some(other) => states.push(not_tapped(
                        reason::ATTACH_FAILED,
                        format!("{veth} is already the veth of {other} (same IP)"),
                    )),
                    None => {
                        seen.insert(ifindex, p.pod.clone());
                        want.insert(p.pod.clone(), (veth, ifindex, p));
                    }
                },
                Err(m) => states.push(not_tapped(reason::VETH_NOT_FOUND, m)),
            }
        }

        // Untap what is no longer wanted as it is.
        let gone: Vec<PodRef> = self
            .tapped
            .iter()
            .filter(|(pod, t)| {
                want.get(*pod).is_none_or(|(veth, ifindex, p)| {
                    *veth != t.veth || *ifindex != t.ifindex || p.tap_id != t.tap_id
                })
            })
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in gone {
            if let Some(t) = self.tapped.remove(&pod) {
                let last = self.program.detach(t.ifindex)?;
                tracing::info!(pod = %pod, veth = %t.veth, "untapped");
                self.retire(&pod, &t, last);
            }
        }

        for (pod, (veth, _, p)) in want {
            if let Some(t) = self.tapped.get_mut(&pod) {
                t.vnis = p.vnis.clone();
            } else {
                match self.program.attach(&veth, p.tap_id) {
                    Ok(ifindex) => {
                        let description = format!("node {} veth {veth}", self.cfg.node);
                        let registered = lock(&self.output).add_interface(
                            0,
                            ifindex,
                            &pod,
                            p.tap_id,
                            &description,
                        );
                        if let Err(source) = registered {
                            let _ = self.program.detach(ifindex);
                            return Err(AgentError::Output { source });
                        }
                        tracing::info!(pod = %pod, veth = %veth, mode = %self.program.mode(), "tapped");
                        self.tapped.insert(
                            pod.clone(),
                            Tapped {
                                ifindex,
                                veth,
                                tap_id: p.tap_id,
                                vnis: p.vnis.clone(),
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod, veth = %veth, "cannot tap: {e}");
                        states.push(PodState {
                            pod: pod.clone(),
                            tapped: false,
                            reason: reason::ATTACH_FAILED.into(),
                            message: format!("{veth}: {e}"),
                        });
                        continue;
                    }
                }
            }
            states.push(PodState {
                pod,
                tapped: true,
                reason: String::new(),
                message: String::new(),
            });
        }
        states.sort_by(|a, b| a.pod.cmp(&b.pod));

        let by_tap: Vec<(u16, Vec<Route>)> = self
            .tapped
            .values()
            .map(|t| {
                let routes = t
                    .vnis
                    .iter()
                    .filter_map(|v| policies.get(v).cloned())
                    .collect();
                (t.tap_id, routes)
            })
            .collect();
        lock(&self.output)
            .routes_mut()
            .expect("driven output has routes")
            .set_routes(by_tap);
        self.states = states;
        self.applied = desired.generation;
        self.refresh_stats();
        Ok(())
    }

    /// Each policy's route, by VNI. When the policies differ in prefilter, each route checks
    /// its own in user space (the kernel copies what any of them wants). The controller
    /// validates prefilters; should a bad one slip through, its policy copies nothing.
    fn policies(&self, desired: &Desired) -> HashMap<u32, Route> {
        let shared = shared_prefilter(&desired.policies).is_some();
        desired
            .policies
            .iter()
            .filter_map(|p| {
                let prefilter = match Prefilter::parse(&p.prefilter) {
                    Ok(f) if shared || f.is_empty() => None,
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(policy = %p.name, "{e}; copying nothing for it");
                        return None;
                    }
                };
                let route = Route {
                    vni: p.vni,
                    directions: p.directions,
                    prefilter,
                };
                Some((p.vni, route))
            })
            .collect()
    }

    /// The in-kernel prefilter (the one all policies share, else none) and the exclusion of
    /// the brokers' tunnel traffic.
    fn set_kernel_side(&mut self, desired: &Desired) -> Result<(), AgentError> {
        let kernel = shared_prefilter(&desired.policies).unwrap_or_default();
        let mut exclusions: Vec<_> = desired
            .brokers
            .iter()
            .filter_map(|ep| {
                let std::net::IpAddr::V4(ip) = ep.addr.ip() else {
                    tracing::warn!(broker = %ep, "IPv6 brokers cannot be excluded from the tap yet: a broker pod tapped on this node would get copies of copies");
                    return None;
                };
                Some(match ep.kind {
                    podtap_tunnel::TunnelKind::Vxlan => (ip, 17, ep.addr.port()),
                    podtap_tunnel::TunnelKind::L2gre => (ip, 47, 0),
                })
            })
            .collect();
        exclusions.sort_unstable();
        exclusions.dedup();
        if exclusions.len() > MAX_EXCLUSIONS {
            tracing::warn!(
                "{} broker endpoints, the tap excludes the first {MAX_EXCLUSIONS}",
                exclusions.len()
            );
            exclusions.truncate(MAX_EXCLUSIONS);
        }
        if exclusions != self.exclusions {
            self.program.set_exclusions(&exclusions)?;
            self.exclusions = exclusions;
        }
        let exclude = !self.exclusions.is_empty();
        if kernel != self.kernel_prefilter || exclude != self.runtime.exclude {
            self.runtime.exclude = exclude;
            self.program.set_prefilter(self.runtime, &kernel)?;
            self.kernel_prefilter = kernel;
        }
        Ok(())
    }

    /// The pod's veth and its ifindex: the tapped one while it still exists as it was, else
    /// found from the IP (a veth re-created under the same name has a new ifindex).
    fn veth_of(&self, p: &PodTap) -> Result<(String, u32), String> {
        if let Some(t) = self.tapped.get(&p.pod)
            && ifindex_of(&t.veth) == Some(t.ifindex)
        {
            return Ok((t.veth.clone(), t.ifindex));
        }
        let ip = p.ip.ok_or("the pod has no IP yet")?;
        let veth = crate::discover::find_veth(None, ip)?;
        let ifindex = ifindex_of(&veth).ok_or_else(|| format!("{veth} went away"))?;
        Ok((veth, ifindex))
    }

    /// Whether a tapped veth went away or was re-created (a sandbox restarted): the next
    /// apply must look again.
    pub fn has_stale_taps(&self) -> bool {
        self.tapped
            .values()
            .any(|t| ifindex_of(&t.veth) != Some(t.ifindex))
    }

    fn retire(&mut self, pod: &PodRef, t: &Tapped, last: [TapCounters; 2]) {
        let drops: u64 = last.iter().map(|c| c.ring_full + c.load_failed).sum();
        for v in &t.vnis {
            *self.retired_drops.entry(*v).or_default() += drops;
        }
        let e = self
            .retired
            .entry(pod.clone())
            .or_insert_with(|| (t.veth.clone(), Default::default()));
        e.1[0].add(&last[0]);
        e.1[1].add(&last[1]);
    }

    /// Whether some pod of the last desired state is not tapped for a reason that may pass
    /// (its veth not found yet, attaching failed).
    pub fn has_retries(&self) -> bool {
        self.states
            .iter()
            .any(|s| !s.tapped && s.reason != reason::HOST_NETWORK)
    }

    /// What to tell the controller now.
    pub fn report(&self) -> Report {
        let mut drops = self.retired_drops.clone();
        for t in self.tapped.values() {
            let mut d = 0;
            for dir in [podtap_abi::DIR_FROM_POD, podtap_abi::DIR_TO_POD] {
                if let Ok(c) = self.program.counters(t.ifindex, dir) {
                    d += c.ring_full + c.load_failed;
                }
            }
            for v in &t.vnis {
                *drops.entry(*v).or_default() += d;
            }
        }
        let routes = lock(&self.output)
            .routes()
            .map(|r| r.counters().clone())
            .unwrap_or_default();
        let vnis: BTreeSet<u32> = drops.keys().chain(routes.keys()).copied().collect();
        Report {
            applied_generation: self.applied,
            pods: self.states.clone(),
            counters: vnis
                .into_iter()
                .map(|vni| {
                    let r = routes.get(&vni).copied().unwrap_or_default();
                    PolicyCounters {
                        vni,
                        copied: r.sent,
                        dropped: r.lost + drops.get(&vni).copied().unwrap_or(0),
                    }
                })
                .collect(),
        }
    }

    /// The stats shared with the metrics endpoint.
    pub fn shared_stats(&self) -> SharedStats {
        self.stats.clone()
    }

    /// Recomputes the stats (the summary and `/metrics`).
    pub fn refresh_stats(&mut self) -> Stats {
        let (by_pod, output_errors, tunnel, brokers) = {
            let o = lock(&self.output);
            let r = o.routes();
            (
                o.counters_by_pod(),
                o.errors(),
                r.map(Routes::send_counters),
                r.map_or(0, |r| r.endpoints().len()),
            )
        };
        let mut pods: BTreeMap<PodRef, PodStats> = BTreeMap::new();
        for (pod, (veth, kernel)) in &self.retired {
            pods.insert(
                pod.clone(),
                PodStats {
                    pod: pod.clone(),
                    node: self.cfg.node.clone(),
                    veth: veth.clone(),
                    tapped: false,
                    kernel: *kernel,
                    output: Default::default(),
                },
            );
        }
        for (pod, t) in &self.tapped {
            let e = pods.entry(pod.clone()).or_insert_with(|| PodStats {
                pod: pod.clone(),
                ..Default::default()
            });
            e.node = self.cfg.node.clone();
            e.veth = t.veth.clone();
            e.tapped = true;
            for (d, dir) in [podtap_abi::DIR_FROM_POD, podtap_abi::DIR_TO_POD]
                .into_iter()
                .enumerate()
            {
                if let Ok(c) = self.program.counters(t.ifindex, dir) {
                    e.kernel[d].add(&c);
                }
            }
        }
        for (pod, s) in pods.iter_mut() {
            if let Some(o) = by_pod.get(pod) {
                s.output = *o;
            }
        }
        let stats = Stats {
            pods: pods.into_values().collect(),
            failures: self
                .states
                .iter()
                .filter(|s| !s.tapped)
                .map(|s| TapFailure {
                    pod: s.pod.clone(),
                    reason: format!("{}: {}", s.reason, s.message),
                })
                .collect(),
            output_errors,
            uptime: self.started.elapsed(),
            attach_mode: self.program.mode().to_string(),
            nodes: 1,
            sending: vec![format!(
                "{}: user space to {brokers} broker(s), by flow",
                self.cfg.node
            )],
            tunnel,
            decrypted: None,
        };
        if let Ok(mut s) = self.stats.lock() {
            *s = stats.clone();
        }
        stats
    }

    /// Detaches everything, drains the ring and returns the final stats.
    pub fn stop(mut self) -> Result<Stats, AgentError> {
        let finals = self.program.detach_all();
        if let Ok(finals) = &finals {
            for (ifindex, last) in finals {
                let Some(pod) = self
                    .tapped
                    .iter()
                    .find(|(_, t)| t.ifindex == *ifindex)
                    .map(|(p, _)| p.clone())
                else {
                    continue;
                };
                if let Some(t) = self.tapped.remove(&pod) {
                    self.retire(&pod, &t, *last);
                }
            }
        }
        self.reader.stop();
        let stats = self.refresh_stats();
        finals?;
        Ok(stats)
    }
}

fn ifindex_of(veth: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(veth).ok()
}

/// The prefilter every policy shares (None when they differ or one does not parse).
fn shared_prefilter(policies: &[PolicyTap]) -> Option<Prefilter> {
    let mut parsed = policies.iter().map(|p| Prefilter::parse(&p.prefilter).ok());
    let first = parsed.next()??;
    parsed.all(|p| p.as_ref() == Some(&first)).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(vni: u32, prefilter: &str) -> PolicyTap {
        PolicyTap {
            name: format!("p{vni}"),
            vni,
            directions: Directions::Both,
            prefilter: prefilter.into(),
        }
    }

    #[test]
    fn the_kernel_prefilter_is_the_one_all_policies_share() {
        let same = [policy(1, "proto tcp"), policy(2, "proto  tcp")];
        assert_eq!(
            shared_prefilter(&same),
            Some(Prefilter::parse("proto tcp").unwrap())
        );
        let differ = [policy(1, "proto tcp"), policy(2, "")];
        assert_eq!(shared_prefilter(&differ), None);
        assert_eq!(shared_prefilter(&[]), None);
    }
}
