//! Administration of users, their API tokens and EC2 access keys — what
//! `nova-manage user`/`project` did — and the first-start bootstrap.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use corral_api_types::auth::{AccessKey, ApiToken, Role, User, UserSpec};
use corral_api_types::{seeded_instance_types, InstanceType, Project, ProjectSpec, Resource};
use corral_store::{ListOptions, ResourceStore, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{
    access_key_name, create_user, issue_access_key, issue_token, IssuedCredentials, Principal,
};
use crate::error::ApiError;
use crate::server::{parse_body, principal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list_users).post(create))
        .route("/v1/users/{user}", get(get_user).delete(delete_user))
        .route(
            "/v1/users/{user}/tokens",
            get(list_held::<ApiToken>).post(new_token),
        )
        .route("/v1/users/{user}/tokens/{id}", delete(revoke_token))
        .route(
            "/v1/users/{user}/accesskeys",
            get(list_held::<AccessKey>).post(new_key),
        )
        .route("/v1/users/{user}/accesskeys/{id}", delete(revoke_key))
        .route("/v1/users/{user}/credentials", post(credentials))
}

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role != Role::Admin {
        return Err(ApiError::forbidden(format!(
            "user {:?} is not an admin",
            p.user
        )));
    }
    Ok(())
}

/// Admins manage anyone; a user may manage their own tokens and keys.
fn require_admin_or_self(p: &Principal, user: &str) -> Result<(), ApiError> {
    if p.role == Role::Admin || p.user == user {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "user {:?} may not manage user {user:?}",
            p.user
        )))
    }
}

/// Refuses an issue that would take `user` past the limits of
/// [`crate::limits`]: the self-service ones, or the higher ones an admin
/// issuing for anyone is held to. The caller holds `ApiState::issuing`
/// across this check and the issue.
async fn check_self_service(
    state: &AppState,
    p: &Principal,
    user: &str,
    tokens: usize,
    keys: usize,
) -> Result<(), ApiError> {
    use crate::limits::{
        ACCESS_KEYS_PER_USER, SELF_SERVICE_ACCESS_KEYS, SELF_SERVICE_TOKENS, TOKENS_PER_USER,
    };
    let admin = p.role == Role::Admin;
    let who = if admin { "an admin" } else { "a user itself" };
    let over = |what: &str, held: usize, adding: usize, limit: usize, route: &str| {
        if held + adding <= limit {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "LimitExceeded",
            format!(
                "user {user:?} holds {held} {what}, the most {who} may issue for a user is \
                 {limit}: revoke one first (DELETE /v1/users/{user}/{route}/ID)"
            ),
        ))
    };
    if tokens > 0 {
        let held = held_by::<ApiToken>(&state.store, user).await?.len();
        let limit = if admin {
            TOKENS_PER_USER
        } else {
            SELF_SERVICE_TOKENS
        };
        over("API tokens", held, tokens, limit, "tokens")?;
    }
    if keys > 0 {
        let held = held_by::<AccessKey>(&state.store, user).await?.len();
        let limit = if admin {
            ACCESS_KEYS_PER_USER
        } else {
            SELF_SERVICE_ACCESS_KEYS
        };
        over("EC2 access keys", held, keys, limit, "accesskeys")?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateUser {
    name: String,
    #[serde(default)]
    role: Role,
    #[serde(default)]
    project: String,
    #[serde(default)]
    node_name: String,
    /// Roles in further projects.
    #[serde(default)]
    memberships: Vec<corral_api_types::auth::ProjectRole>,
}

fn user_view(u: &User) -> Value {
    json!({
        "name": u.metadata.name,
        "role": u.spec.role,
        "project": u.spec.project,
        "projects": crate::memberships::projects_view(u),
        "nodeName": u.spec.node_name,
        "disabled": u.spec.disabled,
        "creationTimestamp": u.metadata.creation_timestamp,
    })
}

async fn all<K: Resource>(store: &ResourceStore) -> Result<Vec<K>, StoreError> {
    Ok(store.list::<K>(None, ListOptions::default()).await?.items)
}

/// A credential issued to one user: an API token or an EC2 access key.
trait Credential: Resource {
    fn user(&self) -> &str;
    /// How a list of the user's credentials shows it (never its secret).
    fn view(&self) -> Value;
}

impl Credential for ApiToken {
    fn user(&self) -> &str {
        &self.spec.user
    }

    fn view(&self) -> Value {
        json!({
            // The hash's first 12 hex digits identify a token for revocation.
            "id": &self.metadata.name[..12],
            "description": self.spec.description,
            "creationTimestamp": self.metadata.creation_timestamp,
        })
    }
}

impl Credential for AccessKey {
    fn user(&self) -> &str {
        &self.spec.user
    }

    fn view(&self) -> Value {
        json!({
            "accessKeyId": self.metadata.name.to_ascii_uppercase(),
            "status": if self.spec.disabled { "Inactive" } else { "Active" },
            "creationTimestamp": self.metadata.creation_timestamp,
        })
    }
}

/// The credentials of kind `K` that `user` holds.
async fn held_by<K: Credential>(store: &ResourceStore, user: &str) -> Result<Vec<K>, StoreError> {
    let mut held = all::<K>(store).await?;
    held.retain(|c| c.user() == user);
    Ok(held)
}

/// `201 Created` with `body`.
fn created(body: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    require_admin(&p)?;
    let req: CreateUser = serde_json::from_value(parse_body(&headers, &body)?)
        .map_err(|e| ApiError::bad_request(format!("invalid user: {e}")))?;
    let mut errors = corral_api_types::FieldErrors::default();
    if !corral_api_types::validate::is_dns_label(&req.name) {
        errors.push("name", corral_api_types::validate::DNS_LABEL_MSG);
    }
    match req.role {
        r if r.is_project_role() && req.project.is_empty() => {
            errors.push("project", "required for members and viewers")
        }
        Role::Node if req.node_name.is_empty() => errors.push("nodeName", "required for nodes"),
        _ => {}
    }
    if !req.memberships.is_empty() && !req.role.is_project_role() {
        errors.push("memberships", "only members and viewers hold project roles");
    }
    if req.memberships.len() > crate::memberships::MAX_MEMBERSHIPS {
        errors.push(
            "memberships",
            format!(
                "at most {} further projects",
                crate::memberships::MAX_MEMBERSHIPS
            ),
        );
    }
    for (i, m) in req.memberships.iter().enumerate() {
        if !m.role.is_project_role() {
            errors.push(format!("memberships[{i}].role"), "member or viewer");
        }
        if m.project == req.project || req.memberships[..i].iter().any(|o| o.project == m.project) {
            errors.push(format!("memberships[{i}].project"), "named twice");
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("User", &req.name, &errors));
    }
    let projects = std::iter::once(&req.project)
        .filter(|_| req.role.is_project_role())
        .chain(req.memberships.iter().map(|m| &m.project));
    for project in projects {
        if state.store.get::<Project>("", project).await?.is_none() {
            return Err(ApiError::not_found(format!(
                "project {project:?} not found"
            )));
        }
    }
    let issued = create_user(
        &state.store,
        &req.name,
        UserSpec {
            role: req.role,
            project: req.project,
            node_name: req.node_name,
            memberships: req.memberships,
            disabled: false,
        },
    )
    .await?;
    Ok(created(issued))
}

async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    require_admin(&p)?;
    let users = all::<User>(&state.store).await?;
    Ok(Json(
        json!({"items": users.iter().map(user_view).collect::<Vec<_>>()}),
    ))
}

async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, u) = managed_user(&state, &headers, &user).await?;
    Ok(Json(user_view(&u)))
}

async fn find_user(store: &ResourceStore, user: &str) -> Result<User, ApiError> {
    store
        .get::<User>("", user)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {user:?} not found")))
}

/// The caller and `user`, when the caller may manage `user` and it exists.
async fn managed_user(
    state: &AppState,
    headers: &HeaderMap,
    user: &str,
) -> Result<(Principal, User), ApiError> {
    let p = principal(state, headers).await?;
    require_admin_or_self(&p, user)?;
    let u = find_user(&state.store, user).await?;
    Ok((p, u))
}

/// `user`, once the caller may issue it `tokens` API tokens and `keys`
/// access keys; the guard keeps others from issuing until it is dropped.
async fn may_issue<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    user: &str,
    tokens: usize,
    keys: usize,
) -> Result<(User, tokio::sync::MutexGuard<'s, ()>), ApiError> {
    let (p, u) = managed_user(state, headers, user).await?;
    let issuing = state.issuing.lock().await;
    check_self_service(state, &p, user, tokens, keys).await?;
    Ok((u, issuing))
}

async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    require_admin(&p)?;
    if p.user == user {
        return Err(ApiError::bad_request("you cannot delete yourself"));
    }
    find_user(&state.store, &user).await?;
    // Credentials first: a half-deleted user must not keep working.
    for t in held_by::<ApiToken>(&state.store, &user).await? {
        state
            .store
            .delete::<ApiToken>("", &t.metadata.name, None)
            .await?;
        state.auth.revoked(&t.metadata.name);
    }
    for k in held_by::<AccessKey>(&state.store, &user).await? {
        state
            .store
            .delete::<AccessKey>("", &k.metadata.name, None)
            .await?;
    }
    let deleted: User = state.store.delete("", &user, None).await?;
    state.auth.revoked(&user);
    Ok(Json(user_view(&deleted)))
}

/// `GET /v1/users/{user}/tokens` and `.../accesskeys`: the user's
/// credentials of kind `K`.
async fn list_held<K: Credential>(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    managed_user(&state, &headers, &user).await?;
    let items: Vec<Value> = held_by::<K>(&state.store, &user)
        .await?
        .iter()
        .map(K::view)
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn new_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let (_, _issuing) = may_issue(&state, &headers, &user, 1, 0).await?;
    let token = issue_token(&state.store, &user, "issued by API").await?;
    Ok(created(json!({"user": user, "token": token})))
}

async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((user, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    require_admin_or_self(&p, &user)?;
    let matching: Vec<ApiToken> = held_by::<ApiToken>(&state.store, &user)
        .await?
        .into_iter()
        .filter(|t| id.len() >= 8 && t.metadata.name.starts_with(&id))
        .collect();
    match matching.as_slice() {
        [t] => {
            state
                .store
                .delete::<ApiToken>("", &t.metadata.name, None)
                .await?;
            state.auth.revoked(&t.metadata.name);
            Ok(Json(json!({"revoked": id})))
        }
        [] => Err(ApiError::not_found(format!(
            "user {user:?} has no token {id:?}"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "token id {id:?} is ambiguous"
        ))),
    }
}

async fn new_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let (_, _issuing) = may_issue(&state, &headers, &user, 0, 1).await?;
    let (id, secret) = issue_access_key(&state.store, &user).await?;
    Ok(created(
        json!({"user": user, "accessKeyId": id, "secretAccessKey": secret}),
    ))
}

async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((user, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    require_admin_or_self(&p, &user)?;
    let name = access_key_name(&id);
    match state.store.get::<AccessKey>("", &name).await? {
        Some(k) if k.spec.user == user => {
            state.store.delete::<AccessKey>("", &name, None).await?;
            Ok(Json(json!({"revoked": id})))
        }
        _ => Err(ApiError::not_found(format!(
            "user {user:?} has no access key {id:?}"
        ))),
    }
}

/// Fresh credentials for a user (a new token and a new access key), for
/// `corral credentials` to write into an rc file.
async fn credentials(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let (u, _issuing) = may_issue(&state, &headers, &user, 1, 1).await?;
    let token = issue_token(&state.store, &user, "corral credentials").await?;
    let (access_key_id, secret_access_key) = issue_access_key(&state.store, &user).await?;
    let issued = IssuedCredentials {
        user,
        role: u.spec.role,
        project: u.spec.project,
        token,
        access_key_id,
        secret_access_key,
    };
    Ok(created(issued))
}

/// What a first start created.
pub struct Bootstrap {
    /// Present only when the admin was created by this call.
    pub admin: Option<IssuedCredentials>,
}

/// Seeds what every installation has: the classic instance types, a
/// `default` project, and (once) an admin user with credentials.
pub async fn bootstrap(store: &ResourceStore, admin: &str) -> Result<Bootstrap, StoreError> {
    for it in seeded_instance_types() {
        match store.create::<InstanceType>(&it).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let default = Project::new("", "default", ProjectSpec::default());
    match store.create(&default).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    if store.get::<User>("", admin).await?.is_some() {
        return Ok(Bootstrap { admin: None });
    }
    // Several servers may start at once on a fresh etcd: whoever creates
    // the admin first issues its credentials; the others go on without.
    match create_user(
        store,
        admin,
        UserSpec {
            role: Role::Admin,
            ..Default::default()
        },
    )
    .await
    {
        Ok(issued) => Ok(Bootstrap {
            admin: Some(issued),
        }),
        Err(StoreError::AlreadyExists { .. }) => Ok(Bootstrap { admin: None }),
        Err(e) => Err(e),
    }
}
