//! What a capture file holds, reduced to numbers two tools' outputs can be compared by: frame
//! count, captured and original bytes, and an order-sensitive digest of every frame's bytes and
//! original length. Reads pcap and pcapng (Enhanced and Simple Packet Blocks) as a stream.

use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

/// The pcapng Section Header Block type, the first four bytes of a pcapng file.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// A capture reduced to comparable numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureDigest {
    /// Frames.
    pub frames: u64,
    /// Bytes as captured (after any cut).
    pub captured_bytes: u64,
    /// Bytes on the wire (original lengths).
    pub wire_bytes: u64,
    /// Digest of the frames in order (bytes and original length of each).
    pub digest: u64,
}

impl CaptureDigest {
    /// The digest as 16 hex digits, for tables.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.digest)
    }
}

/// Accumulates frames into a [`CaptureDigest`].
#[derive(Debug, Default)]
struct DigestBuilder {
    hasher: DefaultHasher,
    summary: CaptureDigest,
}

impl DigestBuilder {
    fn add(&mut self, data: &[u8], original_len: u32) {
        self.hasher.write_u32(original_len);
        self.hasher.write_u32(data.len() as u32);
        self.hasher.write(data);
        self.summary.frames += 1;
        self.summary.captured_bytes += data.len() as u64;
        self.summary.wire_bytes += u64::from(original_len);
    }
}

/// Digests one file, or every `*.pcap`/`*.pcapng` file of a directory in name order (what a
/// rotating output writes) as one capture.
pub fn digest(path: &Path) -> anyhow::Result<CaptureDigest> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pcapng" || e == "pcap"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{} holds no capture file", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut builder = DigestBuilder::default();
    for f in &files {
        add_file(f, &mut builder).with_context(|| format!("reading {}", f.display()))?;
    }
    builder.summary.digest = builder.hasher.finish();
    Ok(builder.summary)
}

fn add_file(path: &Path, builder: &mut DigestBuilder) -> anyhow::Result<()> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .context("reading the magic number")?;
    // Reopen: the readers want the file from its start.
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    if magic == PCAPNG_MAGIC {
        let mut reader = PcapNgReader::new(file)?;
        while let Some(block) = reader.next_block() {
            match block? {
                Block::EnhancedPacket(p) => builder.add(&p.data, p.original_len),
                Block::SimplePacket(p) => builder.add(&p.data, p.original_len),
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(file)?;
        while let Some(p) = reader.next_packet() {
            let p = p?;
            builder.add(&p.data, p.orig_len);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthSpec, write_capture};

    #[test]
    fn counts_match_the_generator() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.pcap");
        let spec = SynthSpec {
            packets: 5_000,
            connections: 50,
            seconds: 2,
            seed: 3,
            duplicate_one_in: None,
        };
        let truth = write_capture(&spec, &path).unwrap();
        let d = digest(&path).unwrap();
        assert_eq!(d.frames, truth.frames);
        assert_eq!(d.captured_bytes, truth.frame_bytes);
        assert_eq!(d.wire_bytes, truth.frame_bytes);
        assert_eq!(digest(dir.path()).unwrap(), d);
    }
}
