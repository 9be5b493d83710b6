//! DNS (RFC 1035): the message header and first question, and the pairing of queries with
//! responses into [`Call`]s, over UDP ([`DnsTransactions`], across datagrams) and over TCP
//! ([`DnsStreamDecoder`], two-byte length-prefixed messages on one connection).
//!
//! Only what a call record needs is decoded: id, flags, response code, the first question
//! (name and type) and the section counts. Answers are counted, not decoded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use crate::call::{Call, Emit, Outcome, Protocol, Side, StreamDecoder};

/// How many unanswered UDP queries [`DnsTransactions`] keeps before evicting the oldest.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// How many unanswered queries one TCP connection keeps before evicting the oldest.
const MAX_PENDING_PER_CONNECTION: usize = 1024;

/// Fixed header length (RFC 1035 4.1.1).
const HEADER_LEN: usize = 12;

/// Longest name on the wire, length octets included (RFC 1035 2.3.4).
const MAX_NAME_LEN: usize = 255;

/// A DNS message's header and first question, as read by [`parse_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    /// Transaction id chosen by the client.
    pub id: u16,
    /// The QR bit: a response rather than a query.
    pub is_response: bool,
    /// OPCODE (0 = QUERY, 4 = NOTIFY, 5 = UPDATE, ...).
    pub opcode: u8,
    /// The TC bit: the response was truncated (the client retries over TCP).
    pub truncated: bool,
    /// RCODE (0 = NOERROR, 2 = SERVFAIL, 3 = NXDOMAIN, 5 = REFUSED, ...).
    pub rcode: u8,
    /// QDCOUNT: questions in the message.
    pub question_count: u16,
    /// ANCOUNT: answer records in the message.
    pub answer_count: u16,
    /// The first question, when QDCOUNT is not zero.
    pub question: Option<DnsQuestion>,
}

/// The first entry of a message's question section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuestion {
    /// QNAME: lowercase, dotted, without the trailing dot (`.` for the root). Bytes outside
    /// letters, digits, `-` and `_` are written `\DDD`, and a dot inside a label `\.`, as dig does.
    pub name: String,
    /// QTYPE (1 = A, 28 = AAAA, ...); see [`qtype_name`].
    pub qtype: u16,
}

/// Why a DNS message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before a field it announces.
    #[error("message truncated: {needed} bytes needed, {len} present")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes in the message.
        len: usize,
    },
    /// A label length octet with the reserved `01`/`10` top bits.
    #[error("bad label type 0x{byte:02x} at offset {offset}")]
    BadLabel {
        /// Offset of the length octet.
        offset: usize,
        /// The octet.
        byte: u8,
    },
    /// A compression pointer that does not point before the name it continues, so following
    /// it could loop.
    #[error("compression pointer at offset {offset} to {target} does not point backwards")]
    PointerLoop {
        /// Offset of the pointer.
        offset: usize,
        /// Where it points.
        target: usize,
    },
    /// A name longer than 255 octets.
    #[error("name longer than {MAX_NAME_LEN} octets")]
    NameTooLong,
}

impl DnsError {
    /// The snake_case reason, for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            DnsError::Truncated { .. } => "truncated",
            DnsError::BadLabel { .. } => "bad_label",
            DnsError::PointerLoop { .. } => "pointer_loop",
            DnsError::NameTooLong => "name_too_long",
        }
    }

    /// The problem counted in [`Emit`] for a datagram or message that failed this way
    /// (`dns_malformed_<reason>`).
    pub fn problem(&self) -> &'static str {
        match self {
            DnsError::Truncated { .. } => "dns_malformed_truncated",
            DnsError::BadLabel { .. } => "dns_malformed_bad_label",
            DnsError::PointerLoop { .. } => "dns_malformed_pointer_loop",
            DnsError::NameTooLong => "dns_malformed_name_too_long",
        }
    }
}

/// Reads a DNS message's header and first question.
pub fn parse_message(bytes: &[u8]) -> Result<DnsMessage, DnsError> {
    let len = bytes.len();
    let u16_at = |at: usize| -> Result<u16, DnsError> {
        match bytes.get(at..at + 2) {
            Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(DnsError::Truncated {
                needed: at + 2,
                len,
            }),
        }
    };
    if len < HEADER_LEN {
        return Err(DnsError::Truncated {
            needed: HEADER_LEN,
            len,
        });
    }
    let id = u16_at(0)?;
    let flags = u16_at(2)?;
    let question_count = u16_at(4)?;
    let answer_count = u16_at(6)?;
    let question = if question_count == 0 {
        None
    } else {
        let mut name = String::new();
        let end = read_name(bytes, HEADER_LEN, &mut name)?;
        let qtype = u16_at(end)?;
        // QCLASS must be present too for the question to be whole.
        u16_at(end + 2)?;
        Some(DnsQuestion { name, qtype })
    };
    Ok(DnsMessage {
        id,
        is_response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000f) as u8,
        question_count,
        answer_count,
        question,
    })
}

/// Reads the (possibly compressed) name at `start` into `out`; returns the offset just past
/// the name where it started (after its first pointer, or after its root label).
fn read_name(msg: &[u8], start: usize, out: &mut String) -> Result<usize, DnsError> {
    let len = msg.len();
    let mut pos = start;
    // Start of the run of labels being read: every pointer must point before it, so targets
    // strictly decrease and following them ends.
    let mut segment_start = start;
    let mut end = None;
    let mut wire_len = 0usize;
    loop {
        let &octet = msg.get(pos).ok_or(DnsError::Truncated {
            needed: pos + 1,
            len,
        })?;
        match octet & 0xc0 {
            0x00 if octet == 0 => {
                if wire_len + 1 > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
                if out.is_empty() {
                    out.push('.');
                }
                return Ok(end.unwrap_or(pos + 1));
            }
            0x00 => {
                let label_len = usize::from(octet);
                let label = msg
                    .get(pos + 1..pos + 1 + label_len)
                    .ok_or(DnsError::Truncated {
                        needed: pos + 1 + label_len,
                        len,
                    })?;
                wire_len += 1 + label_len;
                if wire_len + 1 > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
                if !out.is_empty() {
                    out.push('.');
                }
                push_label(out, label);
                pos += 1 + label_len;
            }
            0xc0 => {
                let &low = msg.get(pos + 1).ok_or(DnsError::Truncated {
                    needed: pos + 2,
                    len,
                })?;
                let target = (usize::from(octet & 0x3f) << 8) | usize::from(low);
                if target >= segment_start {
                    return Err(DnsError::PointerLoop {
                        offset: pos,
                        target,
                    });
                }
                end.get_or_insert(pos + 2);
                segment_start = target;
                pos = target;
            }
            _ => {
                return Err(DnsError::BadLabel {
                    offset: pos,
                    byte: octet,
                });
            }
        }
    }
}

/// Appends one label, lowercased, escaping what would make the dotted name ambiguous.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(char::from(b)),
            b'A'..=b'Z' => out.push(char::from(b.to_ascii_lowercase())),
            b'.' => out.push_str("\\."),
            b'\\' => out.push_str("\\\\"),
            _ => {
                out.push('\\');
                out.push(char::from(b'0' + b / 100));
                out.push(char::from(b'0' + (b / 10) % 10));
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
}

/// The mnemonic of a query type (`A`, `AAAA`, ...), or `TYPE<n>` (RFC 3597) for the others.
pub fn qtype_name(qtype: u16) -> String {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        other => return format!("TYPE{other}"),
    };
    name.to_string()
}

/// A query waiting for its response.
#[derive(Debug, Clone)]
struct Query {
    id: u16,
    name: String,
    qtype: u16,
    ts_ns: u64,
    len: usize,
}

impl Query {
    fn from_message(msg: DnsMessage, ts_ns: u64, len: usize) -> Option<Query> {
        let question = msg.question?;
        Some(Query {
            id: msg.id,
            name: question.name,
            qtype: question.qtype,
            ts_ns,
            len,
        })
    }

    /// The call for this query, answered by `response` (rcode, first byte seen, length) or not.
    fn into_call(self, response: Option<(u8, u64, usize)>, outcome: Outcome) -> Call {
        Call {
            protocol: Protocol::Dns,
            method: qtype_name(self.qtype),
            path: self.name,
            authority: None,
            status: response.map(|(rcode, _, _)| u32::from(rcode)),
            grpc: None,
            request_ns: self.ts_ns,
            response_ns: response.map(|(_, ts, _)| ts),
            response_end_ns: response.map(|(_, ts, _)| ts),
            request_bytes: self.len as u64,
            response_bytes: response.map_or(0, |(_, _, len)| len as u64),
            headers: Vec::new(),
            outcome,
        }
    }
}

/// What UDP queries are keyed by: the caller's flow key, the id and the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueryKey<K> {
    flow: K,
    id: u16,
    name: String,
}

/// Pairs UDP queries with their responses across datagrams. The caller chooses the flow key
/// `K` (the session uses the (client, server) socket address pair); a query and its response
/// pair when their keys, ids and question names agree.
#[derive(Debug)]
pub struct DnsTransactions<K> {
    /// Unanswered queries, with their arrival sequence number.
    pending: HashMap<QueryKey<K>, (u64, Query)>,
    /// Arrival order of `pending`, oldest first.
    order: BTreeMap<u64, QueryKey<K>>,
    next_seq: u64,
    max_pending: usize,
}

impl<K: Hash + Eq + Clone> Default for DnsTransactions<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> DnsTransactions<K> {
    /// Pairs with at most [`DEFAULT_MAX_PENDING`] unanswered queries.
    pub fn new() -> Self {
        Self::with_max_pending(DEFAULT_MAX_PENDING)
    }

    /// Pairs with at most `max_pending` unanswered queries (at least one).
    pub fn with_max_pending(max_pending: usize) -> Self {
        DnsTransactions {
            pending: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            max_pending: max_pending.max(1),
        }
    }

    /// Unanswered queries held.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// One datagram of flow `key`, sent by `side`, seen at `ts_ns`. A response that answers a
    /// held query completes a call into `out`; problems are counted in `emit`.
    pub fn datagram(
        &mut self,
        key: K,
        side: Side,
        bytes: &[u8],
        ts_ns: u64,
        out: &mut Vec<(K, Call)>,
        emit: &mut Emit,
    ) {
        let msg = match parse_message(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                emit.problem(e.problem());
                return;
            }
        };
        if msg.is_response != (side == Side::Server) {
            emit.problem("dns_side_mismatch");
        }
        let (id, is_response, rcode) = (msg.id, msg.is_response, msg.rcode);
        let Some(query) = Query::from_message(msg, ts_ns, bytes.len()) else {
            emit.problem("dns_no_question");
            return;
        };
        let qkey = QueryKey {
            flow: key,
            id,
            name: query.name.clone(),
        };
        if is_response {
            match self.pending.remove(&qkey) {
                Some((seq, asked)) => {
                    self.order.remove(&seq);
                    let call =
                        asked.into_call(Some((rcode, ts_ns, bytes.len())), Outcome::Complete);
                    out.push((qkey.flow, call));
                }
                None => emit.problem("dns_unmatched_response"),
            }
            return;
        }
        if self.pending.contains_key(&qkey) {
            // A retransmission: latency counts from the first copy.
            emit.problem("dns_duplicate_query");
            return;
        }
        while self.pending.len() >= self.max_pending {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, asked)) = self.pending.remove(&oldest) {
                emit.problem("dns_pending_evicted");
                out.push((
                    oldest.flow,
                    asked.into_call(None, Outcome::Incomplete("evicted")),
                ));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, qkey.clone());
        self.pending.insert(qkey, (seq, query));
    }

    /// Emits, as [`Outcome::NoResponse`], the queries seen at least `timeout_ns` before `now_ns`
    /// that are still unanswered.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64, out: &mut Vec<(K, Call)>) {
        while let Some(entry) = self.order.first_entry() {
            let Some((_, asked)) = self.pending.get(entry.get()) else {
                entry.remove();
                continue;
            };
            if asked.ts_ns.saturating_add(timeout_ns) > now_ns {
                break;
            }
            let qkey = entry.remove();
            if let Some((_, asked)) = self.pending.remove(&qkey) {
                out.push((qkey.flow, asked.into_call(None, Outcome::NoResponse)));
            }
        }
    }
}

/// Collects one side's length-prefixed messages (RFC 1035 4.2.2) across chunks.
#[derive(Debug, Default)]
struct Framer {
    /// A partial message (prefix included), when one straddles chunks.
    partial: Vec<u8>,
    /// When the partial message's first byte was seen.
    partial_ts: u64,
}

/// DNS over TCP on one connection: both sides' messages, queries paired with responses by
/// id and question (clients may pipeline several queries).
#[derive(Debug, Default)]
pub struct DnsStreamDecoder {
    client: Framer,
    server: Framer,
    pending: VecDeque<Query>,
    /// After a gap the framing is lost for good: the rest of the connection is ignored.
    stopped: bool,
}

impl DnsStreamDecoder {
    /// A decoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    fn message(&mut self, side: Side, msg: &[u8], ts_ns: u64, emit: &mut Emit) {
        let parsed = match parse_message(msg) {
            Ok(parsed) => parsed,
            Err(e) => {
                emit.problem(e.problem());
                return;
            }
        };
        if parsed.is_response != (side == Side::Server) {
            emit.problem("dns_side_mismatch");
        }
        let (is_response, rcode) = (parsed.is_response, parsed.rcode);
        let Some(query) = Query::from_message(parsed, ts_ns, msg.len()) else {
            emit.problem("dns_no_question");
            return;
        };
        if is_response {
            let at = self
                .pending
                .iter()
                .position(|q| q.id == query.id && q.name == query.name);
            match at.and_then(|at| self.pending.remove(at)) {
                Some(asked) => emit
                    .calls
                    .push(asked.into_call(Some((rcode, ts_ns, msg.len())), Outcome::Complete)),
                None => emit.problem("dns_unmatched_response"),
            }
            return;
        }
        if self.pending.len() >= MAX_PENDING_PER_CONNECTION
            && let Some(oldest) = self.pending.pop_front()
        {
            emit.problem("dns_pending_evicted");
            emit.calls
                .push(oldest.into_call(None, Outcome::Incomplete("evicted")));
        }
        self.pending.push_back(query);
    }
}

impl StreamDecoder for DnsStreamDecoder {
    fn data(&mut self, side: Side, bytes: &[u8], ts_ns: u64, emit: &mut Emit) {
        if self.stopped {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let framer = match side {
                Side::Client => &mut self.client,
                Side::Server => &mut self.server,
            };
            if framer.partial.is_empty() {
                if let Some(&[hi, lo]) = rest.get(..2) {
                    let total = 2 + usize::from(u16::from_be_bytes([hi, lo]));
                    if let Some(whole) = rest.get(2..total) {
                        // The whole message is in this chunk: read it in place.
                        self.message(side, whole, ts_ns, emit);
                        rest = rest.get(total..).unwrap_or_default();
                        continue;
                    }
                }
                framer.partial_ts = ts_ns;
            }
            // Complete the length prefix first, then the message it announces.
            let want = match framer.partial.get(..2) {
                Some(&[hi, lo]) => 2 + usize::from(u16::from_be_bytes([hi, lo])),
                _ => 2,
            };
            let take = want.saturating_sub(framer.partial.len()).min(rest.len());
            let (head, tail) = rest.split_at(take);
            framer.partial.extend_from_slice(head);
            rest = tail;
            let complete = match framer.partial.get(..2) {
                Some(&[hi, lo]) => {
                    framer.partial.len() == 2 + usize::from(u16::from_be_bytes([hi, lo]))
                }
                _ => false,
            };
            if complete {
                let whole = std::mem::take(&mut framer.partial);
                let started = framer.partial_ts;
                self.message(side, whole.get(2..).unwrap_or_default(), started, emit);
                // Keep the allocation for the next straddling message.
                let framer = match side {
                    Side::Client => &mut self.client,
                    Side::Server => &mut self.server,
                };
                framer.partial = whole;
                framer.partial.clear();
            }
        }
    }

    fn gap(&mut self, _side: Side, _len: u64, _ts_ns: u64, emit: &mut Emit) {
        if self.stopped {
            return;
        }
        emit.problem("dns_gap");
        self.stopped = true;
        self.client = Framer::default();
        self.server = Framer::default();
        for asked in self.pending.drain(..) {
            emit.calls
                .push(asked.into_call(None, Outcome::Incomplete("gap")));
        }
    }

    fn close(&mut self, _ts_ns: u64, emit: &mut Emit) {
        for framer in [&mut self.client, &mut self.server] {
            if !framer.partial.is_empty() {
                emit.problem("dns_truncated_message");
                framer.partial.clear();
            }
        }
        for asked in self.pending.drain(..) {
            emit.calls.push(asked.into_call(None, Outcome::NoResponse));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `example.com A` query, id 0x1234, RD set (RFC 1035 4.1).
    const QUERY: &[u8] = &[
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, // QNAME
        0x00, 0x01, 0x00, 0x01, // QTYPE A, QCLASS IN
    ];

    /// Its NOERROR response: the question repeated and one A record whose owner is the
    /// compression pointer 0xc00c (the QNAME at offset 12).
    const RESPONSE: &[u8] = &[
        0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // header
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0x00, 0x01, 0x00,
        0x01, // question
        0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x0e, 0x10, 0x00, 0x04, 93, 184, 216,
        34, // answer
    ];

    /// A query with two questions: `Example.COM`, then `www` followed by a compression
    /// pointer back to the first name (offset 12).
    fn with_pointer(id: u16, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0x00, 0x02, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&[
            7, b'E', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'C', b'O', b'M', 0,
        ]);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, 12, 0, 1, 0, 1]);
        m
    }

    fn response_for(query: &[u8], rcode: u8, answers: u16) -> Vec<u8> {
        let mut m = query.to_vec();
        if let Some(flags) = m.get_mut(2..4) {
            flags.copy_from_slice(&(0x8180u16 | u16::from(rcode)).to_be_bytes());
        }
        if let Some(an) = m.get_mut(6..8) {
            an.copy_from_slice(&answers.to_be_bytes());
        }
        m
    }

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m
    }

    #[test]
    fn parses_query_and_compressed_response() {
        let q = parse_message(QUERY).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(!q.is_response);
        assert_eq!(q.opcode, 0);
        assert_eq!(q.answer_count, 0);
        let question = q.question.unwrap();
        assert_eq!(question.name, "example.com");
        assert_eq!(qtype_name(question.qtype), "A");

        let r = parse_message(RESPONSE).unwrap();
        assert!(r.is_response);
        assert_eq!(r.rcode, 0);
        assert_eq!(r.answer_count, 1);
        assert_eq!(r.question.unwrap().name, "example.com");
    }

    #[test]
    fn follows_pointers_only_in_later_names_and_lowercases() {
        let m = with_pointer(7, 28);
        let msg = parse_message(&m).unwrap();
        let q = msg.question.unwrap();
        assert_eq!(q.name, "example.com");
        assert_eq!(q.qtype, 28);
        // The second question's name, read directly: `www` then the pointer.
        let mut name = String::new();
        let end = read_name(&m, 12 + 13 + 4, &mut name).unwrap();
        assert_eq!(name, "www.example.com");
        assert_eq!(end, 12 + 13 + 4 + 6);
    }

    #[test]
    fn nxdomain_is_reported_as_rcode_3() {
        let r = parse_message(&response_for(QUERY, 3, 0)).unwrap();
        assert_eq!(r.rcode, 3);
        assert_eq!(r.answer_count, 0);
    }

    #[test]
    fn pointer_loops_are_refused() {
        // QNAME at 12 is a pointer to itself.
        let mut m = QUERY.get(..12).unwrap().to_vec();
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_message(&m).unwrap_err().reason(), "pointer_loop");
        // A label then a pointer back to that label: a loop that grows the name.
        let mut m = QUERY.get(..12).unwrap().to_vec();
        m.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_message(&m).unwrap_err().reason(), "pointer_loop");
    }

    #[test]
    fn truncated_and_bad_labels_are_refused_with_reasons() {
        for cut in 0..QUERY.len() {
            let err = parse_message(QUERY.get(..cut).unwrap()).unwrap_err();
            assert_eq!(err.reason(), "truncated", "cut at {cut}");
            assert_eq!(err.problem(), "dns_malformed_truncated");
        }
        let mut m = QUERY.to_vec();
        m[12] = 0x47; // 01 top bits: the obsolete extended label type
        assert_eq!(parse_message(&m).unwrap_err().reason(), "bad_label");
        let mut long = QUERY.get(..12).unwrap().to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_message(&long).unwrap_err().reason(), "name_too_long");
    }

    #[test]
    fn odd_bytes_in_labels_are_escaped() {
        let mut m = QUERY.get(..12).unwrap().to_vec();
        m.extend_from_slice(&[3, b'a', b'.', 0xff, 0, 0, 1, 0, 1]);
        let q = parse_message(&m).unwrap().question.unwrap();
        assert_eq!(q.name, "a\\.\\255");
        let mut root = QUERY.get(..12).unwrap().to_vec();
        root.extend_from_slice(&[0, 0, 2, 0, 1]);
        assert_eq!(parse_message(&root).unwrap().question.unwrap().name, ".");
    }

    #[test]
    fn qtype_names() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(255), "ANY");
        assert_eq!(qtype_name(99), "TYPE99");
    }

    #[test]
    fn udp_pairs_two_ids_in_flight() {
        let mut tx = DnsTransactions::new();
        let (mut out, mut emit) = (Vec::new(), Emit::default());
        let a = query(1, "api.svc.cluster.local", 1);
        let aaaa = query(2, "api.svc.cluster.local", 28);
        tx.datagram("flow", Side::Client, &a, 100, &mut out, &mut emit);
        tx.datagram("flow", Side::Client, &aaaa, 110, &mut out, &mut emit);
        assert_eq!(tx.pending(), 2);
        // Answered out of order; the second one on another flow does not match.
        let aaaa_r = response_for(&aaaa, 0, 1);
        tx.datagram("other", Side::Server, &aaaa_r, 150, &mut out, &mut emit);
        assert_eq!(emit.problems.get("dns_unmatched_response"), Some(&1));
        tx.datagram("flow", Side::Server, &aaaa_r, 160, &mut out, &mut emit);
        let a_r = response_for(&a, 3, 0);
        tx.datagram("flow", Side::Server, &a_r, 200, &mut out, &mut emit);
        assert_eq!(tx.pending(), 0);
        let calls: Vec<_> = out.iter().map(|(k, c)| (*k, c.clone())).collect();
        assert_eq!(calls.len(), 2);
        let (k, first) = &calls[0];
        assert_eq!(*k, "flow");
        assert_eq!(first.method, "AAAA");
        assert_eq!(first.path, "api.svc.cluster.local");
        assert_eq!(first.status, Some(0));
        assert_eq!((first.request_ns, first.response_ns), (110, Some(160)));
        assert_eq!(first.request_bytes, aaaa.len() as u64);
        assert_eq!(first.response_bytes, aaaa_r.len() as u64);
        assert_eq!(first.outcome, Outcome::Complete);
        let (_, second) = &calls[1];
        assert_eq!(second.method, "A");
        assert_eq!(second.status, Some(3));
        assert_eq!(second.latency_ns(), Some(100));
    }

    #[test]
    fn udp_expiry_and_eviction() {
        let mut tx = DnsTransactions::with_max_pending(2);
        let (mut out, mut emit) = (Vec::new(), Emit::default());
        for (id, ts) in [(1u16, 10u64), (2, 20), (3, 30)] {
            tx.datagram(
                0u8,
                Side::Client,
                &query(id, "a.b", 1),
                ts,
                &mut out,
                &mut emit,
            );
        }
        // The third query evicted the first.
        assert_eq!(emit.problems.get("dns_pending_evicted"), Some(&1));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.request_ns, 10);
        assert_eq!(out[0].1.outcome, Outcome::Incomplete("evicted"));
        out.clear();
        tx.expire(25, 10, &mut out);
        assert!(
            out.is_empty(),
            "nothing is 10ns old at 25 but the evicted one"
        );
        tx.expire(30, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.request_ns, 20);
        assert_eq!(out[0].1.outcome, Outcome::NoResponse);
        assert_eq!(out[0].1.status, None);
        tx.expire(u64::MAX, 10, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(tx.pending(), 0);
    }

    #[test]
    fn udp_counts_malformed_and_duplicates() {
        let mut tx = DnsTransactions::new();
        let (mut out, mut emit) = (Vec::new(), Emit::default());
        tx.datagram(0u8, Side::Client, &QUERY[..5], 1, &mut out, &mut emit);
        tx.datagram(0u8, Side::Client, QUERY, 2, &mut out, &mut emit);
        tx.datagram(0u8, Side::Client, QUERY, 3, &mut out, &mut emit);
        tx.datagram(0u8, Side::Server, RESPONSE, 4, &mut out, &mut emit);
        assert_eq!(emit.problems.get("dns_malformed_truncated"), Some(&1));
        assert_eq!(emit.problems.get("dns_duplicate_query"), Some(&1));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.request_ns, 2);
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = (msg.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(msg);
        out
    }

    fn run_tcp(client: &[&[u8]], server: &[&[u8]]) -> Emit {
        let mut dec = DnsStreamDecoder::new();
        let mut emit = Emit::default();
        for (i, chunk) in client.iter().enumerate() {
            dec.data(Side::Client, chunk, 100 + i as u64, &mut emit);
        }
        for (i, chunk) in server.iter().enumerate() {
            dec.data(Side::Server, chunk, 200 + i as u64, &mut emit);
        }
        dec.close(300, &mut emit);
        emit
    }

    #[test]
    fn tcp_pipelined_in_one_chunk() {
        let q1 = query(10, "one.example", 1);
        let q2 = query(11, "two.example", 16);
        let client = [framed(&q1), framed(&q2)].concat();
        let server = [
            framed(&response_for(&q2, 0, 2)),
            framed(&response_for(&q1, 2, 0)),
        ]
        .concat();
        let emit = run_tcp(&[&client], &[&server]);
        assert!(emit.problems.is_empty(), "{:?}", emit.problems);
        let got: Vec<_> = emit
            .calls
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str(), c.status, c.outcome))
            .collect();
        assert_eq!(
            got,
            [
                ("TXT", "two.example", Some(0), Outcome::Complete),
                ("A", "one.example", Some(2), Outcome::Complete),
            ]
        );
        assert!(
            emit.calls
                .iter()
                .all(|c| c.request_ns == 100 && c.response_ns == Some(200))
        );
    }

    #[test]
    fn tcp_messages_split_anywhere_give_the_same_calls() {
        let q = framed(QUERY);
        let r = framed(RESPONSE);
        let whole = run_tcp(&[&q], &[&r]);
        assert_eq!(whole.calls.len(), 1);
        for cut in 0..=q.len() {
            for rcut in [0, 1, 2, 13, r.len()] {
                let (qa, qb) = q.split_at(cut);
                let (ra, rb) = r.split_at(rcut);
                let split = run_tcp(&[qa, qb], &[ra, rb]);
                assert_eq!(split.calls.len(), 1, "cut {cut} {rcut}");
                let (a, b) = (&split.calls[0], &whole.calls[0]);
                assert_eq!(
                    (&a.method, &a.path, a.status),
                    (&b.method, &b.path, b.status)
                );
                // The request started in the first non-empty chunk.
                let first = if cut == 0 { 101 } else { 100 };
                assert_eq!(a.request_ns, first);
            }
        }
    }

    #[test]
    fn tcp_gap_stops_and_reports_pending_as_incomplete() {
        let mut dec = DnsStreamDecoder::new();
        let mut emit = Emit::default();
        dec.data(Side::Client, &framed(QUERY), 1, &mut emit);
        dec.gap(Side::Server, 10, 2, &mut emit);
        dec.data(Side::Server, &framed(RESPONSE), 3, &mut emit);
        dec.close(4, &mut emit);
        assert_eq!(emit.problems.get("dns_gap"), Some(&1));
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].outcome, Outcome::Incomplete("gap"));
        assert_eq!(emit.calls[0].status, None);
    }

    #[test]
    fn tcp_close_reports_unanswered_and_partial() {
        let emit = run_tcp(&[&framed(QUERY)], &[&framed(RESPONSE)[..7]]);
        assert_eq!(emit.calls.len(), 1);
        assert_eq!(emit.calls[0].outcome, Outcome::NoResponse);
        assert_eq!(emit.problems.get("dns_truncated_message"), Some(&1));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_message(&bytes);
        }

        #[test]
        fn tcp_any_chunking_gives_the_same_calls(
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let q1 = query(1, "a.example", 1);
            let q2 = query(2, "b.example", 28);
            let client = [framed(&q1), framed(&q2)].concat();
            let server = [framed(&response_for(&q1, 0, 1)), framed(&response_for(&q2, 3, 0))].concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (client.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&client[last..p]);
                last = p;
            }
            chunks.push(&client[last..]);
            let mut dec = DnsStreamDecoder::new();
            let mut emit = Emit::default();
            for chunk in chunks {
                dec.data(Side::Client, chunk, 5, &mut emit);
            }
            for chunk in server.chunks(7) {
                dec.data(Side::Server, chunk, 9, &mut emit);
            }
            let got: Vec<_> = emit.calls.iter().map(|c| (c.path.clone(), c.status)).collect();
            prop_assert_eq!(got, vec![("a.example".to_string(), Some(0)), ("b.example".to_string(), Some(3))]);
            prop_assert!(emit.problems.is_empty());
        }
    }
}
