//! Serving a router on a [`Listen`] with the limits every listener needs
//! against clients that would exhaust the server before they are even
//! authenticated: a cap on open connections in all and per peer address,
//! a deadline for a request's headers (slowloris), a minimum rate for
//! its body (slow bodies), HTTP/2 streams per connection bounded and dead
//! peers pinged out. Each request carries its
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
    /// A request body must arrive within this, plus one second per
    /// [`Limits::body_min_rate`] bytes received (Apache's mod_reqtimeout
    /// `body=20,MinRate=…`): a client trickling a body is cut off, a slow
    /// but honest upload is not.
    pub body_grace: Duration,
    /// Bytes per second a body must average past its grace.
    pub body_min_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_per_peer: 512,
            header_timeout: Duration::from_secs(15),
            h2_max_streams: 256,
            body_grace: Duration::from_secs(20),
            body_min_rate: 1024,
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
        let (grace, rate) = (limits.body_grace, limits.body_min_rate);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|b| Body::new(MinRate::new(b, grace, rate)));
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

/// A request body that must keep a minimum rate: it fails once it is
/// behind `grace + received / rate` (see [`Limits::body_grace`]).
struct MinRate {
    inner: Incoming,
    started: tokio::time::Instant,
    received: u64,
    grace: Duration,
    rate: u64,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl MinRate {
    fn new(inner: Incoming, grace: Duration, rate: u64) -> MinRate {
        let started = tokio::time::Instant::now();
        MinRate {
            inner,
            started,
            received: 0,
            grace,
            rate: rate.max(1),
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
        }
    }

    fn due(&self) -> tokio::time::Instant {
        self.started + self.grace + Duration::from_secs(self.received / self.rate)
    }
}

/// The error a too-slow body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {rate} bytes/s after {grace:?}")]
struct TooSlow {
    rate: u64,
    grace: Duration,
}

impl hyper::body::Body for MinRate {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    let due = self.due();
                    self.deadline.as_mut().reset(due);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TooSlow {
                    rate: self.rate,
                    grace: self.grace,
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
