//! Garbage collection: an object whose owners (`metadata.ownerReferences`)
//! are all gone is deleted — through the same path as a user's delete, so
//! its own finalizers still hold it until their controllers are done.
//!
//! Owners are looked up in the shared caches; an owner of a kind this
//! process does not cache is assumed present (never delete on doubt). An
//! owner counts as gone when no object of that kind and name exists, or
//! the one that exists has another uid (it was deleted and re-created).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::{OwnerReference, Resource, Scope};
use corral_runtime::status::update_with_retry;
use corral_runtime::{Action, ObjectRef, ReconcileError, Reconciler};
use corral_store::{ResourceStore, StoreError};

use crate::Caches;

/// Whether an owner exists: `Some(true/false)`, or `None` when unknown.
pub fn owner_exists(caches: &Caches, project: &str, owner: &OwnerReference) -> Option<bool> {
    let key = ObjectRef::new(project, &owner.name);
    let cluster = ObjectRef::new("", &owner.name);
    let uid = match owner.kind.as_str() {
        "Instance" => caches.instances.get(&key).map(|o| o.metadata.uid.clone()),
        "Network" => caches.networks.get(&key).map(|o| o.metadata.uid.clone()),
        "Volume" => caches.volumes.get(&key).map(|o| o.metadata.uid.clone()),
        "Image" => caches.images.get(&key).map(|o| o.metadata.uid.clone()),
        "KeyPair" => caches.keypairs.get(&key).map(|o| o.metadata.uid.clone()),
        "SecurityGroup" => caches
            .security_groups
            .get(&key)
            .map(|o| o.metadata.uid.clone()),
        "Node" => caches.nodes.get(&cluster).map(|o| o.metadata.uid.clone()),
        "InstanceType" => caches
            .instance_types
            .get(&cluster)
            .map(|o| o.metadata.uid.clone()),
        _ => return None,
    };
    Some(uid.is_some_and(|u| owner.uid.is_empty() || u == owner.uid))
}

/// [`owner_exists`] asked of the store itself: caches fill at their own
/// pace, so a dependent's cache may hold it before the owner's cache holds
/// the owner. Deletion is decided only on this answer.
async fn owner_in_store(
    store: &ResourceStore,
    project: &str,
    owner: &OwnerReference,
) -> Result<Option<bool>, StoreError> {
    use corral_api_types::{
        Image, Instance, InstanceType, KeyPair, Network, Node, SecurityGroup, Volume,
    };
    async fn uid_of<K: Resource>(
        store: &ResourceStore,
        project: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(store
            .get::<K>(project, name)
            .await?
            .map(|o| o.meta().uid.clone()))
    }
    let n = owner.name.as_str();
    let uid = match owner.kind.as_str() {
        "Instance" => uid_of::<Instance>(store, project, n).await?,
        "Network" => uid_of::<Network>(store, project, n).await?,
        "Volume" => uid_of::<Volume>(store, project, n).await?,
        "Image" => uid_of::<Image>(store, project, n).await?,
        "KeyPair" => uid_of::<KeyPair>(store, project, n).await?,
        "SecurityGroup" => uid_of::<SecurityGroup>(store, project, n).await?,
        "Node" => uid_of::<Node>(store, "", n).await?,
        "InstanceType" => uid_of::<InstanceType>(store, "", n).await?,
        _ => return Ok(None),
    };
    Ok(Some(
        uid.is_some_and(|u| owner.uid.is_empty() || u == owner.uid),
    ))
}

pub struct GarbageCollector {
    store: ResourceStore,
    caches: Caches,
}

impl GarbageCollector {
    pub fn new(store: ResourceStore, caches: Caches) -> GarbageCollector {
        GarbageCollector { store, caches }
    }
}

#[async_trait]
impl<K: Resource> Reconciler<K> for GarbageCollector {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<K>>,
    ) -> Result<Action, ReconcileError> {
        let Some(obj) = object else {
            return Ok(Action::AwaitChange);
        };
        let meta = obj.meta();
        if meta.owner_references.is_empty() || meta.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let project = if K::SCOPE == Scope::Cluster {
            ""
        } else {
            meta.project.as_str()
        };
        let all_gone = meta
            .owner_references
            .iter()
            .all(|o| owner_exists(&self.caches, project, o) == Some(false));
        if !all_gone {
            return Ok(Action::AwaitChange);
        }
        for o in &meta.owner_references {
            if owner_in_store(&self.store, project, o).await? != Some(false) {
                // The caches lag; the owner's arrival will bring us back.
                return Ok(Action::AwaitChange);
            }
        }
        tracing::info!(kind = K::KIND, object = %key, "owners gone; deleting");
        if meta.finalizers.is_empty() {
            match self
                .store
                .delete::<K>(&key.project, &key.name, Some(&meta.resource_version))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            let now = Utc::now();
            update_with_retry::<K, _>(&self.store, &key.project, &key.name, |o| {
                if o.meta().deletion_timestamp.is_some() {
                    return false;
                }
                o.meta_mut().deletion_timestamp = Some(now);
                true
            })
            .await?;
        }
        Ok(Action::AwaitChange)
    }
}

/// Objects of a cache that name `owner` among their owners.
pub fn dependents_of<K: Resource>(
    cache: &corral_runtime::Cache<K>,
    owner_kind: &str,
    project: &str,
    name: &str,
) -> Vec<ObjectRef> {
    cache
        .list_project(project)
        .iter()
        .filter(|o| {
            o.meta()
                .owner_references
                .iter()
                .any(|r| r.kind == owner_kind && r.name == name)
        })
        .map(|o| ObjectRef::of(o.as_ref()))
        .collect()
}
