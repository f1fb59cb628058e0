//! One store watch per kind, shared by every HTTP watcher of that kind.
//!
//! Without it each client watch is its own store watch, and each event is
//! decoded once per watcher: a hundred node agents watching Instances made
//! a hundred decodes of every Instance write. The hub decodes once, keeps
//! the recent events in a ring (so a watcher that starts a little in the
//! past is served from memory), and fans out to subscribers, each of which
//! only filters by project.
//!
//! A subscriber that falls too far behind the live stream gets an
//! Expired (410) and relists, exactly as if the store had compacted; a
//! start older than the ring is served by a direct store watch instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;
use crate::kinds::{KindApi, WatchEvent, WatchItem};

/// Events kept per kind for late starters.
const RING: usize = 4_096;
/// Live events a subscriber may lag behind before it is expired.
const LAG: usize = 50_000;

type HubEvent = WatchEvent;

struct Ring {
    /// Events with revisions greater than this are all in `events`.
    covers_after: i64,
    events: VecDeque<Arc<HubEvent>>,
}

struct KindHub {
    ring: Mutex<Option<Ring>>,
    /// Replaced (closing every subscriber) when the feeder ends.
    live: Mutex<broadcast::Sender<Arc<HubEvent>>>,
}

/// The hubs of one API server.
#[derive(Default)]
pub struct WatchCache {
    hubs: Mutex<HashMap<&'static str, Arc<KindHub>>>,
}

impl WatchCache {
    /// Events of `kind` after `after`, limited to `project` if given.
    pub async fn watch(
        &self,
        kind: Arc<dyn KindApi>,
        project: Option<&str>,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
        let plural = kind.info().plural;
        let hub = {
            let mut hubs = self.hubs.lock().expect("hubs");
            hubs.entry(plural)
                .or_insert_with(|| {
                    Arc::new(KindHub {
                        ring: Mutex::new(None),
                        live: Mutex::new(broadcast::channel(LAG).0),
                    })
                })
                .clone()
        };
        // Start the feeder on first use, from this watcher's start.
        let start_feeder = {
            let mut ring = hub.ring.lock().expect("ring");
            if ring.is_none() {
                *ring = Some(Ring {
                    covers_after: after,
                    events: VecDeque::new(),
                });
                true
            } else {
                false
            }
        };
        if start_feeder {
            match kind.watch(None, after).await {
                Ok(source) => {
                    tokio::spawn(feed(hub.clone(), source));
                }
                Err(e) => {
                    *hub.ring.lock().expect("ring") = None;
                    return Err(e);
                }
            }
        }
        // Replay from the ring and subscribe, atomically.
        let served = {
            let ring = hub.ring.lock().expect("ring");
            match ring.as_ref() {
                Some(r) if after >= r.covers_after => {
                    let backlog: Vec<Arc<HubEvent>> = r
                        .events
                        .iter()
                        .filter(|e| e.resource_version > after)
                        .cloned()
                        .collect();
                    Some((backlog, hub.live.lock().expect("live").subscribe()))
                }
                _ => None,
            }
        };
        // Older than the ring (or the hub restarted): the store itself.
        let Some((backlog, live)) = served else {
            return kind.watch(project, after).await;
        };
        let project = project.map(str::to_string);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(serve(backlog, live, project, after, tx));
        Ok(rx)
    }
}

async fn feed(hub: Arc<KindHub>, mut source: mpsc::Receiver<WatchItem>) {
    while let Some(item) = source.recv().await {
        match item {
            WatchItem::Event(event) => {
                let mut ring = hub.ring.lock().expect("ring");
                if let Some(r) = ring.as_mut() {
                    r.events.push_back(event.clone());
                    while r.events.len() > RING {
                        if let Some(old) = r.events.pop_front() {
                            r.covers_after = old.resource_version;
                        }
                    }
                }
                // Sent under the lock: a new subscriber sees each event
                // either in its backlog or live, never both or neither.
                let _ = hub.live.lock().expect("live").send(event);
            }
            WatchItem::Error(e) => {
                tracing::warn!(error = %e, "shared watch ended; next watcher restarts it");
                break;
            }
        }
    }
    // Source gone: forget the ring so the next watcher starts afresh, and
    // end current subscribers (they relist) by dropping the sender side.
    let mut ring = hub.ring.lock().expect("ring");
    *ring = None;
    *hub.live.lock().expect("live") = broadcast::channel(LAG).0;
}

async fn serve(
    backlog: Vec<Arc<HubEvent>>,
    mut live: broadcast::Receiver<Arc<HubEvent>>,
    project: Option<String>,
    after: i64,
    tx: mpsc::Sender<WatchItem>,
) {
    let mut last = after;
    let wanted = |e: &HubEvent| project.as_deref().is_none_or(|p| p == e.project);
    let item = |e: &Arc<HubEvent>| WatchItem::Event(e.clone());
    for e in backlog {
        last = e.resource_version;
        if wanted(&e) && tx.send(item(&e)).await.is_err() {
            return;
        }
    }
    loop {
        let e = tokio::select! {
            e = live.recv() => e,
            _ = tx.closed() => return,
        };
        match e {
            Ok(e) => {
                if e.resource_version <= last {
                    continue;
                }
                last = e.resource_version;
                if wanted(&e) && tx.send(item(&e)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let _ = tx
                    .send(WatchItem::Error(ApiError::gone(
                        "this watch fell too far behind; list again and watch from there",
                    )))
                    .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = tx
                    .send(WatchItem::Error(ApiError::gone(
                        "the shared watch restarted; list again",
                    )))
                    .await;
                return;
            }
        }
    }
}
