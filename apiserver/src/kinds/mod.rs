//! The resource API for one kind, generic over the kind's type, behind an
//! object-safe trait so the router can dispatch on the URL's plural.
//!
//! The write path itself (admission, generation, finalizers, quotas,
//! compare-and-swap retries) is `corral_registry`'s, shared with the EC2
//! façade; this module adds what is HTTP's: decoding bodies, placing them
//! at the URL's project and name, what the caller's role may name on the
//! host, lists, watches and status writes.
//!
//! The parts: [`body`] (request bodies into typed objects), [`typed`]
//! (the kind API of one kind), [`pages`] (lists as stored bytes) and
//! [`watch`] (watch events as JSON, shared by their watchers). This
//! module holds the object-safe [`KindApi`] and the list of served kinds.

mod body;
mod pages;
mod typed;
mod watch;

use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::auth::Role;
use corral_api_types::{
    Address, Defaults, Event, HostRefs, Image, Instance, InstanceType, KeyPair, KindInfo, Network,
    Node, Project, Resource, SecurityGroup, Snapshot, Validate, ValidateUpdate, Volume,
};
pub use corral_registry::{ApplyResult, APPLIED_ANNOTATION};
use corral_runtime::Cache;
use corral_store::import::ImportPolicy;
use corral_store::ResourceStore;
use serde_json::Value;
use tokio::sync::mpsc;

pub use body::{decode_body, Body};
pub use pages::{with_resource_version, ListOutput};
pub use typed::TypedKindApi;
pub use watch::{WatchEvent, WatchItem};

use crate::error::ApiError;
use crate::list::ListParams;

#[async_trait]
pub trait KindApi: Send + Sync {
    fn info(&self) -> &'static KindInfo;
    /// Returns the created object's JSON.
    /// `role` is the writer's: what it may name on the host depends on it
    /// ([`crate::host_refs`]).
    async fn create(
        &self,
        project: &str,
        body: Body,
        dry_run: bool,
        role: Role,
    ) -> Result<Vec<u8>, ApiError>;
    async fn get(&self, project: &str, name: &str) -> Result<Value, ApiError>;
    async fn replace(
        &self,
        project: &str,
        name: &str,
        body: Body,
        dry_run: bool,
        role: Role,
    ) -> Result<Value, ApiError>;
    /// Replaces only `status`; `check`, if any, sees the current object
    /// first (a node may only report on what is bound to it).
    /// Replaces the status. `recent` may know the object at the revision
    /// the body names (the shared watch's copy), which spares a store read:
    /// the write compares-and-swaps on that revision either way.
    async fn replace_status(
        &self,
        project: &str,
        name: &str,
        body: Body,
        check: Option<&(dyn for<'v> Fn(&'v Value) -> Result<(), ApiError> + Send + Sync)>,
        recent: &(dyn Fn(i64) -> Option<Arc<WatchEvent>> + Send + Sync),
    ) -> Result<Value, ApiError>;
    async fn delete(
        &self,
        project: &str,
        name: &str,
        resource_version: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError>;
    async fn list(
        &self,
        project: Option<&str>,
        params: &ListParams,
    ) -> Result<ListOutput, ApiError>;
    /// Events after `after` into the returned channel until it is dropped.
    async fn watch(
        &self,
        project: Option<&str>,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ApiError>;
    async fn apply(
        &self,
        project: &str,
        body: Value,
        dry_run: bool,
        role: Role,
    ) -> Result<(ApplyResult, Value), ApiError>;
}

/// Every kind the resource API serves.
pub fn registry(
    store: &ResourceStore,
    projects: &Cache<Project>,
    imports: &Arc<ImportPolicy>,
) -> Vec<Arc<dyn KindApi>> {
    fn api<K: Resource + Validate + ValidateUpdate + Defaults + HostRefs>(
        store: &ResourceStore,
        projects: &Cache<Project>,
        imports: &Arc<ImportPolicy>,
    ) -> Arc<dyn KindApi> {
        Arc::new(TypedKindApi::<K>::new(
            store.clone(),
            projects.clone(),
            imports.clone(),
        ))
    }
    vec![
        api::<Instance>(store, projects, imports),
        api::<Network>(store, projects, imports),
        api::<Volume>(store, projects, imports),
        api::<Snapshot>(store, projects, imports),
        api::<Image>(store, projects, imports),
        api::<KeyPair>(store, projects, imports),
        api::<SecurityGroup>(store, projects, imports),
        api::<Address>(store, projects, imports),
        api::<InstanceType>(store, projects, imports),
        api::<Node>(store, projects, imports),
        api::<Project>(store, projects, imports),
        api::<Event>(store, projects, imports),
    ]
}
