//! Serving a router on a [`Listen`] with the limits every listener needs
//! against clients that would exhaust the server before they are even
//! authenticated: a cap on open connections in all and per peer address,
//! a deadline for a request's headers (slowloris), HTTP/2 streams per
//! connection bounded and dead peers pinged out. Each request carries its
//! peer's address ([`Peer`]) for the limits that come after.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::{watch, Semaphore};
use tower_service::Service;

use crate::Listen;

/// What one listener allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_per_peer: usize,
    /// A request's headers must arrive within this (HTTP/1; the time a
    /// kept-alive connection may sit idle before its next request, too).
    pub header_timeout: Duration,
    /// Concurrent streams of one HTTP/2 connection.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_per_peer: 512,
            header_timeout: Duration::from_secs(15),
            h2_max_streams: 256,
        }
    }
}

/// The address a request came from (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Connections open per peer address.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its peer; uncounted when dropped.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl PeerCounts {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().expect("peer counts");
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("peer counts");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// open connections finish their requests (callers bound how long).
pub async fn serve(
    mut listener: Listen,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(PeerCounts::default());
    // Dropped on shutdown: every connection task then shuts down
    // gracefully; each holds a receiver of `closed` until it is done.
    let (stop_tx, stop_rx) = watch::channel(());
    let (closed_tx, closed_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, max = limits.max_connections, "connection refused: the listener is full");
            continue;
        };
        let Some(slot) = peers.take(addr.ip(), limits.max_per_peer) else {
            tracing::debug!(peer = %addr, max = limits.max_per_peer, "connection refused: too many from this peer");
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(Peer(addr));
            let mut router = router.clone();
            async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
        });
        let mut stop = stop_rx.clone();
        let closed = closed_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.h2_max_streams)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            let mut conn =
                std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(peer = %addr, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop((permit, slot, closed));
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(closed_rx);
    // Every connection task holds a receiver: closed() resolves when all
    // are done.
    closed_tx.closed().await;
    Ok(())
}
