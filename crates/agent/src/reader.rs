//! The ring reader: one thread per node that waits on the tap's ring buffer and hands every
//! record to the output. The kernel wakes it only when enough data is pending (batched
//! wakeups); a short poll timeout bounds how long a record can wait.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use crate::output::Output;

/// How long the reader sleeps at most before looking at the ring again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Records handled per output lock, so that several readers take turns.
const BATCH: usize = 4096;

/// A running reader thread.
pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RingReader {
    /// Starts reading `ring`, whose records come from the node with index `node`.
    pub fn spawn(
        node: u16,
        mut ring: RingBuf<MapData>,
        output: Arc<Mutex<Output>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("podtap-ring-{node}"))
            .spawn(move || {
                let fd = ring.as_raw_fd();
                loop {
                    let stopping = stop_flag.load(Ordering::Acquire);
                    drain(node, &mut ring, &output);
                    if stopping {
                        break;
                    }
                    wait_readable(fd, POLL_INTERVAL);
                }
            })?;
        Ok(RingReader {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread after a last full drain of the ring, and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands every pending record to the output, a batch per lock.
fn drain(node: u16, ring: &mut RingBuf<MapData>, output: &Mutex<Output>) {
    loop {
        let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while n < BATCH {
            let Some(item) = ring.next() else { break };
            out.record(node, &item);
            n += 1;
        }
        out.end_batch();
        if n < BATCH {
            return;
        }
    }
}

pub(crate) fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut pfd, 1, timeout.as_millis() as i32);
    }
}
