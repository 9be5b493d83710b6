//! Mirror of `ebpf/include/tls.h`: the TLS plaintext programs (`ebpf/tls.c`).

use core::mem::{offset_of, size_of};

/// uprobe on `SSL_read`.
pub const PROG_READ_ENTER: &str = "tls_read_enter";
/// uprobe on `SSL_write`.
pub const PROG_WRITE_ENTER: &str = "tls_write_enter";
/// uprobe on `SSL_read_ex`.
pub const PROG_READ_EX_ENTER: &str = "tls_read_ex_enter";
/// uprobe on `SSL_write_ex`.
pub const PROG_WRITE_EX_ENTER: &str = "tls_write_ex_enter";
/// uretprobe on all four.
pub const PROG_RET: &str = "tls_ret";
/// uprobe on `SSL_set_fd`.
pub const PROG_SET_FD: &str = "tls_set_fd";
/// uprobe on `SSL_free`.
pub const PROG_FREE: &str = "tls_free";
/// Tracepoint program for `syscalls:sys_enter_{read,recvfrom,recvmsg,readv}`.
pub const PROG_SYS_READ: &str = "tls_sys_read";
/// Tracepoint program for `syscalls:sys_enter_{write,sendto,sendmsg,writev}`.
pub const PROG_SYS_WRITE: &str = "tls_sys_write";

/// Ring buffer of [`TlsEvent`]s, data events followed by `captured_len` bytes of plaintext.
pub const MAP_RING: &str = "TLS_RING";
/// Hash tgid → `u16` tap id: the processes being probed.
pub const MAP_PIDS: &str = "TLS_PIDS";
/// Per-CPU array, one [`TlsCounters`].
pub const MAP_COUNTERS: &str = "TLS_COUNTERS";

/// `TLS_EV_DATA`: plaintext follows.
pub const EV_DATA: u8 = 0;
/// `TLS_EV_BIND`: (tgid, ssl) uses the connection in the header.
pub const EV_BIND: u8 = 1;
/// `TLS_DIR_READ`: the peer sent it.
pub const DIR_READ: u8 = 0;
/// `TLS_DIR_WRITE`: the probed process sent it.
pub const DIR_WRITE: u8 = 1;
/// `TLS_MAX_CHUNK`: the most plaintext one event carries.
pub const MAX_CHUNK: u32 = 16384;
/// `TLS_MAX_CHUNKS`: events one call may produce.
pub const MAX_CHUNKS: u32 = 8;

/// `struct tls_tuple`: the connection as the probed process's socket sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TlsTuple {
    /// IPv4 in the first 4 bytes (family 2), else IPv6.
    pub local_addr: [u8; 16],
    /// The peer's address.
    pub remote_addr: [u8; 16],
    /// Host order.
    pub local_port: u16,
    /// Host order.
    pub remote_port: u16,
    /// 2 or 10; 0 = unknown.
    pub family: u16,
    /// Padding.
    pub _pad: u16,
}

/// `struct tls_event`: the header of every ring record.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsEvent {
    /// CLOCK_MONOTONIC when the call returned.
    pub timestamp_ns: u64,
    /// The SSL* (an id only).
    pub ssl: u64,
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// Plaintext bytes of the whole call.
    pub call_len: u32,
    /// Where this chunk starts within the call.
    pub offset: u32,
    /// Bytes that follow.
    pub captured_len: u32,
    /// The socket, or -1.
    pub fd: i32,
    /// [`EV_DATA`] or [`EV_BIND`].
    pub kind: u8,
    /// [`DIR_READ`] or [`DIR_WRITE`].
    pub direction: u8,
    /// Padding.
    pub _pad: [u8; 6],
    /// The connection (family 0: not known yet).
    pub tuple: TlsTuple,
}

/// `struct tls_counters` (per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsCounters {
    /// Calls that returned data.
    pub calls: u64,
    /// Plaintext bytes those calls moved.
    pub bytes: u64,
    /// Data events written.
    pub events: u64,
    /// Events lost: ring full.
    pub ring_full: u64,
    /// Bytes not captured: calls longer than `MAX_CHUNKS` chunks.
    pub truncated: u64,
    /// Events lost: reading the caller's buffer failed.
    pub read_failed: u64,
    /// Data events without a known connection.
    pub no_socket: u64,
    /// Bind events.
    pub binds: u64,
}

impl core::ops::AddAssign for TlsCounters {
    fn add_assign(&mut self, o: Self) {
        self.calls += o.calls;
        self.bytes += o.bytes;
        self.events += o.events;
        self.ring_full += o.ring_full;
        self.truncated += o.truncated;
        self.read_failed += o.read_failed;
        self.no_socket += o.no_socket;
        self.binds += o.binds;
    }
}

const _: () = {
    assert!(size_of::<TlsTuple>() == 40);
    assert!(size_of::<TlsEvent>() == 88);
    assert!(offset_of!(TlsEvent, tuple) == 48);
    assert!(size_of::<TlsCounters>() == 64);
};
