//! Rotating the key that seals secrets at rest (`corral admin
//! rotate-secrets-key`): a new key is put first in the server's key file,
//! every sealed field (every EC2 secret access key) is rewritten with it,
//! and, when asked and every rewrite succeeded, the older keys are dropped
//! from the file.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use corral_api_types::auth::{AccessKey, Role};
use corral_store::{ListOptions, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::{parse_body, principal, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/secrets/rotate", post(rotate))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    /// Drop the older keys once everything is sealed with the new one.
    #[serde(default)]
    retire_old: bool,
}

async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let p = principal(&state, &headers).await?;
    if p.role != Role::Admin {
        return Err(ApiError::forbidden(format!(
            "user {:?} is not an admin",
            p.user
        )));
    }
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_path_to_error::deserialize(parse_body(&headers, &body)?).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid rotation request: {}: {}",
                e.path(),
                e.inner()
            ))
        })?
    };
    let Some(keys) = state.store.secrets().cloned() else {
        return Err(ApiError::bad_request(
            "this server seals no secrets (it has no secrets key file)",
        ));
    };
    // One rotation at a time per server.
    let _one = state.issuing.lock().await;
    let key_id = keys.rotate().map_err(|e| {
        tracing::error!(error = %e, "rotating the secrets key");
        ApiError::internal("the secrets key file could not be written; see the server's log")
    })?;
    let mut resealed = 0usize;
    let mut failed = Vec::new();
    let listed = state
        .store
        .list::<AccessKey>(None, ListOptions::default())
        .await?;
    for key in listed.items {
        let name = key.metadata.name.clone();
        let mut current = Some(key);
        // Re-read on a conflict (a concurrent lastUsed update).
        for _ in 0..5 {
            let Some(k) = current.take() else { break };
            match state.store.update(&k).await {
                Ok(_) => {
                    resealed += 1;
                    break;
                }
                Err(StoreError::Conflict { .. }) => {
                    current = state.store.get::<AccessKey>("", &name).await?;
                }
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => {
                    tracing::warn!(key = %name, error = %e, "resealing an access key");
                    failed.push(name.to_ascii_uppercase());
                    break;
                }
            }
        }
    }
    let retired = if req.retire_old && failed.is_empty() {
        keys.retire_old().map_err(|e| {
            tracing::error!(error = %e, "retiring old secrets keys");
            ApiError::internal("the secrets key file could not be written; see the server's log")
        })?
    } else {
        0
    };
    tracing::info!(%key_id, resealed, retired, "rotated the secrets key");
    Ok(Json(json!({
        "keyId": key_id,
        "resealed": resealed,
        "failed": failed,
        "retiredKeys": retired,
    })))
}

/// Seals the secrets still stored in clear (written before this server
/// had a key file) with the current key; answers how many. Run at start.
pub async fn seal_in_clear(store: &corral_store::ResourceStore) -> Result<usize, StoreError> {
    if store.secrets().is_none() {
        return Ok(0);
    }
    let prefix = corral_store::kind_prefix::<AccessKey>(None);
    let page = store.raw().list(&prefix, ListOptions::default()).await?;
    let mut sealed = 0;
    for kv in page.items {
        let text = String::from_utf8_lossy(&kv.value);
        if text.contains("\"secretAccessKey\":\"enc:v1:") {
            continue;
        }
        let Some(name) = kv.key.rsplit('/').next() else {
            continue;
        };
        if let Some(key) = store.get::<AccessKey>("", name).await? {
            match store.update(&key).await {
                Ok(_) => sealed += 1,
                // Written meanwhile: that write sealed it.
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(sealed)
}
