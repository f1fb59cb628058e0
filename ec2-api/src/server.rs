//! The HTTP side: one handler for every path and method, which parses,
//! authenticates, dispatches and renders.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::Utc;
use corral_store::ResourceStore;

use crate::actions::{self, Ctx};
use crate::auth::{Authenticator, RequestParts};
use crate::error::Ec2Error;
use crate::query::Params;
use crate::xml;

/// Largest request body accepted (user data is at most 16 KiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Requests per access key by default: EC2's own request-token buckets
/// are smaller; this only stops a runaway client starving the others.
pub const DEFAULT_RATE: corral_api_types::rate::RateLimit = corral_api_types::rate::RateLimit {
    burst: 1000,
    per_second: 200.0,
};

/// Settings of the façade.
#[derive(Debug, Clone)]
pub struct Ec2Config {
    /// The region this endpoint answers for (`corral up` writes
    /// `corral-1` into the AWS config it creates). Requests signed for any
    /// region are accepted.
    pub region: String,
    /// Requests per access key; beyond it `RequestLimitExceeded`, which
    /// AWS SDKs and the CLI retry with backoff.
    pub rate: corral_api_types::rate::RateLimit,
    /// What `RegisterImage`'s `ImageLocation` may name on the server's
    /// host (the native API's rules, [`corral_store::import`]).
    pub imports: Arc<corral_store::import::ImportPolicy>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            region: "corral-1".to_string(),
            rate: DEFAULT_RATE,
            imports: Default::default(),
        }
    }
}

/// Shared state of the façade.
#[derive(Clone)]
pub struct Ec2State {
    pub store: ResourceStore,
    pub auth: Arc<Authenticator>,
    pub config: Arc<Ec2Config>,
    /// Decoded Instances by (key, revision), reused across requests.
    pub decoded: Arc<crate::decoded::DecodedInstances>,
    /// Request rate per access key.
    pub limiter: Arc<corral_api_types::rate::RateLimiter>,
    /// Failed authentications per peer address: past it, a peer's
    /// requests are refused before their body is read.
    pub unauthenticated: Arc<corral_api_types::rate::RateLimiter>,
}

/// Failed authentications one peer address may make on the EC2 API: a
/// burst, then a few a second.
pub const UNAUTHENTICATED_RATE: corral_api_types::rate::RateLimit =
    corral_api_types::rate::RateLimit {
        burst: 50,
        per_second: 5.0,
    };

impl Ec2State {
    pub fn new(store: ResourceStore, config: Ec2Config) -> Ec2State {
        Ec2State {
            auth: Arc::new(Authenticator::new(store.clone())),
            store,
            limiter: Arc::new(corral_api_types::rate::RateLimiter::new(config.rate)),
            unauthenticated: Arc::new(corral_api_types::rate::RateLimiter::new(
                UNAUTHENTICATED_RATE,
            )),
            config: Arc::new(config),
            decoded: Arc::default(),
        }
    }
}

/// The router: every path, GET and POST.
pub fn router(state: Ec2State) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Serves the façade on `listener` (plain TCP, or TLS) with the
/// connection limits of [`corral_tls::Limits`] until `shutdown` completes.
pub async fn serve(
    state: Ec2State,
    listener: impl Into<corral_tls::Listen>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    corral_tls::serve(
        listener.into(),
        router(state),
        corral_tls::Limits::default(),
        shutdown,
    )
    .await
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn is_form(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => ct
            .trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded"),
    }
}

async fn handle(
    State(state): State<Ec2State>,
    peer: Option<axum::Extension<corral_tls::Peer>>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let peer = peer.map(|p| p.0 .0.ip().to_string());
    // A peer whose signatures keep failing is refused before its body is
    // read (SigV2 clients sign inside the body, so it cannot always be
    // judged sooner).
    if let Some(ip) = &peer {
        if state
            .unauthenticated
            .exhausted(ip, Instant::now())
            .is_some()
        {
            let e = Ec2Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "Request limit exceeded: too many failed authentications from this address.",
            );
            return xml_response(
                e.status,
                xml::error_response(&e, &uuid::Uuid::new_v4().to_string()),
            );
        }
    }
    // HTTP/2 carries the host as the :authority pseudo-header, which hyper
    // puts in the URI: it is the "host" that SigV4 and SigV2 sign.
    if !headers.contains_key(header::HOST) {
        if let Some(value) = uri
            .authority()
            .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, value);
        }
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let e = Ec2Error::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("The request body exceeds {MAX_BODY_BYTES} bytes"),
            );
            return xml_response(e.status, xml::error_response(&e, &request_id));
        }
    };
    let raw_query = uri.query().unwrap_or("");
    let mut params = Params::parse(raw_query.as_bytes());
    if method == Method::POST && !body.is_empty() && is_form(&headers) {
        params.insert_missing(Params::parse(&body));
    }
    let action = params.get("Action").unwrap_or("").to_string();
    let parts = RequestParts {
        method: method.as_str(),
        raw_path: uri.path(),
        raw_query,
        headers: &headers,
        body: &body,
        params: &params,
    };
    let result = process(&state, &parts, &action, &request_id).await;
    if let (Err(e), Some(ip)) = (&result, &peer) {
        if e.status == StatusCode::UNAUTHORIZED {
            let _ = state.unauthenticated.check(ip, Instant::now());
        }
    }
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    let (project, response) = match result {
        Ok((project, doc)) => {
            let version = xml::namespace_version(params.get("Version"));
            (
                project,
                xml_response(
                    StatusCode::OK,
                    xml::response(&action, version, &request_id, doc),
                ),
            )
        }
        Err(e) => (
            String::new(),
            xml_response(e.status, xml::error_response(&e, &request_id)),
        ),
    };
    tracing::info!(
        request_id,
        action = %crate::query::clip(&action),
        project,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ec2 request"
    );
    response
}

async fn process(
    state: &Ec2State,
    parts: &RequestParts<'_>,
    action: &str,
    request_id: &str,
) -> Result<(String, xml::Xml), Ec2Error> {
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(Ec2Error::client(
            "InvalidHttpRequest",
            "Only GET and POST requests are supported",
        ));
    }
    let caller = state.auth.authenticate(parts, Utc::now()).await?;
    if state
        .limiter
        .check(&caller.access_key_id, Instant::now())
        .is_err()
    {
        return Err(Ec2Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        ));
    }
    if action.is_empty() {
        return Err(Ec2Error::client(
            "MissingAction",
            "The request must contain the parameter Action",
        ));
    }
    let dry_run = parts.params.bool("DryRun")?.unwrap_or(false);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let ctx = Ctx {
        store: &state.store,
        caller: &caller,
        params: parts.params,
        dry_run,
        config: &state.config,
        decoded: &state.decoded,
        host,
        request_id,
    };
    let doc = actions::dispatch(&ctx, action).await?;
    Ok((caller.project.clone(), doc))
}
