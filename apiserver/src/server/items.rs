//! Collections and items of a kind: create, get, replace, status writes
//! and deletes, for project-scoped and cluster-scoped kinds (and the
//! Project kind's own deletion of what it holds).

use super::*;

pub(super) async fn project_collection(
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

pub(super) async fn cluster_collection(
    State(state): State<AppState>,
    headers: HeaderMap,
    plural: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let kind = state.kind(&cluster_plural(plural))?;
    // Project kinds listed here span every project.
    list_or_watch(&state, &p, kind, None, &q).await
}

pub(super) async fn project_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Project).await?;
    p.authorize(Verb::Create, kind.info(), Some(&project))?;
    let body = body_of(&headers, &body)?;
    require_project(&state, &project).await?;
    let created = kind.create(&project, body, dry_run(&q), p.role).await?;
    Ok(created_response(created))
}

pub(super) async fn cluster_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    plural: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &cluster_plural(plural), Scope::Cluster).await?;
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

/// The plural of a cluster path; `/v1/projects` has none in the route.
fn cluster_plural(plural: Option<Path<String>>) -> String {
    plural.map(|Path(p)| p).unwrap_or_else(|| "projects".into())
}

/// The caller and the kind at `plural`, when that kind has `scope`.
async fn scoped_kind<'s>(
    state: &'s ApiState,
    headers: &HeaderMap,
    plural: &str,
    scope: Scope,
) -> Result<(Principal, &'s Arc<dyn KindApi>), ApiError> {
    let p = principal(state, headers).await?;
    let kind = state.kind(plural)?;
    check_scope(kind.info(), scope)?;
    Ok((p, kind))
}

pub(super) fn created_response(json: Vec<u8>) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

// ---- items -------------------------------------------------------------------

pub(super) fn member_own_project(p: &Principal, project: &str) -> Result<(), ApiError> {
    if p.is_tenant() && p.role_in(project).is_none() {
        return Err(ApiError::forbidden(format!(
            "user {:?} may not see project {project:?}",
            p.user
        )));
    }
    Ok(())
}

pub(super) async fn item_get(
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

pub(super) async fn item_put(
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

pub(super) async fn status_put(
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

pub(super) async fn item_delete(
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

pub(super) async fn project_item_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Project).await?;
    let for_ = q.get("for").map(String::as_str);
    crate::node_refs::check(&state.store, &p, kind.info().plural, &project, &name, for_).await?;
    item_get(&state, &p, kind, Some(&project), &name).await
}

pub(super) async fn project_item_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Project).await?;
    item_put(&p, kind, Some(&project), &name, &headers, &body, &q).await
}

pub(super) async fn project_status_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Project).await?;
    status_put(&state, &p, kind, Some(&project), &name, &headers, &body).await
}

pub(super) async fn project_item_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, plural, name)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Project).await?;
    item_delete(&p, kind, Some(&project), &name, &q).await
}

pub(super) async fn project_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    member_own_project(&p, &project)?;
    let kind = state.kind("projects")?;
    item_get(&state, &p, kind, None, &project).await
}

pub(super) async fn project_put(
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

pub(super) async fn project_delete(
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

pub(super) async fn cluster_item_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Cluster).await?;
    item_get(&state, &p, kind, None, &name).await
}

pub(super) async fn cluster_item_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Cluster).await?;
    item_put(&p, kind, None, &name, &headers, &body, &q).await
}

pub(super) async fn cluster_status_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Cluster).await?;
    status_put(&state, &p, kind, None, &name, &headers, &body).await
}

pub(super) async fn cluster_item_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(params): Path<Vec<(String, String)>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (plural, name) = plural_name(&params)?;
    let (p, kind) = scoped_kind(&state, &headers, &plural, Scope::Cluster).await?;
    item_delete(&p, kind, None, &name, &q).await
}

pub(super) fn plural_name(params: &[(String, String)]) -> Result<(String, String), ApiError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get("plural"), get("name")) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(ApiError::not_found("no such path")),
    }
}
