//! The project's instances as EC2 sees them, and the reads of them:
//! DescribeInstances and GetConsoleOutput. (RunInstances is `launch`'s;
//! Terminate/Stop/Start/Reboot are `instance_state`'s.)
//!
//! A terminated Instance is marked deleted and keeps the façade's
//! visibility finalizer, so that once the controllers have released
//! theirs it reads as `terminated` for an hour, after which the next
//! DescribeInstances purges it.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use chrono::Utc;
use corral_api_types::ec2::{instance_id, TERMINATED_FINALIZER, TERMINATED_VISIBLE_SECONDS};
use corral_api_types::Instance;

use super::describe::Describe;
use super::ids::INSTANCE;
use super::instance_view::{state, Lookup, INSTANCE_FILTERS, TERMINATED};
use super::instance_xml::{rendered_size, write_instance, write_reservations_rendered};
use super::Ctx;
use crate::decoded::DecodedInstance;
use crate::error::{Ec2Error, Result};
use crate::objects::Tagged;
use crate::query::{clip, Params};
use crate::xml::Xml;

/// `InvalidInstanceID.NotFound` for the ids of `ids`.
fn not_found(ids: &[String]) -> Ec2Error {
    if ids.len() == 1 {
        INSTANCE.not_found(&ids[0])
    } else {
        Ec2Error::client(
            INSTANCE.not_found_code,
            format!("The instance IDs '{}' do not exist", ids.join(", ")),
        )
    }
}

/// The project's instances, minus terminated ones past their hour (which
/// are purged on the way).
pub async fn visible_instances(ctx: &Ctx<'_>) -> Result<Vec<Instance>> {
    Ok(visible_shared(ctx)
        .await?
        .into_iter()
        .map(|e| Instance::clone(&e.instance))
        .collect())
}

/// [`visible_instances`] without copying the (shared, decoded) objects,
/// with their ids.
pub async fn visible_shared(ctx: &Ctx<'_>) -> Result<Vec<Arc<DecodedInstance>>> {
    let now = Utc::now();
    let mut out = Vec::new();
    for e in ctx.decoded.list(ctx.store, ctx.project()).await? {
        let i = &e.instance;
        let expired = state(i) == TERMINATED
            && i.metadata
                .deletion_timestamp
                .is_some_and(|t| (now - t).num_seconds() > TERMINATED_VISIBLE_SECONDS);
        if expired {
            if !ctx.dry_run {
                let purged = ctx
                    .update(&i.metadata.name, |i: &mut Instance| {
                        i.metadata.finalizers.retain(|f| f != TERMINATED_FINALIZER);
                        Ok(())
                    })
                    .await;
                if let Err(e) = purged {
                    tracing::warn!(instance = %i.metadata.name, error = %e, "purging a terminated instance");
                }
            }
            continue;
        }
        out.push(e);
    }
    Ok(out)
}

/// The visible instance with id `id`.
pub async fn visible_instance(ctx: &Ctx<'_>, id: &str) -> Result<Instance> {
    INSTANCE.find(visible_instances(ctx).await?, id, |i| {
        instance_id(&i.metadata.uid)
    })
}

/// The instances named by `InstanceId.N` (all must exist).
pub async fn named_instances(ctx: &Ctx<'_>) -> Result<Vec<Instance>> {
    let ids = INSTANCE.list(ctx.params)?;
    if ids.is_empty() {
        return Err(Ec2Error::missing(INSTANCE.param));
    }
    let all = visible_shared(ctx).await?;
    let by_id: HashMap<&str, &Instance> =
        all.iter().map(|e| (e.id.as_str(), &*e.instance)).collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(not_found(&missing));
    }
    Ok(ids
        .iter()
        .filter_map(|id| by_id.get(id.as_str()).map(|i| Instance::clone(i)))
        .collect())
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &INSTANCE, INSTANCE_FILTERS)?;
    let all = visible_shared(ctx).await?;
    let missing: Vec<String> = d
        .ids
        .iter()
        .filter(|id| !all.iter().any(|e| e.id == **id))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(not_found(&missing));
    }
    let l = Lookup::load(ctx).await?;
    let (items, next) = d.select(
        all,
        |e| e.id.clone(),
        |e, f| l.field(&e.instance, f),
        |e| e.instance.tags(),
    );
    // Each instance's XML is a function of the instance (its revision),
    // the Lookup and the account: reused while all three are unchanged.
    let account = ctx.account();
    let context = (l, account);
    let generation = ctx.decoded.generation(ctx.project(), &context);
    let (l, account) = &context;
    let rendered: Vec<Arc<str>> = items
        .iter()
        .map(|e| {
            e.rendered(generation, |i| {
                let mut x = Xml::with_capacity(4096);
                write_instance(&mut x, i, l, account);
                x.into_string()
            })
        })
        .collect();
    let mut x = ctx.document(rendered_size(&rendered, account));
    write_reservations_rendered(&mut x, &items, &rendered, account);
    x.opt("nextToken", next);
    Ok(x)
}

/// The one instance id of an action that takes one (`action`): the
/// `InstanceId` of today's API, or the list form `InstanceId.1` that old
/// clients send (boto 2's `build_list_params`, euca2ools), checked. Both
/// forms naming the same id is one id; more than one id is an error.
pub fn one_instance_id(p: &Params, action: &str) -> Result<String> {
    let listed = INSTANCE.list(p)?;
    let single = p.get_nonempty(INSTANCE.param);
    if let Some(id) = single {
        INSTANCE.check_one(id)?;
        if listed.iter().any(|l| l != id) {
            return Err(Ec2Error::invalid_combination(format!(
                "{action} takes one instance ID: InstanceId ({}) and InstanceId.N ({}) name different instances",
                clip(id),
                clip(&listed.join(", "))
            )));
        }
        return Ok(id.to_string());
    }
    match listed.as_slice() {
        [] => Err(Ec2Error::missing(INSTANCE.param)),
        [id] => Ok(id.clone()),
        [first, rest @ ..] if rest.iter().all(|r| r == first) => Ok(first.clone()),
        several => Err(Ec2Error::invalid_value(format!(
            "{action} takes one instance ID, but InstanceId.N names {}: {}",
            several.len(),
            clip(&several.join(", "))
        ))),
    }
}

/// GetConsoleOutput: the newest serial console bytes (64 KiB at most, as
/// EC2 returns), base64-encoded.
pub async fn console_output(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = one_instance_id(ctx.params, "GetConsoleOutput")?;
    ctx.params.bool("Latest")?;
    let i = visible_instance(ctx, &id).await?;
    ctx.gate()?;
    let bytes = ctx
        .store
        .raw()
        .get(&corral_store::console_key(ctx.project(), &i.metadata.name))
        .await?
        .map(|kv| kv.value)
        .unwrap_or_default();
    let mut x = Xml::new();
    x.leaf("instanceId", &id)
        .leaf("timestamp", super::ts(&Utc::now()));
    if !bytes.is_empty() {
        x.leaf(
            "output",
            base64::engine::general_purpose::STANDARD.encode(&bytes),
        );
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Params {
        Params::parse(q.as_bytes())
    }

    const A: &str = "i-0123456789abcdef0";
    const B: &str = "i-0123456789abcdef1";

    #[test]
    fn one_instance_id_takes_either_form() {
        let one = |q: &str| one_instance_id(&p(q), "GetConsoleOutput");
        assert_eq!(one(&format!("InstanceId={A}")).unwrap(), A);
        // boto 2 / euca2ools: the list form.
        assert_eq!(one(&format!("InstanceId.1={A}")).unwrap(), A);
        assert_eq!(one(&format!("InstanceId={A}&InstanceId.1={A}")).unwrap(), A);
        assert_eq!(one(&format!("InstanceId=&InstanceId.1={A}")).unwrap(), A);
        for (q, code, says) in [
            ("", "MissingParameter", "InstanceId".to_string()),
            ("InstanceId=", "MissingParameter", "InstanceId".to_string()),
            (
                &format!("InstanceId.1={A}&InstanceId.2={B}"),
                "InvalidParameterValue",
                format!(
                    "GetConsoleOutput takes one instance ID, but InstanceId.N names 2: {A}, {B}"
                ),
            ),
            (
                &format!("InstanceId={A}&InstanceId.1={B}"),
                "InvalidParameterCombination",
                format!("InstanceId ({A}) and InstanceId.N ({B})"),
            ),
            (
                "InstanceId.1=vol-1",
                "InvalidInstanceID.Malformed",
                "vol-1".to_string(),
            ),
            (
                "InstanceId=x",
                "InvalidInstanceID.Malformed",
                "x".to_string(),
            ),
            (
                "InstanceId.0=i-1",
                "InvalidParameterValue",
                "InstanceId.0".to_string(),
            ),
        ] {
            let e = one(q).unwrap_err();
            assert_eq!(e.code, code, "{q}: {}", e.message);
            assert!(e.message.contains(&says), "{q}: {}", e.message);
        }
    }
}
