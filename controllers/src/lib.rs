//! The reconcilers that make the hosts match the store: scheduler,
//! instance lifecycle, network IPAM, overlay networks' VNIs and
//! endpoints, node lifecycle, key pairs, image
//! import, volumes and snapshots, floating addresses, project quota usage,
//! garbage collection of owned objects. Each is a
//! `corral_runtime::Reconciler`; [`ControllerManager`] wires them to shared
//! caches and runs them while this process leads.
//!
//! Controllers write status (and their own finalizers) only; they never
//! change what a user asked for in `spec`. They must not talk to
//! hypervisors — that is the node agent's job.

pub mod address;
pub mod compactor;
pub mod events;
pub mod gc;
pub mod image;
pub mod instance;
pub mod ipam;
pub mod keypair;
pub mod node_lifecycle;
pub mod overlay;
pub mod quota;
pub mod resources;
pub mod scheduler;
pub mod security_group;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use corral_api_types::{
    Address, Image, Instance, InstanceType, KeyPair, Network, Node, SecurityGroup, Snapshot, Volume,
};
use corral_runtime::metrics::RuntimeMetrics;
use corral_runtime::{while_leading, Cache, Change, Controller, ObjectRef, Reflector, Shutdown};
use corral_store::ResourceStore;
use tokio::sync::watch;

pub use scheduler::Policy;

/// Settings of the controller set.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub policy: Policy,
    /// Heartbeat age after which a node is Unknown.
    pub node_grace: Duration,
    /// Workers per controller.
    pub concurrency: usize,
    /// Where image bytes are kept (the server's blob directory); without
    /// it images stay Pending.
    pub blobs: Option<corral_store::blobs::BlobStore>,
    /// What Images may import from the server's host and network.
    pub imports: Arc<corral_store::import::ImportPolicy>,
    /// Events older than this are deleted.
    pub event_ttl: Duration,
    /// How often expired Events are looked for.
    pub event_sweep: Duration,
    /// Store history older than this is compacted (at most twice this
    /// old); zero turns compaction off.
    pub compaction_interval: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            policy: Policy::Spread,
            node_grace: Duration::from_secs(15),
            concurrency: 16,
            blobs: None,
            imports: Default::default(),
            event_ttl: Duration::from_secs(3600),
            event_sweep: Duration::from_secs(60),
            compaction_interval: Duration::from_secs(300),
        }
    }
}

/// The shared caches of one process.
#[derive(Clone)]
pub struct Caches {
    pub instances: Cache<Instance>,
    pub nodes: Cache<Node>,
    pub instance_types: Cache<InstanceType>,
    pub networks: Cache<Network>,
    pub keypairs: Cache<KeyPair>,
    pub images: Cache<Image>,
    pub volumes: Cache<Volume>,
    pub snapshots: Cache<Snapshot>,
    pub security_groups: Cache<SecurityGroup>,
    pub addresses: Cache<Address>,
}

impl Caches {
    /// Starts one reflector per kind.
    pub fn start(store: &ResourceStore) -> Caches {
        Caches {
            instances: Reflector::new(store.clone()).spawn(),
            nodes: Reflector::new(store.clone()).spawn(),
            instance_types: Reflector::new(store.clone()).spawn(),
            networks: Reflector::new(store.clone()).spawn(),
            keypairs: Reflector::new(store.clone()).spawn(),
            images: Reflector::new(store.clone()).spawn(),
            volumes: Reflector::new(store.clone()).spawn(),
            snapshots: Reflector::new(store.clone()).spawn(),
            security_groups: Reflector::new(store.clone()).spawn(),
            addresses: Reflector::new(store.clone()).spawn(),
        }
    }
}

pub struct ControllerManager {
    store: ResourceStore,
    caches: Caches,
    options: ControllerOptions,
    metrics: Option<RuntimeMetrics>,
}

fn same_project<O: corral_api_types::Resource>(
    instances: Cache<Instance>,
) -> impl Fn(&Change<O>) -> Vec<ObjectRef> + Send + Sync + 'static {
    move |c| {
        // Only a referent appearing or going changes what is missing;
        // its updates (IPAM rewrites a Network's table constantly) don't.
        if matches!(c, Change::Applied(_)) {
            return Vec::new();
        }
        let m = c.object().meta();
        instance::instances_naming(&instances, &m.project, &m.name)
    }
}

impl ControllerManager {
    pub fn new(store: ResourceStore, options: ControllerOptions) -> ControllerManager {
        ControllerManager {
            caches: Caches::start(&store),
            store,
            options,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: RuntimeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// Runs every controller until `stop` turns true.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        let c = &self.caches;
        let store = &self.store;
        let o = &self.options;
        let with_metrics = |ctl: &'static str| self.metrics.as_ref().map(|m| m.controller(ctl));

        let scheduler = scheduler::Scheduler::new(
            store.clone(),
            c.instances.clone(),
            c.nodes.clone(),
            c.instance_types.clone(),
            c.volumes.clone(),
            o.policy,
        )
        .await;
        let mut sched =
            Controller::new("scheduler", c.instances.clone()).concurrency(o.concurrency);
        {
            let instances = c.instances.clone();
            let trigger = scheduler::NodeTrigger::default();
            sched = sched.watches(c.nodes.clone(), move |change| {
                trigger.pending_after(change, &instances)
            });
            // A deleted instance frees its node's capacity: the
            // scheduler's book-keeping wakes the waiting ones.
            scheduler.wake_on(sched.queue());
            let instances = c.instances.clone();
            sched = sched.watches(c.instance_types.clone(), move |_| {
                scheduler::pending_instances(&instances)
            });
        }
        if let Some(m) = with_metrics("scheduler") {
            sched = sched.metrics(m);
        }

        let refs = instance::Referents {
            networks: c.networks.clone(),
            keypairs: c.keypairs.clone(),
            images: c.images.clone(),
            volumes: c.volumes.clone(),
            security_groups: c.security_groups.clone(),
            nodes: c.nodes.clone(),
        };
        let mut inst = Controller::new("instance", c.instances.clone())
            .concurrency(o.concurrency)
            .watches(c.networks.clone(), same_project(c.instances.clone()))
            .watches(c.keypairs.clone(), same_project(c.instances.clone()))
            .watches(c.images.clone(), same_project(c.instances.clone()))
            .watches(c.volumes.clone(), same_project(c.instances.clone()))
            .watches(c.security_groups.clone(), same_project(c.instances.clone()));
        {
            // A node that goes away releases its deleting instances.
            let instances = c.instances.clone();
            inst = inst.watches(c.nodes.clone(), move |ch| {
                // Heartbeats change Nodes every few seconds: only a Node
                // that is gone matters here.
                if !matches!(ch, Change::Deleted(_)) {
                    return Vec::new();
                }
                let node = ch.object().metadata.name.clone();
                instances
                    .list()
                    .iter()
                    .filter(|i| {
                        i.status.as_ref().and_then(|s| s.node_name.as_deref())
                            == Some(node.as_str())
                    })
                    .map(|i| ObjectRef::of(i.as_ref()))
                    .collect()
            });
        }
        if let Some(m) = with_metrics("instance") {
            inst = inst.metrics(m);
        }

        let mut ipam = Controller::new("ipam", c.networks.clone())
            .concurrency(o.concurrency.min(4))
            .watches(c.instances.clone(), ipam::networks_of);
        if let Some(m) = with_metrics("ipam") {
            ipam = ipam.metrics(m);
        }

        let mut keypairs = Controller::new("keypair", c.keypairs.clone()).concurrency(2);
        if let Some(m) = with_metrics("keypair") {
            keypairs = keypairs.metrics(m);
        }

        let mut volumes = Controller::new("volume", c.volumes.clone())
            .concurrency(4)
            .watches(c.instances.clone(), {
                let volumes = c.volumes.clone();
                move |ch| volume::volumes_of(&volumes, ch)
            })
            .watches(
                c.snapshots.clone(),
                volume::referring(c.volumes.clone(), |v: &Volume| {
                    v.spec.source.snapshot.as_deref()
                }),
            )
            // A snapshot asked of a volume on no node yet places it.
            .watches(c.snapshots.clone(), |ch: &Change<Snapshot>| {
                let s = ch.object();
                vec![ObjectRef::new(&s.metadata.project, &s.spec.volume)]
            })
            .watches(
                c.volumes.clone(),
                volume::referring(c.volumes.clone(), |v: &Volume| {
                    v.spec.source.volume.as_deref()
                }),
            );
        if let Some(m) = with_metrics("volume") {
            volumes = volumes.metrics(m);
        }
        let mut snapshots = Controller::new("snapshot", c.snapshots.clone())
            .concurrency(2)
            .watches(
                c.volumes.clone(),
                volume::referring(c.snapshots.clone(), |s: &Snapshot| {
                    Some(s.spec.volume.as_str())
                }),
            );
        if let Some(m) = with_metrics("snapshot") {
            snapshots = snapshots.metrics(m);
        }

        let mut groups = Controller::new("securitygroup", c.security_groups.clone())
            .concurrency(2)
            .watches(c.instances.clone(), security_group::groups_of);
        if let Some(m) = with_metrics("securitygroup") {
            groups = groups.metrics(m);
        }

        // One at a time: VNIs are handed out in order.
        let mut overlays = Controller::new("overlay", c.networks.clone())
            .concurrency(1)
            .watches(c.instances.clone(), ipam::networks_of)
            .watches(
                c.nodes.clone(),
                overlay::networks_of_node(c.networks.clone()),
            );
        if let Some(m) = with_metrics("overlay") {
            overlays = overlays.metrics(m);
        }

        let mut images = Controller::new("image", c.images.clone()).concurrency(2);
        if let Some(m) = with_metrics("image") {
            images = images.metrics(m);
        }

        let mut addresses = Controller::new("address", c.addresses.clone())
            .concurrency(2)
            .watches(
                c.instances.clone(),
                address::addresses_of_instance(c.addresses.clone()),
            )
            .watches(
                c.networks.clone(),
                address::addresses_of_network(c.addresses.clone()),
            )
            .watches(c.addresses.clone(), {
                // Another Address leaving a NIC frees it for this one.
                let addresses = c.addresses.clone();
                move |ch: &Change<Address>| {
                    let a = ch.object();
                    match &a.spec.instance {
                        Some(i) => {
                            address::addresses_naming(&addresses, &a.metadata.project, i, true)
                        }
                        None => Vec::new(),
                    }
                }
            });
        if let Some(m) = with_metrics("address") {
            addresses = addresses.metrics(m);
        }

        // Project usage: recomputed when counted objects come and go.
        let projects: Cache<corral_api_types::Project> = Reflector::new(store.clone()).spawn();
        let mut quotas = Controller::new("quota", projects)
            .concurrency(2)
            .watches(c.instances.clone(), quota::project_of_instance)
            .watches(c.volumes.clone(), quota::project_of_volume)
            .watches(c.addresses.clone(), quota::project_of_address)
            .watches(c.security_groups.clone(), quota::project_of)
            .watches(c.keypairs.clone(), quota::project_of)
            .watches(c.networks.clone(), quota::project_of)
            .watches(c.images.clone(), quota::project_of)
            .watches(c.snapshots.clone(), quota::project_of);
        if let Some(m) = with_metrics("quota") {
            quotas = quotas.metrics(m);
        }

        let mut lifecycle = Controller::new("node-lifecycle", c.nodes.clone()).concurrency(2);
        if let Some(m) = with_metrics("node-lifecycle") {
            lifecycle = lifecycle.metrics(m);
        }

        // Garbage collection of owned objects, for the kinds cached here;
        // an owner's deletion wakes its dependents.
        let gc = Arc::new(gc::GarbageCollector::new(store.clone(), c.clone()));
        let gc_volumes = Controller::new("gc-volumes", c.volumes.clone())
            .concurrency(2)
            .watches(c.instances.clone(), {
                let volumes = c.volumes.clone();
                move |ch| match ch {
                    Change::Deleted(i) => gc::dependents_of(
                        &volumes,
                        "Instance",
                        &i.metadata.project,
                        &i.metadata.name,
                    ),
                    _ => Vec::new(),
                }
            });
        let gc_instances = Controller::new("gc-instances", c.instances.clone()).concurrency(2);
        let gc_networks = Controller::new("gc-networks", c.networks.clone()).concurrency(1);
        let gc_security_groups =
            Controller::new("gc-securitygroups", c.security_groups.clone()).concurrency(1);

        let sweeper = {
            let (store, ttl, every, mut stop) =
                (store.clone(), o.event_ttl, o.event_sweep, stop.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.changed() => return,
                    }
                    if *stop.borrow() {
                        return;
                    }
                    match events::expire(&store, ttl).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "expired events"),
                        Err(e) => tracing::warn!(error = %e, "expiring events"),
                    }
                }
            }
        };
        let mut tasks = vec![
            tokio::spawn(sweeper),
            tokio::spawn(gc_volumes.run(gc.clone(), stop.clone())),
            tokio::spawn(gc_instances.run(gc.clone(), stop.clone())),
            tokio::spawn(gc_networks.run(gc.clone(), stop.clone())),
            tokio::spawn(gc_security_groups.run(gc.clone(), stop.clone())),
            tokio::spawn(sched.run(scheduler, stop.clone())),
            tokio::spawn(inst.run(
                Arc::new(instance::InstanceController::new(store.clone(), refs)),
                stop.clone(),
            )),
            tokio::spawn(ipam.run(
                Arc::new(ipam::Ipam::new(store.clone(), c.instances.clone())),
                stop.clone(),
            )),
            tokio::spawn(keypairs.run(
                Arc::new(keypair::KeyPairController::new(store.clone())),
                stop.clone(),
            )),
            tokio::spawn(volumes.run(
                Arc::new(volume::VolumeController::new(
                    store.clone(),
                    c.instances.clone(),
                    c.volumes.clone(),
                    c.snapshots.clone(),
                    c.nodes.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(snapshots.run(
                Arc::new(volume::SnapshotController::new(
                    store.clone(),
                    c.volumes.clone(),
                    c.nodes.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(groups.run(
                Arc::new(security_group::SecurityGroupController::new(
                    store.clone(),
                    c.instances.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(overlays.run(
                Arc::new(overlay::OverlayController::new(
                    store.clone(),
                    c.networks.clone(),
                    c.instances.clone(),
                    c.nodes.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(images.run(
                Arc::new(image::ImageController::new(
                    store.clone(),
                    o.blobs.clone(),
                    o.imports.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(addresses.run(
                Arc::new(address::AddressController::new(
                    store.clone(),
                    c.addresses.clone(),
                    c.networks.clone(),
                    c.instances.clone(),
                )),
                stop.clone(),
            )),
            tokio::spawn(quotas.run(
                Arc::new(quota::QuotaController::new(store.clone())),
                stop.clone(),
            )),
            tokio::spawn(lifecycle.run(
                Arc::new(node_lifecycle::NodeLifecycle::new(
                    store.clone(),
                    c.instances.clone(),
                    o.node_grace,
                )),
                stop.clone(),
            )),
        ];
        if !o.compaction_interval.is_zero() {
            tasks.push(tokio::spawn(compactor::run(
                store.clone(),
                o.compaction_interval,
                stop.clone(),
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Runs the controllers only while `leading` is true, until `stop`.
    pub async fn run_while_leading(
        self: Arc<Self>,
        leading: watch::Receiver<bool>,
        stop: Shutdown,
    ) {
        while_leading(leading, stop, move |term| {
            let me = self.clone();
            async move { me.run(term).await }
        })
        .await;
    }
}
