//! [`Client`]: one `reqwest::Client` with the server's base URL and a
//! bearer token, JSON in and out, Kubernetes-style `Status` error bodies
//! turned into a typed [`ApiStatus`], list paging and NDJSON watch
//! streams.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Page size the CLI asks for when listing.
pub const PAGE_SIZE: usize = 500;

use corral_api_types::wire::{List, Status as StatusBody, WatchLine};
pub use corral_api_types::wire::{StatusCause as Cause, StatusDetails};

/// A non-2xx answer of the API, from its `Status` body.
#[derive(Debug, Clone)]
pub struct ApiStatus {
    /// The HTTP status code.
    pub code: u16,
    /// `NotFound`, `Invalid`, `Forbidden`, ...
    pub reason: String,
    pub message: String,
    pub details: Option<StatusDetails>,
}

impl ApiStatus {
    /// Builds the error from an answer's status and body; a body that is not
    /// a `Status` object becomes the message as it is.
    pub fn from_body(status: StatusCode, body: &[u8]) -> ApiStatus {
        let canonical = status
            .canonical_reason()
            .unwrap_or("Error")
            .replace(' ', "");
        match serde_json::from_slice::<StatusBody>(body) {
            Ok(b) if !b.message.is_empty() || !b.reason.is_empty() => ApiStatus {
                code: if b.code == 0 { status.as_u16() } else { b.code },
                reason: if b.reason.is_empty() {
                    canonical
                } else {
                    b.reason
                },
                message: b.message,
                details: b.details,
            },
            _ => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                ApiStatus {
                    code: status.as_u16(),
                    message: if text.is_empty() {
                        format!("the server answered {status}")
                    } else {
                        format!("the server answered {status}: {text}")
                    },
                    reason: canonical,
                    details: None,
                }
            }
        }
    }

    /// The field problems of a 422 answer (empty otherwise).
    pub fn causes(&self) -> &[Cause] {
        self.details
            .as_ref()
            .map(|d| d.causes.as_slice())
            .unwrap_or_default()
    }

    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    /// 410: the resourceVersion was compacted; relist.
    pub fn is_expired(&self) -> bool {
        self.code == 410 || self.reason == "Expired"
    }
}

impl fmt::Display for ApiStatus {
    /// `Instance "web" is invalid:` followed by one indented line per field
    /// problem for 422 answers; the server's message otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.details {
            Some(d) if !d.causes.is_empty() => {
                let what = match (d.kind.as_str(), d.name.as_str()) {
                    ("", "") => "the object".to_string(),
                    (kind, "") => kind.to_string(),
                    ("", name) => format!("{name:?}"),
                    (kind, name) => format!("{kind} {name:?}"),
                };
                write!(f, "{what} is invalid:")?;
                for c in &d.causes {
                    if c.field.is_empty() {
                        write!(f, "\n  {}", c.message)?;
                    } else {
                        write!(f, "\n  {}: {}", c.field, c.message)?;
                    }
                }
                Ok(())
            }
            _ => f.write_str(&self.message),
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status (boxed: it is the big
    /// one, and errors travel by value).
    Api(Box<ApiStatus>),
    /// Nothing listens at the server's address.
    Unreachable { url: String },
    /// The TLS handshake failed: most often a certificate this client
    /// does not trust (wrong CA) or a plain-HTTP server.
    Tls { url: String, reason: String },
    /// Any other transport problem.
    Transport(String),
    /// The client could not be set up (a bad URL or CA).
    Config(String),
    /// The answer was not the JSON we expected.
    Decode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api(s) => s.fmt(f),
            ClientError::Unreachable { url } => write!(
                f,
                "cannot reach the Corral API at {url} (is `corral up` running?)"
            ),
            ClientError::Tls { url, reason } => write!(
                f,
                "TLS with the Corral API at {url} failed, nothing was sent: {reason} \
                 (the client trusts the CA in caFile of its config, or CORRAL_CA_FILE; \
                 `corral up` writes its CA beside the config)"
            ),
            ClientError::Transport(m) => write!(f, "talking to the Corral API: {m}"),
            ClientError::Config(m) => f.write_str(m),
            ClientError::Decode(m) => write!(f, "unexpected answer from the Corral API: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The API status, when the server answered with an error.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            ClientError::Api(s) => Some(&**s),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(ApiStatus::is_not_found)
    }

    /// The HTTP status code, when the server answered with an error.
    pub fn code(&self) -> Option<u16> {
        self.status().map(|s| s.code)
    }
}

/// The innermost cause of a reqwest error, for messages.
/// The rustls error under a failed request, if TLS is what failed.
fn tls_problem(e: &reqwest::Error) -> Option<String> {
    // The connector nests it in io::Errors, whose source() skips the
    // error they wrap: look inside them too.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

/// One event of a watch stream.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR`.
    pub kind: String,
    pub object: Value,
}

impl WatchEvent {
    /// The object's `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
    }
}

/// An open watch: newline-delimited JSON events.
pub struct WatchStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Longest silence tolerated before the stream is taken for dead.
    idle_timeout: Duration,
}

impl WatchStream {
    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let raw: WatchLine = serde_json::from_slice(line)
                    .map_err(|e| ClientError::Decode(format!("watch event: {e}")))?;
                return Ok(Some(WatchEvent {
                    kind: raw.kind,
                    object: raw.object,
                }));
            }
            let chunk = tokio::time::timeout(self.idle_timeout, self.response.chunk())
                .await
                .map_err(|_| ClientError::Transport("the watch stream went silent".to_string()))?
                .map_err(|e| ClientError::Transport(root_cause(&e)))?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// A list's items, and the revision to watch from after them.
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: String,
}

/// Client of the native API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
    /// How long one request may take (not streams, downloads or uploads).
    timeout: Duration,
}

/// Heartbeat asked of watch streams; a stream silent for three of them is
/// considered dead.
pub const WATCH_HEARTBEAT_SECONDS: u64 = 5;

impl Client {
    /// A client of the server at `server` (`https://host:port`) that
    /// trusts only `ca_pem` (the server's CA, PEM) when given, else the
    /// system's roots.
    pub fn with_ca(server: &str, token: &str, ca_pem: Option<&str>) -> Result<Client, ClientError> {
        let config = |m: String| ClientError::Config(m);
        let base = Url::parse(server)
            .map_err(|e| config(format!("invalid server URL {server:?}: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(config(format!(
                "invalid server URL {server:?}: not an http(s) URL"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| config(format!("the server's CA is not a PEM certificate: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| config(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.to_string(),
            timeout: Duration::from_secs(60),
        })
    }

    /// The server's base URL as configured.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `path` (starting with `/`) under the base URL, with `query`.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    /// A request that got no answer, in words that say what to check.
    fn transport_error(&self, path: &str, e: &reqwest::Error) -> ClientError {
        if let Some(reason) = tls_problem(e) {
            ClientError::Tls {
                url: self.server_root(),
                reason,
            }
        } else if e.is_connect() {
            ClientError::Unreachable {
                url: self.server_root(),
            }
        } else if e.is_timeout() {
            ClientError::Transport(format!("{path}: the server did not answer in time"))
        } else {
            ClientError::Transport(root_cause(e))
        }
    }

    fn server_root(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path, query);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req
            .send()
            .await
            .map_err(|e| self.transport_error(path, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::Api(Box::new(ApiStatus::from_body(
            status, &body,
        ))))
    }

    /// A GET answered with raw bytes.
    pub async fn get_bytes(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(Method::GET, path, query, None, Some(self.timeout))
            .await?;
        Ok(response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(root_cause(&e)))?
            .to_vec())
    }

    /// A PUT of raw bytes (streamed; no timeout), answered with JSON.
    pub async fn put_stream(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: reqwest::Body,
        length: u64,
    ) -> Result<Value, ClientError> {
        let response = self
            .http
            .put(self.url(path, query))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(path, &e))?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Api(Box::new(ApiStatus::from_body(
                status, &bytes,
            ))));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A request answered with JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let response = self
            .send(method, path, query, body, Some(self.timeout))
            .await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(root_cause(&e)))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    /// A request whose every HTTP answer is returned as it came — status
    /// and body (JSON, or the text as a string, or null when empty) —
    /// for callers that judge the status themselves (conformance tests,
    /// probes). `path` may end in `?query`. Only a request that got no
    /// answer is an error.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        // `path` may carry its own query, sent as written.
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut url = self.url(path, &[]);
        url.set_query(query);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req
            .send()
            .await
            .map_err(|e| self.transport_error(path, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(root_cause(&e)))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// The same server and connection pool, speaking with another token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_string(),
            ..self.clone()
        }
    }

    /// The same client, giving up on a request after `timeout` (60 s by
    /// default; watches, downloads and uploads are not bounded by it).
    pub fn with_timeout(self, timeout: Duration) -> Client {
        Client { timeout, ..self }
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.request(Method::GET, path, query, None).await
    }

    /// `GET`, with 404 as `None`.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>, ClientError> {
        match self.get(path, &[]).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn post(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.request(Method::POST, path, query, Some(body)).await
    }

    pub async fn put(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, query, Some(body)).await
    }

    pub async fn delete(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, query, None).await
    }

    /// Starts a GET whose (large) body the caller reads in chunks.
    pub async fn download(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, ClientError> {
        self.send(Method::GET, path, query, None, None).await
    }

    /// The list-and-watch loop on a list path: see [`crate::Watcher`].
    pub fn watcher(&self, path: &str, query: &[(&str, &str)]) -> crate::Watcher {
        crate::Watcher::new(self.clone(), path, query)
    }

    /// Every item of a list, following `continue` tokens.
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<ListResult, ClientError> {
        self.list_paged(path, query, PAGE_SIZE).await
    }

    /// Every item of a list, asking for `page_size` items at a time (0:
    /// all at once) and following `continue` tokens.
    pub async fn list_paged(
        &self,
        path: &str,
        query: &[(&str, &str)],
        page_size: usize,
    ) -> Result<ListResult, ClientError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let limit = page_size.to_string();
        loop {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            if page_size > 0 {
                q.push(("limit", &limit));
            }
            if let Some(t) = &token {
                q.push(("continue", t));
            }
            let page: List = serde_json::from_value(self.get(path, &q).await?)
                .map_err(|e| ClientError::Decode(format!("{path}: {e}")))?;
            items.extend(page.items);
            token = page.metadata.continue_token.filter(|c| !c.is_empty());
            if token.is_none() {
                return Ok(ListResult {
                    items,
                    resource_version: page.metadata.resource_version,
                });
            }
        }
    }

    /// Opens a watch on a list path (`?watch=true` is added, with a short
    /// heartbeat so a dead stream is noticed).
    pub async fn watch(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<WatchStream, ClientError> {
        let heartbeat = WATCH_HEARTBEAT_SECONDS.to_string();
        let mut q: Vec<(&str, &str)> = query.to_vec();
        q.push(("watch", "true"));
        q.push(("heartbeatSeconds", &heartbeat));
        let response = self.send(Method::GET, path, &q, None, None).await?;
        Ok(WatchStream {
            response,
            buffer: Vec::new(),
            idle_timeout: Duration::from_secs(WATCH_HEARTBEAT_SECONDS * 3),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_renders_one_cause_per_line() {
        let body = br#"{"kind":"Status","status":"Failure","code":422,"reason":"Invalid","message":"Instance \"web\" is invalid: a; b","details":{"kind":"Instance","name":"web","causes":[{"field":"spec.nics[0].network","message":"must be a DNS label"},{"field":"spec.cpus","message":"too many"}]}}"#;
        let s = ApiStatus::from_body(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(s.code, 422);
        assert_eq!(s.reason, "Invalid");
        assert_eq!(
            s.to_string(),
            "Instance \"web\" is invalid:\n  spec.nics[0].network: must be a DNS label\n  spec.cpus: too many"
        );
    }

    #[test]
    fn other_statuses_render_their_message() {
        let body = br#"{"kind":"Status","code":404,"reason":"NotFound","message":"instances \"x\" not found"}"#;
        let s = ApiStatus::from_body(StatusCode::NOT_FOUND, body);
        assert!(s.is_not_found());
        assert_eq!(s.to_string(), "instances \"x\" not found");
        let s = ApiStatus::from_body(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(s.code, 502);
        assert_eq!(s.reason, "BadGateway");
        assert!(s.to_string().contains("upstream down"));
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_queries() {
        let c = Client::with_ca("http://127.0.0.1:8774/corral/", "t", None).unwrap();
        let u = c.url("/v1/instances", &[("labelSelector", "app in (a,b)")]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8774/corral/v1/instances?labelSelector=app+in+%28a%2Cb%29"
        );
        assert!(Client::with_ca("not a url", "t", None).is_err());
    }
}
