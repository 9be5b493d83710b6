//! Child processes the benchmarks start (iperf3, tcpdump, the podtap agent): their output is
//! collected by reader threads, every wait has a deadline, and a child still running when its
//! handle is dropped is killed by its pid.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often waits look at the child again.
const POLL: Duration = Duration::from_millis(20);

/// A started child process whose stdout and stderr are being collected.
pub struct Spawned {
    what: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// What a finished child left: its exit status and everything it printed.
#[derive(Debug)]
pub struct Finished {
    /// The exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr piped; `what` names it in errors.
    pub fn start(what: &str, mut cmd: Command) -> anyhow::Result<Spawned> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {what} ({cmd:?})"))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Ok(Spawned {
            what: what.to_string(),
            child,
            stdout,
            stderr,
            readers,
            status: None,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited (and records its status).
    pub fn exited(&mut self) -> anyhow::Result<bool> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.what))?;
        }
        Ok(self.status.is_some())
    }

    /// Waits until `ready` holds, failing if the child exits first or `timeout` passes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&Spawned) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self)? {
                return Ok(());
            }
            if self.exited()? {
                // Let the readers catch the last words.
                thread::sleep(POLL);
                bail!(
                    "{} exited before {what}: {}\n{}",
                    self.what,
                    self.status.map(|s| s.to_string()).unwrap_or_default(),
                    self.stderr().trim_end()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not reach {what} within {timeout:?}\n{}",
                    self.what,
                    self.stderr().trim_end()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until the child's stderr or stdout contains `text`.
    pub fn wait_for_output(&mut self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(timeout, &format!("printing {text:?}"), |s| {
            Ok(s.stderr().contains(text) || s.stdout().contains(text))
        })
    }

    /// What the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends `signal` to the child (by its pid) unless it has exited.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if self.exited()? {
            return Ok(());
        }
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {} (pid {pid})", self.what))
    }

    /// Waits up to `timeout` for the child to exit; if it has not, kills it and fails.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + timeout;
        while !self.exited()? {
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not exit within {timeout:?}; killed it\n{}",
                    self.what,
                    self.stderr().trim_end()
                );
            }
            thread::sleep(POLL);
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let status = self
            .status
            .with_context(|| format!("{} has no exit status", self.what))?;
        Ok(Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// Sends SIGTERM and waits up to `timeout` for the child to exit.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        self.signal(Signal::SIGTERM)?;
        self.finish(timeout)
    }

    /// Kills the child (SIGKILL to its pid) and reaps it.
    fn kill(&mut self) {
        if matches!(self.exited(), Ok(false)) {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends everything `from` yields to `into`, line by line, on a thread.
fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => into
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&line),
            }
        }
    })
}

/// A command run inside a named network namespace (`ip netns exec NETNS PROGRAM ARGS`); `ip`
/// execs the program, so the child's pid is the program's.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]).args(args);
    cmd
}
