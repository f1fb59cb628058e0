//! The agent's view of the native API: it never sees the store, only
//! HTTP with its node-scoped token.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the API")]
    Unreachable(#[source] reqwest::Error),
    #[error("{code}: {message}")]
    Status { code: u16, message: String },
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// One watch event.
#[derive(Debug, serde::Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub object: Value,
}

impl ApiClient {
    /// A client trusting the system's roots (or speaking plain HTTP).
    pub fn new(base: &str, token: &str) -> ApiClient {
        ApiClient::with_ca(base, token, None).expect("a client without a CA always builds")
    }

    /// A client that trusts only `ca_pem` (the server's CA) for `https://`
    /// servers; without it, the system's roots.
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Result<ApiClient, ApiError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ApiError::Decode(format!("the server's CA: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: builder
                .build()
                .map_err(|e| ApiError::Decode(format!("building the HTTP client: {e}")))?,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(ApiError::Unreachable)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Err(ApiError::Status {
            code,
            message: body["message"].as_str().unwrap_or("").to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ApiError> {
        match self
            .send(
                self.http
                    .get(format!("{}{path}", self.base))
                    .timeout(Duration::from_secs(30)),
            )
            .await
        {
            Ok(r) => r
                .json()
                .await
                .map(Some)
                .map_err(|e| ApiError::Decode(e.to_string())),
            Err(ApiError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .json(body)
                .timeout(Duration::from_secs(30)),
        )
        .await?
        .json()
        .await
        .map_err(|e| ApiError::Decode(e.to_string()))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .json(body)
                .timeout(Duration::from_secs(30)),
        )
        .await?
        .json()
        .await
        .map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// Starts a GET whose (large) body the caller reads in chunks.
    pub async fn download(&self, path: &str) -> Result<reqwest::Response, ApiError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// PUTs raw bytes.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<(), ApiError> {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .header("content-type", "application/octet-stream")
                .body(body)
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.send(
            self.http
                .delete(format!("{}{path}", self.base))
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map(|_| ())
    }

    /// All items of a list path, following continue tokens, and the
    /// revision to watch from.
    pub async fn list(&self, path: &str) -> Result<(Vec<Value>, String), ApiError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &token {
                Some(t) => format!("{}{path}{sep}limit=500&continue={t}", self.base),
                None => format!("{}{path}{sep}limit=500", self.base),
            };
            let page: Value = self
                .send(self.http.get(url).timeout(Duration::from_secs(60)))
                .await?
                .json()
                .await
                .map_err(|e| ApiError::Decode(e.to_string()))?;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            match page["metadata"]["continue"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => {
                    let rv = page["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("0")
                        .to_string();
                    return Ok((items, rv));
                }
            }
        }
    }

    /// Opens a watch from `rv`; events arrive on the returned channel until
    /// the stream ends (then the channel closes).
    pub async fn watch(
        &self,
        path: &str,
        rv: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>, ApiError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{sep}watch=true&resourceVersion={rv}&heartbeatSeconds=5",
            self.base
        );
        let mut resp = self.send(self.http.get(url)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            loop {
                // A bookmark comes every 5 s; silence for 20 s means dead.
                let chunk = match tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await
                {
                    Ok(Ok(Some(c))) => c,
                    _ => return,
                };
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(event) = serde_json::from_slice::<WatchEvent>(&line) else {
                        continue;
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
