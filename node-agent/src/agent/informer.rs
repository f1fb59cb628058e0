//! The informer: the agent's copy of the Instances bound to this node,
//! kept by the one list → watch → relist loop, waking each instance that
//! changes (and, after a relist, every one that came or went). Each copy
//! that changes what host networking reads is stamped, once stored, with
//! a host networking request (see netsync.rs): defining its domain waits
//! for a pass that saw it (or a copy the same to networking).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use corral_api_types::Instance;
use corral_client::WatcherEvent;
use corral_runtime::{error_chain, ObjectRef, Shutdown};

use super::{stopped, Agent};
use crate::api::ApiError;

impl Agent {
    pub(super) async fn informer(self: Arc<Self>, mut stop: Shutdown) {
        // The one list → watch → relist loop (corral-client's watcher).
        let mut watcher = self.api.watcher("/v1/instances");
        loop {
            let event = tokio::select! {
                e = watcher.next() => e,
                _ = stopped(&mut stop) => return,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    let e = ApiError::from(e);
                    tracing::warn!(error = %error_chain(&e), "listing or watching instances failed");
                    continue;
                }
            };
            match event {
                WatcherEvent::Restarted(items) => {
                    let mut map = self.instances.lock().expect("instances");
                    let old: Vec<ObjectRef> = map.keys().cloned().collect();
                    map.clear();
                    for v in items {
                        if let Ok(i) = serde_json::from_value::<Instance>(v) {
                            map.insert(ObjectRef::of(&i), Arc::new(i));
                        }
                    }
                    let ticket = self.net_ticket();
                    let mut arrived = self.arrived.lock().expect("arrived");
                    arrived.clear();
                    arrived.extend(map.keys().map(|k| (k.clone(), ticket)));
                    drop(arrived);
                    for k in old.into_iter().chain(map.keys().cloned()) {
                        self.queue.add(k);
                    }
                    drop(map);
                    self.synced.store(true, Ordering::SeqCst);
                }
                WatcherEvent::Added(object) | WatcherEvent::Modified(object) => {
                    if let Ok(i) = serde_json::from_value::<Instance>(object) {
                        let key = ObjectRef::of(&i);
                        let mut map = self.instances.lock().expect("instances");
                        // A change host networking does not read (the
                        // agent's own phase and conditions, mostly) asks
                        // for no pass: the last one saw all it needs.
                        let asks = map.get(&key).is_none_or(|old| net_inputs_differ(old, &i));
                        map.insert(key.clone(), Arc::new(i));
                        if asks {
                            let ticket = self.net_ticket();
                            self.arrived
                                .lock()
                                .expect("arrived")
                                .insert(key.clone(), ticket);
                        }
                        drop(map);
                        self.queue.add(key);
                    }
                }
                WatcherEvent::Deleted(object) => {
                    let key = ObjectRef::new(
                        object["metadata"]["project"].as_str().unwrap_or(""),
                        object["metadata"]["name"].as_str().unwrap_or(""),
                    );
                    let mut map = self.instances.lock().expect("instances");
                    map.remove(&key);
                    self.arrived.lock().expect("arrived").remove(&key);
                    drop(map);
                    self.queue.add(key);
                }
            }
        }
    }

    /// The informer's copy of instance `key` and the host networking
    /// request it made when it arrived: a pass that covers that request
    /// saw this copy (or a newer one).
    pub(super) fn cached(&self, key: &ObjectRef) -> Option<(Instance, u64)> {
        let map = self.instances.lock().expect("instances");
        let i = Instance::clone(map.get(key)?);
        let ticket = self.arrived.lock().expect("arrived").get(key).copied();
        drop(map);
        Some((i, ticket.unwrap_or_else(|| self.net_ticket())))
    }

    /// What the agent knows is bound to it (for tests and `corral describe`).
    pub fn bound(&self) -> Vec<ObjectRef> {
        self.instances
            .lock()
            .expect("instances")
            .keys()
            .cloned()
            .collect()
    }
}

type NetStatus<'a> = (
    &'a Vec<corral_api_types::InstanceAddress>,
    &'a Option<String>,
    &'a Option<chrono::DateTime<chrono::Utc>>,
    &'a Option<String>,
);

/// Whether two copies of an instance differ in what a host networking
/// pass reads of it (netsync.rs: its spec, addresses, ids, launch time,
/// node and deletion).
fn net_inputs_differ(a: &Instance, b: &Instance) -> bool {
    fn status(i: &Instance) -> Option<NetStatus<'_>> {
        i.status
            .as_ref()
            .map(|s| (&s.addresses, &s.ec2_id, &s.launch_time, &s.node_name))
    }
    a.spec != b.spec
        || a.metadata.deletion_timestamp != b.metadata.deletion_timestamp
        || a.metadata.uid != b.metadata.uid
        || status(a) != status(b)
}
