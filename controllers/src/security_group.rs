//! The security group controller: keeps each SecurityGroup's
//! `status.members` — the addresses of the instance NICs that carry it —
//! so node agents can expand `sourceGroup` rules without reading other
//! nodes' instances.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::{Instance, SecurityGroup};
use corral_runtime::status::update_with_retry;
use corral_runtime::{Action, Cache, Change, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

pub struct SecurityGroupController {
    store: ResourceStore,
    instances: Cache<Instance>,
}

impl SecurityGroupController {
    pub fn new(store: ResourceStore, instances: Cache<Instance>) -> SecurityGroupController {
        SecurityGroupController { store, instances }
    }
}

/// The addresses of `project`'s instance NICs carrying group `name`.
pub fn members(instances: &Cache<Instance>, project: &str, name: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for i in instances.list() {
        if i.metadata.project != project || i.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for nic in i.nics() {
            if let Some(ip) = nic.ip() {
                if nic.spec.security_groups.iter().any(|g| g == name) {
                    out.insert(ip.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Maps an instance change to the groups its NICs name.
pub fn groups_of(ch: &Change<Instance>) -> Vec<ObjectRef> {
    let i = ch.object();
    let mut names = BTreeSet::new();
    for nic in &i.spec.nics {
        names.extend(nic.security_groups.iter().cloned());
    }
    names
        .into_iter()
        .map(|n| ObjectRef::new(&i.metadata.project, &n))
        .collect()
}

#[async_trait]
impl Reconciler<SecurityGroup> for SecurityGroupController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<SecurityGroup>>,
    ) -> Result<Action, ReconcileError> {
        let Some(g) = object else {
            return Ok(Action::AwaitChange);
        };
        let want = members(&self.instances, &key.project, &key.name);
        if g.status.as_ref().map(|s| &s.members) == Some(&want)
            || (g.status.is_none() && want.is_empty())
        {
            return Ok(Action::AwaitChange);
        }
        update_with_retry::<SecurityGroup, _>(&self.store, &key.project, &key.name, |g| {
            let s = g.status.get_or_insert_with(Default::default);
            if s.members == want {
                return false;
            }
            s.members = want.clone();
            true
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}
