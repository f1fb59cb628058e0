//! A real API server over a real store (etcd or the embedded file), for
//! the suites that are not `api.rs`.

#![allow(dead_code)]

use std::sync::Arc;

use corral_api_types::auth::{Role, UserSpec};
use corral_apiserver::auth::create_user;
use corral_apiserver::{bootstrap, ApiState};
use corral_store::{EmbeddedStore, EtcdStore, ResourceStore, Store};
use corral_test_support::EtcdServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub admin: String,
    pub store: ResourceStore,
    pub state: Arc<ApiState>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

async fn start(
    raw: Arc<dyn Store>,
    etcd: Option<EtcdServer>,
    dir: Option<tempfile::TempDir>,
) -> Api {
    let store = ResourceStore::new(raw);
    let boot = bootstrap(&store, "admin").await.unwrap();
    let admin = boot.admin.expect("first bootstrap creates the admin").token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // As `corral up` does: image files beneath its default import
    // directory only.
    let imports = corral_store::import::ImportPolicy::new(
        vec![corral_store::import::DEFAULT_IMPORT_DIR.into()],
        Vec::new(),
    )
    .unwrap();
    let state = ApiState::with_imports(store.clone(), imports);
    tokio::spawn(corral_apiserver::serve(
        state.clone(),
        listener,
        std::future::pending(),
    ));
    Api {
        base,
        http: reqwest::Client::new(),
        admin,
        store,
        state,
        _etcd: etcd,
        _dir: dir,
    }
}

pub async fn etcd() -> Api {
    etcd_with(EtcdServer::start().await.expect("start a real etcd")).await
}

/// An API on a real etcd whose backend quota is `bytes`.
pub async fn etcd_with_quota(bytes: u64) -> Api {
    etcd_with(
        EtcdServer::start_with_quota(bytes)
            .await
            .expect("start a real etcd"),
    )
    .await
}

async fn etcd_with(server: EtcdServer) -> Api {
    let raw = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    start(Arc::new(raw), Some(server), None).await
}

pub async fn embedded() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    start(Arc::new(raw), None, Some(dir)).await
}

impl Api {
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Sends raw bytes with a content type.
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
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
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

    pub async fn member(&self, name: &str, project: &str) -> String {
        create_user(
            &self.store,
            name,
            UserSpec {
                role: Role::Member,
                project: project.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .token
    }
}

pub fn instance(name: &str, itype: &str) -> Value {
    json!({
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"instanceType": itype, "image": "tiny", "nics": [{"network": "lan"}]}
    })
}

pub fn volume(name: &str, size: u32) -> Value {
    json!({"kind": "Volume", "metadata": {"name": name}, "spec": {"sizeGiB": size}})
}

/// Runs `$case(api)` against each backend as its own test.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::etcd().await).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::embedded().await).await;
                }
            )*
        }
    };
}

/// One object of every project kind, as created in `b` by the admin.
pub fn objects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "networks",
            json!({"kind": "Network", "metadata": {"name": "lan"}, "spec": {"cidr": "10.70.0.0/24"}}),
        ),
        (
            "securitygroups",
            json!({"kind": "SecurityGroup", "metadata": {"name": "web"}, "spec": {"description": "b's"}}),
        ),
        (
            "keypairs",
            json!({"kind": "KeyPair", "metadata": {"name": "admin"}, "spec": {"publicKey":
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb b@b"}}),
        ),
        (
            "images",
            json!({"kind": "Image", "metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "qcow2"}}),
        ),
        ("volumes", volume("data", 1)),
        (
            "snapshots",
            json!({"kind": "Snapshot", "metadata": {"name": "snap"}, "spec": {"volume": "data"}}),
        ),
        ("instances", {
            let mut i = instance("web", "m1.tiny");
            i["spec"]["nics"][0]["securityGroups"] = json!(["web"]);
            i["spec"]["keyName"] = json!("admin");
            i
        }),
        (
            "addresses",
            json!({"kind": "Address", "metadata": {"name": "eip"}, "spec": {"network": "lan"}}),
        ),
        (
            "events",
            json!({"kind": "Event", "metadata": {"name": "ev"}, "spec": {
                "involvedObject": {"kind": "Instance", "name": "web"}, "reason": "Test"}}),
        ),
    ]
}
