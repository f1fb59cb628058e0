//! What nothing owns any more: Corral-named domains this node made that no
//! bound Instance owns, and instance files on the host whose instance is
//! gone from this node (and whose domain is gone too). Swept at resync,
//! only once the informer has listed (an empty first list must not sweep
//! a running host).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::{blocking, Agent, AgentError};
use crate::hypervisor::{domain_name, DOMAIN_PREFIX};

impl Agent {
    /// Removes Corral-named domains no bound Instance owns, and the files
    /// of instances no longer here. Answers how many it removed.
    pub async fn sweep_orphans(&self) -> Result<usize, AgentError> {
        if !self.synced.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let hv = self.hv.clone();
        let domains = blocking(move || hv.list()).await?;
        let owned: HashSet<String> = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .map(|i| domain_name(&i.metadata.uid))
            .collect();
        let mut removed = 0;
        for d in domains {
            if owned.contains(&d.name) || !d.name.starts_with(DOMAIN_PREFIX) {
                continue;
            }
            // Only what this node made: another agent may share libvirt.
            let hv = self.hv.clone();
            let name = d.name.clone();
            if blocking(move || hv.node_of(&name)).await?.as_deref()
                != Some(self.opts.node.as_str())
            {
                continue;
            }
            tracing::warn!(domain = %d.name, "removing a Corral domain that no Instance on this node owns");
            let hv = self.hv.clone();
            let name = d.name.clone();
            blocking(move || {
                let _ = hv.destroy(&name);
                hv.undefine(&name)
            })
            .await?;
            removed += 1;
        }
        // Instance files nothing owns (listed before the owners are read,
        // so files being created meanwhile are never taken).
        let uids = self.host_call(|h| h.instance_uids()).await?;
        let owned: HashSet<String> = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .map(|i| i.metadata.uid.clone())
            .collect();
        for uid in uids.into_iter().filter(|u| !owned.contains(u)) {
            let hv = self.hv.clone();
            let name = domain_name(&uid);
            if blocking(move || hv.state(&name)).await?.is_some() {
                continue;
            }
            tracing::warn!(%uid, "removing the files of an instance no longer on this node");
            self.host_call(move |h| h.remove_instance(&uid)).await?;
            removed += 1;
        }
        Ok(removed)
    }
}
