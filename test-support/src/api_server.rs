//! [`ApiServer`]: the real native API over a real store (a private etcd
//! or an embedded file in a temporary directory) on a loopback port, with
//! the admin's token, for suites that speak to the server over HTTP and
//! judge each status themselves.

use std::path::Path;
use std::sync::Arc;

use corral_api_types::auth::{Role, UserSpec};
use corral_apiserver::auth::create_user;
use corral_apiserver::{bootstrap, ApiState};
use corral_client::Client;
use corral_store::{EmbeddedStore, EtcdStore, ResourceStore, Store};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::etcd::EtcdServer;

/// A running API server and what a test needs to reach around it.
pub struct ApiServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A plain HTTP client, for requests the API client would not send.
    pub http: reqwest::Client,
    /// The admin's token.
    pub admin: String,
    /// The admin's API client.
    pub client: Client,
    pub store: ResourceStore,
    pub state: Arc<ApiState>,
    _etcd: Option<EtcdServer>,
    dir: Option<tempfile::TempDir>,
}

impl ApiServer {
    /// On a private etcd.
    pub async fn etcd() -> ApiServer {
        Self::on_etcd(EtcdServer::start().await.expect("start a real etcd")).await
    }

    /// On a private etcd whose backend quota is `bytes`.
    pub async fn etcd_with_quota(bytes: u64) -> ApiServer {
        Self::on_etcd(
            EtcdServer::start_with_quota(bytes)
                .await
                .expect("start a real etcd"),
        )
        .await
    }

    async fn on_etcd(server: EtcdServer) -> ApiServer {
        let raw = EtcdStore::connect(&[server.endpoint()])
            .await
            .expect("connect to the private etcd");
        Self::start(Arc::new(raw), Some(server), None).await
    }

    /// On an embedded store in a temporary directory ([`ApiServer::dir`]).
    pub async fn embedded() -> ApiServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let raw = EmbeddedStore::open(&dir.path().join("s.redb")).expect("open the store");
        Self::start(Arc::new(raw), None, Some(dir)).await
    }

    async fn start(
        raw: Arc<dyn Store>,
        etcd: Option<EtcdServer>,
        dir: Option<tempfile::TempDir>,
    ) -> ApiServer {
        let store = ResourceStore::new(raw);
        let boot = bootstrap(&store, "admin").await.expect("bootstrap");
        let admin = boot.admin.expect("first bootstrap creates the admin").token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        // As `corral up` does: image files beneath its default import
        // directory only.
        let imports = corral_store::import::ImportPolicy::new(
            vec![corral_store::import::DEFAULT_IMPORT_DIR.into()],
            Vec::new(),
        )
        .expect("import policy");
        let state = ApiState::with_imports(store.clone(), imports);
        tokio::spawn(corral_apiserver::serve(
            state.clone(),
            listener,
            std::future::pending(),
        ));
        let client = Client::with_ca(&base, &admin, None).expect("API client");
        ApiServer {
            base,
            http: reqwest::Client::new(),
            admin,
            client,
            store,
            state,
            _etcd: etcd,
            dir,
        }
    }

    /// The embedded store's temporary directory (None on etcd).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// `method path` (which may end in `?query`) with `token`: the status
    /// and the body (JSON, else its text as a string).
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.client
            .with_token(token)
            .exchange(method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Raw bytes with a content type, as the admin.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.admin)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Raw bytes (no content type) with `token`; the answer's bytes.
    pub async fn send(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        (status, resp.bytes().await.unwrap_or_default().to_vec())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(&self.admin, Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(&self.admin, Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(&self.admin, Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(&self.admin, Method::DELETE, path, None).await
    }

    /// Creates a project with `quotas` (`{}` for none).
    pub async fn project(&self, name: &str, quotas: Value) {
        let (code, body) = self
            .post(
                "/v1/projects",
                json!({"metadata": {"name": name}, "spec": {"quotas": quotas}}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }

    /// A user of `role` (member, viewer, node, …) straight in the store;
    /// its token.
    pub async fn user(&self, name: &str, role: Role, project: &str, node: &str) -> String {
        create_user(
            &self.store,
            name,
            UserSpec {
                role,
                project: project.into(),
                node_name: node.into(),
                ..Default::default()
            },
        )
        .await
        .expect("create user")
        .token
    }

    /// A member of `project`; its token.
    pub async fn member(&self, name: &str, project: &str) -> String {
        self.user(name, Role::Member, project, "").await
    }
}
