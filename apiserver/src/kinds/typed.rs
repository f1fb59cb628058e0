//! [`TypedKindApi`]: the [`KindApi`] of one kind `K`. It decodes a body
//! into `K`, places it at the URL's project and name, checks what the
//! caller's role may name on the host, and hands writes to the registry;
//! it answers reads, status writes, lists and watches itself.
//!
//! It must not hold state of its own beyond the Project cache it is
//! given, nor check that referenced objects exist.

use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::auth::Role;
use corral_api_types::{
    Defaults, HostRefs, KindInfo, Project, Resource, ResourceVersion, Scope, Validate,
    ValidateUpdate,
};
use corral_registry::{ApplyResult, ProjectCache, Registry, APPLIED_ANNOTATION};
use corral_runtime::{Cache, ObjectRef};
use corral_store::import::ImportPolicy;
use corral_store::ResourceStore;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{pages, watch, Body, KindApi, ListOutput, WatchEvent, WatchItem};
use crate::error::ApiError;
use crate::list::ListParams;

/// [`KindApi`] for kind `K`.
pub struct TypedKindApi<K> {
    info: &'static KindInfo,
    store: ResourceStore,
    /// The write path, starting quota checks from the Project cache.
    registry: Registry<K>,
    /// What tenants may name on the server's host.
    imports: Arc<ImportPolicy>,
}

/// The server's Project watch cache, as the registry's quota checks and
/// read-your-writes for quotas see it.
struct Projects(Cache<Project>);

#[async_trait]
impl ProjectCache for Projects {
    fn project(&self, name: &str) -> Option<Arc<Project>> {
        self.0.get(&ObjectRef::new("", name))
    }

    async fn wait_for_revision(&self, revision: i64) {
        self.0.wait_for_revision(revision).await
    }
}

fn to_value<K: Resource>(obj: &K) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("encoding {}: {e}", K::KIND)))
}

impl<K> TypedKindApi<K>
where
    K: Resource + Validate + ValidateUpdate + Defaults + HostRefs,
{
    pub fn new(store: ResourceStore, projects: Cache<Project>, imports: Arc<ImportPolicy>) -> Self {
        let info = corral_api_types::kind_info(K::KIND).expect("every served kind is registered");
        TypedKindApi {
            info,
            registry: Registry::new(store.clone()).with_projects(Arc::new(Projects(projects))),
            store,
            imports,
        }
    }

    fn project_of(project: &str) -> &str {
        Registry::<K>::project_of(project)
    }

    /// Decodes a user-written object and places it at `project` (and
    /// `name`), checking the body agrees with the URL.
    fn place(&self, project: &str, name: Option<&str>, body: Body) -> Result<K, ApiError> {
        let mut obj: K = body.decode()?;
        let meta = obj.meta_mut();
        let project = Self::project_of(project);
        if K::SCOPE == Scope::Cluster && !meta.project.is_empty() {
            return Err(ApiError::invalid_field(
                K::KIND,
                &meta.name,
                "metadata.project",
                &format!("must be empty: {} is cluster-scoped", K::KIND),
            ));
        }
        if !meta.project.is_empty() && meta.project != project {
            return Err(ApiError::invalid_field(
                K::KIND,
                &meta.name,
                "metadata.project",
                &format!(
                    "{:?} does not match the project in the URL ({project:?})",
                    meta.project
                ),
            ));
        }
        meta.project = project.to_string();
        if let Some(name) = name {
            if meta.name.is_empty() {
                meta.name = name.to_string();
            } else if meta.name != name {
                return Err(ApiError::invalid_field(
                    K::KIND,
                    &meta.name,
                    "metadata.name",
                    &format!(
                        "{:?} does not match the name in the URL ({name:?})",
                        meta.name
                    ),
                ));
            }
        }
        Ok(obj)
    }

    async fn current(&self, project: &str, name: &str) -> Result<K, ApiError> {
        Ok(self.registry.get(project, name).await?)
    }
}

/// The project a list or watch of `K` covers: none for cluster kinds.
fn scoped<K: Resource>(project: Option<&str>) -> Option<&str> {
    match K::SCOPE {
        Scope::Cluster => None,
        Scope::Project => project,
    }
}

fn check_resource_version(
    kind: &'static str,
    name: &str,
    body_rv: &str,
    current_rv: &str,
) -> Result<(), ApiError> {
    if !body_rv.is_empty() && body_rv != current_rv {
        return Err(corral_registry::RegistryError::Stale {
            kind,
            name: name.to_string(),
            sent: body_rv.to_string(),
            current: current_rv.to_string(),
        }
        .into());
    }
    Ok(())
}

#[async_trait]
impl<K> KindApi for TypedKindApi<K>
where
    K: Resource + Validate + ValidateUpdate + Defaults + HostRefs,
{
    fn info(&self) -> &'static KindInfo {
        self.info
    }

    async fn create(
        &self,
        project: &str,
        body: Body,
        dry_run: bool,
        role: Role,
    ) -> Result<Vec<u8>, ApiError> {
        let mut obj = self.place(project, None, body)?;
        // Clients never choose the uid.
        obj.meta_mut().uid.clear();
        let created = self
            .registry
            .create(obj, dry_run, |k| {
                crate::host_refs::check(&self.imports, role, k, None)
            })
            .await?;
        serde_json::to_vec(&created)
            .map_err(|e| ApiError::internal(format!("encoding {}: {e}", K::KIND)))
    }

    async fn get(&self, project: &str, name: &str) -> Result<Value, ApiError> {
        to_value(&self.current(project, name).await?)
    }

    async fn replace(
        &self,
        project: &str,
        name: &str,
        body: Body,
        dry_run: bool,
        role: Role,
    ) -> Result<Value, ApiError> {
        let mut new = self.place(project, Some(name), body)?;
        // Invalid bodies are answered before anything is read.
        self.registry.admit(&mut new)?;
        // Without a resourceVersion from the caller the compare-and-swap
        // is ours (as for deletes): a controller writing status meanwhile
        // is retried, not reported as a conflict the caller never risked.
        let expected = new.meta().resource_version.clone();
        let written = self
            .registry
            .update(project, name, Some(&expected), dry_run, |current: &K| {
                let mut next = new.clone();
                // Status and the deletion mark are the server's.
                next.meta_mut().deletion_timestamp = current.meta().deletion_timestamp;
                *next.status_mut() = current.status().cloned();
                crate::host_refs::check(&self.imports, role, &next, Some(current))?;
                Ok::<K, ApiError>(next)
            })
            .await?;
        to_value(&written)
    }

    async fn replace_status(
        &self,
        project: &str,
        name: &str,
        body: Body,
        check: Option<&(dyn for<'v> Fn(&'v Value) -> Result<(), ApiError> + Send + Sync)>,
        recent: &(dyn Fn(i64) -> Option<Arc<WatchEvent>> + Send + Sync),
    ) -> Result<Value, ApiError> {
        let incoming: K = body.decode()?;
        let sent = ResourceVersion::parse(&incoming.meta().resource_version)
            .map_err(corral_registry::RegistryError::from)?;
        let known = sent.map(ResourceVersion::get).and_then(recent).filter(|e| {
            e.object.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && e.project == Self::project_of(project)
        });
        let current = match &known {
            Some(e) => {
                if let Some(check) = check {
                    check(&e.object)?;
                }
                K::deserialize(&e.object)
                    .map_err(|e| ApiError::internal(format!("decoding {}: {e}", K::KIND)))?
            }
            None => {
                let current = self.current(project, name).await?;
                if let Some(check) = check {
                    check(&to_value(&current)?)?;
                }
                current
            }
        };
        check_resource_version(
            K::KIND,
            name,
            &incoming.meta().resource_version,
            &current.meta().resource_version,
        )?;
        let mut new = current.clone();
        *new.status_mut() = incoming.status().cloned();
        Ok(to_value(&self.store.update(&new).await?)?)
    }

    async fn delete(
        &self,
        project: &str,
        name: &str,
        resource_version: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let deleted = self
            .registry
            .delete(project, name, resource_version, dry_run)
            .await?;
        to_value(&deleted)
    }

    async fn list(
        &self,
        project: Option<&str>,
        params: &ListParams,
    ) -> Result<ListOutput, ApiError> {
        pages::list::<K>(&self.store, scoped::<K>(project), params).await
    }

    async fn watch(
        &self,
        project: Option<&str>,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
        let watch = self.store.watch::<K>(scoped::<K>(project), after).await?;
        Ok(watch::forward(watch))
    }

    async fn apply(
        &self,
        project: &str,
        body: Value,
        dry_run: bool,
        role: Role,
    ) -> Result<(ApplyResult, Value), ApiError> {
        let mut desired = self.place(project, None, Body::Value(body))?;
        desired
            .meta_mut()
            .annotations
            .insert(APPLIED_ANNOTATION.into(), "true".into());
        let (result, written) = self
            .registry
            .apply(desired, dry_run, |new: &K, old: Option<&K>| {
                crate::host_refs::check(&self.imports, role, new, old)
            })
            .await?;
        Ok((result, to_value(&written)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the chaos suite: a PUT without a resourceVersion, and an
    /// apply, answered 409 when a controller wrote the object's status
    /// between the server's read and its compare-and-swap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_without_resource_version_retry_their_own_conflicts() {
        use corral_api_types::{Network, NetworkSpec, NetworkStatus};
        let dir = tempfile::tempdir().unwrap();
        let raw = corral_store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let store = ResourceStore::new(std::sync::Arc::new(raw));
        let spec = NetworkSpec {
            cidr: "10.9.0.0/24".into(),
            ..Default::default()
        };
        store.create(&Network::new("p", "n", spec)).await.unwrap();
        let projects = corral_runtime::Reflector::new(store.clone()).spawn();
        let api = TypedKindApi::<Network>::new(store.clone(), projects, Default::default());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut net: Network = store.get("p", "n").await.unwrap().unwrap();
                    n += 1;
                    net.status = Some(NetworkStatus {
                        observed_generation: n,
                        ..Default::default()
                    });
                    let _ = store.update(&net).await;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
        };
        for i in 0..200 {
            let body = serde_json::json!({"metadata": {"name": "n"},
                "spec": {"cidr": "10.9.0.0/24", "tags": {"i": i.to_string()}}});
            api.replace("p", "n", body.into(), false, Role::Admin)
                .await
                .unwrap_or_else(|e| panic!("replace {i}: {e}"));
            let manifest = serde_json::json!({"apiVersion": "corral/v1", "kind": "Network",
                "metadata": {"name": "n", "project": "p"},
                "spec": {"cidr": "10.9.0.0/24", "tags": {"applied": i.to_string()}}});
            api.apply("p", manifest, false, Role::Admin)
                .await
                .unwrap_or_else(|e| panic!("apply {i}: {e}"));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.await.unwrap();
    }
}
