//! The scheduler: places each unbound Instance on a Ready, schedulable Node
//! with room for it, honouring availability zone, node selector, taints and
//! the node already holding any volume it uses;
//! spread (least loaded) by default, binpack (most loaded) as an option.
//!
//! Placement decisions are taken one at a time under a lock over the
//! scheduler's book of what each node holds, and booked before the binding
//! is written (kube-scheduler's "assume"), so concurrent placements never
//! overcommit a node; a failed write un-books. The book follows the
//! Instance cache, so bindings made elsewhere and deletions count too.
//!
//! An Instance that fits nowhere stays Pending with condition
//! `Scheduled=False` saying why (`0/3 nodes are available: 2 insufficient
//! memory, 1 not ready.`), and is retried whenever a Node changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::{
    ConditionStatus, EventType, Instance, InstancePhase, InstanceStatus, InstanceType, Node,
    TaintEffect, Volume,
};
use corral_runtime::status::{set_condition, update_cached, update_with_retry, EventRecorder};
use corral_runtime::{Action, Cache, Change, ObjectRef, ReconcileError, Reconciler, WorkQueue};
use corral_store::ResourceStore;

use crate::resources::{request_of, Request};

/// How to choose among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Least loaded first: spreads instances across nodes.
    #[default]
    Spread,
    /// Most loaded first: fills nodes before using new ones.
    Binpack,
}

#[derive(Default)]
struct Book {
    /// Instance -> (node, what it holds there).
    bound: HashMap<ObjectRef, (String, Request)>,
    /// Node -> total held.
    usage: HashMap<String, Request>,
}

impl Book {
    fn bind(&mut self, key: ObjectRef, node: &str, request: Request) {
        self.unbind(&key);
        self.usage.entry(node.to_string()).or_default().add(request);
        self.bound.insert(key, (node.to_string(), request));
    }

    /// Frees what `key` held; whether it held anything.
    fn unbind(&mut self, key: &ObjectRef) -> bool {
        let Some((node, request)) = self.bound.remove(key) else {
            return false;
        };
        if let Some(u) = self.usage.get_mut(&node) {
            u.sub(request);
        }
        true
    }

    fn used(&self, node: &str) -> Request {
        self.usage.get(node).copied().unwrap_or_default()
    }
}

pub struct Scheduler {
    store: ResourceStore,
    nodes: Cache<Node>,
    types: Cache<InstanceType>,
    volumes: Cache<Volume>,
    policy: Policy,
    book: Mutex<Book>,
    /// Instances that fit nowhere at their last try: what freed capacity
    /// may now place (Kubernetes' unschedulable queue).
    waiting: Mutex<HashSet<ObjectRef>>,
    /// The scheduler's work queue, where freed capacity wakes the waiting
    /// instances ([`Scheduler::wake_on`]).
    wake: std::sync::OnceLock<Arc<WorkQueue<ObjectRef>>>,
    events: EventRecorder,
}

pub(crate) fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

fn allocatable(node: &Node) -> Request {
    let Some(status) = node.status.as_ref() else {
        return Request::default();
    };
    let a = if status.allocatable.vcpus > 0 {
        &status.allocatable
    } else {
        &status.capacity
    };
    Request {
        vcpus: u64::from(a.vcpus),
        memory_mib: a.memory_mib,
        disk_gib: a.disk_gib,
    }
}

/// Why a node was passed over, for the Pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reject {
    NotReady,
    Unschedulable,
    Zone,
    Volume,
    Selector,
    Taint,
    Cpu,
    Memory,
    Disk,
}

impl Reject {
    fn text(self) -> &'static str {
        match self {
            Reject::NotReady => "not ready",
            Reject::Unschedulable => "unschedulable",
            Reject::Zone => "in another availability zone",
            Reject::Volume => "not holding the instance's volumes",
            Reject::Selector => "not matching the node selector",
            Reject::Taint => "with a taint the instance does not tolerate",
            Reject::Cpu => "insufficient vcpus",
            Reject::Memory => "insufficient memory",
            Reject::Disk => "insufficient disk",
        }
    }
}

impl Scheduler {
    /// Creates the scheduler and starts keeping its book from `instances`.
    pub async fn new(
        store: ResourceStore,
        instances: Cache<Instance>,
        nodes: Cache<Node>,
        types: Cache<InstanceType>,
        volumes: Cache<Volume>,
        policy: Policy,
    ) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler {
            events: EventRecorder::new(store.clone(), "scheduler"),
            store,
            nodes,
            types,
            volumes,
            policy,
            book: Mutex::new(Book::default()),
            waiting: Mutex::new(HashSet::new()),
            wake: std::sync::OnceLock::new(),
        });
        let mut changes = instances.subscribe();
        instances.wait_ready().await;
        scheduler.types.wait_ready().await;
        for i in instances.list() {
            scheduler.observe(&Change::Added(i));
        }
        let weak = Arc::downgrade(&scheduler);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(s) = weak.upgrade() else { return };
                s.observe(&change);
            }
        });
        scheduler
    }

    /// Where freed capacity wakes the waiting instances: the scheduler
    /// controller's queue. A bound instance's deletion is seen by the
    /// book-keeping task, which frees its capacity in the book first and
    /// only then wakes them — a wake that could overtake the book (a
    /// second subscriber of the same cache) found the node still full,
    /// wrote an unchanged refusal and so was never woken again.
    pub fn wake_on(&self, queue: Arc<WorkQueue<ObjectRef>>) {
        let _ = self.wake.set(queue);
    }

    fn wake_waiting(&self) {
        let Some(queue) = self.wake.get() else { return };
        let waiting: Vec<ObjectRef> = self
            .waiting
            .lock()
            .expect("waiting")
            .iter()
            .cloned()
            .collect();
        for key in waiting {
            queue.add(key);
        }
    }

    fn set_waiting(&self, key: &ObjectRef, waiting: bool) {
        let mut w = self.waiting.lock().expect("waiting");
        if waiting {
            w.insert(key.clone());
        } else {
            w.remove(key);
        }
    }

    /// Keeps the book in step with what the store says is bound.
    fn observe(&self, change: &Change<Instance>) {
        let obj = change.object();
        let key = ObjectRef::of(obj.as_ref());
        let mut book = self.book.lock().expect("book");
        // A terminated instance whose record stays (EC2 shows it for an
        // hour) holds nothing: its capacity is free at once.
        let deleted = matches!(change, Change::Deleted(_));
        if deleted || obj.is_terminated() {
            let freed = book.unbind(&key);
            drop(book);
            let was_bound = obj.status.as_ref().is_some_and(|s| s.node_name.is_some());
            if freed || (deleted && was_bound) {
                self.wake_waiting();
            }
            return;
        }
        if let Some(node) = obj.status.as_ref().and_then(|s| s.node_name.as_deref()) {
            if let Ok(req) = request_of(obj, &self.types) {
                book.bind(key, node, req);
            }
        }
    }

    /// Picks a node and books it, or says why none fits.
    fn place(
        &self,
        key: &ObjectRef,
        instance: &Instance,
        request: Request,
    ) -> Result<String, String> {
        let nodes = self.nodes.list();
        let mut book = self.book.lock().expect("book");
        let mut rejects: BTreeMap<Reject, usize> = BTreeMap::new();
        let mut best: Option<(i64, String)> = None;
        for node in &nodes {
            match self.check(node, instance, request, &book) {
                Err(r) => *rejects.entry(r).or_default() += 1,
                Ok(score) => {
                    let better = match &best {
                        None => true,
                        Some((s, name)) => {
                            score > *s || (score == *s && node.metadata.name < *name)
                        }
                    };
                    if better {
                        best = Some((score, node.metadata.name.clone()));
                    }
                }
            }
        }
        match best {
            Some((_, name)) => {
                book.bind(key.clone(), &name, request);
                Ok(name)
            }
            None => {
                let detail: Vec<String> = rejects
                    .iter()
                    .map(|(r, n)| format!("{n} {}", r.text()))
                    .collect();
                Err(if nodes.is_empty() {
                    "0/0 nodes are available: no nodes registered.".to_string()
                } else {
                    format!(
                        "0/{} nodes are available: {}.",
                        nodes.len(),
                        detail.join(", ")
                    )
                })
            }
        }
    }

    /// Whether `node` can take the instance; its score if so (higher wins).
    fn check(
        &self,
        node: &Node,
        instance: &Instance,
        request: Request,
        book: &Book,
    ) -> Result<i64, Reject> {
        if node.metadata.deletion_timestamp.is_some() || !node_ready(node) {
            return Err(Reject::NotReady);
        }
        if node.spec.unschedulable {
            return Err(Reject::Unschedulable);
        }
        if let Some(zone) = &instance.spec.availability_zone {
            if node.zone() != zone {
                return Err(Reject::Zone);
            }
        }
        // Volumes are files on one node: the instance goes where they are.
        let project = &instance.metadata.project;
        let on_other_node = instance
            .spec
            .volumes
            .iter()
            .map(|a| a.volume.as_str())
            .chain(instance.spec.boot_volume.as_deref())
            .filter_map(|v| self.volumes.get(&ObjectRef::new(project, v)))
            .filter_map(|v| v.status.as_ref().and_then(|s| s.node_name.clone()))
            .any(|n| n != node.metadata.name);
        if on_other_node {
            return Err(Reject::Volume);
        }
        if !instance
            .spec
            .node_selector
            .iter()
            .all(|(k, v)| node.metadata.labels.get(k) == Some(v))
        {
            return Err(Reject::Selector);
        }
        let mut soft_penalty = 0i64;
        for taint in &node.spec.taints {
            let tolerated = instance.spec.tolerations.iter().any(|t| t.tolerates(taint));
            match taint.effect {
                TaintEffect::NoSchedule | TaintEffect::NoExecute if !tolerated => {
                    return Err(Reject::Taint)
                }
                TaintEffect::PreferNoSchedule if !tolerated => soft_penalty += 1,
                _ => {}
            }
        }
        let total = allocatable(node);
        let used = book.used(&node.metadata.name);
        if used.vcpus + request.vcpus > total.vcpus {
            return Err(Reject::Cpu);
        }
        if used.memory_mib + request.memory_mib > total.memory_mib {
            return Err(Reject::Memory);
        }
        if total.disk_gib > 0 && used.disk_gib + request.disk_gib > total.disk_gib {
            return Err(Reject::Disk);
        }
        // Load after placement, in parts per million of the tighter resource.
        let frac = |u: u64, t: u64| (u * 1_000_000).checked_div(t).unwrap_or(0) as i64;
        let load = frac(used.vcpus + request.vcpus, total.vcpus)
            .max(frac(used.memory_mib + request.memory_mib, total.memory_mib));
        let score = match self.policy {
            Policy::Spread => -load,
            Policy::Binpack => load,
        };
        Ok(score - soft_penalty * 10_000_000)
    }

    async fn mark_unschedulable(
        &self,
        instance: &Instance,
        message: &str,
    ) -> Result<(), ReconcileError> {
        let generation = instance.metadata.generation;
        let now = Utc::now();
        let mut changed = false;
        update_with_retry::<Instance, _>(
            &self.store,
            &instance.metadata.project,
            &instance.metadata.name,
            |i| {
                if i.status
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    return false;
                }
                let status = i.status.get_or_insert_with(InstanceStatus::default);
                status.phase = InstancePhase::Pending;
                changed = set_condition(
                    &mut status.conditions,
                    Instance::CONDITION_SCHEDULED,
                    ConditionStatus::False,
                    "Unschedulable",
                    message,
                    generation,
                    now,
                );
                changed
            },
        )
        .await?;
        if changed {
            self.events
                .record(instance, EventType::Warning, "FailedScheduling", message)
                .await;
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler<Instance> for Scheduler {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Instance>>,
    ) -> Result<Action, ReconcileError> {
        let Some(instance) = object else {
            self.book.lock().expect("book").unbind(key);
            self.set_waiting(key, false);
            return Ok(Action::AwaitChange);
        };
        // Only an instance that holds the instance controller's finalizer
        // is placed: once bound, a domain may exist, and a delete must wait
        // for the node to destroy it (the finalizer's arrival wakes us).
        if instance.metadata.deletion_timestamp.is_some()
            || !holds_finalizer(&instance)
            || instance
                .status
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        {
            self.set_waiting(key, false);
            return Ok(Action::AwaitChange);
        }
        let request = match request_of(&instance, &self.types) {
            Ok(r) => r,
            Err(e) => {
                self.mark_unschedulable(&instance, &e.to_string()).await?;
                return Ok(Action::AwaitChange);
            }
        };
        let node = match self.place(key, &instance, request) {
            Ok(node) => node,
            Err(why) => {
                self.set_waiting(key, true);
                self.mark_unschedulable(&instance, &why).await?;
                return Ok(Action::AwaitChange);
            }
        };
        self.set_waiting(key, false);
        let generation = instance.metadata.generation;
        let now = Utc::now();
        let result = update_cached::<Instance, _>(&self.store, &instance, |i| {
            if i.metadata.deletion_timestamp.is_some()
                || !holds_finalizer(i)
                || i.status
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
            {
                return false;
            }
            let status = i.status.get_or_insert_with(InstanceStatus::default);
            status.node_name = Some(node.clone());
            status.phase = InstancePhase::Scheduled;
            set_condition(
                &mut status.conditions,
                Instance::CONDITION_SCHEDULED,
                ConditionStatus::True,
                "Scheduled",
                &format!("placed on {node}"),
                generation,
                now,
            );
            true
        })
        .await;
        match result {
            Ok(Some(i))
                if i.status.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(node.as_str()) =>
            {
                tracing::debug!(instance = %key, %node, "scheduled");
                Ok(Action::AwaitChange)
            }
            Ok(other) => {
                // Gone, deleting, or bound elsewhere meanwhile: un-book ours;
                // the cache event books the real binding.
                let mut book = self.book.lock().expect("book");
                if book.bound.get(key).is_some_and(|(n, _)| *n == node) {
                    book.unbind(key);
                }
                if let Some(i) = other {
                    if let Some(n) = i.status.as_ref().and_then(|s| s.node_name.as_deref()) {
                        if let Ok(r) = request_of(&i, &self.types) {
                            book.bind(key.clone(), n, r);
                        }
                    }
                }
                Ok(Action::AwaitChange)
            }
            Err(e) => {
                self.book.lock().expect("book").unbind(key);
                Err(e.into())
            }
        }
    }
}

/// Whether the instance controller's finalizer guards the instance.
fn holds_finalizer(i: &Instance) -> bool {
    i.metadata
        .finalizers
        .iter()
        .any(|f| f == crate::instance::FINALIZER)
}

/// What the scheduler reads of a Node: a change to anything else (a
/// heartbeat, an image cache report) cannot make a Pending instance fit.
#[derive(Debug, Clone, PartialEq)]
struct SchedulingView {
    deleting: bool,
    ready: bool,
    unschedulable: bool,
    zone: Option<String>,
    labels: BTreeMap<String, String>,
    taints: Vec<corral_api_types::Taint>,
    allocatable: Request,
}

impl SchedulingView {
    fn of(node: &Node) -> SchedulingView {
        SchedulingView {
            deleting: node.metadata.deletion_timestamp.is_some(),
            ready: node_ready(node),
            unschedulable: node.spec.unschedulable,
            zone: Some(node.zone().to_string()),
            labels: node.metadata.labels.clone(),
            taints: node.spec.taints.clone(),
            allocatable: allocatable(node),
        }
    }
}

/// Turns Node changes into the Pending instances worth another try: only
/// when a node appears or what the scheduler reads of it changes. Every
/// agent heartbeat is a Node write; waking every Pending instance on each
/// (and listing every instance to find them) cost the 1,000-node bench
/// most of its CPU, and placed 7 instances a second.
#[derive(Default)]
pub struct NodeTrigger {
    seen: Mutex<HashMap<String, SchedulingView>>,
}

impl NodeTrigger {
    pub fn pending_after(
        &self,
        change: &Change<Node>,
        instances: &Cache<Instance>,
    ) -> Vec<ObjectRef> {
        let mut seen = self.seen.lock().expect("seen");
        match change {
            Change::Deleted(n) => {
                seen.remove(&n.metadata.name);
                Vec::new()
            }
            Change::Added(n) | Change::Applied(n) => {
                let view = SchedulingView::of(n);
                if seen.get(&n.metadata.name) == Some(&view) {
                    return Vec::new();
                }
                seen.insert(n.metadata.name.clone(), view);
                drop(seen);
                pending_instances(instances)
            }
        }
    }
}

/// Keys of unbound instances: what a Node or InstanceType change may help.
pub fn pending_instances(instances: &Cache<Instance>) -> Vec<ObjectRef> {
    instances
        .list()
        .iter()
        .filter(|i| {
            i.metadata.deletion_timestamp.is_none()
                && i.status
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none()
        })
        .map(|i| ObjectRef::of(i.as_ref()))
        .collect()
}
