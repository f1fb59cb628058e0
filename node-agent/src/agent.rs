//! The agent loop: register the Node, heartbeat, follow the Instances
//! bound to this node, converge the hypervisor to them, report status.
//!
//! Convergence is level-triggered per instance (one worker per key at a
//! time, via the runtime's work queue) and backed by a periodic resync that
//! also finds drift: a Corral domain destroyed by hand is started again,
//! and a domain named like Corral's that no Instance owns is removed.
//! Restarting the agent restarts no guest: a running domain that should run
//! is left alone.

use corral_client::WatcherEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use corral_api_types::{
    ec2, ConditionStatus, HypervisorInfo, HypervisorType, Image, ImageFormat, ImagePhase, Instance,
    InstancePhase, InstanceStatus, InstanceType, KeyPair, Node, NodeResources, NodeSpec,
    PowerState as Desired, Resource, Snapshot, SnapshotPhase, Volume, DEFAULT_INSTANCE_TYPE,
};
use corral_runtime::status::set_condition;
use corral_runtime::{error_chain, ObjectRef, QueueOptions, Shutdown, WorkQueue};
use futures_util::FutureExt;
use serde_json::Value;

mod netsync;

use crate::api::{ApiClient, ApiError};
use crate::host::{guest_ready, HostFiles, Seed};
use crate::hypervisor::{
    domain_name, DiskSpec, DomainSpec, Hypervisor, HypervisorError, KernelBoot, PowerState,
    DOMAIN_PREFIX,
};

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
    /// How often a real host's domains are scanned for drift.
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API")]
    Api(#[from] ApiError),
    #[error("hypervisor")]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
    #[error("host files")]
    Host(#[from] crate::host::HostError),
    #[error("{0}")]
    Other(String),
}

pub struct Agent {
    api: ApiClient,
    hv: Arc<dyn Hypervisor>,
    opts: AgentOptions,
    instances: Mutex<HashMap<ObjectRef, Instance>>,
    types: Mutex<HashMap<String, InstanceType>>,
    queue: Arc<WorkQueue<ObjectRef>>,
    synced: std::sync::atomic::AtomicBool,
    /// A real host's files (None on simulated hosts).
    files: std::sync::OnceLock<HostFiles>,
    /// One image pull at a time.
    pulls: tokio::sync::Mutex<()>,
    /// Hash of the console bytes last sent, per domain.
    consoles: Mutex<HashMap<String, u64>>,
    /// Console log length when this agent last (re)booted a domain: only
    /// what the guest printed after it tells whether that boot finished.
    boot_marks: Mutex<HashMap<String, u64>>,
    /// Host networking last applied (real hosts).
    net: tokio::sync::Mutex<netsync::NetState>,
    /// Who is who for the metadata service.
    metadata: crate::metadata::MetadataTable,
    /// Guests still booting: their console log and how far it was read.
    booting: Mutex<HashMap<ObjectRef, BootWatch>>,
    /// Wakes the boot watcher when a guest starts booting.
    boot_started: tokio::sync::Notify,
    /// The libvirt events that woke an instance, until it is converged.
    event_wakes: Mutex<HashMap<ObjectRef, String>>,
}

/// A booting guest's console, followed until its ready line.
#[derive(Debug, Clone)]
struct BootWatch {
    log: std::path::PathBuf,
    /// Bytes of the log already searched.
    read: u64,
}

/// What a booted guest prints (see [`guest_ready`]).
const READY_MARKS: [&[u8]; 2] = [b"corral-guest: ready", b" login: "];

fn instance_path(key: &ObjectRef) -> String {
    format!("/v1/projects/{}/instances/{}", key.project, key.name)
}

/// How long the agent waits for one libvirt call before treating the
/// hypervisor as unreachable (the call itself may still finish later).
pub const LIBVIRT_DEADLINE: Duration = Duration::from_secs(60);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::hypervisor::Result<T> + Send + 'static,
) -> Result<T, AgentError> {
    match tokio::time::timeout(LIBVIRT_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(joined) => joined
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(AgentError::from),
        Err(_) => Err(AgentError::Hypervisor(
            crate::hypervisor::HypervisorError::Unreachable(format!(
                "libvirt did not answer within {}s",
                LIBVIRT_DEADLINE.as_secs()
            )),
        )),
    }
}

impl Agent {
    pub fn new(api: ApiClient, hv: Arc<dyn Hypervisor>, opts: AgentOptions) -> Arc<Agent> {
        Arc::new(Agent {
            api,
            hv,
            queue: WorkQueue::new(QueueOptions {
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
                ..Default::default()
            }),
            opts,
            instances: Mutex::new(HashMap::new()),
            types: Mutex::new(HashMap::new()),
            synced: std::sync::atomic::AtomicBool::new(false),
            files: std::sync::OnceLock::new(),
            pulls: tokio::sync::Mutex::new(()),
            consoles: Mutex::new(HashMap::new()),
            boot_marks: Mutex::new(HashMap::new()),
            net: tokio::sync::Mutex::new(Default::default()),
            metadata: crate::metadata::MetadataTable::new(),
            booting: Mutex::new(HashMap::new()),
            boot_started: tokio::sync::Notify::new(),
            event_wakes: Mutex::new(HashMap::new()),
        })
    }

    /// The host's files, on a real host.
    pub fn files(&self) -> Option<&HostFiles> {
        self.files.get()
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
        let mut tasks = vec![
            tokio::spawn(self.clone().scan_loop(stop.clone())),
            tokio::spawn(self.clone().storage_loop(stop.clone())),
            tokio::spawn(self.clone().heartbeat_loop(stop.clone())),
            tokio::spawn(self.clone().informer(stop.clone())),
            tokio::spawn(self.clone().resync_loop(stop.clone())),
        ];
        if self.files.get().is_some() {
            tasks.push(tokio::spawn(self.clone().net_loop(stop.clone())));
            tasks.push(tokio::spawn(self.clone().metadata_server(stop.clone())));
            tasks.push(tokio::spawn(self.clone().boot_loop(stop.clone())));
            if let Some(uri) = self.opts.events_uri.clone() {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tasks.push(tokio::spawn(crate::events::follow(uri, tx, stop.clone())));
                tasks.push(tokio::spawn(self.clone().event_loop(rx, stop.clone())));
            }
        }
        for _ in 0..self.opts.concurrency.max(1) {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(key) = me.queue.get().await {
                    // A bug in one instance's convergence must not take a
                    // worker (and the key it holds) down with it.
                    let outcome = std::panic::AssertUnwindSafe(me.converge(&key))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            Err(AgentError::Other("converging panicked (a bug)".into()))
                        });
                    match outcome {
                        Ok(Some(after)) => {
                            me.queue.forget(&key);
                            me.queue.add_after(key.clone(), after);
                        }
                        Ok(None) => me.queue.forget(&key),
                        Err(e) => {
                            let d = me.queue.add_rate_limited(key.clone());
                            // libvirtd away is logged once, by the
                            // hypervisor, not once per instance and retry.
                            if matches!(
                                e,
                                AgentError::Hypervisor(HypervisorError::Unreachable(_))
                            ) {
                                tracing::debug!(instance = %key, error = %error_chain(&e), retry_in = ?d, "converge failed");
                            } else {
                                tracing::warn!(instance = %key, error = %error_chain(&e), retry_in = ?d, "converge failed");
                            }
                        }
                    }
                    me.queue.done(&key);
                }
            }));
        }
        stopped(&mut stop).await;
        self.queue.shut_down();
        for t in tasks {
            t.abort();
        }
        Ok(())
    }

    async fn register(&self) -> Result<(), AgentError> {
        let hv = self.hv.clone();
        let facts = blocking(move || hv.facts()).await?;
        if facts.virt_type != "test" && self.files.get().is_none() {
            let dir = self.opts.state_dir.clone();
            let files = tokio::task::spawn_blocking(move || HostFiles::open(&dir))
                .await
                .map_err(|e| AgentError::Other(e.to_string()))??;
            let _ = self.files.set(files);
        }
        let path = format!("/v1/nodes/{}", self.opts.node);
        if self.api.get::<Value>(&path).await?.is_none() {
            let mut node = Node::new(
                "",
                &self.opts.node,
                NodeSpec {
                    zone: self.opts.zone.clone(),
                    ..Default::default()
                },
            );
            node.metadata
                .labels
                .insert("corral/hypervisor".into(), facts.virt_type.clone());
            match self.api.post::<_, Value>("/v1/nodes", &node).await {
                Ok(_) | Err(ApiError::Status { code: 409, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let resources = NodeResources {
            vcpus: self.opts.vcpus.unwrap_or(facts.vcpus),
            memory_mib: self.opts.memory_mib.unwrap_or(facts.memory_mib),
            disk_gib: self.opts.disk_gib,
        };
        let mut allocatable = resources.clone();
        if self.opts.vcpus.is_none() {
            allocatable.vcpus =
                (f64::from(facts.vcpus) * self.opts.cpu_allocation_ratio.max(1.0)) as u32;
        }
        let hypervisor = HypervisorInfo {
            type_: match facts.virt_type.as_str() {
                "kvm" => HypervisorType::Kvm,
                "test" => HypervisorType::Test,
                _ => HypervisorType::Qemu,
            },
            libvirt_version: facts.libvirt_version.clone(),
            hostname: facts.hostname.clone(),
            virt_type: Some(facts.virt_type.clone()),
        };
        self.update_node_status(move |status| {
            status.capacity = resources.clone();
            status.allocatable = allocatable.clone();
            status.hypervisor = Some(hypervisor.clone());
        })
        .await
    }

    /// Read-modify-write of our Node's status, with heartbeat and Ready.
    async fn update_node_status(
        &self,
        edit: impl Fn(&mut corral_api_types::NodeStatus),
    ) -> Result<(), AgentError> {
        let path = format!("/v1/nodes/{}", self.opts.node);
        for _ in 0..5 {
            let Some(mut node) = self.api.get::<Node>(&path).await? else {
                return Err(AgentError::Other(format!(
                    "node {} vanished",
                    self.opts.node
                )));
            };
            let now = Utc::now();
            let generation = node.metadata.generation;
            let status = node.status.get_or_insert_with(Default::default);
            edit(status);
            status.heartbeat_time = Some(now);
            set_condition(
                &mut status.conditions,
                "Ready",
                ConditionStatus::True,
                "AgentReady",
                "the agent is heartbeating",
                generation,
                now,
            );
            // As the agent's latest libvirt call found it: while libvirtd is
            // away the agent leaves its guests alone (hypervisor.rs).
            let (reachable, reason, message) = match self.hv.unreachable() {
                None => (ConditionStatus::True, "Answering", String::new()),
                Some(why) => (ConditionStatus::False, "Unreachable", why),
            };
            set_condition(
                &mut status.conditions,
                "HypervisorReachable",
                reachable,
                reason,
                &message,
                generation,
                now,
            );
            match self
                .api
                .put::<_, Value>(&format!("{path}/status"), &node)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Other("node status kept conflicting".into()))
    }

    async fn heartbeat_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.update_node_status(|_| {}).await {
                        tracing::warn!(node = %self.opts.node, error = %error_chain(&e), "heartbeat failed");
                    }
                }
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn resync_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.resync);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let keys: Vec<ObjectRef> = self.instances.lock().expect("instances").keys().cloned().collect();
                    for k in keys {
                        self.queue.add(k);
                    }
                    if let Err(e) = self.sweep_orphans().await {
                        tracing::warn!(error = %error_chain(&e), "orphan sweep failed");
                    }
                }
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// Removes Corral-named domains no bound Instance owns.
    pub async fn sweep_orphans(&self) -> Result<usize, AgentError> {
        if !self.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        let hv = self.hv.clone();
        let domains = blocking(move || hv.list()).await?;
        let owned: std::collections::HashSet<String> = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .map(|i| domain_name(&i.metadata.uid))
            .collect();
        let mut removed = 0;
        for d in domains {
            if owned.contains(&d.name) || !d.name.starts_with(DOMAIN_PREFIX) {
                continue;
            }
            // Only what this node made: another agent may share libvirt.
            let hv = self.hv.clone();
            let name = d.name.clone();
            if blocking(move || hv.node_of(&name)).await?.as_deref()
                != Some(self.opts.node.as_str())
            {
                continue;
            }
            tracing::warn!(domain = %d.name, "removing a Corral domain that no Instance on this node owns");
            let hv = self.hv.clone();
            let name = d.name.clone();
            blocking(move || {
                let _ = hv.destroy(&name);
                hv.undefine(&name)
            })
            .await?;
            removed += 1;
        }
        // Instance directories nothing owns (listed before the owners are
        // read, so a directory being created meanwhile is never taken).
        if let Some(files) = self.files.get().cloned() {
            let uids = tokio::task::spawn_blocking(move || files.instance_uids())
                .await
                .map_err(|e| AgentError::Other(e.to_string()))??;
            let owned: std::collections::HashSet<String> = self
                .instances
                .lock()
                .expect("instances")
                .values()
                .map(|i| i.metadata.uid.clone())
                .collect();
            for uid in uids.into_iter().filter(|u| !owned.contains(u)) {
                let hv = self.hv.clone();
                let name = domain_name(&uid);
                if blocking(move || hv.state(&name)).await?.is_some() {
                    continue;
                }
                tracing::warn!(%uid, "removing the files of an instance no longer on this node");
                let files = self.files.get().cloned().expect("files");
                tokio::task::spawn_blocking(move || files.remove_instance(&uid))
                    .await
                    .map_err(|e| AgentError::Other(e.to_string()))??;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// On a real host, looks at every Corral domain every few seconds and
    /// wakes the instances whose domain changed or vanished: a domain
    /// destroyed or undefined by hand comes back within seconds.
    async fn scan_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.scan);
        let mut last: HashMap<String, Option<PowerState>> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            if self.files.get().is_none() || !self.synced.load(std::sync::atomic::Ordering::SeqCst)
            {
                continue;
            }
            let hv = self.hv.clone();
            let Ok(domains) = blocking(move || hv.list()).await else {
                continue;
            };
            let now: HashMap<String, PowerState> =
                domains.into_iter().map(|d| (d.name, d.state)).collect();
            let instances: Vec<(ObjectRef, String)> = self
                .instances
                .lock()
                .expect("instances")
                .iter()
                .map(|(k, i)| (k.clone(), domain_name(&i.metadata.uid)))
                .collect();
            let mut seen = HashMap::new();
            for (key, name) in instances {
                let state = now.get(&name).copied();
                if last.get(&name) != Some(&state) {
                    self.queue.add(key);
                }
                seen.insert(name, state);
            }
            last = seen;
        }
    }

    /// Wakes the instance of each libvirt domain event at once (a restarted
    /// listener wakes them all: it may have missed some).
    async fn event_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::events::Event>,
        mut stop: Shutdown,
    ) {
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = stopped(&mut stop) => return,
            };
            let keys: Vec<(ObjectRef, String)> = match &event {
                None => return,
                Some(crate::events::Event::Resync) => self
                    .instances
                    .lock()
                    .expect("instances")
                    .keys()
                    .map(|k| {
                        (
                            k.clone(),
                            "resync after the event listener restarted".into(),
                        )
                    })
                    .collect(),
                Some(crate::events::Event::Domain(ev)) => {
                    if !ev.domain.starts_with(DOMAIN_PREFIX) {
                        continue;
                    }
                    let found = self
                        .instances
                        .lock()
                        .expect("instances")
                        .iter()
                        .find(|(_, i)| domain_name(&i.metadata.uid) == ev.domain)
                        .map(|(k, _)| k.clone());
                    let Some(key) = found else { continue };
                    tracing::info!(instance = %key, domain = %ev.domain, event = %ev.kind, detail = %ev.detail, "libvirt event");
                    vec![(key, format!("{} {}", ev.kind, ev.detail))]
                }
            };
            for (key, why) in keys {
                self.event_wakes
                    .lock()
                    .expect("event wakes")
                    .entry(key.clone())
                    .and_modify(|w| {
                        w.push_str("; ");
                        w.push_str(&why);
                    })
                    .or_insert(why);
                self.queue.add(key);
            }
        }
    }

    /// Reads the new console output of the guests still booting every
    /// `boot_poll` (idle while none boots), and wakes an instance as soon
    /// as its guest prints its ready line: Ready is reported without
    /// waiting for the next full convergence.
    async fn boot_loop(self: Arc<Self>, mut stop: Shutdown) {
        loop {
            if self.booting.lock().expect("booting").is_empty() {
                tokio::select! {
                    _ = self.boot_started.notified() => {}
                    _ = stopped(&mut stop) => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.opts.boot_poll) => {}
                _ = stopped(&mut stop) => return,
            }
            let watches: Vec<(ObjectRef, BootWatch)> = self
                .booting
                .lock()
                .expect("booting")
                .iter()
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect();
            let Ok(read) = tokio::task::spawn_blocking(move || {
                watches
                    .into_iter()
                    .map(|(k, w)| {
                        let r = read_for_ready(&w.log, w.read);
                        (k, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            else {
                continue;
            };
            for (key, (ready, upto)) in read {
                let mut booting = self.booting.lock().expect("booting");
                if ready {
                    booting.remove(&key);
                    drop(booting);
                    tracing::debug!(instance = %key, "guest printed its ready line");
                    self.queue.add(key);
                } else if let Some(w) = booting.get_mut(&key) {
                    w.read = w.read.max(upto);
                }
            }
        }
    }

    /// On a real host, makes the files of the Volumes and Snapshots bound
    /// to this node match them, every second: creates (empty, from an
    /// image, a snapshot or another volume), snapshots, and removes what
    /// is being deleted.
    async fn storage_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            if self.files.get().is_none() {
                continue;
            }
            if let Err(e) = self.converge_storage().await {
                tracing::warn!(error = %error_chain(&e), "volume and snapshot files");
            }
        }
    }

    pub async fn converge_storage(&self) -> Result<(), AgentError> {
        let files = self.files.get().cloned().expect("a real host");
        let (volumes, _) = self.api.list("/v1/volumes").await?;
        for v in volumes {
            let Ok(v) = serde_json::from_value::<Volume>(v) else {
                continue;
            };
            let key = ObjectRef::of(&v);
            if let Err(e) = self.converge_volume(&files, &v).await {
                tracing::warn!(volume = %key, error = %error_chain(&e), "volume file");
            }
        }
        let (snapshots, _) = self.api.list("/v1/snapshots").await?;
        for s in snapshots {
            let Ok(s) = serde_json::from_value::<Snapshot>(s) else {
                continue;
            };
            let key = ObjectRef::of(&s);
            if let Err(e) = self.converge_snapshot(&files, &s).await {
                tracing::warn!(snapshot = %key, error = %error_chain(&e), "snapshot file");
            }
        }
        Ok(())
    }

    async fn converge_volume(&self, files: &HostFiles, v: &Volume) -> Result<(), AgentError> {
        let status = v.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(());
        }
        let path = files.volume_path(&v.metadata.uid);
        let api_path = format!(
            "/v1/projects/{}/volumes/{}",
            v.metadata.project, v.metadata.name
        );
        if v.metadata.deletion_timestamp.is_some() {
            if status.attached_to.is_some() || status.location.is_none() {
                return Ok(());
            }
            let (f, p) = (files.clone(), path.clone());
            host_blocking(move || f.remove_file(&p)).await?;
            tracing::info!(volume = %ObjectRef::of(v), "volume file removed");
            return self
                .update_status::<Volume>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await;
        }
        if status.location.is_some() {
            return Ok(());
        }
        let project = v.metadata.project.as_str();
        let min = u64::from(v.spec.size_gib.unwrap_or(0)) << 30;
        // The source, as (file, format), when the volume copies one.
        let source: Option<(std::path::PathBuf, String)> = if let Some(img) = &v.spec.source.image {
            let for_ = format!("volumes/{}", v.metadata.name);
            let (image, sha) = match self.available_image(project, img, &for_).await? {
                Ok(x) => x,
                Err(_) => return Ok(()), // not yet
            };
            let fmt = match image.spec.format {
                ImageFormat::Raw => "raw",
                _ => "qcow2",
            };
            Some((
                self.pull_image(project, img, &sha, &for_).await?,
                fmt.into(),
            ))
        } else if let Some(snap) = &v.spec.source.snapshot {
            let Some(s) = self
                .api
                .get::<Snapshot>(&format!("/v1/projects/{project}/snapshots/{snap}"))
                .await?
            else {
                return Ok(());
            };
            let st = s.status.unwrap_or_default();
            match (st.phase, st.location) {
                (SnapshotPhase::Completed, Some(loc)) => Some((loc.into(), "qcow2".into())),
                _ => return Ok(()),
            }
        } else if let Some(src) = &v.spec.source.volume {
            let Some(s) = self
                .api
                .get::<Volume>(&format!("/v1/projects/{project}/volumes/{src}"))
                .await?
            else {
                return Ok(());
            };
            match s.status.and_then(|st| st.location) {
                Some(loc) => Some((loc.into(), "qcow2".into())),
                None => return Ok(()),
            }
        } else {
            None
        };
        let (f, p) = (files.clone(), path.clone());
        match source {
            Some((src, fmt)) => host_blocking(move || f.copy_image(&src, &fmt, &p, min)).await?,
            None => host_blocking(move || f.create_empty(&p, min.max(1 << 30))).await?,
        }
        let size = virtual_size_gib(&path).await;
        tracing::info!(volume = %ObjectRef::of(v), path = %path.display(), "volume file created");
        let location = path.display().to_string();
        self.update_status::<Volume>(&api_path, |o| {
            let s = o.status.get_or_insert_with(Default::default);
            s.location = Some(location.clone());
            s.size_gib = size;
        })
        .await
    }

    async fn converge_snapshot(
        &self,
        files: &HostFiles,
        snap: &Snapshot,
    ) -> Result<(), AgentError> {
        let status = snap.status.clone().unwrap_or_default();
        if status.node_name.as_deref() != Some(self.opts.node.as_str()) {
            return Ok(());
        }
        let path = files.snapshot_path(&snap.metadata.uid);
        let project = snap.metadata.project.as_str();
        let api_path = format!("/v1/projects/{project}/snapshots/{}", snap.metadata.name);
        if snap.metadata.deletion_timestamp.is_some() {
            if status.location.is_none() {
                return Ok(());
            }
            let (f, p) = (files.clone(), path.clone());
            host_blocking(move || f.remove_file(&p)).await?;
            return self
                .update_status::<Snapshot>(&api_path, |o| {
                    let s = o.status.get_or_insert_with(Default::default);
                    s.location = None;
                })
                .await;
        }
        if status.phase != SnapshotPhase::Pending {
            return Ok(());
        }
        let Some(volume) = self
            .api
            .get::<Volume>(&format!(
                "/v1/projects/{project}/volumes/{}",
                snap.spec.volume
            ))
            .await?
        else {
            return Ok(());
        };
        let Some(src) = volume.status.as_ref().and_then(|s| s.location.clone()) else {
            return Ok(());
        };
        // A guest may be writing: qemu-img reads the image as it stands
        // (crash-consistent; what the guest flushed is in it).
        let (f, p) = (files.clone(), path.clone());
        host_blocking(move || f.copy_image(std::path::Path::new(&src), "qcow2", &p, 0)).await?;
        let size = virtual_size_gib(&path).await;
        tracing::info!(snapshot = %ObjectRef::of(snap), "snapshot taken");
        let location = path.display().to_string();
        self.update_status::<Snapshot>(&api_path, |o| {
            let s = o.status.get_or_insert_with(Default::default);
            s.location = Some(location.clone());
            s.phase = SnapshotPhase::Completed;
            s.progress = 100;
            s.size_gib = size;
        })
        .await
    }

    /// Read-modify-write of an object's status through the API.
    async fn update_status<K>(&self, path: &str, edit: impl Fn(&mut K)) -> Result<(), AgentError>
    where
        K: Resource + serde::Serialize + serde::de::DeserializeOwned,
    {
        for _ in 0..5 {
            let Some(mut obj) = self.api.get::<K>(path).await? else {
                return Ok(());
            };
            edit(&mut obj);
            match self
                .api
                .put::<_, Value>(&format!("{path}/status"), &obj)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Other(format!(
            "status of {path} kept conflicting"
        )))
    }

    async fn informer(self: Arc<Self>, mut stop: Shutdown) {
        // The one list → watch → relist loop (corral-client's watcher).
        let mut watcher = self.api.watcher("/v1/instances");
        loop {
            let event = tokio::select! {
                e = watcher.next() => e,
                _ = stopped(&mut stop) => return,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    let e = ApiError::from(e);
                    tracing::warn!(error = %error_chain(&e), "listing or watching instances failed");
                    continue;
                }
            };
            match event {
                WatcherEvent::Restarted(items) => {
                    let mut map = self.instances.lock().expect("instances");
                    let old: Vec<ObjectRef> = map.keys().cloned().collect();
                    map.clear();
                    for v in items {
                        if let Ok(i) = serde_json::from_value::<Instance>(v) {
                            map.insert(ObjectRef::of(&i), i);
                        }
                    }
                    for k in old.into_iter().chain(map.keys().cloned()) {
                        self.queue.add(k);
                    }
                    drop(map);
                    self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                WatcherEvent::Added(object) | WatcherEvent::Modified(object) => {
                    if let Ok(i) = serde_json::from_value::<Instance>(object) {
                        let key = ObjectRef::of(&i);
                        self.instances
                            .lock()
                            .expect("instances")
                            .insert(key.clone(), i);
                        self.queue.add(key);
                    }
                }
                WatcherEvent::Deleted(object) => {
                    let key = ObjectRef::new(
                        object["metadata"]["project"].as_str().unwrap_or(""),
                        object["metadata"]["name"].as_str().unwrap_or(""),
                    );
                    self.instances.lock().expect("instances").remove(&key);
                    self.queue.add(key);
                }
            }
        }
    }

    async fn instance_type(&self, name: &str) -> Result<InstanceType, AgentError> {
        if let Some(t) = self.types.lock().expect("types").get(name) {
            return Ok(t.clone());
        }
        let t: InstanceType = self
            .api
            .get(&format!("/v1/instancetypes/{name}"))
            .await?
            .ok_or_else(|| AgentError::Other(format!("instance type {name:?} not found")))?;
        self.types
            .lock()
            .expect("types")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// vcpus, memory and root disk size (GiB) of an instance.
    async fn sizes(&self, i: &Instance) -> Result<(u32, u64, u32), AgentError> {
        match (i.spec.cpus, i.spec.memory_mib) {
            (Some(c), Some(m)) => Ok((c, u64::from(m), 0)),
            _ => {
                let t = self
                    .instance_type(
                        i.spec
                            .instance_type
                            .as_deref()
                            .unwrap_or(DEFAULT_INSTANCE_TYPE),
                    )
                    .await?;
                Ok((
                    t.spec.vcpus,
                    u64::from(t.spec.memory_mib),
                    t.spec.root_disk_gib,
                ))
            }
        }
    }

    /// An Image that is Available, or why not yet.
    /// `for_` names the bound object that uses it (`instances/NAME` or
    /// `volumes/NAME`): a node reads only images those use.
    async fn available_image(
        &self,
        project: &str,
        name: &str,
        for_: &str,
    ) -> Result<Result<(Image, String), Wait>, AgentError> {
        let Some(img) = self
            .api
            .get::<Image>(&format!("/v1/projects/{project}/images/{name}?for={for_}"))
            .await?
        else {
            return Ok(Err(Wait::new(
                "WaitingForImage",
                format!("image {name:?} not found"),
            )));
        };
        let status = img.status.clone().unwrap_or_default();
        match (status.phase, status.sha256.clone()) {
            (ImagePhase::Available, Some(sha)) => Ok(Ok((img, sha))),
            (phase, _) => Ok(Err(Wait::new(
                "WaitingForImage",
                format!(
                    "image {name:?} is {phase:?}{}",
                    status.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
            ))),
        }
    }

    /// The cached file of an image's bytes, pulled from the API once and
    /// verified against its sha256.
    async fn pull_image(
        &self,
        project: &str,
        name: &str,
        sha: &str,
        for_: &str,
    ) -> Result<std::path::PathBuf, AgentError> {
        let files = self.files.get().cloned().expect("a real host");
        let path = files
            .images()
            .path(sha)
            .map_err(crate::host::HostError::from)?;
        if path.is_file() {
            return Ok(path);
        }
        let _one = self.pulls.lock().await;
        if path.is_file() {
            return Ok(path);
        }
        tracing::info!(image = %name, %sha, "pulling image");
        let mut resp = self
            .api
            .download(&format!(
                "/v1/projects/{project}/images/{name}/content?for={for_}"
            ))
            .await?;
        let mut w = files
            .images()
            .writer()
            .map_err(crate::host::HostError::from)?;
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| AgentError::Other(format!("pulling image {name:?}: {e}")))?;
            let Some(chunk) = chunk else { break };
            w = tokio::task::spawn_blocking(move || w.write_all(&chunk).map(|()| w))
                .await
                .map_err(|e| AgentError::Other(e.to_string()))?
                .map_err(crate::host::HostError::from)?;
        }
        let want = sha.to_string();
        tokio::task::spawn_blocking(move || w.finish(Some(&want)))
            .await
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(crate::host::HostError::from)?;
        Ok(path)
    }

    /// Everything a domain needs: on a real host the image is pulled, the
    /// root disk and the seed are written.
    async fn domain_spec(&self, i: &Instance) -> Result<Result<DomainSpec, Wait>, AgentError> {
        let (vcpus, memory_mib, root_gib) = self.sizes(i).await?;
        let nics = if self.files.get().is_some() {
            match self.nic_specs(i).await? {
                Ok(n) => n,
                Err(w) => return Ok(Err(w)),
            }
        } else {
            Vec::new()
        };
        let mut spec = DomainSpec {
            node: self.opts.node.clone(),
            uid: i.metadata.uid.clone(),
            project: i.metadata.project.clone(),
            instance: i.metadata.name.clone(),
            vcpus,
            memory_mib,
            nics,
            ..Default::default()
        };
        let Some(files) = self.files.get().cloned() else {
            return Ok(Ok(spec));
        };
        let project = i.metadata.project.as_str();
        let uid = i.metadata.uid.clone();
        let mut volume_disks = Vec::new();
        for (volume, device) in attachments(i) {
            match self.volume_disk(project, &volume, &device).await? {
                Ok(d) => volume_disks.push(d),
                Err(w) => return Ok(Err(w)),
            }
        }
        let seed_disk = DiskSpec {
            path: files.seed_path(&uid),
            format: "raw".into(),
            target: SEED_DEVICE.into(),
            readonly: true,
            serial: None,
            cdrom: true,
        };
        let Some(image_name) = i.spec.image.as_deref() else {
            // Boot from volume: the volume is the root disk.
            let Some(boot) = i.spec.boot_volume.as_deref() else {
                return Ok(Err(Wait::new(
                    "NoBootDisk",
                    "the instance names neither an image nor a boot volume".into(),
                )));
            };
            let root = match self.volume_disk(project, boot, "vda").await? {
                Ok(d) => d,
                Err(w) => return Ok(Err(w)),
            };
            let seed = match self.seed(i).await? {
                Ok(s) => s,
                Err(w) => return Ok(Err(w)),
            };
            let (f, u) = (files.clone(), uid.clone());
            host_blocking(move || f.write_seed(&u, &seed)).await?;
            spec.disks = std::iter::once(root)
                .chain(volume_disks)
                .chain(std::iter::once(seed_disk))
                .collect();
            spec.console_log = Some(files.console_log(&uid));
            return Ok(Ok(spec));
        };
        let for_ = format!("instances/{}", i.metadata.name);
        let (image, sha) = match self.available_image(project, image_name, &for_).await? {
            Ok(x) => x,
            Err(w) => return Ok(Err(w)),
        };
        let format = match image.spec.format {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Iso => {
                return Ok(Err(Wait::new(
                    "UnsupportedImage",
                    format!("image {image_name:?} is an ISO; instances boot from disk images"),
                )))
            }
        };
        let base = self.pull_image(project, image_name, &sha, &for_).await?;
        if let Some(kernel) = image.spec.kernel.as_deref() {
            let (_, ksha) = match self.available_image(project, kernel, &for_).await? {
                Ok(x) => x,
                Err(w) => return Ok(Err(w)),
            };
            let kernel_path = self.pull_image(project, kernel, &ksha, &for_).await?;
            let initrd = match image.spec.ramdisk.as_deref() {
                Some(r) => {
                    let (_, rsha) = match self.available_image(project, r, &for_).await? {
                        Ok(x) => x,
                        Err(w) => return Ok(Err(w)),
                    };
                    Some(self.pull_image(project, r, &rsha, &for_).await?)
                }
                None => None,
            };
            spec.kernel = Some(KernelBoot {
                kernel: kernel_path,
                initrd,
                cmdline: image
                    .spec
                    .kernel_args
                    .clone()
                    .unwrap_or_else(|| "console=ttyS0 root=/dev/vda".into()),
            });
        }
        let seed = match self.seed(i).await? {
            Ok(s) => s,
            Err(w) => return Ok(Err(w)),
        };
        let f = files.clone();
        let u = uid.clone();
        let fmt = format.to_string();
        let b = base.clone();
        tokio::task::spawn_blocking(move || {
            f.ensure_root_disk(&u, &b, &fmt, u64::from(root_gib) << 30)?;
            f.write_seed(&u, &seed)
        })
        .await
        .map_err(|e| AgentError::Other(e.to_string()))??;
        spec.disks = std::iter::once(DiskSpec {
            path: files.root_disk(&uid),
            format: "qcow2".into(),
            target: "vda".into(),
            readonly: false,
            serial: None,
            cdrom: false,
        })
        .chain(volume_disks)
        .chain(std::iter::once(seed_disk))
        .collect();
        spec.console_log = Some(files.console_log(&uid));
        Ok(Ok(spec))
    }

    /// The NoCloud data of an instance, or why not yet.
    async fn seed(&self, i: &Instance) -> Result<Result<Seed, Wait>, AgentError> {
        let project = i.metadata.project.as_str();
        let uid = &i.metadata.uid;
        let mut public_keys = Vec::new();
        if let Some(k) = i.spec.key_name.as_deref() {
            match self
                .api
                .get::<KeyPair>(&format!(
                    "/v1/projects/{project}/keypairs/{k}?for=instances/{}",
                    i.metadata.name
                ))
                .await?
            {
                Some(kp) => public_keys.push(kp.spec.public_key),
                None => {
                    return Ok(Err(Wait::new(
                        "WaitingForKeyPair",
                        format!("key pair {k:?} not found"),
                    )))
                }
            }
        }
        Ok(Ok(Seed {
            instance_id: ec2::resource_id("Instance", uid).unwrap_or_else(|| uid.clone()),
            hostname: i.metadata.name.clone(),
            public_keys,
            user_data: i.spec.user_data.clone().unwrap_or_default().into_bytes(),
        }))
    }

    /// The disk of a volume created on this node, or why not yet.
    async fn volume_disk(
        &self,
        project: &str,
        volume: &str,
        device: &str,
    ) -> Result<Result<DiskSpec, Wait>, AgentError> {
        let v = self
            .api
            .get::<Volume>(&format!("/v1/projects/{project}/volumes/{volume}"))
            .await?;
        let status = v
            .as_ref()
            .and_then(|v| v.status.clone())
            .unwrap_or_default();
        let here = status.node_name.as_deref() == Some(self.opts.node.as_str());
        match (&v, here, status.location) {
            (Some(v), true, Some(location)) => Ok(Ok(DiskSpec {
                path: location.into(),
                format: "qcow2".into(),
                target: device.to_string(),
                readonly: false,
                // virtio serials hold 20 bytes: `vol` and the 17 hex
                // digits, as EC2's NVMe volumes show theirs.
                serial: ec2::resource_id("Volume", &v.metadata.uid).map(|id| id.replace('-', "")),
                cdrom: false,
            })),
            (None, ..) => Ok(Err(Wait::new(
                "WaitingForVolume",
                format!("volume {volume:?} not found"),
            ))),
            _ => Ok(Err(Wait::new(
                "WaitingForVolume",
                format!("volume {volume:?} is not created on this node yet"),
            ))),
        }
    }

    /// Hot-plugs and unplugs volumes so the domain has what the instance
    /// lists.
    async fn sync_volumes(&self, i: &Instance, name: &str) -> Result<(), AgentError> {
        let hv = self.hv.clone();
        let n = name.to_string();
        let current: Vec<String> = blocking(move || hv.disk_targets(&n))
            .await?
            .into_iter()
            .filter(|t| t != "vda" && t != SEED_DEVICE)
            .collect();
        let desired = attachments(i);
        for (volume, device) in &desired {
            if current.contains(device) {
                continue;
            }
            match self
                .volume_disk(&i.metadata.project, volume, device)
                .await?
            {
                Ok(disk) => {
                    tracing::info!(domain = name, volume = %volume, device = %device, "attaching volume");
                    let hv = self.hv.clone();
                    let n = name.to_string();
                    blocking(move || hv.attach_disk(&n, &disk)).await?;
                }
                Err(wait) => {
                    tracing::debug!(domain = name, reason = wait.reason, "volume not ready")
                }
            }
        }
        for device in current {
            if desired.iter().any(|(_, d)| *d == device) {
                continue;
            }
            tracing::info!(domain = name, device = %device, "detaching volume");
            let hv = self.hv.clone();
            let n = name.to_string();
            if let Err(e) = blocking(move || hv.detach_disk(&n, &device)).await {
                tracing::warn!(domain = name, error = %error_chain(&e), "detaching a volume");
            }
        }
        Ok(())
    }

    /// Makes the domain match the instance; returns when to look again.
    pub async fn converge(&self, key: &ObjectRef) -> Result<Option<Duration>, AgentError> {
        let instance = self.instances.lock().expect("instances").get(key).cloned();
        let Some(i) = instance else {
            return Ok(None);
        };
        let name = domain_name(&i.metadata.uid);
        let hv = self.hv.clone();
        let n = name.clone();
        let state = blocking(move || hv.state(&n)).await?;
        if let Some(why) = self.event_wakes.lock().expect("event wakes").remove(key) {
            tracing::info!(instance = %key, domain = %name, ?state, event = %why, "converging after a libvirt event");
        }

        if i.metadata.deletion_timestamp.is_some() {
            self.booting.lock().expect("booting").remove(key);
            if state.is_some() {
                let hv = self.hv.clone();
                let n = name.clone();
                blocking(move || {
                    hv.destroy(&n)?;
                    hv.undefine(&n)
                })
                .await?;
            }
            if let Some(files) = self.files.get().cloned() {
                let uid = i.metadata.uid.clone();
                tokio::task::spawn_blocking(move || files.remove_instance(&uid))
                    .await
                    .map_err(|e| AgentError::Other(e.to_string()))??;
                self.consoles.lock().expect("consoles").remove(&name);
                match self
                    .api
                    .delete(&format!("{}/console", instance_path(key)))
                    .await
                {
                    Ok(()) | Err(ApiError::Status { code: 404, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.report(
                key,
                Report {
                    phase: InstancePhase::Terminating,
                    provisioned: false,
                    reason: "Destroyed",
                    message: "the domain is destroyed and undefined",
                    ready: None,
                    drift: None,
                    lease: None,
                },
            )
            .await?;
            return Ok(None);
        }
        // MACs come from IPAM: wait for them before defining.
        let addressed = i.status.as_ref().is_some_and(|s| {
            s.addresses.len() == i.spec.nics.len() && s.addresses.iter().all(|a| !a.mac.is_empty())
        });
        if !addressed && state.is_none() {
            self.report(
                key,
                Report {
                    phase: InstancePhase::Provisioning,
                    provisioned: false,
                    reason: "WaitingForNetwork",
                    message: "waiting for network addresses",
                    ready: None,
                    drift: None,
                    lease: None,
                },
            )
            .await?;
            return Ok(None);
        }
        let mut drift = None;
        if let Some(files) = self.files.get() {
            let disk = files.root_disk(&i.metadata.uid);
            if state.is_some() && !disk.exists() {
                drift = Some(format!(
                    "the root disk {} was deleted outside Corral",
                    disk.display()
                ));
            }
        }
        let t0 = Instant::now();
        if state.is_none() {
            let spec = match self.domain_spec(&i).await? {
                Ok(spec) => spec,
                Err(wait) => {
                    self.report(
                        key,
                        Report {
                            phase: InstancePhase::Provisioning,
                            provisioned: false,
                            reason: wait.reason,
                            message: &wait.message,
                            ready: None,
                            drift: None,
                            lease: None,
                        },
                    )
                    .await?;
                    return Ok(Some(Duration::from_secs(5)));
                }
            };
            let specified = t0.elapsed();
            // The guest's network, DHCP reservation and rules exist before
            // it boots.
            self.sync_net().await?;
            if let Some(why) = self.network_failure(&i).await {
                self.report(
                    key,
                    Report {
                        phase: InstancePhase::Provisioning,
                        provisioned: false,
                        reason: "NetworkUnavailable",
                        message: &why,
                        ready: None,
                        drift: None,
                        lease: None,
                    },
                )
                .await?;
                return Ok(Some(Duration::from_secs(5)));
            }
            let planned = t0.elapsed();
            let hv = self.hv.clone();
            blocking(move || hv.define(&spec)).await?;
            tracing::debug!(
                instance = %key,
                spec_ms = specified.as_millis() as u64,
                network_ms = (planned - specified).as_millis() as u64,
                define_ms = (t0.elapsed() - planned).as_millis() as u64,
                "domain defined"
            );
        }
        if state.is_some() && self.files.get().is_some() {
            self.sync_volumes(&i, &name).await?;
        }
        // A reboot asked for (EC2 RebootInstances, `corral reboot`).
        let reboot = i
            .metadata
            .annotations
            .get(ec2::REBOOT_ANNOTATION)
            .filter(|want| {
                !i.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == CONDITION_REBOOTED && &c.message == *want)
                })
            })
            .cloned();
        // A boot is about to start: readiness is judged on what follows.
        let boots = matches!(
            (&reboot, state, i.spec.power_state),
            (Some(_), Some(PowerState::Running), _)
                | (
                    _,
                    None | Some(PowerState::Shutoff | PowerState::Crashed),
                    Desired::Running
                )
        );
        if boots {
            self.mark_boot(&i).await;
        }
        if let (Some(want), Some(PowerState::Running)) = (&reboot, state) {
            let hv = self.hv.clone();
            let n = name.clone();
            blocking(move || hv.reboot(&n)).await?;
            self.consoles.lock().expect("consoles").remove(&name);
            self.mark_rebooted(key, want).await?;
        }
        let hv = self.hv.clone();
        let n = name.clone();
        let desired = i.spec.power_state;
        let timeout = self.opts.stop_timeout;
        let t1 = Instant::now();
        let observed = blocking(move || converge_power(hv.as_ref(), &n, desired, timeout)).await?;
        if boots {
            tracing::debug!(
                instance = %key,
                power_ms = t1.elapsed().as_millis() as u64,
                ?observed,
                "power converged for a boot"
            );
        }
        let (phase, mut ready, mut reason) = match observed {
            PowerState::Running => (InstancePhase::Running, true, "Running"),
            PowerState::Paused => (InstancePhase::Paused, false, "Paused"),
            PowerState::Saved => (InstancePhase::Suspended, false, "Suspended"),
            PowerState::Shutoff => (InstancePhase::Stopped, false, "Stopped"),
            PowerState::Crashed => (InstancePhase::Failed, false, "Crashed"),
            PowerState::Other => (InstancePhase::Provisioning, false, "Transitioning"),
        };
        let mut again = None;
        let lease = match observed {
            PowerState::Running => self.lease_state(&i).await,
            _ => None,
        };
        if let Some(files) = self.files.get().cloned() {
            let uid = i.metadata.uid.clone();
            let log = files.console_log(&uid);
            let (tail, start) =
                tokio::task::spawn_blocking(move || files.console_tail(&uid, CONSOLE_BYTES))
                    .await
                    .map_err(|e| AgentError::Other(e.to_string()))??;
            self.sync_console(key, &name, &tail).await;
            if observed == PowerState::Running {
                let len = start + tail.len() as u64;
                let mark = self
                    .boot_marks
                    .lock()
                    .expect("boot marks")
                    .get(&name)
                    .copied()
                    .filter(|m| *m <= len) // virtlogd rotated the log
                    .unwrap_or(0);
                let since = &tail[(mark.saturating_sub(start) as usize).min(tail.len())..];
                ready = guest_ready(since);
                reason = if ready { "GuestBooted" } else { "Booting" };
                // The boot watcher wakes us when the guest is ready; the
                // console is forwarded every second while it boots and
                // every few seconds once it has.
                let mut booting = self.booting.lock().expect("booting");
                if ready {
                    booting.remove(key);
                } else if !booting.contains_key(key) {
                    booting.insert(
                        key.clone(),
                        BootWatch {
                            log: log.clone(),
                            // All before was searched just now.
                            read: len,
                        },
                    );
                    self.boot_started.notify_one();
                }
                again = Some(if ready {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(1)
                });
            } else {
                self.booting.lock().expect("booting").remove(key);
            }
        }
        self.report(
            key,
            Report {
                phase,
                provisioned: true,
                reason: "Defined",
                message: "",
                ready: Some((ready, reason)),
                drift: drift.as_deref(),
                lease: lease
                    .as_ref()
                    .map(|(ok, why, msg)| (*ok, *why, msg.as_str())),
            },
        )
        .await?;
        Ok(again)
    }

    /// Remembers where the console log ends before a boot.
    async fn mark_boot(&self, i: &Instance) {
        let Some(files) = self.files.get().cloned() else {
            return;
        };
        let path = files.console_log(&i.metadata.uid);
        let len = tokio::task::spawn_blocking(move || {
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        self.boot_marks
            .lock()
            .expect("boot marks")
            .insert(domain_name(&i.metadata.uid), len);
    }

    /// Sends the console's newest bytes to the API when they changed.
    async fn sync_console(&self, key: &ObjectRef, name: &str, tail: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tail.hash(&mut h);
        let h = h.finish();
        if self.consoles.lock().expect("consoles").get(name) == Some(&h) {
            return;
        }
        match self
            .api
            .put_bytes(&format!("{}/console", instance_path(key)), tail.to_vec())
            .await
        {
            Ok(()) => {
                self.consoles
                    .lock()
                    .expect("consoles")
                    .insert(name.to_string(), h);
            }
            Err(e) => {
                tracing::warn!(instance = %key, error = %error_chain(&e), "sending the console failed")
            }
        }
    }

    /// Records that the reboot asked for at `want` was done.
    async fn mark_rebooted(&self, key: &ObjectRef, want: &str) -> Result<(), AgentError> {
        self.update_status::<Instance>(&instance_path(key), |i| {
            let generation = i.metadata.generation;
            let s = i.status.get_or_insert_with(InstanceStatus::default);
            set_condition(
                &mut s.conditions,
                CONDITION_REBOOTED,
                ConditionStatus::True,
                "Requested",
                want,
                generation,
                Utc::now(),
            );
        })
        .await
    }

    /// Writes this agent's part of the status: phase, Provisioned, Ready,
    /// launchTime. Leaves the rest (addresses, scheduling) alone.
    async fn report(&self, key: &ObjectRef, r: Report<'_>) -> Result<(), AgentError> {
        let Report {
            phase,
            provisioned,
            reason,
            message,
            ready,
            drift,
            lease,
        } = r;
        let path = instance_path(key);
        // Skip the round trips when the informer's copy already says so.
        if let Some(cached) = self.instances.lock().expect("instances").get(key) {
            if reported(cached, &r) {
                return Ok(());
            }
        }
        // The informer's copy is tried first (no GET on the way to Ready);
        // if it is stale the write conflicts and the next try reads afresh.
        let mut cached = self.instances.lock().expect("instances").get(key).cloned();
        for _ in 0..5 {
            let (current, from_cache) = match cached.take() {
                Some(i) => (Some(i), true),
                None => (self.api.get::<Instance>(&path).await?, false),
            };
            let Some(mut i) = current else {
                return Ok(());
            };
            if i.status.as_ref().and_then(|s| s.node_name.as_deref())
                != Some(self.opts.node.as_str())
            {
                // Only the server's copy decides that it is not ours.
                if from_cache {
                    continue;
                }
                return Ok(());
            }
            let before = i.status.clone();
            let generation = i.metadata.generation;
            let now = Utc::now();
            let s = i.status.get_or_insert_with(InstanceStatus::default);
            s.phase = phase;
            s.message = (!message.is_empty()).then(|| message.to_string());
            let p = if provisioned {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            set_condition(
                &mut s.conditions,
                Instance::CONDITION_PROVISIONED,
                p,
                reason,
                message,
                generation,
                now,
            );
            let (r, why) = ready.unwrap_or((false, reason));
            let r = if r {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            set_condition(
                &mut s.conditions,
                Instance::CONDITION_READY,
                r,
                why,
                "",
                generation,
                now,
            );
            match drift {
                Some(why) => {
                    set_condition(
                        &mut s.conditions,
                        Instance::CONDITION_DRIFTED,
                        ConditionStatus::True,
                        "DiskMissing",
                        why,
                        generation,
                        now,
                    );
                }
                None => s
                    .conditions
                    .retain(|c| c.type_ != Instance::CONDITION_DRIFTED),
            }
            if let Some((ok, why, msg)) = lease {
                set_condition(
                    &mut s.conditions,
                    CONDITION_LEASED,
                    if ok {
                        ConditionStatus::True
                    } else {
                        ConditionStatus::False
                    },
                    why,
                    msg,
                    generation,
                    now,
                );
            }
            if phase == InstancePhase::Running && s.launch_time.is_none() {
                s.launch_time = Some(now);
            }
            if i.status == before {
                return Ok(());
            }
            match self
                .api
                .put::<_, Value>(&format!("{path}/status"), &i)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(ApiError::Status { code: 404, .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Other(format!(
            "status of {key} kept conflicting"
        )))
    }

    /// What the agent knows is bound to it (for tests and `corral describe`).
    pub fn bound(&self) -> Vec<ObjectRef> {
        self.instances
            .lock()
            .expect("instances")
            .keys()
            .cloned()
            .collect()
    }
}

/// Whether `i`'s status already carries what `report` would write.
fn reported(i: &Instance, r: &Report<'_>) -> bool {
    let Report {
        phase,
        provisioned,
        reason,
        message,
        ready,
        drift,
        lease,
    } = *r;
    let Some(s) = &i.status else { return false };
    let drifted = s
        .conditions
        .iter()
        .find(|c| c.type_ == Instance::CONDITION_DRIFTED)
        .map(|c| c.message.as_str());
    if drifted != drift {
        return false;
    }
    let cond = |t: &str, want: bool, why: &str| {
        s.conditions.iter().any(|c| {
            c.type_ == t
                && (c.status == ConditionStatus::True) == want
                && c.reason == why
                && c.observed_generation == i.metadata.generation
        })
    };
    let (r, why) = ready.unwrap_or((false, reason));
    let leased = lease.is_none_or(|(ok, why, msg)| {
        s.conditions.iter().any(|c| {
            c.type_ == CONDITION_LEASED
                && (c.status == ConditionStatus::True) == ok
                && c.reason == why
                && c.message == msg
        })
    });
    leased
        && s.phase == phase
        && s.message.as_deref().unwrap_or("") == message
        && cond(Instance::CONDITION_PROVISIONED, provisioned, reason)
        && cond(Instance::CONDITION_READY, r, why)
        && (phase != InstancePhase::Running || s.launch_time.is_some())
}

/// This agent's part of an instance's status.
#[derive(Debug, Clone, Copy)]
struct Report<'a> {
    phase: InstancePhase,
    provisioned: bool,
    reason: &'a str,
    message: &'a str,
    /// Ready and its reason (None: not ready, for `reason`).
    ready: Option<(bool, &'a str)>,
    /// Why the instance drifted from what Corral made, if it did.
    drift: Option<&'a str>,
    /// The `AddressLeased` condition (status, reason, message); `None`
    /// leaves it as it is.
    lease: Option<(bool, &'a str, &'a str)>,
}

/// Searches `log` from byte `from` (less a mark's length, so a mark split
/// across reads is found) for a ready mark. Answers whether one was found
/// and how far the log was read.
fn read_for_ready(log: &std::path::Path, from: u64) -> (bool, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return (false, from);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // virtlogd rotated the log (or it was replaced): start over.
    let from = if len < from { 0 } else { from };
    let overlap = READY_MARKS.iter().map(|m| m.len()).max().unwrap_or(0) as u64;
    let start = from.saturating_sub(overlap);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (false, from);
    }
    let mut buf = Vec::with_capacity((len - start.min(len)) as usize);
    if f.take(len - start.min(len)).read_to_end(&mut buf).is_err() {
        return (false, from);
    }
    let found = READY_MARKS
        .iter()
        .any(|m| buf.windows(m.len()).any(|w| w == *m));
    (found, start + buf.len() as u64)
}

async fn host_blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::host::Result<T> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Other(e.to_string()))?
        .map_err(AgentError::from)
}

/// A qcow2 file's virtual size in whole GiB (rounded up).
async fn virtual_size_gib(path: &std::path::Path) -> Option<u32> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .await
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let bytes = v["virtual-size"].as_u64()?;
    u32::try_from(bytes.div_ceil(1 << 30)).ok()
}

/// (volume, guest device) of each volume attachment; devices not named
/// get the first free of vdb, vdc, ...
fn attachments(i: &Instance) -> Vec<(String, String)> {
    let named: Vec<&str> = i
        .spec
        .volumes
        .iter()
        .filter_map(|a| a.device.as_deref())
        .collect();
    let mut free = (b'b'..=b'y')
        .map(|c| format!("vd{}", c as char))
        .filter(|d| !named.contains(&d.as_str()));
    i.spec
        .volumes
        .iter()
        .filter_map(|a| {
            let device = a.device.clone().or_else(|| free.next())?;
            Some((a.volume.clone(), device))
        })
        .collect()
}

/// Why a domain cannot be built yet.
#[derive(Debug)]
struct Wait {
    reason: &'static str,
    message: String,
}

impl Wait {
    fn new(reason: &'static str, message: String) -> Wait {
        Wait { reason, message }
    }
}

/// Where the NoCloud seed goes: an IDE CD-ROM, as Nova attaches config
/// drives, so virtio disk names are the root disk's and the volumes'.
const SEED_DEVICE: &str = "hdc";
/// Console bytes forwarded to the API (EC2 returns the last 64 KiB).
const CONSOLE_BYTES: u64 = 64 * 1024;
/// Condition recording the last reboot request done (its message is the
/// request's timestamp).
pub const CONDITION_REBOOTED: &str = "Rebooted";
/// Condition: every NIC's DHCP lease holds the address IPAM allocated.
pub const CONDITION_LEASED: &str = "AddressLeased";

/// Drives one domain towards `desired`; returns what it is afterwards.
fn converge_power(
    hv: &dyn Hypervisor,
    name: &str,
    desired: Desired,
    stop_timeout: Duration,
) -> crate::hypervisor::Result<PowerState> {
    let state = hv.state(name)?.unwrap_or(PowerState::Shutoff);
    if !matches!(
        (desired, state),
        (Desired::Running, PowerState::Running)
            | (Desired::Stopped, PowerState::Shutoff | PowerState::Saved)
            | (Desired::Paused, PowerState::Paused)
            | (Desired::Suspended, PowerState::Saved | PowerState::Shutoff)
    ) {
        tracing::info!(domain = name, ?state, ?desired, "changing the power state");
    }
    match (desired, state) {
        (Desired::Running, PowerState::Running) => {}
        (Desired::Running, PowerState::Paused) => hv.resume(name)?,
        (Desired::Running, PowerState::Crashed) => {
            hv.destroy(name)?;
            hv.start(name)?;
        }
        (Desired::Running, _) => hv.start(name)?,
        (Desired::Stopped, PowerState::Running | PowerState::Paused) => {
            if state == PowerState::Paused {
                hv.resume(name)?;
            }
            hv.shutdown(name)?;
            let deadline = std::time::Instant::now() + stop_timeout;
            while hv.state(name)? == Some(PowerState::Running)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            if hv.state(name)? != Some(PowerState::Shutoff) {
                hv.destroy(name)?;
            }
        }
        (Desired::Stopped, _) => {}
        (Desired::Paused, PowerState::Running) => hv.pause(name)?,
        (Desired::Paused, PowerState::Shutoff | PowerState::Saved) => {
            hv.start(name)?;
            hv.pause(name)?;
        }
        (Desired::Paused, _) => {}
        (Desired::Suspended, PowerState::Running | PowerState::Paused) => hv.save(name)?,
        (Desired::Suspended, _) => {}
    }
    Ok(hv.state(name)?.unwrap_or(PowerState::Shutoff))
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut Shutdown) {
    let _ = stop.wait_for(|s| *s).await;
}
