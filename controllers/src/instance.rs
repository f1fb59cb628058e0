//! The instance controller: owns an Instance's life around the agent.
//!
//! ```text
//!  Pending ─scheduler→ Scheduled ─agent→ Provisioning → Running ⇄ Stopped/Paused/Suspended
//!     │                                                   │
//!     └────────────── delete ─────────→ Terminating ──agent destroyed domain──→ (gone)
//!                                                         └─ another finalizer keeps the record → Terminated
//! ```
//!
//! - Puts the `corral/instance` finalizer on every live Instance, so the
//!   object outlives its domain: deletion marks it Terminating, the agent
//!   destroys the domain and reports `Provisioned=False/Destroyed`, then
//!   this controller lets the object go (and IPAM releases its addresses).
//!   An instance never placed, or whose Node is gone, goes at once.
//! - Reports references to objects that do not exist (yet) as condition
//!   `ReferencesResolved=False` naming them, and clears it when they appear
//!   (GitOps applies in any order).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::{
    ConditionStatus, Image, Instance, InstancePhase, InstanceStatus, KeyPair, Network, Node,
    SecurityGroup, Volume,
};
use corral_runtime::status::{
    condition, remove_finalizer, set_condition, update_cached, update_with_retry,
};
use corral_runtime::{Action, Cache, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

pub const FINALIZER: &str = Instance::FINALIZER;
pub const CONDITION_REFERENCES: &str = "ReferencesResolved";

/// Caches of everything an Instance may name.
#[derive(Clone)]
pub struct Referents {
    pub networks: Cache<Network>,
    pub keypairs: Cache<KeyPair>,
    pub images: Cache<Image>,
    pub volumes: Cache<Volume>,
    pub security_groups: Cache<SecurityGroup>,
    pub nodes: Cache<Node>,
}

pub struct InstanceController {
    store: ResourceStore,
    refs: Referents,
}

impl InstanceController {
    pub fn new(store: ResourceStore, refs: Referents) -> InstanceController {
        InstanceController { store, refs }
    }

    /// Human-readable list of what the instance names but does not exist.
    fn missing(&self, i: &Instance) -> Vec<String> {
        let p = &i.metadata.project;
        let key = |n: &str| ObjectRef::new(p, n);
        let mut missing = Vec::new();
        for (idx, nic) in i.spec.nics.iter().enumerate() {
            if self.refs.networks.get(&key(&nic.network)).is_none() {
                missing.push(format!(
                    "spec.nics[{idx}].network: network {:?} not found",
                    nic.network
                ));
            }
            for sg in &nic.security_groups {
                if self.refs.security_groups.get(&key(sg)).is_none() {
                    missing.push(format!(
                        "spec.nics[{idx}].securityGroups: security group {sg:?} not found"
                    ));
                }
            }
        }
        if let Some(k) = &i.spec.key_name {
            if self.refs.keypairs.get(&key(k)).is_none() {
                missing.push(format!("spec.keyName: key pair {k:?} not found"));
            }
        }
        if let Some(img) = &i.spec.image {
            if self.refs.images.get(&key(img)).is_none() {
                missing.push(format!("spec.image: image {img:?} not found"));
            }
        }
        if let Some(v) = &i.spec.boot_volume {
            if self.refs.volumes.get(&key(v)).is_none() {
                missing.push(format!("spec.bootVolume: volume {v:?} not found"));
            }
        }
        for (idx, a) in i.spec.volumes.iter().enumerate() {
            if self.refs.volumes.get(&key(&a.volume)).is_none() {
                missing.push(format!(
                    "spec.volumes[{idx}].volume: volume {:?} not found",
                    a.volume
                ));
            }
        }
        missing
    }

    /// Whether the domain is known to be gone, so the object may go.
    fn cleaned_up(&self, i: &Instance) -> bool {
        let Some(status) = &i.status else { return true };
        let Some(node) = &status.node_name else {
            return true;
        };
        if self.refs.nodes.get(&ObjectRef::new("", node)).is_none() {
            return true;
        }
        condition(&status.conditions, Instance::CONDITION_PROVISIONED)
            .is_some_and(|c| c.status == ConditionStatus::False && c.reason == "Destroyed")
    }
}

impl InstanceController {
    /// Lets a deleted instance whose domain is gone go. When another
    /// finalizer keeps its record (EC2 shows terminated instances for an
    /// hour), the record says Terminated in the same write, and from then
    /// on it holds no capacity, address or quota ([`Instance::is_terminated`]).
    async fn release(&self, instance: &Instance) -> Result<(), ReconcileError> {
        let (p, n) = (&instance.metadata.project, &instance.metadata.name);
        if instance.metadata.finalizers.iter().any(|f| f != FINALIZER) {
            let kept = update_with_retry::<Instance, _>(&self.store, p, n, |i| {
                if !i.metadata.finalizers.iter().any(|f| f != FINALIZER)
                    || !i.metadata.finalizers.iter().any(|f| f == FINALIZER)
                {
                    return false;
                }
                i.metadata.finalizers.retain(|f| f != FINALIZER);
                let s = i.status.get_or_insert_with(InstanceStatus::default);
                s.phase = InstancePhase::Terminated;
                // Its addresses are IPAM's to hand out again.
                s.addresses.clear();
                s.message = Some("terminated: the domain is gone; only this record remains".into());
                true
            })
            .await?;
            if kept.is_none_or(|i| i.is_terminated()) {
                return Ok(());
            }
        }
        remove_finalizer(&self.store, instance, FINALIZER).await?;
        Ok(())
    }
}

#[async_trait]
impl Reconciler<Instance> for InstanceController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Instance>>,
    ) -> Result<Action, ReconcileError> {
        let Some(instance) = object else {
            return Ok(Action::AwaitChange);
        };
        if instance.metadata.deletion_timestamp.is_some() {
            if !instance.metadata.finalizers.iter().any(|f| f == FINALIZER) {
                return Ok(Action::AwaitChange);
            }
            if self.cleaned_up(&instance) {
                self.release(&instance).await?;
                return Ok(Action::AwaitChange);
            }
            let node = instance
                .status
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            update_with_retry::<Instance, _>(&self.store, &key.project, &key.name, |i| {
                let s = i.status.get_or_insert_with(InstanceStatus::default);
                let message = Some(format!("waiting for node {node} to destroy the domain"));
                if s.phase == InstancePhase::Terminating && s.message == message {
                    return false;
                }
                s.phase = InstancePhase::Terminating;
                s.message = message;
                true
            })
            .await?;
            return Ok(Action::AwaitChange);
        }
        let has_finalizer = instance.metadata.finalizers.iter().any(|f| f == FINALIZER);
        let missing = self.missing(&instance);
        let (status, reason, message) = if missing.is_empty() {
            (ConditionStatus::True, "Resolved", String::new())
        } else {
            (
                ConditionStatus::False,
                "MissingReference",
                missing.join("; "),
            )
        };
        let generation = instance.metadata.generation;
        // Most reconciles change nothing: decide on the cached copy first.
        let current = instance
            .status
            .as_ref()
            .and_then(|s| condition(&s.conditions, CONDITION_REFERENCES));
        if has_finalizer
            && current.is_some_and(|c| {
                c.status == status
                    && c.reason == reason
                    && c.message == message
                    && c.observed_generation == generation
            })
        {
            return Ok(Action::AwaitChange);
        }
        // A new Instance gets its finalizer and its first condition in one
        // write, tried on the cached copy first.
        let now = Utc::now();
        update_cached(&self.store, instance.as_ref(), |i| {
            let mut changed = false;
            if i.metadata.deletion_timestamp.is_none()
                && !i.metadata.finalizers.iter().any(|f| f == FINALIZER)
            {
                i.metadata.finalizers.push(FINALIZER.to_string());
                changed = true;
            }
            let s = i.status.get_or_insert_with(InstanceStatus::default);
            changed |= set_condition(
                &mut s.conditions,
                CONDITION_REFERENCES,
                status,
                reason,
                &message,
                generation,
                now,
            );
            changed
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}

/// Instances in `project` that name `name` somewhere (for wake-ups when a
/// referenced object appears or goes).
pub fn instances_naming(instances: &Cache<Instance>, project: &str, name: &str) -> Vec<ObjectRef> {
    instances
        .list_project(project)
        .iter()
        .filter(|i| {
            let s = &i.spec;
            s.nics
                .iter()
                .any(|n| n.network == name || n.security_groups.iter().any(|g| g == name))
                || s.key_name.as_deref() == Some(name)
                || s.image.as_deref() == Some(name)
                || s.boot_volume.as_deref() == Some(name)
                || s.volumes.iter().any(|v| v.volume == name)
        })
        .map(|i| ObjectRef::of(i.as_ref()))
        .collect()
}
