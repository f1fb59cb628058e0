//! What else ran on the machine during a round: CPU load sampled from
//! /proc, so a noisy round is reported rather than hidden.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::*;

#[derive(Clone, Copy)]
pub(super) struct LoadSample {
    pub(super) at: Instant,
    pub(super) load1: f64,
    pub(super) foreign_qemu: usize,
    /// CPU seconds used by processes that are not this benchmark's
    /// since sampling began.
    pub(super) foreign_cpu: f64,
}

/// One process in /proc.
pub(super) struct Proc {
    pub(super) zombie: bool,
    pub(super) ppid: u32,
    pub(super) comm: String,
    /// utime + stime, clock ticks.
    pub(super) ticks: u64,
}

pub(super) fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // After the `)`: state (field 3), ppid (4), ... utime (14), stime (15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        zombie: *f.first()? == "Z",
        ppid: f.get(1)?.parse().ok()?,
        comm,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// The 1-min load average, the number of QEMU processes that are not
/// this benchmark's, and the CPU ticks of every process that is not
/// (ours: this process and its descendants, QEMUs whose command line
/// names our directory, libvirtd and virtlogd; kernel threads are
/// left out).
pub(super) fn sample_load(ours: &str) -> (f64, usize, HashMap<u32, u64>) {
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let mut procs: HashMap<u32, Proc> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(p) = read_proc(pid) {
                procs.insert(pid, p);
            }
        }
    }
    let me = std::process::id();
    let mine = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match procs.get(&pid) {
                Some(p) if p.ppid != 0 => pid = p.ppid,
                _ => return false,
            }
        }
        false
    };
    let mut foreign_qemu = 0;
    let mut foreign = HashMap::new();
    for (pid, p) in &procs {
        if *pid == 2 || p.ppid == 2 || mine(*pid) {
            continue;
        }
        if matches!(p.comm.as_str(), "libvirtd" | "virtlogd") {
            continue;
        }
        // An exited QEMU not yet reaped (ours too) has no command line.
        if p.comm.starts_with("qemu-system") && !p.zombie {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if find(&cmdline, ours.as_bytes(), 0) {
                continue;
            }
            foreign_qemu += 1;
        }
        foreign.insert(*pid, p.ticks);
    }
    (load1, foreign_qemu, foreign)
}

pub(super) fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the machine was doing besides this benchmark, over a window.
pub(super) struct LoadWindow {
    pub(super) mean: f64,
    pub(super) max: f64,
    /// Other QEMU processes at once, at most.
    pub(super) foreign_qemu: usize,
    /// CPUs used by processes not this benchmark's, on average.
    pub(super) foreign_cpus: f64,
}

#[derive(Clone, Default)]
pub(super) struct LoadLog(Arc<Mutex<Vec<LoadSample>>>);

impl LoadLog {
    pub(super) fn spawn(&self, ours: String) -> JoinHandle<()> {
        let log = self.0.clone();
        tokio::spawn(async move {
            let hz = tokio::task::spawn_blocking(clock_ticks_per_sec)
                .await
                .unwrap_or(100.0);
            let mut prev: HashMap<u32, u64> = HashMap::new();
            let mut used = 0.0;
            let mut first = true;
            loop {
                let ours = ours.clone();
                if let Ok((load1, foreign_qemu, now)) =
                    tokio::task::spawn_blocking(move || sample_load(&ours)).await
                {
                    // A process first seen counts from its next sample.
                    if !first {
                        for (pid, ticks) in &now {
                            if let Some(before) = prev.get(pid) {
                                used += ticks.saturating_sub(*before) as f64 / hz;
                            }
                        }
                    }
                    first = false;
                    log.lock().expect("load log").push(LoadSample {
                        at: Instant::now(),
                        load1,
                        foreign_qemu,
                        foreign_cpu: used,
                    });
                    prev = now;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    pub(super) fn window(&self, from: Instant, to: Instant) -> LoadWindow {
        let log = self.0.lock().expect("load log");
        let w: Vec<&LoadSample> = log.iter().filter(|s| s.at >= from && s.at <= to).collect();
        let (Some(a), Some(b)) = (w.first(), w.last()) else {
            return LoadWindow {
                mean: 0.0,
                max: 0.0,
                foreign_qemu: 0,
                foreign_cpus: 0.0,
            };
        };
        let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
        LoadWindow {
            mean: w.iter().map(|s| s.load1).sum::<f64>() / w.len() as f64,
            max: w.iter().map(|s| s.load1).fold(0.0, f64::max),
            foreign_qemu: w.iter().map(|s| s.foreign_qemu).max().unwrap_or(0),
            foreign_cpus: if secs > 0.0 {
                (b.foreign_cpu - a.foreign_cpu) / secs
            } else {
                0.0
            },
        }
    }
}

// ----------------------------------------------------------------
// Bare QEMU: the same guest, disks and devices as the domain the node
// agent defines (libvirt's command line, minus libvirt).
