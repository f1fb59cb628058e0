//! The quota controller: keeps each Project's `status.usage` equal to what
//! its Instances, Volumes, Addresses and the kinds with count quotas
//! (security groups, key pairs, networks, images, snapshots) hold, plus
//! the admission charges still in flight (see `corral_registry::quota`, which does the work).
//!
//! Admission adds to usage; only this controller takes away, so a deleted
//! object releases its share and a charge whose write never happened
//! (a failed create, a crashed server) is dropped once it expires.
//!
//! A project without quotas is not counted at all. A project with quotas
//! is recomputed at most every [`MIN_PERIOD`]: a burst of creates in a big
//! project must not become a full listing per create (in-flight creates
//! are held by their pending charges meanwhile, so only releases wait).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_api_types::{Address, Instance, Project, Resource, Volume};
use corral_runtime::{Action, Change, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

/// Least time between two recomputations of one project.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Full recomputation period even when nothing seems to change.
pub const RESYNC: Duration = Duration::from_secs(60);

pub struct QuotaController {
    store: ResourceStore,
    last: Mutex<HashMap<String, Instant>>,
}

impl QuotaController {
    pub fn new(store: ResourceStore) -> QuotaController {
        QuotaController {
            store,
            last: Mutex::default(),
        }
    }
}

/// The Project a change of a counted object concerns: only creations,
/// deletions and spec changes (sizes) move usage.
pub fn project_of<K: Resource>(change: &Change<K>) -> Vec<ObjectRef> {
    let m = change.object().meta();
    if matches!(change, Change::Applied(_)) && m.deletion_timestamp.is_some() {
        return Vec::new();
    }
    vec![ObjectRef::new("", m.project.clone())]
}

/// Mapper for [`Instance`] changes: also a terminated instance whose
/// record stays, as it no longer counts.
pub fn project_of_instance(change: &Change<Instance>) -> Vec<ObjectRef> {
    let i = change.object();
    if matches!(change, Change::Applied(_)) && i.is_terminated() {
        return vec![ObjectRef::new("", i.metadata.project.clone())];
    }
    project_of(change)
}

/// Mapper for [`Volume`] changes.
pub fn project_of_volume(change: &Change<Volume>) -> Vec<ObjectRef> {
    project_of(change)
}

/// Mapper for [`Address`] changes.
pub fn project_of_address(change: &Change<Address>) -> Vec<ObjectRef> {
    project_of(change)
}

#[async_trait]
impl Reconciler<Project> for QuotaController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Project>>,
    ) -> Result<Action, ReconcileError> {
        let Some(p) = object else {
            self.last.lock().expect("last").remove(&key.name);
            return Ok(Action::AwaitChange);
        };
        let untracked = p.spec.quotas.is_empty()
            && p.status
                .as_ref()
                .is_none_or(|s| s.usage.is_empty() && s.pending_charges.is_empty());
        if untracked {
            return Ok(Action::AwaitChange);
        }
        let since = self
            .last
            .lock()
            .expect("last")
            .get(&key.name)
            .map(Instant::elapsed);
        if let Some(since) = since.filter(|s| *s < MIN_PERIOD) {
            return Ok(Action::Requeue(MIN_PERIOD - since));
        }
        self.last
            .lock()
            .expect("last")
            .insert(key.name.clone(), Instant::now());
        let next = corral_registry::quota::settle(&self.store, &key.name).await?;
        Ok(Action::Requeue(
            next.map(|d| d + Duration::from_millis(100))
                .unwrap_or(RESYNC)
                .min(RESYNC),
        ))
    }
}
