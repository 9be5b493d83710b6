//! The unit the pipeline works on: one copied frame, where it was tapped, and when.

use std::net::IpAddr;

/// Which way the packet went, from the tapped pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// The pod sent it.
    FromPod,
    /// The pod received it.
    ToPod,
    /// Not carried by the tunnel (e.g. a GRE packet from another tool).
    #[default]
    Unknown,
}

/// Where a copy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// Index of the policy in the broker configuration.
    pub policy: usize,
    /// Tap point id carried by the tunnel (0: unknown). Identifies the pod's veth.
    pub tap: u16,
    /// Direction carried by the tunnel.
    pub direction: Direction,
    /// The agent (outer source address).
    pub agent: IpAddr,
}

/// One copied Ethernet frame in the pipeline. Its bytes are borrowed from the receive buffer
/// (or a replayed capture) until a stage changes them; the copy goes into a buffer the broker
/// reuses, so nothing is allocated per packet.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// When the broker received it, Unix nanoseconds.
    pub timestamp_ns: u64,
    /// The frame as it is now (stages may cut or overwrite it).
    pub data: Frame<'a>,
    /// Length of the frame on the wire, before any cut (by the agent or a `slice`).
    pub original_len: u32,
    /// Where it was tapped.
    pub source: Source,
}

impl Packet<'static> {
    /// An empty packet with its own buffer (`data.to_mut()` to fill it).
    pub fn new() -> Self {
        Packet {
            timestamp_ns: 0,
            data: Frame::from(Vec::with_capacity(65536)),
            original_len: 0,
            source: Source {
                policy: 0,
                tap: 0,
                direction: Direction::Unknown,
                agent: IpAddr::from([0, 0, 0, 0]),
            },
        }
    }
}

impl Default for Packet<'static> {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes of a frame in the pipeline: the received bytes themselves until a stage changes
/// them, then a copy in a buffer the broker reuses. Outputs and stages that only read (filter,
/// dedupe, sample, flow export, most packets of a pipeline) never pay for a copy.
#[derive(Debug, Clone, Default)]
pub struct Frame<'a> {
    /// The received bytes (while not `owned`).
    bytes: &'a [u8],
    /// The copy (while `owned`); otherwise spare capacity kept for the next packet.
    buf: Vec<u8>,
    owned: bool,
}

impl<'a> Frame<'a> {
    /// The received `bytes`, with `buf` (cleared when a stage first writes) to copy into.
    pub fn borrowed(bytes: &'a [u8], buf: Vec<u8>) -> Self {
        Frame {
            bytes,
            buf,
            owned: false,
        }
    }

    /// The frame as it is now.
    pub fn as_slice(&self) -> &[u8] {
        if self.owned { &self.buf } else { self.bytes }
    }

    /// The frame for writing: copies the received bytes on the first call.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if !self.owned {
            self.buf.clear();
            self.buf.extend_from_slice(self.bytes);
            self.owned = true;
        }
        &mut self.buf
    }

    /// Keeps the first `len` bytes (no copy: a shorter view of received bytes).
    pub fn truncate(&mut self, len: usize) {
        if self.owned {
            self.buf.truncate(len);
        } else {
            self.bytes = &self.bytes[..len.min(self.bytes.len())];
        }
    }

    /// Whether a stage has changed (and so copied) the frame.
    pub fn is_copied(&self) -> bool {
        self.owned
    }

    /// Gives the copy buffer back for the next packet.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl From<Vec<u8>> for Frame<'static> {
    fn from(buf: Vec<u8>) -> Self {
        Frame {
            bytes: &[],
            buf,
            owned: true,
        }
    }
}

impl std::ops::Deref for Frame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Frame<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::Frame;

    #[test]
    fn a_borrowed_frame_is_copied_only_when_written() {
        let received = [1u8, 2, 3, 4, 5, 6];
        let mut frame = Frame::borrowed(&received, Vec::with_capacity(64));
        frame.truncate(4);
        assert_eq!(&*frame, &[1, 2, 3, 4]);
        assert!(!frame.is_copied(), "a cut is a shorter view, not a copy");
        frame.to_mut()[0] = 9;
        assert!(frame.is_copied());
        assert_eq!(&*frame, &[9, 2, 3, 4]);
        frame.truncate(2);
        assert_eq!(&*frame, &[9, 2]);
        assert_eq!(
            received,
            [1, 2, 3, 4, 5, 6],
            "the received bytes are never written"
        );
        let buf = frame.into_buffer();
        assert!(
            buf.capacity() >= 64,
            "the copy buffer goes back for the next packet"
        );
        let mut next = Frame::borrowed(&received[..3], buf);
        assert_eq!(
            next.to_mut().as_slice(),
            &[1, 2, 3],
            "the reused buffer is cleared first"
        );
    }
}
