//! Loading `ebpf/tls.c`, attaching its syscall tracepoints once, and its uprobes to one process
//! at a time (the processes of the selected pods, followed by [`super::processes`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::TracePointLinkId;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope};
use aya::programs::{TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use podtap_abi::tls as abi;

use super::placement;

static TLS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tls.o"));

/// The syscalls whose entry tells which socket an SSL call (or the thread) used.
const READ_SYSCALLS: [&str; 4] = [
    "sys_enter_read",
    "sys_enter_recvfrom",
    "sys_enter_recvmsg",
    "sys_enter_readv",
];
const WRITE_SYSCALLS: [&str; 4] = [
    "sys_enter_write",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
    "sys_enter_writev",
];

/// Probes on the exported functions, when the internal ones are not found ([`placement`]):
/// (program, name, required). The `_ex` variants arrived in OpenSSL 1.1.1; a library without
/// them is still probed through the plain calls. Names ending in " return" are return probes
/// on the function named before it.
const EXPORTED_PROBES: [(&str, &str, bool); 8] = [
    (abi::PROG_READ_ENTER, "SSL_read", true),
    (abi::PROG_WRITE_ENTER, "SSL_write", true),
    (abi::PROG_READ_EX_ENTER, "SSL_read_ex", false),
    (abi::PROG_WRITE_EX_ENTER, "SSL_write_ex", false),
    (abi::PROG_RET, "SSL_read return", true),
    (abi::PROG_RET, "SSL_write return", true),
    (abi::PROG_RET, "SSL_read_ex return", false),
    (abi::PROG_RET, "SSL_write_ex return", false),
];

/// Probes that follow an `SSL*`'s socket and end: (program, function), always on the exported
/// functions, optional.
const SSL_LIFETIME_PROBES: [(&str, &str); 2] = [
    (abi::PROG_SET_FD, "SSL_set_fd"),
    (abi::PROG_FREE, "SSL_free"),
];

/// Every uprobe program (loaded once).
const UPROBE_PROGRAMS: [&str; 7] = [
    abi::PROG_READ_ENTER,
    abi::PROG_WRITE_ENTER,
    abi::PROG_READ_EX_ENTER,
    abi::PROG_WRITE_EX_ENTER,
    abi::PROG_RET,
    abi::PROG_SET_FD,
    abi::PROG_FREE,
];

/// The function a probe name is on (`"SSL_read return"` → `"SSL_read"`).
fn symbol_of(name: &'static str) -> &'static str {
    name.strip_suffix(" return").unwrap_or(name)
}

/// Where one uprobe goes.
#[derive(Debug, Clone, Copy)]
enum Location {
    /// An exported function.
    Symbol(&'static str),
    /// A file offset (an internal function [`placement`] found).
    Offset(u64),
}

/// One uprobe to attach: the program, what it is on (for logs and errors), where.
#[derive(Debug, Clone, Copy)]
struct Site {
    program: &'static str,
    name: &'static str,
    location: Location,
    required: bool,
}

impl Site {
    fn at(program: &'static str, name: &'static str, offset: u64) -> Site {
        Site {
            program,
            name,
            location: Location::Offset(offset),
            required: true,
        }
    }
}

/// Errors of the TLS programs.
#[derive(Debug, thiserror::Error)]
pub enum TlsProgramError {
    /// The object did not load (the verifier log is in the source).
    #[error("loading the TLS programs: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    /// A program or map is missing from the object (a build problem).
    #[error("the TLS object has no {what} {name}")]
    Missing {
        /// "program" or "map".
        what: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// Loading or attaching a program failed.
    #[error("{program}: {source}")]
    Program {
        /// The program.
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// tracefs (needed to attach tracepoints) is missing and could not be mounted.
    #[error("{reason}")]
    Tracefs {
        /// Why, and what to do.
        reason: String,
    },
    /// The process has no OpenSSL to probe (no libssl mapped, no SSL symbols in the binary).
    #[error("process {pid}: {reason}")]
    NoOpenSsl {
        /// The process.
        pid: u32,
        /// Why.
        reason: String,
    },
}

/// The uprobes on one process.
struct Probed {
    /// `LIBRARY: FUNCTIONS`.
    what: String,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// The loaded TLS programs.
pub struct TlsProgram {
    ebpf: Ebpf,
    _tracepoints: Vec<(&'static str, TracePointLinkId)>,
    probed: HashMap<u32, Probed>,
    /// Where the probes go, per OpenSSL file (device, inode): decided once per file.
    placements: HashMap<(u64, u64), Result<placement::Internal, placement::NoInternal>>,
}

impl TlsProgram {
    /// Loads every program and attaches the syscall tracepoints (they do nothing for processes
    /// that are not probed).
    pub fn load(ring_bytes: u32) -> Result<Self, TlsProgramError> {
        ensure_tracefs()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(abi::MAP_RING, ring_bytes)
            .load(TLS_OBJECT)
            .map_err(|source| TlsProgramError::Load { source })?;
        for name in UPROBE_PROGRAMS {
            let prog: &mut UProbe = program(&mut ebpf, name)?;
            prog.load().map_err(|source| TlsProgramError::Program {
                program: name.into(),
                source,
            })?;
        }
        let mut tracepoints = Vec::new();
        for (name, syscalls) in [
            (abi::PROG_SYS_READ, READ_SYSCALLS),
            (abi::PROG_SYS_WRITE, WRITE_SYSCALLS),
        ] {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(|source| TlsProgramError::Program {
                program: name.into(),
                source,
            })?;
            for syscall in syscalls {
                let link = prog.attach("syscalls", syscall).map_err(|source| {
                    TlsProgramError::Program {
                        program: format!("{name} on syscalls:{syscall}"),
                        source,
                    }
                })?;
                tracepoints.push((name, link));
            }
        }
        Ok(TlsProgram {
            ebpf,
            _tracepoints: tracepoints,
            probed: HashMap::new(),
            placements: HashMap::new(),
        })
    }

    /// Takes the ring buffer out, for the reader thread. None the second time.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ebpf
            .take_map(abi::MAP_RING)
            .and_then(|m| RingBuf::try_from(m).ok())
    }

    /// Attaches the uprobes to process `pid`'s OpenSSL (its libssl, or its own binary when it
    /// links OpenSSL statically) and starts following its sockets. Returns what was probed:
    /// `LIBRARY: FUNCTIONS` (the internal read/write functions, or the exported ones).
    /// `check_exe`: also look for OpenSSL in the executable (reads the whole file: done once
    /// per process, while `/proc/PID/maps` is looked at again on every try, since a process may
    /// load libssl later, as Python does at `import ssl`).
    pub fn probe(
        &mut self,
        pid: u32,
        tap_id: u16,
        check_exe: bool,
    ) -> Result<String, TlsProgramError> {
        if let Some(p) = self.probed.get(&pid) {
            return Ok(p.what.clone());
        }
        let library = openssl_of(pid, check_exe)?;
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(TlsProgramError::NoOpenSsl {
                pid,
                reason: "pid 0".into(),
            })?);
        let sites = self.sites(&library);
        let on = if sites
            .iter()
            .any(|s| matches!(s.location, Location::Offset(_)))
        {
            "ssl_read_internal, ssl_write_internal"
        } else {
            "SSL_read, SSL_write (+_ex)"
        };
        let what = format!("{}: {on}", library.display());
        let mut links = Vec::new();
        let mut result = Ok(());
        for site in &sites {
            match attach(&mut self.ebpf, site, &library, scope) {
                Ok(link) => links.push((site.program, link)),
                Err(e) if site.required => {
                    result = Err(e);
                    break;
                }
                Err(e) => tracing::debug!(pid, "{} not probed: {e}", site.name),
            }
        }
        if let Err(e) = result {
            self.detach_links(links);
            return Err(e);
        }
        if let Err(e) = self.pids().and_then(|mut m| {
            m.insert(pid, tap_id, 0)
                .map_err(|source| TlsProgramError::Map {
                    map: abi::MAP_PIDS,
                    source,
                })
        }) {
            self.detach_links(links);
            return Err(e);
        }
        self.probed.insert(
            pid,
            Probed {
                what: what.clone(),
                links,
            },
        );
        Ok(what)
    }

    /// The probes for one OpenSSL build: on its internal read/write functions when
    /// [`placement`] finds them (decided once per file), else on the exported functions.
    fn sites(&mut self, library: &Path) -> Vec<Site> {
        let key = std::fs::metadata(library)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .ok();
        let internal = match key.and_then(|k| self.placements.get(&k)) {
            Some(known) => known.clone(),
            None => {
                let found = placement::internal_functions(library);
                match &found {
                    Ok(i) => tracing::info!(
                        library = %library.display(),
                        read = format_args!("{:#x}", i.read),
                        write = format_args!("{:#x}", i.write),
                        emulated = i.emulated,
                        "TLS probes go on OpenSSL's internal read/write functions"
                    ),
                    Err(why) => tracing::info!(
                        library = %library.display(),
                        "TLS probes go on SSL_read/SSL_write and their _ex variants: {why}"
                    ),
                }
                if let Some(k) = key {
                    self.placements.insert(k, found.clone());
                }
                found
            }
        };
        let mut sites = match internal {
            Ok(i) => vec![
                Site::at(abi::PROG_READ_EX_ENTER, "ssl_read_internal", i.read),
                Site::at(abi::PROG_WRITE_EX_ENTER, "ssl_write_internal", i.write),
                Site::at(abi::PROG_RET, "ssl_read_internal return", i.read),
                Site::at(abi::PROG_RET, "ssl_write_internal return", i.write),
            ],
            Err(_) => EXPORTED_PROBES
                .iter()
                .map(|(program, name, required)| Site {
                    program,
                    name,
                    location: Location::Symbol(symbol_of(name)),
                    required: *required,
                })
                .collect(),
        };
        sites.extend(SSL_LIFETIME_PROBES.iter().map(|(program, name)| Site {
            program,
            name,
            location: Location::Symbol(name),
            required: false,
        }));
        sites
    }

    /// Removes the uprobes of `pid` (gone, or its pod no longer selected).
    pub fn unprobe(&mut self, pid: u32) {
        if let Some(p) = self.probed.remove(&pid) {
            self.detach_links(p.links);
        }
        if let Ok(mut m) = self.pids() {
            let _ = m.remove(&pid);
        }
    }

    /// The processes probed now.
    pub fn probed(&self) -> impl Iterator<Item = u32> + '_ {
        self.probed.keys().copied()
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> abi::TlsCounters {
        let mut sum = abi::TlsCounters::default();
        if let Some(map) = self.ebpf.map(abi::MAP_COUNTERS)
            && let Ok(arr) = PerCpuArray::<_, abi::TlsCounters>::try_from(map)
            && let Ok(values) = arr.get(&0, 0)
        {
            for v in values.iter() {
                sum += *v;
            }
        }
        sum
    }

    fn pids(&mut self) -> Result<BpfHashMap<&mut MapData, u32, u16>, TlsProgramError> {
        let map = self
            .ebpf
            .map_mut(abi::MAP_PIDS)
            .ok_or(TlsProgramError::Missing {
                what: "map",
                name: abi::MAP_PIDS,
            })?;
        BpfHashMap::try_from(map).map_err(|source| TlsProgramError::Map {
            map: abi::MAP_PIDS,
            source,
        })
    }

    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (name, link) in links {
            if let Ok(prog) = program::<UProbe>(&mut self.ebpf, name) {
                // A process that exited took its probes with it: detaching may fail, harmlessly.
                let _ = prog.detach(link);
            }
        }
    }
}

impl Drop for TlsProgram {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.probed.keys().copied().collect();
        for pid in pids {
            self.unprobe(pid);
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, TlsProgramError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(TlsProgramError::Missing {
            what: "program",
            name,
        })
}

fn attach(
    ebpf: &mut Ebpf,
    site: &Site,
    library: &Path,
    scope: UProbeScope,
) -> Result<UProbeLinkId, TlsProgramError> {
    let prog: &mut UProbe = program(ebpf, site.program)?;
    let location = match site.location {
        Location::Symbol(symbol) => UProbeAttachLocation::Symbol(symbol),
        Location::Offset(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
    };
    prog.attach(location, library, scope)
        .map_err(|source| TlsProgramError::Program {
            program: format!("{} on {} in {}", site.program, site.name, library.display()),
            source,
        })
}

/// Tracepoints are attached through tracefs: mount it at `/sys/kernel/tracing` when the host
/// has not (minimal hosts and some container runtimes leave it out).
fn ensure_tracefs() -> Result<(), TlsProgramError> {
    let dir = Path::new("/sys/kernel/tracing");
    if dir.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| TlsProgramError::Tracefs {
        reason: format!(
            "tracefs is not mounted and mounting it at {} failed ({e}); mount it \
             (`mount -t tracefs nodev /sys/kernel/tracing`) or give the agent CAP_SYS_ADMIN",
            dir.display()
        ),
    })
}

/// The file holding process `pid`'s OpenSSL: the `libssl.so*` it has mapped (seen through
/// `/proc/PID/root`, so a container's own library is probed, not the host's), else its own
/// executable when that carries `SSL_read` (static linking; checked when attaching; only
/// looked for with `check_exe`).
pub fn openssl_of(pid: u32, check_exe: bool) -> Result<PathBuf, TlsProgramError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| {
        TlsProgramError::NoOpenSsl {
            pid,
            reason: format!("reading /proc/{pid}/maps: {e}"),
        }
    })?;
    if let Some(lib) = maps.lines().find_map(|l| {
        let path = l.split_whitespace().nth(5)?;
        let file = path.rsplit('/').next()?;
        file.starts_with("libssl.so").then(|| path.to_string())
    }) {
        return Ok(PathBuf::from(format!("/proc/{pid}/root{lib}")));
    }
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if check_exe && binary_has_symbol(&exe, b"SSL_read") {
        return Ok(exe);
    }
    Err(TlsProgramError::NoOpenSsl {
        pid,
        reason: "no libssl mapped and no OpenSSL symbols in the executable".into(),
    })
}

/// Whether the ELF file names `symbol` in a symbol table (a cheap byte search for the name
/// followed by a NUL; attaching resolves it properly).
fn binary_has_symbol(path: &Path, symbol: &[u8]) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let mut needle = symbol.to_vec();
    needle.push(0);
    bytes.windows(needle.len()).any(|w| w == needle.as_slice())
}
