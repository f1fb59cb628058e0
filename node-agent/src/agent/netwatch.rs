//! Watches of the overlay Networks bound instances use, one per Network
//! (a node may list or watch such an object only narrowed to its name and
//! for a bound instance that uses it, as kubelet watches the secrets its
//! pods name). An overlay's `status.ports` and `status.vteps` change
//! whenever a guest lands on or leaves any node; a watch brings the new
//! copy within moments, where `object_refresh` alone would take seconds.
//!
//! A changed copy is handed to the next networking pass (which uses it
//! instead of its cached one), asks for a pass and wakes the networking
//! loop at once. The set of watches is
//! brought in line by each pass: started for overlays now used, stopped
//! for those no longer used, restarted when the instance a watch was
//! authorized for no longer names its Network.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use corral_api_types::Network;
use corral_client::WatcherEvent;
use corral_runtime::error_chain;
use tokio::sync::Notify;

use crate::api::{ApiClient, ApiError};

/// (project, Network name).
pub(super) type NetKey = (String, String);

/// Changed copies waiting for the next pass.
pub(super) type Pushed = Arc<Mutex<HashMap<NetKey, Arc<Network>>>>;

struct Watch {
    /// The bound instance the watch was authorized for.
    instance: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running watches, and where they leave what they see.
#[derive(Default)]
pub(super) struct NetWatches {
    watches: HashMap<NetKey, Watch>,
    pub(super) pushed: Pushed,
}

impl NetWatches {
    /// Makes the watches match `used`: each overlay Network a pass saw,
    /// with the instances here that name it. `asked`: the agent's pass
    /// requests, bumped when a copy arrives.
    pub(super) fn follow(
        &mut self,
        api: &ApiClient,
        asked: &Arc<AtomicU64>,
        wake: &Arc<Notify>,
        used: &BTreeMap<NetKey, Vec<String>>,
    ) {
        self.watches
            .retain(|k, w| used.get(k).is_some_and(|names| names.contains(&w.instance)));
        self.pushed
            .lock()
            .expect("pushed")
            .retain(|k, _| used.contains_key(k));
        for (key, names) in used {
            if self.watches.contains_key(key) {
                continue;
            }
            let Some(instance) = names.first() else {
                continue;
            };
            let task = tokio::spawn(watch(
                api.clone(),
                key.clone(),
                instance.clone(),
                self.pushed.clone(),
                asked.clone(),
                wake.clone(),
            ));
            self.watches.insert(
                key.clone(),
                Watch {
                    instance: instance.clone(),
                    task,
                },
            );
        }
    }
}

/// Follows one Network until aborted: each copy goes to `pushed` and
/// asks for a pass.
async fn watch(
    api: ApiClient,
    (project, name): NetKey,
    instance: String,
    pushed: Pushed,
    asked: Arc<AtomicU64>,
    wake: Arc<Notify>,
) {
    let path = format!(
        "/v1/projects/{project}/networks?fieldSelector=metadata.name={name}&for=instances/{instance}"
    );
    let mut watcher = api.watcher(&path);
    loop {
        let copy = match watcher.next().await {
            Ok(WatcherEvent::Restarted(items)) => items.into_iter().next(),
            Ok(WatcherEvent::Added(v) | WatcherEvent::Modified(v)) => Some(v),
            Ok(WatcherEvent::Deleted(_)) => None,
            Err(e) => {
                let e = ApiError::from(e);
                tracing::debug!(network = %format!("{project}/{name}"), error = %error_chain(&e), "watching an overlay network");
                continue;
            }
        };
        let Some(mut n) = copy.and_then(|v| serde_json::from_value::<Network>(v).ok()) else {
            continue;
        };
        super::objects::trim_network(&mut n);
        pushed
            .lock()
            .expect("pushed")
            .insert((project.clone(), name.clone()), Arc::new(n));
        asked.fetch_add(1, Ordering::SeqCst);
        wake.notify_one();
    }
}
