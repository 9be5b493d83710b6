//! CPU time from /proc: the whole machine's busy time (`/proc/stat`) and one process's user
//! plus system time (`/proc/PID/stat`, all its threads), in seconds.

use std::time::Instant;

use anyhow::{Context, bail};

/// Clock ticks per second of /proc's counters (USER_HZ).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Busy CPU seconds of the whole machine since boot: user + nice + system + irq + softirq of
/// every CPU (idle, iowait and steal left out).
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing /proc/stat line {line:?}"))?;
    if fields.len() < 7 {
        bail!("/proc/stat line {line:?} has too few fields");
    }
    // user nice system idle iowait irq softirq ...
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    Ok(busy as f64 / ticks_per_second())
}

/// User plus system CPU seconds of process `pid` (all its threads) since it started.
pub fn process_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces: fields are counted after its `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path} has no `)`"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14 and stime field 15.
    let parse = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path} is too short"))?
            .parse()
            .with_context(|| format!("parsing field {} of {path}", i + 3))
    };
    Ok((parse(11)? + parse(12)?) as f64 / ticks_per_second())
}

/// CPU use over a window: the machine's busy seconds and, optionally, one process's.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    started: Instant,
    machine: f64,
    process: Option<(u32, f64)>,
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Wall-clock seconds of the window.
    pub wall: f64,
    /// Busy CPU seconds of the whole machine.
    pub machine: f64,
    /// CPU seconds of the watched process, if one was watched.
    pub process: Option<f64>,
}

impl CpuWindow {
    /// Starts a window, watching `pid` too if given.
    pub fn start(pid: Option<u32>) -> anyhow::Result<CpuWindow> {
        let process = match pid {
            Some(p) => Some((p, process_seconds(p)?)),
            None => None,
        };
        Ok(CpuWindow {
            started: Instant::now(),
            machine: machine_busy_seconds()?,
            process,
        })
    }

    /// Ends the window (the watched process must still be running).
    pub fn stop(&self) -> anyhow::Result<CpuUse> {
        let machine = machine_busy_seconds()? - self.machine;
        let process = match self.process {
            Some((pid, before)) => Some(process_seconds(pid)? - before),
            None => None,
        };
        Ok(CpuUse {
            wall: self.started.elapsed().as_secs_f64(),
            machine,
            process,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine_and_this_process() {
        let busy = machine_busy_seconds().unwrap();
        assert!(busy > 0.0);
        let me = process_seconds(std::process::id()).unwrap();
        assert!(me >= 0.0);
    }
}
