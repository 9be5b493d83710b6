//! L7 analytics: from tapped (or decrypted) TCP segments and UDP datagrams to call records.
//!
//! Where bytes go, in order:
//! - [`reassembly`]: per-connection TCP reassembly (both directions, bounded memory, gaps
//!   reported instead of waited for), and the connection table with its limits and eviction.
//! - the protocol decoders, one per module, each a [`call::StreamDecoder`] over one
//!   connection's two byte streams: [`http1`], [`http2`] (with [`hpack`] and gRPC), [`dns`].
//! - [`session`]: picks the decoder for a connection and turns its [`call::Call`]s into
//!   [`call::CallRecord`]s with both endpoints' identities.
//! - [`servicemap`], [`anomaly`], [`store`]: what is done with the records.

pub mod anomaly;
pub mod call;
pub mod dns;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod reassembly;
pub mod servicemap;
pub mod session;
pub mod store;
