//! The address controller: floating (elastic) IPs.
//!
//! An `Address` takes one IP from its pool Network (`spec.network`, same
//! project, or `spec.pool`, an operator's pool in project `corral-pools`
//! that every project shares) and, while `spec.instance` names an Instance, maps it onto that
//! instance's NIC (`spec.nic`, the first when absent):
//!
//! ```text
//!   created ──finalizer──> Allocated=False (NetworkNotFound | PoolExhausted)
//!                              │ pool has a free host address
//!                              v
//!                          Allocated=True, status.ip ──spec.instance──> Associated=True
//!                              │                                     (Instance.status.addresses[nic].floatingIp)
//!   deleted ───────────────────┴──> floating IP cleared from the instance, IP released, finalizer off
//! ```
//!
//! Invariants:
//! - The IP is recorded in the pool Network's `status.allocations` with the
//!   owner `Address/<name>`, written with compare-and-swap like the IPAM
//!   table, so an IP is never handed out twice — neither to two Addresses
//!   nor to an Address and an instance NIC (IPAM keeps `Address/` entries).
//! - It goes back to the pool only when the Address is deleted: the
//!   finalizer `corral/address` holds the object until then.
//! - One instance NIC carries at most one floating IP. When two Addresses
//!   name the same NIC (possible from manifests; the EC2 façade moves an
//!   association instead), the older Address keeps it and the other
//!   reports `Associated=False/NicTaken`.
//! - An instance shows the floating IP in `status.addresses[nic].floatingIp`
//!   only while an Address is associated with it; this controller writes and
//!   clears that field and nothing else of the instance.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use corral_api_types::ec2::resource_id;
use corral_api_types::kinds::address::{
    address_association_id, is_pool_owner, pool_owner, take_ip, POOL_PROJECT,
};
use corral_api_types::{
    Address, AddressStatus, ConditionStatus, Instance, InstanceStatus, Network, Resource,
};
use corral_runtime::status::{add_finalizer, remove_finalizer, set_condition, update_with_retry};
use corral_runtime::{Action, Cache, Change, ObjectRef, ReconcileError, Reconciler};
use corral_store::{ResourceStore, StoreError};

pub const FINALIZER: &str = "corral/address";
pub const CONDITION_ALLOCATED: &str = "Allocated";
pub const CONDITION_ASSOCIATED: &str = "Associated";

/// The owner string of an Address in a Network's allocation table.
pub fn owner(address: &str) -> String {
    pool_owner(address)
}

/// Whether an allocation-table owner is an Address (not an instance NIC).
pub fn is_address_owner(who: &str) -> bool {
    is_pool_owner(who)
}

pub struct AddressController {
    store: ResourceStore,
    addresses: Cache<Address>,
    networks: Cache<Network>,
    instances: Cache<Instance>,
}

impl AddressController {
    pub fn new(
        store: ResourceStore,
        addresses: Cache<Address>,
        networks: Cache<Network>,
        instances: Cache<Instance>,
    ) -> AddressController {
        AddressController {
            store,
            addresses,
            networks,
            instances,
        }
    }
}

/// Addresses a Network or Instance change may concern: those in its
/// project naming it.
pub fn addresses_naming(
    addresses: &Cache<Address>,
    project: &str,
    name: &str,
    by_instance: bool,
) -> Vec<ObjectRef> {
    // An operator pool's Addresses are in every project.
    let candidates = if !by_instance && project == POOL_PROJECT {
        addresses.list()
    } else {
        addresses.list_project(project)
    };
    candidates
        .iter()
        .filter(|a| {
            if by_instance {
                a.spec.instance.as_deref() == Some(name)
            } else {
                a.pool_key() == (project, name)
            }
        })
        .map(|a| ObjectRef::of(a.as_ref()))
        .collect()
}

/// The Addresses an Instance change wakes: those naming it, and (when it
/// is gone) any whose association pointed at it.
pub fn addresses_of_instance(
    addresses: Cache<Address>,
) -> impl Fn(&Change<Instance>) -> Vec<ObjectRef> + Send + Sync + 'static {
    move |c| {
        let m = &c.object().metadata;
        addresses_naming(&addresses, &m.project, &m.name, true)
    }
}

/// The Addresses a Network change wakes: those using it as their pool.
pub fn addresses_of_network(
    addresses: Cache<Address>,
) -> impl Fn(&Change<Network>) -> Vec<ObjectRef> + Send + Sync + 'static {
    move |c| {
        let m = &c.object().metadata;
        addresses_naming(&addresses, &m.project, &m.name, false)
    }
}

/// What an Address's status should say about its association.
enum Association {
    /// Not asked for.
    None,
    /// Asked for but not possible now: (reason, message).
    Blocked(&'static str, String),
    /// In place on (instance name, instance uid, nic).
    On(String, String, usize),
}

impl AddressController {
    /// Takes (or finds) this Address's IP in its pool, with CAS.
    async fn allocate(
        &self,
        a: &Address,
    ) -> Result<Result<String, (&'static str, String)>, StoreError> {
        let me = a.pool_owner();
        let (project, pool) = a.pool_key();
        let key = ObjectRef::new(project, pool);
        let missing = || {
            Err((
                "NetworkNotFound",
                format!("pool network {pool:?} not found in project {project:?}"),
            ))
        };
        if self.networks.get(&key).is_none() {
            return Ok(missing());
        }
        let mut outcome: Result<String, (&'static str, String)> =
            Err(("NetworkNotFound", String::new()));
        let written =
            update_with_retry::<Network, _>(
                &self.store,
                &key.project,
                &key.name,
                |n| match take_ip(n, &me) {
                    Some((ip, changed)) => {
                        outcome = Ok(ip);
                        changed
                    }
                    None => {
                        outcome = Err((
                            "PoolExhausted",
                            format!("pool network {:?} has no free address", n.metadata.name),
                        ));
                        false
                    }
                },
            )
            .await?;
        if written.is_none() {
            return Ok(missing());
        }
        Ok(outcome)
    }

    /// Gives this Address's IP back to its pool.
    async fn release(&self, a: &Address) -> Result<(), StoreError> {
        let me = a.pool_owner();
        let (project, pool) = a.pool_key();
        update_with_retry::<Network, _>(&self.store, project, pool, |n| {
            let Some(s) = n.status.as_mut() else {
                return false;
            };
            let before = s.allocations.len();
            s.allocations.retain(|_, who| *who != me);
            s.allocations.len() != before
        })
        .await?;
        Ok(())
    }

    /// Where the association should be, judged on the caches.
    fn association(&self, a: &Address) -> Association {
        let Some(name) = &a.spec.instance else {
            return Association::None;
        };
        let nic = a.spec.nic.unwrap_or(0) as usize;
        let p = &a.metadata.project;
        let Some(i) = self.instances.get(&ObjectRef::new(p, name)) else {
            return Association::Blocked(
                "InstanceNotFound",
                format!("instance {name:?} not found in project {p:?}"),
            );
        };
        if i.metadata.deletion_timestamp.is_some() {
            return Association::Blocked(
                "InstanceNotFound",
                format!("instance {name:?} is being deleted"),
            );
        }
        if nic >= i.spec.nics.len() {
            return Association::Blocked(
                "NicNotFound",
                format!("instance {name:?} has no NIC {nic}"),
            );
        }
        // The oldest Address naming this NIC holds it.
        let rank = |x: &Address| (x.metadata.creation_timestamp, x.metadata.name.clone());
        let holder = self
            .addresses
            .list_project(p)
            .into_iter()
            .filter(|x| {
                x.metadata.deletion_timestamp.is_none()
                    && x.spec.instance.as_deref() == Some(name)
                    && x.spec.nic.unwrap_or(0) as usize == nic
            })
            .min_by_key(|x| rank(x));
        if let Some(h) = holder {
            if h.metadata.name != a.metadata.name {
                return Association::Blocked(
                    "NicTaken",
                    format!(
                        "NIC {nic} of instance {name:?} already carries address {:?}",
                        h.metadata.name
                    ),
                );
            }
        }
        let has_private = i.nic(nic).and_then(|n| n.ip()).is_some();
        if !has_private {
            return Association::Blocked(
                "WaitingForPrivateAddress",
                format!("NIC {nic} of instance {name:?} has no address yet"),
            );
        }
        Association::On(name.clone(), i.metadata.uid.clone(), nic)
    }

    /// Sets `floating_ip` on (instance, nic) to `ip`, and clears `ip` from
    /// every other NIC of the project's instances.
    async fn place_floating_ip(
        &self,
        project: &str,
        ip: &str,
        on: Option<(&str, usize)>,
    ) -> Result<(), StoreError> {
        for i in self.instances.list_project(project) {
            let target = on
                .filter(|(n, _)| *n == i.metadata.name)
                .map(|(_, nic)| nic);
            let wrong = i.status.as_ref().is_some_and(|s| {
                s.addresses
                    .iter()
                    .enumerate()
                    .any(|(k, x)| x.floating_ip.as_deref() == Some(ip) && Some(k) != target)
            });
            let missing = target.is_some_and(|nic| {
                i.nic(nic)
                    .and_then(|n| n.address)
                    .is_none_or(|x| x.floating_ip.as_deref() != Some(ip))
            });
            if !wrong && !missing {
                continue;
            }
            update_with_retry::<Instance, _>(&self.store, project, &i.metadata.name, |inst| {
                let s = inst.status.get_or_insert_with(InstanceStatus::default);
                let mut changed = false;
                for (k, x) in s.addresses.iter_mut().enumerate() {
                    let want_here = Some(k) == target && !x.ip.is_empty();
                    if want_here && x.floating_ip.as_deref() != Some(ip) {
                        x.floating_ip = Some(ip.to_string());
                        changed = true;
                    } else if !want_here && x.floating_ip.as_deref() == Some(ip) {
                        x.floating_ip = None;
                        changed = true;
                    }
                }
                changed
            })
            .await?;
        }
        Ok(())
    }

    async fn finish_deletion(&self, a: &Address) -> Result<(), StoreError> {
        if let Some(ip) = a.status.as_ref().and_then(|s| s.ip.as_deref()) {
            self.place_floating_ip(&a.metadata.project, ip, None)
                .await?;
        }
        self.release(a).await?;
        remove_finalizer(&self.store, a, FINALIZER).await
    }
}

#[async_trait]
impl Reconciler<Address> for AddressController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Address>>,
    ) -> Result<Action, ReconcileError> {
        let Some(a) = object else {
            return Ok(Action::AwaitChange);
        };
        if a.metadata.deletion_timestamp.is_some() {
            if a.metadata.finalizers.iter().any(|f| f == FINALIZER) {
                self.finish_deletion(&a).await?;
            }
            return Ok(Action::AwaitChange);
        }
        if !a.metadata.finalizers.iter().any(|f| f == FINALIZER) {
            add_finalizer(&self.store, a.as_ref(), FINALIZER).await?;
            return Ok(Action::AwaitChange);
        }
        let allocated = self.allocate(&a).await?;
        let association = match &allocated {
            Ok(_) => self.association(&a),
            Err(_) => Association::Blocked("NotAllocated", "the address has no IP yet".to_string()),
        };
        let ip = allocated.as_ref().ok().cloned();
        if let Some(ip) = &ip {
            let on = match &association {
                Association::On(name, _, nic) => Some((name.as_str(), *nic)),
                _ => None,
            };
            self.place_floating_ip(&key.project, ip, on).await?;
        }

        let generation = a.metadata.generation;
        let now = Utc::now();
        let ec2_id = resource_id(Address::KIND, &a.metadata.uid);
        let uid = a.metadata.uid.clone();
        let pool_name = a.pool_key().1.to_string();
        update_with_retry::<Address, _>(&self.store, &key.project, &key.name, |x| {
            let s = x.status.get_or_insert_with(AddressStatus::default);
            let before = s.clone();
            s.ec2_id = ec2_id.clone();
            s.ip = ip.clone();
            match &allocated {
                Ok(ip) => set_condition(
                    &mut s.conditions,
                    CONDITION_ALLOCATED,
                    ConditionStatus::True,
                    "Allocated",
                    &format!("{ip} from network {pool_name:?}"),
                    generation,
                    now,
                ),
                Err((reason, message)) => set_condition(
                    &mut s.conditions,
                    CONDITION_ALLOCATED,
                    ConditionStatus::False,
                    reason,
                    message,
                    generation,
                    now,
                ),
            };
            match &association {
                Association::None => {
                    s.association_id = None;
                    set_condition(
                        &mut s.conditions,
                        CONDITION_ASSOCIATED,
                        ConditionStatus::False,
                        "NotRequested",
                        "",
                        generation,
                        now,
                    );
                }
                Association::Blocked(reason, message) => {
                    s.association_id = None;
                    set_condition(
                        &mut s.conditions,
                        CONDITION_ASSOCIATED,
                        ConditionStatus::False,
                        reason,
                        message,
                        generation,
                        now,
                    );
                }
                Association::On(name, iuid, nic) => {
                    s.association_id = Some(address_association_id(&uid, iuid, *nic));
                    set_condition(
                        &mut s.conditions,
                        CONDITION_ASSOCIATED,
                        ConditionStatus::True,
                        "Associated",
                        &format!("instance {name:?} NIC {nic}"),
                        generation,
                        now,
                    );
                }
            }
            s.observed_generation = generation;
            *s != before
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}
