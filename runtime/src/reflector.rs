//! Reflectors: one shared, always-current, in-memory copy of a kind, fed by
//! list + watch, that controllers read instead of the store.
//!
//! ```text
//!   list (paged, one revision R) ──> replace cache ──> watch from R ──> apply events
//!        ^                                                   |
//!        └──────────── Expired (R compacted) ────────────────┘
//! ```
//!
//! Guarantees: after [`Cache::wait_ready`] the cache holds every object as
//! of some revision and follows every later change in order; subscribers
//! see a [`Change`] for each object the cache changes (a relist reports
//! what appeared, changed and vanished, so nothing is missed across a gap);
//! [`Cache::wait_for_revision`] lets a writer wait until its own write is
//! visible (read-your-writes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use corral_api_types::Resource;
use corral_store::{ListOptions, ObjectEvent, ResourceStore, StoreError};
use tokio::sync::{mpsc, watch};

/// Identifies an object of a known kind: its project (empty for cluster
/// kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub project: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(project: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef {
            project: project.into(),
            name: name.into(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> ObjectRef {
        ObjectRef::new(&obj.meta().project, &obj.meta().name)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.project.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.project, self.name)
        }
    }
}

/// What a subscriber is told.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// New to the cache (created, or first seen).
    Added(Arc<K>),
    /// Updated (the new state).
    Applied(Arc<K>),
    /// Gone (its last known state).
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Added(o) | Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

struct Inner<K> {
    objects: RwLock<BTreeMap<ObjectRef, Arc<K>>>,
    /// Revision the cache reflects; 0 until the first list completes.
    revision: watch::Sender<i64>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
}

/// A read handle on a reflector's cache. Cheap to clone.
pub struct Cache<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Resource> Cache<K> {
    fn new() -> Cache<K> {
        let (revision, _) = watch::channel(0);
        Cache {
            inner: Arc::new(Inner {
                objects: RwLock::new(BTreeMap::new()),
                revision,
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.inner
            .objects
            .read()
            .expect("cache lock")
            .get(key)
            .cloned()
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.inner
            .objects
            .read()
            .expect("cache lock")
            .values()
            .cloned()
            .collect()
    }

    /// Objects of one project.
    pub fn list_project(&self, project: &str) -> Vec<Arc<K>> {
        let start = ObjectRef::new(project, "");
        self.inner
            .objects
            .read()
            .expect("cache lock")
            .range(start..)
            .take_while(|(k, _)| k.project == project)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn keys(&self) -> Vec<ObjectRef> {
        self.inner
            .objects
            .read()
            .expect("cache lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.objects.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> i64 {
        *self.inner.revision.borrow()
    }

    /// Waits until the first list is in.
    pub async fn wait_ready(&self) {
        self.wait_for_revision(1).await;
    }

    /// Waits until the cache has seen revision `revision` (e.g. the
    /// `resourceVersion` a write of this kind returned).
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut rx = self.inner.revision.subscribe();
        // Only fails if the sender is gone, which `self` prevents.
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// A stream of changes from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.subscribers.lock().expect("subscribers").push(tx);
        rx
    }

    fn publish(&self, change: Change<K>) {
        let mut subs = self.inner.subscribers.lock().expect("subscribers");
        subs.retain(|s| s.send(change.clone()).is_ok());
    }

    fn apply(&self, obj: K, revision: i64) {
        let key = ObjectRef::of(&obj);
        let obj = Arc::new(obj);
        let old = self
            .inner
            .objects
            .write()
            .expect("cache lock")
            .insert(key, obj.clone());
        self.publish(if old.is_some() {
            Change::Applied(obj)
        } else {
            Change::Added(obj)
        });
        self.inner.revision.send_replace(revision);
    }

    fn remove(&self, obj: K, revision: i64) {
        let key = ObjectRef::of(&obj);
        let removed = self.inner.objects.write().expect("cache lock").remove(&key);
        self.publish(Change::Deleted(removed.unwrap_or_else(|| Arc::new(obj))));
        self.inner.revision.send_replace(revision);
    }

    /// Replaces everything with a fresh listing, reporting the differences.
    fn replace(&self, fresh: Vec<K>, revision: i64) {
        let mut fresh_map: BTreeMap<ObjectRef, Arc<K>> = fresh
            .into_iter()
            .map(|o| (ObjectRef::of(&o), Arc::new(o)))
            .collect();
        let mut changes = Vec::new();
        {
            let mut objects = self.inner.objects.write().expect("cache lock");
            for (key, old) in objects.iter() {
                match fresh_map.get(key) {
                    None => changes.push(Change::Deleted(old.clone())),
                    Some(new) if new.meta().resource_version != old.meta().resource_version => {
                        changes.push(Change::Applied(new.clone()))
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in &fresh_map {
                if !objects.contains_key(key) {
                    changes.push(Change::Added(new.clone()));
                }
            }
            std::mem::swap(&mut *objects, &mut fresh_map);
        }
        for c in changes {
            self.publish(c);
        }
        self.inner.revision.send_replace(revision.max(1));
    }
}

/// Feeds a [`Cache`] from the store.
pub struct Reflector<K> {
    store: ResourceStore,
    cache: Cache<K>,
    page_size: usize,
}

impl<K: Resource> Reflector<K> {
    pub fn new(store: ResourceStore) -> Reflector<K> {
        Reflector {
            store,
            cache: Cache::new(),
            page_size: 500,
        }
    }

    pub fn cache(&self) -> Cache<K> {
        self.cache.clone()
    }

    /// Starts the list/watch loop in the background; returns the cache.
    pub fn spawn(self) -> Cache<K> {
        let cache = self.cache.clone();
        tokio::spawn(self.run());
        cache
    }

    async fn list_all(&self) -> Result<(Vec<K>, i64), StoreError> {
        let mut items = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .list::<K>(
                    None,
                    ListOptions {
                        limit: Some(self.page_size),
                        continue_token: token,
                        revision: None,
                    },
                )
                .await?;
            items.extend(page.items);
            match page.continue_token {
                Some(t) => token = Some(t),
                None => return Ok((items, page.resource_version)),
            }
        }
    }

    /// Runs until the process ends (or every cache handle is dropped).
    pub async fn run(self) {
        let mut delay = Duration::from_millis(100);
        'relist: loop {
            if Arc::strong_count(&self.cache.inner) == 1 {
                return;
            }
            let (items, mut revision) = match self.list_all().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(kind = K::KIND, error = %e, "reflector list failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            self.cache.replace(items, revision);
            loop {
                let mut watch = match self.store.watch::<K>(None, revision).await {
                    Ok(w) => w,
                    Err(StoreError::Expired { .. }) => continue 'relist,
                    Err(e) => {
                        tracing::warn!(kind = K::KIND, error = %e, "reflector watch failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                loop {
                    match watch.next().await {
                        Some(Ok(event)) => {
                            let rv = corral_api_types::ResourceVersion::parse(
                                &event.object().meta().resource_version,
                            )
                            .ok()
                            .flatten()
                            .map_or(revision, corral_api_types::ResourceVersion::get);
                            revision = rv;
                            match event {
                                ObjectEvent::Added(o) | ObjectEvent::Modified(o, _) => {
                                    self.cache.apply(o, rv)
                                }
                                ObjectEvent::Deleted(o) => self.cache.remove(o, rv),
                            }
                        }
                        Some(Err(StoreError::Expired { .. })) => {
                            tracing::info!(kind = K::KIND, "reflector watch expired; relisting");
                            continue 'relist;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(kind = K::KIND, error = %e, "reflector watch error; rewatching");
                            break;
                        }
                        None => break,
                    }
                }
                if Arc::strong_count(&self.cache.inner) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
