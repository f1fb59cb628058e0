//! The resource API for one kind, generic over the kind's type, behind an
//! object-safe trait so the router can dispatch on the URL's plural.
//!
//! Everything kind-independent about create/replace/status/delete/apply
//! lives here once: server-owned metadata, generation bumps, finalizers and
//! deletionTimestamp, defaulting and validation (from api-types).

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::auth::Role;
use corral_api_types::{
    Address, Defaults, Event, HostRefs, Image, Instance, InstanceType, KeyPair, KindInfo, Network,
    Node, Project, Resource, Scope, SecurityGroup, Snapshot, Validate, ValidateUpdate, Volume,
    API_VERSION,
};
use corral_runtime::{Cache, ObjectRef};
use corral_store::import::ImportPolicy;
use corral_store::{kind_prefix, quota, ListOptions, ObjectEvent, ResourceStore, StoreError};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::list::ListParams;

/// Annotation the apply endpoint puts on what it wrote, so `apply --prune`
/// only ever deletes objects that were applied.
pub const APPLIED_ANNOTATION: &str = "corral/applied";

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

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
    /// Every Project, for the quota check of counted kinds.
    projects: Cache<Project>,
    /// What tenants may name on the server's host.
    imports: Arc<ImportPolicy>,
    _kind: PhantomData<fn() -> K>,
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
            store,
            projects,
            imports,
            _kind: PhantomData,
        }
    }

    /// Charges the quotas of `new`'s project, from the cached Project when
    /// there is one (see [`quota::charge_from`]): no store read for a
    /// project without quotas.
    async fn charge(
        &self,
        new: &K,
        old: Option<&K>,
        dry_run: bool,
    ) -> Result<Option<quota::Charge>, quota::QuotaError> {
        if !quota::is_counted::<K>() {
            return Ok(None);
        }
        let known = self.projects.get(&ObjectRef::new("", &new.meta().project));
        quota::charge_from(&self.store, known.as_deref(), new, old, dry_run).await
    }

    fn project_of(project: &str) -> &str {
        match K::SCOPE {
            Scope::Cluster => "",
            Scope::Project => project,
        }
    }

    /// Decodes, places at `project` (checking the body agrees), defaults
    /// and validates a user-written object.
    fn admit(&self, project: &str, name: Option<&str>, body: Body) -> Result<K, ApiError> {
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
        obj.apply_defaults();
        let errors = obj.validate();
        if !errors.is_empty() {
            return Err(ApiError::invalid(K::KIND, &obj.meta().name, &errors));
        }
        Ok(obj)
    }

    async fn current(&self, project: &str, name: &str) -> Result<K, ApiError> {
        self.store
            .get::<K>(Self::project_of(project), name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{} {name:?} not found", self.info.plural)))
    }

    /// Carries server-owned metadata and status from `current` into `new`,
    /// bumps generation on spec change, and writes it (or, when a deleting
    /// object just lost its last finalizer, deletes it).
    async fn write_replacement(
        &self,
        current: &K,
        mut new: K,
        expected_rv: &str,
        dry_run: bool,
        role: Role,
    ) -> Result<K, ApiError> {
        crate::host_refs::check(&self.imports, role, &new, Some(current))?;
        let cur = current.meta();
        let spec_changed = new.spec() != current.spec();
        {
            let meta = new.meta_mut();
            meta.uid = cur.uid.clone();
            meta.creation_timestamp = cur.creation_timestamp;
            meta.deletion_timestamp = cur.deletion_timestamp;
            meta.generation = cur.generation + i64::from(spec_changed);
            meta.resource_version = expected_rv.to_string();
        }
        // Immutable fields, sizes that only grow, no new finalizers once
        // deleting: the rules of the transition live in api-types.
        let errors = new.validate_update(current);
        if !errors.is_empty() {
            return Err(ApiError::invalid(K::KIND, &new.meta().name, &errors));
        }
        *new.status_mut() = current.status().cloned();
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
            let deleted = self
                .store
                .delete::<K>(&meta.project, &meta.name, Some(expected_rv))
                .await?;
            return Ok(deleted);
        }
        self.write_charged(charge, self.store.update(&new).await)
            .await
    }

    /// The outcome of a write that `charge` paid for: a failed write gives
    /// the charge back.
    async fn write_charged(
        &self,
        charge: Option<quota::Charge>,
        written: Result<K, StoreError>,
    ) -> Result<K, ApiError> {
        if let Some(c) = &charge {
            match &written {
                Ok(_) => quota::confirm(&self.store, c).await,
                Err(_) => quota::refund(&self.store, c).await,
            }
        }
        let written = written?;
        if K::KIND == Project::KIND {
            // Quotas are checked against the Project cache: a quota set
            // through this server holds for every request after the
            // answer (read-your-writes), not only once the cache catches
            // up. Bounded, so a stalled cache cannot hang the write.
            if let Ok(rv) = written.meta().resource_version.parse::<i64>() {
                let caught_up = self.projects.wait_for_revision(rv);
                if tokio::time::timeout(std::time::Duration::from_secs(5), caught_up)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        revision = rv,
                        "project cache did not reach a project write in 5 s"
                    );
                }
            }
        }
        Ok(written)
    }
}

fn check_resource_version(
    kind: &str,
    name: &str,
    body_rv: &str,
    current_rv: &str,
) -> Result<(), ApiError> {
    if !body_rv.is_empty() && body_rv != current_rv {
        return Err(ApiError::conflict(format!(
            "{kind} {name:?} was modified: you sent resourceVersion {body_rv}, it is now {current_rv}; read it again and retry"
        )));
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
        let to_json = |o: &K| {
            serde_json::to_vec(o)
                .map_err(|e| ApiError::internal(format!("encoding {}: {e}", K::KIND)))
        };
        let mut obj = self.admit(project, None, body)?;
        crate::host_refs::check(&self.imports, role, &obj, None)?;
        let meta = obj.meta_mut();
        meta.uid.clear();
        meta.resource_version.clear();
        meta.generation = 1;
        meta.creation_timestamp = None;
        meta.deletion_timestamp = None;
        *obj.status_mut() = None;
        let charge = self.charge(&obj, None, dry_run).await?;
        if dry_run {
            return to_json(&obj);
        }
        let created = self
            .write_charged(charge, self.store.create(&obj).await)
            .await?;
        to_json(&created)
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
        let new = self.admit(project, Some(name), body)?;
        // Without a resourceVersion from the caller the compare-and-swap
        // is ours (as for deletes): a controller writing status meanwhile
        // is retried, not reported as a conflict the caller never risked.
        let caller_rv = !new.meta().resource_version.is_empty();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.current(project, name).await?;
            let current_rv = current.meta().resource_version.clone();
            check_resource_version(K::KIND, name, &new.meta().resource_version, &current_rv)?;
            match self
                .write_replacement(&current, new.clone(), &current_rv, dry_run, role)
                .await
            {
                Err(e)
                    if e.code == axum::http::StatusCode::CONFLICT && !caller_rv && attempt < 16 =>
                {
                    continue
                }
                written => return to_value(&written?),
            }
        }
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
        let known = incoming
            .meta()
            .resource_version
            .parse::<i64>()
            .ok()
            .and_then(recent)
            .filter(|e| {
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
        // Without a resourceVersion from the caller the compare-and-swap
        // is ours: a controller writing status meanwhile (IPAM on a
        // Network) is retried, not reported as a conflict.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.current(project, name).await?;
            let current_rv = current.meta().resource_version.clone();
            if let Some(rv) = resource_version {
                check_resource_version(K::KIND, name, rv, &current_rv)?;
            }
            if dry_run {
                return to_value(&current);
            }
            let outcome = if !current.meta().finalizers.is_empty() {
                // Mark; whoever holds a finalizer finishes the deletion.
                if current.meta().deletion_timestamp.is_some() {
                    return to_value(&current);
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
                Err(StoreError::Conflict { .. }) if resource_version.is_none() && attempt < 16 => {
                    continue
                }
                other => return to_value(&other?),
            }
        }
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
                        let resource_version = object.meta().resource_version.parse().unwrap_or(0);
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
        let mut desired = self.admit(project, None, Body::Value(body))?;
        desired
            .meta_mut()
            .annotations
            .insert(APPLIED_ANNOTATION.into(), "true".into());
        let name = desired.meta().name.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self
                .store
                .get::<K>(Self::project_of(project), &name)
                .await?;
            let Some(current) = current else {
                crate::host_refs::check(&self.imports, role, &desired, None)?;
                let meta = desired.meta_mut();
                meta.uid.clear();
                meta.resource_version.clear();
                meta.generation = 1;
                *desired.status_mut() = None;
                let charge = self.charge(&desired, None, dry_run).await?;
                if dry_run {
                    return Ok((ApplyResult::Created, to_value(&desired)?));
                }
                // Lost a race with another creator: reported (409), not clobbered.
                let created = self
                    .write_charged(charge, self.store.create(&desired).await)
                    .await?;
                return Ok((ApplyResult::Created, to_value(&created)?));
            };
            // The manifest owns spec, labels and annotations; everything else
            // (finalizers, owners, status) stays as the server has it.
            let mut new = current.clone();
            {
                let cur_meta = current.meta();
                let d = desired.meta();
                let labels = d.labels.clone();
                let annotations = d.annotations.clone();
                let meta = new.meta_mut();
                meta.labels = labels;
                meta.annotations = annotations;
                meta.resource_version = cur_meta.resource_version.clone();
            }
            let same_spec = desired.spec() == current.spec();
            if same_spec
                && new.meta().labels == current.meta().labels
                && new.meta().annotations == current.meta().annotations
            {
                return Ok((ApplyResult::Unchanged, to_value(&current)?));
            }
            let spec = desired.spec().clone();
            let mut replacement: K = K::new(&current.meta().project, &name, spec);
            *replacement.meta_mut() = new.meta().clone();
            let current_rv = current.meta().resource_version.clone();
            match self
                .write_replacement(&current, replacement, &current_rv, dry_run, role)
                .await
            {
                // The manifest names no resourceVersion: the compare-and-swap is
                // ours, and a controller writing status meanwhile (found by the
                // chaos suite) is retried, not reported as a conflict.
                Err(e) if e.code == axum::http::StatusCode::CONFLICT && attempt < 16 => continue,
                written => return Ok((ApplyResult::Configured, to_value(&written?)?)),
            }
        }
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
