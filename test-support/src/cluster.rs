//! A whole Corral in one process: a
//! store (etcd or embedded), the native API on a loopback port, the
//! controllers, and any number of node agents on libvirt's
//! `test:///default` driver — each its own simulated host.
//!
//! Nothing here imitates a component: every part is the real one; only the
//! hypervisor is libvirt's own test driver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use corral_api_types::auth::{Role, UserSpec};
use corral_apiserver::auth::create_user;
use corral_apiserver::{bootstrap, ApiState};
use corral_controllers::{ControllerManager, ControllerOptions};
use corral_node_agent::{Agent, AgentOptions, ApiClient, Hypervisor, Libvirt};
use corral_store::{EmbeddedStore, EtcdStore, ResourceStore, Store};
use tokio::sync::watch;

use crate::etcd::EtcdServer;

/// A running agent and the simulated host it drives.
pub struct SimHost {
    pub hv: Arc<Libvirt>,
    pub token: String,
    /// The agent last started on this host.
    pub agent: Option<Arc<Agent>>,
    stop: Option<watch::Sender<bool>>,
}

impl SimHost {
    /// What the agent asked of this host so far (disks, seeds, networks
    /// with their DHCP reservations, the firewall plan, the metadata
    /// table): `None` until the agent registered.
    pub fn plans(&self) -> Option<corral_node_agent::host::SimPlans> {
        let host = self.agent.as_ref()?.host()?;
        host.as_sim().map(|sim| sim.plans())
    }

    /// Where this host's tunnel of `network` (libvirt name) sends `mac`.
    pub fn overlay_mac(&self, network: &str, mac: &str) -> Option<std::net::Ipv4Addr> {
        let host = self.agent.as_ref()?.host()?;
        host.as_sim()?.overlay_mac(network, mac)
    }
}

pub struct Cluster {
    pub store: ResourceStore,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    /// The admin's API client.
    pub client: corral_client::Client,
    pub hosts: HashMap<String, SimHost>,
    pub agent_options: AgentOptions,
    /// Options of hosts added with their own (`add_host_with`).
    host_options: HashMap<String, AgentOptions>,
    stop: watch::Sender<bool>,
    scratch: tempfile::TempDir,
    /// The etcd endpoint when the store is etcd.
    pub etcd_endpoint: Option<String>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

pub enum Backend {
    Embedded,
    Etcd,
}

/// Starts a simulated host (libvirt's test driver, its definition written
/// under `scratch`) and its agent talking to the API at `base` as `token`.
/// Used by [`Cluster`] and by benchmarks that run the hosts in a process
/// of their own.
pub fn start_sim_host(
    base: &str,
    scratch: &std::path::Path,
    node: &str,
    token: String,
    options: &AgentOptions,
) -> SimHost {
    let uri = corral_node_agent::hypervisor::simulated_host(scratch, node, 64, 256 * 1024)
        .expect("write simulated host");
    let hv = Arc::new(Libvirt::open(&uri, "test").expect("libvirt test driver"));
    let mut host = SimHost {
        hv,
        token,
        agent: None,
        stop: None,
    };
    spawn_agent(base, node, &mut host, options);
    host
}

/// A simulated node's API client. On a loopback server each node
/// speaks from a loopback address of its own (127.x.y.z from its name),
/// as real nodes have addresses of their own: a hundred nodes from
/// 127.0.0.1 would share the server's per-peer connection bound.
fn sim_node_client(base: &str, node: &str, token: &str) -> ApiClient {
    let host = base
        .split_once("://")
        .map(|(_, rest)| rest.split([':', '/']).next().unwrap_or(""));
    let loopback = matches!(host, Some("127.0.0.1" | "localhost"));
    if !loopback {
        return ApiClient::new(base, token);
    }
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_le_bytes();
    let local = std::net::Ipv4Addr::new(127, a.max(1), b, c.max(2));
    ApiClient::from_address(base, token, local.into()).expect("a plain client always builds")
}

fn spawn_agent(base: &str, node: &str, host: &mut SimHost, options: &AgentOptions) {
    let mut opts = options.clone();
    opts.node = node.to_string();
    let agent = Agent::new(
        sim_node_client(base, node, &host.token),
        host.hv.clone() as Arc<dyn Hypervisor>,
        opts,
    );
    let (tx, rx) = watch::channel(false);
    host.agent = Some(agent.clone());
    host.stop = Some(tx);
    tokio::spawn(async move {
        let _ = agent.run(rx).await;
    });
}

impl Cluster {
    pub async fn start(backend: Backend, controllers: ControllerOptions) -> Cluster {
        let (raw, etcd, dir): (Arc<dyn Store>, _, _) = match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("tempdir");
                let raw = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store");
                (Arc::new(raw), None, Some(dir))
            }
            Backend::Etcd => {
                let server = EtcdServer::start().await.expect("start a real etcd");
                let raw = EtcdStore::connect(&[server.endpoint()])
                    .await
                    .expect("connect");
                (Arc::new(raw), Some(server), None)
            }
        };
        let store = ResourceStore::new(raw);
        let admin = bootstrap(&store, "admin")
            .await
            .expect("bootstrap")
            .admin
            .expect("admin")
            .token;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(corral_apiserver::serve(
            // As `corral up` does: image files beneath its default
            // import directory only.
            ApiState::with_imports(
                store.clone(),
                corral_store::import::ImportPolicy::new(
                    vec![corral_store::import::DEFAULT_IMPORT_DIR.into()],
                    Vec::new(),
                )
                .expect("the default import directory"),
            ),
            listener,
            std::future::pending(),
        ));
        let (stop, stop_rx) = watch::channel(false);
        let manager = Arc::new(ControllerManager::new(store.clone(), controllers));
        tokio::spawn(manager.run(stop_rx));
        let mut agent_options = AgentOptions::new("template");
        agent_options.heartbeat = Duration::from_millis(500);
        agent_options.resync = Duration::from_secs(2);
        agent_options.stop_timeout = Duration::from_secs(5);
        let client = corral_client::Client::with_ca(&base, &admin, None).expect("API client");
        Cluster {
            store,
            base,
            admin,
            http: reqwest::Client::new(),
            client,
            hosts: HashMap::new(),
            agent_options,
            host_options: HashMap::new(),
            stop,
            scratch: tempfile::tempdir().expect("tempdir"),
            etcd_endpoint: etcd.as_ref().map(|e| e.endpoint()),
            _etcd: etcd,
            _dir: dir,
        }
    }

    /// Creates the node user an agent for `node` authenticates as, and
    /// answers its bearer token.
    pub async fn node_token(&self, node: &str) -> String {
        create_user(
            &self.store,
            &format!("node-{node}"),
            UserSpec {
                role: Role::Node,
                node_name: node.to_string(),
                ..Default::default()
            },
        )
        .await
        .expect("node user")
        .token
    }

    /// Adds a simulated host with its own node user and agent.
    pub async fn add_host(&mut self, node: &str) {
        self.add_host_with(node, |_| {}).await;
    }

    /// Adds a simulated host whose agent has options of its own (a
    /// tunnel endpoint, say); a restarted agent keeps them.
    pub async fn add_host_with(&mut self, node: &str, tune: impl FnOnce(&mut AgentOptions)) {
        let token = self.node_token(node).await;
        let mut options = self.agent_options.clone();
        tune(&mut options);
        let host = start_sim_host(&self.base, self.scratch.path(), node, token, &options);
        self.host_options.insert(node.to_string(), options);
        self.hosts.insert(node.to_string(), host);
    }

    fn spawn_agent(&self, node: &str, host: &mut SimHost) {
        let options = self.host_options.get(node).unwrap_or(&self.agent_options);
        spawn_agent(&self.base, node, host, options);
    }

    /// Stops a host's agent (its simulated guests keep running).
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(h) = self.hosts.get_mut(node) {
            if let Some(stop) = h.stop.take() {
                let _ = stop.send(true);
            }
        }
    }

    /// Starts a host's agent again, on the same hypervisor.
    pub fn restart_agent(&mut self, node: &str) {
        let mut host = self.hosts.remove(node).expect("known host");
        self.spawn_agent(node, &mut host);
        self.hosts.insert(node.to_string(), host);
    }

    /// `method path` as the admin, through corral-client: the status and
    /// the body (JSON, else its text as a string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (code, value) = self
            .client
            .exchange(method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (code.as_u16(), value)
    }

    /// Applies every object of a manifest text through the API.
    pub async fn apply_manifests(&self, name: &str, text: &str) {
        let mut objects = corral_api_types::parse_manifests(name, text).expect("valid manifests");
        objects.sort_by_key(|o| {
            corral_api_types::KINDS
                .iter()
                .position(|k| k.kind == o.kind())
                .unwrap_or(99)
        });
        for o in objects {
            let (code, body) = self
                .call(reqwest::Method::POST, "/v1/apply", Some(o.to_json_value()))
                .await;
            assert!(
                code == 200 || code == 201,
                "apply {}: {code} {body}",
                o.display_name()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in self.hosts.values_mut() {
            if let Some(s) = h.stop.take() {
                let _ = s.send(true);
            }
        }
    }
}
