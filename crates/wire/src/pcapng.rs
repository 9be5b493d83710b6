//! A streaming pcapng writer: one section (little-endian, version 1.0, unknown length),
//! interface description blocks added as interfaces appear, and one enhanced packet block per
//! packet with nanosecond timestamps, the packet's direction and an optional comment.
//!
//! Writing a packet allocates nothing: the fixed part of each block is assembled in a stack
//! array and the packet bytes are handed to the output as they are. Each block is a handful of
//! `write_all` calls, so give it a buffered output (`BufWriter`) when writing to a file.
//!
//! Format: <https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-03.html>.

use std::io::{self, Write};

/// Block types, option codes and fixed values of the pcapng format.
mod field {
    pub const BLOCK_SECTION_HEADER: u32 = 0x0A0D_0D0A;
    pub const BLOCK_INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
    pub const BLOCK_ENHANCED_PACKET: u32 = 0x0000_0006;

    pub const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
    pub const VERSION_MAJOR: u16 = 1;
    pub const VERSION_MINOR: u16 = 0;
    /// Section length "not specified": the writer streams and never seeks back.
    pub const SECTION_LENGTH_UNKNOWN: i64 = -1;

    pub const OPT_ENDOFOPT: u16 = 0;
    pub const OPT_COMMENT: u16 = 1;
    pub const SHB_USERAPPL: u16 = 4;
    pub const IF_NAME: u16 = 2;
    pub const IF_DESCRIPTION: u16 = 3;
    pub const IF_TSRESOL: u16 = 9;
    pub const EPB_FLAGS: u16 = 2;

    /// `if_tsresol` value for 10^-9 s: timestamps are nanoseconds.
    pub const TSRESOL_NANOSECONDS: u8 = 9;

    /// Block type, block total length.
    pub const BLOCK_HEADER_LEN: usize = 8;
    /// Trailing copy of the block total length.
    pub const BLOCK_TRAILER_LEN: usize = 4;
    /// Interface id, timestamp (high, low), captured length, original length.
    pub const EPB_FIXED_LEN: usize = 20;
    /// Option code and option length.
    pub const OPTION_HEADER_LEN: usize = 4;
    /// An option's value is padded to this many bytes, as is packet data.
    pub const ALIGN: usize = 4;
}

/// Bytes needed to pad `len` to a multiple of four.
const fn padding(len: usize) -> usize {
    (field::ALIGN - len % field::ALIGN) % field::ALIGN
}

/// Zeros used for padding.
const ZEROS: [u8; field::ALIGN] = [0; field::ALIGN];

/// The direction of a packet as seen from the interface it was captured on, stored in the
/// `epb_flags` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received by the interface (`epb_flags` bits 0-1 = 01).
    Inbound,
    /// Sent by the interface (`epb_flags` bits 0-1 = 10).
    Outbound,
    /// Not known; no `epb_flags` option is written.
    Unknown,
}

impl Direction {
    /// The `epb_flags` word for this direction, `None` when there is nothing to say.
    const fn epb_flags(self) -> Option<u32> {
        match self {
            Direction::Inbound => Some(0b01),
            Direction::Outbound => Some(0b10),
            Direction::Unknown => None,
        }
    }
}

/// What an interface description block says about one capture interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceDescription<'a> {
    /// `if_name`: the interface's name, e.g. the pod's host-side veth (skipped when empty).
    pub name: &'a str,
    /// `if_description`: free text, e.g. `shop/cart-1 eth0` (skipped when empty).
    pub description: &'a str,
    /// Longest packet data written for this interface; 0 means no limit.
    pub snaplen: u32,
    /// Link type of the packets (`LINKTYPE_*`; 1 = Ethernet).
    pub link_type: u16,
}

/// Writes a pcapng stream to `W`: the section header on creation, then interface descriptions
/// and packets in the order they are given.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    out: W,
    /// Snap length of each interface added so far, indexed by interface id.
    snaplens: Vec<u32>,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts a pcapng stream on `out` by writing the section header block, with
    /// `user_application` as its `shb_userappl` option (skipped when empty).
    pub fn new(mut out: W, user_application: &str) -> io::Result<Self> {
        let options_len = string_option_len(user_application)? + field::OPTION_HEADER_LEN;
        // Block header, byte-order magic, version, section length.
        let fixed_len = field::BLOCK_HEADER_LEN + 4 + 2 + 2 + 8;
        let total = block_len(fixed_len + options_len)?;

        let mut head = [0u8; 24];
        head[0..4].copy_from_slice(&field::BLOCK_SECTION_HEADER.to_le_bytes());
        head[4..8].copy_from_slice(&total.to_le_bytes());
        head[8..12].copy_from_slice(&field::BYTE_ORDER_MAGIC.to_le_bytes());
        head[12..14].copy_from_slice(&field::VERSION_MAJOR.to_le_bytes());
        head[14..16].copy_from_slice(&field::VERSION_MINOR.to_le_bytes());
        head[16..24].copy_from_slice(&field::SECTION_LENGTH_UNKNOWN.to_le_bytes());
        out.write_all(&head)?;
        write_string_option(&mut out, field::SHB_USERAPPL, user_application)?;
        write_end_of_options_and_trailer(&mut out, total)?;
        Ok(PcapngWriter {
            out,
            snaplens: Vec::new(),
        })
    }

    /// Writes an interface description block (`if_name`, `if_description` and `if_tsresol` =
    /// nanoseconds) and returns the new interface's id: 0 for the first, then 1, 2, ...
    ///
    /// Interfaces may be added at any point, as long as it is before the packets that use them.
    pub fn add_interface(&mut self, iface: &InterfaceDescription) -> io::Result<u32> {
        let id = u32::try_from(self.snaplens.len())
            .map_err(|_| invalid_input("too many pcapng interfaces"))?;
        // if_tsresol: one byte of value, padded to four.
        let tsresol_len = field::OPTION_HEADER_LEN + field::ALIGN;
        let options_len = string_option_len(iface.name)?
            + string_option_len(iface.description)?
            + tsresol_len
            + field::OPTION_HEADER_LEN;
        // Block header, link type, reserved, snap length.
        let fixed_len = field::BLOCK_HEADER_LEN + 2 + 2 + 4;
        let total = block_len(fixed_len + options_len)?;

        let mut head = [0u8; 16];
        head[0..4].copy_from_slice(&field::BLOCK_INTERFACE_DESCRIPTION.to_le_bytes());
        head[4..8].copy_from_slice(&total.to_le_bytes());
        head[8..10].copy_from_slice(&iface.link_type.to_le_bytes());
        // head[10..12]: reserved, zero.
        head[12..16].copy_from_slice(&iface.snaplen.to_le_bytes());
        self.out.write_all(&head)?;
        write_string_option(&mut self.out, field::IF_NAME, iface.name)?;
        write_string_option(&mut self.out, field::IF_DESCRIPTION, iface.description)?;
        let mut tsresol = [0u8; 8];
        tsresol[0..2].copy_from_slice(&field::IF_TSRESOL.to_le_bytes());
        tsresol[2..4].copy_from_slice(&1u16.to_le_bytes());
        tsresol[4] = field::TSRESOL_NANOSECONDS;
        self.out.write_all(&tsresol)?;
        write_end_of_options_and_trailer(&mut self.out, total)?;

        self.snaplens.push(iface.snaplen);
        Ok(id)
    }

    /// Writes one packet as an enhanced packet block.
    ///
    /// `timestamp_ns` is nanoseconds since the Unix epoch; `original_len` is the packet's length
    /// on the wire (raised to `data.len()` if smaller). `data` is cut to the interface's snap
    /// length when it is longer. The direction goes into `epb_flags`, which is left out for
    /// [`Direction::Unknown`].
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when `interface_id` was not returned by
    /// [`add_interface`](Self::add_interface).
    pub fn write_packet(
        &mut self,
        interface_id: u32,
        timestamp_ns: u64,
        original_len: u32,
        data: &[u8],
        direction: Direction,
    ) -> io::Result<()> {
        self.write_epb(
            interface_id,
            timestamp_ns,
            original_len,
            data,
            direction,
            "",
        )
    }

    /// Like [`write_packet`](Self::write_packet), with `comment` as the packet's `opt_comment`
    /// (skipped when empty; at most 65535 bytes).
    pub fn write_packet_with_comment(
        &mut self,
        interface_id: u32,
        timestamp_ns: u64,
        original_len: u32,
        data: &[u8],
        direction: Direction,
        comment: &str,
    ) -> io::Result<()> {
        self.write_epb(
            interface_id,
            timestamp_ns,
            original_len,
            data,
            direction,
            comment,
        )
    }

    fn write_epb(
        &mut self,
        interface_id: u32,
        timestamp_ns: u64,
        original_len: u32,
        data: &[u8],
        direction: Direction,
        comment: &str,
    ) -> io::Result<()> {
        let snaplen = *self
            .snaplens
            .get(interface_id as usize)
            .ok_or_else(|| invalid_input("pcapng packet for an interface that was never added"))?;
        let original_len = original_len.max(u32::try_from(data.len()).unwrap_or(u32::MAX));
        let data = match snaplen as usize {
            0 => data,
            limit => &data[..data.len().min(limit)],
        };
        let captured_len =
            u32::try_from(data.len()).map_err(|_| invalid_input("pcapng packet too long"))?;
        let flags = direction.epb_flags();

        let data_len = data.len() + padding(data.len());
        let flags_len = if flags.is_some() {
            field::OPTION_HEADER_LEN + 4
        } else {
            0
        };
        let comment_len = string_option_len(comment)?;
        let total = block_len(
            field::BLOCK_HEADER_LEN
                + field::EPB_FIXED_LEN
                + data_len
                + flags_len
                + comment_len
                + field::OPTION_HEADER_LEN,
        )?;

        let mut head = [0u8; field::BLOCK_HEADER_LEN + field::EPB_FIXED_LEN];
        head[0..4].copy_from_slice(&field::BLOCK_ENHANCED_PACKET.to_le_bytes());
        head[4..8].copy_from_slice(&total.to_le_bytes());
        head[8..12].copy_from_slice(&interface_id.to_le_bytes());
        head[12..16].copy_from_slice(&((timestamp_ns >> 32) as u32).to_le_bytes());
        head[16..20].copy_from_slice(&(timestamp_ns as u32).to_le_bytes());
        head[20..24].copy_from_slice(&captured_len.to_le_bytes());
        head[24..28].copy_from_slice(&original_len.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(data)?;

        // Data padding and the flags option share one small write.
        let mut tail = [0u8; 3 + field::OPTION_HEADER_LEN + 4];
        let mut tail_len = padding(data.len());
        if let Some(flags) = flags {
            tail[tail_len..tail_len + 2].copy_from_slice(&field::EPB_FLAGS.to_le_bytes());
            tail[tail_len + 2..tail_len + 4].copy_from_slice(&4u16.to_le_bytes());
            tail[tail_len + 4..tail_len + 8].copy_from_slice(&flags.to_le_bytes());
            tail_len += 8;
        }
        self.out.write_all(&tail[..tail_len])?;
        write_string_option(&mut self.out, field::OPT_COMMENT, comment)?;
        write_end_of_options_and_trailer(&mut self.out, total)
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Gives back the output, without flushing it.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// How many interfaces have been added (the next interface's id).
    pub fn interfaces(&self) -> u32 {
        // add_interface refuses to go past u32::MAX interfaces.
        self.snaplens.len() as u32
    }
}

fn invalid_input(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A block's total length as the `u32` the format stores.
fn block_len(len: usize) -> io::Result<u32> {
    u32::try_from(len + field::BLOCK_TRAILER_LEN)
        .map_err(|_| invalid_input("pcapng block longer than 4 GiB"))
}

/// Space taken by a string option: nothing when empty, else header, value and padding.
fn string_option_len(value: &str) -> io::Result<usize> {
    if value.is_empty() {
        return Ok(0);
    }
    if value.len() > usize::from(u16::MAX) {
        return Err(invalid_input("pcapng option value longer than 65535 bytes"));
    }
    Ok(field::OPTION_HEADER_LEN + value.len() + padding(value.len()))
}

/// Writes a string option unless `value` is empty. The length was checked by
/// [`string_option_len`].
fn write_string_option(out: &mut impl Write, code: u16, value: &str) -> io::Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    let mut head = [0u8; field::OPTION_HEADER_LEN];
    head[0..2].copy_from_slice(&code.to_le_bytes());
    head[2..4].copy_from_slice(&(value.len() as u16).to_le_bytes());
    out.write_all(&head)?;
    out.write_all(value.as_bytes())?;
    out.write_all(&ZEROS[..padding(value.len())])
}

/// Writes `opt_endofopt` and the trailing block total length.
fn write_end_of_options_and_trailer(out: &mut impl Write, total: u32) -> io::Result<()> {
    let mut end = [0u8; field::OPTION_HEADER_LEN + field::BLOCK_TRAILER_LEN];
    end[0..2].copy_from_slice(&field::OPT_ENDOFOPT.to_le_bytes());
    end[4..8].copy_from_slice(&total.to_le_bytes());
    out.write_all(&end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::DataLink;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::blocks::section_header::SectionHeaderOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::time::Duration;

    const ETH: u16 = 1;

    /// A packet as the test wrote it.
    struct Written {
        iface: u32,
        ts: u64,
        original_len: u32,
        data: Vec<u8>,
        direction: Direction,
        comment: &'static str,
    }

    fn sample_packets() -> Vec<Written> {
        vec![
            Written {
                iface: 0,
                ts: 1_700_000_000_123_456_789,
                original_len: 60,
                data: (0..60).collect(),
                direction: Direction::Inbound,
                comment: "",
            },
            Written {
                iface: 1,
                ts: 1_700_000_000_223_456_789,
                original_len: 1514,
                data: (0..61).map(|b| b as u8 ^ 0x5a).collect(),
                direction: Direction::Outbound,
                comment: "decrypted",
            },
            Written {
                iface: 0,
                ts: 1_700_000_001_000_000_001,
                original_len: 63,
                data: (0..63).collect(),
                direction: Direction::Unknown,
                comment: "odd length comment",
            },
            Written {
                iface: 1,
                ts: 5,
                original_len: 0, // raised to the captured length
                data: vec![0xab; 62],
                direction: Direction::Unknown,
                comment: "",
            },
        ]
    }

    fn write_sample() -> Vec<u8> {
        let mut w = PcapngWriter::new(Vec::new(), "podtap test").unwrap();
        let a = w
            .add_interface(&InterfaceDescription {
                name: "cali0123456789a",
                description: "shop/cart-1",
                snaplen: 262_144,
                link_type: ETH,
            })
            .unwrap();
        assert_eq!((a, w.interfaces()), (0, 1));
        let mut packets = sample_packets().into_iter();
        let first = packets.next().unwrap();
        w.write_packet(
            first.iface,
            first.ts,
            first.original_len,
            &first.data,
            first.direction,
        )
        .unwrap();
        // An interface added after packets were written.
        let b = w
            .add_interface(&InterfaceDescription {
                name: "veth1",
                description: "",
                snaplen: 0,
                link_type: ETH,
            })
            .unwrap();
        assert_eq!((b, w.interfaces()), (1, 2));
        for p in packets {
            w.write_packet_with_comment(
                p.iface,
                p.ts,
                p.original_len,
                &p.data,
                p.direction,
                p.comment,
            )
            .unwrap();
        }
        w.flush().unwrap();
        w.into_inner()
    }

    #[test]
    fn blocks_are_aligned_and_lengths_agree() {
        let bytes = write_sample();
        let mut rest = &bytes[..];
        let mut blocks = 0;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "block {blocks} length {len} not aligned");
            let trailer = u32::from_le_bytes(rest[len - 4..len].try_into().unwrap()) as usize;
            assert_eq!(len, trailer, "block {blocks}");
            rest = &rest[len..];
            blocks += 1;
        }
        assert_eq!(blocks, 1 + 2 + 4);
    }

    #[test]
    fn pcap_file_reads_back_what_was_written() {
        let bytes = write_sample();
        let mut reader = PcapNgReader::new(&bytes[..]).unwrap();
        let shb = reader.section().clone();
        assert_eq!((shb.major_version, shb.minor_version), (1, 0));
        assert_eq!(shb.section_length, -1);
        assert_eq!(
            shb.options,
            vec![SectionHeaderOption::UserApplication("podtap test".into())]
        );

        let mut idbs = Vec::new();
        let mut epbs = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => idbs.push(idb.into_owned()),
                Block::EnhancedPacket(epb) => epbs.push(epb.into_owned()),
                other => panic!("unexpected block {other:?}"),
            }
        }

        assert_eq!(idbs.len(), 2);
        assert_eq!(idbs[0].linktype, DataLink::ETHERNET);
        assert_eq!(idbs[0].snaplen, 262_144);
        assert_eq!(
            idbs[0].options,
            vec![
                InterfaceDescriptionOption::IfName("cali0123456789a".into()),
                InterfaceDescriptionOption::IfDescription("shop/cart-1".into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ]
        );
        assert_eq!(
            idbs[1].options,
            vec![
                InterfaceDescriptionOption::IfName("veth1".into()),
                InterfaceDescriptionOption::IfTsResol(9),
            ]
        );

        let expected = sample_packets();
        assert_eq!(epbs.len(), expected.len());
        for (got, want) in epbs.iter().zip(&expected) {
            assert_eq!(got.interface_id, want.iface);
            assert_eq!(got.timestamp, Duration::from_nanos(want.ts));
            assert_eq!(
                got.original_len,
                want.original_len.max(want.data.len() as u32)
            );
            assert_eq!(&got.data[..], &want.data[..]);
            let mut options = Vec::new();
            if let Some(flags) = want.direction.epb_flags() {
                options.push(EnhancedPacketOption::Flags(flags));
            }
            if !want.comment.is_empty() {
                options.push(EnhancedPacketOption::Comment(want.comment.into()));
            }
            assert_eq!(got.options, options);
        }
    }

    #[test]
    fn data_is_cut_to_the_snap_length() {
        let mut w = PcapngWriter::new(Vec::new(), "").unwrap();
        let id = w
            .add_interface(&InterfaceDescription {
                name: "eth0",
                description: "",
                snaplen: 10,
                link_type: ETH,
            })
            .unwrap();
        w.write_packet(id, 1, 100, &[7; 100], Direction::Inbound)
            .unwrap();
        let bytes = w.into_inner();
        let mut reader = PcapNgReader::new(&bytes[..]).unwrap();
        let mut found = 0;
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.unwrap() {
                assert_eq!((epb.data.len(), epb.original_len), (10, 100));
                found += 1;
            }
        }
        assert_eq!(found, 1);
    }

    #[test]
    fn unknown_interface_and_huge_comment_are_refused() {
        let mut w = PcapngWriter::new(Vec::new(), "x").unwrap();
        let err = w
            .write_packet(0, 0, 1, &[0], Direction::Unknown)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let id = w
            .add_interface(&InterfaceDescription {
                name: "eth0",
                description: "",
                snaplen: 0,
                link_type: ETH,
            })
            .unwrap();
        let before = w.get_ref().len();
        let comment = "c".repeat(70_000);
        let err = w
            .write_packet_with_comment(id, 0, 1, &[0], Direction::Unknown, &comment)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            w.get_ref().len(),
            before,
            "nothing written for a refused packet"
        );
    }
}
