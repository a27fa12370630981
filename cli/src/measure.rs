//! What the benchmarks measure besides their own figures: CPU time of the machine and of the processes sharing it,
//! peak memory, Prometheus metrics, and thousands separators for their tables. Linux `/proc` only.
// Figures for people, never money or quantities.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;

/// Thousands separators, for the tables.
pub fn grouped(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Prometheus text → value per series (name with labels).
pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http.get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    billing_runtime::process::status_kib(&pid.to_string(), "VmHWM")
        .context("no VmHWM in /proc status")
}

/// CPU time of the machine and of the processes that share it (read from /proc, in ticks).
pub struct CpuSnapshot {
    /// When it was taken.
    pub at: Instant,
    /// (busy, total) jiffies of the whole machine.
    pub machine: (u64, u64),
    /// utime + stime of the named processes, by name.
    pub processes: Vec<(String, u64)>,
}

/// Clock ticks per second of /proc (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time now of the machine, of `pids` (name, pid), and of the processes whose command line contains one of
/// `servers`' markers (name, marker), e.g. the stack's `("cassandra", "CassandraDaemon")`.
pub fn cpu_snapshot(pids: &[(&str, u32)], servers: &[(&str, &str)]) -> CpuSnapshot {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((total - idle, total))
        })
        .unwrap_or((0, 0));
    let mut processes: Vec<(String, u64)> = pids
        .iter()
        .map(|(name, pid)| ((*name).to_owned(), proc_ticks(*pid).unwrap_or(0)))
        .collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            for (name, marker) in servers {
                if cmd.contains(marker) {
                    processes.push(((*name).to_owned(), proc_ticks(pid).unwrap_or(0)));
                }
            }
        }
    }
    CpuSnapshot {
        at: Instant::now(),
        machine,
        processes,
    }
}

fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnapshot {
    /// Share of the machine's CPU time that was busy between two snapshots.
    pub fn machine_busy_share(&self, before: &CpuSnapshot) -> f64 {
        let busy = self.machine.0.saturating_sub(before.machine.0) as f64;
        let total = self.machine.1.saturating_sub(before.machine.1) as f64;
        if total > 0.0 {
            busy / total
        } else {
            0.0
        }
    }

    /// CPU seconds per process name between two snapshots.
    pub fn process_seconds(&self, before: &CpuSnapshot) -> Vec<(String, f64)> {
        let sum = |s: &CpuSnapshot, name: &str| -> u64 {
            s.processes
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .sum()
        };
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in &self.processes {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        names
            .into_iter()
            .map(|n| {
                let ticks = sum(self, n).saturating_sub(sum(before, n));
                (n.to_owned(), ticks as f64 / TICKS_PER_SECOND)
            })
            .collect()
    }
}
