//! Project quotas, charged at admission by [`crate::Registry`] (so for
//! both façades, the native API and EC2) before it creates or grows an
//! Instance, Volume or Address, or create one of the kinds with a count
//! quota (security groups, key pairs, networks, images, snapshots).
//!
//! The rules (what an object counts, whether a growth fits) are
//! api-types' ([`corral_api_types::kinds::project`]); this module is the
//! mechanism, shaped like Kubernetes' ResourceQuota admission:
//!
//! 1. [`charge`] reads the Project, checks `status.usage + growth` against
//!    `spec.quotas`, and writes the new usage *and* a pending charge naming
//!    the object by compare-and-swap on the Project's revision. Two
//!    concurrent creates both read the same usage; only one CAS wins, the
//!    other re-reads and sees the first one's charge, so they can never
//!    both squeeze past the last unit.
//! 2. The caller then writes the object, and calls [`confirm`] when that
//!    succeeded (the charge is now held by the object) or [`refund`] when
//!    it failed (both best effort: an unreleased charge expires).
//! 3. [`settle`] (run by the quota controller) recomputes usage from what
//!    exists: each object counts what it holds, or its pending charge if
//!    that is larger and not expired; charges whose object holds them (or
//!    which expired after [`CHARGE_TTL`]) are dropped. So deletions release
//!    usage, and a crash between charge and write leaks nothing for longer
//!    than the TTL. The controller reads the Project *before* the objects and
//!    writes by CAS, so a charge made meanwhile makes it retry, and a charge
//!    made before is in what it read: no admitted write is ever uncounted.
//!
//! Only kinds with a limited resource are charged and counted: a project
//! without a limit on instances, vCPUs or memory pays no write per
//! instance create and no instance listing per change, as Kubernetes tracks usage only
//! under a ResourceQuota; setting a quota starts the count. (Every project
//! has the default count quotas, which cost a write per security group,
//! key pair, network, image or snapshot created — rare objects.)

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use corral_api_types::kinds::project::QuotaResource;
use corral_api_types::kinds::project::{
    address_amounts, instance_amounts, volume_amounts, QuotaAmounts, QuotaCharge, QuotaExceeded,
};
use corral_api_types::{
    Address, Image, Instance, InstanceType, KeyPair, Network, Project, ProjectStatus, Resource,
    SecurityGroup, Snapshot, Volume, DEFAULT_INSTANCE_TYPE,
};

use corral_store::{ResourceStore, StoreError};

/// How long a charge counts without its object holding it: far longer
/// than the gap between a charge and its write.
pub const CHARGE_TTL: Duration = Duration::from_secs(60);

/// CAS attempts on the Project before giving up with the conflict. In
/// one process, charges and releases of a project take turns (see
/// [`project_turn`]), so the conflicts left are other processes' writes
/// and the quota controller's: each lost attempt backs off a little
/// longer.
const ATTEMPTS: usize = 64;

/// Project name -> the turn its charges and releases take in this
/// process. Without it, 32 concurrent creates in one project all read the
/// same revision, one CAS wins and 31 retry, again and again: under a
/// burst a create could lose every attempt and be refused with a conflict
/// on a Project its client never wrote (seen in the kill -9 chaos suite).
/// In turn, every write is one read and one winning CAS.
static TURNS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
> = std::sync::OnceLock::new();

/// Waits for `project`'s turn in this process. Entries nobody holds are
/// dropped as new ones are made, so the map stays as small as the number
/// of projects being written at once.
async fn project_turn(project: &str) -> tokio::sync::OwnedMutexGuard<()> {
    let turn = {
        let mut turns = TURNS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        turns.retain(|name, t| name == project || Arc::strong_count(t) > 1);
        turns.entry(project.to_string()).or_default().clone()
    };
    turn.lock_owned().await
}

/// The pause after the `attempt`th lost CAS: short, growing, jittered so
/// that writers in different processes do not keep colliding.
async fn back_off(attempt: usize) {
    let step = (attempt as u64).min(20);
    let jitter = u64::from(Utc::now().timestamp_subsec_nanos()) % (step + 1);
    tokio::time::sleep(Duration::from_millis(step + jitter)).await;
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The write would exceed a quota.
    #[error("{plural} {name:?} is forbidden: {exceeded} in project {project:?}")]
    Exceeded {
        project: String,
        plural: &'static str,
        name: String,
        exceeded: QuotaExceeded,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A charge made by [`charge`], to be given back with [`refund`] if the
/// write it was for fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub project: String,
    pub object: String,
    pub growth: QuotaAmounts,
}

fn object_name<K: Resource>(name: &str) -> String {
    format!("{}/{name}", K::PLURAL)
}

/// What `obj` counts against its project, or `None` for kinds without
/// quotas. Reads the instance type of an Instance, and the source of a
/// Volume without a size.
pub async fn amounts_of<K: Resource>(
    store: &ResourceStore,
    obj: &K,
) -> Result<Option<QuotaAmounts>, StoreError> {
    let any = obj as &dyn Any;
    if let Some(i) = any.downcast_ref::<Instance>() {
        let itype = match (i.spec.cpus, i.spec.memory_mib) {
            (Some(_), Some(_)) => None,
            _ => {
                let name = i
                    .spec
                    .instance_type
                    .as_deref()
                    .unwrap_or(DEFAULT_INSTANCE_TYPE);
                store.get::<InstanceType>("", name).await?
            }
        };
        return Ok(Some(instance_amounts(
            &i.spec,
            itype.as_ref().map(|t| &t.spec),
        )));
    }
    if let Some(v) = any.downcast_ref::<Volume>() {
        let size = match v.spec.size_gib {
            Some(s) => s,
            None => source_size(store, v).await?,
        };
        return Ok(Some(volume_amounts(size)));
    }
    if any.downcast_ref::<Address>().is_some() {
        return Ok(Some(address_amounts()));
    }
    Ok(QuotaResource::counting(K::PLURAL).map(QuotaAmounts::one))
}

/// The size a volume without `sizeGiB` gets from its source, when known.
async fn source_size(store: &ResourceStore, v: &Volume) -> Result<u32, StoreError> {
    if let Some(s) = v.status.as_ref().and_then(|s| s.size_gib) {
        return Ok(s);
    }
    let project = &v.metadata.project;
    if let Some(snap) = &v.spec.source.snapshot {
        if let Some(s) = store.get::<Snapshot>(project, snap).await? {
            return Ok(s.status.and_then(|s| s.size_gib).unwrap_or(0));
        }
    }
    if let Some(src) = &v.spec.source.volume {
        if let Some(s) = store.get::<Volume>(project, src).await? {
            return Ok(s
                .spec
                .size_gib
                .or(s.status.and_then(|s| s.size_gib))
                .unwrap_or(0));
        }
    }
    Ok(0)
}

/// Charges the project of `new` for creating it (`old` = `None`) or for
/// replacing `old` with it: checks the growth against the quotas and
/// records it by compare-and-swap. With `dry_run` it only checks.
///
/// `Ok(None)`: nothing to charge (a kind without quotas, no growth, no
/// Project object, or a project without quotas).
pub async fn charge<K: Resource>(
    store: &ResourceStore,
    new: &K,
    old: Option<&K>,
    dry_run: bool,
) -> Result<Option<Charge>, QuotaError> {
    charge_from(store, None, new, old, dry_run).await
}

/// [`charge`], starting from `known`: the caller's cached copy of the
/// Project (`None`: read it from the store). The common case, a project
/// without quotas, then costs no read at all.
///
/// A copy that is behind costs nothing in safety where quotas exist: the
/// charge is written by compare-and-swap on the revision it read, so a
/// stale copy loses and the Project is read again. The one window is a
/// copy that does not show a project's first quota yet. The API server
/// closes it for its own writes (it answers a Project write only once its
/// cache has it); a quota set through *another* server is seen within
/// this one's watch lag (milliseconds), and writes admitted meanwhile go
/// uncharged until the quota controller's [`settle`] counts them.
/// Kubernetes' ResourceQuota admission, which reads quotas from its
/// informer, has the same window. A refusal is never decided on the copy:
/// usage released by a write it has not seen yet (a deletion, settled)
/// must not turn a create away, so an over-quota answer is checked
/// against the store's Project first.
pub async fn charge_from<K: Resource>(
    store: &ResourceStore,
    known: Option<&Project>,
    new: &K,
    old: Option<&K>,
    dry_run: bool,
) -> Result<Option<Charge>, QuotaError> {
    if !is_counted::<K>() {
        return Ok(None);
    }
    let meta = new.meta();
    let resources = resources_of::<K>();
    if known.is_some_and(|p| !p.spec.quotas.limits_any(resources)) {
        return Ok(None);
    }
    let mut project = match known {
        Some(p) => p.clone(),
        None => match store.get::<Project>("", &meta.project).await? {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    if !project.spec.quotas.limits_any(resources) {
        return Ok(None);
    }
    let amounts = amounts_of(store, new).await?.unwrap_or_default();
    let growth = match old {
        Some(old) => amounts.growth_over(amounts_of(store, old).await?.unwrap_or_default()),
        None => amounts,
    };
    if growth.is_zero() {
        return Ok(None);
    }
    let object = object_name::<K>(&meta.name);
    let _turn = project_turn(&meta.project).await;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            match store.get::<Project>("", &meta.project).await? {
                Some(p) => project = p,
                None => return Ok(None),
            }
            if project.spec.quotas.is_empty() {
                return Ok(None);
            }
        }
        let status = project.status.get_or_insert_with(ProjectStatus::default);
        let used = QuotaAmounts::from_resources(&status.usage);
        if let Err(exceeded) = project.spec.quotas.check_growth(&used, &growth) {
            // A refusal is never decided on a cached copy: usage may have
            // just been released (an object deleted and settled) in a
            // write the cache has not seen. The next attempt reads it.
            if attempt == 0 && known.is_some() {
                continue;
            }
            return Err(QuotaError::Exceeded {
                project: meta.project.clone(),
                plural: K::PLURAL,
                name: meta.name.clone(),
                exceeded,
            });
        }
        if dry_run {
            return Ok(None);
        }
        status.usage = used.saturating_add(growth).to_resources();
        let expires = Utc::now() + CHARGE_TTL;
        match status
            .pending_charges
            .iter_mut()
            .find(|c| c.object == object)
        {
            Some(c) => {
                c.amounts = QuotaAmounts::from_resources(&c.amounts)
                    .max(amounts)
                    .to_resources();
                c.expires = expires;
            }
            None => status.pending_charges.push(QuotaCharge {
                object: object.clone(),
                amounts: amounts.to_resources(),
                expires,
            }),
        }
        match store.update(&project).await {
            Ok(_) => {
                return Ok(Some(Charge {
                    project: meta.project.clone(),
                    object,
                    growth,
                }))
            }
            Err(e @ StoreError::Conflict { .. }) => {
                last = Some(e);
                back_off(attempt).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .unwrap_or_else(|| StoreError::InvalidArgument("quota charge retried".into()))
        .into())
}

/// The quota resources objects of `K` count in (none for kinds without
/// quotas).
pub fn resources_of<K: Resource>() -> &'static [QuotaResource] {
    resources_of_plural(K::PLURAL)
}

/// [`resources_of`] by the kind's plural (as a charge names its object).
fn resources_of_plural(plural: &str) -> &'static [QuotaResource] {
    match plural {
        "instances" => &[
            QuotaResource::Instances,
            QuotaResource::Vcpus,
            QuotaResource::MemoryMiB,
        ],
        "volumes" => &[QuotaResource::Volumes, QuotaResource::VolumeGiB],
        "addresses" => &[QuotaResource::Addresses],
        _ => match QuotaResource::counting(plural) {
            Some(QuotaResource::SecurityGroups) => &[QuotaResource::SecurityGroups],
            Some(QuotaResource::KeyPairs) => &[QuotaResource::KeyPairs],
            Some(QuotaResource::Networks) => &[QuotaResource::Networks],
            Some(QuotaResource::Images) => &[QuotaResource::Images],
            Some(QuotaResource::Snapshots) => &[QuotaResource::Snapshots],
            _ => &[],
        },
    }
}

/// Whether objects of `K` count against a quota.
pub fn is_counted<K: Resource>() -> bool {
    !resources_of::<K>().is_empty()
}

/// Gives back a charge whose write failed. Best effort: if it cannot be
/// written, the charge expires and [`settle`] drops it.
pub async fn refund(store: &ResourceStore, charge: &Charge) {
    release(store, charge, true).await
}

/// Marks a charge's write done: the object now holds what was charged, so
/// the pending charge goes (usage stays). Without this a charge whose
/// object is created and deleted before [`settle`] runs would count until
/// it expires. Best effort, like [`refund`].
pub async fn confirm(store: &ResourceStore, charge: &Charge) {
    release(store, charge, false).await
}

async fn release(store: &ResourceStore, charge: &Charge, give_back: bool) {
    let _turn = project_turn(&charge.project).await;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let mut project = match store.get::<Project>("", &charge.project).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(project = %charge.project, error = %e, "releasing a quota charge: reading the project");
                return;
            }
        };
        let Some(status) = project.status.as_mut() else {
            return;
        };
        let Some(at) = status
            .pending_charges
            .iter()
            .position(|c| c.object == charge.object)
        else {
            return;
        };
        status.pending_charges.remove(at);
        if give_back {
            let used = QuotaAmounts::from_resources(&status.usage);
            status.usage = used.growth_over(charge.growth).to_resources();
        }
        match store.update(&project).await {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(project = %charge.project, error = %e, "releasing a quota charge");
                return;
            }
        }
    }
}

/// Recomputes a project's `status.usage` from what exists and its live
/// pending charges, dropping charges that are settled or expired, and
/// writes it if it changed (a project without quotas gets an empty usage). Returns when the earliest remaining charge
/// expires (the caller should look again then), or `None`.
pub async fn settle(store: &ResourceStore, project: &str) -> Result<Option<Duration>, StoreError> {
    let mut types: Option<BTreeMap<String, InstanceType>> = None;
    loop {
        // The Project first: charges made after this read make our CAS
        // fail; charges made before it are in what we read.
        let Some(mut p) = store.get::<Project>("", project).await? else {
            return Ok(None);
        };
        if p.spec.quotas.is_empty() {
            // Untracked: nothing is charged, so nothing is counted (a
            // project with no quotas pays no listing per change).
            let want = ProjectStatus {
                observed_generation: p.metadata.generation,
                ..Default::default()
            };
            if p.status.as_ref().is_none_or(|s| *s == want) {
                return Ok(None);
            }
            p.status = Some(want);
            match store.update(&p).await {
                Ok(_) => return Ok(None),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        // Only kinds with a limited resource are counted: a project
        // limiting security groups alone lists no instances.
        let limits = p.spec.quotas.clone();
        let mut held: BTreeMap<String, QuotaAmounts> = BTreeMap::new();
        let instances = if limits.limits_any(resources_of::<Instance>()) {
            store
                .list::<Instance>(Some(project), Default::default())
                .await?
                .items
        } else {
            Vec::new()
        };
        if types.is_none() && !instances.is_empty() {
            types = Some(
                store
                    .list::<InstanceType>(None, Default::default())
                    .await?
                    .items
                    .into_iter()
                    .map(|t| (t.metadata.name.clone(), t))
                    .collect(),
            );
        }
        let no_types = BTreeMap::new();
        let known_types = types.as_ref().unwrap_or(&no_types);
        // A terminated instance's record (kept for EC2) holds nothing.
        for i in instances.into_iter().filter(|i| !i.is_terminated()) {
            let itype = match (i.spec.cpus, i.spec.memory_mib) {
                (Some(_), Some(_)) => None,
                _ => known_types.get(
                    i.spec
                        .instance_type
                        .as_deref()
                        .unwrap_or(DEFAULT_INSTANCE_TYPE),
                ),
            };
            let a = instance_amounts(&i.spec, itype.map(|t| &t.spec));
            held.insert(object_name::<Instance>(&i.metadata.name), a);
        }
        let volumes = if limits.limits_any(resources_of::<Volume>()) {
            store
                .list::<Volume>(Some(project), Default::default())
                .await?
                .items
        } else {
            Vec::new()
        };
        for v in volumes {
            let size = v
                .spec
                .size_gib
                .or(v.status.as_ref().and_then(|s| s.size_gib))
                .unwrap_or(0);
            held.insert(
                object_name::<Volume>(&v.metadata.name),
                volume_amounts(size),
            );
        }
        if limits.limits_any(resources_of::<Address>()) {
            for a in store
                .list::<Address>(Some(project), Default::default())
                .await?
                .items
            {
                held.insert(object_name::<Address>(&a.metadata.name), address_amounts());
            }
        }
        count::<SecurityGroup>(store, project, &limits, &mut held).await?;
        count::<KeyPair>(store, project, &limits, &mut held).await?;
        count::<Network>(store, project, &limits, &mut held).await?;
        count::<Image>(store, project, &limits, &mut held).await?;
        count::<Snapshot>(store, project, &limits, &mut held).await?;

        let now = Utc::now();
        let status = p.status.clone().unwrap_or_default();
        let mut pending = Vec::new();
        let mut counted = held.clone();
        for c in &status.pending_charges {
            let amounts = QuotaAmounts::from_resources(&c.amounts);
            let holds = held.get(&c.object).is_some_and(|h| h.covers(&amounts));
            let plural = c.object.split('/').next().unwrap_or_default();
            let unlimited = !limits.limits_any(resources_of_plural(plural));
            if holds || unlimited || c.expires <= now {
                continue;
            }
            let entry = counted.entry(c.object.clone()).or_default();
            *entry = entry.max(amounts);
            pending.push(c.clone());
        }
        let usage = counted
            .values()
            .fold(QuotaAmounts::default(), |acc, a| acc.saturating_add(*a));
        let next = pending
            .iter()
            .map(|c| (c.expires - now).to_std().unwrap_or_default())
            .min();
        let want = ProjectStatus {
            usage: usage.to_resources(),
            pending_charges: pending,
            observed_generation: p.metadata.generation,
        };
        if p.status.as_ref() == Some(&want) {
            return Ok(next);
        }
        p.status = Some(want);
        match store.update(&p).await {
            Ok(_) => return Ok(next),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Adds one of `K`'s count quota per object of `K` in `project` to
/// `held`, when that quota is limited (else lists nothing).
async fn count<K: Resource>(
    store: &ResourceStore,
    project: &str,
    limits: &corral_api_types::ProjectResources,
    held: &mut BTreeMap<String, QuotaAmounts>,
) -> Result<(), StoreError> {
    let Some(r) = QuotaResource::counting(K::PLURAL) else {
        return Ok(());
    };
    if !limits.limits_any(&[r]) {
        return Ok(());
    }
    for o in store
        .list::<K>(Some(project), Default::default())
        .await?
        .items
    {
        held.insert(object_name::<K>(&o.meta().name), QuotaAmounts::one(r));
    }
    Ok(())
}
