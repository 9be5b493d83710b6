//! Running a program to completion and measuring it: wall time, and the CPU time the kernel
//! charged to it and to every descendant it waited for (`wait4`'s resource usage), so a
//! shell pipeline or a daemon that forks its plugins is measured whole.

use std::fs::File;
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often the wait looks at the child.
const POLL: Duration = Duration::from_millis(1);

/// What a measured run took and printed.
#[derive(Debug, Clone)]
pub struct Measured {
    /// What ran, for messages.
    pub what: String,
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Wall-clock seconds from start to exit.
    pub wall: f64,
    /// User CPU seconds (the child and its waited-for descendants).
    pub user: f64,
    /// System CPU seconds (likewise).
    pub system: f64,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Measured {
    /// User plus system CPU seconds.
    pub fn cpu(&self) -> f64 {
        self.user + self.system
    }

    /// Fails unless the program exited with status 0.
    pub fn success(self) -> anyhow::Result<Measured> {
        if self.code != Some(0) {
            bail!(
                "{} failed ({}):\n{}{}",
                self.what,
                self.code
                    .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
                self.stdout.trim_end(),
                self.stderr.trim_end()
            );
        }
        Ok(self)
    }
}

/// Runs `cmd` (stdin from /dev/null, output to temporary files) until it exits, killing it by
/// its pid after `timeout`.
pub fn run(what: &str, mut cmd: Command, timeout: Duration) -> anyhow::Result<Measured> {
    let mut out = tempfile::tempfile().context("a temporary file for stdout")?;
    let mut err = tempfile::tempfile().context("a temporary file for stderr")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(err.try_clone()?));
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {what} ({cmd:?})"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let deadline = started + timeout;
    let (status, usage, wall) = loop {
        let mut status = 0i32;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage, started.elapsed().as_secs_f64());
        }
        if r < 0 {
            bail!("waiting for {what}: {}", std::io::Error::last_os_error());
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling and reaping our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            bail!("{what} did not finish within {timeout:?}; killed it");
        }
        std::thread::sleep(POLL);
    };
    // The child was reaped here, not through `child`; dropping it does not wait.
    drop(child);
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let read_all = |f: &mut File| -> String {
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    };
    Ok(Measured {
        what: what.to_string(),
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        wall,
        user: seconds(usage.ru_utime),
        system: seconds(usage.ru_stime),
        stdout: read_all(&mut out),
        stderr: read_all(&mut err),
    })
}

/// The median of some numbers (the mean of the middle two for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The replay's own CPU figure: `replay: N packets through policy P in W s wall, C s CPU: ...`.
pub fn own_cpu(m: &Measured) -> Option<f64> {
    let line = m.stdout.lines().find(|l| l.starts_with("replay:"))?;
    let after = line.split("s wall, ").nth(1)?;
    after.split(" s CPU").next()?.trim().parse().ok()
}

/// A rate for tables: `1.23M`, `45.6k`, `789`.
pub fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A target met, for tables: `yes` or `NO`.
pub fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn measures_a_pipeline_whole() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done | cat; echo done",
        ]);
        let m = run("sh", cmd, Duration::from_secs(30))
            .unwrap()
            .success()
            .unwrap();
        assert_eq!(m.stdout.trim(), "done");
        assert!(m.cpu() > 0.0, "{m:?}");
        assert!(m.wall >= m.cpu() * 0.5, "{m:?}");
    }

    #[test]
    fn reports_failure() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let m = run("sh", cmd, Duration::from_secs(5)).unwrap();
        assert_eq!(m.code, Some(3));
        assert!(m.stderr.contains("oops"));
        assert!(m.success().is_err());
    }
}
