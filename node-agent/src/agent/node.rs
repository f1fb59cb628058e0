//! The agent's Node: registered (created if missing, with what the host
//! offers), then heartbeated with `Ready` and `HypervisorReachable`. The
//! agent writes nothing of its Node but its status (and the labels it is
//! created with).

use std::sync::Arc;

use chrono::Utc;
use corral_api_types::{
    ConditionStatus, HypervisorInfo, HypervisorType, Node, NodeResources, NodeSpec, Resource,
};
use corral_runtime::status::set_condition;
use corral_runtime::{error_chain, Shutdown};
use serde_json::Value;

use super::{blocking, stopped, Agent, AgentError};
use crate::api::ApiError;

impl Agent {
    pub(super) async fn register(&self) -> Result<(), AgentError> {
        let hv = self.hv.clone();
        let facts = blocking(move || hv.facts()).await?;
        self.choose_host(&facts.virt_type).await?;
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
        let vtep = self.opts.vtep.map(|a| a.to_string());
        self.update_node_status(move |status| {
            status.vtep = vtep.clone();
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

    pub(super) async fn heartbeat_loop(self: Arc<Self>, mut stop: Shutdown) {
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
}
