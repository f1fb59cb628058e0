//! The EC2-compatible instance metadata service (IMDSv1 and IMDSv2) that
//! guests reach at 169.254.169.254:80.
//!
//! The host DNATs 169.254.169.254:80 to a listener of this service on the
//! gateway address of the guest's network, so a connection says who is
//! asking by its two ends: the *local* address is the gateway of the guest's
//! network on this host, the *peer* address is the guest's own IP (the host
//! firewall drops guest traffic with a source address that is not the
//! guest's). [`MetadataTable`] maps exactly that pair to one instance's
//! [`InstanceMetadata`].
//!
//! Invariants:
//! - identity comes from the TCP connection only, never from anything in the
//!   request (`Host`, `X-Forwarded-For`, the query): a pair that is not in
//!   the table gets 404 for every request, so no guest can read another's
//!   data;
//! - IMDSv2 tokens are stateless: an HMAC, under a random key held by the
//!   table, over the (local, peer) pair, the instance id and the expiry. A
//!   token is good only for the instance it was issued to, on any listener
//!   sharing the table, until it expires or the agent restarts (clients
//!   then get 401 and ask for a new one, as on EC2);
//! - expiry is measured on the monotonic clock: a wall-clock jump neither
//!   extends nor cuts a token's life;
//! - no input makes the service panic or answer 500; requests with an
//!   oversized target or header block are refused before any work;
//! - one guest address holds at most 16 connections, each closed after 5 s
//!   without I/O, and [`serve`] returns at most [`SHUTDOWN_GRACE`] after its
//!   shutdown signal: no guest can take the agent's file descriptors or
//!   hold up its shutdown.
//!
//! The answers follow EC2's: `text/plain` values and listings (one entry a
//! line, no trailing newline, directories with a trailing `/`), a trailing
//! `/` on a leaf is ignored (botocore asks for
//! `placement/availability-zone/`), dated versions show only the categories
//! that existed at that version, and errors are EC2's small HTML pages
//! (`404 - Not Found`, `401 - Unauthorized`, ...).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Where guests reach the service; the host DNATs it to a listener of
/// [`serve`] on the guest network's gateway address.
pub const METADATA_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80);

/// Request header carrying an IMDSv2 token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Request header asking for a token's lifetime; echoed on the answer.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Longest token lifetime EC2 grants (six hours), in seconds.
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;

/// Metadata versions, oldest first, as `GET /` lists them. Plain string
/// order is version order: `1.0` < dates < `latest`.
const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "latest",
];

/// The only path that issues tokens.
const TOKEN_PATH: &str = "/latest/api/token";
/// Longest request target accepted, in bytes.
const MAX_URI_BYTES: usize = 1024;
/// Largest header block accepted (names and values), in bytes.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longer tokens cannot be ours; refused before decoding.
const MAX_TOKEN_CHARS: usize = 128;

/// What one instance sees. Built by the agent from the Instance and the
/// objects it names; the service only reads it.
#[derive(Clone, Debug, Default)]
pub struct InstanceMetadata {
    /// EC2 id, `i-` and 17 hex digits.
    pub instance_id: String,
    /// The project's EC2 account id (`ownerId`), for the identity document.
    pub account_id: String,
    /// `ami-…` of the boot image; absent when booted from a volume.
    pub ami_id: Option<String>,
    /// `aki-…`/`ari-…` of a separately booted kernel and ramdisk.
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub instance_type: String,
    /// `x86_64`, `arm64`, … (identity document).
    pub architecture: String,
    /// `local-hostname` and `hostname`.
    pub hostname: String,
    /// The first interface's private address.
    pub local_ipv4: String,
    /// Floating address mapped to `local_ipv4`, if any.
    pub public_ipv4: Option<String>,
    pub public_hostname: Option<String>,
    /// The first interface's MAC; `mac` and `network/` are left out when
    /// empty.
    pub mac: String,
    pub availability_zone: String,
    pub region: String,
    /// (key name, OpenSSH public key), served as `public-keys/N`.
    pub public_keys: Vec<(String, String)>,
    /// Served raw at `/{version}/user-data`; absent or empty gives 404.
    pub user_data: Option<Vec<u8>>,
    /// Security group names.
    pub security_groups: Vec<String>,
    pub reservation_id: Option<String>,
    /// `pendingTime` in the identity document.
    pub launch_time: Option<DateTime<Utc>>,
    /// IMDSv2 only (EC2's `HttpTokens=required`): requests without a valid
    /// token get 401.
    pub http_tokens_required: bool,
}

type Entries = HashMap<(Ipv4Addr, Ipv4Addr), Arc<InstanceMetadata>>;

/// Who is who on this host: (local gateway address, guest address) →
/// metadata. Cheap to clone; every clone sees the same set and the same
/// token key, so one table can back every listener of the agent.
#[derive(Clone)]
pub struct MetadataTable {
    inner: Arc<TableInner>,
}

struct TableInner {
    entries: RwLock<Arc<Entries>>,
    tokens: TokenKey,
}

impl MetadataTable {
    /// An empty table with a fresh random token key.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(TableInner {
                entries: RwLock::new(Arc::new(HashMap::new())),
                tokens: TokenKey::random(),
            }),
        }
    }

    /// Replaces the whole set at once: a request sees either the old set or
    /// the new one. Keys are (local gateway address, guest address); when a
    /// key repeats, the last entry wins.
    pub fn set<I, M>(&self, entries: I)
    where
        I: IntoIterator<Item = ((Ipv4Addr, Ipv4Addr), M)>,
        M: Into<Arc<InstanceMetadata>>,
    {
        let mut next = HashMap::new();
        for (key, md) in entries {
            if let Some(old) = next.insert(key, md.into()) {
                tracing::warn!(
                    local = %key.0, peer = %key.1, dropped = %old.instance_id,
                    "two instances claim one metadata address; the last wins"
                );
            }
        }
        *self
            .inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }

    /// The instance answering to a guest at `peer` that reached us on
    /// `local`.
    pub fn get(&self, local: Ipv4Addr, peer: Ipv4Addr) -> Option<Arc<InstanceMetadata>> {
        self.snapshot().get(&(local, peer)).cloned()
    }

    /// Number of instances in the table.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<Entries> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Default for MetadataTable {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MetadataTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token key stays out of logs.
        f.debug_struct("MetadataTable")
            .field("instances", &self.len())
            .finish_non_exhaustive()
    }
}

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
                Some(slot) => return (GuestStream::new(stream, slot), peer),
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

/// A guest's connection: fails with `TimedOut` once no I/O has made
/// progress for [`IDLE_TIMEOUT`], and frees its [`PeerSlot`] when dropped.
struct GuestStream {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    _slot: PeerSlot,
}

impl GuestStream {
    fn new(stream: TcpStream, slot: PeerSlot) -> Self {
        Self {
            stream,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _slot: slot,
        }
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

/// Both ends of the TCP connection a request came on.
#[derive(Clone, Copy, Debug)]
struct ConnectionAddrs {
    local: Option<SocketAddr>,
    peer: SocketAddr,
}

impl Connected<IncomingStream<'_, GuestListener>> for ConnectionAddrs {
    fn connect_info(stream: IncomingStream<'_, GuestListener>) -> Self {
        Self {
            local: stream.io().stream.local_addr().ok(),
            peer: *stream.remote_addr(),
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
    match (local, peer) {
        (Some(local), Some(peer)) => {
            let r = answer(&table, local, peer, &method, &uri, &headers);
            tracing::debug!(%local, %peer, %method, path, status = status_of(&r), "metadata request");
            r
        }
        _ => {
            tracing::debug!(peer = %conn.peer, %method, path, "metadata request on a non-IPv4 connection");
            error(StatusCode::NOT_FOUND)
        }
    }
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
        return (
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

// ---------------------------------------------------------------------------
// The tree of paths.

/// What a path resolves to.
enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// A node of the `meta-data/` tree.
enum Node {
    Leaf(String),
    /// Children in listing order: (path segment, how the listing shows it,
    /// node).
    Dir(Vec<(String, String, Node)>),
}

impl Node {
    fn text(self) -> String {
        match self {
            Node::Leaf(s) => s,
            Node::Dir(children) => children
                .into_iter()
                .map(|(_, listed, _)| listed)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A directory listed in name order, subdirectories with a trailing `/`.
/// Empty values are left out: EC2 has no empty categories, and clients
/// (botocore) retry an empty answer as a failure.
fn dir(children: Vec<(&str, Node)>) -> Node {
    let mut children: Vec<_> = children
        .into_iter()
        .filter(|(_, node)| !matches!(node, Node::Leaf(s) if s.is_empty()))
        .map(|(name, node)| {
            let listed = match node {
                Node::Dir(_) => format!("{name}/"),
                Node::Leaf(_) => name.to_string(),
            };
            (name.to_string(), listed, node)
        })
        .collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Node::Dir(children)
}

fn leaf(s: impl Into<String>) -> Node {
    Node::Leaf(s.into())
}

/// Resolves a request path for `md`, or `None` for 404.
fn resolve(md: &InstanceMetadata, path: &str) -> Option<Value> {
    if path == "/" {
        return Some(Value::Text(VERSIONS.join("\n")));
    }
    // One trailing slash is insignificant; empty segments are not paths.
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segs: Vec<&str> = trimmed.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let version = *VERSIONS.iter().find(|v| **v == segs[0])?;
    let has_dynamic = version >= "2009-04-04";
    let user_data = md.user_data.as_ref().filter(|d| !d.is_empty());
    match &segs[1..] {
        [] => {
            let mut top = Vec::new();
            if has_dynamic {
                top.push("dynamic");
            }
            top.push("meta-data");
            if user_data.is_some() {
                top.push("user-data");
            }
            Some(Value::Text(top.join("\n")))
        }
        ["user-data"] => user_data.map(|d| Value::Bytes(d.clone())),
        ["meta-data", rest @ ..] => walk(meta_data(md, version), rest).map(Value::Text),
        ["dynamic", rest @ ..] if has_dynamic => {
            let identity = dir(vec![("document", leaf(identity_document(md)))]);
            walk(dir(vec![("instance-identity", identity)]), rest).map(Value::Text)
        }
        _ => None,
    }
}

fn walk(mut node: Node, path: &[&str]) -> Option<String> {
    for seg in path {
        let Node::Dir(children) = node else {
            return None;
        };
        node = children.into_iter().find(|(name, ..)| name == seg)?.2;
    }
    Some(node.text())
}

/// The `meta-data/` tree of `md` as `version` shows it.
fn meta_data(md: &InstanceMetadata, version: &str) -> Node {
    let mut c: Vec<(&str, Node)> = Vec::new();
    let mut add = |since: &str, name: &'static str, node: Node| {
        if version >= since {
            c.push((name, node));
        }
    };
    if let Some(ami) = &md.ami_id {
        add("1.0", "ami-id", leaf(ami));
    }
    add("1.0", "ami-launch-index", leaf("0"));
    add("1.0", "hostname", leaf(&md.hostname));
    add("1.0", "instance-id", leaf(&md.instance_id));
    add("2007-08-29", "instance-type", leaf(&md.instance_type));
    if let Some(k) = &md.kernel_id {
        add("2008-02-01", "kernel-id", leaf(k));
    }
    add("2007-01-19", "local-hostname", leaf(&md.hostname));
    add("1.0", "local-ipv4", leaf(&md.local_ipv4));
    let mac = md.mac.to_ascii_lowercase();
    if !mac.is_empty() {
        add("2011-01-01", "mac", leaf(&mac));
        add("2011-01-01", "network", network(md, &mac));
    }
    let mut placement = vec![("availability-zone", leaf(&md.availability_zone))];
    // EC2 added the region in 2020-08-24, a build it does not list.
    if version >= "2020-08-24" {
        placement.push(("region", leaf(&md.region)));
    }
    add("2008-02-01", "placement", dir(placement));
    if let Some(h) = &md.public_hostname {
        add("2007-01-19", "public-hostname", leaf(h));
    }
    if let Some(ip) = &md.public_ipv4 {
        add("2007-01-19", "public-ipv4", leaf(ip));
    }
    if !md.public_keys.is_empty() {
        add("1.0", "public-keys", public_keys(&md.public_keys));
    }
    if let Some(r) = &md.ramdisk_id {
        add("2008-02-01", "ramdisk-id", leaf(r));
    }
    if let Some(r) = &md.reservation_id {
        add("1.0", "reservation-id", leaf(r));
    }
    if !md.security_groups.is_empty() {
        add(
            "1.0",
            "security-groups",
            leaf(md.security_groups.join("\n")),
        );
    }
    dir(c)
}

/// `public-keys/`: listed as `N=name`, entered as `N/`, holding
/// `openssh-key`; kept in key order (`10` after `9`).
fn public_keys(keys: &[(String, String)]) -> Node {
    Node::Dir(
        keys.iter()
            .enumerate()
            .map(|(i, (name, key))| {
                let node = dir(vec![("openssh-key", leaf(key))]);
                (i.to_string(), format!("{i}={name}"), node)
            })
            .collect(),
    )
}

/// `network/interfaces/macs/<mac>/` for the one interface served.
fn network(md: &InstanceMetadata, mac: &str) -> Node {
    let mut iface = vec![
        ("device-number", leaf("0")),
        ("local-hostname", leaf(&md.hostname)),
        ("local-ipv4s", leaf(&md.local_ipv4)),
        ("mac", leaf(mac)),
    ];
    if let Some(ip) = &md.public_ipv4 {
        iface.push(("public-ipv4s", leaf(ip)));
        iface.push((
            "ipv4-associations",
            Node::Dir(vec![(ip.clone(), ip.clone(), leaf(&md.local_ipv4))]),
        ));
    }
    if let Some(h) = &md.public_hostname {
        iface.push(("public-hostname", leaf(h)));
    }
    if !md.security_groups.is_empty() {
        iface.push(("security-groups", leaf(md.security_groups.join("\n"))));
    }
    let macs = Node::Dir(vec![(mac.to_string(), format!("{mac}/"), dir(iface))]);
    dir(vec![("interfaces", dir(vec![("macs", macs)]))])
}

/// `dynamic/instance-identity/document`, with EC2's field names.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    image_id: Option<&'a str>,
    instance_id: &'a str,
    instance_type: &'a str,
    kernel_id: Option<&'a str>,
    pending_time: Option<String>,
    private_ip: &'a str,
    ramdisk_id: Option<&'a str>,
    region: &'a str,
    version: &'static str,
}

fn identity_document(md: &InstanceMetadata) -> String {
    let doc = IdentityDocument {
        account_id: &md.account_id,
        architecture: &md.architecture,
        availability_zone: &md.availability_zone,
        image_id: md.ami_id.as_deref(),
        instance_id: &md.instance_id,
        instance_type: &md.instance_type,
        kernel_id: md.kernel_id.as_deref(),
        pending_time: md
            .launch_time
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        private_ip: &md.local_ipv4,
        ramdisk_id: md.ramdisk_id.as_deref(),
        region: &md.region,
        version: "2017-09-30",
    };
    // Serialising borrowed strings and options cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// IMDSv2 tokens.

/// Why a token was refused (logged, never shown to the guest).
#[derive(Debug, thiserror::Error)]
enum TokenError {
    #[error("token is not one of ours")]
    Malformed,
    #[error("token was not issued to this instance by this agent")]
    Forged,
    #[error("token has expired")]
    Expired,
}

/// Token layout before base64url: format byte, expiry (ms on the key's
/// monotonic clock, big-endian u64), HMAC-SHA256 tag.
const TOKEN_FORMAT: u8 = 1;
const TOKEN_BYTES: usize = 1 + 8 + 32;

struct TokenKey {
    key: [u8; 32],
    epoch: Instant,
}

impl TokenKey {
    fn random() -> Self {
        Self {
            key: rand::random(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, local: Ipv4Addr, peer: Ipv4Addr, instance_id: &str, expiry: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        m.update(b"corral-imds-token\0");
        m.update(&local.octets());
        m.update(&peer.octets());
        m.update(&(instance_id.len() as u64).to_be_bytes());
        m.update(instance_id.as_bytes());
        m.update(&expiry.to_be_bytes());
        m
    }

    fn issue(&self, local: Ipv4Addr, peer: Ipv4Addr, instance_id: &str, ttl: u32) -> String {
        let expiry = self.now_ms().saturating_add(u64::from(ttl) * 1000);
        let tag = self
            .mac(local, peer, instance_id, expiry)
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(TOKEN_BYTES);
        raw.push(TOKEN_FORMAT);
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&tag);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn verify(
        &self,
        token: &str,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        instance_id: &str,
    ) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != TOKEN_BYTES || raw[0] != TOKEN_FORMAT {
            return Err(TokenError::Malformed);
        }
        let (expiry, tag) = raw[1..].split_at(8);
        let expiry_bytes: [u8; 8] = expiry.try_into().map_err(|_| TokenError::Malformed)?;
        let expiry = u64::from_be_bytes(expiry_bytes);
        self.mac(local, peer, instance_id, expiry)
            .verify_slice(tag)
            .map_err(|_| TokenError::Forged)?;
        if self.now_ms() >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "web".into(),
            local_ipv4: "10.0.0.5".into(),
            mac: "52:54:00:AA:BB:CC".into(),
            availability_zone: "nova-a".into(),
            region: "nova".into(),
            public_keys: (0..11)
                .map(|i| (format!("k{i}"), format!("ssh-ed25519 K{i}")))
                .collect(),
            ..Default::default()
        }
    }

    fn text(md: &InstanceMetadata, path: &str) -> Option<String> {
        match resolve(md, path)? {
            Value::Text(t) => Some(t),
            Value::Bytes(_) => None,
        }
    }

    #[test]
    fn versions_compare_as_strings() {
        let mut sorted = VERSIONS.to_vec();
        sorted.sort();
        assert_eq!(sorted, VERSIONS);
    }

    #[test]
    fn public_keys_keep_numeric_order_and_leaves_ignore_a_trailing_slash() {
        let m = md();
        let listing = text(&m, "/latest/meta-data/public-keys/").unwrap();
        assert!(listing.starts_with("0=k0\n1=k1\n2=k2"), "{listing}");
        assert!(listing.ends_with("9=k9\n10=k10"), "{listing}");
        assert_eq!(
            text(&m, "/latest/meta-data/public-keys/10/openssh-key/").unwrap(),
            "ssh-ed25519 K10"
        );
        assert_eq!(
            text(&m, "/latest/meta-data/mac").unwrap(),
            "52:54:00:aa:bb:cc"
        );
        assert_eq!(text(&m, "/latest//meta-data"), None);
        assert_eq!(text(&m, "latest/meta-data"), None);
    }

    #[test]
    fn empty_values_are_not_served() {
        let mut m = md();
        m.instance_type.clear();
        m.security_groups = vec![];
        m.user_data = Some(vec![]);
        let listing = text(&m, "/latest/meta-data/").unwrap();
        assert!(!listing.contains("instance-type"), "{listing}");
        assert!(!listing.contains("security-groups"), "{listing}");
        assert_eq!(text(&m, "/latest/meta-data/instance-type"), None);
        assert_eq!(text(&m, "/latest/").unwrap(), "dynamic\nmeta-data");
        assert!(resolve(&m, "/latest/user-data").is_none());
    }

    #[test]
    fn tokens_bind_pair_instance_and_expiry() {
        let k = TokenKey::random();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 5));
        let t = k.issue(a, b, "i-1", 60);
        assert!(k.verify(&t, a, b, "i-1").is_ok());
        assert!(matches!(k.verify(&t, a, b, "i-2"), Err(TokenError::Forged)));
        assert!(matches!(k.verify(&t, b, a, "i-1"), Err(TokenError::Forged)));
        assert!(matches!(
            TokenKey::random().verify(&t, a, b, "i-1"),
            Err(TokenError::Forged)
        ));
        assert!(matches!(
            k.verify("x", a, b, "i-1"),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            k.verify(&"A".repeat(55), a, b, "i-1"),
            Err(TokenError::Malformed)
        ));
    }
}
