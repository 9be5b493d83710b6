//! VXLAN (RFC 7348) with the Group Based Policy extension (draft-smith-vxlan-group-policy):
//! the 8-byte header podtap puts in front of each tapped Ethernet frame it sends to a packet
//! broker over UDP port 4789.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |G|R|R|R|I|R|R|R|R|D|R|R|A|R|R|R|        Group Policy ID        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          VXLAN Network Identifier (VNI)       |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Without the G flag the second byte and the Group Policy ID are reserved (zero), which is
//! plain RFC 7348 VXLAN.
//!
//! # podtap's convention
//!
//! - The **VNI** is the tap policy that selected the packet.
//! - The **Group Policy ID** labels the tap point and the direction: the low 15 bits are the
//!   tap point id (1-32767; 0 = unknown), bit 15 (`0x8000`) is set when the copy is of a packet
//!   *to* the pod (the pod received it) and clear when the pod sent it. See [`tap_label`] and
//!   [`group_policy_id`]. The same 16-bit label is the low half of podtap's GRE key
//!   ([`gre_key`](crate::gre::gre_key)).
//!
//! The GBP D (don't learn) and A (policy applied) flags are read but podtap never sets them.

use crate::error::{Header, WireError};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The IANA UDP port for VXLAN.
pub const UDP_PORT: u16 = 4789;

/// Bit 15 of the podtap tap label: set when the copied packet went to the pod.
pub const TO_POD: u16 = 0x8000;

/// Largest tap point id a tap label can carry (15 bits).
pub const MAX_TAP: u16 = 0x7FFF;

/// In a tap label's 15-bit tap id, the bit that marks the pod's decrypted view (TLS plaintext
/// as synthesized TCP) rather than its veth. Tap ids that inventories assign stay below it
/// (`podtap_cluster::inventory::MAX_TAP_ID`), so `tap | DECRYPTED` is the same pod's other view.
pub const DECRYPTED: u16 = 0x4000;

/// Offsets of the header fields.
mod field {
    use std::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const GBP_FLAGS: usize = 1;
    pub const GROUP_POLICY_ID: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED: usize = 7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Bits of the first (flags) byte.
pub mod flags {
    /// G: the Group Based Policy extension is present.
    pub const GBP: u8 = 0x80;
    /// I: the VNI is valid.
    pub const VNI_VALID: u8 = 0x08;
}

/// Bits of the second byte when the G flag is set.
pub mod gbp_flags {
    /// D: don't learn the source address of the inner frame.
    pub const DONT_LEARN: u8 = 0x40;
    /// A: the group policy has already been applied.
    pub const POLICY_APPLIED: u8 = 0x08;
}

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00FF_FFFF;

/// Splits a Group Policy ID into podtap's tap point id and direction: `(tap, to_pod)`.
pub const fn tap_label(group_policy_id: u16) -> (u16, bool) {
    (group_policy_id & MAX_TAP, group_policy_id & TO_POD != 0)
}

/// podtap's Group Policy ID for a copy taken at tap point `tap`, of a packet the pod received
/// (`to_pod`) or sent.
///
/// A `tap` above [`MAX_TAP`] cannot be carried and is sent as 0 (unknown) rather than as
/// another tap's id.
pub const fn group_policy_id(tap: u16, to_pod: bool) -> u16 {
    let tap = if tap > MAX_TAP { 0 } else { tap };
    if to_pod { tap | TO_POD } else { tap }
}

/// A read-only or read-write view of a VXLAN header and the frame it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without checking its length; accessors panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the whole header, so that no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        let available = self.buffer.as_ref().len();
        if available < HEADER_LEN {
            return Err(WireError::Truncated {
                header: Header::Vxlan,
                needed: HEADER_LEN,
                available,
            });
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte (G, I and reserved bits).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag says the VNI is valid.
    pub fn vni_valid(&self) -> bool {
        self.flags() & flags::VNI_VALID != 0
    }

    /// Whether the G flag says the Group Based Policy extension is present.
    pub fn gbp_present(&self) -> bool {
        self.flags() & flags::GBP != 0
    }

    /// The second byte: the GBP flags (D, A) when [`gbp_present`](Self::gbp_present), else
    /// reserved.
    pub fn gbp_flags(&self) -> u8 {
        self.buffer.as_ref()[field::GBP_FLAGS]
    }

    /// The GBP D flag: don't learn.
    pub fn dont_learn(&self) -> bool {
        self.gbp_present() && self.gbp_flags() & gbp_flags::DONT_LEARN != 0
    }

    /// The GBP A flag: policy applied.
    pub fn policy_applied(&self) -> bool {
        self.gbp_present() && self.gbp_flags() & gbp_flags::POLICY_APPLIED != 0
    }

    /// The Group Policy ID field (meaningful only when [`gbp_present`](Self::gbp_present)).
    pub fn group_policy_id(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::GROUP_POLICY_ID];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The 24-bit VNI (meaningful only when [`vni_valid`](Self::vni_valid)).
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The last, reserved byte.
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::RESERVED]
    }

    /// The encapsulated Ethernet frame: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the second byte (GBP flags, or reserved without G).
    pub fn set_gbp_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::GBP_FLAGS] = value;
    }

    /// Sets the Group Policy ID field.
    pub fn set_group_policy_id(&mut self, value: u16) {
        self.buffer.as_mut()[field::GROUP_POLICY_ID].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the VNI; only its low 24 bits are kept.
    pub fn set_vni(&mut self, value: u32) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_be_bytes()[1..]);
    }

    /// Sets the last, reserved byte.
    pub fn set_reserved(&mut self, value: u8) {
        self.buffer.as_mut()[field::RESERVED] = value;
    }

    /// The encapsulated frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// What a VXLAN header says, as podtap uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// The 24-bit VNI (podtap: the policy).
    pub vni: u32,
    /// The Group Policy ID when the G flag is set (podtap: the tap label, see
    /// [`tap_label`]); `None` for plain RFC 7348 VXLAN.
    pub group_policy_id: Option<u16>,
}

impl VxlanRepr {
    /// Reads a header. Fails when the buffer is short or the I flag is clear; reserved bits and
    /// the GBP D/A flags are ignored.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr, WireError> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(WireError::VniNotValid {
                header: Header::Vxlan,
                flags: packet.flags(),
            });
        }
        Ok(VxlanRepr {
            vni: packet.vni(),
            group_policy_id: packet.gbp_present().then(|| packet.group_policy_id()),
        })
    }

    /// Length of the header this writes: [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// podtap's `(tap, to_pod)` label, `(0, false)` (unknown) without GBP.
    pub fn tap_label(&self) -> (u16, bool) {
        tap_label(self.group_policy_id.unwrap_or(0))
    }

    /// Writes the whole header: I flag, G flag when there is a Group Policy ID, GBP flags and
    /// reserved fields zero. The VNI is cut to 24 bits. The payload is left alone.
    ///
    /// # Panics
    ///
    /// When the buffer is shorter than [`HEADER_LEN`], which a packet made with
    /// [`VxlanPacket::new_checked`] never is.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        let gbp = if self.group_policy_id.is_some() {
            flags::GBP
        } else {
            0
        };
        packet.set_flags(flags::VNI_VALID | gbp);
        packet.set_gbp_flags(0);
        packet.set_group_policy_id(self.group_policy_id.unwrap_or(0));
        packet.set_vni(self.vni);
        packet.set_reserved(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G and I set, D set, Group Policy ID 0x8005 (tap 5, to the pod), VNI 0x123456, then a
    /// 4-byte payload.
    static PACKET_BYTES: [u8; 12] = [
        0x88, 0x40, 0x80, 0x05, 0x12, 0x34, 0x56, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    /// What [`VxlanRepr::emit`] writes for the same VNI and label (no D flag).
    static EMITTED_BYTES: [u8; 12] = [
        0x88, 0x00, 0x80, 0x05, 0x12, 0x34, 0x56, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    static PAYLOAD: [u8; 4] = [0xaa, 0xbb, 0xcc, 0xdd];

    fn repr() -> VxlanRepr {
        VxlanRepr {
            vni: 0x12_3456,
            group_policy_id: Some(0x8005),
        }
    }

    #[test]
    fn deconstruct() {
        let packet = VxlanPacket::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x88);
        assert!(packet.vni_valid());
        assert!(packet.gbp_present());
        assert!(packet.dont_learn());
        assert!(!packet.policy_applied());
        assert_eq!(packet.group_policy_id(), 0x8005);
        assert_eq!(packet.vni(), 0x12_3456);
        assert_eq!(packet.reserved(), 0);
        assert_eq!(packet.payload(), &PAYLOAD);
    }

    #[test]
    fn construct() {
        let mut bytes = [0xffu8; 12];
        let mut packet = VxlanPacket::new_unchecked(&mut bytes[..]);
        packet.set_flags(0x88);
        packet.set_gbp_flags(gbp_flags::DONT_LEARN);
        packet.set_group_policy_id(0x8005);
        packet.set_vni(0x12_3456);
        packet.set_reserved(0);
        packet.payload_mut().copy_from_slice(&PAYLOAD);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let packet = VxlanPacket::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Ok(repr()));
        assert_eq!(repr().tap_label(), (5, true));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 12];
        let mut packet = VxlanPacket::new_checked(&mut bytes[..]).unwrap();
        repr().emit(&mut packet);
        packet.payload_mut().copy_from_slice(&PAYLOAD);
        assert_eq!(bytes, EMITTED_BYTES);
    }

    #[test]
    fn plain_vxlan_has_no_group_policy_id() {
        let bytes = [0x08, 0, 0, 0, 0, 0, 42, 0];
        let packet = VxlanPacket::new_checked(&bytes[..]).unwrap();
        let repr = VxlanRepr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            VxlanRepr {
                vni: 42,
                group_policy_id: None
            }
        );
        assert_eq!(repr.tap_label(), (0, false));
        let mut out = [0xffu8; 8];
        repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn errors() {
        assert_eq!(
            VxlanPacket::new_checked(&PACKET_BYTES[..7]),
            Err(WireError::Truncated {
                header: Header::Vxlan,
                needed: 8,
                available: 7
            })
        );
        let bytes = [0x80, 0, 0, 1, 0, 0, 1, 0];
        let err = VxlanRepr::parse(&VxlanPacket::new_unchecked(&bytes[..])).unwrap_err();
        assert_eq!(
            err,
            WireError::VniNotValid {
                header: Header::Vxlan,
                flags: 0x80
            }
        );
        assert_eq!(
            err.to_string(),
            "VXLAN flags 0x80 lack the I bit (0x08): the VNI is not valid"
        );
        // parse checks the length itself, even on an unchecked view.
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_unchecked(&bytes[..3]))
                .unwrap_err()
                .reason(),
            "truncated"
        );
    }

    #[test]
    fn tap_labels() {
        assert_eq!(group_policy_id(5, true), 0x8005);
        assert_eq!(group_policy_id(5, false), 0x0005);
        assert_eq!(group_policy_id(MAX_TAP, true), 0xffff);
        assert_eq!(group_policy_id(MAX_TAP + 1, false), 0);
        assert_eq!(group_policy_id(u16::MAX, true), TO_POD);
        assert_eq!(tap_label(0x8005), (5, true));
        assert_eq!(tap_label(0x0005), (5, false));
        assert_eq!(tap_label(0), (0, false));
    }
}
