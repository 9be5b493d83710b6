//! GRE (RFC 2784, with the key and sequence number of RFC 2890): the header podtap puts in
//! front of each tapped Ethernet frame it sends to a packet broker as L2GRE (protocol type
//! 0x6558, transparent Ethernet bridging), IP protocol 47.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |C|R|K|S| Reserved0       | Ver |         Protocol Type         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      Checksum (optional)      |       Reserved1 (optional)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         Key (optional)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Sequence Number (optional)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Parsing accepts what Linux's `ip_gre` accepts: version 0 and no routing bit (RFC 1701
//! source routing); the other reserved bits are ignored. When the C bit is set the checksum
//! (the Internet checksum over the GRE header and payload) must be right.
//!
//! # podtap's convention
//!
//! The 32-bit key is `(policy key << 16) | tap label`, where the tap label is the same 16 bits
//! as podtap's VXLAN Group Policy ID ([`crate::vxlan::group_policy_id`]): tap point id in the
//! low 15 bits (1-32767, 0 = unknown), `0x8000` when the copy is of a packet *to* the pod.
//! See [`gre_key`] and [`split_gre_key`]. A GRE packet without a key means policy 0, tap 0
//! (unknown).

use etherparse::checksum::Sum16BitWords;

use crate::error::{Header, WireError};
use crate::vxlan;

/// Length of the base header (flags, version, protocol type).
pub const BASE_HEADER_LEN: usize = 4;

/// Longest header: base, checksum, key and sequence number.
pub const MAX_HEADER_LEN: usize = 16;

/// Protocol type of transparent Ethernet bridging (L2GRE): the payload is an Ethernet frame.
pub const PROTOCOL_ETHERNET: u16 = 0x6558;

/// IP protocol number of GRE.
pub const IP_PROTOCOL: u8 = 47;

/// Offsets of the fixed fields and sizes of the optional ones.
mod field {
    use std::ops::Range;

    pub const FLAGS_AND_VERSION: Range<usize> = 0..2;
    pub const PROTOCOL: Range<usize> = 2..4;
    /// The first optional field starts here.
    pub const OPTIONS: usize = 4;
    /// Checksum and reserved1; key; sequence number: each this long.
    pub const OPTION_LEN: usize = 4;
    /// Where the checksum sits when the C bit is set.
    pub const CHECKSUM: Range<usize> = 4..6;
}

/// Bits of the first 16-bit word.
pub mod flags {
    /// C: the checksum field is present.
    pub const CHECKSUM: u16 = 0x8000;
    /// R: RFC 1701 routing information is present (not supported).
    pub const ROUTING: u16 = 0x4000;
    /// K: the key field is present.
    pub const KEY: u16 = 0x2000;
    /// S: the sequence number field is present.
    pub const SEQUENCE: u16 = 0x1000;
    /// The version number (low three bits).
    pub const VERSION: u16 = 0x0007;
}

/// Length of an optional field: 4 bytes when present.
const fn option_len(present: bool) -> usize {
    if present { field::OPTION_LEN } else { 0 }
}

/// podtap's GRE key: `policy` in the high 16 bits, the tap label
/// ([`vxlan::group_policy_id`]`(tap, to_pod)`) in the low 16.
pub const fn gre_key(policy: u16, tap: u16, to_pod: bool) -> u32 {
    ((policy as u32) << 16) | vxlan::group_policy_id(tap, to_pod) as u32
}

/// Splits podtap's GRE key into `(policy, tap, to_pod)`.
pub const fn split_gre_key(key: u32) -> (u16, u16, bool) {
    let (tap, to_pod) = vxlan::tap_label(key as u16);
    ((key >> 16) as u16, tap, to_pod)
}

/// A read-only or read-write view of a GRE header and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Wraps a buffer without checking its length; the base-header accessors panic if it is
    /// shorter than [`BASE_HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        GrePacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the base header and every optional field its flags
    /// announce, so that no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        let available = self.buffer.as_ref().len();
        let needed = if available < BASE_HEADER_LEN {
            BASE_HEADER_LEN
        } else {
            self.header_len()
        };
        if available < needed {
            return Err(WireError::Truncated {
                header: Header::Gre,
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The first 16-bit word: C, R, K, S, reserved bits and version.
    pub fn flags_and_version(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS_AND_VERSION];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The C bit: a checksum is present.
    pub fn checksum_present(&self) -> bool {
        self.flags_and_version() & flags::CHECKSUM != 0
    }

    /// The R bit: RFC 1701 routing information is present.
    pub fn routing_present(&self) -> bool {
        self.flags_and_version() & flags::ROUTING != 0
    }

    /// The K bit: a key is present.
    pub fn key_present(&self) -> bool {
        self.flags_and_version() & flags::KEY != 0
    }

    /// The S bit: a sequence number is present.
    pub fn sequence_present(&self) -> bool {
        self.flags_and_version() & flags::SEQUENCE != 0
    }

    /// The version number (0 for GRE, 1 for PPTP's enhanced GRE).
    pub fn version(&self) -> u8 {
        (self.flags_and_version() & flags::VERSION) as u8
    }

    /// The protocol type of the payload (an ether type).
    pub fn protocol(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PROTOCOL];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Length of the header the flags announce: 4, plus 4 each for checksum (C or R, as in
    /// RFC 1701), key and sequence number. RFC 1701 routing entries are not counted.
    pub fn header_len(&self) -> usize {
        let word = self.flags_and_version();
        BASE_HEADER_LEN
            + option_len(word & (flags::CHECKSUM | flags::ROUTING) != 0)
            + option_len(word & flags::KEY != 0)
            + option_len(word & flags::SEQUENCE != 0)
    }

    fn key_offset(&self) -> usize {
        let word = self.flags_and_version();
        field::OPTIONS + option_len(word & (flags::CHECKSUM | flags::ROUTING) != 0)
    }

    fn sequence_offset(&self) -> usize {
        self.key_offset() + option_len(self.key_present())
    }

    fn word_at(&self, offset: usize) -> Option<u32> {
        let b = self.buffer.as_ref().get(offset..offset + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The checksum field, when the C bit is set.
    pub fn checksum(&self) -> Option<u16> {
        if !self.checksum_present() {
            return None;
        }
        let b = self.buffer.as_ref().get(field::CHECKSUM)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The key, when the K bit is set.
    pub fn key(&self) -> Option<u32> {
        if !self.key_present() {
            return None;
        }
        self.word_at(self.key_offset())
    }

    /// The sequence number, when the S bit is set.
    pub fn sequence(&self) -> Option<u32> {
        if !self.sequence_present() {
            return None;
        }
        self.word_at(self.sequence_offset())
    }

    /// The payload: everything after the header (empty if the buffer ends before it).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }

    /// The checksum the header and payload call for: the Internet checksum over the whole
    /// buffer with the checksum field taken as zero.
    pub fn compute_checksum(&self) -> u16 {
        let bytes = self.buffer.as_ref();
        let (head, rest) = bytes.split_at(bytes.len().min(field::CHECKSUM.start));
        let rest = rest.get(2..).unwrap_or(&[]);
        let sum = Sum16BitWords::new()
            .add_slice(head)
            .add_slice(rest)
            .ones_complement();
        // Sum16BitWords adds the words in native byte order.
        u16::from_be_bytes(sum.to_ne_bytes())
    }

    /// Whether the checksum is right; true when there is none.
    pub fn verify_checksum(&self) -> bool {
        self.checksum()
            .is_none_or(|stored| stored == self.compute_checksum())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrePacket<T> {
    /// Sets the first 16-bit word (flags and version).
    pub fn set_flags_and_version(&mut self, value: u16) {
        self.buffer.as_mut()[field::FLAGS_AND_VERSION].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol(&mut self, value: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&value.to_be_bytes());
    }

    fn set_word_at(&mut self, offset: usize, value: u32) {
        if let Some(b) = self.buffer.as_mut().get_mut(offset..offset + 4) {
            b.copy_from_slice(&value.to_be_bytes());
        }
    }

    /// Sets the checksum field and zeroes reserved1. Writes nothing unless the C bit is set
    /// (and the buffer holds the field).
    pub fn set_checksum(&mut self, value: u16) {
        if self.checksum_present() {
            self.set_word_at(field::OPTIONS, u32::from(value) << 16);
        }
    }

    /// Sets the key. Writes nothing unless the K bit is set (and the buffer holds the field).
    pub fn set_key(&mut self, value: u32) {
        if self.key_present() {
            self.set_word_at(self.key_offset(), value);
        }
    }

    /// Sets the sequence number. Writes nothing unless the S bit is set (and the buffer holds
    /// the field).
    pub fn set_sequence(&mut self, value: u32) {
        if self.sequence_present() {
            self.set_word_at(self.sequence_offset(), value);
        }
    }

    /// Computes the checksum over the buffer and stores it (when the C bit is set).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let checksum = self.compute_checksum();
        self.set_checksum(checksum);
    }

    /// The payload, writable (empty if the buffer ends before it).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        self.buffer.as_mut().get_mut(start..).unwrap_or(&mut [])
    }
}

/// What a GRE header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreRepr {
    /// Protocol type of the payload ([`PROTOCOL_ETHERNET`] for L2GRE).
    pub protocol: u16,
    /// The key (RFC 2890), podtap's `(policy << 16) | tap label`.
    pub key: Option<u32>,
    /// The sequence number (RFC 2890).
    pub sequence: Option<u32>,
    /// Whether a checksum is present (parsing) or is to be written (emitting).
    pub checksum: bool,
}

impl GreRepr {
    /// Reads a header: fails when the buffer is short, the version is not 0, the routing bit
    /// is set or the checksum is wrong.
    pub fn parse<T: AsRef<[u8]>>(packet: &GrePacket<T>) -> Result<GreRepr, WireError> {
        packet.check_len()?;
        if packet.version() != 0 {
            return Err(WireError::UnsupportedVersion {
                header: Header::Gre,
                version: packet.version(),
            });
        }
        if packet.routing_present() {
            return Err(WireError::RoutingPresent {
                header: Header::Gre,
            });
        }
        if let Some(stored) = packet.checksum() {
            let computed = packet.compute_checksum();
            if stored != computed {
                return Err(WireError::BadChecksum {
                    header: Header::Gre,
                    stored,
                    computed,
                });
            }
        }
        Ok(GreRepr {
            protocol: packet.protocol(),
            key: packet.key(),
            sequence: packet.sequence(),
            checksum: packet.checksum_present(),
        })
    }

    /// Length of the header this writes.
    pub const fn header_len(&self) -> usize {
        BASE_HEADER_LEN
            + option_len(self.checksum)
            + option_len(self.key.is_some())
            + option_len(self.sequence.is_some())
    }

    /// Length of a buffer holding this header and `payload_len` bytes of payload.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    /// podtap's `(policy, tap, to_pod)` from the key; `(0, 0, false)` without a key.
    pub const fn tap_identity(&self) -> (u16, u16, bool) {
        match self.key {
            Some(key) => split_gre_key(key),
            None => (0, 0, false),
        }
    }

    /// Writes a whole GRE packet into `packet`, whose buffer is exactly header and payload
    /// ([`buffer_len`](Self::buffer_len) bytes): the header (version 0, reserved bits zero),
    /// then `emit_payload` is handed the payload part to fill (pass `|_| {}` when the payload
    /// is already in place after [`header_len`](Self::header_len) bytes), then the checksum,
    /// when asked for, is computed over the whole buffer.
    ///
    /// Fails, writing nothing, when the buffer is shorter than the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut GrePacket<T>,
        emit_payload: impl FnOnce(&mut [u8]),
    ) -> Result<(), WireError> {
        let needed = self.header_len();
        let available = packet.buffer.as_ref().len();
        if available < needed {
            return Err(WireError::Truncated {
                header: Header::Gre,
                needed,
                available,
            });
        }
        let mut word = 0;
        if self.checksum {
            word |= flags::CHECKSUM;
        }
        if self.key.is_some() {
            word |= flags::KEY;
        }
        if self.sequence.is_some() {
            word |= flags::SEQUENCE;
        }
        packet.set_flags_and_version(word);
        packet.set_protocol(self.protocol);
        packet.set_checksum(0);
        if let Some(key) = self.key {
            packet.set_key(key);
        }
        if let Some(sequence) = self.sequence {
            packet.set_sequence(sequence);
        }
        emit_payload(packet.payload_mut());
        if self.checksum {
            packet.fill_checksum();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C, K and S set, protocol 0x6558, checksum 0xefd7 over the whole packet, key 0x00078005
    /// (policy 7, tap 5, to the pod), sequence 0x01020304, then a 3-byte payload.
    static PACKET_BYTES: [u8; 19] = [
        0xb0, 0x00, 0x65, 0x58, 0xef, 0xd7, 0x00, 0x00, 0x00, 0x07, 0x80, 0x05, 0x01, 0x02, 0x03,
        0x04, 0xaa, 0xbb, 0xcc,
    ];

    static PAYLOAD: [u8; 3] = [0xaa, 0xbb, 0xcc];

    fn repr() -> GreRepr {
        GreRepr {
            protocol: PROTOCOL_ETHERNET,
            key: Some(0x0007_8005),
            sequence: Some(0x0102_0304),
            checksum: true,
        }
    }

    #[test]
    fn checksum_of_the_sample_is_right() {
        // Sum of the 16-bit words with the checksum taken as zero, done by hand: the odd last
        // byte is padded with zero.
        let words: [u32; 9] = [
            0xb000, 0x6558, 0x0000, 0x0007, 0x8005, 0x0102, 0x0304, 0xaabb, 0xcc00,
        ];
        let mut sum: u32 = words.iter().sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(!(sum as u16), 0xefd7);
    }

    #[test]
    fn deconstruct() {
        let packet = GrePacket::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags_and_version(), 0xb000);
        assert!(packet.checksum_present());
        assert!(!packet.routing_present());
        assert!(packet.key_present());
        assert!(packet.sequence_present());
        assert_eq!(packet.version(), 0);
        assert_eq!(packet.protocol(), 0x6558);
        assert_eq!(packet.header_len(), 16);
        assert_eq!(packet.checksum(), Some(0xefd7));
        assert_eq!(packet.key(), Some(0x0007_8005));
        assert_eq!(packet.sequence(), Some(0x0102_0304));
        assert_eq!(packet.payload(), &PAYLOAD);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn construct() {
        let mut bytes = [0xffu8; 19];
        let mut packet = GrePacket::new_unchecked(&mut bytes[..]);
        packet.set_flags_and_version(0xb000);
        packet.set_protocol(0x6558);
        packet.set_key(0x0007_8005);
        packet.set_sequence(0x0102_0304);
        packet.payload_mut().copy_from_slice(&PAYLOAD);
        packet.fill_checksum();
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let packet = GrePacket::new_checked(&PACKET_BYTES[..]).unwrap();
        let repr = GreRepr::parse(&packet).unwrap();
        assert_eq!(repr, self::repr());
        assert_eq!(repr.tap_identity(), (7, 5, true));
    }

    #[test]
    fn emit() {
        let repr = repr();
        let mut bytes = [0xffu8; 19];
        assert_eq!(repr.buffer_len(PAYLOAD.len()), bytes.len());
        let mut packet = GrePacket::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet, |payload| payload.copy_from_slice(&PAYLOAD))
            .unwrap();
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn key_only_header() {
        let bytes = [0x20, 0x00, 0x65, 0x58, 0x00, 0x01, 0x00, 0x02, 0xee];
        let packet = GrePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.checksum(), None);
        assert_eq!(packet.sequence(), None);
        assert_eq!(packet.key(), Some(0x0001_0002));
        assert_eq!(packet.payload(), &[0xee]);
        let repr = GreRepr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            GreRepr {
                protocol: PROTOCOL_ETHERNET,
                key: Some(0x0001_0002),
                sequence: None,
                checksum: false
            }
        );
        assert_eq!(repr.tap_identity(), (1, 2, false));
        let mut out = [0u8; 9];
        out[8] = 0xee;
        repr.emit(&mut GrePacket::new_unchecked(&mut out[..]), |_| {})
            .unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn no_key_means_unknown() {
        let repr = GreRepr {
            protocol: PROTOCOL_ETHERNET,
            key: None,
            sequence: None,
            checksum: false,
        };
        assert_eq!(repr.header_len(), 4);
        assert_eq!(repr.tap_identity(), (0, 0, false));
    }

    #[test]
    fn errors() {
        assert_eq!(
            GrePacket::new_checked(&PACKET_BYTES[..15]),
            Err(WireError::Truncated {
                header: Header::Gre,
                needed: 16,
                available: 15
            })
        );
        assert_eq!(
            GrePacket::new_checked(&PACKET_BYTES[..3]),
            Err(WireError::Truncated {
                header: Header::Gre,
                needed: 4,
                available: 3
            })
        );

        let pptp = [0x30, 0x81, 0x88, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0];
        let err = GreRepr::parse(&GrePacket::new_unchecked(&pptp[..])).unwrap_err();
        assert_eq!(
            err,
            WireError::UnsupportedVersion {
                header: Header::Gre,
                version: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "GRE version 1 is not supported (only version 0 is)"
        );

        let routing = [0x40, 0x00, 0x08, 0x00, 0, 0, 0, 0];
        assert_eq!(
            GreRepr::parse(&GrePacket::new_unchecked(&routing[..])),
            Err(WireError::RoutingPresent {
                header: Header::Gre
            })
        );

        let mut corrupt = PACKET_BYTES;
        corrupt[18] ^= 1;
        let err = GreRepr::parse(&GrePacket::new_unchecked(&corrupt[..])).unwrap_err();
        assert!(matches!(err, WireError::BadChecksum { stored: 0xefd7, .. }));
        assert_eq!(err.reason(), "bad_checksum");

        let mut short = [0u8; 15];
        let err = repr()
            .emit(
                &mut GrePacket::new_unchecked(&mut short[..]),
                |_| unreachable!(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            WireError::Truncated {
                header: Header::Gre,
                needed: 16,
                available: 15
            }
        );
        assert_eq!(short, [0u8; 15], "nothing written");
    }

    #[test]
    fn keys() {
        assert_eq!(gre_key(7, 5, true), 0x0007_8005);
        assert_eq!(gre_key(0xffff, 0x7fff, false), 0xffff_7fff);
        assert_eq!(gre_key(1, 0x8000, true), 0x0001_8000);
        assert_eq!(split_gre_key(0x0007_8005), (7, 5, true));
        assert_eq!(split_gre_key(0xffff_7fff), (0xffff, 0x7fff, false));
        assert_eq!(split_gre_key(0), (0, 0, false));
    }
}
