//! The resource API for one kind, generic over the kind's type, behind an
//! object-safe trait so the router can dispatch on the URL's plural.
//!
//! The write path itself (admission, generation, finalizers, quotas,
//! compare-and-swap retries) is `corral_registry`'s, shared with the EC2
//! façade; this module adds what is HTTP's: decoding bodies, placing them
//! at the URL's project and name, what the caller's role may name on the
//! host, lists, watches and status writes.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use corral_api_types::auth::Role;
use corral_api_types::{
    Address, Defaults, Event, HostRefs, Image, Instance, InstanceType, KeyPair, KindInfo, Network,
    Node, Project, Resource, ResourceVersion, Scope, SecurityGroup, Snapshot, Validate,
    ValidateUpdate, Volume, API_VERSION,
};
pub use corral_registry::{ApplyResult, APPLIED_ANNOTATION};
use corral_registry::{ProjectCache, Registry};
use corral_runtime::{Cache, ObjectRef};
use corral_store::import::ImportPolicy;
use corral_store::{kind_prefix, ListOptions, ObjectEvent, ResourceStore, StoreError};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::list::ListParams;

/// One event of a watch, already in JSON form.
#[derive(Debug)]
pub enum WatchItem {
    /// Shared by every watcher that gets it: a hundred node agents
    /// watching Instances share one copy of each event, and the matching
    /// ones one encoding of it.
    Event(Arc<WatchEvent>),
    /// The watch ended with an error (410 when compacted).
    Error(ApiError),
}

/// A change to one object, as watchers are sent it.
#[derive(Debug)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The previous state for MODIFIED (for selector transitions).
    pub prev: Option<Value>,
    pub resource_version: i64,
    /// `metadata.project` of the object ("" for cluster kinds).
    pub project: String,
    /// `status.nodeName` now and before ("" when unbound): the index the
    /// shared watch routes node agents' watches by, so an agent's stream
    /// is not woken for the other nodes' instances.
    pub node: (String, Option<String>),
    labels: OnceLock<(Labels, Option<Labels>)>,
    encoded: OnceLock<Vec<u8>>,
}

type Labels = std::collections::BTreeMap<String, String>;

fn labels_of(v: &Value) -> Labels {
    v.pointer("/metadata/labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl WatchEvent {
    pub fn new(
        kind: &'static str,
        object: Value,
        prev: Option<Value>,
        resource_version: i64,
    ) -> WatchEvent {
        let project = object
            .pointer("/metadata/project")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string();
        let node_of = |v: &Value| {
            v.pointer("/status/nodeName")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string()
        };
        let node = (node_of(&object), prev.as_ref().map(node_of));
        WatchEvent {
            kind,
            object,
            prev,
            resource_version,
            project,
            node,
            labels: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    /// Whether the object is, or was before the change, on `node`.
    pub fn touches_node(&self, node: &str) -> bool {
        self.node.0 == node || self.node.1.as_deref() == Some(node)
    }

    /// Whether the object (now, and before the change) matches `params`:
    /// the labels are read once per event, whoever asks.
    pub fn matches(&self, params: &ListParams) -> (bool, Option<bool>) {
        if !params.is_filtered() {
            return (true, self.prev.as_ref().map(|_| true));
        }
        let (now, before) = self
            .labels
            .get_or_init(|| (labels_of(&self.object), self.prev.as_ref().map(labels_of)));
        (
            params.matches(now, &self.object),
            self.prev
                .as_ref()
                .zip(before.as_ref())
                .map(|(p, l)| params.matches(l, p)),
        )
    }

    /// One NDJSON line `{"type":..,"object":..}` with the object encoded
    /// once per event.
    pub fn line(&self, kind: &str) -> Vec<u8> {
        let object = self
            .encoded
            .get_or_init(|| serde_json::to_vec(&self.object).unwrap_or_default());
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        line
    }
}

/// A page of a list. Items are the objects' JSON, as stored, with their
/// `resourceVersion` put in: lists are served without decoding objects.
pub struct ListOutput {
    pub items: Vec<Vec<u8>>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
}

impl ListOutput {
    /// The items as JSON values (for callers that look inside).
    pub fn values(&self) -> Vec<Value> {
        self.items
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect()
    }
}

/// Puts `"resourceVersion":"N"` into stored object bytes. The store keeps
/// objects as canonical JSON with `metadata` right after `apiVersion` and
/// `kind` (fixed strings), so the first `"metadata":{` is the key itself;
/// anything else is parsed and rewritten the slow way.
pub fn with_resource_version(stored: &[u8], revision: i64) -> Vec<u8> {
    const KEY: &[u8] = b"\"metadata\":{";
    if let Some(pos) = stored.windows(KEY.len()).position(|w| w == KEY) {
        let at = pos + KEY.len();
        let rv = format!("\"resourceVersion\":\"{revision}\"");
        let mut out = Vec::with_capacity(stored.len() + rv.len() + 1);
        out.extend_from_slice(&stored[..at]);
        out.extend_from_slice(rv.as_bytes());
        if stored.get(at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&stored[at..]);
        return out;
    }
    match serde_json::from_slice::<Value>(stored) {
        Ok(mut v) => {
            if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(revision.to_string()),
                );
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| stored.to_vec())
        }
        Err(_) => stored.to_vec(),
    }
}

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

/// A request body on its way to a typed object.
#[derive(Debug, Clone)]
pub enum Body {
    /// JSON as received: decoded straight into the kind's type when it is
    /// a complete, well-formed object of that kind.
    Json(axum::body::Bytes),
    /// Already parsed (YAML bodies, or JSON a caller had to look into).
    Value(Value),
}

impl From<Value> for Body {
    fn from(v: Value) -> Body {
        Body::Value(v)
    }
}

impl Body {
    /// The body as a JSON value.
    pub fn into_value(self) -> Result<Value, ApiError> {
        match self {
            Body::Value(v) => Ok(v),
            Body::Json(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"))),
        }
    }

    /// The body as a `K`. The common case (a JSON object naming this
    /// kind and API version, with no unknown field) is decoded in one
    /// pass; anything else goes the careful way of [`decode_body`], so
    /// errors read the same whichever way the body came.
    pub fn decode<K: Resource>(self) -> Result<K, ApiError> {
        if let Body::Json(bytes) = &self {
            if let Ok(obj) = serde_json::from_slice::<K>(bytes) {
                if obj.type_meta() == (API_VERSION, K::KIND) {
                    return Ok(obj);
                }
            }
        }
        decode_body(self.into_value()?)
    }
}

/// The body as a `K`: fills in a missing apiVersion/kind, refuses a
/// different kind, and names the path of any unknown or mistyped field.
pub fn decode_body<K: Resource>(mut body: Value) -> Result<K, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} object",
            K::KIND
        )));
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    match map.get("kind").and_then(|k| k.as_str()) {
        None => {
            map.insert("kind".into(), Value::String(K::KIND.into()));
        }
        Some(k) if k == K::KIND => {}
        Some(other) => {
            return Err(ApiError::invalid_field(
                K::KIND,
                &name,
                "kind",
                &format!("must be {:?} for this path, not {other:?}", K::KIND),
            ))
        }
    }
    match map.get("apiVersion").and_then(|k| k.as_str()) {
        None => {
            map.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        }
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(ApiError::invalid_field(
                K::KIND,
                &name,
                "apiVersion",
                &format!("must be {API_VERSION:?}, not {other:?}"),
            ))
        }
    }
    serde_path_to_error::deserialize::<_, K>(body).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ApiError::invalid_field(K::KIND, &name, &path, &e.inner().to_string())
    })
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
        let project = match K::SCOPE {
            Scope::Cluster => None,
            Scope::Project => project,
        };
        let limit = params.limit.unwrap_or(0);
        let mut items = Vec::new();
        let mut bytes_out = 0usize;
        let mut token = params.continue_token.clone();
        let mut revision = params.resource_version;
        'pages: loop {
            // Ask for no more than still fits, so the store's continue token
            // always points right after the last item we return.
            let want = if limit > 0 {
                Some(limit - items.len())
            } else {
                None
            };
            // Stored bytes are the object's canonical JSON: parse them
            // straight into the answer instead of through the typed model.
            let page = self
                .store
                .raw()
                .list(
                    &kind_prefix::<K>(project),
                    ListOptions {
                        limit: want,
                        continue_token: token.clone(),
                        revision: if token.is_some() { None } else { revision },
                    },
                )
                .await?;
            revision = Some(page.revision);
            let filtered = params.is_filtered();
            for kv in &page.items {
                let bytes = with_resource_version(&kv.value, kv.mod_revision);
                if filtered {
                    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::from(StoreError::Corrupt {
                            key: kv.key.clone(),
                            source: e,
                        })
                    })?;
                    if !params.matches_value(&value) {
                        continue;
                    }
                }
                bytes_out += bytes.len();
                items.push(bytes);
                // A page is bounded in bytes as well as items: past the
                // budget, the rest comes after a continue token.
                if bytes_out >= crate::limits::LIST_BYTES {
                    let more_in_page = page.items.last().is_some_and(|last| last.key != kv.key);
                    token = if more_in_page {
                        Some(corral_store::continue_after(page.revision, &kv.key))
                    } else {
                        page.continue_token.clone()
                    };
                    break 'pages;
                }
            }
            token = page.continue_token;
            if token.is_none() || (limit > 0 && items.len() >= limit) {
                break;
            }
        }
        Ok(ListOutput {
            items,
            resource_version: revision.unwrap_or(0),
            continue_token: token,
        })
    }

    async fn watch(
        &self,
        project: Option<&str>,
        after: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
        let project = match K::SCOPE {
            Scope::Cluster => None,
            Scope::Project => project,
        };
        let mut watch = self.store.watch::<K>(project, after).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = tx.closed() => return,
                };
                let item = match next {
                    None => return,
                    Some(Err(e)) => WatchItem::Error(ApiError::from(e)),
                    Some(Ok(event)) => {
                        let (kind, prev) = match &event {
                            ObjectEvent::Added(_) => ("ADDED", None),
                            ObjectEvent::Modified(_, prev) => (
                                "MODIFIED",
                                prev.as_deref().and_then(|p| serde_json::to_value(p).ok()),
                            ),
                            ObjectEvent::Deleted(_) => ("DELETED", None),
                        };
                        let object = event.object();
                        let resource_version =
                            ResourceVersion::parse(&object.meta().resource_version)
                                .ok()
                                .flatten()
                                .map_or(0, ResourceVersion::get);
                        match serde_json::to_value(object) {
                            Ok(object) => WatchItem::Event(Arc::new(WatchEvent::new(
                                kind,
                                object,
                                prev,
                                resource_version,
                            ))),
                            Err(e) => WatchItem::Error(ApiError::internal(e.to_string())),
                        }
                    }
                };
                let end = matches!(item, WatchItem::Error(_));
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON bodies take a one-pass typed decode when they can; whichever
    /// way a body goes, the result and the error are those of the careful
    /// path through a `Value`.
    #[test]
    fn json_bodies_decode_like_parsed_ones() {
        let bodies = [
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"kind":"Instance","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24"}}"#,
            r#"{"apiVersion":"corral/v2","kind":"Network","metadata":{"name":"n"}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"n"},"spec":{"cidr":"10.0.0.0/24","mtu2":1}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","kind":"Network","metadata":{"name":"n"}}"#,
            r#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":7}}"#,
            r#"[1,2]"#,
            r#"{"apiVersion":"corral/v1","kind":"Network""#,
        ];
        for text in bodies {
            let fast = Body::Json(axum::body::Bytes::from(text)).decode::<Network>();
            let careful = serde_json::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
                .and_then(decode_body::<Network>);
            match (fast, careful) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.code, b.code, "{text}");
                    assert_eq!(a.to_string(), b.to_string(), "{text}");
                }
                (a, b) => panic!("{text}: one-pass {a:?}, careful {b:?}"),
            }
        }
        // The defaults the careful path fills in.
        let n: Network = Body::Json(axum::body::Bytes::from(bodies[1]))
            .decode()
            .unwrap();
        assert_eq!(n.type_meta(), (API_VERSION, "Network"));
    }

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

    #[test]
    fn resource_version_goes_into_metadata() {
        let stored =
            br#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"a"},"spec":{}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(stored, 42)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        let empty = br#"{"kind":"X","metadata":{},"spec":{}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(empty, 7)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        // Not our layout: parsed and rewritten.
        let odd = br#"{"spec":{"x":1},"metadata" : {"name":"b"}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(odd, 9)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "9");
    }
}
