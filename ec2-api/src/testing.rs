//! Test support: a façade served in-process over an embedded store, with
//! users and access keys written straight into the store (the way the API
//! server's bootstrap would), and helpers that play the controllers' part
//! by writing status. Used by this crate's integration tests and by the
//! AWS SDK test crate; not for production use.

use std::sync::Arc;

use corral_api_types::auth::{AccessKey, AccessKeySpec, Role, User, UserSpec};
use corral_api_types::ec2::access_key_name;
use corral_api_types::{
    seeded_instance_types, Image, ImageSource, ImageSpec, InstanceType, Network, NetworkSpec,
    Project, ProjectSpec, Resource,
};
use corral_store::{EmbeddedStore, ResourceStore};
use rand::Rng;

use crate::server::{serve, Ec2Config, Ec2State};

/// An access key pair.
#[derive(Debug, Clone)]
pub struct Keys {
    pub id: String,
    pub secret: String,
}

/// A running façade, over TLS as `corral up` serves it.
pub struct TestServer {
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// The CA the server's certificate chains to (PEM), and its file (what
    /// `AWS_CA_BUNDLE` names).
    pub ca_pem: String,
    pub ca_file: std::path::PathBuf,
    pub addr: std::net::SocketAddr,
    pub store: ResourceStore,
    /// The admin's keys (they act in project `default`).
    pub admin: Keys,
    /// The request rate limiter (tests lower it).
    pub limiter: Arc<corral_api_types::rate::RateLimiter>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn random(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// Creates a user (member of `project`, or admin when `project` is None)
/// with one access key.
pub async fn add_user(store: &ResourceStore, name: &str, project: Option<&str>) -> Keys {
    match project {
        Some(p) => add_user_as(store, name, Role::Member, p).await,
        None => add_user_as(store, name, Role::Admin, "").await,
    }
}

/// Creates a user with `role` in `project` (empty for admins) and one
/// access key.
pub async fn add_user_as(store: &ResourceStore, name: &str, role: Role, project: &str) -> Keys {
    let project = project.to_string();
    if !project.is_empty() {
        let _ = store
            .create(&Project::new("", &project, ProjectSpec::default()))
            .await;
    }
    let user = User::new(
        "",
        name,
        UserSpec {
            role,
            project,
            ..Default::default()
        },
    );
    store.create(&user).await.expect("create user");
    let id = format!("AKIA{}", random(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
    let secret = random(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    );
    let key = AccessKey::new(
        "",
        &access_key_name(&id),
        AccessKeySpec {
            user: name.to_string(),
            secret_access_key: secret.clone(),
            disabled: false,
        },
    );
    store.create(&key).await.expect("create access key");
    Keys { id, secret }
}

/// Seeds the instance types and a `default` project with an admin.
pub async fn start() -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store");
    let store = ResourceStore::new(Arc::new(raw));
    for t in seeded_instance_types() {
        store
            .create::<InstanceType>(&t)
            .await
            .expect("seed instance type");
    }
    store
        .create(&Project::new("", "default", ProjectSpec::default()))
        .await
        .expect("seed project");
    let admin = add_user(&store, "admin", None).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let names = corral_tls::SubjectNames::for_host(&[addr.ip()], &[]);
    let id = corral_tls::load_or_create(&dir.path().join("tls"), &names).expect("test CA");
    let listener = corral_tls::Listen::Tls(
        corral_tls::TlsListener::new(tcp, id.config.clone()).expect("TLS listener"),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = Ec2State::new(store.clone(), Ec2Config::default());
    let limiter = state.limiter.clone();
    tokio::spawn(async move {
        let _ = serve(state, listener, async {
            let _ = rx.await;
        })
        .await;
    });
    TestServer {
        url: format!("https://{addr}"),
        ca_pem: id.ca_pem.clone(),
        ca_file: id.ca_file.clone(),
        addr,
        store,
        admin,
        limiter,
        _dir: dir,
        stop: Some(tx),
    }
}

/// A Network named `default` (the default VPC) and a machine Image named
/// `cirros` in `project`; returns the image's `ami-` id.
pub async fn seed_project(store: &ResourceStore, project: &str) -> String {
    let net = Network::new(
        project,
        "default",
        NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        },
    );
    store.create(&net).await.expect("create network");
    let img = Image::new(
        project,
        "cirros",
        ImageSpec {
            source: ImageSource {
                url: Some("https://example.com/cirros.img".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let img = store.create(&img).await.expect("create image");
    corral_api_types::ec2::image_id(img.spec.image_type, &img.meta().uid)
}

/// Plays a controller: sets an object's status through the store.
pub async fn set_status<K: Resource>(
    store: &ResourceStore,
    project: &str,
    name: &str,
    status: K::Status,
) {
    let mut obj: K = store
        .get(project, name)
        .await
        .expect("get")
        .expect("object exists");
    *obj.status_mut() = Some(status);
    store.update(&obj).await.expect("write status");
}
