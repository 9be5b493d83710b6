//! HTTP/2 (RFC 9113) and gRPC call decoding for one connection.
//!
//! This module owns: reading frames from both directions (the client preface, 9-byte frame
//! headers, frames split across chunks, finding frame boundaries again after a mid-stream
//! start or a gap), assembling header blocks (HEADERS, CONTINUATION, PUSH_PROMISE) into one
//! [`HpackDecoder`] per direction, the table of open streams that become [`Call`]s, and the
//! gRPC length-prefixed message framing inside DATA.
//!
//! DATA payloads are never copied or buffered: they are counted as they pass, and only
//! frames whose content matters (header blocks, SETTINGS, RST_STREAM, GOAWAY) are buffered
//! when they arrive in pieces. What cannot be known after a mid-stream start or a gap is left
//! empty and the call is [`Outcome::Incomplete`]; a method, path or status is never guessed.

use std::collections::{BTreeMap, VecDeque};

use crate::call::{Call, Emit, GrpcCall, Outcome, Protocol, Redaction, Side, StreamDecoder};
use crate::hpack::HpackDecoder;

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open streams kept per connection; opening one more evicts the oldest.
pub const MAX_OPEN_STREAMS: usize = 1000;

const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and lower bound.
const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's upper bound.
const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// Largest non-DATA frame buffered; a larger header-bearing frame costs the HPACK state.
const MAX_BUFFERED_PAYLOAD: usize = 256 * 1024;
/// Largest header block assembled from HEADERS and CONTINUATION frames.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest frame length considered plausible while looking for frame boundaries.
const MAX_HUNT_FRAME: u32 = 256 * 1024;
/// How many start positions [`looks_like_http2`] tries on each side.
const LOOKS_LIKE_POSITIONS: usize = 4096;
/// Closed stream ids remembered so that frames still in flight do not reopen them.
const RECENTLY_CLOSED: usize = 64;
/// Request headers kept in a call (besides sensitive ones, which are kept redacted).
const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "user-agent",
    "x-request-id",
    "traceparent",
    "grpc-timeout",
];
const MAX_KEPT_HEADERS: usize = 16;
const MAX_HEADER_VALUE: usize = 256;

/// Frame types (RFC 9113 6).
mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 6).
mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers used here.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// A frame header (RFC 9113 4.1), reserved bit dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
    reserved: bool,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]),
            reserved: b[5] & 0x80 != 0,
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// The frame header at the start of `bytes` if it is one a peer on `side` could have sent:
/// a known type, flags defined for it, a length within `max_len` and right for the type,
/// the reserved bit clear, and a stream id allowed for the type and side.
fn plausible(bytes: &[u8], side: Side, max_len: u32) -> Option<FrameHeader> {
    let head: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let h = FrameHeader::parse(head);
    if h.reserved || h.len > max_len {
        return None;
    }
    let stream_frame = h.stream != 0;
    // Clients open odd streams; only servers send on even (pushed) streams.
    let own_stream = side == Side::Server || h.stream % 2 == 1;
    let ok = match h.kind {
        kind::DATA => {
            h.flags & !(flag::END_STREAM | flag::PADDED) == 0 && stream_frame && own_stream
        }
        kind::HEADERS => {
            h.flags & !(flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY) == 0
                && stream_frame
                && own_stream
        }
        kind::PRIORITY => h.flags == 0 && h.len == 5 && stream_frame,
        kind::RST_STREAM => h.flags == 0 && h.len == 4 && stream_frame,
        kind::SETTINGS => {
            h.flags & !flag::ACK == 0
                && !stream_frame
                && h.len.is_multiple_of(6)
                && (h.flags == 0 || h.len == 0)
        }
        kind::PUSH_PROMISE => {
            side == Side::Server
                && h.flags & !(flag::END_HEADERS | flag::PADDED) == 0
                && stream_frame
                && h.len >= 4
        }
        kind::PING => h.flags & !flag::ACK == 0 && h.len == 8 && !stream_frame,
        kind::GOAWAY => h.flags == 0 && h.len >= 8 && !stream_frame,
        kind::WINDOW_UPDATE => h.flags == 0 && h.len == 4,
        kind::CONTINUATION => h.flags & !flag::END_HEADERS == 0 && stream_frame && own_stream,
        _ => false,
    };
    ok.then_some(h)
}

/// Where two consecutive plausible frames start in `buf`, looking from `from`.
enum Sync {
    /// Frames start here.
    At(usize),
    /// A plausible frame starts here; its successor is not in the buffer yet.
    NeedMore(usize),
    /// No plausible frame starts before the last 8 bytes.
    Nothing,
}

fn find_sync(buf: &[u8], from: usize, side: Side, max_len: u32, wait: bool) -> Sync {
    let mut p = from;
    while p + FRAME_HEADER_LEN <= buf.len() {
        if let Some(first) = buf.get(p..).and_then(|b| plausible(b, side, max_len)) {
            let next = p + FRAME_HEADER_LEN + first.len as usize;
            match buf.get(next..) {
                Some(rest)
                    if rest.len() >= FRAME_HEADER_LEN
                        && plausible(rest, side, max_len).is_some() =>
                {
                    return Sync::At(p);
                }
                Some(rest) if rest.len() >= FRAME_HEADER_LEN => {}
                _ if wait => return Sync::NeedMore(p),
                _ => {}
            }
        }
        p += 1;
    }
    Sync::Nothing
}

/// Whether a connection's first bytes look like HTTP/2: the client preface (at least its
/// first 4 bytes), or, for a capture that started mid-connection, two consecutive plausible
/// frames on either side within the first few kilobytes.
pub fn looks_like_http2(client_bytes: &[u8], server_bytes: &[u8]) -> bool {
    let n = client_bytes.len().min(PREFACE.len());
    if n >= 4 && client_bytes.get(..n) == PREFACE.get(..n) {
        return true;
    }
    [(client_bytes, Side::Client), (server_bytes, Side::Server)]
        .into_iter()
        .any(|(bytes, side)| {
            let window = bytes
                .get(
                    ..(LOOKS_LIKE_POSITIONS
                        + 2 * FRAME_HEADER_LEN
                        + DEFAULT_MAX_FRAME_SIZE as usize),
                )
                .unwrap_or(bytes);
            match find_sync(window, 0, side, DEFAULT_MAX_FRAME_SIZE, false) {
                Sync::At(p) => p < LOOKS_LIKE_POSITIONS,
                Sync::NeedMore(_) | Sync::Nothing => false,
            }
        })
}

/// What a direction's reader expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The client preface, `matched` bytes of it seen.
    Preface { matched: usize },
    /// Looking for frame boundaries in `Direction::buf`.
    Hunt,
    /// A frame header, collected in `Direction::head`.
    Header,
    /// A non-DATA payload, buffered in `Direction::buf` unless it arrives whole.
    Payload(FrameHeader),
    /// The pad length byte of a padded DATA frame.
    DataPadLength(FrameHeader),
    /// DATA bytes then padding, counted as they pass.
    DataBody {
        stream: u32,
        data_left: u32,
        pad_left: u32,
        end_stream: bool,
    },
    /// A payload nobody needs (PING, PRIORITY, WINDOW_UPDATE, unknown types).
    Skip { left: u32 },
}

/// A header block waiting for CONTINUATION frames.
#[derive(Debug, Clone, Copy)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    push: bool,
    /// When its HEADERS frame started.
    ts: u64,
}

/// One direction of the connection: frames `side` sends.
#[derive(Debug)]
struct Direction {
    read: Read,
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The partial payload being buffered, or the bytes searched while hunting.
    buf: Vec<u8>,
    hunt_from: usize,
    /// Whether the first frame must be checked as the connection's start (the server's
    /// preface is a SETTINGS frame); otherwise the reader hunts.
    verify_first: bool,
    /// Frames read since the connection's start without loss.
    from_start: bool,
    hpack: HpackDecoder,
    /// The largest frame this side may send (the peer's SETTINGS_MAX_FRAME_SIZE).
    max_frame_size: u32,
    block: Vec<u8>,
    pending: Option<PendingBlock>,
    /// When the current frame's header started.
    frame_ts: u64,
}

impl Direction {
    fn new(side: Side) -> Direction {
        Direction {
            read: match side {
                Side::Client => Read::Preface { matched: 0 },
                Side::Server => Read::Header,
            },
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            buf: Vec::new(),
            hunt_from: 0,
            verify_first: side == Side::Server,
            from_start: true,
            hpack: HpackDecoder::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            block: Vec::new(),
            pending: None,
            frame_ts: 0,
        }
    }

    /// Framing is lost: look for frame boundaries from the bytes in `buf` on.
    fn hunt(&mut self) {
        self.read = Read::Hunt;
        self.hunt_from = 0;
        self.head_len = 0;
        self.from_start = false;
        self.verify_first = false;
    }

    /// The frame header just read is not one: hunt from its second byte on.
    fn hunt_after_bad_header(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&self.head);
        self.hunt();
        self.hunt_from = 1;
    }

    fn hunt_limit(&self) -> u32 {
        self.max_frame_size.min(MAX_HUNT_FRAME)
    }
}

/// Whether the connection's start was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// No client bytes yet.
    Unknown,
    /// The client preface was seen.
    Seen,
    /// The capture started mid-connection (or its start was lost).
    Missed,
}

/// An HTTP/2 (and gRPC) decoder for one connection.
#[derive(Debug)]
pub struct Http2Decoder {
    client: Direction,
    server: Direction,
    start: Start,
    streams: StreamTable,
}

impl Http2Decoder {
    /// A decoder whose calls keep headers and paths redacted per `redaction`.
    pub fn new(redaction: Redaction) -> Self {
        Http2Decoder {
            client: Direction::new(Side::Client),
            server: Direction::new(Side::Server),
            start: Start::Unknown,
            streams: StreamTable {
                redaction,
                streams: BTreeMap::new(),
                recently_closed: VecDeque::new(),
            },
        }
    }

    /// The connection's start is not (or no longer) known: both HPACK decoders continue as
    /// if they had joined mid-stream.
    fn missed_start(&mut self) {
        if self.start != Start::Missed {
            self.start = Start::Missed;
            self.client.hpack.forget_history();
            self.server.hpack.forget_history();
        }
    }

    /// Reads `input` in `side`'s direction, hunting for frame boundaries as needed.
    fn feed(&mut self, side: Side, input: &[u8], ts: u64, emit: &mut Emit) {
        let used = self.consume(side, input, ts, emit);
        if self.direction(side).read != Read::Hunt {
            return;
        }
        let dir = self.direction(side);
        dir.buf
            .extend_from_slice(input.get(used..).unwrap_or_default());
        loop {
            let dir = self.direction(side);
            let limit = dir.hunt_limit();
            match find_sync(&dir.buf, dir.hunt_from, side, limit, true) {
                Sync::Nothing => {
                    let searched = dir.buf.len().saturating_sub(FRAME_HEADER_LEN - 1);
                    dir.buf.drain(..searched);
                    dir.hunt_from = 0;
                    return;
                }
                Sync::NeedMore(p) => {
                    dir.buf.drain(..p);
                    dir.hunt_from = 0;
                    return;
                }
                Sync::At(p) => {
                    let found = std::mem::take(&mut dir.buf);
                    dir.read = Read::Header;
                    let rest = found.get(p..).unwrap_or_default();
                    let used = self.consume(side, rest, ts, emit);
                    let dir = self.direction(side);
                    if dir.read != Read::Hunt {
                        return;
                    }
                    dir.buf
                        .extend_from_slice(rest.get(used..).unwrap_or_default());
                }
            }
        }
    }

    fn direction(&mut self, side: Side) -> &mut Direction {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Reads frames from `input` until it is used up or framing is lost; returns how many
    /// bytes were used (the rest belongs to the hunt).
    fn consume(&mut self, side: Side, input: &[u8], ts: u64, emit: &mut Emit) -> usize {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            let read = self.direction(side).read;
            match read {
                Read::Hunt => return pos,
                Read::Preface { matched } => {
                    let want = PREFACE.get(matched..).unwrap_or_default();
                    let n = want.len().min(rest.len());
                    if rest.get(..n) == want.get(..n) {
                        pos += n;
                        let matched = matched + n;
                        let dir = self.direction(side);
                        if matched == PREFACE.len() {
                            dir.read = Read::Header;
                            if self.start == Start::Unknown {
                                self.start = Start::Seen;
                            }
                        } else {
                            dir.read = Read::Preface { matched };
                        }
                    } else {
                        self.missed_start();
                        let dir = self.direction(side);
                        dir.buf.clear();
                        dir.buf
                            .extend_from_slice(PREFACE.get(..matched).unwrap_or_default());
                        dir.hunt();
                        return pos;
                    }
                }
                Read::Header => {
                    let dir = self.direction(side);
                    if dir.head_len == 0 {
                        dir.frame_ts = ts;
                    }
                    let n = (FRAME_HEADER_LEN - dir.head_len).min(rest.len());
                    if let (Some(dst), Some(src)) = (
                        dir.head.get_mut(dir.head_len..dir.head_len + n),
                        rest.get(..n),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    dir.head_len += n;
                    pos += n;
                    if dir.head_len == FRAME_HEADER_LEN {
                        dir.head_len = 0;
                        let header = FrameHeader::parse(&dir.head);
                        self.start_frame(side, header, ts, emit);
                    }
                }
                Read::Payload(header) => {
                    let len = header.len as usize;
                    let dir = self.direction(side);
                    if dir.buf.is_empty() && rest.len() >= len {
                        pos += len;
                        dir.read = Read::Header;
                        self.frame(side, header, rest.get(..len).unwrap_or_default(), ts, emit);
                    } else {
                        let n = len.saturating_sub(dir.buf.len()).min(rest.len());
                        dir.buf.extend_from_slice(rest.get(..n).unwrap_or_default());
                        pos += n;
                        if dir.buf.len() >= len {
                            let payload = std::mem::take(&mut dir.buf);
                            dir.read = Read::Header;
                            self.frame(side, header, &payload, ts, emit);
                            let dir = self.direction(side);
                            if dir.buf.is_empty() {
                                dir.buf = payload;
                                dir.buf.clear();
                            }
                        }
                    }
                }
                Read::DataPadLength(header) => {
                    let pad = u32::from(rest.first().copied().unwrap_or(0));
                    pos += 1;
                    let body = header.len.saturating_sub(1);
                    let end_stream = header.has(flag::END_STREAM);
                    if pad > body {
                        emit.problem("http2_bad_frame");
                        self.streams.mark(header.stream, "bad_frame");
                        self.direction(side).read = Read::DataBody {
                            stream: header.stream,
                            data_left: 0,
                            pad_left: body,
                            end_stream,
                        };
                    } else {
                        self.direction(side).read = Read::DataBody {
                            stream: header.stream,
                            data_left: body - pad,
                            pad_left: pad,
                            end_stream,
                        };
                    }
                    self.finish_data_if_done(side, ts, emit);
                }
                Read::DataBody {
                    stream,
                    data_left,
                    pad_left,
                    end_stream,
                } => {
                    let (data_left, pad_left) = if data_left > 0 {
                        let n = (data_left as usize).min(rest.len());
                        self.streams
                            .data(side, stream, rest.get(..n).unwrap_or_default());
                        pos += n;
                        (data_left - n as u32, pad_left)
                    } else {
                        let n = (pad_left as usize).min(rest.len());
                        pos += n;
                        (0, pad_left - n as u32)
                    };
                    self.direction(side).read = Read::DataBody {
                        stream,
                        data_left,
                        pad_left,
                        end_stream,
                    };
                    self.finish_data_if_done(side, ts, emit);
                }
                Read::Skip { left } => {
                    let n = (left as usize).min(rest.len());
                    pos += n;
                    let left = left - n as u32;
                    self.direction(side).read = if left == 0 {
                        Read::Header
                    } else {
                        Read::Skip { left }
                    };
                }
            }
        }
        pos
    }

    /// Ends a DATA frame whose bytes have all passed.
    fn finish_data_if_done(&mut self, side: Side, ts: u64, emit: &mut Emit) {
        if let Read::DataBody {
            stream,
            data_left: 0,
            pad_left: 0,
            end_stream,
        } = self.direction(side).read
        {
            self.direction(side).read = Read::Header;
            if end_stream {
                self.streams.end_stream(side, stream, ts, emit);
            }
        }
    }

    /// A frame header was read: decide how to read its payload.
    fn start_frame(&mut self, side: Side, h: FrameHeader, ts: u64, emit: &mut Emit) {
        let dir = self.direction(side);
        if dir.verify_first {
            dir.verify_first = false;
            let first_settings =
                h.kind == kind::SETTINGS && plausible(&dir.head, side, dir.hunt_limit()).is_some();
            if !first_settings {
                // Not the server's preface: the capture joined mid-connection.
                dir.hunt_after_bad_header();
                return;
            }
        }
        if h.len > dir.max_frame_size {
            emit.problem("http2_bad_frame");
            self.lose_framing(side, emit);
            self.direction(side).hunt_after_bad_header();
            return;
        }
        let dir = self.direction(side);
        if dir.pending.is_some() && h.kind != kind::CONTINUATION {
            emit.problem("http2_bad_frame");
            self.drop_pending_block(side);
        }
        let dir = self.direction(side);
        match h.kind {
            kind::DATA => {
                if h.stream == 0 {
                    emit.problem("http2_bad_frame");
                    dir.read = Read::Skip { left: h.len };
                } else {
                    let frame_ts = dir.frame_ts;
                    self.streams.data_start(side, h.stream, frame_ts, emit);
                    if h.has(flag::PADDED) && h.len == 0 {
                        emit.problem("http2_bad_frame");
                        self.streams.mark(h.stream, "bad_frame");
                        self.direction(side).read = Read::Header;
                    } else if h.has(flag::PADDED) {
                        self.direction(side).read = Read::DataPadLength(h);
                    } else {
                        let dir = self.direction(side);
                        dir.read = Read::DataBody {
                            stream: h.stream,
                            data_left: h.len,
                            pad_left: 0,
                            end_stream: h.has(flag::END_STREAM),
                        };
                        self.finish_data_if_done(side, ts, emit);
                    }
                }
            }
            kind::HEADERS
            | kind::CONTINUATION
            | kind::PUSH_PROMISE
            | kind::RST_STREAM
            | kind::SETTINGS
            | kind::GOAWAY => {
                if h.len as usize > MAX_BUFFERED_PAYLOAD {
                    emit.problem("http2_frame_too_large");
                    dir.read = Read::Skip { left: h.len };
                    if matches!(
                        h.kind,
                        kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE
                    ) {
                        let stream = dir.pending.map_or(h.stream, |p| p.stream);
                        self.lose_header_block(side, stream);
                    }
                } else if h.len == 0 {
                    dir.read = Read::Header;
                    self.frame(side, h, &[], ts, emit);
                } else {
                    dir.read = Read::Payload(h);
                }
            }
            _ => {
                let bad_len = match h.kind {
                    kind::PRIORITY => h.len != 5,
                    kind::PING => h.len != 8,
                    kind::WINDOW_UPDATE => h.len != 4,
                    _ => false,
                };
                if bad_len {
                    emit.problem("http2_bad_frame");
                }
                dir.read = if h.len == 0 {
                    Read::Header
                } else {
                    Read::Skip { left: h.len }
                };
            }
        }
    }

    /// A whole non-DATA frame.
    fn frame(&mut self, side: Side, h: FrameHeader, payload: &[u8], ts: u64, emit: &mut Emit) {
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => self.headers_frame(side, h, payload, ts, emit),
            kind::CONTINUATION => self.continuation_frame(side, h, payload, ts, emit),
            kind::RST_STREAM => {
                if h.stream == 0 || payload.len() != 4 {
                    emit.problem("http2_bad_frame");
                } else {
                    self.streams.reset(h.stream, emit);
                }
            }
            kind::SETTINGS => self.settings_frame(side, h, payload, emit),
            kind::GOAWAY => {
                let last = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_be_bytes(b) & 0x7fff_ffff);
                match last {
                    Some(last) if h.stream == 0 => {
                        if side == Side::Server {
                            self.streams.goaway(last, emit);
                        }
                    }
                    _ => emit.problem("http2_bad_frame"),
                }
            }
            _ => {}
        }
    }

    fn headers_frame(
        &mut self,
        side: Side,
        h: FrameHeader,
        payload: &[u8],
        ts: u64,
        emit: &mut Emit,
    ) {
        let push = h.kind == kind::PUSH_PROMISE;
        if h.stream == 0 || (push && side == Side::Client) {
            emit.problem("http2_bad_frame");
            self.lose_header_block(side, h.stream);
            return;
        }
        let mut body = payload;
        let mut pad = 0usize;
        if h.has(flag::PADDED) {
            pad = usize::from(body.first().copied().unwrap_or(0));
            body = body.get(1..).unwrap_or_default();
        }
        let skip = if push {
            4
        } else if h.has(flag::PRIORITY) {
            5
        } else {
            0
        };
        let fragment = body
            .get(skip..)
            .and_then(|b| b.get(..b.len().checked_sub(pad)?));
        let Some(fragment) = fragment else {
            emit.problem("http2_bad_frame");
            self.lose_header_block(side, h.stream);
            return;
        };
        let pending = PendingBlock {
            stream: h.stream,
            end_stream: !push && h.has(flag::END_STREAM),
            push,
            ts: self.direction(side).frame_ts,
        };
        if h.has(flag::END_HEADERS) {
            self.header_block(side, pending, fragment, ts, emit);
        } else {
            let dir = self.direction(side);
            dir.block.clear();
            dir.block.extend_from_slice(fragment);
            dir.pending = Some(pending);
        }
    }

    fn continuation_frame(
        &mut self,
        side: Side,
        h: FrameHeader,
        payload: &[u8],
        ts: u64,
        emit: &mut Emit,
    ) {
        let dir = self.direction(side);
        let Some(pending) = dir.pending.filter(|p| p.stream == h.stream) else {
            // Right after a resync, a CONTINUATION of a block we missed is expected.
            if dir.from_start || dir.pending.is_some() {
                emit.problem("http2_bad_frame");
            }
            self.drop_pending_block(side);
            return;
        };
        if dir.block.len() + payload.len() > MAX_HEADER_BLOCK {
            emit.problem("http2_header_block_too_large");
            self.drop_pending_block(side);
            return;
        }
        dir.block.extend_from_slice(payload);
        if h.has(flag::END_HEADERS) {
            dir.pending = None;
            let block = std::mem::take(&mut dir.block);
            self.header_block(side, pending, &block, ts, emit);
            let dir = self.direction(side);
            dir.block = block;
            dir.block.clear();
        }
    }

    /// A complete header block: decode it (always, to keep HPACK in step) and apply it.
    fn header_block(
        &mut self,
        side: Side,
        pending: PendingBlock,
        block: &[u8],
        ts: u64,
        emit: &mut Emit,
    ) {
        if side == Side::Server && self.start == Start::Unknown {
            // A response before any client byte: we cannot have seen the connection start.
            self.missed_start();
        }
        let mut fields = BlockFields::default();
        let redaction = &self.streams.redaction;
        let hpack = match side {
            Side::Client => &mut self.client.hpack,
            Side::Server => &mut self.server.hpack,
        };
        if hpack
            .decode_with(block, |name, value| fields.add(name, value, redaction))
            .is_err()
        {
            emit.problem("http2_hpack_error");
            fields.hpack_error = true;
        }
        if !pending.push {
            self.streams.headers(side, pending, ts, fields, emit);
        }
    }

    fn settings_frame(&mut self, side: Side, h: FrameHeader, payload: &[u8], emit: &mut Emit) {
        if h.stream != 0
            || !payload.len().is_multiple_of(6)
            || (h.has(flag::ACK) && !payload.is_empty())
        {
            emit.problem("http2_bad_frame");
            return;
        }
        // Settings bound what the peer sends.
        let peer = self.direction(side.peer());
        for setting in payload.chunks_exact(6) {
            let (Some(id), Some(value)) = (
                setting.get(..2).and_then(|b| <[u8; 2]>::try_from(b).ok()),
                setting.get(2..).and_then(|b| <[u8; 4]>::try_from(b).ok()),
            ) else {
                continue;
            };
            let value = u32::from_be_bytes(value);
            match u16::from_be_bytes(id) {
                SETTINGS_HEADER_TABLE_SIZE => peer.hpack.set_max_allowed(value as usize),
                SETTINGS_MAX_FRAME_SIZE => {
                    if (DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) {
                        peer.max_frame_size = value;
                    } else {
                        emit.problem("http2_bad_frame");
                    }
                }
                _ => {}
            }
        }
    }

    /// A header block on `side` was lost or cannot be decoded: HPACK may have missed
    /// insertions, and the stream it belonged to lost its headers.
    fn lose_header_block(&mut self, side: Side, stream: u32) {
        let dir = self.direction(side);
        dir.pending = None;
        dir.block.clear();
        dir.hpack.forget_history();
        self.streams.mark(stream, "hpack_unknown");
    }

    fn drop_pending_block(&mut self, side: Side) {
        if let Some(pending) = self.direction(side).pending {
            self.lose_header_block(side, pending.stream);
        }
    }

    /// Bytes of `side` were lost or framing broke: every stream still sending on that side
    /// may have lost bytes, and HPACK may have missed insertions.
    fn lose_framing(&mut self, side: Side, emit: &mut Emit) {
        if side == Side::Client && self.start == Start::Unknown {
            self.missed_start();
        }
        let dir = self.direction(side);
        dir.pending = None;
        dir.block.clear();
        dir.hpack.forget_history();
        self.streams.lost(side);
        emit.problem("http2_resync");
    }
}

impl StreamDecoder for Http2Decoder {
    fn data(&mut self, side: Side, bytes: &[u8], ts_ns: u64, emit: &mut Emit) {
        self.feed(side, bytes, ts_ns, emit);
    }

    fn gap(&mut self, side: Side, len: u64, ts_ns: u64, emit: &mut Emit) {
        let dir = self.direction(side);
        match dir.read {
            // Inside a DATA frame: framing survives, only that stream lost body bytes.
            Read::DataBody {
                stream,
                data_left,
                pad_left,
                end_stream,
            } if u64::from(data_left) + u64::from(pad_left) >= len => {
                let lost_data = u64::from(data_left).min(len) as u32;
                let lost_pad = (len - u64::from(lost_data)) as u32;
                dir.read = Read::DataBody {
                    stream,
                    data_left: data_left - lost_data,
                    pad_left: pad_left - lost_pad,
                    end_stream,
                };
                self.streams.lost_data(side, stream, lost_data);
                self.finish_data_if_done(side, ts_ns, emit);
            }
            Read::Skip { left } if u64::from(left) >= len => {
                let left = left - len as u32;
                dir.read = if left == 0 {
                    Read::Header
                } else {
                    Read::Skip { left }
                };
            }
            _ => {
                self.lose_framing(side, emit);
                let dir = self.direction(side);
                dir.buf.clear();
                dir.hunt();
            }
        }
    }

    fn close(&mut self, _ts_ns: u64, emit: &mut Emit) {
        self.streams.close_all(emit);
    }
}

/// What a header block says, as far as it could be decoded.
#[derive(Debug, Default)]
struct BlockFields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    host: Option<String>,
    status: Option<u32>,
    grpc_content_type: bool,
    grpc_status: Option<u32>,
    kept: Vec<(String, String)>,
    /// Any pseudo-header field was seen.
    pseudo: bool,
    /// Some field's name or value could not be known.
    unknown: bool,
    /// The block could not be decoded to its end.
    hpack_error: bool,
}

impl BlockFields {
    fn add(&mut self, name: Option<&[u8]>, value: Option<&[u8]>, redaction: &Redaction) {
        let (Some(name), Some(value)) = (name, value) else {
            self.unknown = true;
            return;
        };
        let text = || String::from_utf8_lossy(value).into_owned();
        if name.first() == Some(&b':') {
            self.pseudo = true;
            match name {
                b":method" => self.method = Some(text()),
                b":path" => self.path = Some(redaction.path(&text())),
                b":authority" => self.authority = Some(text()),
                b":status" => self.status = parse_u32(value),
                _ => {}
            }
            return;
        }
        match name {
            b"content-type" => self.grpc_content_type = value.starts_with(b"application/grpc"),
            b"grpc-status" => self.grpc_status = parse_u32(value),
            b"host" => self.host = Some(text()),
            _ => {}
        }
        if self.kept.len() >= MAX_KEPT_HEADERS {
            return;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let keep = KEPT_HEADERS.contains(&name.as_str());
        if keep || redaction.is_sensitive(&name) {
            let value = redaction.header_value(&name, &text());
            self.kept.push((name, truncate(value, MAX_HEADER_VALUE)));
        }
    }
}

fn parse_u32(value: &[u8]) -> Option<u32> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// gRPC length-prefixed message framing of one direction of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum GrpcFraming {
    /// The direction's first bytes were not seen: messages cannot be found.
    #[default]
    Unaligned,
    /// Reading a 5-byte prefix, `have` bytes of it seen (length bytes so far in `len`).
    Prefix { have: u8, len: u32 },
    /// Inside a message body.
    Body { left: u32 },
    /// A prefix had a compressed flag other than 0 or 1.
    Bad,
    /// Bytes of the direction were lost.
    Lost,
}

#[derive(Debug, Clone, Copy, Default)]
struct GrpcMessages {
    framing: GrpcFraming,
    count: u64,
}

impl GrpcMessages {
    fn start(&mut self) {
        if self.framing == GrpcFraming::Unaligned {
            self.framing = GrpcFraming::Prefix { have: 0, len: 0 };
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.framing {
                GrpcFraming::Prefix { have, len } => {
                    let Some((&b, rest)) = bytes.split_first() else {
                        return;
                    };
                    bytes = rest;
                    self.framing = match have {
                        0 if b > 1 => GrpcFraming::Bad,
                        0 => GrpcFraming::Prefix { have: 1, len: 0 },
                        1..=3 => GrpcFraming::Prefix {
                            have: have + 1,
                            len: (len << 8) | u32::from(b),
                        },
                        _ => {
                            let len = (len << 8) | u32::from(b);
                            if len == 0 {
                                self.count += 1;
                                GrpcFraming::Prefix { have: 0, len: 0 }
                            } else {
                                GrpcFraming::Body { left: len }
                            }
                        }
                    };
                }
                GrpcFraming::Body { left } => {
                    let n = (left as usize).min(bytes.len());
                    bytes = bytes.get(n..).unwrap_or_default();
                    let left = left - n as u32;
                    self.framing = if left == 0 {
                        self.count += 1;
                        GrpcFraming::Prefix { have: 0, len: 0 }
                    } else {
                        GrpcFraming::Body { left }
                    };
                }
                GrpcFraming::Unaligned | GrpcFraming::Bad | GrpcFraming::Lost => return,
            }
        }
    }

    /// Whether the framing is broken or ended inside a message.
    fn bad_at_end(&self) -> bool {
        match self.framing {
            GrpcFraming::Bad | GrpcFraming::Body { .. } => true,
            GrpcFraming::Prefix { have, .. } => have > 0,
            GrpcFraming::Unaligned | GrpcFraming::Lost => false,
        }
    }

    /// Messages seen, when the whole direction was followed.
    fn reported(&self) -> u64 {
        match self.framing {
            GrpcFraming::Unaligned | GrpcFraming::Lost => 0,
            _ => self.count,
        }
    }
}

/// One stream being followed.
#[derive(Debug, Default)]
struct Stream {
    /// When the stream's first frame was seen.
    first_ns: u64,
    request_ns: Option<u64>,
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    headers: Vec<(String, String)>,
    status: Option<u32>,
    grpc_seen: bool,
    grpc_status: Option<u32>,
    request_headers: bool,
    response_headers: bool,
    request_ended: bool,
    response_ended: bool,
    /// Client DATA was seen before any request headers.
    request_data_first: bool,
    response_ns: Option<u64>,
    response_end_ns: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
    request_messages: GrpcMessages,
    response_messages: GrpcMessages,
    incomplete: Option<&'static str>,
}

impl Stream {
    fn mark(&mut self, reason: &'static str) {
        self.incomplete.get_or_insert(reason);
    }
}

/// Why a stream is being turned into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Ended,
    Reset,
    GoAway,
    Evicted,
    Closed,
}

/// The connection's open streams.
#[derive(Debug)]
struct StreamTable {
    redaction: Redaction,
    streams: BTreeMap<u32, Stream>,
    recently_closed: VecDeque<u32>,
}

impl StreamTable {
    /// The stream `id`, opened if new. Pushed (even) streams, stream 0 and streams that
    /// just closed have none.
    fn open(&mut self, id: u32, ts: u64, emit: &mut Emit) -> Option<&mut Stream> {
        if id.is_multiple_of(2) {
            return None;
        }
        if !self.streams.contains_key(&id) {
            if self.recently_closed.contains(&id) {
                return None;
            }
            if self.streams.len() >= MAX_OPEN_STREAMS
                && let Some((&oldest, _)) = self.streams.first_key_value()
            {
                emit.problem("http2_too_many_streams");
                self.finish(oldest, Finish::Evicted, emit);
            }
            self.streams.insert(
                id,
                Stream {
                    first_ns: ts,
                    ..Stream::default()
                },
            );
        }
        self.streams.get_mut(&id)
    }

    fn mark(&mut self, id: u32, reason: &'static str) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.mark(reason);
        }
    }

    fn headers(
        &mut self,
        side: Side,
        block: PendingBlock,
        now: u64,
        fields: BlockFields,
        emit: &mut Emit,
    ) {
        let Some(stream) = self.open(block.stream, block.ts, emit) else {
            return;
        };
        // A field we could not read may have been any header: the call is not whole.
        if fields.hpack_error || fields.unknown {
            stream.mark("hpack_unknown");
        }
        match side {
            Side::Client => {
                let is_request = !stream.request_headers
                    && (fields.pseudo
                        || (!stream.request_data_first && (fields.unknown || !block.end_stream)));
                if is_request {
                    stream.request_headers = true;
                    stream.request_ns = Some(block.ts);
                    stream.request_messages.start();
                    let connect = fields.method.as_deref() == Some("CONNECT");
                    if fields.method.is_none() || (fields.path.is_none() && !connect) {
                        if fields.unknown {
                            stream.mark("hpack_unknown");
                        } else {
                            emit.problem("http2_bad_headers");
                            stream.mark("bad_headers");
                        }
                    }
                    stream.method = fields.method;
                    stream.path = fields.path;
                    stream.authority = fields.authority.or(fields.host);
                    stream.headers = fields.kept;
                    stream.grpc_seen |= fields.grpc_content_type;
                } else if !stream.request_headers {
                    // Trailers of a request whose headers we never saw.
                    stream.mark("missed_headers");
                }
                if block.end_stream {
                    stream.request_ended = true;
                }
            }
            Side::Server => {
                if fields.status.is_some_and(|s| (100..200).contains(&s)) {
                    return;
                }
                let is_response = !stream.response_headers
                    && (fields.status.is_some() || fields.unknown || !block.end_stream);
                if is_response {
                    stream.response_headers = true;
                    stream.response_ns = Some(block.ts);
                    stream.response_messages.start();
                    if fields.status.is_none() {
                        if fields.unknown {
                            stream.mark("hpack_unknown");
                        } else {
                            emit.problem("http2_bad_headers");
                            stream.mark("bad_headers");
                        }
                    }
                    stream.status = fields.status;
                    stream.grpc_seen |= fields.grpc_content_type;
                } else if !stream.response_headers {
                    // Trailers of a response whose headers we never saw.
                    stream.mark("missed_headers");
                }
                if !stream.request_headers {
                    stream.mark("missed_headers");
                }
                if fields.grpc_status.is_some() {
                    stream.grpc_status = fields.grpc_status;
                    stream.grpc_seen = true;
                }
                if block.end_stream {
                    stream.response_ended = true;
                    stream.response_end_ns = Some(now);
                }
            }
        }
        self.finish_if_done(block.stream, emit);
    }

    /// A DATA frame starts on `id`.
    fn data_start(&mut self, side: Side, id: u32, ts: u64, emit: &mut Emit) {
        let Some(stream) = self.open(id, ts, emit) else {
            return;
        };
        match side {
            Side::Client if !stream.request_headers => {
                stream.request_data_first = true;
                stream.mark("missed_headers");
            }
            Side::Server if !stream.response_headers => stream.mark("missed_headers"),
            _ => {}
        }
    }

    /// DATA payload bytes (padding excluded).
    fn data(&mut self, side: Side, id: u32, bytes: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        match side {
            Side::Client => {
                stream.request_bytes += bytes.len() as u64;
                stream.request_messages.feed(bytes);
            }
            Side::Server => {
                stream.response_bytes += bytes.len() as u64;
                stream.response_messages.feed(bytes);
            }
        }
    }

    /// `len` DATA payload bytes of `id` were lost.
    fn lost_data(&mut self, side: Side, id: u32, len: u32) {
        let Some(stream) = self.streams.get_mut(&id).filter(|_| len > 0) else {
            return;
        };
        stream.mark("gap");
        let (bytes, messages) = match side {
            Side::Client => (&mut stream.request_bytes, &mut stream.request_messages),
            Side::Server => (&mut stream.response_bytes, &mut stream.response_messages),
        };
        *bytes += u64::from(len);
        messages.framing = GrpcFraming::Lost;
    }

    /// Bytes of `side` were lost at an unknown place: every stream still sending on that
    /// side may have lost some.
    fn lost(&mut self, side: Side) {
        for stream in self.streams.values_mut() {
            let ended = match side {
                Side::Client => stream.request_ended,
                Side::Server => stream.response_ended,
            };
            if !ended {
                stream.mark("gap");
                match side {
                    Side::Client => stream.request_messages.framing = GrpcFraming::Lost,
                    Side::Server => stream.response_messages.framing = GrpcFraming::Lost,
                }
            }
        }
    }

    fn end_stream(&mut self, side: Side, id: u32, ts: u64, emit: &mut Emit) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        match side {
            Side::Client => stream.request_ended = true,
            Side::Server => {
                stream.response_ended = true;
                stream.response_end_ns = Some(ts);
            }
        }
        self.finish_if_done(id, emit);
    }

    fn reset(&mut self, id: u32, emit: &mut Emit) {
        self.finish(id, Finish::Reset, emit);
    }

    fn goaway(&mut self, last: u32, emit: &mut Emit) {
        let abandoned: Vec<u32> = self
            .streams
            .range(last.saturating_add(1)..)
            .map(|(&id, _)| id)
            .collect();
        for id in abandoned {
            self.finish(id, Finish::GoAway, emit);
        }
    }

    fn close_all(&mut self, emit: &mut Emit) {
        while let Some((&id, _)) = self.streams.first_key_value() {
            self.finish(id, Finish::Closed, emit);
        }
    }

    fn finish_if_done(&mut self, id: u32, emit: &mut Emit) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.request_ended && s.response_ended)
        {
            self.finish(id, Finish::Ended, emit);
        }
    }

    /// Removes stream `id` and emits its call.
    fn finish(&mut self, id: u32, why: Finish, emit: &mut Emit) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if self.recently_closed.len() >= RECENTLY_CLOSED {
            self.recently_closed.pop_front();
        }
        self.recently_closed.push_back(id);

        if s.grpc_seen && s.grpc_status.is_none() && s.response_ended && s.incomplete.is_none() {
            emit.problem("grpc_missing_status");
        }
        let outcome = match (s.incomplete, why) {
            (Some(reason), _) => Outcome::Incomplete(reason),
            (None, Finish::Ended) => Outcome::Complete,
            (None, Finish::Evicted) => Outcome::Incomplete("evicted"),
            (None, _) if s.response_ended => Outcome::Complete,
            (None, Finish::Reset) => Outcome::Incomplete("reset"),
            (None, Finish::GoAway) => Outcome::Incomplete("goaway"),
            (None, Finish::Closed) if !s.response_headers => Outcome::NoResponse,
            (None, Finish::Closed) => Outcome::Incomplete("unfinished"),
        };
        let grpc = s.grpc_seen.then(|| {
            if s.incomplete.is_none()
                && ((s.request_ended && s.request_messages.bad_at_end())
                    || (s.response_ended && s.response_messages.bad_at_end()))
            {
                emit.problem("grpc_bad_message");
            }
            let (service, method) = s
                .path
                .as_deref()
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.split_once('/'))
                .map(|(service, method)| (service.to_string(), method.to_string()))
                .unwrap_or_default();
            GrpcCall {
                service,
                method,
                status: s.grpc_status,
                request_messages: s.request_messages.reported(),
                response_messages: s.response_messages.reported(),
            }
        });
        emit.calls.push(Call {
            protocol: if grpc.is_some() {
                Protocol::Grpc
            } else {
                Protocol::Http2
            },
            method: s.method.unwrap_or_default(),
            path: s.path.unwrap_or_default(),
            authority: s.authority,
            status: s.status,
            grpc,
            request_ns: s.request_ns.unwrap_or(s.first_ns),
            response_ns: s.response_ns,
            response_end_ns: s.response_end_ns,
            request_bytes: s.request_bytes,
            response_bytes: s.response_bytes,
            headers: s.headers,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::REDACTED;
    use crate::hpack::test_encoder::{Encoder, Repr};
    use proptest::prelude::*;

    const END_STREAM: u8 = flag::END_STREAM;
    const END_HEADERS: u8 = flag::END_HEADERS;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn block(enc: &mut Encoder, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            enc.field(n.as_bytes(), v.as_bytes(), Repr::Indexed, &mut out);
        }
        out
    }

    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in pairs {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(kind::SETTINGS, 0, 0, &payload)
    }

    fn grpc_message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// The two sides of a connection under construction, each with its HPACK encoder.
    struct Conn {
        client_enc: Encoder,
        server_enc: Encoder,
        events: Vec<(Side, Vec<u8>, u64)>,
        ts: u64,
    }

    impl Conn {
        fn new() -> Conn {
            let mut c = Conn {
                client_enc: Encoder::new(4096),
                server_enc: Encoder::new(4096),
                events: Vec::new(),
                ts: 0,
            };
            let mut preface = PREFACE.to_vec();
            preface.extend(settings(&[(0x3, 100)]));
            c.send(Side::Client, preface);
            c.send(Side::Server, settings(&[]));
            c.send(Side::Client, frame(kind::SETTINGS, flag::ACK, 0, &[]));
            c
        }

        fn send(&mut self, side: Side, bytes: Vec<u8>) {
            self.ts += 10;
            self.events.push((side, bytes, self.ts));
        }

        fn headers(&mut self, side: Side, stream: u32, flags: u8, fields: &[(&str, &str)]) {
            let enc = match side {
                Side::Client => &mut self.client_enc,
                Side::Server => &mut self.server_enc,
            };
            let b = block(enc, fields);
            self.send(side, frame(kind::HEADERS, flags | END_HEADERS, stream, &b));
        }

        fn data(&mut self, side: Side, stream: u32, flags: u8, payload: &[u8]) {
            self.send(side, frame(kind::DATA, flags, stream, payload));
        }

        fn bytes(&self, side: Side) -> Vec<u8> {
            self.events
                .iter()
                .filter(|e| e.0 == side)
                .flat_map(|e| e.1.clone())
                .collect()
        }
    }

    fn run(events: &[(Side, Vec<u8>, u64)]) -> Emit {
        let mut d = Http2Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        for (side, bytes, ts) in events {
            d.data(*side, bytes, *ts, &mut emit);
        }
        d.close(u64::MAX, &mut emit);
        emit
    }

    fn call(method: &str, path: &str, status: Option<u32>) -> Call {
        Call {
            protocol: Protocol::Http2,
            method: method.into(),
            path: path.into(),
            authority: Some("example.com".into()),
            status,
            grpc: None,
            request_ns: 0,
            response_ns: None,
            response_end_ns: None,
            request_bytes: 0,
            response_bytes: 0,
            headers: vec![],
            outcome: Outcome::Complete,
        }
    }

    fn get_and_post() -> Conn {
        let mut c = Conn::new();
        c.headers(
            Side::Client,
            1,
            END_STREAM,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index?token=abc&x=1"),
                (":authority", "example.com"),
                ("user-agent", "test/1"),
                ("authorization", "Bearer secret"),
                ("accept", "*/*"),
            ],
        ); // ts 40
        c.headers(
            Side::Client,
            3,
            0,
            &[
                (":method", "POST"),
                (":scheme", "https"),
                (":path", "/upload"),
                (":authority", "example.com"),
                ("user-agent", "test/1"),
                ("content-type", "text/plain"),
            ],
        ); // ts 50
        c.data(Side::Client, 3, 0, b"hello "); // 60
        c.data(Side::Client, 3, END_STREAM, b"world"); // 70
        c.headers(
            Side::Server,
            1,
            0,
            &[(":status", "200"), ("content-type", "text/html")],
        ); // 80
        c.data(Side::Server, 1, END_STREAM, b"<html></html>"); // 90
        c.headers(Side::Server, 3, END_STREAM, &[(":status", "201")]); // 100
        c
    }

    fn get_and_post_calls() -> Vec<Call> {
        vec![
            Call {
                request_ns: 40,
                response_ns: Some(80),
                response_end_ns: Some(90),
                response_bytes: 13,
                headers: vec![
                    ("user-agent".into(), "test/1".into()),
                    ("authorization".into(), REDACTED.into()),
                ],
                ..call("GET", "/index?token=[redacted]&x=1", Some(200))
            },
            Call {
                request_ns: 50,
                response_ns: Some(100),
                response_end_ns: Some(100),
                request_bytes: 11,
                headers: vec![
                    ("user-agent".into(), "test/1".into()),
                    ("content-type".into(), "text/plain".into()),
                ],
                ..call("POST", "/upload", Some(201))
            },
        ]
    }

    #[test]
    fn get_and_post_with_data() {
        let emit = run(&get_and_post().events);
        assert_eq!(emit.calls, get_and_post_calls());
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
    }

    #[test]
    fn every_two_or_three_chunk_split_gives_the_same_calls() {
        let c = get_and_post();
        let client = c.bytes(Side::Client);
        let server = c.bytes(Side::Server);
        let at_one_time = |client_chunks: &[&[u8]], server_chunks: &[&[u8]]| {
            let mut d = Http2Decoder::new(Redaction::default());
            let mut emit = Emit::default();
            for chunk in client_chunks {
                d.data(Side::Client, chunk, 7, &mut emit);
            }
            for chunk in server_chunks {
                d.data(Side::Server, chunk, 7, &mut emit);
            }
            d.close(7, &mut emit);
            emit
        };
        let whole = at_one_time(&[&client], &[&server]);
        assert_eq!(whole.calls.len(), 2);
        assert!(whole.problems.is_empty());
        for (bytes, side) in [(&client, Side::Client), (&server, Side::Server)] {
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    let parts: [&[u8]; 3] = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                    let got = match side {
                        Side::Client => at_one_time(&parts, &[&server]),
                        Side::Server => at_one_time(&[&client], &parts),
                    };
                    assert_eq!(got.calls, whole.calls, "{side:?} split at {i}, {j}");
                    assert!(got.problems.is_empty());
                }
            }
        }
    }

    #[test]
    fn concurrent_streams_interleaved() {
        let mut c = Conn::new();
        let req = |path| {
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "example.com"),
            ]
        };
        c.headers(Side::Client, 1, 0, &req("/a"));
        c.headers(Side::Client, 3, 0, &req("/b"));
        c.data(Side::Client, 3, 0, b"bb");
        c.data(Side::Client, 1, 0, b"a");
        c.data(Side::Client, 3, END_STREAM, b"b");
        c.headers(Side::Server, 3, 0, &[(":status", "202")]);
        c.data(Side::Client, 1, END_STREAM, b"aa");
        c.headers(Side::Server, 1, 0, &[(":status", "200")]);
        c.data(Side::Server, 1, 0, b"xx");
        c.data(Side::Server, 3, END_STREAM, b"yyyy");
        c.data(Side::Server, 1, END_STREAM, b"x");
        let emit = run(&c.events);
        let summary: Vec<_> = emit
            .calls
            .iter()
            .map(|c| {
                (
                    c.path.as_str(),
                    c.status,
                    c.request_bytes,
                    c.response_bytes,
                    c.outcome,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/b", Some(202), 3, 4, Outcome::Complete),
                ("/a", Some(200), 3, 3, Outcome::Complete),
            ]
        );
    }

    #[test]
    fn continuation_and_padding() {
        let mut c = Conn::new();
        let b = block(
            &mut c.client_enc,
            &[
                (":method", "PUT"),
                (":scheme", "https"),
                (":path", "/padded/and/continued"),
                (":authority", "example.com"),
                ("x-request-id", "r-42"),
            ],
        );
        // HEADERS with padding and priority, then two CONTINUATIONs.
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 16]); // exclusive dependency on 0, weight
        payload.extend_from_slice(&b[..5]);
        payload.extend_from_slice(&[0, 0, 0]);
        c.send(
            Side::Client,
            frame(kind::HEADERS, flag::PADDED | flag::PRIORITY, 1, &payload),
        );
        c.send(Side::Client, frame(kind::CONTINUATION, 0, 1, &b[5..9]));
        c.send(
            Side::Client,
            frame(kind::CONTINUATION, END_HEADERS, 1, &b[9..]),
        );
        // Padded DATA: 4 data bytes, 6 padding bytes.
        let mut data = vec![6];
        data.extend_from_slice(b"body");
        data.extend_from_slice(&[0; 6]);
        c.send(
            Side::Client,
            frame(kind::DATA, flag::PADDED | END_STREAM, 1, &data),
        );
        let b = block(&mut c.server_enc, &[(":status", "204")]);
        let mut payload = vec![2];
        payload.extend_from_slice(&b);
        payload.extend_from_slice(&[0, 0]);
        c.send(
            Side::Server,
            frame(
                kind::HEADERS,
                flag::PADDED | END_HEADERS | END_STREAM,
                1,
                &payload,
            ),
        );
        let emit = run(&c.events);
        assert_eq!(
            emit.calls,
            vec![Call {
                request_ns: 40,
                response_ns: Some(80),
                response_end_ns: Some(80),
                request_bytes: 4,
                headers: vec![("x-request-id".into(), "r-42".into())],
                ..call("PUT", "/padded/and/continued", Some(204))
            }]
        );
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
    }

    #[test]
    fn reset_stream_without_response_is_incomplete() {
        let mut c = Conn::new();
        c.headers(
            Side::Client,
            1,
            END_STREAM,
            &[
                (":method", "GET"),
                (":path", "/slow"),
                (":authority", "example.com"),
            ],
        );
        c.send(
            Side::Server,
            frame(kind::RST_STREAM, 0, 1, &8u32.to_be_bytes()),
        );
        // A frame still in flight for the reset stream opens no new call.
        c.data(Side::Client, 1, 0, b"late");
        let emit = run(&c.events);
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].outcome, Outcome::Incomplete("reset"));
        assert_eq!(emit.calls[0].path, "/slow");
        assert_eq!(emit.calls[0].status, None);
    }

    fn grpc_request(c: &mut Conn, stream: u32, path: &str) {
        c.headers(
            Side::Client,
            stream,
            0,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "example.com"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
                ("grpc-timeout", "1S"),
            ],
        );
    }

    #[test]
    fn grpc_trailers_only_error() {
        let mut c = Conn::new();
        grpc_request(&mut c, 1, "/pkg.Users/Get");
        c.data(Side::Client, 1, END_STREAM, &grpc_message(b"\x08\x01"));
        c.headers(
            Side::Server,
            1,
            END_STREAM,
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "not found"),
            ],
        );
        let emit = run(&c.events);
        assert_eq!(emit.calls.len(), 1);
        let call = &emit.calls[0];
        assert_eq!(call.protocol, Protocol::Grpc);
        assert_eq!(call.status, Some(200));
        assert_eq!(
            call.grpc,
            Some(GrpcCall {
                service: "pkg.Users".into(),
                method: "Get".into(),
                status: Some(5),
                request_messages: 1,
                response_messages: 0,
            })
        );
        assert!(call.is_error());
        assert_eq!(call.outcome, Outcome::Complete);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
    }

    #[test]
    fn grpc_unary_with_messages_split_across_frames() {
        let mut c = Conn::new();
        grpc_request(&mut c, 1, "/pkg.Echo/Say");
        let mut wire = grpc_message(b"0123456789");
        wire.extend(grpc_message(b"abc"));
        assert_eq!(wire.len(), 23);
        c.data(Side::Client, 1, 0, &wire[..7]); // prefix and 2 body bytes
        c.data(Side::Client, 1, 0, &wire[7..17]); // rest of body 1, 2 prefix bytes
        c.data(Side::Client, 1, END_STREAM, &wire[17..]);
        c.headers(
            Side::Server,
            1,
            0,
            &[(":status", "200"), ("content-type", "application/grpc")],
        );
        c.data(Side::Server, 1, 0, &grpc_message(b"reply"));
        c.headers(Side::Server, 1, END_STREAM, &[("grpc-status", "0")]);
        let emit = run(&c.events);
        assert_eq!(emit.calls.len(), 1);
        let call = &emit.calls[0];
        assert_eq!(
            call.grpc,
            Some(GrpcCall {
                service: "pkg.Echo".into(),
                method: "Say".into(),
                status: Some(0),
                request_messages: 2,
                response_messages: 1,
            })
        );
        assert_eq!((call.request_bytes, call.response_bytes), (23, 10));
        assert_eq!(
            call.headers,
            vec![
                (
                    "content-type".to_string(),
                    "application/grpc+proto".to_string()
                ),
                ("grpc-timeout".to_string(), "1S".to_string()),
            ]
        );
        assert!(!call.is_error());
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
    }

    #[test]
    fn grpc_message_cut_short_is_counted() {
        let mut c = Conn::new();
        grpc_request(&mut c, 1, "/pkg.Echo/Say");
        c.data(
            Side::Client,
            1,
            END_STREAM,
            &grpc_message(b"0123456789")[..8],
        );
        c.headers(
            Side::Server,
            1,
            END_STREAM,
            &[(":status", "200"), ("grpc-status", "13")],
        );
        let emit = run(&c.events);
        assert_eq!(emit.problems.get("grpc_bad_message"), Some(&1));
    }

    /// Four requests whose later header blocks refer to dynamic-table entries.
    fn repeated_requests() -> (Conn, Vec<Call>) {
        let mut c = Conn::new();
        let mut truth = Vec::new();
        for (i, status) in [(1u32, "200"), (3, "404"), (5, "500"), (7, "201")] {
            let path = format!("/item/{i}");
            c.headers(
                Side::Client,
                i,
                END_STREAM,
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", &path),
                    (":authority", "example.com"),
                    ("user-agent", "repeat/1"),
                ],
            );
            c.headers(
                Side::Server,
                i,
                0,
                &[(":status", status), ("content-type", "text/plain")],
            );
            c.data(Side::Server, i, END_STREAM, b"ok");
            truth.push((path, status.parse().ok()));
        }
        let calls = truth
            .into_iter()
            .map(|(path, status)| call("GET", &path, status))
            .collect();
        (c, calls)
    }

    /// Every field a call reports is the truth or empty, and a Complete call is all truth.
    fn assert_never_wrong(got: &Call, truth: &[Call]) {
        if got.outcome == Outcome::Complete {
            let t = truth.iter().find(|t| t.path == got.path);
            let t = t.unwrap_or_else(|| panic!("complete call with unknown path {got:?}"));
            assert_eq!(
                (&got.method, got.status, &got.authority),
                (&t.method, t.status, &t.authority)
            );
            return;
        }
        assert!(matches!(
            got.outcome,
            Outcome::Incomplete(_) | Outcome::NoResponse
        ));
        if !got.path.is_empty() {
            let t = truth.iter().find(|t| t.path == got.path);
            let t = t.unwrap_or_else(|| panic!("wrong path {got:?}"));
            assert!(got.method.is_empty() || got.method == t.method, "{got:?}");
            assert!(got.status.is_none() || got.status == t.status, "{got:?}");
        } else {
            assert!(got.method.is_empty() || got.method == "GET", "{got:?}");
            assert!(
                got.status.is_none() || truth.iter().any(|t| t.status == got.status),
                "{got:?}"
            );
        }
    }

    #[test]
    fn mid_stream_starts_are_incomplete_or_right_never_wrong() {
        let (c, truth) = repeated_requests();
        let full = run(&c.events);
        assert_eq!(full.calls.len(), 4);
        for (got, want) in full.calls.iter().zip(&truth) {
            assert_eq!(
                (&got.path, got.status, got.outcome),
                (&want.path, want.status, Outcome::Complete)
            );
        }
        let client = c.bytes(Side::Client);
        let server = c.bytes(Side::Server);
        let mut complete_somewhere = 0;
        for skip in 1..client.len() {
            for server_skip in [0, skip.min(server.len() - 1)] {
                let mut d = Http2Decoder::new(Redaction::default());
                let mut emit = Emit::default();
                d.data(Side::Client, &client[skip..], 1, &mut emit);
                d.data(Side::Server, &server[server_skip..], 2, &mut emit);
                d.close(3, &mut emit);
                for got in &emit.calls {
                    assert_never_wrong(got, &truth);
                    if got.outcome == Outcome::Complete {
                        complete_somewhere += 1;
                    }
                }
            }
        }
        // Joining between requests still decodes later requests whose headers are literals
        // or static: the test would be vacuous otherwise.
        assert!(complete_somewhere > 0);
    }

    #[test]
    fn gap_inside_data_costs_only_that_stream() {
        let mut c = Conn::new();
        let req = |path| {
            [
                (":method", "POST"),
                (":path", path),
                (":authority", "example.com"),
            ]
        };
        c.headers(Side::Client, 1, 0, &req("/big"));
        c.headers(Side::Client, 3, 0, &req("/small"));
        let big = frame(kind::DATA, END_STREAM, 1, &[7; 1000]);
        c.send(Side::Client, big[..109].to_vec());
        let before_gap = c.events.len();
        c.send(Side::Client, big[809..].to_vec());
        c.data(Side::Client, 3, END_STREAM, b"s");
        c.headers(Side::Server, 1, END_STREAM, &[(":status", "200")]);
        c.headers(Side::Server, 3, END_STREAM, &[(":status", "200")]);
        let mut d = Http2Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        for (i, (side, bytes, ts)) in c.events.iter().enumerate() {
            if i == before_gap {
                d.gap(Side::Client, 700, *ts, &mut emit);
            }
            d.data(*side, bytes, *ts, &mut emit);
        }
        d.close(1000, &mut emit);
        let summary: Vec<_> = emit
            .calls
            .iter()
            .map(|c| (c.path.as_str(), c.request_bytes, c.outcome))
            .collect();
        assert_eq!(
            summary,
            [
                ("/big", 1000, Outcome::Incomplete("gap")),
                ("/small", 1, Outcome::Complete),
            ]
        );
    }

    #[test]
    fn gap_across_headers_resyncs_and_never_guesses() {
        let (c, truth) = repeated_requests();
        // Lose the client's second request (its HEADERS inserted nothing new, but the
        // decoder cannot know that) and check the rest.
        let client_events: Vec<usize> = c
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0 == Side::Client)
            .map(|(i, _)| i)
            .collect();
        let lost = client_events[client_events.len() - 3];
        let mut d = Http2Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        for (i, (side, bytes, ts)) in c.events.iter().enumerate() {
            if i == lost {
                d.gap(*side, bytes.len() as u64, *ts, &mut emit);
            } else {
                d.data(*side, bytes, *ts, &mut emit);
            }
        }
        d.close(10_000, &mut emit);
        assert!(emit.calls.len() >= 3, "{:?}", emit.calls);
        for got in &emit.calls {
            assert_never_wrong(got, &truth);
        }
        assert_eq!(emit.calls[0].outcome, Outcome::Complete);
    }

    #[test]
    fn malformed_frames_are_counted() {
        let mut c = Conn::new();
        c.data(Side::Client, 0, 0, b"no stream"); // DATA on stream 0
        c.send(Side::Client, frame(kind::SETTINGS, 0, 0, &[0; 5])); // bad length
        c.send(Side::Client, frame(kind::RST_STREAM, 0, 9, &[0; 3])); // bad length
        c.send(Side::Client, frame(0x42, 0xff, 5, b"unknown type")); // skipped
        c.send(
            Side::Client,
            frame(kind::DATA, flag::PADDED, 11, &[9, 1, 2]),
        ); // pad > body
        c.headers(
            Side::Client,
            13,
            END_STREAM,
            &[
                (":method", "GET"),
                (":path", "/after"),
                (":authority", "example.com"),
            ],
        );
        c.headers(Side::Server, 13, END_STREAM, &[(":status", "200")]);
        let emit = run(&c.events);
        assert_eq!(emit.problems.get("http2_bad_frame"), Some(&4));
        let after: Vec<_> = emit.calls.iter().filter(|c| c.path == "/after").collect();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].outcome, Outcome::Complete);
    }

    #[test]
    fn oversized_frame_resyncs() {
        let mut c = Conn::new();
        let mut huge = frame(kind::DATA, 0, 1, &[]);
        huge[..3].copy_from_slice(&[0x01, 0x00, 0x00]); // 65536 > 16384
        c.send(Side::Client, huge);
        c.headers(
            Side::Client,
            3,
            END_STREAM,
            &[
                (":method", "GET"),
                (":path", "/next"),
                (":authority", "example.com"),
            ],
        );
        c.send(Side::Client, frame(kind::PING, 0, 0, &[0; 8]));
        c.headers(Side::Server, 3, END_STREAM, &[(":status", "200")]);
        let emit = run(&c.events);
        assert_eq!(emit.problems.get("http2_bad_frame"), Some(&1));
        // After losing framing the HPACK state is unknown, but these fields are static or
        // literal, so the call decodes.
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].path, "/next");
        assert_eq!(emit.calls[0].outcome, Outcome::Complete);
    }

    #[test]
    fn settings_bound_the_peer() {
        let mut c = Conn::new();
        // The client allows a bigger table and bigger frames; the server uses both.
        c.send(Side::Client, settings(&[(0x1, 8192), (0x5, 32768)]));
        c.headers(
            Side::Client,
            1,
            END_STREAM,
            &[
                (":method", "GET"),
                (":path", "/big"),
                (":authority", "example.com"),
            ],
        );
        let mut b = Vec::new();
        c.server_enc.size_update(8192, &mut b);
        let long = "v".repeat(5000);
        c.server_enc
            .field(b"x-long", long.as_bytes(), Repr::Indexed, &mut b);
        c.server_enc
            .field(b":status", b"200", Repr::Indexed, &mut b);
        c.send(Side::Server, frame(kind::HEADERS, END_HEADERS, 1, &b));
        c.data(Side::Server, 1, END_STREAM, &[1; 20_000]);
        let emit = run(&c.events);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].response_bytes, 20_000);
        assert_eq!(emit.calls[0].status, Some(200));
    }

    #[test]
    fn too_many_streams_evicts_the_oldest() {
        let mut c = Conn::new();
        for i in 0..=MAX_OPEN_STREAMS as u32 {
            c.headers(
                Side::Client,
                2 * i + 1,
                END_STREAM,
                &[
                    (":method", "GET"),
                    (":path", "/"),
                    (":authority", "example.com"),
                ],
            );
        }
        let mut d = Http2Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        for (side, bytes, ts) in &c.events {
            d.data(*side, bytes, *ts, &mut emit);
        }
        assert_eq!(emit.problems.get("http2_too_many_streams"), Some(&1));
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].outcome, Outcome::Incomplete("evicted"));
        d.close(0, &mut emit);
        assert_eq!(emit.calls.len(), MAX_OPEN_STREAMS + 1);
        assert!(
            emit.calls[1..]
                .iter()
                .all(|c| c.outcome == Outcome::NoResponse)
        );
    }

    #[test]
    fn goaway_ends_streams_past_the_last_one() {
        let mut c = Conn::new();
        for i in [1, 3] {
            c.headers(
                Side::Client,
                i,
                END_STREAM,
                &[
                    (":method", "GET"),
                    (":path", "/"),
                    (":authority", "example.com"),
                ],
            );
        }
        let mut goaway = 1u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        c.send(Side::Server, frame(kind::GOAWAY, 0, 0, &goaway));
        let mut d = Http2Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        for (side, bytes, ts) in &c.events {
            d.data(*side, bytes, *ts, &mut emit);
        }
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].outcome, Outcome::Incomplete("goaway"));
    }

    #[test]
    fn looks_like_http2_from_preface_or_frames() {
        let c = get_and_post();
        let client = c.bytes(Side::Client);
        let server = c.bytes(Side::Server);
        assert!(looks_like_http2(&client, &[]));
        assert!(looks_like_http2(&client[..4], &[]));
        assert!(looks_like_http2(&client[40..], &[]));
        assert!(looks_like_http2(&[], &server));
        assert!(!looks_like_http2(
            b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!looks_like_http2(b"PR", b""));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200), 0u64..50),
                0..20,
            ),
        ) {
            let mut d = Http2Decoder::new(Redaction::default());
            let mut emit = Emit::default();
            for (client, bytes, gap) in &chunks {
                let side = if *client { Side::Client } else { Side::Server };
                if *gap == 0 {
                    d.gap(side, 17, 1, &mut emit);
                }
                d.data(side, bytes, 1, &mut emit);
            }
            d.close(2, &mut emit);
        }

        #[test]
        fn mutated_exchanges_never_panic_and_chunks_agree(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let c = get_and_post();
            let mut client = c.bytes(Side::Client);
            let server = c.bytes(Side::Server);
            for (at, byte) in &flips {
                let i = at.index(client.len());
                client[i] ^= byte;
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(client.len())).collect();
            points.sort_unstable();
            let decode = |pieces: Vec<&[u8]>| {
                let mut d = Http2Decoder::new(Redaction::default());
                let mut emit = Emit::default();
                for p in pieces {
                    d.data(Side::Client, p, 5, &mut emit);
                }
                d.data(Side::Server, &server, 5, &mut emit);
                d.close(6, &mut emit);
                emit
            };
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&client[last..p]);
                last = p;
            }
            pieces.push(&client[last..]);
            let split = decode(pieces);
            let whole = decode(vec![&client]);
            prop_assert_eq!(split.calls, whole.calls);
            prop_assert_eq!(split.problems, whole.problems);
        }
    }
}
