//! `POST /v1/apply`: server-side apply of one manifest object.

use super::*;

pub(super) async fn apply(
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
