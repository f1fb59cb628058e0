//! The listener guests reach (through the host's DNAT) and the answer to
//! one request: identity from the connection's two addresses only, the
//! instance's options (endpoint off, tokens required, the hop limit as the
//! IP TTL of token answers), the IMDSv2 token checks, EC2's error pages,
//! and the limits that keep one guest from holding the agent's file
//! descriptors or its shutdown.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use super::token::TokenError;
use super::tree::{resolve, Value};
use super::{MetadataTable, MAX_TOKEN_TTL_SECONDS, TOKEN_HEADER, TOKEN_TTL_HEADER};

/// The only path that issues tokens.
const TOKEN_PATH: &str = "/latest/api/token";
/// Longest request target accepted, in bytes.
const MAX_URI_BYTES: usize = 1024;
/// Largest header block accepted (names and values), in bytes.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Serves the metadata service on `listener` until `shutdown` completes,
/// then finishes the requests under way (giving up on connections still
/// open [`SHUTDOWN_GRACE`] later). Requests are answered for the instance
/// `table` holds for the connection's (local, peer) addresses.
pub async fn serve(
    listener: TcpListener,
    table: MetadataTable,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(table);
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        GuestListener::new(listener),
        app.into_make_service_with_connect_info::<ConnectionAddrs>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    })
    .into_future();
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served,
        Ok(()) = stopped => {}
    }
    // Shutdown has begun: a guest that keeps a request trickling in must
    // not hold the agent up.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("metadata connections still open after the shutdown grace; left behind");
            Ok(())
        }
    }
}

/// How long [`serve`] waits for open connections after shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A connection with no byte read or written for this long is closed:
/// stalled requests and idle keep-alives alike.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one guest address may hold open at once; more are closed
/// on accept, so one guest cannot take the agent's file descriptors.
const MAX_CONNECTIONS_PER_PEER: usize = 16;

/// A [`TcpListener`] that caps connections per guest address and hands out
/// streams that close when idle.
struct GuestListener {
    inner: TcpListener,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl GuestListener {
    fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            open: Arc::default(),
        }
    }
}

impl axum::serve::Listener for GuestListener {
    type Io = GuestStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuestStream, SocketAddr) {
        loop {
            // axum's own accept logs and backs off on errors.
            let (stream, peer) = axum::serve::Listener::accept(&mut self.inner).await;
            match PeerSlot::take(&self.open, peer.ip()) {
                Some(slot) => return (GuestStream::new(stream, slot, AnswerTtl::default()), peer),
                None => {
                    tracing::debug!(%peer, "too many metadata connections from one guest; closed")
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One open connection counted against its peer address.
struct PeerSlot {
    peer: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerSlot {
    fn take(open: &Arc<Mutex<HashMap<IpAddr, usize>>>, peer: IpAddr) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(peer).or_default();
        if *n >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            peer,
            open: open.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// The IP TTL the next answer on a connection leaves with: set by the
/// handler of each request, applied by its [`GuestStream`] before the
/// answer's bytes are written (HTTP/1 answers one request at a time, so
/// the value set is the current answer's). `None`: the socket's default.
#[derive(Clone, Debug, Default)]
struct AnswerTtl(Arc<AtomicU32>);

impl AnswerTtl {
    fn set(&self, ttl: Option<u8>) {
        self.0.store(ttl.map_or(0, u32::from), Ordering::Relaxed);
    }

    fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }
}

/// Marks an answer that must leave with this IP TTL (the instance's hop
/// limit on token answers); `handle` hands it to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HopLimit(u8);

/// A guest's connection: fails with `TimedOut` once no I/O has made
/// progress for [`IDLE_TIMEOUT`], writes each answer with the IP TTL its
/// [`AnswerTtl`] asks for, and frees its [`PeerSlot`] when dropped.
struct GuestStream {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    ttl: AnswerTtl,
    /// The socket's own TTL, restored after an answer with another.
    default_ttl: u32,
    /// The TTL the socket has now.
    applied_ttl: u32,
    _slot: PeerSlot,
}

impl GuestStream {
    fn new(stream: TcpStream, slot: PeerSlot, ttl: AnswerTtl) -> Self {
        // Linux's default (net.ipv4.ip_default_ttl) if the socket will
        // not say.
        let default_ttl = stream.ttl().unwrap_or(64);
        Self {
            stream,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            ttl,
            default_ttl,
            applied_ttl: default_ttl,
            _slot: slot,
        }
    }

    /// Gives the socket the TTL the current answer asks for.
    fn apply_ttl(&mut self) {
        let want = self.ttl.get().unwrap_or(self.default_ttl);
        if want == self.applied_ttl {
            return;
        }
        if let Err(e) = self.stream.set_ttl(want) {
            // The answer still goes out, with the TTL the socket had.
            tracing::debug!(error = %e, ttl = want, "setting a metadata answer's IP TTL");
        }
        // Tried once per change, not once per write.
        self.applied_ttl = want;
    }

    /// Passes `ready` on (and restarts the idle clock), or fails the I/O
    /// when it has been pending too long.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        ready: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match ready {
            Poll::Ready(r) => {
                self.idle
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.watch(cx, ready)
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.apply_ttl();
        let ready = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, ready)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, ready)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Both ends of the TCP connection a request came on, and the TTL of its
/// answers.
#[derive(Clone, Debug)]
struct ConnectionAddrs {
    local: Option<SocketAddr>,
    peer: SocketAddr,
    ttl: AnswerTtl,
}

impl Connected<IncomingStream<'_, GuestListener>> for ConnectionAddrs {
    fn connect_info(stream: IncomingStream<'_, GuestListener>) -> Self {
        Self {
            local: stream.io().stream.local_addr().ok(),
            peer: *stream.remote_addr(),
            ttl: stream.io().ttl.clone(),
        }
    }
}

fn ipv4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

async fn handle(
    State(table): State<MetadataTable>,
    ConnectInfo(conn): ConnectInfo<ConnectionAddrs>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let local = conn.local.and_then(ipv4);
    let peer = ipv4(conn.peer);
    let path = uri.path();
    let status_of = |r: &Response| r.status().as_u16();
    let r = match (local, peer) {
        (Some(local), Some(peer)) => {
            let r = answer(&table, local, peer, &method, &uri, &headers);
            tracing::debug!(%local, %peer, %method, path, status = status_of(&r), "metadata request");
            r
        }
        _ => {
            tracing::debug!(peer = %conn.peer, %method, path, "metadata request on a non-IPv4 connection");
            error(StatusCode::NOT_FOUND)
        }
    };
    conn.ttl.set(r.extensions().get::<HopLimit>().map(|h| h.0));
    r
}

/// The answer to one request from `peer` reaching us on `local`.
fn answer(
    table: &MetadataTable,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URI_BYTES {
        return error(StatusCode::URI_TOO_LONG);
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let Some(md) = table.get(local, peer) else {
        return error(StatusCode::NOT_FOUND);
    };
    if !md.http_endpoint_enabled {
        // EC2's answer for an instance whose IMDS is turned off.
        return error(StatusCode::FORBIDDEN);
    }
    let path = uri.path();

    if path == TOKEN_PATH {
        if method != Method::PUT {
            return not_allowed("PUT");
        }
        // A proxy in front of the caller: EC2 refuses to issue tokens
        // through one, which is what stops SSRF via open proxies.
        if headers.contains_key("x-forwarded-for") {
            return error(StatusCode::FORBIDDEN);
        }
        let Some(ttl) = token_ttl(headers) else {
            return error(StatusCode::BAD_REQUEST);
        };
        let token = table.inner.tokens.issue(local, peer, &md.instance_id, ttl);
        let mut r = (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                (
                    header::HeaderName::from_static(TOKEN_TTL_HEADER),
                    HeaderValue::from(ttl),
                ),
            ],
            token,
        )
            .into_response();
        // The token travels at most the instance's hop limit.
        r.extensions_mut()
            .insert(HopLimit(md.http_put_response_hop_limit.max(1)));
        return r;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return not_allowed("GET, HEAD");
    }

    match headers.get(TOKEN_HEADER) {
        Some(value) => {
            let checked = value
                .to_str()
                .map_err(|_| TokenError::Malformed)
                .and_then(|t| table.inner.tokens.verify(t, local, peer, &md.instance_id));
            if let Err(e) = checked {
                tracing::debug!(%local, %peer, error = %e, "metadata token refused");
                return error(StatusCode::UNAUTHORIZED);
            }
        }
        None if md.http_tokens_required => return error(StatusCode::UNAUTHORIZED),
        None => {}
    }

    match resolve(&md, path) {
        Some(Value::Text(text)) => text_response(text),
        Some(Value::Bytes(bytes)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            bytes,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND),
    }
}

/// The requested token lifetime: exactly one header of 1..=21600 decimal
/// seconds.
fn token_ttl(headers: &HeaderMap) -> Option<u32> {
    let mut values = headers.get_all(TOKEN_TTL_HEADER).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    let s = value.to_str().ok()?;
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ttl: u32 = s.parse().ok()?;
    (1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl).then_some(ttl)
}

fn text_response(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        text,
    )
        .into_response()
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// EC2's error page: a small XHTML document titled with the status.
fn error(status: StatusCode) -> Response {
    let reason = match status {
        StatusCode::BAD_REQUEST => "Missing or Invalid Parameters",
        s => s.canonical_reason().unwrap_or("Error"),
    };
    let title = format!("{} - {reason}", status.as_u16());
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n \
         <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        Body::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::metadata::InstanceMetadata;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    fn table(md: InstanceMetadata) -> MetadataTable {
        let t = MetadataTable::new();
        t.set([((GW, GUEST), md)]);
        t
    }

    fn instance(hop_limit: u8) -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            http_put_response_hop_limit: hop_limit,
            ..Default::default()
        }
    }

    /// A request to `path` from the guest, as `handle` gets it: its
    /// answer, and the TTL it left the connection asking for.
    async fn request(
        t: &MetadataTable,
        method: Method,
        path: &str,
        ttl_header: bool,
    ) -> (StatusCode, Option<u32>) {
        let mut headers = HeaderMap::new();
        if ttl_header {
            headers.insert(TOKEN_TTL_HEADER, HeaderValue::from_static("60"));
        }
        let conn = ConnectionAddrs {
            local: Some(SocketAddr::from((GW, 8775))),
            peer: SocketAddr::from((GUEST, 40000)),
            ttl: AnswerTtl::default(),
        };
        // A leftover from an earlier answer on the connection.
        conn.ttl.set(Some(9));
        let r = handle(
            State(t.clone()),
            ConnectInfo(conn.clone()),
            method,
            path.parse().unwrap(),
            headers,
        )
        .await;
        (r.status(), conn.ttl.get())
    }

    #[tokio::test]
    async fn token_answers_ask_for_the_hop_limit_and_others_for_the_default() {
        let t = table(instance(3));
        let put = request(&t, Method::PUT, TOKEN_PATH, true).await;
        assert_eq!(put, (StatusCode::OK, Some(3)));
        let get = request(&t, Method::GET, "/latest/meta-data/instance-id", false).await;
        assert_eq!(get, (StatusCode::OK, None));
        // A refused token request carries no token, and no hop limit.
        let bad = request(&t, Method::PUT, TOKEN_PATH, false).await;
        assert_eq!(bad, (StatusCode::BAD_REQUEST, None));
        // EC2's default limit.
        let t = table(InstanceMetadata::default());
        let put = request(&t, Method::PUT, TOKEN_PATH, true).await;
        assert_eq!(put, (StatusCode::OK, Some(1)));
    }

    #[tokio::test]
    async fn a_turned_off_endpoint_forbids_everything() {
        let mut md = instance(1);
        md.http_endpoint_enabled = false;
        let t = table(md);
        for (method, path, ttl) in [
            (Method::PUT, TOKEN_PATH, true),
            (Method::GET, "/latest/meta-data/instance-id", false),
            (Method::GET, "/", false),
            (Method::GET, "/latest/meta-data/nope", false),
        ] {
            let r = request(&t, method.clone(), path, ttl).await;
            assert_eq!(r, (StatusCode::FORBIDDEN, None), "{method} {path}");
        }
    }

    /// The TTL asked for is the one the socket has when the answer is
    /// written, and the socket's own comes back after.
    #[tokio::test]
    async fn an_answer_is_written_with_the_ttl_asked_for() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let open = Arc::default();
        let slot = PeerSlot::take(&open, peer.ip()).unwrap();
        let ttl = AnswerTtl::default();
        let mut s = GuestStream::new(server, slot, ttl.clone());
        let default = s.stream.ttl().unwrap();
        assert_ne!(default, 2);
        ttl.set(Some(2));
        s.write_all(b"token").await.unwrap();
        assert_eq!(s.stream.ttl().unwrap(), 2);
        ttl.set(None);
        s.write_all(b"value").await.unwrap();
        assert_eq!(s.stream.ttl().unwrap(), default);
        drop(client);
    }
}
