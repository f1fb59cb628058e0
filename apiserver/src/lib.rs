//! The native API server: REST over every kind, watch streams, admission
//! (defaulting and validation from api-types), authentication and
//! per-project authorization, administration of users and credentials,
//! OpenAPI, health and Prometheus metrics.
//!
//! It owns the API semantics on top of the store: server-set metadata,
//! `generation` bumps on spec change, finalizers and `deletionTimestamp`,
//! optimistic concurrency surfaced as 409, compaction as 410. It must not
//! hold state of its own (several servers share one store) and must not
//! check that referenced objects exist — GitOps applies in any order; the
//! controllers report missing references as conditions.
//!
//! What one request or client may ask for is bounded; [`limits`] lists
//! every limit, its value and its answer.

pub mod admin;
pub mod auth;
pub mod content;
pub mod error;
pub mod host_refs;
pub mod kinds;
pub mod limits;
pub mod list;
pub mod memberships;
mod metrics;
pub mod node_refs;
mod openapi;
pub mod rotate;
pub mod server;
mod watch_cache;

use std::net::SocketAddr;

pub use admin::{bootstrap, Bootstrap};
pub use error::ApiError;
pub use server::{router, ApiState};

/// Serves the API on `listener` (plain TCP, or TLS) with the connection
/// limits of [`corral_tls::Limits`] until `shutdown` resolves.
pub async fn serve(
    state: std::sync::Arc<ApiState>,
    listener: impl Into<corral_tls::Listen>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    corral_tls::serve(
        listener.into(),
        router(state),
        corral_tls::Limits::default(),
        shutdown,
    )
    .await
}

/// Binds `addr` (helper for callers that only have an address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
