//! Bytes that are not resources: an Image's content (uploaded by users,
//! pulled by node agents) and an Instance's serial console (pushed by its
//! node's agent, read by users).
//!
//! Image bytes live in the server's [`BlobStore`], named by sha256; the
//! Image's status records the digest. Console text lives in the store under
//! `/corral/consoles/<project>/<name>`, the newest [`CONSOLE_LIMIT`] bytes
//! only (EC2's GetConsoleOutput returns the last 64 KiB too).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use corral_api_types::auth::Role;
use corral_api_types::{Image, ImagePhase, ImageStatus, Instance};
use corral_store::blobs::{check_image_format, is_sha256, BlobStore};
use corral_store::StoreError;
use futures_util::StreamExt;

use crate::auth::{Principal, Verb};
use crate::error::ApiError;
use crate::server::{principal, AppState};

/// The most console bytes kept per instance.
pub const CONSOLE_LIMIT: usize = 64 * 1024;
/// The largest console push read (its newest [`CONSOLE_LIMIT`] are kept).
pub const CONSOLE_PUT_LIMIT: usize = 4 * CONSOLE_LIMIT;
/// The largest image upload a server takes unless told otherwise
/// (`ApiState::set_image_upload_limit`): far above any cloud image, and a
/// bound on the disk one upload can take.
pub const IMAGE_UPLOAD_LIMIT: u64 = 64 << 30;

fn upload_too_large(limit: u64, sent: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("the image upload {sent}; the limit is {limit} bytes"),
    )
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/projects/{project}/images/{name}/content",
            put(image_upload).get(image_download),
        )
        .route(
            "/v1/projects/{project}/instances/{name}/console",
            put(console_put).get(console_get).delete(console_delete),
        )
        // Image uploads are as large as images are.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn kind(name: &str) -> &'static corral_api_types::KindInfo {
    corral_api_types::kind_info(name).expect("a built-in kind")
}

fn blobs(state: &AppState) -> Result<&BlobStore, ApiError> {
    state.blobs().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoImageStore",
            "this server keeps no image bytes (it was started without a blob directory)",
        )
    })
}

async fn image_of(state: &AppState, project: &str, name: &str) -> Result<Image, ApiError> {
    state
        .store
        .get::<Image>(project, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("images {name:?} not found")))
}

/// `PUT .../images/NAME/content[?sha256=HEX]`: the image's bytes, for an
/// Image whose `spec.source.upload` is true.
async fn image_upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    let info = kind("Image");
    p.authorize(Verb::Update, info, Some(&project))?;
    if p.role == Role::Node {
        return Err(ApiError::forbidden("node agents do not upload images"));
    }
    let expect = q.get("sha256").map(|s| s.to_ascii_lowercase());
    if let Some(e) = &expect {
        if !is_sha256(e) {
            return Err(ApiError::bad_request(format!(
                "sha256: {e:?} is not 64 hex digits"
            )));
        }
    }
    let image = image_of(&state, &project, &name).await?;
    if !image.spec.source.upload {
        return Err(ApiError::invalid_field(
            "Image",
            &name,
            "spec.source.upload",
            "is not true: this image's bytes come from its url or path",
        ));
    }
    let store = blobs(&state)?.clone();
    let limit = state.image_upload_limit();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > limit) {
        return Err(upload_too_large(limit, &format!("is {len} bytes")));
    }
    // The file is written on a blocking thread, fed chunk by chunk; `None`
    // abandons it (the partial file is removed).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Bytes>>(8);
    let expect2 = expect.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = store.writer()?;
        while let Ok(chunk) = rx.recv() {
            match chunk {
                Some(c) => w.write_all(&c)?,
                None => return Ok(None),
            }
        }
        w.finish(expect2.as_deref()).map(Some)
    });
    let mut stream = body.into_data_stream();
    let mut failed = None;
    let mut received = 0u64;
    let mut too_large = false;
    while let Some(chunk) = stream.next().await {
        // What goes to the writer: the bytes, or `None` to abandon the
        // file (too large, or the body failed).
        let next = match chunk {
            Ok(c) => {
                received += c.len() as u64;
                if received > limit {
                    too_large = true;
                    None
                } else {
                    Some(c)
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                None
            }
        };
        let stop = next.is_none();
        let tx = tx.clone();
        let sent = tokio::task::spawn_blocking(move || tx.send(next))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if stop || !sent {
            break;
        }
    }
    drop(tx);
    let result = writer
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if too_large {
        return Err(upload_too_large(limit, "is larger"));
    }
    if let Some(e) = failed {
        return Err(ApiError::bad_request(format!("upload interrupted: {e}")));
    }
    let blob = result.map_err(|e| match e {
        corral_store::blobs::BlobError::Checksum { .. } => {
            ApiError::invalid_field("Image", &name, "sha256", &e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    })?;
    let Some(blob) = blob else {
        return Err(ApiError::bad_request("upload interrupted"));
    };
    if blob.size == 0 {
        return Err(ApiError::bad_request("the upload is empty"));
    }
    if let Err(why) = check_image_format(&blobs(&state)?.path(&blob.sha256)?, image.spec.format) {
        return Err(ApiError::invalid_field("Image", &name, "spec.format", &why));
    }
    // Record it in the status; the image controller sees Available.
    let sha = blob.sha256.clone();
    for _ in 0..10 {
        let Some(mut img) = state.store.get::<Image>(&project, &name).await? else {
            return Err(ApiError::not_found(format!("images {name:?} not found")));
        };
        img.status = Some(ImageStatus {
            phase: ImagePhase::Available,
            sha256: Some(sha.clone()),
            size_bytes: Some(blob.size),
            progress: 100,
            observed_generation: img.metadata.generation,
            ..img.status.clone().unwrap_or_default()
        });
        if let Some(s) = img.status.as_mut() {
            s.message = None;
        }
        match state.store.update(&img).await {
            Ok(_) => {
                let body = serde_json::json!({"sha256": sha, "sizeBytes": blob.size});
                return Ok((StatusCode::OK, axum::Json(body)).into_response());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "the image kept changing during the upload",
    ))
}

/// `GET .../images/NAME/content`: the bytes, for node agents and members.
async fn image_download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    p.authorize(Verb::Get, kind("Image"), Some(&project))?;
    let for_ = q.get("for").map(String::as_str);
    crate::node_refs::check(&state.store, &p, "images", &project, &name, for_).await?;
    let image = image_of(&state, &project, &name).await?;
    let status = image.status.unwrap_or_default();
    let (ImagePhase::Available, Some(sha)) = (status.phase, status.sha256) else {
        return Err(ApiError::conflict(format!(
            "image {name:?} is not available yet (phase {:?})",
            status.phase
        )));
    };
    let path = blobs(&state)?.path(&sha)?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ImageBytesMissing",
            format!("image {name:?} (sha256 {sha}) is not on this server: {e}"),
        )
    })?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{sha}\"")),
            (
                header::HeaderName::from_static("x-corral-sha256"),
                sha.clone(),
            ),
        ],
        body,
    )
        .into_response())
}

use corral_store::console_key;

/// The instance, if `p` may see it (a node: only when bound to it).
async fn visible_instance(
    state: &AppState,
    p: &Principal,
    verb: Verb,
    project: &str,
    name: &str,
) -> Result<Instance, ApiError> {
    let info = kind("Instance");
    p.authorize(verb, info, Some(project))?;
    let Some(i) = state.store.get::<Instance>(project, name).await? else {
        return Err(ApiError::not_found(format!("instances {name:?} not found")));
    };
    let v = serde_json::to_value(&i).map_err(|e| ApiError::internal(e.to_string()))?;
    if !p.may_touch_object(info, &v) {
        return Err(ApiError::not_found(format!("instances {name:?} not found")));
    }
    Ok(i)
}

/// `PUT .../instances/NAME/console`: the newest console bytes (node only).
async fn console_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    if p.role != Role::Node {
        return Err(ApiError::forbidden(
            "only the instance's node agent writes its console",
        ));
    }
    visible_instance(&state, &p, Verb::UpdateStatus, &project, &name).await?;
    // Read only now, authorized, and bounded.
    let body: Bytes = axum::body::to_bytes(body, CONSOLE_PUT_LIMIT)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("a console push is at most {CONSOLE_PUT_LIMIT} bytes (the newest {CONSOLE_LIMIT} are kept)"),
            )
        })?;
    let tail = if body.len() > CONSOLE_LIMIT {
        body.slice(body.len() - CONSOLE_LIMIT..)
    } else {
        body
    };
    let key = console_key(&project, &name);
    let raw = state.store.raw();
    for _ in 0..10 {
        let r = match raw.get(&key).await? {
            Some(kv) if kv.value == tail.as_ref() => {
                return Ok(StatusCode::NO_CONTENT.into_response())
            }
            Some(kv) => raw
                .update(&key, tail.to_vec(), kv.mod_revision)
                .await
                .map(|_| ()),
            None => raw.create(&key, tail.to_vec()).await.map(|_| ()),
        };
        match r {
            Ok(()) => return Ok(StatusCode::NO_CONTENT.into_response()),
            Err(StoreError::Conflict { .. }) | Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict("the console kept changing"))
}

/// `GET .../instances/NAME/console[?tail=BYTES]`: what the guest printed.
async fn console_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    visible_instance(&state, &p, Verb::Get, &project, &name).await?;
    let tail = match q.get("tail") {
        None => CONSOLE_LIMIT,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("tail: {t:?} is not a number of bytes")))?,
    };
    let bytes = state
        .store
        .raw()
        .get(&console_key(&project, &name))
        .await?
        .map(|kv| kv.value)
        .unwrap_or_default();
    let start = bytes.len().saturating_sub(tail);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes[start..].to_vec(),
    )
        .into_response())
}

/// `DELETE .../instances/NAME/console`: forgets it (the agent, on terminate).
async fn console_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let p = principal(&state, &headers).await?;
    if p.role != Role::Node && p.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only the instance's node agent clears its console",
        ));
    }
    if p.role == Role::Node {
        visible_instance(&state, &p, Verb::UpdateStatus, &project, &name).await?;
    }
    match state
        .store
        .raw()
        .delete(&console_key(&project, &name), None)
        .await
    {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

impl From<corral_store::blobs::BlobError> for ApiError {
    fn from(e: corral_store::blobs::BlobError) -> ApiError {
        match e {
            corral_store::blobs::BlobError::BadName(_) => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}
