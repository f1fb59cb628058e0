//! What the agent writes of an instance's status (phase, `Provisioned`,
//! `Ready`, `Drifted`, `AddressLeased`, `Rebooted`, launchTime) and the
//! read-modify-write of other objects' status it owns (a volume's or a
//! snapshot's location). Nothing else of any object.

use chrono::Utc;
use corral_api_types::{ConditionStatus, Instance, InstancePhase, InstanceStatus, Resource};
use corral_runtime::status::set_condition;
use corral_runtime::ObjectRef;
use serde_json::Value;

use super::{instance_path, Agent, AgentError};
use crate::api::ApiError;

/// Condition recording the last reboot request done (its message is the
/// request's timestamp).
pub const CONDITION_REBOOTED: &str = "Rebooted";
/// Condition: every NIC's DHCP lease holds the address IPAM allocated.
pub const CONDITION_LEASED: &str = "AddressLeased";

impl Agent {
    /// Read-modify-write of an object's status through the API.
    pub(super) async fn update_status<K>(
        &self,
        path: &str,
        edit: impl Fn(&mut K),
    ) -> Result<(), AgentError>
    where
        K: Resource + serde::Serialize + serde::de::DeserializeOwned,
    {
        for _ in 0..5 {
            let Some(mut obj) = self.api.get::<K>(path).await? else {
                return Ok(());
            };
            edit(&mut obj);
            match self
                .api
                .put::<_, Value>(&format!("{path}/status"), &obj)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Other(format!(
            "status of {path} kept conflicting"
        )))
    }

    /// Records that the reboot asked for at `want` was done.
    pub(super) async fn mark_rebooted(
        &self,
        key: &ObjectRef,
        want: &str,
    ) -> Result<(), AgentError> {
        self.update_status::<Instance>(&instance_path(key), |i| {
            let generation = i.metadata.generation;
            let s = i.status.get_or_insert_with(InstanceStatus::default);
            set_condition(
                &mut s.conditions,
                CONDITION_REBOOTED,
                ConditionStatus::True,
                "Requested",
                want,
                generation,
                Utc::now(),
            );
        })
        .await
    }

    /// Writes this agent's part of the status: phase, Provisioned, Ready,
    /// launchTime. Leaves the rest (addresses, scheduling) alone.
    pub(super) async fn report(&self, key: &ObjectRef, r: Report<'_>) -> Result<(), AgentError> {
        let Report {
            phase,
            provisioned,
            reason,
            message,
            ready,
            drift,
            lease,
        } = r;
        let path = instance_path(key);
        // Skip the round trips when the informer's copy already says so.
        if let Some(cached) = self.instances.lock().expect("instances").get(key) {
            if reported(cached, &r) {
                return Ok(());
            }
        }
        // The informer's copy is tried first (no GET on the way to Ready);
        // if it is stale the write conflicts and the next try reads afresh.
        let mut cached = self
            .instances
            .lock()
            .expect("instances")
            .get(key)
            .map(|i| Instance::clone(i));
        for _ in 0..5 {
            let (current, from_cache) = match cached.take() {
                Some(i) => (Some(i), true),
                None => (self.api.get::<Instance>(&path).await?, false),
            };
            let Some(mut i) = current else {
                return Ok(());
            };
            if i.status.as_ref().and_then(|s| s.node_name.as_deref())
                != Some(self.opts.node.as_str())
            {
                // Only the server's copy decides that it is not ours.
                if from_cache {
                    continue;
                }
                return Ok(());
            }
            // The instance controller's last word on a deleted instance
            // whose record EC2 keeps: a report raced by it (read before,
            // written after) must not turn it back to Terminating.
            if i.status
                .as_ref()
                .is_some_and(|s| s.phase == InstancePhase::Terminated)
            {
                return Ok(());
            }
            let before = i.status.clone();
            let generation = i.metadata.generation;
            let now = Utc::now();
            let s = i.status.get_or_insert_with(InstanceStatus::default);
            s.phase = phase;
            s.message = (!message.is_empty()).then(|| message.to_string());
            let p = if provisioned {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            set_condition(
                &mut s.conditions,
                Instance::CONDITION_PROVISIONED,
                p,
                reason,
                message,
                generation,
                now,
            );
            let (r, why) = ready.unwrap_or((false, reason));
            let r = if r {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            set_condition(
                &mut s.conditions,
                Instance::CONDITION_READY,
                r,
                why,
                "",
                generation,
                now,
            );
            match drift {
                Some(why) => {
                    set_condition(
                        &mut s.conditions,
                        Instance::CONDITION_DRIFTED,
                        ConditionStatus::True,
                        "DiskMissing",
                        why,
                        generation,
                        now,
                    );
                }
                None => s
                    .conditions
                    .retain(|c| c.type_ != Instance::CONDITION_DRIFTED),
            }
            if let Some((ok, why, msg)) = lease {
                set_condition(
                    &mut s.conditions,
                    CONDITION_LEASED,
                    if ok {
                        ConditionStatus::True
                    } else {
                        ConditionStatus::False
                    },
                    why,
                    msg,
                    generation,
                    now,
                );
            }
            if phase == InstancePhase::Running && s.launch_time.is_none() {
                s.launch_time = Some(now);
            }
            if i.status == before {
                return Ok(());
            }
            match self
                .api
                .put::<_, Value>(&format!("{path}/status"), &i)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ApiError::Status { code: 409, .. }) => continue,
                Err(ApiError::Status { code: 404, .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Other(format!(
            "status of {key} kept conflicting"
        )))
    }
}

/// Whether `i`'s status already carries what `report` would write.
fn reported(i: &Instance, r: &Report<'_>) -> bool {
    let Report {
        phase,
        provisioned,
        reason,
        message,
        ready,
        drift,
        lease,
    } = *r;
    let Some(s) = &i.status else { return false };
    let drifted = s
        .conditions
        .iter()
        .find(|c| c.type_ == Instance::CONDITION_DRIFTED)
        .map(|c| c.message.as_str());
    if drifted != drift {
        return false;
    }
    let cond = |t: &str, want: bool, why: &str| {
        s.conditions.iter().any(|c| {
            c.type_ == t
                && (c.status == ConditionStatus::True) == want
                && c.reason == why
                && c.observed_generation == i.metadata.generation
        })
    };
    let (r, why) = ready.unwrap_or((false, reason));
    let leased = lease.is_none_or(|(ok, why, msg)| {
        s.conditions.iter().any(|c| {
            c.type_ == CONDITION_LEASED
                && (c.status == ConditionStatus::True) == ok
                && c.reason == why
                && c.message == msg
        })
    });
    leased
        && s.phase == phase
        && s.message.as_deref().unwrap_or("") == message
        && cond(Instance::CONDITION_PROVISIONED, provisioned, reason)
        && cond(Instance::CONDITION_READY, r, why)
        && (phase != InstancePhase::Running || s.launch_time.is_some())
}

/// This agent's part of an instance's status.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report<'a> {
    pub(super) phase: InstancePhase,
    pub(super) provisioned: bool,
    pub(super) reason: &'a str,
    pub(super) message: &'a str,
    /// Ready and its reason (None: not ready, for `reason`).
    pub(super) ready: Option<(bool, &'a str)>,
    /// Why the instance drifted from what Corral made, if it did.
    pub(super) drift: Option<&'a str>,
    /// The `AddressLeased` condition (status, reason, message); `None`
    /// leaves it as it is.
    pub(super) lease: Option<(bool, &'a str, &'a str)>,
}

impl<'a> Report<'a> {
    /// Not provisioned (or no more): nothing about readiness, drift or
    /// leases yet.
    pub(super) fn unprovisioned(
        phase: InstancePhase,
        reason: &'a str,
        message: &'a str,
    ) -> Report<'a> {
        Report {
            phase,
            provisioned: false,
            reason,
            message,
            ready: None,
            drift: None,
            lease: None,
        }
    }
}
