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
    /// The newest event in `events` of each live object, by
    /// `project/name`: what the object was at that event's revision.
    latest: HashMap<String, Arc<HubEvent>>,
}

fn key_of(project: &str, name: &str) -> String {
    format!("{project}/{name}")
}

impl Ring {
    fn push(&mut self, event: Arc<HubEvent>) {
        let name = event
            .object
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let key = key_of(&event.project, name);
        if event.kind == "DELETED" {
            self.latest.remove(&key);
        } else {
            self.latest.insert(key, event.clone());
        }
        self.events.push_back(event);
        while self.events.len() > RING {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.covers_after = old.resource_version;
            let name = old
                .object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("");
            let key = key_of(&old.project, name);
            if self
                .latest
                .get(&key)
                .is_some_and(|e| e.resource_version == old.resource_version)
            {
                self.latest.remove(&key);
            }
        }
    }
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
    /// The object `project/name` of kind `plural` as it was at revision
    /// `revision`, if the shared watch's recent events show that revision
    /// as its newest. A write that compares-and-swaps on `revision` may
    /// start from it instead of reading the store: if the object changed
    /// since, the swap fails as it would have anyway.
    pub fn object_at(
        &self,
        plural: &str,
        project: &str,
        name: &str,
        revision: i64,
    ) -> Option<Arc<WatchEvent>> {
        let hub = self.hubs.lock().expect("hubs").get(plural)?.clone();
        let ring = hub.ring.lock().expect("ring");
        ring.as_ref()?
            .latest
            .get(&key_of(project, name))
            .filter(|e| e.resource_version == revision)
            .cloned()
    }

    /// Events of `kind` after `after`, limited to `project` if given, and
    /// to objects that are or were on `node` if given (a watcher that
    /// selects `status.nodeName`: it may be sent no other event).
    pub async fn watch(
        &self,
        kind: Arc<dyn KindApi>,
        project: Option<&str>,
        node: Option<&str>,
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
                    latest: HashMap::new(),
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
        let filter = Filter {
            project: project.map(str::to_string),
            node: node.map(str::to_string),
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(serve(backlog, live, filter, after, tx));
        Ok(rx)
    }
}

async fn feed(hub: Arc<KindHub>, mut source: mpsc::Receiver<WatchItem>) {
    while let Some(item) = source.recv().await {
        match item {
            WatchItem::Event(event) => {
                let mut ring = hub.ring.lock().expect("ring");
                if let Some(r) = ring.as_mut() {
                    r.push(event.clone());
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

/// Which events one subscriber is sent.
struct Filter {
    project: Option<String>,
    node: Option<String>,
}

impl Filter {
    fn wants(&self, e: &HubEvent) -> bool {
        self.project.as_deref().is_none_or(|p| p == e.project)
            && self.node.as_deref().is_none_or(|n| e.touches_node(n))
    }
}

async fn serve(
    backlog: Vec<Arc<HubEvent>>,
    mut live: broadcast::Receiver<Arc<HubEvent>>,
    filter: Filter,
    after: i64,
    tx: mpsc::Sender<WatchItem>,
) {
    let mut last = after;
    let wanted = |e: &HubEvent| filter.wants(e);
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
