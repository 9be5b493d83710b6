//! podtap's pure packet and file formats: what a captured packet becomes on its way out of the
//! tap. No I/O beyond [`std::io::Write`], no `unsafe`.
//!
//! - [`pcapng`]: a streaming pcapng writer that allocates nothing per packet.
//! - [`gso`]: segmentation of GSO/TSO super-packets into the wire-size frames tools expect.

#![forbid(unsafe_code)]

pub mod gso;
pub mod pcapng;

pub use gso::{SegmentError, Segmenter};
pub use pcapng::{Direction, InterfaceDescription, PcapngWriter};
