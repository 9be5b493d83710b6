//! The `pcap` output: a policy's packets as pcapng files in a directory, rotated by size and
//! time, with a retention limit.
//!
//! ```yaml
//! outputs:
//!   - type: pcap
//!     directory: /var/lib/podtap/shop   # created if missing
//!     prefix: shop                      # default: the policy name
//!     rotate_bytes: 100000000           # close a file once it reaches 100 MB
//!     rotate_seconds: 300               # ... or once it is 5 minutes old
//!     keep_files: 48                    # delete this output's oldest files beyond 48
//!     snaplen: 262144                   # cut packets to this length (recorded in the file)
//! ```
//!
//! Files are named `{prefix}-{YYYYmmddTHHMMSS}-{seq:06}.pcapng`: the UTC time of the file's
//! first packet and a sequence number that keeps counting across restarts (it continues from
//! the highest one found in the directory). A file is written as `{name}.pcapng.part` and
//! renamed to `{name}.pcapng` only once it is complete, flushed and synced, so anything that
//! picks up `*.pcapng` never reads half a file. A `.part` left behind by a crash or a failed
//! write is never deleted or reused. Files are opened on the first packet, so an idle policy
//! writes nothing.
//!
//! Each file has one interface per tap point, added on the tap's first packet in that file and
//! named after the pod (`namespace/pod`), or `tap-{id}` when the pod is not known, or `unknown`
//! for tap 0; its description is `tap {id}`. Packets carry their direction in `epb_flags`
//! (from the pod = outbound, to the pod = inbound) and their wire length as the original
//! length.
//!
//! Retention (`keep_files`) only ever deletes complete files whose names match this output's
//! prefix and pattern exactly; give outputs that share a directory different prefixes.
//!
//! Counters: `packets`, `bytes` (as captured), `errors["write"]` (packets lost to a failed
//! write), `extra["files_written"]` and `extra["files_deleted"]`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use podtap_wire::pcapng::{self, InterfaceDescription, PcapngWriter};
use serde::{Deserialize, Serialize};

use crate::output::{Labelled, OutputCounters};
use crate::packet::Direction;

/// Bytes buffered in memory before a write to the file.
const BUFFER_BYTES: usize = 256 * 1024;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;
/// File name suffix of a complete file.
const SUFFIX: &str = ".pcapng";
/// Appended to the name of a file still being written.
const PART_SUFFIX: &str = ".part";
/// Characters of the UTC timestamp in a file name (`YYYYmmddTHHMMSS`).
const TIMESTAMP_LEN: usize = 15;
/// Minimum digits of the sequence number in a file name.
const SEQ_DIGITS: usize = 6;
/// Longest prefix accepted.
const MAX_PREFIX_LEN: usize = 100;

/// Configuration of a `pcap` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcapConfig {
    /// Directory the files are written to; created (with its parents) if missing.
    pub directory: PathBuf,
    /// Start of every file name (default: the policy name); 1-100 characters of `A-Z`, `a-z`,
    /// `0-9`, `.`, `_` and `-`, not starting with `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Close the current file and start a new one once it holds this many bytes (optional;
    /// a file ends up at most one packet larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<u64>,
    /// Close the current file and start a new one once its first packet is this many seconds
    /// old (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_seconds: Option<u64>,
    /// Keep at most this many complete files of this output, deleting the oldest (optional:
    /// keep all). Other files in the directory are never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_files: Option<usize>,
    /// Cut packets longer than this many bytes; recorded as the snap length of every
    /// interface in the files (optional: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
}

impl PcapConfig {
    /// Every problem with these settings, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.directory.as_os_str().is_empty() {
            problems.push("directory: must not be empty".to_string());
        }
        if let Some(prefix) = &self.prefix
            && !prefix_is_valid(prefix)
        {
            problems.push(format!(
                "prefix {prefix:?}: must be 1-{MAX_PREFIX_LEN} characters of A-Z, a-z, 0-9, \
                 '.', '_' and '-', not starting with '.'"
            ));
        }
        if self.rotate_bytes == Some(0) {
            problems.push("rotate_bytes: must be at least 1 (leave it out for no limit)".into());
        }
        if self.rotate_seconds == Some(0) {
            problems.push("rotate_seconds: must be at least 1 (leave it out for no limit)".into());
        }
        if self.keep_files == Some(0) {
            problems.push("keep_files: must be at least 1 (leave it out to keep all)".into());
        }
        if self.snaplen == Some(0) {
            problems.push("snaplen: must be at least 1 (leave it out for no limit)".into());
        }
        problems
    }
}

fn prefix_is_valid(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && !prefix.starts_with('.')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Errors of the `pcap` output.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The configuration has problems (see [`PcapConfig::problems`]).
    #[error("pcap output: invalid configuration: {}", problems.join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The output directory could not be created.
    #[error("pcap output: cannot create directory {path}: {source}")]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The output directory could not be listed (to find earlier files).
    #[error("pcap output: cannot list directory {path}: {source}")]
    ListDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A new file could not be created or started.
    #[error("pcap output: cannot create {path}: {source}")]
    Create {
        /// The `.part` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing to the current file failed; the file was abandoned (left as `.part`) and the
    /// next packet starts a new one.
    #[error("pcap output: cannot write {path}: {source}")]
    Write {
        /// The `.part` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Flushing, syncing or renaming a finished file failed; it stays a `.part`.
    #[error("pcap output: cannot close {path}: {source}")]
    Close {
        /// The `.part` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An old file could not be deleted for retention.
    #[error("pcap output: cannot delete {path}: {source}")]
    Delete {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Counts the bytes that pass through to `W`.
#[derive(Debug)]
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The file being written.
#[derive(Debug)]
struct OpenFile {
    writer: PcapngWriter<Counted<BufWriter<File>>>,
    /// Where it is written (`.part`).
    part: PathBuf,
    /// Where it goes once complete.
    done: PathBuf,
    /// Timestamp of its first packet, Unix nanoseconds.
    opened_ns: u64,
}

/// Writes one policy's packets to rotating pcapng files; see the [module](self) documentation.
#[derive(Debug)]
pub struct PcapOutput {
    directory: PathBuf,
    prefix: String,
    user_application: String,
    rotate_bytes: Option<u64>,
    rotate_ns: Option<u64>,
    keep_files: Option<usize>,
    snaplen: u32,
    file: Option<OpenFile>,
    /// Interface id in the current file of each tap id seen in it.
    interfaces: HashMap<u16, u32>,
    /// Reused to build interface names.
    name: String,
    /// This output's complete files, oldest first.
    complete: VecDeque<PathBuf>,
    next_seq: u64,
    packets: u64,
    bytes: u64,
    write_errors: u64,
    files_written: u64,
    files_deleted: u64,
}

impl PcapOutput {
    /// Checks `cfg`, creates the directory if missing and finds this output's earlier files
    /// there (for retention and to continue their sequence numbers). `policy` is the default
    /// prefix. No file is created until the first packet.
    pub fn new(cfg: &PcapConfig, policy: &str) -> Result<Self, PcapError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(PcapError::Invalid { problems });
        }
        let prefix = cfg.prefix.clone().unwrap_or_else(|| policy.to_string());
        if !prefix_is_valid(&prefix) {
            return Err(PcapError::Invalid {
                problems: vec![format!(
                    "prefix: the policy name {policy:?} cannot be used as a file name prefix; \
                     set prefix"
                )],
            });
        }
        std::fs::create_dir_all(&cfg.directory).map_err(|source| PcapError::CreateDirectory {
            path: cfg.directory.clone(),
            source,
        })?;
        let (complete, next_seq) = earlier_files(&cfg.directory, &prefix)?;
        Ok(PcapOutput {
            directory: cfg.directory.clone(),
            user_application: format!("podtap broker, policy {policy}"),
            prefix,
            rotate_bytes: cfg.rotate_bytes,
            rotate_ns: cfg.rotate_seconds.map(|s| s.saturating_mul(1_000_000_000)),
            keep_files: cfg.keep_files,
            snaplen: cfg.snaplen.unwrap_or(0),
            file: None,
            interfaces: HashMap::new(),
            name: String::new(),
            complete,
            next_seq,
            packets: 0,
            bytes: 0,
            write_errors: 0,
            files_written: 0,
            files_deleted: 0,
        })
    }

    /// Writes one packet, opening a file first if none is open and rotating after it when the
    /// file reached `rotate_bytes`. A failed write abandons the current file (it stays a
    /// `.part`) and is counted; the next packet starts a new file.
    pub fn write(&mut self, pkt: Labelled<'_>) -> Result<(), PcapError> {
        let packet = pkt.packet;
        let ts = packet.timestamp_ns;
        if let (Some(file), Some(limit)) = (&self.file, self.rotate_ns)
            && ts.saturating_sub(file.opened_ns) >= limit
        {
            self.close()?;
        }
        if self.file.is_none() {
            self.open(ts).inspect_err(|_| self.write_errors += 1)?;
        }
        let result = self.write_packet(pkt);
        if let Err(source) = result {
            self.write_errors += 1;
            let path = self.abandon();
            return Err(PcapError::Write { path, source });
        }
        self.packets += 1;
        self.bytes += packet.data.len() as u64;
        if let (Some(file), Some(limit)) = (&self.file, self.rotate_bytes)
            && file.writer.get_ref().bytes >= limit
        {
            self.close()?;
        }
        Ok(())
    }

    /// Adds the tap's interface if this file does not have it yet, then writes the packet.
    fn write_packet(&mut self, pkt: Labelled<'_>) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("no open file"));
        };
        let packet = pkt.packet;
        let tap = packet.source.tap;
        let interface = match self.interfaces.get(&tap) {
            Some(&id) => id,
            None => {
                self.name.clear();
                match (pkt.pod, tap) {
                    (Some(pod), _) => self.name.push_str(pod),
                    (None, 0) => self.name.push_str("unknown"),
                    (None, id) => {
                        let _ = write!(self.name, "tap-{id}");
                    }
                }
                let description = format!("tap {tap}");
                let id = file.writer.add_interface(&InterfaceDescription {
                    name: &self.name,
                    description: &description,
                    snaplen: self.snaplen,
                    link_type: LINKTYPE_ETHERNET,
                })?;
                self.interfaces.insert(tap, id);
                id
            }
        };
        let direction = match packet.source.direction {
            Direction::FromPod => pcapng::Direction::Outbound,
            Direction::ToPod => pcapng::Direction::Inbound,
            Direction::Unknown => pcapng::Direction::Unknown,
        };
        file.writer.write_packet(
            interface,
            packet.timestamp_ns,
            packet.original_len,
            &packet.data,
            direction,
        )
    }

    /// Closes the current file once its first packet is `rotate_seconds` old, and pushes
    /// buffered packets to the file. Call it at least every few hundred milliseconds.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), PcapError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Some(limit) = self.rotate_ns
            && now_ns.saturating_sub(file.opened_ns) >= limit
        {
            return self.close();
        }
        if let Err(source) = file.writer.flush() {
            let path = self.abandon();
            return Err(PcapError::Write { path, source });
        }
        Ok(())
    }

    /// Closes the current file (flush, sync, rename to `.pcapng`) and applies retention.
    /// Writing again afterwards starts a new file.
    pub fn finish(&mut self) -> Result<(), PcapError> {
        self.close()
    }

    /// What this output counted.
    pub fn counters(&self) -> OutputCounters {
        let mut errors = BTreeMap::new();
        if self.write_errors > 0 {
            errors.insert("write", self.write_errors);
        }
        OutputCounters {
            kind: "pcap",
            packets: self.packets,
            bytes: self.bytes,
            errors,
            extra: BTreeMap::from([
                ("files_written", self.files_written),
                ("files_deleted", self.files_deleted),
            ]),
        }
    }

    /// Starts a new `.part` file named after `first_ns`.
    fn open(&mut self, first_ns: u64) -> Result<(), PcapError> {
        let mut name = self.prefix.clone();
        name.push('-');
        push_utc_timestamp(&mut name, first_ns);
        let _ = write!(
            name,
            "-{:0width$}{SUFFIX}",
            self.next_seq,
            width = SEQ_DIGITS
        );
        let done = self.directory.join(&name);
        name.push_str(PART_SUFFIX);
        let part = self.directory.join(name);
        let created = File::options()
            .write(true)
            .create_new(true)
            .open(&part)
            .and_then(|f| {
                let out = Counted {
                    inner: BufWriter::with_capacity(BUFFER_BYTES, f),
                    bytes: 0,
                };
                PcapngWriter::new(out, &self.user_application)
            });
        let writer = match created {
            Ok(w) => w,
            Err(source) => return Err(PcapError::Create { path: part, source }),
        };
        self.next_seq += 1;
        self.interfaces.clear();
        self.file = Some(OpenFile {
            writer,
            part,
            done,
            opened_ns: first_ns,
        });
        Ok(())
    }

    /// Drops the current file as it is (a `.part`) and returns its path.
    fn abandon(&mut self) -> PathBuf {
        self.interfaces.clear();
        match self.file.take() {
            Some(file) => file.part,
            None => PathBuf::new(),
        }
    }

    /// Completes the current file, if any, then deletes files beyond `keep_files`.
    fn close(&mut self) -> Result<(), PcapError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        self.interfaces.clear();
        let OpenFile {
            writer, part, done, ..
        } = file;
        let closed = writer
            .into_inner()
            .inner
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&part, &done));
        if let Err(source) = closed {
            return Err(PcapError::Close { path: part, source });
        }
        self.files_written += 1;
        self.complete.push_back(done);
        self.apply_retention()
    }

    fn apply_retention(&mut self) -> Result<(), PcapError> {
        let Some(keep) = self.keep_files else {
            return Ok(());
        };
        while self.complete.len() > keep {
            let Some(oldest) = self.complete.pop_front() else {
                break;
            };
            match std::fs::remove_file(&oldest) {
                Ok(()) => self.files_deleted += 1,
                // Someone else removed it already: fine.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    // Keep it in the list, to try again on the next close.
                    self.complete.push_front(oldest.clone());
                    return Err(PcapError::Delete {
                        path: oldest,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Drop for PcapOutput {
    /// Completes the current file, so that dropping an output without [`finish`] still leaves
    /// no `.part` behind. Errors cannot be reported here; call [`finish`] to see them.
    ///
    /// [`finish`]: PcapOutput::finish
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// This output's complete files in `directory`, oldest first, and the next sequence number
/// (one past the highest found, `.part` files included).
fn earlier_files(directory: &Path, prefix: &str) -> Result<(VecDeque<PathBuf>, u64), PcapError> {
    let list_error = |source| PcapError::ListDirectory {
        path: directory.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    let mut next_seq = 0;
    for entry in std::fs::read_dir(directory).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some((seq, complete)) = parse_file_name(name, prefix) else {
            continue;
        };
        next_seq = next_seq.max(seq + 1);
        if complete {
            found.push((seq, name.to_string()));
        }
    }
    found.sort();
    let files = found
        .into_iter()
        .map(|(_, name)| directory.join(name))
        .collect();
    Ok((files, next_seq))
}

/// The sequence number of a file name this output would write, and whether it is complete
/// (`.pcapng`, not `.pcapng.part`); `None` for any other name.
fn parse_file_name(name: &str, prefix: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (rest, complete) = match rest.strip_suffix(PART_SUFFIX) {
        Some(rest) => (rest, false),
        None => (rest, true),
    };
    let rest = rest.strip_suffix(SUFFIX)?;
    let (timestamp, seq) = rest.split_once('-')?;
    let timestamp_ok = timestamp.len() == TIMESTAMP_LEN
        && timestamp.char_indices().all(
            |(i, c)| {
                if i == 8 { c == 'T' } else { c.is_ascii_digit() }
            },
        );
    if !timestamp_ok || seq.len() < SEQ_DIGITS || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, complete))
}

/// Appends `ns` (Unix nanoseconds) as a UTC `YYYYmmddTHHMMSS`.
fn push_utc_timestamp(out: &mut String, ns: u64) {
    let secs = ns / 1_000_000_000;
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamp(ns: u64) -> String {
        let mut s = String::new();
        push_utc_timestamp(&mut s, ns);
        s
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(timestamp(0), "19700101T000000");
        // date -u -d @1700000000 +%Y%m%dT%H%M%S
        assert_eq!(timestamp(1_700_000_000_999_999_999), "20231114T221320");
        // A leap day, and the last second of a century year.
        assert_eq!(timestamp(951_782_400_000_000_000), "20000229T000000");
        assert_eq!(timestamp(4_102_444_799_000_000_000), "20991231T235959");
    }

    #[test]
    fn file_names_of_this_output_only() {
        let p = "shop";
        assert_eq!(
            parse_file_name("shop-20231114T221320-000007.pcapng", p),
            Some((7, true))
        );
        assert_eq!(
            parse_file_name("shop-20231114T221320-1234567.pcapng.part", p),
            Some((1_234_567, false))
        );
        for other in [
            "shop-20231114T221320-000007.pcap",
            "shop-x-20231114T221320-000007.pcapng",
            "shopx-20231114T221320-000007.pcapng",
            "shop-20231114X221320-000007.pcapng",
            "shop-20231114T221320-07.pcapng",
            "shop-20231114T221320-00000a.pcapng",
            "notes.txt",
        ] {
            assert_eq!(parse_file_name(other, p), None, "{other}");
        }
    }

    #[test]
    fn problems_name_their_fields() {
        let cfg = PcapConfig {
            directory: PathBuf::new(),
            prefix: Some("../x".into()),
            rotate_bytes: Some(0),
            rotate_seconds: Some(0),
            keep_files: Some(0),
            snaplen: Some(0),
        };
        let problems = cfg.problems();
        for field in [
            "directory",
            "prefix",
            "rotate_bytes",
            "rotate_seconds",
            "keep_files",
            "snaplen",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 6);
    }
}
