//! Proves the per-packet paths allocate nothing: a counting global allocator watches
//! `PcapngWriter::write_packet` and `Segmenter::segment` after warm-up.

use std::io::Write;

use etherparse::PacketBuilder;
use podtap_wire::{Direction, InterfaceDescription, PcapngWriter, Segmenter};

#[global_allocator]
static GLOBAL: podtap_testkit::CountingAllocator = podtap_testkit::CountingAllocator;

use podtap_testkit::allocations;

/// An output that discards everything without allocating.
struct Sink(usize);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn segmenting_and_writing_packets_allocates_nothing() {
    let mut frame = Vec::new();
    let payload = vec![0x55; 60_000];
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .single_vlan(etherparse::VlanId::try_new(7).unwrap())
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(1, 2, 3, 4)
        .write(&mut frame, &payload)
        .unwrap();

    let mut writer = PcapngWriter::new(Sink(0), "podtap test").unwrap();
    let id = writer
        .add_interface(&InterfaceDescription {
            name: "veth0",
            description: "pod",
            snaplen: 0,
            link_type: 1,
        })
        .unwrap();
    let mut segmenter = Segmenter::new();
    let mut run = |writer: &mut PcapngWriter<Sink>| {
        let mut written = 0;
        segmenter
            .segment(&frame, 1448, |seg| {
                writer
                    .write_packet_with_comment(id, 1, 0, seg, Direction::Inbound, "segment")
                    .unwrap();
                written += 1;
            })
            .unwrap();
        writer
            .write_packet(id, 2, 0, &frame, Direction::Outbound)
            .unwrap();
        written
    };

    run(&mut writer); // warm-up
    let before = allocations();
    let mut segments = 0;
    for _ in 0..100 {
        segments += run(&mut writer);
    }
    assert_eq!(allocations() - before, 0, "allocations on the packet path");
    assert_eq!(segments, 100 * 60_000usize.div_ceil(1448));
    assert!(writer.get_ref().0 > 100 * 60_000);
}
