//! HPACK (RFC 7541) header-block decoding that survives a capture starting mid-connection.
//!
//! This module owns the decoder side of HPACK: the static table (Appendix A), the dynamic
//! table with its size updates and eviction (section 4), integer and string literals
//! (section 5, Huffman code of Appendix B) and the field representations (section 6).
//!
//! Decoders in HTTP/2 stacks drop a whole header block when an index points into dynamic
//! table entries they never saw. A tap that starts watching a connection late sees that all
//! the time, so this decoder keeps going and reports such a name or value as
//! [`Field::Unknown`]. The rule it follows is *better unknown than wrong*:
//!
//! - Dynamic indices count from the newest entry (index 62 is the newest). Eviction only
//!   ever removes the oldest entries, so "the j-th newest entry inserted since we joined" is
//!   exactly what index `62 + j` names for as long as the encoder may reference it. Entries
//!   inserted before we joined are older than all of ours: an index past our entries is
//!   [`Field::Unknown`], never a guess.
//! - The encoder's current table size is unknown after joining until a size update says
//!   it. Without it we only drop our own entries when a generous memory bound forces us to
//!   (dropping makes later references Unknown, it never makes them wrong), and we never
//!   conclude that the older, unseen part of the table is empty.
//! - When a block cannot be decoded to its end, or bytes of the connection were lost
//!   ([`HpackDecoder::forget_history`]), entries may have been inserted that we did not see,
//!   which shifts every index: the decoder forgets its entries and continues as if it had
//!   just joined.

use std::collections::VecDeque;
use std::sync::LazyLock;

/// The dynamic table size both ends start with (RFC 9113 SETTINGS_HEADER_TABLE_SIZE default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// The most dynamic-table bytes kept per decoder. A larger table the peer allows is followed
/// as if its size were unknown: entries beyond this bound are dropped and later references to
/// them decode as [`Field::Unknown`].
pub const MAX_TRACKED_TABLE_SIZE: usize = 64 * 1024;

/// Per-entry overhead counted in the table size (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header name or value as far as the decoder knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The bytes as sent.
    Known(Vec<u8>),
    /// It referred to a dynamic-table entry inserted before the decoder joined the
    /// connection (or before bytes were lost); its content cannot be known.
    Unknown,
}

impl Field {
    /// The bytes, when known.
    pub fn known(&self) -> Option<&[u8]> {
        match self {
            Field::Known(bytes) => Some(bytes),
            Field::Unknown => None,
        }
    }

    fn from_ref(bytes: Option<&[u8]>) -> Field {
        bytes.map_or(Field::Unknown, |b| Field::Known(b.to_vec()))
    }
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// The field name (lowercase in HTTP/2).
    pub name: Field,
    /// The field value.
    pub value: Field,
}

/// Why a header block could not be decoded to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a representation.
    #[error("header block ends inside a field representation")]
    Truncated,
    /// An integer does not fit in 32 bits.
    #[error("integer representation overflows 32 bits")]
    IntegerOverflow,
    /// Index 0, or an index past a table whose every entry is known.
    #[error("index {index} is not in the header table")]
    BadIndex {
        /// The index as encoded.
        index: u32,
    },
    /// A Huffman string contains the EOS symbol.
    #[error("Huffman string contains the EOS symbol")]
    HuffmanEos,
    /// A Huffman string's padding is longer than 7 bits or not all ones.
    #[error("Huffman string has invalid padding")]
    HuffmanPadding,
    /// A dynamic table size update above what the decoder's side allowed.
    #[error("dynamic table size update to {size} above the allowed {allowed}")]
    SizeUpdateTooLarge {
        /// The size asked for.
        size: u32,
        /// The largest size the decoder's side announced.
        allowed: usize,
    },
    /// A dynamic table size update after the first field of a block.
    #[error("dynamic table size update after the first header field of the block")]
    LateSizeUpdate,
}

/// One dynamic table entry; `None` is a name we could not know (inserted with an indexed
/// name that referred to an entry older than our history).
#[derive(Debug, Clone)]
struct Entry {
    name: Option<Box<[u8]>>,
    value: Option<Box<[u8]>>,
    /// Its size (RFC 7541 4.1); a lower bound when the name is unknown.
    size: usize,
}

/// An HPACK decoder for one direction of one connection.
#[derive(Debug, Clone)]
pub struct HpackDecoder {
    /// Entries we saw inserted, newest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (a lower bound when some names are unknown).
    size: usize,
    /// The encoder's current maximum table size, when known.
    max_size: Option<usize>,
    /// Whether entries older than `entries` may exist that we never saw.
    older_unknown: bool,
    /// The largest table size the decoder's side announced (SETTINGS_HEADER_TABLE_SIZE),
    /// when known.
    allowed: Option<usize>,
    /// Scratch for literal names and values, reused across blocks.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Default for HpackDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HpackDecoder {
    /// A decoder for a connection seen from its first header block.
    pub fn new() -> Self {
        HpackDecoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: Some(DEFAULT_TABLE_SIZE),
            older_unknown: false,
            allowed: Some(DEFAULT_TABLE_SIZE),
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A decoder for a connection whose earlier header blocks were not seen: the table's
    /// content, size and limit are unknown.
    pub fn joined_mid_stream() -> Self {
        HpackDecoder {
            max_size: None,
            older_unknown: true,
            allowed: None,
            ..Self::new()
        }
    }

    /// Header blocks of this direction were (or may have been) lost: forget every entry
    /// and the table size, as if the decoder had just joined. The announced limit is kept.
    pub fn forget_history(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.max_size = None;
        self.older_unknown = true;
    }

    /// The decoder's side announced SETTINGS_HEADER_TABLE_SIZE = `size`: the limit for the
    /// encoder's size updates. The limit is the largest value announced so far, because a
    /// passive observer cannot tell which announcement the encoder had seen when it encoded
    /// a block.
    pub fn set_max_allowed(&mut self, size: usize) {
        self.allowed = Some(self.allowed.map_or(size, |a| a.max(size)));
    }

    /// Whether every entry of the dynamic table is known (false after joining mid-stream,
    /// until the table is provably emptied of entries we never saw).
    pub fn table_known(&self) -> bool {
        !self.older_unknown
    }

    /// How many dynamic-table entries the decoder holds.
    pub fn known_entries(&self) -> usize {
        self.entries.len()
    }

    /// Decodes one complete header block, appending its fields to `out`.
    ///
    /// On error, the fields decoded before the problem are in `out` and the decoder has
    /// forgotten its table (the rest of the block may have inserted entries).
    pub fn decode(&mut self, block: &[u8], out: &mut Vec<Header>) -> Result<(), HpackError> {
        self.decode_with(block, |name, value| {
            out.push(Header {
                name: Field::from_ref(name),
                value: Field::from_ref(value),
            });
        })
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field
    /// (`None` = unknown) without copying it. Errors as for [`HpackDecoder::decode`].
    pub fn decode_with<F>(&mut self, block: &[u8], field: F) -> Result<(), HpackError>
    where
        F: FnMut(Option<&[u8]>, Option<&[u8]>),
    {
        let result = self.decode_fields(block, field);
        if result.is_err() {
            self.forget_history();
        }
        result
    }

    fn decode_fields<F>(&mut self, block: &[u8], mut field: F) -> Result<(), HpackError>
    where
        F: FnMut(Option<&[u8]>, Option<&[u8]>),
    {
        let mut pos = 0;
        let mut seen_field = false;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                // 6.1 Indexed Header Field.
                let index = read_int(block, &mut pos, 7)?;
                let (name, value) = lookup(&self.entries, self.older_unknown, index)?;
                field(name, value);
                seen_field = true;
            } else if first & 0xc0 == 0x40 {
                // 6.2.1 Literal Header Field with Incremental Indexing.
                let index = read_int(block, &mut pos, 6)?;
                let name: Option<Box<[u8]>> = if index == 0 {
                    read_string(block, &mut pos, &mut self.name_buf)?;
                    Some(self.name_buf.as_slice().into())
                } else {
                    lookup(&self.entries, self.older_unknown, index)?
                        .0
                        .map(Box::from)
                };
                read_string(block, &mut pos, &mut self.value_buf)?;
                field(name.as_deref(), Some(&self.value_buf));
                let value: Box<[u8]> = self.value_buf.as_slice().into();
                let size = name.as_ref().map_or(0, |n| n.len()) + value.len() + ENTRY_OVERHEAD;
                self.insert(Entry {
                    name,
                    value: Some(value),
                    size,
                });
                seen_field = true;
            } else if first & 0xe0 == 0x20 {
                // 6.3 Dynamic Table Size Update: only before the first field.
                if seen_field {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = read_int(block, &mut pos, 5)?;
                self.resize(size)?;
            } else {
                // 6.2.2 without indexing (0000) and 6.2.3 never indexed (0001).
                let index = read_int(block, &mut pos, 4)?;
                if index == 0 {
                    read_string(block, &mut pos, &mut self.name_buf)?;
                    read_string(block, &mut pos, &mut self.value_buf)?;
                    field(Some(&self.name_buf), Some(&self.value_buf));
                } else {
                    let (name, _) = lookup(&self.entries, self.older_unknown, index)?;
                    read_string(block, &mut pos, &mut self.value_buf)?;
                    field(name, Some(&self.value_buf));
                }
                seen_field = true;
            }
        }
        Ok(())
    }

    /// Applies a dynamic table size update (RFC 7541 4.3 and 6.3).
    fn resize(&mut self, size: u32) -> Result<(), HpackError> {
        let new_max = size as usize;
        if let Some(allowed) = self.allowed
            && new_max > allowed
        {
            return Err(HpackError::SizeUpdateTooLarge { size, allowed });
        }
        if new_max > MAX_TRACKED_TABLE_SIZE {
            self.max_size = None;
            self.evict_to(MAX_TRACKED_TABLE_SIZE);
            return Ok(());
        }
        self.max_size = Some(new_max);
        let evicted = self.evict_to(new_max);
        self.conclude_older_gone(new_max, evicted);
        Ok(())
    }

    /// Adds an entry the way the encoder did (RFC 7541 4.4).
    fn insert(&mut self, entry: Entry) {
        match self.max_size {
            Some(max) if entry.size > max => {
                // Too large: the encoder emptied its table and did not insert it.
                self.entries.clear();
                self.size = 0;
                self.older_unknown = false;
            }
            Some(max) => {
                self.size += entry.size;
                self.entries.push_front(entry);
                let evicted = self.evict_to(max);
                self.conclude_older_gone(max, evicted);
            }
            None => {
                // Unknown table size: always insert (if the encoder did not, the entry is
                // never referenced; if it did and we had not, every index would shift).
                self.size += entry.size;
                self.entries.push_front(entry);
                let bound = self
                    .allowed
                    .map_or(MAX_TRACKED_TABLE_SIZE, |a| a.min(MAX_TRACKED_TABLE_SIZE));
                self.evict_to(bound);
            }
        }
    }

    /// Drops the oldest entries until the size is at most `max`; whether any went.
    fn evict_to(&mut self, max: usize) -> bool {
        let mut evicted = false;
        while self.size > max {
            let Some(oldest) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size = self.size.saturating_sub(oldest.size);
            evicted = true;
        }
        evicted
    }

    /// With the table's maximum known exactly, entries we never saw cannot remain once one
    /// of ours had to go (they are older, so they went first) or once ours leave less room
    /// than the smallest possible entry.
    fn conclude_older_gone(&mut self, max: usize, evicted_ours: bool) {
        if evicted_ours || max.saturating_sub(self.size) < ENTRY_OVERHEAD {
            self.older_unknown = false;
        }
    }
}

/// A name and value borrowed from a table (`None` = unknown).
type FieldRefs<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The name and value at `index`.
fn lookup(
    entries: &VecDeque<Entry>,
    older_unknown: bool,
    index: u32,
) -> Result<FieldRefs<'_>, HpackError> {
    let i = index as usize;
    if i == 0 {
        return Err(HpackError::BadIndex { index });
    }
    if let Some(&(name, value)) = STATIC_TABLE.get(i - 1) {
        return Ok((Some(name.as_bytes()), Some(value.as_bytes())));
    }
    let dynamic = i - 1 - STATIC_TABLE.len();
    match entries.get(dynamic) {
        Some(entry) => Ok((entry.name.as_deref(), entry.value.as_deref())),
        None if older_unknown => Ok((None, None)),
        None => Err(HpackError::BadIndex { index }),
    }
}

/// Reads an integer with an `prefix_bits`-bit prefix (RFC 7541 5.1).
fn read_int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Result<u32, HpackError> {
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let max_prefix = (1u32 << prefix_bits) - 1;
    let mut value = u64::from(u32::from(first) & max_prefix);
    if value < u64::from(max_prefix) {
        return Ok(value as u32);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok(value as u32);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// Reads a string literal (RFC 7541 5.2) into `out` (cleared first).
fn read_string(block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = read_int(block, pos, 7)? as usize;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    out.clear();
    if huffman {
        huffman_decode(raw, out)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// The static table (RFC 7541 Appendix A); index 1 is the first element.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths in bits of the HPACK Huffman code (RFC 7541 Appendix B), symbols 0..=255
/// then EOS (256). The code is canonical: within one length, codes are consecutive in
/// symbol order, and each length's first code follows the previous length's last one,
/// shifted left. So the lengths alone define the table.
#[rustfmt::skip]
pub const HUFFMAN_CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, // 0x20 ' '..'/'
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, // 0x30 '0'..'?'
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, // 0x40 '@'..'O'
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, // 0x50 'P'..'_'
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, // 0x60 '`'..'o'
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 0x70 'p'..DEL
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

/// The EOS symbol.
const EOS: u16 = 256;

/// The canonical codes for [`HUFFMAN_CODE_LENGTHS`], right-aligned (what an encoder writes).
pub fn huffman_codes() -> [u32; 257] {
    let mut codes = [0u32; 257];
    let mut code = 0u32;
    for len in 1..=30u8 {
        for (sym, &l) in HUFFMAN_CODE_LENGTHS.iter().enumerate() {
            if l == len
                && let Some(slot) = codes.get_mut(sym)
            {
                *slot = code;
                code += 1;
            }
        }
        code <<= 1;
    }
    codes
}

/// What consuming one nibble from a trie node does.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    /// The node reached (internal nodes are numbered 0..=255, 0 is the root).
    next: u8,
    /// Flags: [`STEP_EMIT`], [`STEP_FAIL`].
    flags: u8,
    /// The symbol completed, with [`STEP_EMIT`].
    symbol: u8,
}

const STEP_EMIT: u8 = 1;
const STEP_FAIL: u8 = 2;

/// A nibble-at-a-time decoder for the Huffman code: since no code is shorter than 5 bits, a
/// nibble completes at most one symbol, so each input byte costs two table reads.
struct HuffmanTable {
    /// `steps[node][nibble]`.
    steps: Vec<[Step; 16]>,
    /// Whether decoding may end at a node: its path from the root is at most 7 one-bits
    /// (a prefix of EOS used as padding).
    accepting: Vec<bool>,
}

static HUFFMAN: LazyLock<HuffmanTable> = LazyLock::new(build_huffman_table);

/// A child in the code trie under construction.
#[derive(Debug, Clone, Copy)]
enum Child {
    Empty,
    Node(u8),
    Leaf(u16),
}

fn build_huffman_table() -> HuffmanTable {
    let codes = huffman_codes();
    // A complete code over 257 symbols has 256 internal nodes.
    let mut trie: Vec<[Child; 2]> = vec![[Child::Empty; 2]];
    for (sym, (&code, &len)) in codes.iter().zip(HUFFMAN_CODE_LENGTHS.iter()).enumerate() {
        let mut node = 0usize;
        for depth in (0..len).rev() {
            let bit = ((code >> depth) & 1) as usize;
            let last = depth == 0;
            let child = trie.get(node).map_or(Child::Empty, |n| n[bit]);
            node = match child {
                Child::Node(next) => usize::from(next),
                Child::Empty if last => {
                    if let Some(n) = trie.get_mut(node) {
                        n[bit] = Child::Leaf(sym as u16);
                    }
                    break;
                }
                Child::Empty => {
                    let next = trie.len();
                    trie.push([Child::Empty; 2]);
                    if let Some(n) = trie.get_mut(node) {
                        n[bit] = Child::Node(next as u8);
                    }
                    next
                }
                // Cannot happen for a prefix code; the tests check the table decodes.
                Child::Leaf(_) => break,
            };
        }
    }
    let mut steps = vec![[Step::default(); 16]; trie.len()];
    for (node, row) in steps.iter_mut().enumerate() {
        for (nibble, step) in row.iter_mut().enumerate() {
            let mut cur = node;
            for shift in (0..4).rev() {
                let bit = (nibble >> shift) & 1;
                match trie.get(cur).map_or(Child::Empty, |n| n[bit]) {
                    Child::Node(next) => cur = usize::from(next),
                    Child::Leaf(EOS) | Child::Empty => {
                        step.flags |= STEP_FAIL;
                        break;
                    }
                    Child::Leaf(sym) => {
                        step.flags |= STEP_EMIT;
                        step.symbol = sym as u8;
                        cur = 0;
                    }
                }
            }
            step.next = cur as u8;
        }
    }
    let mut accepting = vec![false; trie.len()];
    let mut node = 0usize;
    for _ in 0..8 {
        if let Some(a) = accepting.get_mut(node) {
            *a = true;
        }
        match trie.get(node).map_or(Child::Empty, |n| n[1]) {
            Child::Node(next) => node = usize::from(next),
            _ => break,
        }
    }
    HuffmanTable { steps, accepting }
}

/// Decodes a Huffman string (RFC 7541 5.2), appending to `out`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let table = &*HUFFMAN;
    out.reserve(src.len() + src.len() / 2);
    let mut node = 0usize;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = table
                .steps
                .get(node)
                .and_then(|row| row.get(usize::from(nibble)))
                .copied()
                .unwrap_or(Step {
                    next: 0,
                    flags: STEP_FAIL,
                    symbol: 0,
                });
            if step.flags & STEP_FAIL != 0 {
                return Err(HpackError::HuffmanEos);
            }
            if step.flags & STEP_EMIT != 0 {
                out.push(step.symbol);
            }
            node = usize::from(step.next);
        }
    }
    if table.accepting.get(node).copied().unwrap_or(false) {
        Ok(())
    } else {
        Err(HpackError::HuffmanPadding)
    }
}

/// A small HPACK encoder for tests in this crate (RFC 7541 section 6 representations).
#[cfg(test)]
pub(crate) mod test_encoder {
    use super::{ENTRY_OVERHEAD, HUFFMAN_CODE_LENGTHS, STATIC_TABLE, huffman_codes};
    use std::collections::VecDeque;

    /// How to write one field.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Repr {
        /// Indexed when the table has the pair, else literal with incremental indexing.
        Indexed,
        /// Literal without indexing.
        WithoutIndexing,
        /// Literal never indexed.
        NeverIndexed,
    }

    /// Encoder state: its dynamic table, mirrored exactly as RFC 7541 says.
    #[derive(Debug, Clone)]
    pub(crate) struct Encoder {
        table: VecDeque<(Vec<u8>, Vec<u8>)>,
        size: usize,
        max: usize,
        /// Use the Huffman code for string literals.
        pub(crate) huffman: bool,
    }

    impl Encoder {
        pub(crate) fn new(max: usize) -> Self {
            Encoder {
                table: VecDeque::new(),
                size: 0,
                max,
                huffman: false,
            }
        }

        /// Appends a dynamic table size update.
        pub(crate) fn size_update(&mut self, max: usize, out: &mut Vec<u8>) {
            self.max = max;
            self.evict();
            int(out, 0x20, 5, max);
        }

        /// Appends one field.
        pub(crate) fn field(&mut self, name: &[u8], value: &[u8], repr: Repr, out: &mut Vec<u8>) {
            let find_pair = self.find(|n, v| n == name && v == value);
            let find_name = self.find(|n, _| n == name);
            match repr {
                Repr::Indexed => {
                    if let Some(i) = find_pair {
                        int(out, 0x80, 7, i);
                        return;
                    }
                    int(out, 0x40, 6, find_name.unwrap_or(0));
                    if find_name.is_none() {
                        self.string(name, out);
                    }
                    self.string(value, out);
                    self.table.push_front((name.to_vec(), value.to_vec()));
                    self.size += name.len() + value.len() + ENTRY_OVERHEAD;
                    self.evict();
                }
                Repr::WithoutIndexing | Repr::NeverIndexed => {
                    let first = if repr == Repr::NeverIndexed { 0x10 } else { 0 };
                    int(out, first, 4, find_name.unwrap_or(0));
                    if find_name.is_none() {
                        self.string(name, out);
                    }
                    self.string(value, out);
                }
            }
        }

        fn find(&self, pred: impl Fn(&[u8], &[u8]) -> bool) -> Option<usize> {
            if let Some(i) = STATIC_TABLE
                .iter()
                .position(|(n, v)| pred(n.as_bytes(), v.as_bytes()))
            {
                return Some(i + 1);
            }
            self.table
                .iter()
                .position(|(n, v)| pred(n, v))
                .map(|i| i + 1 + STATIC_TABLE.len())
        }

        fn evict(&mut self) {
            while self.size > self.max {
                let Some((n, v)) = self.table.pop_back() else {
                    break;
                };
                self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
            }
        }

        fn string(&self, s: &[u8], out: &mut Vec<u8>) {
            if self.huffman {
                let coded = huffman_encode(s);
                int(out, 0x80, 7, coded.len());
                out.extend_from_slice(&coded);
            } else {
                int(out, 0, 7, s.len());
                out.extend_from_slice(s);
            }
        }
    }

    /// Appends an integer with an `prefix`-bit prefix under the pattern `first`.
    pub(crate) fn int(out: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
        let max = (1usize << prefix) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    /// Huffman-codes `s`, padded with ones.
    pub(crate) fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let codes = huffman_codes();
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        for &b in s {
            let len = u32::from(HUFFMAN_CODE_LENGTHS[usize::from(b)]);
            acc = (acc << len) | u64::from(codes[usize::from(b)]);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_encoder::{Encoder, Repr, huffman_encode, int};
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("00"), 16).unwrap_or(0))
            .collect()
    }

    fn known(name: &str, value: &str) -> Header {
        Header {
            name: Field::Known(name.as_bytes().to_vec()),
            value: Field::Known(value.as_bytes().to_vec()),
        }
    }

    fn decode(d: &mut HpackDecoder, block: &[u8]) -> Vec<Header> {
        let mut out = Vec::new();
        let result = d.decode(block, &mut out);
        assert_eq!(result, Ok(()));
        out
    }

    /// The decoder's table, newest first, as text.
    fn table(d: &HpackDecoder) -> Vec<(String, String)> {
        d.entries
            .iter()
            .map(|e| {
                let s = |b: &Option<Box<[u8]>>| {
                    b.as_deref()
                        .map_or("?".to_string(), |b| String::from_utf8_lossy(b).into_owned())
                };
                (s(&e.name), s(&e.value))
            })
            .collect()
    }

    fn with_max_size(max: usize) -> HpackDecoder {
        HpackDecoder {
            max_size: Some(max),
            allowed: Some(max),
            ..HpackDecoder::new()
        }
    }

    #[test]
    fn c2_literal_representations() {
        let mut d = HpackDecoder::new();
        assert_eq!(
            decode(
                &mut d,
                &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")
            ),
            vec![known("custom-key", "custom-header")]
        );
        assert_eq!(d.size, 55);
        let mut d = HpackDecoder::new();
        assert_eq!(
            decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")),
            vec![known(":path", "/sample/path")]
        );
        assert_eq!(d.known_entries(), 0);
        assert_eq!(
            decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")),
            vec![known("password", "secret")]
        );
        assert_eq!(d.known_entries(), 0);
        assert_eq!(decode(&mut d, &hex("82")), vec![known(":method", "GET")]);
    }

    fn c3_or_c4_requests(blocks: [&str; 3]) {
        let mut d = HpackDecoder::new();
        assert_eq!(
            decode(&mut d, &hex(blocks[0])),
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com"),
            ]
        );
        assert_eq!(d.size, 57);
        assert_eq!(
            decode(&mut d, &hex(blocks[1])),
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                known(":authority", "www.example.com"),
                known("cache-control", "no-cache"),
            ]
        );
        assert_eq!(d.size, 110);
        assert_eq!(
            decode(&mut d, &hex(blocks[2])),
            vec![
                known(":method", "GET"),
                known(":scheme", "https"),
                known(":path", "/index.html"),
                known(":authority", "www.example.com"),
                known("custom-key", "custom-value"),
            ]
        );
        assert_eq!(d.size, 164);
        assert_eq!(
            table(&d),
            [
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    const C3: [&str; 3] = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];

    #[test]
    fn c3_requests_without_huffman() {
        c3_or_c4_requests(C3);
    }

    #[test]
    fn c4_requests_with_huffman() {
        c3_or_c4_requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    fn c5_or_c6_responses(blocks: [&str; 3]) {
        let mut d = with_max_size(256);
        let first = [
            known(":status", "302"),
            known("cache-control", "private"),
            known("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            known("location", "https://www.example.com"),
        ];
        assert_eq!(decode(&mut d, &hex(blocks[0])), first);
        assert_eq!(d.size, 222);
        let mut second = first.clone();
        second[0] = known(":status", "307");
        assert_eq!(decode(&mut d, &hex(blocks[1])), second);
        assert_eq!(d.size, 222);
        assert_eq!(table(&d)[0], (":status".to_string(), "307".to_string()));
        assert_eq!(
            decode(&mut d, &hex(blocks[2])),
            vec![
                known(":status", "200"),
                known("cache-control", "private"),
                known("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                known("location", "https://www.example.com"),
                known("content-encoding", "gzip"),
                known(
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ]
        );
        assert_eq!(d.size, 215);
        assert_eq!(
            table(&d),
            [
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn c5_responses_without_huffman_with_eviction() {
        c5_or_c6_responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman_with_eviction() {
        c5_or_c6_responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn joined_after_c3_first_request_sees_unknown_only_for_unseen_entries() {
        let mut d = HpackDecoder::joined_mid_stream();
        // C.3.2 references :authority at 62, inserted by C.3.1 which we missed.
        assert_eq!(
            decode(&mut d, &hex(C3[1])),
            vec![
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/"),
                Header {
                    name: Field::Unknown,
                    value: Field::Unknown
                },
                known("cache-control", "no-cache"),
            ]
        );
        // C.3.3: 0xbf = 63 is the missed :authority again (now second newest), the literal
        // custom-key is exact, and cache-control (now 63 after the insert) would be known.
        assert_eq!(
            decode(&mut d, &hex(C3[2])),
            vec![
                known(":method", "GET"),
                known(":scheme", "https"),
                known(":path", "/index.html"),
                Header {
                    name: Field::Unknown,
                    value: Field::Unknown
                },
                known("custom-key", "custom-value"),
            ]
        );
        assert!(!d.table_known());
        // Index 63 is cache-control: inserted after we joined, so known.
        assert_eq!(
            decode(&mut d, &[0xbf]),
            vec![known("cache-control", "no-cache")]
        );
        assert_eq!(
            decode(&mut d, &[0xc0]),
            vec![Header {
                name: Field::Unknown,
                value: Field::Unknown
            }]
        );
    }

    #[test]
    fn literal_with_unknown_name_keeps_value_and_table_position() {
        let mut d = HpackDecoder::joined_mid_stream();
        // Literal with incremental indexing, name index 70 (unseen), value "v".
        let mut block = Vec::new();
        int(&mut block, 0x40, 6, 70);
        int(&mut block, 0, 7, 1);
        block.push(b'v');
        let out = decode(&mut d, &block);
        assert_eq!(
            out,
            vec![Header {
                name: Field::Unknown,
                value: Field::Known(b"v".to_vec())
            }]
        );
        assert_eq!(
            decode(&mut d, &[0xbe]),
            vec![Header {
                name: Field::Unknown,
                value: Field::Known(b"v".to_vec())
            }]
        );
    }

    #[test]
    fn size_update_to_zero_makes_a_joined_table_known() {
        let mut d = HpackDecoder::joined_mid_stream();
        assert_eq!(decode(&mut d, &[0x20, 0x82]), vec![known(":method", "GET")]);
        assert!(d.table_known());
        let mut out = Vec::new();
        assert_eq!(
            d.decode(&[0xbe], &mut out),
            Err(HpackError::BadIndex { index: 62 })
        );
    }

    #[test]
    fn size_update_after_a_field_is_rejected_and_history_forgotten() {
        let mut d = HpackDecoder::new();
        decode(&mut d, &hex(C3[0]));
        let mut out = Vec::new();
        assert_eq!(
            d.decode(&[0x82, 0x20], &mut out),
            Err(HpackError::LateSizeUpdate)
        );
        assert_eq!(out, vec![known(":method", "GET")]);
        assert!(!d.table_known());
        assert_eq!(d.known_entries(), 0);
    }

    #[test]
    fn size_update_above_the_allowed_limit_is_rejected() {
        let mut d = HpackDecoder::new();
        let mut block = Vec::new();
        int(&mut block, 0x20, 5, 8192);
        assert_eq!(
            d.decode(&block, &mut Vec::new()),
            Err(HpackError::SizeUpdateTooLarge {
                size: 8192,
                allowed: 4096
            })
        );
        let mut d = HpackDecoder::new();
        d.set_max_allowed(8192);
        assert_eq!(d.decode(&block, &mut Vec::new()), Ok(()));
    }

    #[test]
    fn integers_decode_and_overflow_is_caught() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(read_int(&[0x0a], &mut pos, 5), Ok(10));
        let mut pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, 7),
            Err(HpackError::IntegerOverflow)
        );
        let mut pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut pos, 7),
            Err(HpackError::IntegerOverflow)
        );
        let mut pos = 0;
        assert_eq!(
            read_int(&[0x7f, 0x80], &mut pos, 7),
            Err(HpackError::Truncated)
        );
        // u32::MAX itself fits.
        let mut enc = Vec::new();
        int(&mut enc, 0, 7, u32::MAX as usize);
        let mut pos = 0;
        assert_eq!(read_int(&enc, &mut pos, 7), Ok(u32::MAX));
        let mut d = HpackDecoder::new();
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut Vec::new()),
            Err(HpackError::IntegerOverflow)
        );
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // "a" = 00011, padded with ones: 0001_1111.
        assert_eq!(huffman_decode(&[0x1f], &mut out), Ok(()));
        assert_eq!(out, b"a");
        // Padded with zeros.
        assert_eq!(
            huffman_decode(&[0x18], &mut Vec::new()),
            Err(HpackError::HuffmanPadding)
        );
        // A whole byte of padding after a complete symbol.
        assert_eq!(
            huffman_decode(&[0x1f, 0xff], &mut Vec::new()),
            Err(HpackError::HuffmanPadding)
        );
        // EOS (30 ones) inside the string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(HpackError::HuffmanEos)
        );
        // Every byte value round trips.
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        assert_eq!(huffman_decode(&huffman_encode(&all), &mut out), Ok(()));
        assert_eq!(out, all);
    }

    #[test]
    fn huffman_code_is_the_rfc_table() {
        let codes = huffman_codes();
        // Spot checks against RFC 7541 Appendix B, across code lengths.
        for (sym, code, len) in [
            (0usize, 0x1ff8u32, 13u8),
            (b' ' as usize, 0x14, 6),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b'\\' as usize, 0x7fff0, 19),
            (10, 0x3fff_fffc, 30),
            (203, 0x7ff_ffde, 27),
            (255, 0x3ff_ffee, 26),
            (256, 0x3fff_ffff, 30),
        ] {
            assert_eq!(
                (codes[sym], HUFFMAN_CODE_LENGTHS[sym]),
                (code, len),
                "{sym}"
            );
        }
    }

    #[test]
    fn truncated_blocks_are_errors_not_panics() {
        let full = hex(C3[2]);
        for cut in 1..full.len() {
            let mut d = HpackDecoder::new();
            decode(&mut d, &hex(C3[0]));
            decode(&mut d, &hex(C3[1]));
            // Cuts at field boundaries decode; all others report Truncated.
            let result = d.decode(&full[..cut], &mut Vec::new());
            assert!(matches!(result, Ok(()) | Err(HpackError::Truncated)));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Field(Vec<u8>, Vec<u8>, Repr),
        SizeUpdate(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = prop_oneof![
            Just(b":path".to_vec()),
            Just(b"content-type".to_vec()),
            Just(b"x-trace".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        let value = prop_oneof![
            Just(b"/".to_vec()),
            Just(b"application/grpc".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        let repr = prop_oneof![
            4 => Just(Repr::Indexed),
            1 => Just(Repr::WithoutIndexing),
            1 => Just(Repr::NeverIndexed),
        ];
        prop_oneof![
            10 => (name, value, repr).prop_map(|(n, v, r)| Op::Field(n, v, r)),
            1 => (0usize..400).prop_map(Op::SizeUpdate),
        ]
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// Encodes blocks of ops; returns the blocks and the fields each should decode to.
    fn encode(blocks: &[Vec<Op>], huffman: bool) -> (Vec<Vec<u8>>, Vec<Fields>) {
        let mut enc = Encoder::new(DEFAULT_TABLE_SIZE);
        enc.huffman = huffman;
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for ops in blocks {
            let mut block = Vec::new();
            let mut fields = Vec::new();
            // Size updates first (they are only valid at block start).
            for op in ops {
                if let Op::SizeUpdate(max) = op {
                    enc.size_update(*max, &mut block);
                }
            }
            for op in ops {
                if let Op::Field(n, v, r) = op {
                    enc.field(n, v, *r, &mut block);
                    fields.push((n.clone(), v.clone()));
                }
            }
            wire.push(block);
            expected.push(fields);
        }
        (wire, expected)
    }

    proptest! {
        #[test]
        fn encoded_headers_decode_back(
            blocks in proptest::collection::vec(proptest::collection::vec(op(), 0..8), 1..12),
            huffman in any::<bool>(),
        ) {
            let (wire, expected) = encode(&blocks, huffman);
            let mut d = HpackDecoder::new();
            for (block, fields) in wire.iter().zip(&expected) {
                let mut out = Vec::new();
                prop_assert_eq!(d.decode(block, &mut out), Ok(()));
                let want: Vec<Header> = fields
                    .iter()
                    .map(|(n, v)| Header {
                        name: Field::Known(n.clone()),
                        value: Field::Known(v.clone()),
                    })
                    .collect();
                prop_assert_eq!(out, want);
            }
        }

        #[test]
        fn a_decoder_joining_late_is_never_wrong(
            blocks in proptest::collection::vec(proptest::collection::vec(op(), 0..8), 1..12),
            huffman in any::<bool>(),
            skip in 0usize..12,
        ) {
            let (wire, expected) = encode(&blocks, huffman);
            let mut d = HpackDecoder::joined_mid_stream();
            for (block, fields) in wire.iter().zip(&expected).skip(skip) {
                let mut out = Vec::new();
                prop_assert_eq!(d.decode(block, &mut out), Ok(()));
                prop_assert_eq!(out.len(), fields.len());
                for (got, (name, value)) in out.iter().zip(fields) {
                    if let Field::Known(n) = &got.name {
                        prop_assert_eq!(n, name);
                    }
                    if let Field::Known(v) = &got.value {
                        prop_assert_eq!(v, value);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_blocks_never_panic(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..6),
        ) {
            let mut d = HpackDecoder::joined_mid_stream();
            for block in &blocks {
                let _ = d.decode(block, &mut Vec::new());
            }
        }
    }
}
