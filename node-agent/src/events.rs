//! libvirt's domain events on a real host, as they happen.
//!
//! The `virt` crate (0.5) wraps no domain-event API, and `unsafe` is
//! forbidden here, so the events come from a supervised child process:
//! `virsh -c URI event --all --loop --timestamp` (libvirt-clients), one
//! line per event. Each line is parsed into the domain's name and the
//! event; the agent wakes that domain's instance at once. When the child
//! exits (libvirtd restarted: virsh ends with "Disconnected from …"), it is
//! started again with backoff, and once the new one has stayed up a moment
//! a [`Event::Resync`] asks the agent to look at everything, since events
//! in the gap were lost. The agent's periodic scan stays as the backstop.
//!
//! The child dies with the agent (`setpriv --pdeathsig KILL`, where
//! util-linux's setpriv exists), so a killed agent leaves no listener.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use corral_runtime::Shutdown;

/// One domain event as `virsh event` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// The domain's name.
    pub domain: String,
    /// The event type: `lifecycle`, `reboot`, `device-removed`, …
    pub kind: String,
    /// What follows the domain, e.g. `Stopped Destroyed` for a lifecycle
    /// event (may be empty).
    pub detail: String,
}

impl DomainEvent {
    /// Whether the event may change what the agent reports or must do:
    /// power state (lifecycle), a guest reboot (readiness is judged
    /// again), devices coming and going (volume attachments).
    pub fn matters(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "lifecycle" | "reboot" | "device-removed" | "device-added" | "device-removal-failed"
        )
    }
}

/// What the event source tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Domain(DomainEvent),
    /// The listener was restarted: events may have been missed.
    Resync,
}

/// Parses one line of `virsh event --all --loop [--timestamp]` output:
/// `[TIMESTAMP: ]event 'KIND' for domain 'NAME'[: DETAIL]`. Answers `None`
/// for anything else (continuation lines of multi-line events, the final
/// `events received: N`).
pub fn parse_line(line: &str) -> Option<DomainEvent> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with([' ', '\t']) {
        return None;
    }
    let start = line.find("event '")?;
    // Only a timestamp may come before "event '".
    if start > 0 && !line[..start].ends_with(": ") {
        return None;
    }
    let rest = &line[start + "event '".len()..];
    let (kind, rest) = rest.split_once("' for domain '")?;
    if kind.is_empty() || kind.contains('\'') {
        return None;
    }
    let (domain, detail) = match rest.split_once("':") {
        Some((d, detail)) => (d, detail.trim()),
        None => (rest.strip_suffix('\'')?, ""),
    };
    if domain.is_empty() {
        return None;
    }
    Some(DomainEvent {
        domain: domain.to_string(),
        kind: kind.to_string(),
        detail: detail.to_string(),
    })
}

/// Follows `uri`'s domain events until `stop`, sending them to `tx`.
/// Returns when `stop` turns true or the receiver is gone.
pub async fn follow(uri: String, tx: mpsc::UnboundedSender<Event>, mut stop: Shutdown) {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
    // How long a listener must live to count as healthy (resets the
    // backoff; after a restart, asks for a resync).
    const SETTLED: Duration = Duration::from_secs(1);
    let pdeathsig = std::path::Path::new("/usr/bin/setpriv").exists();
    let mut backoff = FIRST;
    let mut restarts = 0u64;
    loop {
        let mut cmd = if pdeathsig {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "virsh"]);
            c
        } else {
            Command::new("virsh")
        };
        cmd.args(["-c", &uri, "event", "--all", "--loop", "--timestamp"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let began = Instant::now();
        let why = match cmd.spawn() {
            Err(e) => format!("cannot run virsh (install libvirt-clients): {e}"),
            Ok(mut child) => {
                let stdout = child.stdout.take().expect("piped stdout");
                let stderr = child.stderr.take().expect("piped stderr");
                let mut lines = BufReader::new(stdout).lines();
                let errors = tokio::spawn(async move {
                    let mut last = String::new();
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if !l.trim().is_empty() {
                            last = l;
                        }
                    }
                    last
                });
                tracing::debug!(%uri, pid = child.id(), "following libvirt domain events");
                let settled = tokio::time::sleep(SETTLED);
                tokio::pin!(settled);
                let mut announced = false;
                let ended = loop {
                    tokio::select! {
                        line = lines.next_line() => match line {
                            Ok(Some(l)) => {
                                if let Some(ev) = parse_line(&l) {
                                    tracing::debug!(domain = %ev.domain, kind = %ev.kind, detail = %ev.detail, "libvirt event");
                                    if ev.matters() && tx.send(Event::Domain(ev)).is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break None,
                            Err(e) => break Some(format!("reading virsh: {e}")),
                        },
                        _ = &mut settled, if !announced => {
                            announced = true;
                            backoff = FIRST;
                            if restarts > 0 {
                                tracing::info!(%uri, "following libvirt domain events again");
                                if tx.send(Event::Resync).is_err() {
                                    return;
                                }
                            }
                        }
                        _ = stopped(&mut stop) => {
                            let _ = child.kill().await;
                            return;
                        }
                    }
                };
                let _ = child.kill().await;
                let status = child.wait().await;
                let last = errors.await.unwrap_or_default();
                match (ended, last.is_empty()) {
                    (Some(e), _) => e,
                    (None, false) => last,
                    (None, true) => format!("virsh event exited ({status:?})"),
                }
            }
        };
        if began.elapsed() >= SETTLED {
            tracing::warn!(%uri, reason = %why, "libvirt event listener stopped; restarting it");
        } else {
            tracing::debug!(%uri, reason = %why, retry_in = ?backoff, "libvirt event listener failed");
        }
        restarts += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(MAX);
    }
}

async fn stopped(stop: &mut Shutdown) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            // The sender is gone: nothing will ever stop us but this.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `virsh -c qemu:///system event --all --loop
    /// --timestamp` (libvirt 11.3) while a domain was defined, started,
    /// suspended, resumed, shut down, destroyed, managed-saved, restored
    /// and undefined.
    const CAPTURED: &str = "\
2026-12-03 07:42:09.406+0000: event 'lifecycle' for domain 'h5-event-probe': Defined Added
2026-12-03 07:42:09.738+0000: event 'lifecycle' for domain 'h5-event-probe': Resumed Unpaused
2026-12-03 07:42:09.746+0000: event 'lifecycle' for domain 'h5-event-probe': Started Booted
2026-12-03 07:42:10.776+0000: event 'lifecycle' for domain 'h5-event-probe': Suspended Paused
2026-12-03 07:42:11.309+0000: event 'lifecycle' for domain 'h5-event-probe': Resumed Unpaused
2026-12-03 07:42:16.509+0000: event 'lifecycle' for domain 'h5-event-probe': Shutdown Finished after host request
2026-12-03 07:42:16.525+0000: event 'lifecycle' for domain 'h5-event-probe': Stopped Destroyed
2026-12-03 07:42:18.167+0000: event 'lifecycle' for domain 'h5-event-probe': Suspended Paused
2026-12-03 07:42:18.189+0000: event 'migration-iteration' for domain 'h5-event-probe': iteration: '1'
2026-12-03 07:42:18.192+0000: event 'job-completed' for domain 'h5-event-probe':
\toperation: 2
\ttime_elapsed: 31
\tmemory_page_size: 4096
2026-12-03 07:42:19.426+0000: event 'lifecycle' for domain 'h5-event-probe': Stopped Saved
2026-12-03 07:42:20.054+0000: event 'lifecycle' for domain 'h5-event-probe': Started Restored
2026-12-03 07:42:20.066+0000: event 'lifecycle' for domain 'h5-event-probe': Resumed Snapshot
2026-12-03 07:42:22.571+0000: event 'lifecycle' for domain 'h5-event-probe': Undefined Removed
events received: 0
";

    #[test]
    fn parses_captured_virsh_output() {
        let events: Vec<DomainEvent> = CAPTURED.lines().filter_map(parse_line).collect();
        assert_eq!(events.len(), 14, "{events:#?}");
        assert!(events.iter().all(|e| e.domain == "h5-event-probe"));
        assert_eq!(
            events[0],
            DomainEvent {
                domain: "h5-event-probe".into(),
                kind: "lifecycle".into(),
                detail: "Defined Added".into(),
            }
        );
        assert_eq!(events[6].detail, "Stopped Destroyed");
        assert_eq!(events[5].detail, "Shutdown Finished after host request");
        // A detail that itself ends in a quote keeps the domain whole.
        assert_eq!(events[8].kind, "migration-iteration");
        assert_eq!(events[8].detail, "iteration: '1'");
        // A multi-line event: its header only, with an empty detail.
        assert_eq!(events[9].kind, "job-completed");
        assert_eq!(events[9].detail, "");
        let kept: Vec<&str> = events
            .iter()
            .filter(|e| e.matters())
            .map(|e| e.detail.as_str())
            .collect();
        assert_eq!(kept.len(), 12, "lifecycle events only: {kept:?}");
    }

    #[test]
    fn lines_without_timestamp_and_other_kinds() {
        let e = parse_line("event 'reboot' for domain 'corral-0f3a'").expect("reboot");
        assert_eq!(
            (e.kind.as_str(), e.domain.as_str(), e.detail.as_str()),
            ("reboot", "corral-0f3a", "")
        );
        assert!(e.matters());
        let e = parse_line("event 'device-removed' for domain 'corral-0f3a': virtio-disk1")
            .expect("device-removed");
        assert_eq!(e.detail, "virtio-disk1");
        assert!(e.matters());
        let e = parse_line("event 'rtc-change' for domain 'corral-0f3a': 12").expect("rtc");
        assert!(!e.matters());
        // A Windows-style line ending is not part of the detail.
        let e = parse_line("event 'lifecycle' for domain 'x': Stopped Shutdown\r").expect("crlf");
        assert_eq!(e.detail, "Stopped Shutdown");
    }

    #[test]
    fn rejects_what_is_not_an_event_line() {
        for line in [
            "",
            "events received: 3",
            "\toperation: 2",
            "  data_total: 67641344",
            "error: Disconnected from qemu:///system due to end of file",
            "event 'lifecycle' for domain '': Started Booted",
            "event '' for domain 'x': Started Booted",
            "event 'lifecycle' for domain 'unterminated",
            "noise event 'lifecycle' for domain 'x': Started Booted",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }
}
