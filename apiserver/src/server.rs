//! The HTTP surface: routes, request decoding, authorization and watch
//! streams. Kind-specific behaviour is in [`crate::kinds`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_api_types::auth::Role;
use corral_api_types::{KindInfo, Project, Scope};
use corral_store::import::ImportPolicy;
use corral_store::ResourceStore;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{Authenticator, Principal, Verb};
use crate::error::ApiError;
use crate::kinds::{registry, Body, KindApi, WatchItem};
use crate::list::ListParams;
use crate::metrics::Metrics;

pub use crate::limits::BODY_LIMIT;

/// Shared state of one API server.
pub struct ApiState {
    pub store: ResourceStore,
    pub auth: Authenticator,
    pub metrics: Metrics,
    watch_cache: crate::watch_cache::WatchCache,
    /// Every Project, kept current by a reflector.
    projects: corral_runtime::Cache<Project>,
    kinds: HashMap<&'static str, Arc<dyn KindApi>>,
    openapi: Value,
    /// Image bytes, when this server keeps them.
    blobs: std::sync::OnceLock<corral_store::blobs::BlobStore>,
    /// Open watches per client (see [`crate::limits`]).
    pub watch_slots: crate::limits::WatchSlots,
    /// Requests per second per member (admins and node agents are not
    /// limited; see [`crate::limits`]).
    pub rate: corral_api_types::rate::RateLimiter,
    /// Failed authentications per peer address: past it, a peer is refused
    /// before its credentials are even looked at.
    pub unauthenticated: corral_api_types::rate::RateLimiter,
    /// Held while a user's own credentials are counted and issued, so that
    /// concurrent requests cannot pass the self-service limits together.
    pub(crate) issuing: tokio::sync::Mutex<()>,
}

impl ApiState {
    /// A server that reads no file of its host for tenants and fetches
    /// no private address ([`ImportPolicy::default`]).
    pub fn new(store: ResourceStore) -> Arc<ApiState> {
        ApiState::with_imports(store, ImportPolicy::default())
    }

    /// A server whose tenants may import from what `imports` allows.
    pub fn with_imports(store: ResourceStore, imports: ImportPolicy) -> Arc<ApiState> {
        let projects = corral_runtime::Reflector::new(store.clone()).spawn();
        let kinds = registry(&store, &projects, &Arc::new(imports))
            .into_iter()
            .map(|k| (k.info().plural, k))
            .collect();
        Arc::new(ApiState {
            auth: Authenticator::new(store.clone()),
            metrics: Metrics::new(),
            watch_cache: Default::default(),
            projects,
            openapi: crate::openapi::document(),
            store,
            kinds,
            blobs: Default::default(),
            watch_slots: Default::default(),
            rate: corral_api_types::rate::RateLimiter::new(crate::limits::MEMBER_RATE),
            unauthenticated: corral_api_types::rate::RateLimiter::new(
                crate::limits::UNAUTHENTICATED_RATE,
            ),
            issuing: Default::default(),
        })
    }

    /// Lets this server keep image bytes in `blobs` (once; later calls are
    /// ignored).
    pub fn set_blobs(&self, blobs: corral_store::blobs::BlobStore) {
        let _ = self.blobs.set(blobs);
    }

    pub fn blobs(&self) -> Option<&corral_store::blobs::BlobStore> {
        self.blobs.get()
    }

    fn kind(&self, plural: &str) -> Result<&Arc<dyn KindApi>, ApiError> {
        self.kinds.get(plural).ok_or_else(|| {
            let mut known: Vec<&str> = self.kinds.keys().copied().collect();
            known.sort_unstable();
            ApiError::not_found(format!(
                "no resource type {plural:?}; known: {}",
                known.join(", ")
            ))
        })
    }

    fn kind_by_name(&self, kind: &str) -> Result<&Arc<dyn KindApi>, ApiError> {
        self.kinds
            .values()
            .find(|k| k.info().kind == kind)
            .ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind:?}")))
    }
}

pub type AppState = Arc<ApiState>;

/// The whole native API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/apply", post(apply))
        .merge(crate::admin::routes())
        .merge(crate::rotate::routes())
        .merge(crate::memberships::routes())
        .route("/v1/projects", get(cluster_collection).post(cluster_create))
        .route(
            "/v1/projects/{project}",
            get(project_get).put(project_put).delete(project_delete),
        )
        .route(
            "/v1/projects/{project}/{plural}",
            get(project_collection).post(project_create),
        )
        .route(
            "/v1/projects/{project}/{plural}/{name}",
            get(project_item_get)
                .put(project_item_put)
                .delete(project_item_delete),
        )
        .route(
            "/v1/projects/{project}/{plural}/{name}/status",
            get(project_item_get).put(project_status_put),
        )
        .route("/v1/{plural}", get(cluster_collection).post(cluster_create))
        .route(
            "/v1/{plural}/{name}",
            get(cluster_item_get)
                .put(cluster_item_put)
                .delete(cluster_item_delete),
        )
        .route(
            "/v1/{plural}/{name}/status",
            get(cluster_item_get).put(cluster_status_put),
        )
        .fallback(|| async { ApiError::not_found("no such path") })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::method_not_allowed(format!("{method} is not allowed on this path"))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::limits::limit_body))
        // Content streams (image bytes) have limits of their own.
        .merge(crate::content::routes())
        // Outermost: no body is read and no route runs for a request
        // whose credentials do not authenticate.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::authenticate_first,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::serve))
        .route("/openapi.json", get(openapi))
        .merge(api)
        .with_state(state)
}

/// Ready when the store takes writes; otherwise 503 saying why (a dead
/// writer, a failed commit, etcd's NOSPACE alarm, etcd unreachable).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.raw().health().await {
        Ok(()) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", corral_store::error_text(&e)),
        )
            .into_response(),
    }
}

async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(state.openapi.clone())
}

pub(crate) async fn principal(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let p = state.auth.authenticate(header).await?;
    if p.is_tenant() {
        if let Err(wait) = state.rate.check(&p.user, std::time::Instant::now()) {
            return Err(crate::limits::too_many_requests(&p.user, wait));
        }
    }
    Ok(p)
}

async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    let projects: Vec<Value> = p
        .projects
        .iter()
        .map(|(name, role)| json!({"project": name, "role": role}))
        .collect();
    Ok(Json(json!({
        "user": p.user,
        "role": p.role,
        "project": p.project,
        "node": p.node,
        "projects": projects,
    })))
}

/// Parses a JSON or YAML body into a JSON value.
pub(crate) fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    body_of(headers, body)?.into_value()
}

/// A JSON or YAML body, for the kinds' typed decoding: JSON is kept as
/// bytes (decoded once, straight into the kind's type), YAML is parsed.
pub(crate) fn body_of(headers: &HeaderMap, body: &Bytes) -> Result<Body, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
        yaml_serde::from_str::<Value>(text)
            .map(Body::Value)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))
    } else {
        Ok(Body::Json(body.clone()))
    }
}

fn dry_run(q: &HashMap<String, String>) -> bool {
    matches!(
        q.get("dryRun").map(String::as_str),
        Some("All" | "all" | "true" | "1" | "server")
    )
}

/// The project path segment must name an existing project.
async fn require_project(state: &ApiState, project: &str) -> Result<(), ApiError> {
    // The shared Project cache answers the common case without a read; a
    // project it has not seen yet (just created) is read from the store.
    if state
        .projects
        .get(&corral_runtime::ObjectRef::new("", project))
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    {
        return Ok(());
    }
    if state.store.get::<Project>("", project).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "project {project:?} not found (an admin creates it: corral project create {project})"
        )));
    }
    Ok(())
}

fn check_scope(info: &KindInfo, want: Scope) -> Result<(), ApiError> {
    if info.scope != want {
        let hint = match info.scope {
            Scope::Cluster => format!("/v1/{}", info.plural),
            Scope::Project => format!("/v1/projects/{{project}}/{}", info.plural),
        };
        return Err(ApiError::not_found(format!(
            "{} are {} resources: use {hint}",
            info.plural,
            if info.scope == Scope::Cluster {
                "cluster"
            } else {
                "project"
            }
        )));
    }
    Ok(())
}

fn object_check(p: &Principal, info: &'static KindInfo, object: &Value) -> Result<(), ApiError> {
    if p.may_touch_object(info, object) {
        Ok(())
    } else {
        // Like another project's object: not there, as far as you know.
        Err(ApiError::not_found(format!(
            "{} {:?} not found",
            info.plural,
            object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
        )))
    }
}

// ---- collections -------------------------------------------------------------

async fn list_or_watch(
    state: &ApiState,
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let info = kind.info();
    p.authorize(Verb::List, info, project)?;
    let mut params = ListParams::from_query(query)?;
    if let Some(node) = p.node_filter(info) {
        params.restrict_to_node(node);
    }
    if info.plural == "projects" && p.is_tenant() {
        // Members and viewers see the projects they have a role in.
        params.names = p.projects.iter().map(|(name, _)| name.clone()).collect();
    }
    if params.watch {
        let slot = state.watch_slots.acquire(&watch_client(p))?;
        return watch(state, kind.clone(), project, params, slot).await;
    }
    let out = kind.list(project, &params).await?;
    let metadata = corral_api_types::wire::ListMeta {
        resource_version: out.resource_version.to_string(),
        continue_token: out.continue_token,
    };
    // The items are JSON already: splice them in.
    let size: usize = out.items.iter().map(|i| i.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 256);
    body.extend_from_slice(b"{\"apiVersion\":");
    body.extend_from_slice(&serde_json::to_vec(corral_api_types::API_VERSION).unwrap_or_default());
    body.extend_from_slice(b",\"kind\":");
    body.extend_from_slice(&serde_json::to_vec(&format!("{}List", info.kind)).unwrap_or_default());
    body.extend_from_slice(b",\"metadata\":");
    body.extend_from_slice(&serde_json::to_vec(&metadata).unwrap_or_default());
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in out.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Whose watches count together: a node agent's node, else the user.
fn watch_client(p: &Principal) -> String {
    if p.node.is_empty() {
        p.user.clone()
    } else {
        format!("node:{}", p.node)
    }
}

async fn watch(
    state: &ApiState,
    kind: Arc<dyn KindApi>,
    project: Option<&str>,
    params: ListParams,
    slot: crate::limits::WatchSlot,
) -> Result<Response, ApiError> {
    let info = kind.info();
    // Without a version: the current objects first, as ADDED.
    let (initial, start) = match params.resource_version {
        Some(rv) => (Vec::new(), rv),
        None => {
            let mut all = Vec::new();
            let mut p = params.clone();
            p.limit = None;
            p.continue_token = None;
            let out = kind.list(project, &p).await?;
            all.extend(out.values());
            (all, out.resource_version)
        }
    };
    let mut events = state
        .watch_cache
        .watch(
            kind.clone(),
            project,
            params.fields.required("status.nodeName"),
            start,
        )
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let heartbeat = params.heartbeat;
    let kind_name = info.kind;
    tokio::spawn(async move {
        // Held while the stream lives: the client's watch count.
        let _slot = slot;
        let line = |v: Value| {
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            bytes.push(b'\n');
            Ok(Bytes::from(bytes))
        };
        for object in initial {
            if tx
                .send(line(json!({"type": "ADDED", "object": object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut last_rv = start;
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.reset();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": corral_api_types::API_VERSION,
                        "kind": kind_name,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    }});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
                item = events.recv() => {
                    let Some(item) = item else { return };
                    match item {
                        WatchItem::Error(e) => {
                            let status = json!({"type": "ERROR", "object": {
                                "kind": "Status", "status": "Failure",
                                "code": e.code.as_u16(), "reason": e.reason, "message": e.message,
                            }});
                            let _ = tx.send(line(status)).await;
                            return;
                        }
                        WatchItem::Event(event) => {
                            last_rv = event.resource_version;
                            let (now, before) = event.matches(&params);
                            // Selector transitions look like adds and deletes
                            // to the watcher, as in Kubernetes.
                            let kind = match (event.kind, before, now) {
                                ("MODIFIED", Some(false), true) => "ADDED",
                                ("MODIFIED", Some(true), false) => "DELETED",
                                (_, _, false) => continue,
                                (k, _, true) => k,
                            };
                            if tx.send(Ok(Bytes::from(event.line(kind)))).await.is_err() {
                                return;
                            }
                            ticker.reset();
                        }
                    }
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

async fn project_collection(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    if plural == "status" {
        // `/v1/projects/{name}/status` is the Project's status.
        let kind = state.kind("projects")?;
        p.authorize(Verb::Get, kind.info(), None)?;
        member_own_project(&p, &project)?;
        return Ok(Json(kind.get("", &project).await?).into_response());
    }
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    list_or_watch(&state, &p, kind, Some(&project), &q).await
}

async fn cluster_collection(
    State(state): State<AppState>,
    headers: HeaderMap,
    plural: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let plural = plural.map(|Path(p)| p).unwrap_or_else(|| "projects".into());
    let kind = state.kind(&plural)?;
    // Project kinds listed here span every project.
    list_or_watch(&state, &p, kind, None, &q).await
}

async fn project_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    p.authorize(Verb::Create, kind.info(), Some(&project))?;
    let body = body_of(&headers, &body)?;
    require_project(&state, &project).await?;
    let created = kind.create(&project, body, dry_run(&q), p.role).await?;
    Ok(created_response(created))
}

async fn cluster_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    plural: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let plural = plural.map(|Path(p)| p).unwrap_or_else(|| "projects".into());
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Cluster)?;
    p.authorize(Verb::Create, kind.info(), None)?;
    let mut body = body_of(&headers, &body)?;
    if p.role == Role::Node {
        let value = body.into_value()?;
        object_check(&p, kind.info(), &value)?;
        body = Body::Value(value);
    }
    let created = kind.create("", body, dry_run(&q), p.role).await?;
    Ok(created_response(created))
}

fn created_response(json: Vec<u8>) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

// ---- items -------------------------------------------------------------------

fn member_own_project(p: &Principal, project: &str) -> Result<(), ApiError> {
    if p.is_tenant() && p.role_in(project).is_none() {
        return Err(ApiError::forbidden(format!(
            "user {:?} may not see project {project:?}",
            p.user
        )));
    }
    Ok(())
}

async fn item_get(
    state: &ApiState,
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    p.authorize(Verb::Get, kind.info(), project)?;
    let object = kind.get(project.unwrap_or(""), name).await?;
    object_check(p, kind.info(), &object)?;
    let _ = state;
    Ok(Json(object).into_response())
}

async fn item_put(
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    p.authorize(Verb::Update, kind.info(), project)?;
    let body = body_of(headers, body)?;
    if p.role == Role::Node {
        // A node may update only its own Node.
        let current = kind.get(project.unwrap_or(""), name).await?;
        object_check(p, kind.info(), &current)?;
    }
    Ok(Json(
        kind.replace(project.unwrap_or(""), name, body, dry_run(q), p.role)
            .await?,
    )
    .into_response())
}

async fn status_put(
    state: &ApiState,
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    p.authorize(Verb::UpdateStatus, kind.info(), project)?;
    let body = body_of(headers, body)?;
    let info = kind.info();
    let check = |current: &Value| object_check(p, info, current);
    // Only a node's reach depends on the object (what is bound to it).
    let check = (p.role == Role::Node).then_some(&check as _);
    let project = project.unwrap_or("");
    let recent = |rv: i64| state.watch_cache.object_at(info.plural, project, name, rv);
    Ok(Json(
        kind.replace_status(project, name, body, check, &recent)
            .await?,
    )
    .into_response())
}

async fn item_delete(
    p: &Principal,
    kind: &Arc<dyn KindApi>,
    project: Option<&str>,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    p.authorize(Verb::Delete, kind.info(), project)?;
    let rv = q.get("resourceVersion").map(String::as_str);
    Ok(Json(
        kind.delete(project.unwrap_or(""), name, rv, dry_run(q))
            .await?,
    )
    .into_response())
}

async fn project_item_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    let for_ = q.get("for").map(String::as_str);
    crate::node_refs::check(&state.store, &p, kind.info().plural, &project, &name, for_).await?;
    item_get(&state, &p, kind, Some(&project), &name).await
}

async fn project_item_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    item_put(&p, kind, Some(&project), &name, &headers, &body, &q).await
}

async fn project_status_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    status_put(&state, &p, kind, Some(&project), &name, &headers, &body).await
}

async fn project_item_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Project)?;
    item_delete(&p, kind, Some(&project), &name, &q).await
}

async fn project_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    member_own_project(&p, &project)?;
    let kind = state.kind("projects")?;
    item_get(&state, &p, kind, None, &project).await
}

async fn project_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind("projects")?;
    item_put(&p, kind, None, &project, &headers, &body, &q).await
}

async fn project_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind("projects")?;
    p.authorize(Verb::Delete, kind.info(), None)?;
    // A project goes only when empty: objects left behind would be
    // unreachable (every write needs the project to exist).
    let mut left = Vec::new();
    let mut plurals: Vec<&&'static str> = state.kinds.keys().collect();
    plurals.sort();
    for plural in plurals {
        let k = &state.kinds[*plural];
        if k.info().scope != Scope::Project || *plural == "events" {
            continue;
        }
        let params = ListParams {
            limit: Some(3),
            ..Default::default()
        };
        let out = k.list(Some(&project), &params).await?;
        if !out.items.is_empty() {
            let values = out.values();
            let names: Vec<&str> = values
                .iter()
                .filter_map(|o| o.pointer("/metadata/name").and_then(|n| n.as_str()))
                .collect();
            let more = if out.continue_token.is_some() {
                ", ..."
            } else {
                ""
            };
            left.push(format!("{plural} ({}{more})", names.join(", ")));
        }
    }
    if !left.is_empty() {
        return Err(ApiError::conflict(format!(
            "project {project:?} is not empty: it still has {}; delete them first",
            left.join(", ")
        )));
    }
    // Its Events describe objects that are gone: they go with it.
    if !q.contains_key("dryRun") {
        let events = state.kind("events")?;
        for e in events
            .list(Some(&project), &ListParams::default())
            .await?
            .values()
        {
            if let Some(name) = e.pointer("/metadata/name").and_then(|n| n.as_str()) {
                match events.delete(&project, name, None, false).await {
                    Ok(_) => {}
                    Err(err) if err.code == StatusCode::NOT_FOUND => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    item_delete(&p, kind, None, &project, &q).await
}

async fn cluster_item_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Cluster)?;
    item_get(&state, &p, kind, None, &name).await
}

async fn cluster_item_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Cluster)?;
    item_put(&p, kind, None, &name, &headers, &body, &q).await
}

async fn cluster_status_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Cluster)?;
    status_put(&state, &p, kind, None, &name, &headers, &body).await
}

async fn cluster_item_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&plural)?;
    check_scope(kind.info(), Scope::Cluster)?;
    item_delete(&p, kind, None, &name, &q).await
}

fn plural_name(params: &[(String, String)]) -> Result<(String, String), ApiError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get("plural"), get("name")) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(ApiError::not_found("no such path")),
    }
}

// ---- apply -------------------------------------------------------------------

async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let body = parse_body(&headers, &body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "apply takes one object per request (a JSON or YAML mapping); send each document on its own",
        ));
    }
    let kind_name = body
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| ApiError::invalid_field("", "", "kind", "required"))?
        .to_string();
    let kind = state.kind_by_name(&kind_name)?;
    let info = kind.info();
    let project = match info.scope {
        Scope::Cluster => None,
        Scope::Project => {
            let in_body = body
                .pointer("/metadata/project")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let project = if !in_body.is_empty() {
                in_body.to_string()
            } else if let Some(p) = q.get("project").filter(|p| !p.is_empty()) {
                p.clone()
            } else if !p.project.is_empty() {
                p.project.clone()
            } else {
                return Err(ApiError::invalid_field(
                    info.kind,
                    "",
                    "metadata.project",
                    "required (or pass ?project=)",
                ));
            };
            Some(project)
        }
    };
    p.authorize(Verb::Create, info, project.as_deref())?;
    p.authorize(Verb::Update, info, project.as_deref())?;
    if let Some(project) = &project {
        require_project(&state, project).await?;
    }
    let (result, object) = kind
        .apply(project.as_deref().unwrap_or(""), body, dry_run(&q), p.role)
        .await?;
    let code = if result == crate::kinds::ApplyResult::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(json!({"result": result, "object": object}))).into_response())
}

/// Paths under `/v1/` that are not kinds but are worth their own label.
const OTHER_LABELS: &[&str] = &["users", "whoami", "secrets"];

/// The metrics label of a path segment: a known kind's plural or one of
/// [`OTHER_LABELS`], else `-`. Never the client's text: a label set that
/// clients could grow would grow `/metrics` without bound.
fn kind_label(segment: &str) -> &'static str {
    corral_api_types::kind_info(segment)
        .map(|k| k.plural)
        .or_else(|| OTHER_LABELS.iter().copied().find(|l| *l == segment))
        .unwrap_or("-")
}

/// What the metrics middleware needs to know about a request.
pub(crate) fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> (&'static str, &'static str) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let (kind, depth) = match segments.as_slice() {
        ["v1", "projects", _, "status"] => ("projects", 2),
        ["v1", "projects", _, plural, rest @ ..] => (kind_label(plural), rest.len() + 1),
        ["v1", "projects", rest @ ..] => ("projects", rest.len() + 1),
        ["v1", "apply"] => ("*", 0),
        ["v1", plural, rest @ ..] => (kind_label(plural), rest.len() + 1),
        _ => ("-", 0),
    };
    let status = segments.last() == Some(&"status");
    let verb = match (method.as_str(), depth, status) {
        ("POST", 0, _) => "apply",
        (_, _, true) if method == Method::PUT => "update_status",
        (_, _, true) => "get_status",
        ("GET", 1, _) if watch => "watch",
        ("GET", 1, _) => "list",
        ("POST", 1, _) => "create",
        ("GET", _, _) => "get",
        ("PUT", _, _) => "update",
        ("DELETE", _, _) => "delete",
        _ => "other",
    };
    (verb, kind)
}
