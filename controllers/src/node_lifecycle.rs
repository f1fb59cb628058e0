//! Node lifecycle: a Node whose agent stops heartbeating becomes
//! `Ready=Unknown`, and the Instances on it phase `Unknown` — never Failed,
//! never rescheduled (there is no fencing yet: the guests may well still
//! run). When the agent is back it reports Ready and every instance's true
//! phase itself.
//!
//! A heartbeat is aged by this controller's own clock, from when it saw the
//! heartbeat change (as Kubernetes' node lifecycle controller does), never
//! by comparing the agent's timestamp with this host's time: a node whose
//! clock runs fast cannot stay Ready when dead, nor one running slow look
//! dead when alive. How far the agent's clock is off is reported as the
//! Node's `ClockSynchronized` condition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
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
    /// Per node: the last heartbeat value seen and when this process saw
    /// it change.
    seen: Mutex<HashMap<String, (DateTime<Utc>, Instant)>>,
}

/// Clock offsets up to this are not worth a condition.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

impl NodeLifecycle {
    pub fn new(store: ResourceStore, instances: Cache<Instance>, grace: Duration) -> NodeLifecycle {
        NodeLifecycle {
            events: EventRecorder::new(store.clone(), "node-lifecycle"),
            store,
            instances,
            grace,
            seen: Mutex::default(),
        }
    }

    /// When this process first saw `beat` as the node's heartbeat, and
    /// whether that is now (a new heartbeat).
    fn observed(&self, node: &str, beat: DateTime<Utc>) -> (Instant, bool) {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("seen heartbeats");
        match seen.get(node) {
            Some((b, at)) if *b == beat => (*at, false),
            _ => {
                seen.insert(node.to_string(), (beat, now));
                (now, true)
            }
        }
    }

    /// Sets `ClockSynchronized` from how far `beat` is from this host's
    /// time as it arrives (network delay is noise under the threshold).
    async fn check_skew(&self, node: &Node, beat: DateTime<Utc>) -> Result<(), ReconcileError> {
        let skew = beat - Utc::now();
        let secs = skew.num_seconds();
        let (status, reason, message) = if skew.abs().to_std().unwrap_or_default() > MAX_CLOCK_SKEW
        {
            let way = if secs > 0 { "ahead of" } else { "behind" };
            (
                ConditionStatus::False,
                "ClockSkew",
                format!(
                    "the agent's clock is {}s {way} the control plane's; liveness is judged by the control plane's clock",
                    secs.abs()
                ),
            )
        } else {
            (ConditionStatus::True, "ClockInSync", String::new())
        };
        let current = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ClockSynchronized"));
        if current.is_some_and(|c| c.status == status && c.reason == reason) {
            return Ok(());
        }
        let now = Utc::now();
        update_with_retry::<Node, _>(&self.store, "", &node.metadata.name, |n| {
            let Some(s) = n.status.as_mut() else {
                return false;
            };
            set_condition(
                &mut s.conditions,
                "ClockSynchronized",
                status,
                reason,
                &message,
                n.metadata.generation,
                now,
            )
        })
        .await?;
        Ok(())
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
        let (seen_at, fresh) = self.observed(&key.name, beat);
        if fresh {
            self.check_skew(&node, beat).await?;
        }
        let age = seen_at.elapsed();
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
