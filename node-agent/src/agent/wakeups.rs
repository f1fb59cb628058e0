//! What wakes an instance, besides its own changes (the informer): the
//! periodic resync (which also sweeps orphans), the scan of the host's
//! domains, libvirt's domain events, and a booting guest's ready line.
//! Every source only enqueues: `converge` is the one writer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use corral_runtime::{error_chain, ObjectRef, Shutdown};

use super::{blocking, stopped, Agent};
use crate::hypervisor::{domain_name, PowerState, DOMAIN_PREFIX};

/// A booting guest's console, followed until its ready line.
#[derive(Debug, Clone)]
pub(super) struct BootWatch {
    /// The instance's uid (its console is the host's to read).
    pub(super) uid: String,
    /// Bytes of the log already searched.
    pub(super) read: u64,
}

impl Agent {
    pub(super) async fn resync_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.resync);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let keys: Vec<ObjectRef> = self.instances.lock().expect("instances").keys().cloned().collect();
                    for k in keys {
                        self.queue.add(k);
                    }
                    if let Err(e) = self.sweep_orphans().await {
                        tracing::warn!(error = %error_chain(&e), "orphan sweep failed");
                    }
                }
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// Looks at every Corral domain every few seconds (`scan`) and
    /// wakes the instances whose domain changed or vanished: a domain
    /// destroyed or undefined by hand comes back within seconds.
    pub(super) async fn scan_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.scan);
        let mut last: HashMap<String, Option<PowerState>> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            if !self.synced.load(Ordering::SeqCst) {
                continue;
            }
            let hv = self.hv.clone();
            let Ok(domains) = blocking(move || hv.list()).await else {
                continue;
            };
            let now: HashMap<String, PowerState> =
                domains.into_iter().map(|d| (d.name, d.state)).collect();
            let instances: Vec<(ObjectRef, String)> = self
                .instances
                .lock()
                .expect("instances")
                .iter()
                .map(|(k, i)| (k.clone(), domain_name(&i.metadata.uid)))
                .collect();
            let mut seen = HashMap::new();
            for (key, name) in instances {
                let state = now.get(&name).copied();
                if last.get(&name) != Some(&state) {
                    self.queue.add(key);
                }
                seen.insert(name, state);
            }
            last = seen;
        }
    }

    /// Wakes the instance of each libvirt domain event at once (a restarted
    /// listener wakes them all: it may have missed some).
    pub(super) async fn event_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::events::Event>,
        mut stop: Shutdown,
    ) {
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = stopped(&mut stop) => return,
            };
            let keys: Vec<(ObjectRef, String)> = match &event {
                None => return,
                Some(crate::events::Event::Resync) => self
                    .instances
                    .lock()
                    .expect("instances")
                    .keys()
                    .map(|k| {
                        (
                            k.clone(),
                            "resync after the event listener restarted".into(),
                        )
                    })
                    .collect(),
                Some(crate::events::Event::Domain(ev)) => {
                    if !ev.domain.starts_with(DOMAIN_PREFIX) {
                        continue;
                    }
                    let found = self
                        .instances
                        .lock()
                        .expect("instances")
                        .iter()
                        .find(|(_, i)| domain_name(&i.metadata.uid) == ev.domain)
                        .map(|(k, _)| k.clone());
                    let Some(key) = found else { continue };
                    tracing::info!(instance = %key, domain = %ev.domain, event = %ev.kind, detail = %ev.detail, "libvirt event");
                    vec![(key, format!("{} {}", ev.kind, ev.detail))]
                }
            };
            for (key, why) in keys {
                self.event_wakes
                    .lock()
                    .expect("event wakes")
                    .entry(key.clone())
                    .and_modify(|w| {
                        w.push_str("; ");
                        w.push_str(&why);
                    })
                    .or_insert(why);
                self.queue.add(key);
            }
        }
    }

    /// Reads the new console output of the guests still booting every
    /// `boot_poll` (idle while none boots), and wakes an instance as soon
    /// as its guest prints its ready line: Ready is reported without
    /// waiting for the next full convergence.
    pub(super) async fn boot_loop(self: Arc<Self>, mut stop: Shutdown) {
        loop {
            if self.booting.lock().expect("booting").is_empty() {
                tokio::select! {
                    _ = self.boot_started.notified() => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.opts.boot_poll) => {}
                _ = stopped(&mut stop) => return,
            }
            let watches: Vec<(ObjectRef, BootWatch)> = self
                .booting
                .lock()
                .expect("booting")
                .iter()
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect();
            let host = self.on_host().clone();
            let Ok(read) = tokio::task::spawn_blocking(move || {
                watches
                    .into_iter()
                    .map(|(k, w)| {
                        let r = host.read_for_ready(&w.uid, w.read);
                        (k, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            else {
                continue;
            };
            for (key, (ready, upto)) in read {
                let mut booting = self.booting.lock().expect("booting");
                if ready {
                    booting.remove(&key);
                    drop(booting);
                    tracing::debug!(instance = %key, "guest printed its ready line");
                    self.queue.add(key);
                } else if let Some(w) = booting.get_mut(&key) {
                    w.read = w.read.max(upto);
                }
            }
        }
    }
}
