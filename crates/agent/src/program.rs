//! The loaded tap for one node: the eBPF object from `ebpf/tap.c`, its maps, and its links to
//! the node's pod veths. Attaching and detaching happen inside the node's network namespace.

use std::collections::BTreeMap;
use std::io;

use aya::maps::{Array, LpmTrie, MapData, PerCpuHashMap, RingBuf, lpm_trie::Key};
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use podtap_abi as abi;
use podtap_cluster::netns;

use crate::prefilter::Prefilter;

/// The compiled tap programs (built by build.rs from `ebpf/tap.c`).
static TAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tap.o"));

/// TC priority of podtap's filters in netlink mode; also how a sweep finds stale ones.
const NETLINK_PRIORITY: u16 = 0x7a70;

/// Errors of the loaded tap.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The veth is tapped already (a second attachment would copy every packet twice).
    #[error("{veth} (ifindex {ifindex}) is tapped already")]
    AlreadyAttached { veth: String, ifindex: u32 },
    /// The object could not be loaded (the verifier log is inside).
    #[error("loading the tap programs: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    /// A program could not be loaded into the kernel.
    #[error("loading program {program}: {source}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map or program the object must have is missing or of the wrong type.
    #[error("the tap object has no usable {what} {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    /// A map operation failed.
    #[error("{map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Attaching to a veth failed.
    #[error("attaching {program} to {veth} ({mode}): {source}")]
    Attach {
        program: &'static str,
        veth: String,
        mode: AttachMode,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The veth does not exist in the node's network namespace.
    #[error("interface {veth} not found in {netns}: {source}")]
    NoSuchVeth {
        veth: String,
        netns: String,
        #[source]
        source: io::Error,
    },
    /// Entering the node's network namespace failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

/// How programs are attached to veths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), netlink clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links only: detached by the kernel when the agent's process ends, however it ends.
    Tcx,
    /// Netlink `clsact` filters (older kernels). A crashed agent's filters are swept at start.
    Netlink,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        })
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "tcx" => Ok(AttachMode::Tcx),
            "netlink" => Ok(AttachMode::Netlink),
            _ => Err(format!("unknown attach mode {s:?} (auto, tcx or netlink)")),
        }
    }
}

/// Settings fixed when the programs are loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Attach mode.
    pub attach: AttachMode,
}

/// Settings the programs read from `TAP_CONFIG` on every packet; changeable while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Bytes copied of each packet.
    pub snaplen: u32,
    /// Copy GSO super-packets whole (so user space can segment them).
    pub gso_whole: bool,
    /// Pending ring bytes that wake the reader.
    pub wakeup_bytes: u32,
    /// In-kernel sending: the node's VXLAN device to clone non-GSO packets to (0: off).
    pub tunnel_ifindex: u32,
    /// Skip packets listed by [`TapProgram::set_exclusions`] (podtap's own tunnel traffic).
    pub exclude: bool,
}

/// One attached veth.
struct Attachment {
    from_pod: SchedClassifierLinkId,
    to_pod: SchedClassifierLinkId,
    mode: AttachMode,
    /// Whether we added the clsact qdisc (netlink mode), so we remove it again.
    created_qdisc: bool,
}

/// The tap programs loaded for one node.
pub struct TapProgram {
    ebpf: Ebpf,
    netns: Option<String>,
    mode: AttachMode,
    attached: BTreeMap<u32, (String, Attachment)>,
    /// The prefilter now in the maps (to clear exactly its entries on change).
    prefilter: Prefilter,
}

impl TapProgram {
    /// Loads the tap programs for the node whose host network is `netns` (None: this one).
    pub fn load(netns: Option<&str>, opts: &LoadOptions) -> Result<Self, ProgramError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(abi::MAP_TAP_RING, opts.ring_bytes)
            .load(TAP_OBJECT)
            .map_err(|source| ProgramError::Load { source })?;
        for name in [abi::PROG_TAP_FROM_POD, abi::PROG_TAP_TO_POD] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(ProgramError::Missing {
                    what: "program",
                    name,
                })?;
            prog.load().map_err(|source| ProgramError::LoadProgram {
                program: name,
                source,
            })?;
        }
        let mode = match opts.attach {
            AttachMode::Auto if kernel_has_tcx() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Netlink,
            m => m,
        };
        let mut tap = TapProgram {
            ebpf,
            netns: netns.map(str::to_string),
            mode,
            attached: BTreeMap::new(),
            prefilter: Prefilter::default(),
        };
        if mode == AttachMode::Netlink {
            tap.sweep_stale_netlink_filters()?;
        }
        Ok(tap)
    }

    /// The attach mode in use.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Takes the ring buffer out, for the reader thread. Returns None the second time.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ebpf
            .take_map(abi::MAP_TAP_RING)
            .and_then(|m| RingBuf::try_from(m).ok())
    }

    /// Writes the per-packet settings.
    pub fn set_config(
        &mut self,
        cfg: RuntimeConfig,
        filter_flags: u32,
    ) -> Result<(), ProgramError> {
        let mut map: Array<_, abi::TapConfig> = self.map_mut(abi::MAP_TAP_CONFIG)?;
        let value = abi::TapConfig {
            snaplen: cfg.snaplen.clamp(1, abi::MAX_COPY),
            flags: if cfg.gso_whole { abi::F_GSO_WHOLE } else { 0 }
                | if cfg.exclude { abi::F_EXCLUDE } else { 0 },
            filter_flags,
            wakeup_bytes: cfg.wakeup_bytes,
            tunnel_ifindex: cfg.tunnel_ifindex,
            _pad: 0,
        };
        map.set(0, value, 0).map_err(|source| ProgramError::Map {
            map: abi::MAP_TAP_CONFIG,
            source,
        })
    }

    /// Replaces the prefilter: fills the maps, then switches the active conditions. The
    /// programs stay loaded and attached.
    pub fn set_prefilter(
        &mut self,
        cfg: RuntimeConfig,
        filter: &Prefilter,
    ) -> Result<(), ProgramError> {
        // Turn conditions off first so that no packet is judged by half-written maps.
        self.set_config(cfg, 0)?;
        let map_err = |map| move |source| ProgramError::Map { map, source };

        let mut cidrs: LpmTrie<_, [u8; 16], u8> = self.map_mut(abi::MAP_TAP_FILTER_CIDRS)?;
        let old: Vec<Key<[u8; 16]>> = cidrs.keys().filter_map(Result::ok).collect();
        for k in old {
            cidrs
                .remove(&k)
                .map_err(map_err(abi::MAP_TAP_FILTER_CIDRS))?;
        }
        for net in &filter.networks {
            let (addr, len) = net.mapped();
            cidrs
                .insert(&Key::new(len, addr), 1, 0)
                .map_err(map_err(abi::MAP_TAP_FILTER_CIDRS))?;
        }

        let previous = std::mem::take(&mut self.prefilter);
        let mut protos: Array<_, u8> = self.map_mut(abi::MAP_TAP_FILTER_PROTOS)?;
        for &p in &previous.protocols {
            protos
                .set(u32::from(p), 0, 0)
                .map_err(map_err(abi::MAP_TAP_FILTER_PROTOS))?;
        }
        for &p in &filter.protocols {
            protos
                .set(u32::from(p), 1, 0)
                .map_err(map_err(abi::MAP_TAP_FILTER_PROTOS))?;
        }

        let mut ports: Array<_, u8> = self.map_mut(abi::MAP_TAP_FILTER_PORTS)?;
        for &p in &previous.ports {
            ports
                .set(u32::from(p), 0, 0)
                .map_err(map_err(abi::MAP_TAP_FILTER_PORTS))?;
        }
        for &p in &filter.ports {
            ports
                .set(u32::from(p), 1, 0)
                .map_err(map_err(abi::MAP_TAP_FILTER_PORTS))?;
        }

        self.prefilter = filter.clone();
        self.set_config(cfg, filter.flags())
    }

    /// Lists the tunnel endpoints whose traffic is never copied: `(address, protocol, UDP
    /// destination port or 0)`. Takes effect with [`RuntimeConfig::exclude`].
    pub fn set_exclusions(
        &mut self,
        endpoints: &[(std::net::Ipv4Addr, u8, u16)],
    ) -> Result<(), ProgramError> {
        let mut map: aya::maps::HashMap<_, abi::TapExcludeKey, u8> =
            self.map_mut(abi::MAP_TAP_EXCLUDE)?;
        let old: Vec<abi::TapExcludeKey> = map.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = map.remove(&k);
        }
        for &(addr, proto, port) in endpoints {
            let key = abi::TapExcludeKey {
                addr: u32::from_ne_bytes(addr.octets()),
                port,
                proto,
                _pad: 0,
            };
            map.insert(key, 1, 0).map_err(|source| ProgramError::Map {
                map: abi::MAP_TAP_EXCLUDE,
                source,
            })?;
        }
        Ok(())
    }

    /// Attaches both programs to `veth`, registers its counters and its tap id (0: unknown).
    /// Returns its ifindex.
    pub fn attach(&mut self, veth: &str, tap_id: u16) -> Result<u32, ProgramError> {
        if let Some((ifindex, _)) = self.attached.iter().find(|(_, (name, _))| name == veth) {
            return Err(ProgramError::AlreadyAttached {
                veth: veth.to_string(),
                ifindex: *ifindex,
            });
        }
        let netns_name = self.netns.clone();
        let mode = self.mode;
        let ebpf = &mut self.ebpf;
        let (ifindex, attachment) = netns::run_in(netns_name.as_deref(), || {
            let ifindex =
                nix::net::if_::if_nametoindex(veth).map_err(|e| ProgramError::NoSuchVeth {
                    veth: veth.to_string(),
                    netns: netns_name
                        .clone()
                        .unwrap_or_else(|| "this namespace".into()),
                    source: io::Error::from(e),
                })?;
            let created_qdisc = if mode == AttachMode::Netlink {
                add_clsact(veth)
            } else {
                false
            };
            let from_pod = attach_one(
                ebpf,
                abi::PROG_TAP_FROM_POD,
                veth,
                TcAttachType::Ingress,
                mode,
            )?;
            let to_pod =
                match attach_one(ebpf, abi::PROG_TAP_TO_POD, veth, TcAttachType::Egress, mode) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = detach_one(ebpf, abi::PROG_TAP_FROM_POD, from_pod);
                        return Err(e);
                    }
                };
            Ok::<_, ProgramError>((
                ifindex,
                Attachment {
                    from_pod,
                    to_pod,
                    mode,
                    created_qdisc,
                },
            ))
        })??;

        let mut counters: PerCpuHashMap<_, abi::TapKey, abi::TapCounters> =
            self.map_mut(abi::MAP_TAP_COUNTERS)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| ProgramError::Map {
            map: abi::MAP_TAP_COUNTERS,
            source: aya::maps::MapError::IoError(e),
        })?;
        for direction in [abi::DIR_FROM_POD, abi::DIR_TO_POD] {
            let key = abi::TapKey {
                ifindex,
                direction: u32::from(direction),
            };
            let zeros = aya::maps::PerCpuValues::try_from(vec![abi::TapCounters::default(); cpus])
                .map_err(|source| ProgramError::Map {
                    map: abi::MAP_TAP_COUNTERS,
                    source: aya::maps::MapError::IoError(source),
                })?;
            counters
                .insert(key, zeros, 0)
                .map_err(|source| ProgramError::Map {
                    map: abi::MAP_TAP_COUNTERS,
                    source,
                })?;
        }
        let mut ids: aya::maps::HashMap<_, u32, u16> = self.map_mut(abi::MAP_TAP_IDS)?;
        ids.insert(ifindex, tap_id, 0)
            .map_err(|source| ProgramError::Map {
                map: abi::MAP_TAP_IDS,
                source,
            })?;
        self.attached
            .insert(ifindex, (veth.to_string(), attachment));
        Ok(ifindex)
    }

    /// Detaches from the veth with this ifindex, then returns its final counters (from pod,
    /// to pod) and forgets them. A veth that disappeared (pod deleted) took its links with it;
    /// that is not an error.
    pub fn detach(&mut self, ifindex: u32) -> Result<[abi::TapCounters; 2], ProgramError> {
        let Some((veth, att)) = self.attached.remove(&ifindex) else {
            return Ok(Default::default());
        };
        let ebpf = &mut self.ebpf;
        netns::run_in(self.netns.as_deref(), || {
            let _ = detach_one(ebpf, abi::PROG_TAP_FROM_POD, att.from_pod);
            let _ = detach_one(ebpf, abi::PROG_TAP_TO_POD, att.to_pod);
            if att.mode == AttachMode::Netlink && att.created_qdisc {
                del_clsact(&veth);
            }
        })?;
        let last = [
            self.counters(ifindex, abi::DIR_FROM_POD)
                .unwrap_or_default(),
            self.counters(ifindex, abi::DIR_TO_POD).unwrap_or_default(),
        ];
        let mut counters: PerCpuHashMap<_, abi::TapKey, abi::TapCounters> =
            self.map_mut(abi::MAP_TAP_COUNTERS)?;
        for direction in [abi::DIR_FROM_POD, abi::DIR_TO_POD] {
            let _ = counters.remove(&abi::TapKey {
                ifindex,
                direction: u32::from(direction),
            });
        }
        let mut ids: aya::maps::HashMap<_, u32, u16> = self.map_mut(abi::MAP_TAP_IDS)?;
        let _ = ids.remove(&ifindex);
        Ok(last)
    }

    /// Detaches from every veth; returns each one's final counters.
    pub fn detach_all(&mut self) -> Result<Vec<(u32, [abi::TapCounters; 2])>, ProgramError> {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        let mut out = Vec::new();
        let mut first_err = None;
        for ifindex in all {
            match self.detach(ifindex) {
                Ok(c) => out.push((ifindex, c)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(out), Err)
    }

    /// The veths currently attached: ifindex → name.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.attached.iter().map(|(i, (n, _))| (*i, n.as_str()))
    }

    /// Current counters of one veth and direction, summed over CPUs.
    pub fn counters(&self, ifindex: u32, direction: u8) -> Result<abi::TapCounters, ProgramError> {
        let map: PerCpuHashMap<_, abi::TapKey, abi::TapCounters> =
            self.map_ref(abi::MAP_TAP_COUNTERS)?;
        let key = abi::TapKey {
            ifindex,
            direction: u32::from(direction),
        };
        let values = map.get(&key, 0).map_err(|source| ProgramError::Map {
            map: abi::MAP_TAP_COUNTERS,
            source,
        })?;
        let mut sum = abi::TapCounters::default();
        for v in values.iter() {
            sum.add(v);
        }
        Ok(sum)
    }

    /// Kernel ids of the loaded programs (they stay the same while the tap runs).
    pub fn program_ids(&self) -> Vec<u32> {
        [abi::PROG_TAP_FROM_POD, abi::PROG_TAP_TO_POD]
            .iter()
            .filter_map(|n| self.ebpf.program(n))
            .filter_map(|p| p.info().ok())
            .map(|i| i.id())
            .collect()
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, ProgramError>
    where
        T: TryFrom<&'a mut aya::maps::Map>,
    {
        self.ebpf
            .map_mut(name)
            .and_then(|m| T::try_from(m).ok())
            .ok_or(ProgramError::Missing { what: "map", name })
    }

    fn map_ref<'a, T>(&'a self, name: &'static str) -> Result<T, ProgramError>
    where
        T: TryFrom<&'a aya::maps::Map>,
    {
        self.ebpf
            .map(name)
            .and_then(|m| T::try_from(m).ok())
            .ok_or(ProgramError::Missing { what: "map", name })
    }

    /// Removes netlink filters a previous, crashed agent left on this node's interfaces.
    fn sweep_stale_netlink_filters(&mut self) -> Result<(), ProgramError> {
        netns::run_in(self.netns.as_deref(), || {
            let Ok(ifaces) = nix::net::if_::if_nameindex() else {
                return;
            };
            for iface in ifaces.iter() {
                let name = iface.name().to_string_lossy().into_owned();
                for (attach, prog) in [
                    (TcAttachType::Ingress, abi::PROG_TAP_FROM_POD),
                    (TcAttachType::Egress, abi::PROG_TAP_TO_POD),
                ] {
                    if aya::programs::tc::qdisc_detach_program(&name, attach, prog).is_ok() {
                        tracing::warn!(iface = %name, program = prog, "removed a stale podtap filter");
                    }
                }
            }
        })?;
        Ok(())
    }
}

impl Drop for TapProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!("detaching the tap: {e}");
        }
    }
}

/// TCX links came with Linux 6.6.
fn kernel_has_tcx() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    veth: &str,
    attach_type: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLinkId, ProgramError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProgramError::Missing {
            what: "program",
            name,
        })?;
    let options = match mode {
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions {
            priority: NETLINK_PRIORITY,
            handle: TcHandle::AUTO_ASSIGN,
            classid: None,
        }),
        _ => TcAttachOptions::TcxOrder(LinkOrder::default()),
    };
    prog.attach_with_options(veth, attach_type, options)
        .map_err(|source| ProgramError::Attach {
            program: name,
            veth: veth.to_string(),
            mode,
            source,
        })
}

fn detach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    id: SchedClassifierLinkId,
) -> Result<(), ProgramError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProgramError::Missing {
            what: "program",
            name,
        })?;
    prog.detach(id).map_err(|source| ProgramError::Attach {
        program: name,
        veth: String::new(),
        mode: AttachMode::Auto,
        source,
    })
}

/// Adds the clsact qdisc for netlink mode; true when we created it.
fn add_clsact(veth: &str) -> bool {
    aya::programs::tc::qdisc_add_clsact(veth).is_ok()
}

/// Removes the clsact qdisc we added (in the current thread's namespace).
fn del_clsact(veth: &str) {
    let status = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", veth, "clsact"])
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::debug!(veth, "clsact qdisc already gone");
    }
}

/// Names of the BPF programs hooked on `veth` (TCX links and netlink `tc` filters, both
/// directions), as the kernel reports them. For checks that nothing of podtap stays attached.
pub fn hooks_on(netns_name: Option<&str>, veth: &str) -> Result<Vec<String>, ProgramError> {
    netns::run_in(netns_name, || {
        let mut names = Vec::new();
        for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(veth, attach) {
                names.extend(
                    progs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_string()),
                );
            }
            let dir = if attach == TcAttachType::Ingress {
                "ingress"
            } else {
                "egress"
            };
            let out = std::process::Command::new("tc")
                .args(["-j", "filter", "show", "dev", veth, dir])
                .output();
            if let Ok(out) = out
                && let Ok(serde_json::Value::Array(filters)) = serde_json::from_slice(&out.stdout)
            {
                for f in filters {
                    if let Some(name) = f.pointer("/options/bpf_name").and_then(|v| v.as_str()) {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names
    })
    .map_err(ProgramError::from)
}
