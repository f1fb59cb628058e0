//! Node lifecycle: a Node whose agent stops heartbeating becomes
//! `Ready=Unknown`, and the Instances on it phase `Unknown` — never Failed,
//! never rescheduled (there is no fencing yet: the guests may well still
//! run). When the agent is back it reports Ready and every instance's true
//! phase itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::{ConditionStatus, EventType, Instance, InstancePhase, Node};
use corral_runtime::status::{set_condition, update_with_retry, EventRecorder};
use corral_runtime::{Action, Cache, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

pub struct NodeLifecycle {
    store: ResourceStore,
    instances: Cache<Instance>,
    /// How long a heartbeat may be late before the node is Unknown.
    grace: Duration,
    events: EventRecorder,
}

impl NodeLifecycle {
    pub fn new(store: ResourceStore, instances: Cache<Instance>, grace: Duration) -> NodeLifecycle {
        NodeLifecycle {
            events: EventRecorder::new(store.clone(), "node-lifecycle"),
            store,
            instances,
            grace,
        }
    }
}

#[async_trait]
impl Reconciler<Node> for NodeLifecycle {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Node>>,
    ) -> Result<Action, ReconcileError> {
        let Some(node) = object else {
            return Ok(Action::AwaitChange);
        };
        let Some(status) = &node.status else {
            return Ok(Action::Requeue(self.grace));
        };
        let Some(beat) = status.heartbeat_time else {
            return Ok(Action::Requeue(self.grace));
        };
        let age = (Utc::now() - beat).to_std().unwrap_or_default();
        if age < self.grace {
            return Ok(Action::Requeue(
                self.grace - age + Duration::from_millis(100),
            ));
        }
        let ready_known = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .is_none_or(|c| c.status != ConditionStatus::Unknown);
        if ready_known {
            let message = format!("no heartbeat for {}s", age.as_secs());
            let now = Utc::now();
            update_with_retry::<Node, _>(&self.store, "", &key.name, |n| {
                let Some(s) = n.status.as_mut() else {
                    return false;
                };
                set_condition(
                    &mut s.conditions,
                    "Ready",
                    ConditionStatus::Unknown,
                    "NodeStatusUnknown",
                    &message,
                    n.metadata.generation,
                    now,
                )
            })
            .await?;
            self.events
                .record(node.as_ref(), EventType::Warning, "NodeNotReady", &message)
                .await;
            tracing::warn!(node = %key.name, "node stopped heartbeating; marking Unknown");
        }
        // Its instances are Unknown too (repeated until the agent is back,
        // so late bindings are covered).
        for i in self.instances.list() {
            let on_node =
                i.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(key.name.as_str());
            let phase = i.status.as_ref().map(|s| s.phase);
            if !on_node
                || matches!(phase, Some(InstancePhase::Unknown))
                || i.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            update_with_retry::<Instance, _>(
                &self.store,
                &i.metadata.project,
                &i.metadata.name,
                |inst| {
                    let Some(s) = inst.status.as_mut() else {
                        return false;
                    };
                    if s.node_name.as_deref() != Some(key.name.as_str())
                        || s.phase == InstancePhase::Unknown
                    {
                        return false;
                    }
                    s.phase = InstancePhase::Unknown;
                    s.message = Some(format!("node {} is not reporting", key.name));
                    true
                },
            )
            .await?;
        }
        Ok(Action::Requeue(self.grace))
    }
}
