//! The agent loop: register the Node, heartbeat, follow the Instances
//! bound to this node, converge the hypervisor and the host to them,
//! report status.
//!
//! Convergence is level-triggered per instance (one worker per key at a
//! time, via the runtime's work queue) and backed by a periodic resync that
//! also finds drift: a Corral domain destroyed by hand is started again,
//! and a domain named like Corral's that no Instance owns is removed.
//! Restarting the agent restarts no guest: a running domain that should run
//! is left alone.
//!
//! The agent reaches its host through two seams: the hypervisor
//! ([`Hypervisor`]) and everything else — files, networks, firewall,
//! metadata ([`Host`]). It picks the host once, when it registers (a
//! [`SimHost`] on libvirt's test driver, a [`RealHost`] otherwise), unless
//! it was given one ([`Agent::with_host`]); after that the same code runs
//! on both.
//!
//! Who owns what, one file each:
//! - node.rs: the Node (registration, heartbeat, capacity);
//! - informer.rs: the informer's copy of the bound Instances;
//! - wakeups.rs: what wakes an instance (resync, domain scan, libvirt
//!   events, a guest's ready line);
//! - converge.rs: one instance's convergence — the single writer of its
//!   domain; domain.rs builds the domain it defines, images.rs finds the
//!   images, status.rs writes its status;
//! - netsync.rs (with objects.rs): host networking and the metadata table;
//!   netwatch.rs: watches of the overlay Networks in use;
//! - storage.rs: volume and snapshot files; orphans.rs: what nothing owns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use corral_api_types::{Instance, InstanceType};
use corral_runtime::{error_chain, ObjectRef, QueueOptions, Shutdown, WorkQueue};
use futures_util::FutureExt;

mod converge;
mod domain;
mod images;
mod informer;
mod netsync;
mod netwatch;
mod node;
mod objects;
mod orphans;
mod status;
mod storage;
mod wakeups;

pub use status::{CONDITION_LEASED, CONDITION_REBOOTED};

use crate::api::{ApiClient, ApiError};
use crate::host::{Host, HostError, RealHost, SimHost};
use crate::hypervisor::{Hypervisor, HypervisorError};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The Node name (a DNS label).
    pub node: String,
    pub heartbeat: Duration,
    pub resync: Duration,
    pub concurrency: usize,
    /// Override what the host reports (simulated hosts).
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_gib: u64,
    pub zone: Option<String>,
    /// How long a guest gets to power off before it is destroyed.
    pub stop_timeout: Duration,
    /// Where a real host keeps images, disks, seeds and console logs
    /// (unused on simulated hosts).
    pub state_dir: std::path::PathBuf,
    /// How often the host's domains are scanned for drift.
    pub scan: Duration,
    /// Virtual CPUs offered per host CPU (Nova's cpu_allocation_ratio;
    /// not applied when `vcpus` overrides what the host reports).
    pub cpu_allocation_ratio: f64,
    /// Where the metadata service listens on a real host (guests reach it
    /// as 169.254.169.254:80 through a redirect to their gateway).
    pub metadata_port: u16,
    /// The libvirt URI whose domain events wake instances at once (real
    /// hosts; see [`crate::events`]). `None`: the scan alone finds changes.
    pub events_uri: Option<String>,
    /// How often the console of a guest that is still booting is read for
    /// its ready line (only while some guest boots).
    pub boot_poll: Duration,
    /// How often host networking (every network, the firewall, the
    /// metadata table) and the volume and snapshot files are checked for
    /// work: a pass runs when something bound here changed (besides the
    /// one before each domain is defined) or `object_refresh` after the
    /// last; files still waiting are tried again.
    pub host_sync: Duration,
    /// How long a pass reuses a Network, SecurityGroup, Image or KeyPair
    /// an earlier pass read before reading it again: a change to one
    /// reaches the host within this plus `host_sync`.
    pub object_refresh: Duration,
    /// This node's VXLAN tunnel endpoint (its underlay address), reported
    /// as `Node.status.vtep`. `None`: overlay networks stay on this node.
    pub vtep: Option<std::net::Ipv4Addr>,
    /// UDP port of the VXLAN tunnels.
    pub vxlan_port: u16,
    /// MTU inside the tunnel (underlay MTU less 50).
    pub overlay_mtu: u32,
    /// The interface on the provider network: the floating addresses of
    /// this node's ports are held there (/32s) and announced with
    /// gratuitous ARP. `None`: nothing answers for them.
    pub uplink: Option<String>,
}

impl AgentOptions {
    pub fn new(node: &str) -> AgentOptions {
        AgentOptions {
            node: node.to_string(),
            heartbeat: Duration::from_secs(5),
            resync: Duration::from_secs(30),
            concurrency: 4,
            vcpus: None,
            memory_mib: None,
            disk_gib: 500,
            zone: None,
            stop_timeout: Duration::from_secs(60),
            state_dir: std::path::PathBuf::from("/var/lib/corral/agent"),
            scan: Duration::from_secs(2),
            cpu_allocation_ratio: 16.0,
            metadata_port: 8775,
            events_uri: None,
            boot_poll: Duration::from_millis(20),
            host_sync: Duration::from_secs(1),
            object_refresh: Duration::from_secs(10),
            vtep: None,
            vxlan_port: 4789,
            overlay_mtu: 1450,
            uplink: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API")]
    Api(#[from] ApiError),
    #[error("hypervisor")]
    Hypervisor(#[from] HypervisorError),
    #[error("host files")]
    Host(#[source] HostError),
    #[error("{0}")]
    Other(String),
}

impl From<HostError> for AgentError {
    /// A libvirt network's failure is the hypervisor's (libvirtd away is
    /// then logged as such); the firewall's and a tunnel's are told in one
    /// line.
    fn from(e: HostError) -> AgentError {
        match e {
            HostError::Hypervisor(e) => AgentError::Hypervisor(e),
            HostError::Firewall(e) => AgentError::Other(error_chain(&e)),
            HostError::Overlay(e) => AgentError::Other(error_chain(&e)),
            other => AgentError::Host(other),
        }
    }
}

impl AgentError {
    /// libvirtd is away: logged once, by the hypervisor, not once per
    /// instance and retry.
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AgentError::Hypervisor(HypervisorError::Unreachable(_))
        )
    }
}

pub struct Agent {
    api: ApiClient,
    hv: Arc<dyn Hypervisor>,
    /// Chosen when the agent registers (or given at construction).
    host: OnceLock<Arc<dyn Host>>,
    opts: AgentOptions,
    /// Shared copies: a pass takes them all without copying any.
    instances: Mutex<HashMap<ObjectRef, Arc<Instance>>>,
    types: Mutex<HashMap<String, InstanceType>>,
    queue: Arc<WorkQueue<ObjectRef>>,
    synced: AtomicBool,
    /// One image pull at a time.
    pulls: tokio::sync::Mutex<()>,
    /// Hash of the console bytes last sent, per domain.
    consoles: Mutex<HashMap<String, u64>>,
    /// Console log length when this agent last (re)booted a domain: only
    /// what the guest printed after it tells whether that boot finished.
    boot_marks: Mutex<HashMap<String, u64>>,
    /// Host networking last applied.
    net: tokio::sync::Mutex<netsync::NetState>,
    /// Host networking passes asked for (see `sync_net`).
    net_asked: Arc<AtomicU64>,
    /// Wakes the networking loop before its beat (a watched overlay
    /// changed).
    net_wake: Arc<tokio::sync::Notify>,
    /// The request each instance's cached copy made (see informer.rs).
    /// Locked inside `instances`.
    arrived: Mutex<HashMap<ObjectRef, u64>>,
    /// Guests still booting: how far their console was read.
    booting: Mutex<HashMap<ObjectRef, wakeups::BootWatch>>,
    /// Wakes the boot watcher when a guest starts booting.
    boot_started: tokio::sync::Notify,
    /// The libvirt events that woke an instance, until it is converged.
    event_wakes: Mutex<HashMap<ObjectRef, String>>,
}

fn instance_path(key: &ObjectRef) -> String {
    format!("/v1/projects/{}/instances/{}", key.project, key.name)
}

/// How long the agent waits for one libvirt call before treating the
/// hypervisor as unreachable (the call itself may still finish later).
pub const LIBVIRT_DEADLINE: Duration = Duration::from_secs(60);

fn unanswered() -> AgentError {
    AgentError::Hypervisor(HypervisorError::Unreachable(format!(
        "libvirt did not answer within {}s",
        LIBVIRT_DEADLINE.as_secs()
    )))
}

/// Runs a hypervisor call off the async threads, within [`LIBVIRT_DEADLINE`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::hypervisor::Result<T> + Send + 'static,
) -> Result<T, AgentError> {
    match tokio::time::timeout(LIBVIRT_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(joined) => joined
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(AgentError::from),
        Err(_) => Err(unanswered()),
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut Shutdown) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Agent {
    /// An agent that picks its host when it registers: simulated on
    /// libvirt's test driver, real otherwise.
    pub fn new(api: ApiClient, hv: Arc<dyn Hypervisor>, opts: AgentOptions) -> Arc<Agent> {
        Agent::build(api, hv, OnceLock::new(), opts)
    }

    /// An agent on the given host (a [`SimHost`] a test keeps to read its
    /// plans, say).
    pub fn with_host(
        api: ApiClient,
        hv: Arc<dyn Hypervisor>,
        host: Arc<dyn Host>,
        opts: AgentOptions,
    ) -> Arc<Agent> {
        Agent::build(api, hv, OnceLock::from(host), opts)
    }

    fn build(
        api: ApiClient,
        hv: Arc<dyn Hypervisor>,
        host: OnceLock<Arc<dyn Host>>,
        opts: AgentOptions,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            api,
            hv,
            host,
            queue: WorkQueue::new(QueueOptions {
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
                ..Default::default()
            }),
            opts,
            instances: Mutex::new(HashMap::new()),
            types: Mutex::new(HashMap::new()),
            synced: AtomicBool::new(false),
            pulls: tokio::sync::Mutex::new(()),
            consoles: Mutex::new(HashMap::new()),
            boot_marks: Mutex::new(HashMap::new()),
            net: tokio::sync::Mutex::new(Default::default()),
            net_asked: Arc::new(AtomicU64::new(0)),
            net_wake: Arc::new(tokio::sync::Notify::new()),
            arrived: Mutex::new(HashMap::new()),
            booting: Mutex::new(HashMap::new()),
            boot_started: tokio::sync::Notify::new(),
            event_wakes: Mutex::new(HashMap::new()),
        })
    }

    /// The host this agent drives (`None` until it has registered, when it
    /// was not given one). For tests: `agent.host()?.as_sim()` reads a
    /// simulated host's plans.
    pub fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.get().cloned()
    }

    /// The host, once chosen: every loop starts after registration.
    fn on_host(&self) -> &Arc<dyn Host> {
        self.host
            .get()
            .expect("the host is chosen when the agent registers, before anything runs")
    }

    /// Runs a (blocking) host call off the async threads.
    async fn host_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Host) -> crate::host::Result<T> + Send + 'static,
    ) -> Result<T, AgentError> {
        let host = self.on_host().clone();
        if !host.blocks() {
            return f(host.as_ref()).map_err(AgentError::from);
        }
        tokio::task::spawn_blocking(move || f(host.as_ref()))
            .await
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(AgentError::from)
    }

    /// A host call that reaches libvirt (its networks): within
    /// [`LIBVIRT_DEADLINE`], like any hypervisor call.
    async fn host_libvirt_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Host) -> crate::host::Result<T> + Send + 'static,
    ) -> Result<T, AgentError> {
        tokio::time::timeout(LIBVIRT_DEADLINE, self.host_call(f))
            .await
            .unwrap_or_else(|_| Err(unanswered()))
    }

    /// Picks the host for the hypervisor's virt type, unless given one.
    async fn choose_host(&self, virt_type: &str) -> Result<(), AgentError> {
        if self.host.get().is_some() {
            return Ok(());
        }
        let host: Arc<dyn Host> = if virt_type == "test" {
            Arc::new(SimHost::new())
        } else {
            let dir = self.opts.state_dir.clone();
            let hv = self.hv.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || RealHost::open(&dir, hv))
                    .await
                    .map_err(|e| AgentError::Other(e.to_string()))??,
            )
        };
        let _ = self.host.set(host);
        Ok(())
    }

    /// Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: Shutdown) -> Result<(), AgentError> {
        // Keep trying to register: the server may start after us.
        let mut delay = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %self.opts.node, error = %error_chain(&e), "cannot register yet");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => return Ok(()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(node = %self.opts.node, "agent registered");
        let host = self.on_host().clone();
        let (port, s) = (self.opts.metadata_port, stop.clone());
        let mut tasks = vec![
            tokio::spawn(self.clone().scan_loop(stop.clone())),
            tokio::spawn(self.clone().storage_loop(stop.clone())),
            tokio::spawn(self.clone().heartbeat_loop(stop.clone())),
            tokio::spawn(self.clone().informer(stop.clone())),
            tokio::spawn(self.clone().resync_loop(stop.clone())),
            tokio::spawn(self.clone().net_loop(stop.clone())),
            tokio::spawn(async move { host.serve_metadata(port, s).await }),
            tokio::spawn(self.clone().boot_loop(stop.clone())),
        ];
        if let Some(uri) = self.opts.events_uri.clone() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tasks.push(tokio::spawn(crate::events::follow(uri, tx, stop.clone())));
            tasks.push(tokio::spawn(self.clone().event_loop(rx, stop.clone())));
        }
        for _ in 0..self.opts.concurrency.max(1) {
            tasks.push(tokio::spawn(self.clone().worker()));
        }
        stopped(&mut stop).await;
        self.queue.shut_down();
        for t in tasks {
            t.abort();
        }
        Ok(())
    }

    /// Converges the instances the queue hands out, one at a time.
    async fn worker(self: Arc<Self>) {
        while let Some(key) = self.queue.get().await {
            // A bug in one instance's convergence must not take a worker
            // (and the key it holds) down with it.
            let outcome = std::panic::AssertUnwindSafe(self.converge(&key))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(AgentError::Other("converging panicked (a bug)".into())));
            match outcome {
                Ok(Some(after)) => {
                    self.queue.forget(&key);
                    self.queue.add_after(key.clone(), after);
                }
                Ok(None) => self.queue.forget(&key),
                Err(e) => {
                    let d = self.queue.add_rate_limited(key.clone());
                    if e.is_unreachable() {
                        tracing::debug!(instance = %key, error = %error_chain(&e), retry_in = ?d, "converge failed");
                    } else {
                        tracing::warn!(instance = %key, error = %error_chain(&e), retry_in = ?d, "converge failed");
                    }
                }
            }
            self.queue.done(&key);
        }
    }
}
