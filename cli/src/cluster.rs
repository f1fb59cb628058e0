//! What runs beside the API in `corral up` / `corral server`: the
//! controllers (behind leader election on etcd; always on with the
//! embedded store) and, for `corral up`, one local node agent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use corral_api_types::auth::{Role, User, UserSpec};
use corral_apiserver::auth::{create_user, issue_token};
use corral_controllers::{ControllerManager, ControllerOptions};
use corral_node_agent::{Agent, AgentOptions, ApiClient, Libvirt};
use corral_runtime::{always_leader, LeaderElection};
use corral_store::ResourceStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Who runs the controllers.
#[derive(Clone)]
pub enum Leadership {
    /// Single process (embedded store).
    Always,
    /// Campaign on etcd; `identity` names this process.
    Etcd {
        client: Box<etcd_client::Client>,
        identity: String,
    },
}

/// A node agent run inside this process.
#[derive(Debug, Clone)]
pub struct LocalAgent {
    pub node: String,
    pub libvirt: String,
    pub virt_type: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Where a real host's images, disks and consoles live.
    pub state_dir: std::path::PathBuf,
}

pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// A token for the local agent's node user (created on first use).
async fn node_token(store: &ResourceStore, node: &str) -> Result<String> {
    let user = format!("node-{node}");
    if store.get::<User>("", &user).await?.is_some() {
        return Ok(issue_token(store, &user, "local agent").await?);
    }
    let issued = create_user(
        store,
        &user,
        UserSpec {
            role: Role::Node,
            node_name: node.to_string(),
            ..Default::default()
        },
    )
    .await?;
    Ok(issued.token)
}

pub async fn start(
    store: &ResourceStore,
    controllers: Option<Leadership>,
    agent: Option<LocalAgent>,
    blobs: Option<corral_store::blobs::BlobStore>,
    imports: Arc<corral_store::import::ImportPolicy>,
    api_url: &str,
    ca_pem: Option<String>,
) -> Result<Background> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(leadership) = controllers {
        let leading = match leadership {
            Leadership::Always => always_leader(),
            Leadership::Etcd { client, identity } => {
                LeaderElection::new(*client, "controllers", &identity, Duration::from_secs(15))
                    .spawn(stop_rx.clone())
            }
        };
        let manager = Arc::new(ControllerManager::new(
            store.clone(),
            ControllerOptions {
                blobs,
                imports,
                ..Default::default()
            },
        ));
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            manager.run_while_leading(leading, rx).await;
        }));
    }
    if let Some(local) = agent {
        let token = node_token(store, &local.node).await?;
        let (hv, waiting) = Libvirt::open_or_wait(&local.libvirt, &local.virt_type)
            .with_context(|| format!("opening libvirt at {}", local.libvirt))?;
        if let Some(why) = waiting {
            tracing::warn!(uri = %local.libvirt, error = %why, "libvirt does not answer yet; the local agent waits for it");
        }
        let mut opts = AgentOptions::new(&local.node);
        opts.vcpus = local.vcpus;
        opts.memory_mib = local.memory_mib;
        opts.state_dir = local.state_dir.clone();
        opts.events_uri = (!local.libvirt.starts_with("test:")).then(|| local.libvirt.clone());
        let api = ApiClient::with_ca(api_url, &token, ca_pem.as_deref())
            .context("the local agent's client")?;
        let agent = Agent::new(api, Arc::new(hv), opts);
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = agent.run(rx).await {
                tracing::error!(error = %e, "local agent stopped");
            }
        }));
        println!(
            "Local node agent: node {:?} on {}{}",
            local.node,
            local.libvirt,
            if local.libvirt.starts_with("test:") {
                " (simulated host: libvirt's test driver)"
            } else {
                ""
            }
        );
    }
    Ok(Background { stop, tasks })
}

/// This host's short name as a DNS label (Node names must be).
pub fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let short = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let clean: String = short
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        "local".to_string()
    } else {
        clean.chars().take(63).collect()
    }
}
