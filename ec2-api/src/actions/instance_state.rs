//! The instance state changes: TerminateInstances, StopInstances,
//! StartInstances and RebootInstances.
//!
//! Stop/Start write `spec.powerState`; Reboot stamps an annotation the
//! node agent acts on; Terminate marks the Instance deleted and adds the
//! façade's visibility finalizer (see `instances`).

use chrono::Utc;
use corral_api_types::ec2::{
    instance_id, DISABLE_API_STOP_ANNOTATION, REBOOT_ANNOTATION, TERMINATED_FINALIZER,
};
use corral_api_types::{Instance, PowerState};

use super::instance_view::{state, SHUTTING_DOWN, TERMINATED};
use super::instances::named_instances;
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::xml::Xml;

/// (instance id, current state, previous state).
type StateChange = (String, (i32, &'static str), (i32, &'static str));

fn state_change(changes: &[StateChange]) -> Xml {
    let mut x = Xml::new();
    x.set("instancesSet", changes, |x, (id, cur, prev)| {
        x.leaf("instanceId", id)
            .el("currentState", |x| {
                x.leaf("code", cur.0).leaf("name", cur.1);
            })
            .el("previousState", |x| {
                x.leaf("code", prev.0).leaf("name", prev.1);
            });
    });
    x
}

pub async fn terminate(ctx: &Ctx<'_>) -> Result<Xml> {
    let instances = named_instances(ctx).await?;
    for i in &instances {
        if i.spec.disable_api_termination && i.metadata.deletion_timestamp.is_none() {
            return Err(Ec2Error::client(
                "OperationNotPermitted",
                format!("The instance '{}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.", instance_id(&i.metadata.uid)),
            ));
        }
    }
    ctx.gate()?;
    let mut changes = Vec::new();
    for i in instances {
        let prev = state(&i);
        let now = if i.metadata.deletion_timestamp.is_some() {
            i
        } else {
            ctx.update(&i.metadata.name, |i: &mut Instance| {
                if i.metadata.deletion_timestamp.is_none() {
                    if !i
                        .metadata
                        .finalizers
                        .iter()
                        .any(|f| f == TERMINATED_FINALIZER)
                    {
                        i.metadata.finalizers.push(TERMINATED_FINALIZER.into());
                    }
                    i.metadata.deletion_timestamp = Some(Utc::now());
                }
                Ok(())
            })
            .await?
        };
        let cur = if state(&now) == TERMINATED && prev != TERMINATED {
            SHUTTING_DOWN
        } else {
            state(&now)
        };
        changes.push((instance_id(&now.metadata.uid), cur, prev));
    }
    Ok(state_change(&changes))
}

pub async fn stop_start(ctx: &Ctx<'_>, start: bool) -> Result<Xml> {
    let instances = named_instances(ctx).await?;
    for i in &instances {
        let (code, name) = state(i);
        let id = instance_id(&i.metadata.uid);
        let refused = if start {
            code == 32 || code == 48
        } else {
            code == 0 || code == 32 || code == 48
        };
        if refused {
            return Err(Ec2Error::incorrect_state(format!(
                "The instance '{id}' is not in a state from which it can be {}: it is {name}.",
                if start { "started" } else { "stopped" }
            )));
        }
        if !start
            && i.metadata
                .annotations
                .get(DISABLE_API_STOP_ANNOTATION)
                .is_some_and(|v| v == "true")
        {
            return Err(Ec2Error::client(
                "OperationNotPermitted",
                format!("The instance '{id}' may not be stopped. Modify its 'disableApiStop' instance attribute and try again."),
            ));
        }
    }
    ctx.gate()?;
    let want = if start {
        PowerState::Running
    } else {
        PowerState::Stopped
    };
    let mut changes = Vec::new();
    for i in instances {
        let prev = state(&i);
        let now = ctx
            .update(&i.metadata.name, |i: &mut Instance| {
                i.spec.power_state = want;
                Ok(())
            })
            .await?;
        changes.push((instance_id(&now.metadata.uid), state(&now), prev));
    }
    Ok(state_change(&changes))
}

pub async fn reboot(ctx: &Ctx<'_>) -> Result<Xml> {
    let instances = named_instances(ctx).await?;
    for i in &instances {
        let (code, name) = state(i);
        if code == 32 || code == 48 {
            return Err(Ec2Error::incorrect_state(format!(
                "The instance '{}' is not in a state from which it can be rebooted: it is {name}.",
                instance_id(&i.metadata.uid)
            )));
        }
    }
    ctx.gate()?;
    let at = Utc::now().to_rfc3339();
    for i in instances {
        ctx.update(&i.metadata.name, |i: &mut Instance| {
            i.metadata
                .annotations
                .insert(REBOOT_ANNOTATION.into(), at.clone());
            Ok(())
        })
        .await?;
    }
    Ok(super::ok_return())
}
