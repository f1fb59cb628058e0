//! [`Registry<K>`]: create, update, delete and apply for one kind, with
//! the admission rules and compare-and-swap retries in one place.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::{
    Defaults, Project, Resource, ResourceVersion, Scope, Validate, ValidateUpdate,
};
use corral_store::{ResourceStore, StoreError};

use crate::error::RegistryError;
use crate::quota;

/// Annotation the apply path puts on what it wrote, so `apply --prune`
/// only ever deletes objects that were applied.
pub const APPLIED_ANNOTATION: &str = "corral/applied";

/// Compare-and-swap attempts before a write the caller did not pin to a
/// `resourceVersion` gives up ([`RegistryError::Contended`]).
const ATTEMPTS: usize = 16;

/// How long a Project write waits for the writer's cache to show it.
const PROJECT_CACHE_WAIT: Duration = Duration::from_secs(5);

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

/// A writer's cached view of Projects (the API server's watch cache):
/// quota checks start from it, and a Project write is answered only once
/// it shows the write, so a quota set holds from the next request.
#[async_trait]
pub trait ProjectCache: Send + Sync {
    fn project(&self, name: &str) -> Option<Arc<Project>>;
    /// Returns once the cache has seen `revision`.
    async fn wait_for_revision(&self, revision: i64);
}

/// The write path of kind `K`.
pub struct Registry<K> {
    store: ResourceStore,
    projects: Option<Arc<dyn ProjectCache>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Registry<K> {
    fn clone(&self) -> Self {
        Registry {
            store: self.store.clone(),
            projects: self.projects.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> Registry<K>
where
    K: Resource + Validate + ValidateUpdate + Defaults,
{
    /// A registry without a Project cache: quota checks read the Project.
    pub fn new(store: ResourceStore) -> Self {
        Registry {
            store,
            projects: None,
            _kind: PhantomData,
        }
    }

    /// Starts quota checks from `projects` (see [`quota::charge_from`]).
    pub fn with_projects(mut self, projects: Arc<dyn ProjectCache>) -> Self {
        self.projects = Some(projects);
        self
    }

    pub fn store(&self) -> &ResourceStore {
        &self.store
    }

    /// `project` for a project-scoped kind, "" for a cluster-scoped one.
    pub fn project_of(project: &str) -> &str {
        match K::SCOPE {
            Scope::Cluster => "",
            Scope::Project => project,
        }
    }

    /// Applies the kind's defaults and checks its rules.
    pub fn admit(&self, obj: &mut K) -> Result<(), RegistryError> {
        obj.apply_defaults();
        let errors = obj.validate();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Invalid {
                kind: K::KIND,
                name: obj.meta().name.clone(),
                errors,
            })
        }
    }

    /// The object `name` in `project`.
    pub async fn get(&self, project: &str, name: &str) -> Result<K, RegistryError> {
        self.store
            .get::<K>(Self::project_of(project), name)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                plural: K::PLURAL,
                name: name.to_string(),
            })
    }

    /// Creates `obj`: admitted, then `check`ed (the caller's own rules,
    /// e.g. what its role may name on the host), charged, written. The
    /// server owns `resourceVersion`, `generation`, the timestamps and
    /// `status`; a `uid` set by the caller is kept (EC2 derives it from a
    /// ClientToken), an empty one is assigned by the store.
    pub async fn create<E>(
        &self,
        mut obj: K,
        dry_run: bool,
        check: impl FnOnce(&K) -> Result<(), E>,
    ) -> Result<K, E>
    where
        E: From<RegistryError>,
    {
        self.admit(&mut obj)?;
        check(&obj)?;
        let meta = obj.meta_mut();
        meta.resource_version.clear();
        meta.generation = 1;
        meta.creation_timestamp = None;
        meta.deletion_timestamp = None;
        *obj.status_mut() = None;
        let charge = self.charge(&obj, None, dry_run).await?;
        if dry_run {
            return Ok(obj);
        }
        let written = self.store.create(&obj).await;
        Ok(self.settle(charge, written).await?)
    }

    /// Changes `name`: `change` maps the current object to the wanted one
    /// (it may refuse with its own error). With `expected` (a
    /// `resourceVersion` the caller read) the write is pinned to it and a
    /// newer object is [`RegistryError::Stale`]; without, a concurrent
    /// writer's change (a controller's status) is read again and `change`
    /// runs again, up to [`ATTEMPTS`].
    ///
    /// The wanted object is admitted; `uid` and `creationTimestamp` stay
    /// the server's, `generation` moves with the spec, the transition must
    /// pass `validate_update`, growth is charged, and a deleting object
    /// whose last finalizer `change` removed is deleted.
    pub async fn update<E, F>(
        &self,
        project: &str,
        name: &str,
        expected: Option<&str>,
        dry_run: bool,
        mut change: F,
    ) -> Result<K, E>
    where
        E: From<RegistryError>,
        F: FnMut(&K) -> Result<K, E>,
    {
        let expected = pinned(expected)?;
        for _ in 0..ATTEMPTS {
            let current = self.get(project, name).await?;
            let current_rv = current.meta().resource_version.clone();
            if let Some(sent) = expected {
                check_current::<K>(name, sent, &current_rv)?;
            }
            let new = change(&current)?;
            match self.replace(&current, new, dry_run).await {
                Err(RegistryError::Store(StoreError::Conflict { .. })) if expected.is_none() => {
                    continue
                }
                Err(e) => return Err(e.into()),
                Ok(k) => return Ok(k),
            }
        }
        Err(RegistryError::Contended {
            kind: K::KIND,
            name: name.to_string(),
        }
        .into())
    }

    /// Writes `new` over `current` (see [`Registry::update`]), by
    /// compare-and-swap on `current`'s revision.
    async fn replace(&self, current: &K, mut new: K, dry_run: bool) -> Result<K, RegistryError> {
        self.admit(&mut new)?;
        let cur = current.meta();
        let spec_changed = new.spec() != current.spec();
        {
            let meta = new.meta_mut();
            meta.uid = cur.uid.clone();
            meta.creation_timestamp = cur.creation_timestamp;
            meta.generation = cur.generation + i64::from(spec_changed);
            meta.resource_version = cur.resource_version.clone();
        }
        // Immutable fields, sizes that only grow, no new finalizers once
        // deleting: the rules of the transition live in api-types.
        let errors = new.validate_update(current);
        if !errors.is_empty() {
            return Err(RegistryError::Invalid {
                kind: K::KIND,
                name: new.meta().name.clone(),
                errors,
            });
        }
        let deleting = new.meta().deletion_timestamp.is_some() && new.meta().finalizers.is_empty();
        // Growth (a bigger type, a resized volume) is charged first.
        let charge = if deleting {
            None
        } else {
            self.charge(&new, Some(current), dry_run).await?
        };
        if dry_run {
            return Ok(new);
        }
        if deleting {
            let meta = new.meta();
            return Ok(self
                .store
                .delete::<K>(&meta.project, &meta.name, Some(&cur.resource_version))
                .await?);
        }
        let written = self.store.update(&new).await;
        self.settle(charge, written).await
    }

    /// Deletes `name`, or marks it deleting when it holds finalizers
    /// (whoever holds one finishes). With `expected`, only that revision;
    /// without, a concurrent writer's change is retried.
    pub async fn delete(
        &self,
        project: &str,
        name: &str,
        expected: Option<&str>,
        dry_run: bool,
    ) -> Result<K, RegistryError> {
        let expected = pinned(expected)?;
        for _ in 0..ATTEMPTS {
            let current = self.get(project, name).await?;
            let current_rv = current.meta().resource_version.clone();
            if let Some(sent) = expected {
                check_current::<K>(name, sent, &current_rv)?;
            }
            if dry_run {
                return Ok(current);
            }
            let outcome = if !current.meta().finalizers.is_empty() {
                if current.meta().deletion_timestamp.is_some() {
                    return Ok(current);
                }
                let mut marked = current.clone();
                marked.meta_mut().deletion_timestamp = Some(Utc::now());
                self.store.update(&marked).await
            } else {
                self.store
                    .delete::<K>(Self::project_of(project), name, Some(&current_rv))
                    .await
            };
            match outcome {
                Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
                other => return Ok(other?),
            }
        }
        Err(RegistryError::Contended {
            kind: K::KIND,
            name: name.to_string(),
        })
    }

    /// Server-side apply: creates `desired` (already placed in its
    /// project) or makes the existing object match it. The manifest owns
    /// spec, labels and annotations; everything else (finalizers, owners,
    /// status) stays as the server has it. `check` sees the admitted
    /// object and the current one, if any.
    pub async fn apply<E, C>(
        &self,
        mut desired: K,
        dry_run: bool,
        mut check: C,
    ) -> Result<(ApplyResult, K), E>
    where
        E: From<RegistryError>,
        C: FnMut(&K, Option<&K>) -> Result<(), E>,
    {
        self.admit(&mut desired)?;
        let project = desired.meta().project.clone();
        let name = desired.meta().name.clone();
        for _ in 0..ATTEMPTS {
            let current = self
                .store
                .get::<K>(Self::project_of(&project), &name)
                .await
                .map_err(RegistryError::from)?;
            let Some(current) = current else {
                // Lost a race with another creator: reported (409), not
                // clobbered.
                let mut new = desired.clone();
                new.meta_mut().uid.clear();
                let created = self.create(new, dry_run, |k| check(k, None)).await?;
                return Ok((ApplyResult::Created, created));
            };
            let unchanged = desired.spec() == current.spec()
                && desired.meta().labels == current.meta().labels
                && desired.meta().annotations == current.meta().annotations;
            if unchanged {
                return Ok((ApplyResult::Unchanged, current));
            }
            let mut new: K = K::new(&current.meta().project, &name, desired.spec().clone());
            *new.meta_mut() = current.meta().clone();
            new.meta_mut().labels = desired.meta().labels.clone();
            new.meta_mut().annotations = desired.meta().annotations.clone();
            *new.status_mut() = current.status().cloned();
            self.admit(&mut new)?;
            check(&new, Some(&current))?;
            match self.replace(&current, new, dry_run).await {
                // The manifest names no resourceVersion: the compare-and-
                // swap is ours, and a controller writing status meanwhile
                // is retried, not reported as a conflict.
                Err(RegistryError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
                Ok(k) => return Ok((ApplyResult::Configured, k)),
            }
        }
        Err(RegistryError::Contended {
            kind: K::KIND,
            name,
        }
        .into())
    }

    /// Charges the quotas of `new`'s project, from the cached Project when
    /// there is one: no store read for a kind its project does not limit.
    async fn charge(
        &self,
        new: &K,
        old: Option<&K>,
        dry_run: bool,
    ) -> Result<Option<quota::Charge>, RegistryError> {
        if !quota::is_counted::<K>() {
            return Ok(None);
        }
        let known = self
            .projects
            .as_ref()
            .and_then(|p| p.project(&new.meta().project));
        Ok(quota::charge_from(&self.store, known.as_deref(), new, old, dry_run).await?)
    }

    /// The outcome of a write that `charge` paid for: a failed write gives
    /// the charge back. A Project written through a cached writer is
    /// answered once the cache shows it (read-your-writes for quotas).
    async fn settle(
        &self,
        charge: Option<quota::Charge>,
        written: Result<K, StoreError>,
    ) -> Result<K, RegistryError> {
        if let Some(c) = &charge {
            match &written {
                Ok(_) => quota::confirm(&self.store, c).await,
                Err(_) => quota::refund(&self.store, c).await,
            }
        }
        let written = written?;
        if K::KIND == Project::KIND {
            if let (Some(cache), Ok(Some(rv))) = (
                &self.projects,
                ResourceVersion::parse(&written.meta().resource_version),
            ) {
                // Bounded, so a stalled cache cannot hang the write.
                let caught_up = cache.wait_for_revision(rv.get());
                if tokio::time::timeout(PROJECT_CACHE_WAIT, caught_up)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        revision = rv.get(),
                        "project cache did not reach a project write in 5 s"
                    );
                }
            }
        }
        Ok(written)
    }
}

/// The `resourceVersion` a write is pinned to: none (absent or empty), or
/// a valid one; anything else is refused before any read.
fn pinned(expected: Option<&str>) -> Result<Option<&str>, RegistryError> {
    match expected {
        None => Ok(None),
        Some(rv) => Ok(ResourceVersion::parse(rv)?.map(|_| rv)),
    }
}

/// Refuses a write pinned to `sent` when the object is now at `current`.
fn check_current<K: Resource>(name: &str, sent: &str, current: &str) -> Result<(), RegistryError> {
    if sent != current {
        return Err(RegistryError::Stale {
            kind: K::KIND,
            name: name.to_string(),
            sent: sent.to_string(),
            current: current.to_string(),
        });
    }
    Ok(())
}
