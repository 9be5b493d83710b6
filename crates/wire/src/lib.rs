//! podtap's pure packet and file formats: what a captured packet becomes on its way out of the
//! tap. No I/O beyond [`std::io::Write`], no `unsafe`.
//!
//! - [`pcapng`]: a streaming pcapng writer that allocates nothing per packet.
//! - [`gso`]: segmentation of GSO/TSO super-packets into the wire-size frames tools expect.
//! - [`vxlan`]: the VXLAN (Group Based Policy) header podtap sends tapped frames in.
//! - [`gre`]: the GRE header of L2GRE, the other tunnel to a packet broker.
//! - [`error`]: [`WireError`](error::WireError), why a tunnel header could not be read or written.
//! - [`netflow`]: NetFlow v9 and IPFIX export messages for flow records.

#![forbid(unsafe_code)]

pub mod error;
pub mod gre;
pub mod gso;
pub mod netflow;
pub mod pcapng;
pub mod vxlan;

pub use gso::{SegmentError, Segmenter};
pub use pcapng::{Direction, InterfaceDescription, PcapngWriter};
