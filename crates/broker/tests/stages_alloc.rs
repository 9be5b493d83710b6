//! The per-packet path allocates nothing: every stage, once warmed up, processes packets with
//! the global allocator untouched. (A test binary of its own: it replaces the allocator.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use etherparse::PacketBuilder;
use podtap_broker::pipeline::{StageConfig, Verdict};
use podtap_broker::{Direction, Frame, Packet, Source};

struct CountingAllocator;

thread_local! {
    /// Counting is on for the test's own thread only: the test harness's other threads may
    /// allocate at any time.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..64u16 {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, (i >> 8) as u8, i as u8], 64)
            .tcp(40000 + i, 80, 1, 1)
            .write(
                &mut v,
                b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
            )
            .unwrap();
        out.push(v);
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0x20; 16], [0x21; 16], 64)
            .udp(53, 5353 + i)
            .write(&mut v, b"answer")
            .unwrap();
        out.push(v);
    }
    out
}

#[test]
fn stages_do_not_allocate_per_packet() {
    let yaml = [
        "type: filter\nexpression: \"tcp port 80 or udp\"\ncidr: [10.0.0.0/8, \"2000::/3\"]\nport: [80, \"5000-6000\"]",
        "type: dedupe\nwindow_ms: 1\ncapacity: 16\nignore: [l4_checksum]",
        "type: slice\nlength: 16\nafter: transport",
        "type: mask\nranges: [{ offset: 0, length: 4, from: payload }]\npatterns: [\"(?i)authorization: [^\\r\\n]*\"]",
        "type: sample\none_in: 3\nby: flow\nmax_pps: 1000",
    ];
    let frames = frames();
    // As the broker does: each frame borrowed, a stage that writes copies it into one buffer
    // reused for every packet.
    let mut scratch = Vec::with_capacity(2048);
    for y in yaml {
        let cfg: StageConfig = serde_yaml_ng::from_str(y).unwrap();
        let mut stage = cfg.build().unwrap();
        let mut run = |rounds: u64| {
            let mut kept = 0;
            for r in 0..rounds {
                for (i, f) in frames.iter().enumerate() {
                    let mut pkt = Packet {
                        timestamp_ns: (r * frames.len() as u64 + i as u64) * 10_000,
                        data: Frame::borrowed(f, std::mem::take(&mut scratch)),
                        original_len: f.len() as u32,
                        source: Source {
                            policy: 0,
                            tap: 0,
                            direction: Direction::Unknown,
                            agent: IpAddr::from([0, 0, 0, 0]),
                        },
                    };
                    kept += u64::from(stage.process(&mut pkt) == Verdict::Keep);
                    scratch = pkt.data.into_buffer();
                }
            }
            kept
        };
        run(3); // warm up (the regex engine fills its cache lazily)
        COUNTING.with(|c| c.set(true));
        let kept = run(50);
        COUNTING.with(|c| c.set(false));
        assert!(kept > 0);
        assert_eq!(ALLOCATIONS.swap(0, Ordering::SeqCst), 0, "{y}");
    }
}
