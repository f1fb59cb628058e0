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

mod apply;
mod items;
mod lists;

use apply::apply;
use items::*;
use lists::*;

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
    /// The largest image upload taken, bytes.
    image_upload_limit: std::sync::atomic::AtomicU64,
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
            image_upload_limit: crate::content::IMAGE_UPLOAD_LIMIT.into(),
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

    /// The largest image upload this server takes, bytes (default
    /// [`crate::content::IMAGE_UPLOAD_LIMIT`]).
    pub fn image_upload_limit(&self) -> u64 {
        self.image_upload_limit
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_image_upload_limit(&self, bytes: u64) {
        self.image_upload_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
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
