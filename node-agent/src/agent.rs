//! The agent loop: register the Node, heartbeat, follow the Instances
//! bound to this node, converge the hypervisor to them, report status.
//!
//! Convergence is level-triggered per instance (one worker per key at a
//! time, via the runtime's work queue) and backed by a periodic resync that
//! also finds drift: a Corral domain destroyed by hand is started again,
//! and a domain named like Corral's that no Instance owns is removed.
//! Restarting the agent restarts no guest: a running domain that should run
//! is left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use corral_api_types::{
    ConditionStatus, HypervisorInfo, HypervisorType, Instance, InstancePhase, InstanceStatus,
    InstanceType, Node, NodeResources, NodeSpec, PowerState as Desired, Resource,
    DEFAULT_INSTANCE_TYPE,
};
use corral_runtime::status::set_condition;
use corral_runtime::{error_chain, ObjectRef, QueueOptions, Shutdown, WorkQueue};
use serde_json::Value;

use crate::api::{ApiClient, ApiError};
use crate::hypervisor::{domain_name, DomainSpec, Hypervisor, PowerState, DOMAIN_PREFIX};

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API")]
    Api(#[from] ApiError),
    #[error("hypervisor")]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
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
}

fn instance_path(key: &ObjectRef) -> String {
    format!("/v1/projects/{}/instances/{}", key.project, key.name)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::hypervisor::Result<T> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Other(e.to_string()))?
        .map_err(AgentError::from)
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
        })
    }

    /// Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: Shutdown) -> Result<(), AgentError> {
        // Keep trying to register: the server may start after us.
        let mut delay = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %self.opts.node, error = %e, "cannot register yet");
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
            tokio::spawn(self.clone().heartbeat_loop(stop.clone())),
            tokio::spawn(self.clone().informer(stop.clone())),
            tokio::spawn(self.clone().resync_loop(stop.clone())),
        ];
        for _ in 0..self.opts.concurrency.max(1) {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(key) = me.queue.get().await {
                    match me.converge(&key).await {
                        Ok(Some(after)) => {
                            me.queue.forget(&key);
                            me.queue.add_after(key.clone(), after);
                        }
                        Ok(None) => me.queue.forget(&key),
                        Err(e) => {
                            let d = me.queue.add_rate_limited(key.clone());
                            tracing::warn!(instance = %key, error = %error_chain(&e), retry_in = ?d, "converge failed");
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
            status.allocatable = resources.clone();
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
        Ok(removed)
    }

    async fn informer(self: Arc<Self>, mut stop: Shutdown) {
        let path = "/v1/instances";
        'relist: loop {
            if *stop.borrow() {
                return;
            }
            let (items, mut rv) = match self.api.list(path).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "listing instances failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            {
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
            }
            self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
            loop {
                let mut events = match self.api.watch(path, &rv).await {
                    Ok(e) => e,
                    Err(ApiError::Status { code: 410, .. }) => continue 'relist,
                    Err(e) => {
                        tracing::warn!(error = %error_chain(&e), "watching instances failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    let event = tokio::select! {
                        e = events.recv() => e,
                        _ = stopped(&mut stop) => return,
                    };
                    let Some(event) = event else { break };
                    if let Some(v) = event.object["metadata"]["resourceVersion"].as_str() {
                        rv = v.to_string();
                    }
                    match event.type_.as_str() {
                        "ADDED" | "MODIFIED" => {
                            if let Ok(i) = serde_json::from_value::<Instance>(event.object) {
                                let key = ObjectRef::of(&i);
                                self.instances
                                    .lock()
                                    .expect("instances")
                                    .insert(key.clone(), i);
                                self.queue.add(key);
                            }
                        }
                        "DELETED" => {
                            let key = ObjectRef::new(
                                event.object["metadata"]["project"].as_str().unwrap_or(""),
                                event.object["metadata"]["name"].as_str().unwrap_or(""),
                            );
                            self.instances.lock().expect("instances").remove(&key);
                            self.queue.add(key);
                        }
                        "ERROR" => continue 'relist,
                        _ => {}
                    }
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

    async fn domain_spec(&self, i: &Instance) -> Result<DomainSpec, AgentError> {
        let (vcpus, memory_mib) = match (i.spec.cpus, i.spec.memory_mib) {
            (Some(c), Some(m)) => (c, u64::from(m)),
            _ => {
                let t = self
                    .instance_type(
                        i.spec
                            .instance_type
                            .as_deref()
                            .unwrap_or(DEFAULT_INSTANCE_TYPE),
                    )
                    .await?;
                (t.spec.vcpus, u64::from(t.spec.memory_mib))
            }
        };
        let nics = i
            .status
            .as_ref()
            .map(|s| {
                s.addresses
                    .iter()
                    .map(|a| (a.mac.clone(), a.network.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(DomainSpec {
            uid: i.metadata.uid.clone(),
            project: i.metadata.project.clone(),
            instance: i.metadata.name.clone(),
            vcpus,
            memory_mib,
            nics,
        })
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

        if i.metadata.deletion_timestamp.is_some() {
            if state.is_some() {
                let hv = self.hv.clone();
                let n = name.clone();
                blocking(move || {
                    hv.destroy(&n)?;
                    hv.undefine(&n)
                })
                .await?;
            }
            self.report(
                key,
                InstancePhase::Terminating,
                false,
                "Destroyed",
                "the domain is destroyed and undefined",
                None,
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
                InstancePhase::Provisioning,
                false,
                "WaitingForNetwork",
                "waiting for network addresses",
                None,
            )
            .await?;
            return Ok(None);
        }
        if state.is_none() {
            let spec = self.domain_spec(&i).await?;
            let hv = self.hv.clone();
            blocking(move || hv.define(&spec)).await?;
        }
        let hv = self.hv.clone();
        let n = name.clone();
        let desired = i.spec.power_state;
        let timeout = self.opts.stop_timeout;
        let observed = blocking(move || converge_power(hv.as_ref(), &n, desired, timeout)).await?;
        let (phase, ready, reason) = match observed {
            PowerState::Running => (InstancePhase::Running, true, "Running"),
            PowerState::Paused => (InstancePhase::Paused, false, "Paused"),
            PowerState::Saved => (InstancePhase::Suspended, false, "Suspended"),
            PowerState::Shutoff => (InstancePhase::Stopped, false, "Stopped"),
            PowerState::Crashed => (InstancePhase::Failed, false, "Crashed"),
            PowerState::Other => (InstancePhase::Provisioning, false, "Transitioning"),
        };
        self.report(key, phase, true, "Defined", "", Some((ready, reason)))
            .await?;
        Ok(None)
    }

    /// Writes this agent's part of the status: phase, Provisioned, Ready,
    /// launchTime. Leaves the rest (addresses, scheduling) alone.
    async fn report(
        &self,
        key: &ObjectRef,
        phase: InstancePhase,
        provisioned: bool,
        reason: &str,
        message: &str,
        ready: Option<(bool, &str)>,
    ) -> Result<(), AgentError> {
        let path = instance_path(key);
        // Skip the round trips when the informer's copy already says so.
        if let Some(cached) = self.instances.lock().expect("instances").get(key) {
            if reported(cached, phase, provisioned, reason, message, ready) {
                return Ok(());
            }
        }
        for _ in 0..5 {
            let Some(mut i) = self.api.get::<Instance>(&path).await? else {
                return Ok(());
            };
            if i.status.as_ref().and_then(|s| s.node_name.as_deref())
                != Some(self.opts.node.as_str())
            {
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
fn reported(
    i: &Instance,
    phase: InstancePhase,
    provisioned: bool,
    reason: &str,
    message: &str,
    ready: Option<(bool, &str)>,
) -> bool {
    let Some(s) = &i.status else { return false };
    let cond = |t: &str, want: bool, why: &str| {
        s.conditions.iter().any(|c| {
            c.type_ == t
                && (c.status == ConditionStatus::True) == want
                && c.reason == why
                && c.observed_generation == i.metadata.generation
        })
    };
    let (r, why) = ready.unwrap_or((false, reason));
    s.phase == phase
        && s.message.as_deref().unwrap_or("") == message
        && cond(Instance::CONDITION_PROVISIONED, provisioned, reason)
        && cond(Instance::CONDITION_READY, r, why)
        && (phase != InstancePhase::Running || s.launch_time.is_some())
}

/// Drives one domain towards `desired`; returns what it is afterwards.
fn converge_power(
    hv: &dyn Hypervisor,
    name: &str,
    desired: Desired,
    stop_timeout: Duration,
) -> crate::hypervisor::Result<PowerState> {
    let state = hv.state(name)?.unwrap_or(PowerState::Shutoff);
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
