//! A user's roles in further projects (Keystone's `openstack role add
//! --user U --project P member`, Kubernetes' RoleBindings): admins grant
//! `member` or `viewer` in a project and take it back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::put;
use axum::{Json, Router};
use corral_api_types::auth::{ProjectRole, Role, User};
use corral_api_types::Project;
use corral_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::{parse_body, principal, AppState};

/// Further projects one user may hold a role in.
pub const MAX_MEMBERSHIPS: usize = 64;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/users/{user}/projects/{project}",
        put(grant).delete(ungrant),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Grant {
    role: Role,
}

/// The user's projects and roles, as `whoami` and `user get` show them.
pub fn projects_view(user: &User) -> Value {
    Value::Array(
        user.spec
            .project_roles()
            .into_iter()
            .map(|(p, r)| json!({"project": p, "role": r}))
            .collect(),
    )
}

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let p = principal(state, headers).await?;
    if p.role != Role::Admin {
        return Err(ApiError::forbidden(format!(
            "user {:?} is not an admin",
            p.user
        )));
    }
    Ok(())
}

/// Applies `change` to the user's spec by compare-and-swap, retrying a few
/// times against concurrent writers.
async fn edit(
    state: &AppState,
    name: &str,
    change: impl Fn(&mut User) -> Result<(), ApiError>,
) -> Result<User, ApiError> {
    for _ in 0..5 {
        let mut user = state
            .store
            .get::<User>("", name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("user {name:?} not found")))?;
        change(&mut user)?;
        match state.store.update(&user).await {
            Ok(u) => {
                // This server reads the user from the store until its
                // watch has the change: the next request sees the new role.
                state.auth.revoked(name);
                return Ok(u);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::from(StoreError::Conflict {
        key: format!("users/{name}"),
        expected: 0,
        current: 0,
    }))
}

async fn grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, project)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let req: Grant =
        serde_path_to_error::deserialize(parse_body(&headers, &body)?).map_err(|e| {
            ApiError::bad_request(format!("invalid role grant: {}: {}", e.path(), e.inner()))
        })?;
    if !req.role.is_project_role() {
        return Err(ApiError::bad_request(format!(
            "role: a project role is member or viewer, not {:?}",
            req.role
        )));
    }
    if state.store.get::<Project>("", &project).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "project {project:?} not found"
        )));
    }
    let user = edit(&state, &name, |u| {
        if !u.spec.role.is_project_role() {
            return Err(ApiError::bad_request(format!(
                "user {name:?} is {:?}: only members and viewers hold project roles",
                u.spec.role
            )));
        }
        if u.spec.project == project {
            // The home project's role is the user's own.
            u.spec.role = req.role;
            u.spec.memberships.retain(|m| m.project != project);
            return Ok(());
        }
        let held = u.spec.memberships.len();
        match u.spec.memberships.iter_mut().find(|m| m.project == project) {
            Some(m) => m.role = req.role,
            None if held >= MAX_MEMBERSHIPS => {
                return Err(ApiError::forbidden(format!(
                    "user {name:?} already holds roles in {MAX_MEMBERSHIPS} further projects"
                )))
            }
            None => u.spec.memberships.push(ProjectRole {
                project: project.clone(),
                role: req.role,
            }),
        }
        Ok(())
    })
    .await?;
    Ok(Json(
        json!({"user": name, "projects": projects_view(&user)}),
    ))
}

async fn ungrant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, project)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let user = edit(&state, &name, |u| {
        if u.spec.project == project {
            return Err(ApiError::bad_request(format!(
                "{project:?} is user {name:?}'s home project; delete the user or grant it another role"
            )));
        }
        let before = u.spec.memberships.len();
        u.spec.memberships.retain(|m| m.project != project);
        if u.spec.memberships.len() == before {
            return Err(ApiError::not_found(format!(
                "user {name:?} has no role in project {project:?}"
            )));
        }
        Ok(())
    })
    .await?;
    Ok(Json(
        json!({"user": name, "projects": projects_view(&user)}),
    ))
}
