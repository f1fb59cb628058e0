//! When a guest said it was ready, from the guest's own clock and the
//! console's timestamps.

use std::time::{Duration, Instant};

use tokio::process::Command;

use super::*;

/// Milestones of one instance, from its POST.
pub(super) struct Sample {
    pub(super) scheduled: Duration,
    /// The domain's QEMU process exec'd (from /proc; ±10 ms).
    pub(super) qemu: Option<Duration>,
    pub(super) running: Duration,
    pub(super) ready: Duration,
}

/// Converts a process's start time in /proc (clock ticks since boot)
/// to an `Instant`: aligned once on a tick of /proc/uptime.
#[derive(Clone, Copy)]
pub(super) struct BootClock {
    pub(super) at: Instant,
    pub(super) uptime: f64,
    pub(super) hz: f64,
}

pub(super) fn read_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl BootClock {
    pub(super) async fn calibrate() -> Option<BootClock> {
        let hz = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .await
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        tokio::task::spawn_blocking(move || {
            // /proc/uptime moves in 10 ms steps: catch a step.
            let first = read_uptime()?;
            let give_up = Instant::now() + Duration::from_millis(100);
            loop {
                let now = read_uptime()?;
                if now != first {
                    return Some(BootClock {
                        at: Instant::now(),
                        uptime: now,
                        hz,
                    });
                }
                if Instant::now() > give_up {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// When the QEMU process running domain `corral-<uid>` started.
    pub(super) fn qemu_started(&self, uid: &str) -> Option<Instant> {
        let needle = format!("guest=corral-{uid}");
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if !comm.starts_with("qemu-system") {
                continue;
            }
            let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
            if !find(&cmdline, needle.as_bytes(), 0) {
                continue;
            }
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            // Field 22 (starttime); fields after the command's `)`
            // start at field 3.
            let ticks: f64 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(19)?
                .parse()
                .ok()?;
            // Started somewhere in that tick: take its middle.
            let secs = (ticks + 0.5) / self.hz - self.uptime;
            return if secs >= 0.0 {
                self.at.checked_add(Duration::from_secs_f64(secs))
            } else {
                self.at.checked_sub(Duration::from_secs_f64(-secs))
            };
        }
        None
    }
}
