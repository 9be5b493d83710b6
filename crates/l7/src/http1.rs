//! HTTP/1.x (RFC 9112) on one connection: request and response heads (parsed with `httparse`,
//! in place when a head arrives whole), body framing (Content-Length, chunked with trailers,
//! read-until-close), keep-alive and pipelining, interim responses, upgrades and tunnels, and
//! the pairing of responses with requests into [`Call`]s.
//!
//! Bodies are counted, never copied; only a head that straddles chunks is buffered (at most
//! [`MAX_HEAD`] bytes).
//!
//! Pairing is kept right after losses. HTTP/1.1 pairs the n-th response with the n-th request,
//! so a lost request (a capture gap, an unreadable head) would shift every later pair. The
//! decoder therefore keeps an upper bound on the responses still to come for requests it could
//! not see (`responses_to_skip`) and pairs nothing while that bound is not zero: a response
//! that arrives before the oldest waiting request was sent is certainly one of those (and
//! lowers the bound); any other response is ambiguous, and the oldest waiting request is
//! emitted as [`Outcome::Incomplete`] without response fields. Lost response bytes whose
//! framing is unknown make every request still waiting for a response head incomplete the
//! same way. Records are right, or incomplete, never wrongly paired.

use std::collections::VecDeque;

use crate::call::{Call, Emit, Outcome, Protocol, REDACTED, Redaction, Side, StreamDecoder};

/// Largest head (request or status line plus header fields) buffered across chunks.
pub const MAX_HEAD: usize = 64 * 1024;

/// Header fields `httparse` reads per head; a head with more is malformed.
const MAX_HEADER_FIELDS: usize = 128;

/// Request headers kept in a call.
const MAX_KEPT_HEADERS: usize = 16;

/// Bytes kept of a header value.
const MAX_HEADER_VALUE: usize = 256;

/// Request headers kept (besides the sensitive ones, which are kept redacted).
const KEPT_HEADERS: [&str; 5] = [
    "host",
    "user-agent",
    "content-type",
    "x-request-id",
    "traceparent",
];

/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// Longest trailer section of a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;

/// Longest method token accepted in a request line.
const MAX_METHOD: usize = 24;

/// Shortest request on the wire (`A / HTTP/1.1\n\n`), to bound how many a gap can hold.
const MIN_REQUEST_LEN: u64 = 14;

/// Bytes kept across chunks while looking for a message start after a loss.
const RESYNC_CARRY: usize = 2048;

/// Longest request target recognised when looking for a request line after a loss.
const RESYNC_TARGET: usize = 1024;

/// Requests waiting for their responses before the oldest is given up on.
const MAX_IN_FLIGHT: usize = 1024;

/// Methods that start a request when resynchronising after a loss.
const METHODS: [&[u8]; 18] = [
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"PURGE",
];

/// Whether the first bytes of a client stream look like an HTTP/1.x request: a known method
/// followed by a space.
pub fn looks_like_http1(client_bytes: &[u8]) -> bool {
    METHODS
        .iter()
        .any(|m| client_bytes.starts_with(m) && client_bytes.get(m.len()) == Some(&b' '))
}

/// Decodes one HTTP/1.x connection into calls (see the module documentation for how losses
/// are handled).
#[derive(Debug)]
pub struct Http1Decoder {
    redaction: Redaction,
    client: Reader,
    server: Reader,
    /// Requests in order, until both their request and response are done.
    queue: VecDeque<Exchange>,
    /// How many exchanges at the front of `queue` have their final response head.
    answered: usize,
    /// Upper bound on responses still to come for requests that were lost or given up on.
    responses_to_skip: u64,
    /// How many waiting requests (after the answered ones) were sent before the losses that
    /// `responses_to_skip` counts: they still pair by order.
    reliable_ahead: usize,
    next_seq: u64,
    /// The exchange whose request body the client side is reading.
    request_body_for: Option<u64>,
    /// The exchange whose response the server side is reading (`None`: an unpaired one).
    response_for: Option<u64>,
    /// The exchange (an upgrade or CONNECT request) whose answer decides whether the
    /// client's next bytes are still HTTP; client bytes wait in `held` until then.
    paused: Option<u64>,
    held: Vec<u8>,
    held_ts: u64,
    /// Client bytes lost (or dropped for space) while paused, before those in `held`.
    held_gap: u64,
    /// The connection switched protocols (101, CONNECT 2xx) or closed: nothing more to do.
    stopped: bool,
}

/// One side's parsing state.
#[derive(Debug)]
struct Reader {
    state: ReadState,
    /// A head that straddles chunks, from its first byte.
    head: Vec<u8>,
    /// When `head`'s first byte was seen.
    head_ts: u64,
    /// `head` holds a whole first line, already checked.
    line_checked: bool,
    /// The head being read was found by resynchronising: it must start with a known method
    /// (client) or `HTTP/1.` (server).
    strict: bool,
    /// No head has been read on this side yet (unreadable first bytes mean a mid-stream start).
    fresh: bool,
    /// When the last bytes of this side were seen.
    last_ts: u64,
    /// While resynchronising: the last bytes scanned, where a message start may begin.
    carry: Vec<u8>,
    /// When `carry`'s latest bytes were seen.
    carry_ts: u64,
}

impl Reader {
    fn new() -> Self {
        Reader {
            state: ReadState::Head,
            head: Vec::new(),
            head_ts: 0,
            line_checked: false,
            strict: false,
            fresh: true,
            last_ts: 0,
            carry: Vec::new(),
            carry_ts: 0,
        }
    }

    fn clear_head(&mut self) {
        self.head.clear();
        self.carry.clear();
        self.line_checked = false;
        self.strict = false;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// At a message boundary, or inside a head (`Reader::head`).
    Head,
    /// Inside a body.
    Body(Body),
    /// Framing lost: scanning for the start of a message (`Reader::carry`).
    Resync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Bytes left of a Content-Length body (never zero).
    Length(u64),
    Chunked(Chunk),
    /// A response delimited by the end of the connection.
    UntilClose,
}

/// Where a chunked body (RFC 9112 7.1) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size {
        value: u64,
        digits: u32,
        /// Past the size: extensions or whitespace, ignored up to the line end.
        ext: bool,
        line: usize,
    },
    /// Bytes left of a chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd { cr: bool },
    /// Trailer fields, up to an empty line.
    Trailer { line: usize, total: usize },
}

/// What one pass of the chunked-body reader did.
struct ChunkStep {
    used: usize,
    body: u64,
    end: ChunkEnd,
}

#[derive(PartialEq, Eq)]
enum ChunkEnd {
    More,
    Done,
    Bad,
}

impl Chunk {
    fn start() -> Self {
        Chunk::Size {
            value: 0,
            digits: 0,
            ext: false,
            line: 0,
        }
    }

    /// Reads as much of `data` as belongs to the body.
    fn feed(&mut self, data: &[u8]) -> ChunkStep {
        let mut i = 0;
        let mut body = 0u64;
        while let Some(&b) = data.get(i) {
            match self {
                Chunk::Size {
                    value,
                    digits,
                    ext,
                    line,
                } => {
                    *line += 1;
                    if *line > MAX_CHUNK_LINE {
                        return ChunkStep {
                            used: i,
                            body,
                            end: ChunkEnd::Bad,
                        };
                    }
                    if b == b'\n' {
                        if *digits == 0 {
                            return ChunkStep {
                                used: i,
                                body,
                                end: ChunkEnd::Bad,
                            };
                        }
                        *self = if *value == 0 {
                            Chunk::Trailer { line: 0, total: 0 }
                        } else {
                            Chunk::Data(*value)
                        };
                    } else if *ext {
                        // chunk-ext: ignored.
                    } else if let Some(d) = char::from(b).to_digit(16) {
                        if *digits >= 15 {
                            return ChunkStep {
                                used: i,
                                body,
                                end: ChunkEnd::Bad,
                            };
                        }
                        *value = *value * 16 + u64::from(d);
                        *digits += 1;
                    } else if matches!(b, b';' | b' ' | b'\t' | b'\r') && *digits > 0 {
                        *ext = true;
                    } else {
                        return ChunkStep {
                            used: i,
                            body,
                            end: ChunkEnd::Bad,
                        };
                    }
                    i += 1;
                }
                Chunk::Data(left) => {
                    let avail = (data.len() - i) as u64;
                    let take = (*left).min(avail);
                    body += take;
                    i += take as usize;
                    *left -= take;
                    if *left == 0 {
                        *self = Chunk::DataEnd { cr: false };
                    }
                }
                Chunk::DataEnd { cr } => {
                    match b {
                        b'\r' if !*cr => *cr = true,
                        b'\n' => *self = Chunk::start(),
                        _ => {
                            return ChunkStep {
                                used: i,
                                body,
                                end: ChunkEnd::Bad,
                            };
                        }
                    }
                    i += 1;
                }
                Chunk::Trailer { line, total } => {
                    i += 1;
                    match b {
                        b'\n' if *line == 0 => {
                            return ChunkStep {
                                used: i,
                                body,
                                end: ChunkEnd::Done,
                            };
                        }
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => {
                            *line += 1;
                            *total += 1;
                            if *total > MAX_TRAILERS {
                                return ChunkStep {
                                    used: i,
                                    body,
                                    end: ChunkEnd::Bad,
                                };
                            }
                        }
                    }
                }
            }
        }
        ChunkStep {
            used: i,
            body,
            end: ChunkEnd::More,
        }
    }
}

/// A request and what is known of its response.
#[derive(Debug)]
struct Exchange {
    seq: u64,
    call: Call,
    is_head: bool,
    is_connect: bool,
    wants_upgrade: bool,
    request_done: bool,
    response_done: bool,
    /// Why the call is incomplete, if it is (the first reason wins).
    incomplete: Option<&'static str>,
}

impl Exchange {
    fn into_call(self) -> Call {
        let mut call = self.call;
        call.outcome = match self.incomplete {
            Some(reason) => Outcome::Incomplete(reason),
            None if self.response_done => Outcome::Complete,
            None => Outcome::NoResponse,
        };
        call
    }
}

/// How a side lost its framing.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// Bytes lost by the capture.
    Gap(u64),
    /// Bytes that cannot start a message.
    Junk,
    /// A head that does not parse.
    Malformed,
    /// A head longer than [`MAX_HEAD`].
    TooLarge,
    /// A chunked body that does not parse.
    BadChunk,
}

/// Framing headers of one head.
#[derive(Debug, Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    invalid: bool,
}

impl Framing {
    fn observe(&mut self, name: &str, value: &[u8]) {
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let digits = part.trim_ascii();
                let parsed = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<u64>().ok());
                match (parsed, self.content_length) {
                    (Some(n), None) => self.content_length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    _ => self.invalid = true,
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
            // The last coding of the last field decides (RFC 9112 6.3).
            if let Some(last) = value.rsplit(|&b| b == b',').next() {
                self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        }
    }
}

/// Two byte slices read as one: a buffered head and the bytes that continue it.
#[derive(Clone, Copy)]
struct Joined<'a> {
    a: &'a [u8],
    b: &'a [u8],
}

impl Joined<'_> {
    fn get(&self, i: usize) -> Option<u8> {
        match i.checked_sub(self.a.len()) {
            None => self.a.get(i).copied(),
            Some(j) => self.b.get(j).copied(),
        }
    }

    fn starts_with_prefix_of(&self, word: &[u8]) -> bool {
        word.iter()
            .enumerate()
            .all(|(i, &w)| self.get(i).is_none_or(|b| b == w))
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `view` could start a message found by resynchronising: a known method and a space
/// (client) or `HTTP/1.` (server), as far as bytes are present.
fn could_start(side: Side, view: Joined<'_>) -> bool {
    match side {
        Side::Client => METHODS
            .iter()
            .any(|m| view.starts_with_prefix_of(m) && view.get(m.len()).is_none_or(|b| b == b' ')),
        Side::Server => view.starts_with_prefix_of(b"HTTP/1."),
    }
}

/// Whether the head in `view` can still be a request or response head, as far as bytes are
/// present: a method token then a space and a request line ending in `HTTP/1.x` (client), or
/// `HTTP/1.x ddd` (server). `first_lf` is where the first line ends, when known.
fn plausible(side: Side, view: Joined<'_>, strict: bool, first_lf: Option<usize>) -> bool {
    if strict && !could_start(side, view) {
        return false;
    }
    match side {
        Side::Client => {
            let mut i = 0;
            loop {
                match view.get(i) {
                    None => return true,
                    Some(b' ') if i > 0 => break,
                    Some(b) if i < MAX_METHOD && is_tchar(b) => i += 1,
                    _ => return false,
                }
            }
            let Some(lf) = first_lf else {
                return true;
            };
            let end = if lf > 0 && view.get(lf - 1) == Some(b'\r') {
                lf - 1
            } else {
                lf
            };
            end >= 8
                && view.get(end - 1).is_some_and(|b| b.is_ascii_digit())
                && (0..7).all(|k| view.get(end - 8 + k) == b"HTTP/1.".get(k).copied())
        }
        Side::Server => {
            view.starts_with_prefix_of(b"HTTP/1.")
                && view.get(7).is_none_or(|b| b.is_ascii_digit())
                && view.get(8).is_none_or(|b| b == b' ')
                && (9..12).all(|k| view.get(k).is_none_or(|b| b.is_ascii_digit()))
        }
    }
}

/// What a search for a message start found.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// A message starts at this offset.
    At(usize),
    /// Something that may start a message is too close to the end to tell.
    NotYet,
    None,
}

/// The first message start in `window`: a request line `METHOD SP target SP HTTP/1.`
/// (client) or a status line `HTTP/1.d SP ddd` (server), anywhere (after a lost body's tail a
/// head rarely starts a line).
fn find_start(side: Side, window: &[u8]) -> Start {
    for at in memchr::memmem::find_iter(window, b"HTTP/1.") {
        match side {
            Side::Server => {
                let Some(line) = window.get(at..at + 12) else {
                    return Start::NotYet;
                };
                let status_line = line.get(7).is_some_and(u8::is_ascii_digit)
                    && line.get(8) == Some(&b' ')
                    && line
                        .get(9..12)
                        .is_some_and(|d| d.iter().all(u8::is_ascii_digit));
                if status_line {
                    return Start::At(at);
                }
            }
            Side::Client => {
                // Back from ` HTTP/1.` over the target to the space after the method.
                let Some(space2) = at.checked_sub(1).filter(|&i| window.get(i) == Some(&b' '))
                else {
                    continue;
                };
                let target_len = window
                    .get(..space2)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .take(RESYNC_TARGET + 1)
                    .take_while(|&&b| b > b' ' && b != 0x7f)
                    .count();
                if target_len == 0 || target_len > RESYNC_TARGET {
                    continue;
                }
                let Some(space1) = (space2 - target_len)
                    .checked_sub(1)
                    .filter(|&i| window.get(i) == Some(&b' '))
                else {
                    continue;
                };
                let method_start = METHODS
                    .iter()
                    .filter_map(|m| {
                        let from = space1.checked_sub(m.len())?;
                        (window.get(from..space1) == Some(*m)).then_some(from)
                    })
                    .min();
                if let Some(from) = method_start {
                    return Start::At(from);
                }
            }
        }
    }
    Start::None
}

/// Where a head ends in `data` (the index after its blank line), looking at most `limit` bytes
/// in; `before` holds the (up to two) head bytes that precede `data`.
fn find_head_end(before: &[u8], data: &[u8], limit: usize) -> Option<usize> {
    let window = data.get(..limit.min(data.len())).unwrap_or(data);
    let at = |i: isize| -> Option<u8> {
        if i >= 0 {
            window.get(i as usize).copied()
        } else {
            let back = before.len().checked_sub(i.unsigned_abs())?;
            before.get(back).copied()
        }
    };
    memchr::memchr_iter(b'\n', window).find_map(|lf| {
        let lf_i = lf as isize;
        let prev = at(lf_i - 1);
        let ends = prev == Some(b'\n') || (prev == Some(b'\r') && at(lf_i - 2) == Some(b'\n'));
        ends.then_some(lf + 1)
    })
}

/// `value` as text, cut to [`MAX_HEADER_VALUE`] bytes at a character boundary.
fn header_text(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value.get(..MAX_HEADER_VALUE).unwrap_or(value));
    let mut text = text.into_owned();
    while text.len() > MAX_HEADER_VALUE {
        text.pop();
    }
    text
}

impl Http1Decoder {
    /// A decoder for a new connection; request headers and query values are redacted by
    /// `redaction`.
    pub fn new(redaction: Redaction) -> Self {
        Http1Decoder {
            redaction,
            client: Reader::new(),
            server: Reader::new(),
            queue: VecDeque::new(),
            answered: 0,
            responses_to_skip: 0,
            reliable_ahead: 0,
            next_seq: 0,
            request_body_for: None,
            response_for: None,
            paused: None,
            held: Vec::new(),
            held_ts: 0,
            held_gap: 0,
            stopped: false,
        }
    }

    fn reader(&mut self, side: Side) -> &mut Reader {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// The exchange numbered `seq` (the queue stays in `seq` order: pushed at the back with
    /// increasing numbers, removed anywhere).
    fn exchange(&mut self, seq: u64) -> Option<&mut Exchange> {
        let i = self.queue.binary_search_by_key(&seq, |x| x.seq).ok()?;
        self.queue.get_mut(i)
    }

    /// Runs one side's bytes through its state machine.
    fn consume(&mut self, side: Side, bytes: &[u8], ts: u64, emit: &mut Emit) {
        let mut pos = 0;
        while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
            if self.stopped {
                return;
            }
            if side == Side::Client && self.paused.is_some() {
                self.hold(rest, ts);
                return;
            }
            let state = self.reader(side).state;
            pos += match state {
                ReadState::Head => self.read_head(side, rest, ts, emit),
                ReadState::Body(_) => self.read_body(side, rest, ts, emit),
                ReadState::Resync => self.resync(side, rest, ts),
            };
        }
    }

    /// Keeps client bytes sent while an upgrade or CONNECT is undecided.
    fn hold(&mut self, bytes: &[u8], ts: u64) {
        if self.held.is_empty() && self.held_gap == 0 {
            self.held_ts = ts;
        }
        if self.held.len() + bytes.len() > MAX_HEAD {
            self.held_gap += (self.held.len() + bytes.len()) as u64;
            self.held.clear();
        } else {
            self.held.extend_from_slice(bytes);
        }
    }

    /// Reads (part of) a head from `rest`; returns the bytes used.
    fn read_head(&mut self, side: Side, rest: &[u8], ts: u64, emit: &mut Emit) -> usize {
        let reader = self.reader(side);
        if reader.head.is_empty() {
            // Blank lines between messages are ignored (RFC 9112 2.2).
            let skip = rest
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            let Some(start) = rest.get(skip..).filter(|s| !s.is_empty()) else {
                return rest.len();
            };
            let view = Joined { a: &[], b: start };
            let first_lf = memchr::memchr(b'\n', start);
            if !plausible(side, view, reader.strict, first_lf) {
                // Look for a message again from the next byte.
                self.framing_lost(side, Loss::Junk, emit);
                return skip + 1;
            }
            match find_head_end(&[], start, MAX_HEAD) {
                Some(end) => {
                    let head = start.get(..end).unwrap_or(start);
                    if self.on_head(side, head, ts, ts, emit) {
                        skip + end
                    } else {
                        self.framing_lost(side, Loss::Malformed, emit);
                        skip + 1
                    }
                }
                None if start.len() > MAX_HEAD => {
                    self.framing_lost(side, Loss::TooLarge, emit);
                    skip + MAX_HEAD
                }
                None => {
                    let reader = self.reader(side);
                    reader.head.extend_from_slice(start);
                    reader.head_ts = ts;
                    reader.line_checked = first_lf.is_some();
                    rest.len()
                }
            }
        } else {
            let first_lf = if reader.line_checked {
                None
            } else {
                memchr::memchr(b'\n', rest).map(|i| i + reader.head.len())
            };
            let view = Joined {
                a: &reader.head,
                b: rest,
            };
            if !plausible(side, view, reader.strict, first_lf) {
                self.replay_after_failure(side, Loss::Junk, emit);
                return 0;
            }
            reader.line_checked |= first_lf.is_some();
            let tail = reader
                .head
                .get(reader.head.len().saturating_sub(2)..)
                .unwrap_or_default();
            let room = MAX_HEAD - reader.head.len().min(MAX_HEAD);
            match find_head_end(tail, rest, room) {
                Some(end) => {
                    reader
                        .head
                        .extend_from_slice(rest.get(..end).unwrap_or(rest));
                    let head = std::mem::take(&mut reader.head);
                    let head_ts = reader.head_ts;
                    if self.on_head(side, &head, head_ts, ts, emit) {
                        let reader = self.reader(side);
                        if reader.head.is_empty() {
                            // Keep the allocation for the next straddling head.
                            reader.head = head;
                            reader.clear_head();
                        }
                    } else {
                        self.reader(side).head = head;
                        self.replay_after_failure(side, Loss::Malformed, emit);
                    }
                    end
                }
                None if rest.len() > room => {
                    reader.clear_head();
                    self.framing_lost(side, Loss::TooLarge, emit);
                    room
                }
                None => {
                    reader.head.extend_from_slice(rest);
                    rest.len()
                }
            }
        }
    }

    /// The buffered head could not be read: give up its framing and look for a message again
    /// from its second byte.
    fn replay_after_failure(&mut self, side: Side, loss: Loss, emit: &mut Emit) {
        let reader = self.reader(side);
        let buffered = std::mem::take(&mut reader.head);
        let head_ts = reader.head_ts;
        reader.clear_head();
        self.framing_lost(side, loss, emit);
        self.consume(side, buffered.get(1..).unwrap_or_default(), head_ts, emit);
    }

    /// A whole head, whose first byte was seen at `first_ts` and last at `last_ts`. Returns
    /// false when it does not parse.
    fn on_head(
        &mut self,
        side: Side,
        head: &[u8],
        first_ts: u64,
        last_ts: u64,
        emit: &mut Emit,
    ) -> bool {
        let ok = match side {
            Side::Client => self.on_request_head(head, first_ts, emit),
            Side::Server => self.on_response_head(head, first_ts, last_ts, emit),
        };
        if ok {
            let reader = self.reader(side);
            reader.fresh = false;
            reader.strict = false;
        }
        ok
    }

    fn on_request_head(&mut self, head: &[u8], ts: u64, emit: &mut Emit) -> bool {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                emit.problem("http1_too_many_headers");
                return false;
            }
            _ => return false,
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return false;
        };
        let mut framing = Framing::default();
        let mut authority = None;
        let mut wants_upgrade = false;
        let mut headers = Vec::new();
        for field in req.headers.iter() {
            framing.observe(field.name, field.value);
            if field.name.eq_ignore_ascii_case("host") {
                authority = Some(header_text(field.value.trim_ascii()));
            } else if field.name.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            }
            if headers.len() < MAX_KEPT_HEADERS {
                let plain = KEPT_HEADERS
                    .iter()
                    .any(|k| field.name.eq_ignore_ascii_case(k));
                if self.redaction.is_sensitive(field.name) {
                    headers.push((field.name.to_ascii_lowercase(), REDACTED.to_string()));
                } else if plain {
                    headers.push((field.name.to_ascii_lowercase(), header_text(field.value)));
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let is_connect = method.eq_ignore_ascii_case("CONNECT");
        let call = Call {
            protocol: Protocol::Http1,
            method: method.to_string(),
            path: self.redaction.path(path),
            authority,
            status: None,
            grpc: None,
            request_ns: ts,
            response_ns: None,
            response_end_ns: None,
            request_bytes: 0,
            response_bytes: 0,
            headers,
            outcome: Outcome::NoResponse,
        };
        self.queue.push_back(Exchange {
            seq,
            call,
            is_head: method.eq_ignore_ascii_case("HEAD"),
            is_connect,
            wants_upgrade,
            request_done: false,
            response_done: false,
            incomplete: None,
        });
        if self.queue.len() > MAX_IN_FLIGHT
            && let Some(oldest) = self.queue.remove(self.answered.min(self.queue.len()))
        {
            // Its response may still come: it must not be paired with a later request.
            emit.problem("http1_pending_evicted");
            self.reliable_ahead = 0;
            self.responses_to_skip += 1;
            let mut oldest = oldest;
            oldest.incomplete.get_or_insert("evicted");
            emit.calls.push(oldest.into_call());
        }
        // Request body length (RFC 9112 6.3): chunked, Content-Length, or none.
        let body = if framing.transfer_encoding {
            framing.chunked.then(|| Body::Chunked(Chunk::start()))
        } else if framing.invalid {
            None
        } else {
            framing.content_length.filter(|&n| n > 0).map(Body::Length)
        };
        let unframeable = (framing.transfer_encoding && !framing.chunked)
            || (!framing.transfer_encoding && framing.invalid);
        if unframeable {
            // The server answers 400 and closes; where the next request starts is unknown.
            emit.problem("http1_bad_framing");
            if let Some(x) = self.exchange(seq) {
                x.incomplete = Some("bad_framing");
                x.request_done = true;
            }
            self.client.state = ReadState::Resync;
            return true;
        }
        match body {
            Some(body) => {
                self.request_body_for = Some(seq);
                self.client.state = ReadState::Body(body);
            }
            None => {
                self.client.state = ReadState::Head;
                self.finish_request(seq, emit);
            }
        }
        true
    }

    fn on_response_head(
        &mut self,
        head: &[u8],
        first_ts: u64,
        last_ts: u64,
        emit: &mut Emit,
    ) -> bool {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                emit.problem("http1_too_many_headers");
                return false;
            }
            _ => return false,
        }
        let Some(code) = resp.code else {
            return false;
        };
        let mut framing = Framing::default();
        for field in resp.headers.iter() {
            framing.observe(field.name, field.value);
        }
        self.server.state = ReadState::Head;
        if (100..200).contains(&code) && code != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            return true;
        }
        let target = self.pair_response(first_ts, emit);
        self.response_for = target;
        let (mut is_head, mut is_connect) = (false, false);
        if let Some(x) = target.and_then(|seq| self.exchange(seq)) {
            x.call.status = Some(u32::from(code));
            x.call.response_ns = Some(first_ts);
            is_head = x.is_head;
            is_connect = x.is_connect;
        }
        if code == 101 || (is_connect && (200..300).contains(&code)) {
            // The connection is no longer HTTP/1 from here on.
            self.finish_response(last_ts, emit);
            self.switch_protocols(emit);
            return true;
        }
        // Response body length (RFC 9112 6.3).
        let body = if is_head || code == 204 || code == 304 {
            None
        } else if framing.transfer_encoding {
            Some(if framing.chunked {
                Body::Chunked(Chunk::start())
            } else {
                Body::UntilClose
            })
        } else if framing.invalid {
            emit.problem("http1_bad_framing");
            if let Some(x) = target.and_then(|seq| self.exchange(seq)) {
                x.incomplete.get_or_insert("bad_framing");
            }
            Some(Body::UntilClose)
        } else {
            match framing.content_length {
                Some(0) => None,
                Some(n) => Some(Body::Length(n)),
                None => Some(Body::UntilClose),
            }
        };
        match body {
            Some(body) => self.server.state = ReadState::Body(body),
            None => self.finish_response(last_ts, emit),
        }
        true
    }

    /// The exchange a final response head seen at `ts` answers, if it can be told for sure.
    fn pair_response(&mut self, ts: u64, emit: &mut Emit) -> Option<u64> {
        self.answered = self.answered.min(self.queue.len());
        let waiting = self
            .queue
            .get(self.answered)
            .map(|x| (x.seq, x.call.request_ns));
        if self.responses_to_skip > 0 && self.reliable_ahead == 0 {
            emit.problem("http1_unpaired_response");
            match waiting {
                // It may answer a lost request or this one: this one cannot be paired.
                Some((_, request_ns)) if request_ns <= ts => {
                    if let Some(mut x) = self.queue.remove(self.answered) {
                        x.incomplete.get_or_insert("unpaired");
                        emit.calls.push(x.into_call());
                    }
                }
                // Sent before any waiting request: it answers a lost one.
                _ => self.responses_to_skip -= 1,
            }
            return None;
        }
        match waiting {
            Some((seq, request_ns)) if request_ns <= ts => {
                self.answered += 1;
                self.reliable_ahead = self.reliable_ahead.saturating_sub(1);
                Some(seq)
            }
            _ => {
                emit.problem("http1_unpaired_response");
                None
            }
        }
    }

    /// Reads body bytes from `rest`; returns the bytes used.
    fn read_body(&mut self, side: Side, rest: &[u8], ts: u64, emit: &mut Emit) -> usize {
        let reader = self.reader(side);
        let ReadState::Body(body) = &mut reader.state else {
            return 0;
        };
        let (used, counted, end) = match body {
            Body::Length(left) => {
                let take = (*left).min(rest.len() as u64);
                *left -= take;
                let end = if *left == 0 {
                    ChunkEnd::Done
                } else {
                    ChunkEnd::More
                };
                (take as usize, take, end)
            }
            Body::UntilClose => (rest.len(), rest.len() as u64, ChunkEnd::More),
            Body::Chunked(chunk) => {
                let step = chunk.feed(rest);
                (step.used, step.body, step.end)
            }
        };
        self.count_body(side, counted);
        match end {
            ChunkEnd::More => {}
            ChunkEnd::Done => self.body_done(side, ts, emit),
            ChunkEnd::Bad => self.framing_lost(side, Loss::BadChunk, emit),
        }
        used
    }

    fn count_body(&mut self, side: Side, n: u64) {
        if n == 0 {
            return;
        }
        let target = match side {
            Side::Client => self.request_body_for,
            Side::Server => self.response_for,
        };
        if let Some(x) = target.and_then(|seq| self.exchange(seq)) {
            match side {
                Side::Client => x.call.request_bytes += n,
                Side::Server => x.call.response_bytes += n,
            }
        }
    }

    fn mark_body_incomplete(&mut self, side: Side, reason: &'static str) {
        let target = match side {
            Side::Client => self.request_body_for,
            Side::Server => self.response_for,
        };
        if let Some(x) = target.and_then(|seq| self.exchange(seq)) {
            x.incomplete.get_or_insert(reason);
        }
    }

    fn body_done(&mut self, side: Side, ts: u64, emit: &mut Emit) {
        self.reader(side).state = ReadState::Head;
        match side {
            Side::Client => {
                if let Some(seq) = self.request_body_for.take() {
                    self.finish_request(seq, emit);
                }
            }
            Side::Server => self.finish_response(ts, emit),
        }
    }

    fn finish_request(&mut self, seq: u64, emit: &mut Emit) {
        if let Some(x) = self.exchange(seq) {
            x.request_done = true;
            if x.wants_upgrade || x.is_connect {
                // What follows may not be HTTP: wait for the answer.
                self.paused = Some(seq);
            }
        }
        self.flush_front(emit);
    }

    fn finish_response(&mut self, ts: u64, emit: &mut Emit) {
        self.server.state = ReadState::Head;
        if let Some(seq) = self.response_for.take()
            && let Some(x) = self.exchange(seq)
        {
            x.call.response_end_ns = Some(ts);
            x.response_done = true;
        }
        self.flush_front(emit);
    }

    /// Emits the exchanges at the front whose request and response are both done.
    fn flush_front(&mut self, emit: &mut Emit) {
        while self
            .queue
            .front()
            .is_some_and(|x| x.request_done && x.response_done)
        {
            if let Some(x) = self.queue.pop_front() {
                self.answered = self.answered.saturating_sub(1);
                emit.calls.push(x.into_call());
            }
        }
    }

    /// Up to `n` requests were sent after the ones waiting now and will never be seen: their
    /// responses come before those of the requests seen next.
    fn mark_requests_lost(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        if self.responses_to_skip == 0 {
            self.reliable_ahead = self.queue.len().saturating_sub(self.answered);
        }
        self.responses_to_skip += n;
    }

    /// Emits every request still waiting for a response head as incomplete: their responses
    /// may have been lost, so the responses that follow cannot be paired by order.
    fn flush_unanswered(&mut self, reason: &'static str, emit: &mut Emit) {
        self.answered = self.answered.min(self.queue.len());
        self.reliable_ahead = 0;
        for mut x in self.queue.split_off(self.answered) {
            self.responses_to_skip += 1;
            x.incomplete.get_or_insert(reason);
            emit.calls.push(x.into_call());
        }
    }

    /// A 101 or a CONNECT 2xx: stop decoding, emit what is open.
    fn switch_protocols(&mut self, emit: &mut Emit) {
        self.stopped = true;
        self.paused = None;
        self.held = Vec::new();
        for mut x in self.queue.drain(..) {
            if !(x.request_done && x.response_done) {
                x.incomplete.get_or_insert("upgrade");
            }
            emit.calls.push(x.into_call());
        }
        self.answered = 0;
    }

    /// `side` no longer knows where messages start: count why, settle the calls this costs,
    /// and scan for the next message.
    fn framing_lost(&mut self, side: Side, loss: Loss, emit: &mut Emit) {
        // Unreadable first bytes are the tail of a message sent before the capture began,
        // unless a response is due (then they may be that response, unreadable).
        let response_due = self.queue.len() > self.answered;
        let reader = self.reader(side);
        let fresh =
            reader.fresh && matches!(loss, Loss::Junk) && (side == Side::Client || !response_due);
        if !matches!(loss, Loss::Gap(_)) {
            reader.fresh = false;
        }
        let partial_head = !reader.head.is_empty();
        reader.clear_head();
        reader.state = ReadState::Resync;
        let reason = match loss {
            Loss::Gap(_) => "gap",
            Loss::Junk | Loss::Malformed => "malformed",
            Loss::TooLarge => "head_too_large",
            Loss::BadChunk => "bad_chunk",
        };
        emit.problem(match (loss, side, fresh) {
            (Loss::Gap(_), _, _) => "http1_gap_resync",
            (Loss::Junk, _, true) => "http1_midstream_start",
            (Loss::Junk | Loss::Malformed, Side::Client, _) => "http1_malformed_request",
            (Loss::Junk | Loss::Malformed, Side::Server, _) => "http1_malformed_response",
            (Loss::TooLarge, _, _) => "http1_head_too_large",
            (Loss::BadChunk, _, _) => "http1_bad_chunk",
        });
        match side {
            Side::Client => {
                if let Some(seq) = self.request_body_for.take()
                    && let Some(x) = self.exchange(seq)
                {
                    x.incomplete.get_or_insert(reason);
                    x.request_done = true;
                }
                // Requests the server saw and this decoder did not.
                self.mark_requests_lost(match loss {
                    Loss::Gap(len) => len.div_ceil(MIN_REQUEST_LEN) + u64::from(partial_head),
                    Loss::Junk | Loss::Malformed | Loss::TooLarge => 1,
                    Loss::BadChunk => 0,
                });
            }
            Side::Server => {
                if let Some(seq) = self.response_for.take()
                    && let Some(x) = self.exchange(seq)
                {
                    x.incomplete.get_or_insert(reason);
                    x.response_done = true;
                }
                self.flush_unanswered(reason, emit);
            }
        }
        self.flush_front(emit);
    }

    /// Scans for the start of a message; returns the bytes skipped. A start may straddle
    /// chunks: the last [`RESYNC_CARRY`] bytes scanned are kept and searched again with the
    /// next chunk's first bytes.
    fn resync(&mut self, side: Side, rest: &[u8], ts: u64) -> usize {
        let reader = self.reader(side);
        let mut carry = std::mem::take(&mut reader.carry);
        if !carry.is_empty() {
            let carried = carry.len();
            carry.extend_from_slice(rest.get(..RESYNC_CARRY).unwrap_or(rest));
            if let Start::At(at) = find_start(side, &carry)
                && at < carried
            {
                // The message began in the bytes kept from before.
                reader.head.clear();
                reader
                    .head
                    .extend_from_slice(carry.get(at..carried).unwrap_or_default());
                reader.head_ts = reader.carry_ts;
                reader.state = ReadState::Head;
                reader.strict = true;
                reader.line_checked = false;
                carry.clear();
                reader.carry = carry;
                return 0;
            }
        }
        match find_start(side, rest) {
            Start::At(at) => {
                reader.state = ReadState::Head;
                reader.strict = true;
                carry.clear();
                reader.carry = carry;
                at
            }
            Start::NotYet | Start::None => {
                // Keep the last bytes scanned (from the kept ones and this chunk).
                if rest.len() >= RESYNC_CARRY {
                    carry.clear();
                    carry.extend_from_slice(rest.get(rest.len() - RESYNC_CARRY..).unwrap_or(rest));
                } else {
                    if carry.is_empty() {
                        carry.extend_from_slice(rest);
                    }
                    let excess = carry.len().saturating_sub(RESYNC_CARRY);
                    carry.drain(..excess);
                }
                reader.carry = carry;
                reader.carry_ts = ts;
                rest.len()
            }
        }
    }

    /// Replays held client bytes once the upgrade or CONNECT they waited on was refused.
    fn resume_if_decided(&mut self, emit: &mut Emit) {
        let Some(seq) = self.paused else {
            return;
        };
        if self.stopped {
            return;
        }
        let decided = self
            .queue
            .iter()
            .find(|x| x.seq == seq)
            .is_none_or(|x| x.call.status.is_some() || x.incomplete.is_some());
        if !decided {
            return;
        }
        self.paused = None;
        let held = std::mem::take(&mut self.held);
        let lost = std::mem::take(&mut self.held_gap);
        let ts = self.held_ts;
        if lost > 0 {
            self.gap(Side::Client, lost, ts, emit);
        }
        self.consume(Side::Client, &held, ts, emit);
    }
}

impl StreamDecoder for Http1Decoder {
    fn data(&mut self, side: Side, bytes: &[u8], ts_ns: u64, emit: &mut Emit) {
        if self.stopped || bytes.is_empty() {
            return;
        }
        self.reader(side).last_ts = ts_ns;
        self.consume(side, bytes, ts_ns, emit);
        self.resume_if_decided(emit);
    }

    fn gap(&mut self, side: Side, len: u64, ts_ns: u64, emit: &mut Emit) {
        if self.stopped || len == 0 {
            return;
        }
        if side == Side::Client && self.paused.is_some() {
            self.held_gap += len + self.held.len() as u64;
            self.held.clear();
            return;
        }
        let reader = self.reader(side);
        let accounted = match &mut reader.state {
            ReadState::Body(Body::Length(left)) if len <= *left => {
                *left -= len;
                Some(*left == 0)
            }
            ReadState::Body(Body::Chunked(Chunk::Data(left))) if len <= *left => {
                *left -= len;
                if *left == 0 {
                    reader.state = ReadState::Body(Body::Chunked(Chunk::DataEnd { cr: false }));
                }
                Some(false)
            }
            ReadState::Body(Body::UntilClose) => Some(false),
            _ => None,
        };
        match accounted {
            Some(done) => {
                // Lost inside a body whose length is known: only the body's bytes are missing.
                emit.problem("http1_gap_in_body");
                self.count_body(side, len);
                self.mark_body_incomplete(side, "gap");
                if done {
                    self.body_done(side, ts_ns, emit);
                }
            }
            None => self.framing_lost(side, Loss::Gap(len), emit),
        }
        self.resume_if_decided(emit);
    }

    fn close(&mut self, _ts_ns: u64, emit: &mut Emit) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.server.state {
            ReadState::Body(Body::UntilClose) => self.finish_response(self.server.last_ts, emit),
            ReadState::Body(_) => self.mark_body_incomplete(Side::Server, "response_truncated"),
            ReadState::Head | ReadState::Resync => {}
        }
        if let Some(seq) = self.response_for.take()
            && let Some(x) = self.exchange(seq)
        {
            x.response_done = true;
        }
        if let ReadState::Body(_) = self.client.state {
            self.mark_body_incomplete(Side::Client, "request_truncated");
        }
        for reader in [&mut self.client, &mut self.server] {
            if !reader.head.is_empty() {
                emit.problem("http1_truncated_head");
                reader.clear_head();
            }
        }
        for x in self.queue.drain(..) {
            emit.calls.push(x.into_call());
        }
        self.answered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One event on a connection.
    #[derive(Clone, Copy)]
    enum Step<'a> {
        Data(Side, &'a [u8], u64),
        Gap(Side, u64, u64),
    }
    use Side::{Client as C, Server as S};
    use Step::{Data, Gap};

    fn run(steps: &[Step<'_>]) -> Emit {
        let mut dec = Http1Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        let mut last = 0;
        for step in steps {
            match *step {
                Data(side, bytes, ts) => {
                    dec.data(side, bytes, ts, &mut emit);
                    last = ts;
                }
                Gap(side, len, ts) => dec.gap(side, len, ts, &mut emit),
            }
        }
        dec.close(last + 1, &mut emit);
        emit
    }

    /// (method, path, status, outcome) of each call.
    fn summary(emit: &Emit) -> Vec<(String, String, Option<u32>, Outcome)> {
        emit.calls
            .iter()
            .map(|c| (c.method.clone(), c.path.clone(), c.status, c.outcome))
            .collect()
    }

    fn row(m: &str, p: &str, s: Option<u32>, o: Outcome) -> (String, String, Option<u32>, Outcome) {
        (m.to_string(), p.to_string(), s, o)
    }

    const GET_A: &[u8] =
        b"GET /a HTTP/1.1\r\nHost: api.local\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n";
    const POST_B: &[u8] = b"POST /b HTTP/1.1\r\nHost: api.local\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"k\":\"v12\"}";
    const GET_C: &[u8] = b"GET /c?x=1 HTTP/1.1\r\nHost: api.local\r\n\r\n";
    const OK_5: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
    const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";

    #[test]
    fn keep_alive_three_calls() {
        let emit = run(&[
            Data(C, GET_A, 10),
            Data(S, OK_5, 20),
            Data(C, POST_B, 30),
            Data(S, CREATED, 45),
            Data(C, GET_C, 50),
            Data(S, NOT_FOUND, 70),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", Some(200), Outcome::Complete),
                row("POST", "/b", Some(201), Outcome::Complete),
                row("GET", "/c?x=1", Some(404), Outcome::Complete),
            ]
        );
        let a = &emit.calls[0];
        assert_eq!(a.authority.as_deref(), Some("api.local"));
        assert_eq!(
            (a.request_ns, a.response_ns, a.response_end_ns),
            (10, Some(20), Some(20))
        );
        assert_eq!((a.request_bytes, a.response_bytes), (0, 5));
        assert_eq!(
            a.headers,
            [
                ("host".to_string(), "api.local".to_string()),
                ("user-agent".to_string(), "curl/8.0".to_string()),
            ]
        );
        let b = &emit.calls[1];
        assert_eq!((b.request_bytes, b.response_bytes), (11, 0));
        assert_eq!(b.latency_ns(), Some(15));
        assert!(
            b.headers
                .contains(&("content-type".to_string(), "application/json".to_string()))
        );
        assert_eq!(emit.calls[2].response_bytes, 9);
    }

    #[test]
    fn pipelined_responses_pair_in_order() {
        let requests = [GET_A, POST_B, GET_C].concat();
        let responses = [NOT_FOUND, OK_5, CREATED].concat();
        let emit = run(&[Data(C, &requests, 10), Data(S, &responses, 20)]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", Some(404), Outcome::Complete),
                row("POST", "/b", Some(200), Outcome::Complete),
                row("GET", "/c?x=1", Some(201), Outcome::Complete),
            ]
        );
        assert_eq!(emit.calls[1].request_bytes, 11);
        assert_eq!(emit.calls[1].response_bytes, 5);
    }

    const CHUNKED_REQUEST: &[u8] = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10;name=v\r\n0123456789abcdef\r\n0\r\nX-Checksum: 1\r\n\r\n";
    const CHUNKED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-Trailer: 2\r\n\r\n";

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let emit = run(&[
            Data(C, CHUNKED_REQUEST, 1),
            Data(S, CHUNKED_RESPONSE, 2),
            Data(C, GET_A, 3),
            Data(S, CREATED, 4),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [
                row("POST", "/upload", Some(200), Outcome::Complete),
                row("GET", "/a", Some(201), Outcome::Complete),
            ]
        );
        assert_eq!(emit.calls[0].request_bytes, 3 + 16);
        // "Wiki" + "pedia" + " in\r\n\r\nchunks." (RFC 9112's example sizes).
        assert_eq!(emit.calls[0].response_bytes, 4 + 5 + 14);
    }

    #[test]
    fn head_204_and_304_have_no_body() {
        let head = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n";
        let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n";
        let cond = b"GET /etag HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"x\"\r\n\r\n";
        let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 77\r\n\r\n";
        let delete = b"DELETE /item HTTP/1.1\r\nHost: h\r\n\r\n";
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        let requests = [&head[..], cond, delete, GET_A].concat();
        let responses = [&head_resp[..], not_modified, no_content, OK_5].concat();
        let emit = run(&[Data(C, &requests, 1), Data(S, &responses, 2)]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [
                row("HEAD", "/big", Some(200), Outcome::Complete),
                row("GET", "/etag", Some(304), Outcome::Complete),
                row("DELETE", "/item", Some(204), Outcome::Complete),
                row("GET", "/a", Some(200), Outcome::Complete),
            ]
        );
        assert_eq!(emit.calls[0].response_bytes, 0);
    }

    #[test]
    fn continue_does_not_complete_the_request() {
        let head =
            b"PUT /file HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
        let emit = run(&[
            Data(C, head, 10),
            Data(S, b"HTTP/1.1 100 Continue\r\n\r\n", 12),
            Data(C, b"data", 14),
            Data(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 20),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [row("PUT", "/file", Some(201), Outcome::Complete)]
        );
        let call = &emit.calls[0];
        assert_eq!(call.request_bytes, 4);
        assert_eq!(call.response_ns, Some(20));
    }

    #[test]
    fn upgrade_completes_with_101_and_stops() {
        let upgrade = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let frame = [
            0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let emit = run(&[
            Data(C, upgrade, 1),
            // A frame sent before the answer waits, then is dropped with the connection.
            Data(C, &frame, 2),
            Data(S, switching, 3),
            Data(S, &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], 4),
            Data(C, &frame, 5),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [row("GET", "/chat", Some(101), Outcome::Complete)]
        );
    }

    #[test]
    fn refused_upgrade_keeps_decoding_held_bytes() {
        let h2c = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
        let emit = run(&[
            Data(C, h2c, 1),
            Data(C, GET_C, 2),
            Data(S, OK_5, 3),
            Data(S, CREATED, 4),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/", Some(200), Outcome::Complete),
                row("GET", "/c?x=1", Some(201), Outcome::Complete),
            ]
        );
        assert_eq!(emit.calls[1].request_ns, 2);
    }

    #[test]
    fn connect_2xx_stops_decoding() {
        let emit = run(&[
            Data(C, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n", 1),
            Data(S, b"HTTP/1.1 200 Connection Established\r\n\r\n", 2),
            Data(C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3),
            Data(S, b"\x16\x03\x03\x00\x7a\x02", 4),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [row("CONNECT", "db:5432", Some(200), Outcome::Complete)]
        );
    }

    #[test]
    fn read_until_close() {
        let emit = run(&[
            Data(C, b"GET /old HTTP/1.0\r\n\r\n", 1),
            Data(
                S,
                b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
                5,
            ),
            Data(S, b"</html>", 9),
        ]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        assert_eq!(
            summary(&emit),
            [row("GET", "/old", Some(200), Outcome::Complete)]
        );
        let call = &emit.calls[0];
        assert_eq!(call.response_bytes, 13);
        assert_eq!((call.response_ns, call.response_end_ns), (Some(5), Some(9)));
    }

    #[test]
    fn unanswered_and_truncated_at_close() {
        let emit = run(&[
            Data(C, GET_A, 1),
            Data(S, &OK_5[..OK_5.len() - 2], 2),
            Data(C, GET_C, 3),
        ]);
        assert_eq!(
            summary(&emit),
            [
                row(
                    "GET",
                    "/a",
                    Some(200),
                    Outcome::Incomplete("response_truncated")
                ),
                row("GET", "/c?x=1", None, Outcome::NoResponse),
            ]
        );
    }

    /// Client and server streams of a two-call exchange with every kind of framing.
    fn two_calls() -> (Vec<u8>, Vec<u8>) {
        (
            [POST_B, CHUNKED_REQUEST].concat(),
            [CHUNKED_RESPONSE, NOT_FOUND].concat(),
        )
    }

    #[test]
    fn every_split_into_two_chunks_gives_the_same_calls() {
        let (client, server) = two_calls();
        let whole = run(&[Data(C, &client, 7), Data(S, &server, 7)]);
        assert_eq!(whole.calls.len(), 2);
        assert!(whole.problems.is_empty());
        for cut in 0..=client.len() {
            let (a, b) = client.split_at(cut);
            let split = run(&[Data(C, a, 7), Data(C, b, 7), Data(S, &server, 7)]);
            assert_eq!(split.calls, whole.calls, "client cut at {cut}");
            assert!(
                split.problems.is_empty(),
                "client cut at {cut}: {:?}",
                split.problems
            );
        }
        for cut in 0..=server.len() {
            let (a, b) = server.split_at(cut);
            let split = run(&[Data(C, &client, 7), Data(S, a, 7), Data(S, b, 7)]);
            assert_eq!(split.calls, whole.calls, "server cut at {cut}");
        }
    }

    #[test]
    fn split_heads_keep_their_first_byte_time() {
        let (a, b) = GET_A.split_at(20);
        let emit = run(&[
            Data(C, a, 3),
            Data(C, b, 4),
            Data(S, &OK_5[..10], 6),
            Data(S, &OK_5[10..], 8),
        ]);
        let call = &emit.calls[0];
        assert_eq!(
            (call.request_ns, call.response_ns, call.response_end_ns),
            (3, Some(6), Some(8))
        );
    }

    #[test]
    fn gap_inside_a_body_keeps_the_next_call_right() {
        let head = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n";
        let body = [b'x'; 400];
        let resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n";
        let emit = run(&[
            Data(C, head, 1),
            Data(C, &body, 1),
            Gap(C, 300, 2),
            Data(C, &body[..300], 3),
            Data(S, resp_head, 4),
            Data(S, &[b'y'; 1000], 5),
            Gap(S, 1500, 6),
            Data(S, &[b'y'; 500], 7),
            Data(C, GET_A, 8),
            Data(S, NOT_FOUND, 9),
        ]);
        assert_eq!(
            summary(&emit),
            [
                row("POST", "/big", Some(200), Outcome::Incomplete("gap")),
                row("GET", "/a", Some(404), Outcome::Complete),
            ]
        );
        assert_eq!(emit.calls[0].request_bytes, 1000);
        assert_eq!(emit.calls[0].response_bytes, 3000);
        assert_eq!(emit.calls[0].response_end_ns, Some(7));
        assert_eq!(emit.problems.get("http1_gap_in_body"), Some(&2));
    }

    /// A call that is Complete must carry the status the server sent for that request.
    fn assert_never_wrong(emit: &Emit, truth: &[(&str, u32)]) {
        for call in &emit.calls {
            let expected = truth.iter().find(|(p, _)| *p == call.path).map(|(_, s)| *s);
            if call.outcome == Outcome::Complete {
                assert_eq!(call.status, expected, "{call:?}");
            } else if let Some(status) = call.status {
                assert_eq!(Some(status), expected, "{call:?}");
            }
        }
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
    }

    fn status(code: u32) -> Vec<u8> {
        format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok").into_bytes()
    }

    #[test]
    fn lost_request_never_pairs_wrongly_sequential() {
        let truth = [("/1", 201), ("/2", 202), ("/3", 203), ("/4", 204)];
        let lost = get("/2");
        let emit = run(&[
            Data(C, &get("/1"), 10),
            Data(S, &status(201), 11),
            Gap(C, lost.len() as u64, 12),
            Data(S, &status(202), 13),
            Data(C, &get("/3"), 14),
            Data(S, &status(203), 15),
            Data(C, &get("/4"), 16),
            Data(S, &status(204), 17),
        ]);
        assert_never_wrong(&emit, &truth);
        assert_eq!(emit.calls[0].outcome, Outcome::Complete);
        assert!(emit.problems.contains_key("http1_gap_resync"));
        // /3 and /4 were seen: they are reported (incomplete where pairing is unsure).
        let paths: Vec<_> = emit.calls.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/1", "/3", "/4"]);
    }

    #[test]
    fn lost_request_never_pairs_wrongly_pipelined() {
        let truth = [("/1", 201), ("/2", 202), ("/3", 203)];
        let responses = [status(201), status(202), status(203)].concat();
        let emit = run(&[
            Data(C, &get("/1"), 10),
            Gap(C, get("/2").len() as u64, 10),
            Data(C, &get("/3"), 10),
            Data(S, &responses, 20),
        ]);
        assert_never_wrong(&emit, &truth);
        assert_eq!(
            summary(&emit)[0],
            row("GET", "/1", Some(201), Outcome::Complete)
        );
        assert_eq!(emit.calls.len(), 2);
        assert!(matches!(emit.calls[1].outcome, Outcome::Incomplete(_)));
    }

    #[test]
    fn lost_response_head_never_pairs_wrongly() {
        let truth = [("/1", 201), ("/2", 202), ("/3", 203)];
        let requests = [get("/1"), get("/2"), get("/3")].concat();
        let lost = status(201);
        let emit = run(&[
            Data(C, &requests, 10),
            Gap(S, lost.len() as u64, 20),
            Data(S, &[status(202), status(203)].concat(), 21),
        ]);
        assert_never_wrong(&emit, &truth);
        assert_eq!(emit.calls.len(), 3);
        assert!(emit.calls.iter().all(|c| c.outcome != Outcome::Complete));
        assert_eq!(emit.problems.get("http1_unpaired_response"), Some(&2));
    }

    #[test]
    fn gap_in_a_chunked_response_resyncs_on_the_next_response() {
        let emit = run(&[
            Data(C, GET_A, 1),
            Data(S, &CHUNKED_RESPONSE[..60], 2),
            Gap(S, 20, 3),
            Data(S, &CHUNKED_RESPONSE[80..], 4),
            Data(C, GET_C, 5),
            Data(S, NOT_FOUND, 6),
        ]);
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", Some(200), Outcome::Incomplete("gap")),
                row("GET", "/c?x=1", Some(404), Outcome::Complete),
            ]
        );
    }

    #[test]
    fn mid_stream_start_resyncs_on_both_sides() {
        let emit = run(&[
            // The tail of a form body whose head was before the capture.
            Data(C, b"name=podtap&mode=fast", 10),
            // Its answer, after a body tail of an earlier response.
            Data(
                S,
                b"ody></html>\r\nHTTP/1.1 303 See Other\r\nContent-Length: 0\r\n\r\n",
                11,
            ),
            Data(C, GET_A, 12),
            Data(S, OK_5, 13),
            Data(C, GET_C, 14),
            Data(S, NOT_FOUND, 15),
        ]);
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", Some(200), Outcome::Complete),
                row("GET", "/c?x=1", Some(404), Outcome::Complete),
            ]
        );
        assert_eq!(emit.problems.get("http1_midstream_start"), Some(&2));
    }

    #[test]
    fn credentials_and_query_values_are_redacted() {
        let long_agent = "a".repeat(1000);
        let req = format!(
            "GET /login?user=bob&password=hunter2&next=/ HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc.def\r\nCookie: sid=1\r\nX-Api-Key: k\r\nAccept: */*\r\nUser-Agent: {long_agent}\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
        );
        let emit = run(&[Data(C, req.as_bytes(), 1), Data(S, CREATED, 2)]);
        let call = &emit.calls[0];
        assert_eq!(call.path, "/login?user=bob&password=[redacted]&next=/");
        let names: Vec<_> = call.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "authorization",
                "cookie",
                "x-api-key",
                "user-agent",
                "traceparent"
            ]
        );
        for (name, value) in &call.headers {
            if ["authorization", "cookie", "x-api-key"].contains(&name.as_str()) {
                assert_eq!(value, REDACTED);
            }
            assert!(value.len() <= MAX_HEADER_VALUE);
            assert!(!value.contains("hunter2") && !value.contains("abc.def"));
        }
        assert_eq!(call.headers[4].1.len(), MAX_HEADER_VALUE);
    }

    #[test]
    fn kept_headers_are_capped() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..40 {
            req.push_str(&format!("X-Token-{i}: secret\r\n"));
        }
        req.push_str("\r\n");
        let emit = run(&[Data(C, req.as_bytes(), 1)]);
        assert_eq!(emit.calls[0].headers.len(), MAX_KEPT_HEADERS);
    }

    #[test]
    fn malformed_heads_are_counted_and_skipped() {
        let emit = run(&[
            Data(C, b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n", 1),
            Data(
                S,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                2,
            ),
            Data(C, GET_A, 3),
            Data(S, OK_5, 4),
        ]);
        assert_eq!(emit.problems.get("http1_malformed_request"), Some(&1));
        // The 400 answered the unreadable request: it is skipped, and pairing goes on.
        assert_eq!(
            summary(&emit),
            [row("GET", "/a", Some(200), Outcome::Complete)]
        );

        let emit = run(&[
            Data(C, GET_A, 1),
            Data(S, b"HTTP/1.1 2x0 Odd\r\n\r\n", 2),
            Data(C, GET_C, 3),
            Data(S, NOT_FOUND, 4),
        ]);
        assert_eq!(emit.problems.get("http1_malformed_response"), Some(&1));
        // The unreadable bytes may or may not have been /a's response, so the 404 may be
        // /a's or /c's: /c is reported without a status rather than with a guessed one.
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", None, Outcome::Incomplete("malformed")),
                row("GET", "/c?x=1", None, Outcome::Incomplete("unpaired")),
            ]
        );
    }

    #[test]
    fn bad_chunks_and_huge_heads_are_counted() {
        let emit = run(&[
            Data(C, GET_A, 1),
            Data(
                S,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                2,
            ),
            Data(C, GET_C, 3),
            Data(S, NOT_FOUND, 4),
        ]);
        assert_eq!(emit.problems.get("http1_bad_chunk"), Some(&1));
        assert_eq!(
            summary(&emit),
            [
                row("GET", "/a", Some(200), Outcome::Incomplete("bad_chunk")),
                row("GET", "/c?x=1", Some(404), Outcome::Complete),
            ]
        );

        let mut huge = b"GET /huge HTTP/1.1\r\nX-Fill: ".to_vec();
        huge.extend(std::iter::repeat_n(b'f', 70 * 1024));
        huge.extend_from_slice(b"\r\n\r\n");
        for chunks in [1, 7] {
            let size = huge.len().div_ceil(chunks);
            let mut steps: Vec<Step<'_>> = huge.chunks(size).map(|c| Data(C, c, 1)).collect();
            steps.push(Data(C, GET_A, 2));
            let emit = run(&steps);
            assert_eq!(emit.problems.get("http1_head_too_large"), Some(&1));
            assert_eq!(
                summary(&emit),
                [row("GET", "/a", None, Outcome::NoResponse)]
            );
        }
    }

    #[test]
    fn detects_http1_requests() {
        assert!(looks_like_http1(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http1(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(!looks_like_http1(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!looks_like_http1(b"\x16\x03\x01"));
        assert!(!looks_like_http1(b"GETX / HTTP/1.1"));
        assert!(!looks_like_http1(b"GE"));
    }

    /// Feeds each side's stream cut at the given points, both sides interleaved by cut index.
    fn run_cut(client: &[u8], server: &[u8], cuts: &[usize]) -> Emit {
        let mut dec = Http1Decoder::new(Redaction::default());
        let mut emit = Emit::default();
        let pieces = |stream: &[u8]| -> Vec<Vec<u8>> {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut out = Vec::new();
            let mut last = 0;
            for p in points {
                out.push(stream[last..p].to_vec());
                last = p;
            }
            out.push(stream[last..].to_vec());
            out
        };
        for piece in pieces(client) {
            dec.data(C, &piece, 1, &mut emit);
        }
        for piece in pieces(server) {
            dec.data(S, &piece, 2, &mut emit);
        }
        dec.close(3, &mut emit);
        emit
    }

    /// Pieces of streams, valid and not, both sides' kinds mixed.
    const PIECES: [&[u8]; 16] = [
        GET_A,
        POST_B,
        GET_C,
        OK_5,
        CREATED,
        NOT_FOUND,
        CHUNKED_REQUEST,
        CHUNKED_RESPONSE,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"body tail &x=1",
        b"GET /bad HTTP/1.1\r\nno colon\r\n\r\n",
        b"HTTP/1.1 2x0 Odd\r\n\r\n",
        b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"xxGET /mid HTTP/1.1\r\nHost: m\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_calls(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let client = [GET_A, POST_B, CHUNKED_REQUEST, GET_C, b"HEAD /h HTTP/1.1\r\n\r\n"].concat();
            let server = [OK_5, CREATED, CHUNKED_RESPONSE, NOT_FOUND, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"].concat();
            let whole = run_cut(&client, &server, &[]);
            prop_assert_eq!(whole.calls.len(), 5);
            prop_assert!(whole.problems.is_empty());
            let cut = run_cut(&client, &server, &cuts);
            prop_assert_eq!(cut.calls, whole.calls);
            prop_assert!(cut.problems.is_empty());
        }

        #[test]
        fn any_chunking_of_messy_streams_gives_the_same_calls(
            client_parts in proptest::collection::vec(0usize..PIECES.len(), 0..10),
            server_parts in proptest::collection::vec(0usize..PIECES.len(), 0..10),
            cuts in proptest::collection::vec(0usize..3000, 0..10),
        ) {
            let client: Vec<u8> = client_parts.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
            let server: Vec<u8> = server_parts.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
            let whole = run_cut(&client, &server, &[]);
            let cut = run_cut(&client, &server, &cuts);
            prop_assert_eq!(cut.calls, whole.calls);
            prop_assert_eq!(cut.problems, whole.problems);
        }

        #[test]
        fn chunking_never_matters_even_with_gaps(
            steps in proptest::collection::vec((0usize..PIECES.len(), any::<bool>(), 0u8..6, 0usize..64), 0..14),
        ) {
            // Each step: a piece for one side, cut in two, or (kind 0) a gap of some length.
            let mut split: Vec<Step<'_>> = Vec::new();
            let mut joined: Vec<(Side, Option<Vec<u8>>, u64)> = Vec::new();
            for &(piece, server, kind, at) in &steps {
                let side = if server { S } else { C };
                let bytes = PIECES[piece];
                if kind == 0 {
                    split.push(Gap(side, at as u64 + 1, 1));
                    joined.push((side, None, at as u64 + 1));
                    continue;
                }
                let (a, b) = bytes.split_at(at.min(bytes.len()));
                split.push(Data(side, a, 1));
                split.push(Data(side, b, 1));
                match joined.last_mut() {
                    Some((last, Some(buf), _)) if *last == side => buf.extend_from_slice(bytes),
                    _ => joined.push((side, Some(bytes.to_vec()), 0)),
                }
            }
            let joined: Vec<Step<'_>> = joined
                .iter()
                .map(|(side, bytes, len)| match bytes {
                    Some(bytes) => Data(*side, bytes, 1),
                    None => Gap(*side, *len, 1),
                })
                .collect();
            let (a, b) = (run(&split), run(&joined));
            prop_assert_eq!(a.calls, b.calls);
            prop_assert_eq!(a.problems, b.problems);
        }

        #[test]
        fn calls_are_well_formed_under_any_input(
            steps in proptest::collection::vec((0usize..PIECES.len() + 1, any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..14),
        ) {
            let mut owned = Vec::new();
            for (piece, server, gap, noise) in steps {
                let side = if server { S } else { C };
                let bytes = PIECES.get(piece).map_or(noise.clone(), |p| p.to_vec());
                owned.push((side, gap, noise.len() as u64 + 1, bytes));
            }
            let mut timed = Vec::new();
            for (i, (side, gap, len, bytes)) in owned.iter().enumerate() {
                let ts = i as u64 + 1;
                timed.push(if *gap { Gap(*side, *len, ts) } else { Data(*side, bytes, ts) });
            }
            let emit = run(&timed);
            for call in &emit.calls {
                prop_assert!(call.headers.len() <= MAX_KEPT_HEADERS);
                if let Some(response_ns) = call.response_ns {
                    prop_assert!(response_ns >= call.request_ns);
                    prop_assert!(call.response_end_ns.is_none_or(|end| end >= response_ns));
                }
                match call.outcome {
                    Outcome::Complete => prop_assert!(call.status.is_some() && call.response_end_ns.is_some()),
                    Outcome::NoResponse => prop_assert!(call.status.is_none()),
                    Outcome::Incomplete(_) => {}
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            client in proptest::collection::vec(any::<u8>(), 0..400),
            server in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            // Arbitrary bytes, and arbitrary bytes after a valid prefix.
            for (c, s) in [(client.clone(), server.clone()), ([GET_A, &client].concat(), [OK_5, &server].concat())] {
                let emit = run_cut(&c, &s, &cuts);
                for call in &emit.calls {
                    prop_assert!(call.headers.len() <= MAX_KEPT_HEADERS);
                    prop_assert!(call.outcome != Outcome::Complete || call.status.is_some());
                }
            }
        }
    }
}
