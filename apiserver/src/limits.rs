//! The native API's limits on what one request or client may ask for.
//! Each exceeded limit is a 4xx Status naming it — never an OOM or a 500.
//!
//! | limit | value | answer |
//! |---|---|---|
//! | request body (resources, apply, admin) | [`BODY_LIMIT`] = 4 MiB | 413 `RequestEntityTooLarge` |
//! | objects per request | 1 (`/v1/apply` takes one object; there is no batch endpoint) | 422 |
//! | list page size (`limit`) | [`crate::list::MAX_LIMIT`] = 5000 | 400 `BadRequest` (not clamped) |
//! | list page bytes | [`LIST_BYTES`] = 16 MiB of objects | the rest after a continue token |
//! | concurrent watches per client (user) | [`DEFAULT_WATCHES_PER_CLIENT`] = 100 | 429 `TooManyRequests` |
//! | request rate per member (admins and node agents exempt) | [`MEMBER_RATE`]: burst 1000, then 200/s | 429 `TooManyRequests` with `Retry-After` |
//! | names, labels, annotations, tags, user data | api-types' validation: names are DNS labels (63) or subdomains (253), label keys/values 63 (prefix 253), annotations 256 KiB in all, 50 tags of 128/256, user data 16 KiB | 422 `Invalid` |
//! | JSON nesting | serde_json's 128 levels | 400 `BadRequest` |
//!
//! | authentication | before any body is read or route runs ([`authenticate_first`]); failed attempts per peer address [`UNAUTHENTICATED_RATE`]: burst 50, then 5/s | 401; then 429 `TooManyRequests` |
//! | connections (every listener, `corral_tls::Limits`) | 4096 open, 512 per peer address, headers within 15 s, 256 HTTP/2 streams each | closed at accept / at the deadline |
//! | metrics labels | kinds and a fixed list only, never request text | — |
//! | console push | [`crate::content::CONSOLE_PUT_LIMIT`] = 256 KiB | 413 `RequestEntityTooLarge` |
//! | API tokens / EC2 access keys per user | self-issued [`SELF_SERVICE_TOKENS`] = 10 / [`SELF_SERVICE_ACCESS_KEYS`] = 2; by an admin [`TOKENS_PER_USER`] = 100 / [`ACCESS_KEYS_PER_USER`] = 10 | 403 `LimitExceeded` |
//! | objects per project | count quotas (`spec.quotas`), defaulting to `corral_api_types::kinds::project::DEFAULT_COUNT_QUOTAS`: 100 security groups, key pairs, networks and images, 1000 snapshots | 403 `Forbidden` naming the quota |
//! | labels per object / rules per security group direction | 64 / 100 | 422 `Invalid` |
//!
//! Image uploads (`…/images/{name}/content`) are exempt from the body
//! limit: they stream to the blob store, after authentication, up to
//! [`crate::content::IMAGE_UPLOAD_LIMIT`] (64 GiB; 413 past it, the
//! partial file removed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Largest request body accepted (image content aside).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// How fast one member may send requests: generous enough for any tool,
/// tight enough that a runaway loop can't starve everyone else.
pub const MEMBER_RATE: corral_api_types::rate::RateLimit = corral_api_types::rate::RateLimit {
    burst: 1000,
    per_second: 200.0,
};

/// The answer to a client over its request rate.
pub fn too_many_requests(user: &str, wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        format!("{user} is sending requests faster than allowed; retry in {secs}s"),
    );
    e.retry_after = Some(secs);
    e
}

/// Concurrent watches one client may hold open by default.
pub const DEFAULT_WATCHES_PER_CLIENT: usize = 100;

/// API tokens a user may hold when issuing them for itself (an admin
/// issuing for a user is not limited). Each is a credential to revoke, and
/// unlimited self-service filled the store (300 in 0.7 s).
pub const SELF_SERVICE_TOKENS: usize = 10;

/// EC2 access keys a user may hold when issuing them for itself: AWS IAM's
/// limit of two per user (rotation needs no more).
pub const SELF_SERVICE_ACCESS_KEYS: usize = 2;

/// API tokens one user may hold at all, however issued (an admin issuing
/// for a user included): each is an object every server keeps in memory.
pub const TOKENS_PER_USER: usize = 100;

/// EC2 access keys one user may hold at all, however issued.
pub const ACCESS_KEYS_PER_USER: usize = 10;

fn too_large(len: Option<u64>) -> Response {
    let sent = len
        .map(|l| format!("is {l} bytes"))
        .unwrap_or_else(|| "is larger".into());
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("the request body {sent}; the limit is {BODY_LIMIT} bytes (4 MiB)"),
    )
    .into_response()
}

/// Answers a body over [`BODY_LIMIT`] (refused by the body extractor,
/// from its declared length or while reading) with a Status naming the
/// limit. The refusal itself stays with the extractor, after
/// authentication, as before: answering before the handler runs makes
/// clients still sending see a broken pipe instead of the 413.
pub async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return too_large(declared.filter(|l| *l > BODY_LIMIT as u64));
    }
    resp
}

/// Bytes of objects in one list answer: past them, the rest comes after a
/// continue token (however many items were asked for).
pub const LIST_BYTES: usize = 16 << 20;

/// Failed authentications one peer address may make: a burst, then a
/// few a second. A peer past it is answered 429 before its credentials
/// are looked at.
pub const UNAUTHENTICATED_RATE: corral_api_types::rate::RateLimit =
    corral_api_types::rate::RateLimit {
        burst: 50,
        per_second: 5.0,
    };

/// Middleware on every authenticated route: the credentials are checked
/// before any body is read or any handler runs, so an unauthenticated
/// client costs a header lookup, however large a body it announces; a
/// peer that keeps failing is refused without even that.
pub async fn authenticate_first(
    axum::extract::State(state): axum::extract::State<crate::server::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<corral_tls::Peer>()
        .map(|p| p.0.ip().to_string());
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = state.auth.authenticate(header).await {
        if let Some(ip) = &peer {
            if let Err(wait) = state.unauthenticated.check(ip, std::time::Instant::now()) {
                return too_many_requests(&format!("{ip} (unauthenticated)"), wait).into_response();
            }
        }
        return e.into_response();
    }
    next.run(req).await
}

/// Open watches per client.
#[derive(Clone)]
pub struct WatchSlots {
    inner: Arc<SlotsInner>,
}

struct SlotsInner {
    limit: AtomicUsize,
    open: Mutex<HashMap<String, usize>>,
}

impl Default for WatchSlots {
    fn default() -> Self {
        WatchSlots {
            inner: Arc::new(SlotsInner {
                limit: AtomicUsize::new(DEFAULT_WATCHES_PER_CLIENT),
                open: Mutex::default(),
            }),
        }
    }
}

/// One open watch; the slot is given back when dropped (the stream ended
/// or the client went away).
pub struct WatchSlot {
    inner: Arc<SlotsInner>,
    client: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock().expect("watch slots");
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

impl WatchSlots {
    pub fn set_limit(&self, limit: usize) {
        self.inner.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Watches `client` has open now.
    pub fn open(&self, client: &str) -> usize {
        let open = self.inner.open.lock().expect("watch slots");
        open.get(client).copied().unwrap_or(0)
    }

    /// A slot for one more watch of `client`, or 429.
    pub fn acquire(&self, client: &str) -> Result<WatchSlot, ApiError> {
        let limit = self.limit();
        let mut open = self.inner.open.lock().expect("watch slots");
        let n = open.entry(client.to_string()).or_insert(0);
        if *n >= limit {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "{client:?} has {n} watches open, the most one client may hold on this server ({limit}); close one first"
                ),
            ));
        }
        *n += 1;
        Ok(WatchSlot {
            inner: self.inner.clone(),
            client: client.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_client_and_given_back() {
        let slots = WatchSlots::default();
        slots.set_limit(2);
        let a = slots.acquire("u").unwrap();
        let _b = slots.acquire("u").unwrap();
        let err = slots.acquire("u").err().unwrap();
        assert_eq!(err.code, StatusCode::TOO_MANY_REQUESTS);
        assert!(err.message.contains("(2)"), "{}", err.message);
        let _other = slots.acquire("v").unwrap();
        drop(a);
        assert_eq!(slots.open("u"), 1);
        let _c = slots.acquire("u").unwrap();
    }
}
