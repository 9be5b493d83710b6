//! Why a tunnel header ([`vxlan`](crate::vxlan), [`gre`](crate::gre)) could not be read or
//! written: one error type for the header views and their `Repr`s.

use std::fmt;

/// The header an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// VXLAN (RFC 7348), with or without the Group Based Policy extension.
    Vxlan,
    /// GRE (RFC 2784, RFC 2890).
    Gre,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Header::Vxlan => "VXLAN",
            Header::Gre => "GRE",
        })
    }
}

/// A tunnel header that is too short or says something podtap cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends inside the header (when parsing), or is too short for the header to be
    /// written (when emitting).
    #[error("{header} header truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// The header that does not fit.
        header: Header,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The VXLAN I flag is clear: the header carries no valid VNI.
    #[error("{header} flags {flags:#04x} lack the I bit (0x08): the VNI is not valid")]
    VniNotValid {
        /// Always [`Header::Vxlan`].
        header: Header,
        /// The flags byte found.
        flags: u8,
    },
    /// The GRE version is not 0 (version 1 is PPTP's enhanced GRE).
    #[error("{header} version {version} is not supported (only version 0 is)")]
    UnsupportedVersion {
        /// Always [`Header::Gre`].
        header: Header,
        /// The version found.
        version: u8,
    },
    /// The GRE routing bit (RFC 1701 source routing) is set; RFC 2784 removed routing and
    /// podtap does not follow it.
    #[error("{header} routing bit (0x4000) is set: source routing (RFC 1701) is not supported")]
    RoutingPresent {
        /// Always [`Header::Gre`].
        header: Header,
    },
    /// The GRE checksum does not match the header and payload.
    #[error("{header} checksum {stored:#06x} is wrong: header and payload sum to {computed:#06x}")]
    BadChecksum {
        /// Always [`Header::Gre`].
        header: Header,
        /// The checksum in the packet.
        stored: u16,
        /// The checksum computed over the packet.
        computed: u16,
    },
}

impl WireError {
    /// The header the error is about.
    pub fn header(&self) -> Header {
        match self {
            WireError::Truncated { header, .. }
            | WireError::VniNotValid { header, .. }
            | WireError::UnsupportedVersion { header, .. }
            | WireError::RoutingPresent { header }
            | WireError::BadChecksum { header, .. } => *header,
        }
    }

    /// A short, stable name for the error, fit for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Truncated { .. } => "truncated",
            WireError::VniNotValid { .. } => "vni_not_valid",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::RoutingPresent { .. } => "routing_present",
            WireError::BadChecksum { .. } => "bad_checksum",
        }
    }
}
