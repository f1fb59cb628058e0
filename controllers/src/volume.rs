//! Volumes and snapshots: node binding, attachment bookkeeping, phases and
//! deletion.
//!
//! A volume's bytes are a qcow2 file on one node. The volume is bound to a
//! node (`status.nodeName`) when it must be: a clone of a snapshot or of a
//! volume goes where its source is; any other volume goes where the first
//! instance using it is scheduled (the scheduler in turn keeps instances
//! with the volumes they use), or, when a snapshot of it is asked for
//! before any instance used it, to the ready node (in its zone) with the
//! most disk. The node's agent creates, copies and
//! deletes the files and records `status.location`; this controller owns
//! `nodeName`, `attachedTo` and `phase`.
//!
//! Deletion waits (finalizer `corral/volume`): while an instance uses the
//! volume it stays, saying so; then its node's agent removes the file.
//! Snapshots are bound to their volume's node and deleted the same way.

use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::{
    ec2, AttachedTo, Instance, Node, Snapshot, SnapshotPhase, Volume, VolumePhase,
};
use corral_runtime::status::{add_finalizer, remove_finalizer, update_with_retry};
use corral_runtime::{Action, Cache, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

/// Finalizer held on every Volume and Snapshot until its file is gone.
pub const FINALIZER: &str = "corral/volume";

/// The instances (live or terminating) of `project` using volume `name`,
/// with the device each uses.
pub fn users_of(
    instances: &Cache<Instance>,
    project: &str,
    name: &str,
) -> Vec<(Arc<Instance>, String)> {
    instances
        .list()
        .into_iter()
        .filter(|i| i.metadata.project == project)
        .filter_map(|i| {
            let device = if i.spec.boot_volume.as_deref() == Some(name) {
                Some("vda".to_string())
            } else {
                i.spec
                    .volumes
                    .iter()
                    .find(|a| a.volume == name)
                    .map(|a| a.device.clone().unwrap_or_default())
            };
            device.map(|d| (i, d))
        })
        .collect()
}

/// Volumes an instance change may concern: those it lists now and those
/// recorded as attached to it (it may have just let them go).
pub fn volumes_of(
    volumes: &Cache<Volume>,
    change: &corral_runtime::Change<Instance>,
) -> Vec<ObjectRef> {
    let i = change.object();
    let project = &i.metadata.project;
    let mut out: Vec<ObjectRef> = i
        .spec
        .volumes
        .iter()
        .map(|a| ObjectRef::new(project, &a.volume))
        .chain(
            i.spec
                .boot_volume
                .iter()
                .map(|v| ObjectRef::new(project, v)),
        )
        .collect();
    out.extend(
        volumes
            .list()
            .iter()
            .filter(|v| {
                v.metadata.project == *project
                    && v.status
                        .as_ref()
                        .and_then(|s| s.attached_to.as_ref())
                        .is_some_and(|a| a.instance == i.metadata.name)
            })
            .map(|v| ObjectRef::of(v.as_ref())),
    );
    out
}

/// Maps a change of any object to the `cache` objects of its project whose
/// `refers` names it (clones of a snapshot or volume, snapshots of a
/// volume).
pub fn referring<O, R>(
    cache: Cache<O>,
    refers: fn(&O) -> Option<&str>,
) -> impl Fn(&corral_runtime::Change<R>) -> Vec<ObjectRef> + Send + Sync + 'static
where
    O: corral_api_types::Resource,
    R: corral_api_types::Resource,
{
    move |ch| {
        let m = ch.object().meta();
        cache
            .list()
            .iter()
            .filter(|o| o.meta().project == m.project && refers(o) == Some(m.name.as_str()))
            .map(|o| ObjectRef::of(o.as_ref()))
            .collect()
    }
}

pub struct VolumeController {
    store: ResourceStore,
    instances: Cache<Instance>,
    volumes: Cache<Volume>,
    snapshots: Cache<Snapshot>,
    nodes: Cache<Node>,
}

impl VolumeController {
    pub fn new(
        store: ResourceStore,
        instances: Cache<Instance>,
        volumes: Cache<Volume>,
        snapshots: Cache<Snapshot>,
        nodes: Cache<Node>,
    ) -> VolumeController {
        VolumeController {
            store,
            instances,
            volumes,
            snapshots,
            nodes,
        }
    }

    /// Where the volume must live, if that is decided yet.
    fn placement(&self, v: &Volume, users: &[(Arc<Instance>, String)]) -> Option<String> {
        let project = &v.metadata.project;
        if let Some(s) = &v.spec.source.snapshot {
            return self
                .snapshots
                .get(&ObjectRef::new(project, s))
                .and_then(|s| s.status.as_ref().and_then(|st| st.node_name.clone()));
        }
        if let Some(src) = &v.spec.source.volume {
            return self
                .volumes
                .get(&ObjectRef::new(project, src))
                .and_then(|s| s.status.as_ref().and_then(|st| st.node_name.clone()));
        }
        let of_users = users
            .iter()
            .find_map(|(i, _)| i.status.as_ref().and_then(|s| s.node_name.clone()));
        if of_users.is_some() {
            return of_users;
        }
        // A snapshot of a volume no instance has used yet: the volume
        // must exist somewhere to be copied, so it goes to a node now.
        let snapped =
            self.snapshots.list_project(project).iter().any(|s| {
                s.spec.volume == v.metadata.name && s.metadata.deletion_timestamp.is_none()
            });
        if snapped {
            return self.roomiest_node(v.spec.availability_zone.as_deref());
        }
        None
    }

    /// A ready, schedulable node (in `zone` when given) with the most
    /// allocatable disk; ties go to the first by name.
    fn roomiest_node(&self, zone: Option<&str>) -> Option<String> {
        let mut nodes: Vec<Arc<Node>> = self
            .nodes
            .list()
            .into_iter()
            .filter(|n| {
                crate::scheduler::node_ready(n)
                    && !n.spec.unschedulable
                    && n.metadata.deletion_timestamp.is_none()
                    && zone.is_none_or(|z| n.zone() == z)
            })
            .collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes
            .iter()
            .max_by_key(|n| {
                let disk = n.status.as_ref().map_or(0, |s| s.allocatable.disk_gib);
                // max_by_key keeps the last maximum: reverse the name order.
                (disk, std::cmp::Reverse(n.metadata.name.clone()))
            })
            .map(|n| n.metadata.name.clone())
    }

    fn node_exists(&self, node: &str) -> bool {
        self.nodes.get(&ObjectRef::new("", node)).is_some()
    }
}

#[async_trait]
impl Reconciler<Volume> for VolumeController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Volume>>,
    ) -> Result<Action, ReconcileError> {
        let Some(v) = object else {
            return Ok(Action::AwaitChange);
        };
        let users = users_of(&self.instances, &key.project, &key.name);
        let status = v.status.clone().unwrap_or_default();
        let deleting = v.metadata.deletion_timestamp.is_some();

        if deleting && users.is_empty() {
            // Gone from its node (or never made, or the node is gone).
            let released = status.location.is_none()
                || status
                    .node_name
                    .as_deref()
                    .is_none_or(|n| !self.node_exists(n));
            if released {
                remove_finalizer(&self.store, v.as_ref(), FINALIZER).await?;
                return Ok(Action::AwaitChange);
            }
        }
        if !deleting && !v.metadata.finalizers.iter().any(|f| f == FINALIZER) {
            add_finalizer(&self.store, v.as_ref(), FINALIZER).await?;
        }

        let node = status
            .node_name
            .clone()
            .or_else(|| self.placement(&v, &users));
        let attached = users.first().map(|(i, d)| AttachedTo {
            instance: i.metadata.name.clone(),
            device: d.clone(),
        });
        let message = match (&users[..], deleting) {
            ([], true) => Some("waiting for its node to remove the file".to_string()),
            ([(i, _), ..], true) => Some(format!(
                "in use by instance {:?}: detach it (or delete the instance) to delete the volume",
                i.metadata.name
            )),
            ([_, _, ..], false) => Some(format!(
                "used by {} instances; a volume attaches to one at a time",
                users.len()
            )),
            _ => None,
        };
        let errored = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == corral_api_types::ConditionStatus::True);
        let phase = if deleting {
            VolumePhase::Deleting
        } else if errored {
            VolumePhase::Error
        } else if node.is_some() && status.location.is_none() {
            VolumePhase::Creating
        } else if attached.is_some() {
            VolumePhase::InUse
        } else {
            VolumePhase::Available
        };
        let ec2_id = ec2::resource_id("Volume", &v.metadata.uid);
        update_with_retry::<Volume, _>(&self.store, &key.project, &key.name, |v| {
            let s = v.status.get_or_insert_with(Default::default);
            let before = s.clone();
            if s.node_name.is_none() {
                s.node_name = node.clone();
            }
            s.attached_to = attached.clone();
            s.phase = phase;
            if !errored {
                s.message = message.clone();
            }
            s.ec2_id = ec2_id.clone();
            s.observed_generation = v.metadata.generation;
            *s != before
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}

pub struct SnapshotController {
    store: ResourceStore,
    volumes: Cache<Volume>,
    nodes: Cache<Node>,
}

impl SnapshotController {
    pub fn new(store: ResourceStore, volumes: Cache<Volume>, nodes: Cache<Node>) -> Self {
        SnapshotController {
            store,
            volumes,
            nodes,
        }
    }
}

#[async_trait]
impl Reconciler<Snapshot> for SnapshotController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Snapshot>>,
    ) -> Result<Action, ReconcileError> {
        let Some(snap) = object else {
            return Ok(Action::AwaitChange);
        };
        let status = snap.status.clone().unwrap_or_default();
        if snap.metadata.deletion_timestamp.is_some() {
            let released = status.location.is_none()
                || status
                    .node_name
                    .as_deref()
                    .is_none_or(|n| self.nodes.get(&ObjectRef::new("", n)).is_none());
            if released {
                remove_finalizer(&self.store, snap.as_ref(), FINALIZER).await?;
            }
            return Ok(Action::AwaitChange);
        }
        if !snap.metadata.finalizers.iter().any(|f| f == FINALIZER) {
            add_finalizer(&self.store, snap.as_ref(), FINALIZER).await?;
        }
        let volume = self
            .volumes
            .get(&ObjectRef::new(&key.project, &snap.spec.volume));
        let vol_node = volume
            .as_ref()
            .and_then(|v| v.status.as_ref().and_then(|s| s.node_name.clone()));
        let vol_ready = volume
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .is_some_and(|s| s.location.is_some());
        let message = match (&volume, vol_ready) {
            _ if status.phase != SnapshotPhase::Pending => status.message.clone(),
            (None, _) => Some(format!("volume {:?} not found", snap.spec.volume)),
            (Some(_), false) => Some(format!(
                "waiting for volume {:?} to be created on a node",
                snap.spec.volume
            )),
            (Some(_), true) => None,
        };
        let ec2_id = ec2::resource_id("Snapshot", &snap.metadata.uid);
        update_with_retry::<Snapshot, _>(&self.store, &key.project, &key.name, |s| {
            let st = s.status.get_or_insert_with(Default::default);
            let before = st.clone();
            if st.node_name.is_none() && vol_ready {
                st.node_name = vol_node.clone();
            }
            st.message = message.clone();
            st.ec2_id = ec2_id.clone();
            st.observed_generation = s.metadata.generation;
            *st != before
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}
