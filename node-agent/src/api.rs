//! The agent's view of the native API: it never sees the store, only
//! HTTP with its node-scoped token — through `corral-client`, the one
//! client of the API, typed for what the agent reads and writes.

use std::time::Duration;

use corral_client::{Client, ClientError, Watcher};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the API: {0}")]
    Unreachable(String),
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

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            ClientError::Api(s) => ApiError::Status {
                code: s.code,
                message: s.message.clone(),
            },
            ClientError::Decode(m) | ClientError::Config(m) => ApiError::Decode(m),
            other => ApiError::Unreachable(other.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    client: Client,
}

fn to_value<B: Serialize>(body: &B) -> Result<Value, ApiError> {
    serde_json::to_value(body).map_err(|e| ApiError::Decode(format!("encoding: {e}")))
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Decode(e.to_string()))
}

impl ApiClient {
    /// A client trusting the system's roots (or speaking plain HTTP).
    pub fn new(base: &str, token: &str) -> ApiClient {
        ApiClient::with_ca(base, token, None).expect("a client without a CA always builds")
    }

    /// A client that trusts only `ca_pem` (the server's CA) for `https://`
    /// servers; without it, the system's roots.
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Result<ApiClient, ApiError> {
        Ok(ApiClient {
            client: Client::with_ca(base, token, ca_pem)?,
        })
    }

    /// A plain client connecting from `local` (see
    /// [`Client::from_address`]).
    pub fn from_address(
        base: &str,
        token: &str,
        local: std::net::IpAddr,
    ) -> Result<ApiClient, ApiError> {
        Ok(ApiClient {
            client: Client::from_address(base, token, None, Some(local))?,
        })
    }

    /// `path` as `T`, or `None` when it does not exist.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ApiError> {
        let (path, query) = split(path);
        match self.client.get(path, &query).await {
            Ok(v) => from_value(v).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let (path, query) = split(path);
        from_value(self.client.put(path, &query, &to_value(body)?).await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let (path, query) = split(path);
        from_value(self.client.post(path, &query, &to_value(body)?).await?)
    }

    /// Starts a GET whose (large) body the caller reads in chunks.
    pub async fn download(&self, path: &str) -> Result<reqwest::Response, ApiError> {
        let (path, query) = split(path);
        Ok(self.client.download(path, &query).await?)
    }

    /// PUTs raw bytes.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> Result<(), ApiError> {
        let (path, query) = split(path);
        let len = body.len() as u64;
        let put = self.client.put_stream(path, &query, body.into(), len);
        match tokio::time::timeout(Duration::from_secs(30), put).await {
            Ok(r) => r.map(|_| ()).map_err(ApiError::from),
            Err(_) => Err(ApiError::Unreachable(format!(
                "{path}: the server did not answer in time"
            ))),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let (path, query) = split(path);
        self.client.delete(path, &query).await.map(|_| ())?;
        Ok(())
    }

    /// All items of a list path, following continue tokens, and the
    /// revision to watch from.
    pub async fn list(&self, path: &str) -> Result<(Vec<Value>, String), ApiError> {
        let (path, query) = split(path);
        let page = self.client.list_all(path, &query).await?;
        Ok((page.items, page.resource_version))
    }

    /// The list → watch → relist loop on a list path.
    pub fn watcher(&self, path: &str) -> Watcher {
        let (path, query) = split(path);
        self.client.watcher(path, &query)
    }
}

/// `path?k=v&…` as the path and its query pairs (the agent's paths are
/// built by the agent itself, with plain values).
fn split(path: &str) -> (&str, Vec<(&str, &str)>) {
    match path.split_once('?') {
        None => (path, Vec::new()),
        Some((p, q)) => (
            p,
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_split_into_path_and_query() {
        assert_eq!(super::split("/v1/nodes/n1"), ("/v1/nodes/n1", vec![]));
        assert_eq!(
            super::split("/v1/projects/p/securitygroups/web?for=i1&x=2"),
            (
                "/v1/projects/p/securitygroups/web",
                vec![("for", "i1"), ("x", "2")]
            )
        );
    }
}
