//! RunInstances, DescribeInstances, Terminate/Stop/Start/RebootInstances.
//!
//! RunInstances writes Instances (named by their `i-` id, powerState
//! Running); Stop/Start write `spec.powerState`; Terminate marks the
//! Instance deleted and adds the façade's visibility finalizer, so that
//! once the controllers have released theirs it reads as `terminated` for
//! an hour, after which the next DescribeInstances purges it.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use chrono::Utc;
use corral_api_types::ec2::{
    instance_id, reservation_id, resource_id, CLIENT_TOKEN_ANNOTATION, DISABLE_API_STOP_ANNOTATION,
    LAUNCH_INDEX_ANNOTATION, REBOOT_ANNOTATION, RESERVATION_ANNOTATION,
    SHUTDOWN_BEHAVIOR_ANNOTATION, TERMINATED_FINALIZER, TERMINATED_VISIBLE_SECONDS,
};
use corral_api_types::{
    Image, ImageType, Instance, InstanceSpec, InstanceType, KeyPair, Network, Nic, PowerState,
    Resource, SecurityGroup, Snapshot, Volume, VolumeAttachment, VolumeSource, VolumeSpec,
};

use super::disks::disk_requests;
use super::instance_view::{
    rendered_size, state, write_instance, write_reservation_body, write_reservations_rendered,
    Lookup, INSTANCE_FILTERS, SHUTTING_DOWN, TERMINATED,
};
use super::{check_ids, Ctx};
use crate::decoded::DecodedInstance;
use crate::error::{Ec2Error, Result};
use crate::filter::Filters;
use crate::objects::{
    self, client_token, earlier, ec2_name, list_all, new_uid, stamp_token, tag_specs, Tagged,
};
use crate::page::Page;
use crate::query::clip;
use crate::xml::Xml;

/// The AMI an instance booted from a volume was launched with.
pub const IMAGE_ANNOTATION: &str = "ec2.corral/image-id";
/// Most instances one RunInstances call may launch.
pub const MAX_COUNT: i64 = 100;

fn not_found(ids: &[String]) -> Ec2Error {
    if ids.len() == 1 {
        Ec2Error::client(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{}' does not exist", ids[0]),
        )
    } else {
        Ec2Error::client(
            "InvalidInstanceID.NotFound",
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
                let purged = objects::update(
                    ctx.store,
                    ctx.project(),
                    &i.metadata.name,
                    |i: &mut Instance| {
                        i.metadata.finalizers.retain(|f| f != TERMINATED_FINALIZER);
                        Ok(())
                    },
                )
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

/// The instances named by `InstanceId.N` (all must exist).
pub async fn named_instances(ctx: &Ctx<'_>) -> Result<Vec<Instance>> {
    let ids = ctx.params.list("InstanceId")?;
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    check_ids(&ids, &["i"], "InvalidInstanceID.Malformed", "instance id")?;
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
    let ids = ctx.params.list("InstanceId")?;
    check_ids(&ids, &["i"], "InvalidInstanceID.Malformed", "instance id")?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "instanceIds", 5)?;
    let filters = Filters::parse(ctx.params, INSTANCE_FILTERS, true)?;
    ctx.gate()?;
    let all = visible_shared(ctx).await?;
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !all.iter().any(|e| e.id == **id))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(not_found(&missing));
    }
    let l = Lookup::load(ctx).await?;
    let mut items: Vec<Arc<DecodedInstance>> = all
        .into_iter()
        .filter(|e| ids.is_empty() || ids.contains(&e.id))
        .filter(|e| filters.matches(|f| l.field(&e.instance, f), e.instance.tags()))
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let (items, next) = page.apply(items, |e| e.id.clone());
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

pub async fn run(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let project = ctx.project().to_string();
    let image_id = p.required("ImageId")?.to_string();
    check_ids(
        std::slice::from_ref(&image_id),
        &["ami", "aki", "ari"],
        "InvalidAMIID.Malformed",
        "image id",
    )?;
    let min = p
        .int("MinCount")?
        .ok_or_else(|| Ec2Error::missing("MinCount"))?;
    let max = p
        .int("MaxCount")?
        .ok_or_else(|| Ec2Error::missing("MaxCount"))?;
    if min < 1 || max < min || max > MAX_COUNT {
        return Err(Ec2Error::invalid_value(format!(
            "MinCount and MaxCount must satisfy 1 <= MinCount <= MaxCount <= {MAX_COUNT}"
        )));
    }
    let token = client_token(p)?;
    // Only instances an earlier call with this token made matter (the
    // decoded memo: no JSON decoding of the whole project per launch).
    let existing: Vec<Instance> = match &token {
        None => Vec::new(),
        Some(t) => ctx
            .decoded
            .list(ctx.store, &project)
            .await?
            .iter()
            .filter(|e| e.instance.metadata.annotations.get(CLIENT_TOKEN_ANNOTATION) == Some(t))
            .map(|e| Instance::clone(&e.instance))
            .collect(),
    };
    if let Some(found) = earlier(&existing, token.as_deref(), p)? {
        return respond_reservation(ctx, found).await;
    }
    let images = list_all::<Image>(ctx.store, &project).await?;
    let image = images
        .iter()
        .find(|i| i.ec2_id() == image_id)
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidAMIID.NotFound",
                format!("The image id '[{image_id}]' does not exist"),
            )
        })?;
    if image.spec.image_type != ImageType::Machine {
        return Err(Ec2Error::invalid_value(format!(
            "The image {image_id} is not a machine image"
        )));
    }
    let instance_type = match p.get_nonempty("InstanceType") {
        Some(t) => {
            if ctx.store.get::<InstanceType>("", t).await?.is_none() {
                return Err(Ec2Error::invalid_value(format!(
                    "Invalid value '{}' for InstanceType.",
                    clip(t)
                )));
            }
            Some(t.to_string())
        }
        None => None,
    };
    let key_name = match p.get_nonempty("KeyName") {
        Some(k) => {
            let keys = list_all::<KeyPair>(ctx.store, &project).await?;
            let key = keys
                .iter()
                .find(|x| ec2_name(&x.metadata) == k)
                .ok_or_else(|| {
                    Ec2Error::client(
                        "InvalidKeyPair.NotFound",
                        format!("The key pair '{}' does not exist", clip(k)),
                    )
                })?;
            Some(key.metadata.name.clone())
        }
        None => None,
    };
    let groups = list_all::<SecurityGroup>(ctx.store, &project).await?;
    let mut sgs = Vec::new();
    for n in p.list("SecurityGroup")? {
        let g = groups
            .iter()
            .find(|g| ec2_name(&g.metadata) == n)
            .ok_or_else(|| {
                Ec2Error::client(
                    "InvalidGroup.NotFound",
                    format!("The security group '{}' does not exist", clip(&n)),
                )
            })?;
        sgs.push(g.metadata.name.clone());
    }
    let sg_ids = p.list("SecurityGroupId")?;
    check_ids(
        &sg_ids,
        &["sg"],
        "InvalidGroupId.Malformed",
        "security group id",
    )?;
    for id in sg_ids {
        let g = groups.iter().find(|g| g.ec2_id() == id).ok_or_else(|| {
            Ec2Error::client(
                "InvalidGroup.NotFound",
                format!("The security group '{id}' does not exist"),
            )
        })?;
        if !sgs.contains(&g.metadata.name) {
            sgs.push(g.metadata.name.clone());
        }
    }
    let networks = list_all::<Network>(ctx.store, &project).await?;
    // The subnet's Network; without a SubnetId the default VPC, made
    // when missing (after the DryRun gate below).
    let subnet = match p.get_nonempty("SubnetId") {
        Some(s) => Some(
            networks
                .iter()
                .find(|n| {
                    super::vpcs::has_subnet(n)
                        && corral_api_types::ec2::subnet_id(&n.metadata.uid) == s
                })
                .ok_or_else(|| {
                    Ec2Error::client(
                        "InvalidSubnetID.NotFound",
                        format!("The subnet ID '{}' does not exist", clip(s)),
                    )
                })?
                .metadata
                .name
                .clone(),
        ),
        None => None,
    };
    let fixed_ip = p.get_nonempty("PrivateIpAddress").map(str::to_string);
    if fixed_ip.is_some() && max > 1 {
        return Err(Ec2Error::invalid_combination(
            "PrivateIpAddress can only be used with MaxCount 1",
        ));
    }
    let zones = ctx.zones().await?;
    let zone = match p.get_nonempty("Placement.AvailabilityZone") {
        Some(z) if zones.iter().any(|x| x == z) => Some(z.to_string()),
        Some(z) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid availability zone: [{}]",
                clip(z)
            )))
        }
        None => None,
    };
    let user_data = match p.get_nonempty("UserData") {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| Ec2Error::invalid_value("Invalid BASE64 encoding of user data"))?;
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| Ec2Error::invalid_value("User data must be UTF-8 text"))?,
            )
        }
        None => None,
    };
    let shutdown = match p.get_nonempty("InstanceInitiatedShutdownBehavior") {
        Some(s @ ("stop" | "terminate")) => Some(s.to_string()),
        Some(other) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid shutdown behavior: {}",
                clip(other)
            )))
        }
        None => None,
    };
    let snapshots = if p.get("BlockDeviceMapping.1.DeviceName").is_some() {
        list_all::<Snapshot>(ctx.store, &project).await?
    } else {
        vec![]
    };
    let disks = disk_requests(p, &snapshots)?;
    let tags = tag_specs(p, "instance")?;
    let volume_tags = tag_specs(p, "volume")?;
    let disable_termination = p.bool("DisableApiTermination")?.unwrap_or(false);
    let disable_stop = p.bool("DisableApiStop")?.unwrap_or(false);
    ctx.gate()?;
    let network_name = match subnet {
        Some(n) => n,
        None => super::vpcs::default_network(ctx).await?.metadata.name,
    };

    let first_uid = new_uid(&project, Instance::KIND, token.as_deref(), 0);
    let reservation = reservation_id(&first_uid);
    let mut created = Vec::new();
    // The volumes made for each created instance, for a rollback.
    let mut volumes_of: Vec<Vec<String>> = Vec::new();
    for n in 0..max as usize {
        let uid = if n == 0 {
            first_uid.clone()
        } else {
            new_uid(&project, Instance::KIND, token.as_deref(), n)
        };
        let id = instance_id(&uid);
        let mut spec = InstanceSpec {
            instance_type: instance_type.clone(),
            image: Some(image.metadata.name.clone()),
            nics: vec![Nic {
                network: network_name.clone(),
                fixed_ip: fixed_ip.clone(),
                security_groups: sgs.clone(),
                mac: None,
            }],
            key_name: key_name.clone(),
            user_data: user_data.clone(),
            availability_zone: zone.clone(),
            power_state: PowerState::Running,
            disable_api_termination: disable_termination,
            tags: tags.clone(),
            ..Default::default()
        };
        let mut made_volumes = Vec::new();
        for (d, disk) in disks.iter().enumerate() {
            let vuid = new_uid(
                &project,
                Volume::KIND,
                token.as_deref().map(|t| format!("{t}/{n}")).as_deref(),
                d,
            );
            let vid = resource_id(Volume::KIND, &vuid).unwrap_or_default();
            let source = match (&disk.snapshot, &disk.device) {
                (Some(s), _) => VolumeSource {
                    snapshot: Some(s.clone()),
                    ..Default::default()
                },
                (None, None) => VolumeSource {
                    image: Some(image.metadata.name.clone()),
                    ..Default::default()
                },
                (None, Some(_)) => VolumeSource::default(),
            };
            let mut v = Volume::new(
                &project,
                &vid,
                VolumeSpec {
                    size_gib: disk.size,
                    source,
                    availability_zone: zone.clone(),
                    tags: volume_tags.clone(),
                },
            );
            v.metadata.uid = vuid;
            let v = match objects::create(ctx.store, v).await {
                Ok(v) => v,
                Err(e) => {
                    cleanup(ctx, &made_volumes).await;
                    if n >= min as usize {
                        break;
                    }
                    roll_back(ctx, &created, &volumes_of).await;
                    return Err(e);
                }
            };
            made_volumes.push(v.metadata.name.clone());
            match &disk.device {
                None => {
                    spec.image = None;
                    spec.boot_volume = Some(v.metadata.name.clone());
                }
                Some(dev) => spec.volumes.push(VolumeAttachment {
                    volume: v.metadata.name.clone(),
                    device: Some(dev.clone()),
                    delete_on_termination: disk.delete_on_termination,
                }),
            }
        }
        let mut inst = Instance::new(&project, &id, spec);
        inst.metadata.uid = uid;
        let a = &mut inst.metadata.annotations;
        a.insert(RESERVATION_ANNOTATION.into(), reservation.clone());
        a.insert(LAUNCH_INDEX_ANNOTATION.into(), n.to_string());
        if disable_stop {
            a.insert(DISABLE_API_STOP_ANNOTATION.into(), "true".into());
        }
        if let Some(s) = &shutdown {
            a.insert(SHUTDOWN_BEHAVIOR_ANNOTATION.into(), s.clone());
        }
        if inst.spec.boot_volume.is_some() {
            a.insert(IMAGE_ANNOTATION.into(), image_id.clone());
        }
        stamp_token(&mut inst.metadata, token.as_deref(), p);
        match objects::create(ctx.store, inst).await {
            Ok(i) => {
                created.push(i);
                volumes_of.push(made_volumes);
            }
            Err(e) if e.code == "IncorrectState" && token.is_some() && n == 0 => {
                // A concurrent retry with the same token won the race.
                cleanup(ctx, &made_volumes).await;
                let again = list_all::<Instance>(ctx.store, &project).await?;
                let found = earlier(&again, token.as_deref(), p)?.ok_or(e)?;
                return respond_reservation(ctx, found).await;
            }
            Err(e) => {
                cleanup(ctx, &made_volumes).await;
                if n >= min as usize {
                    break;
                }
                // Fewer than MinCount: EC2 launches all or none.
                roll_back(ctx, &created, &volumes_of).await;
                return Err(e);
            }
        }
    }
    tracing::info!(project, count = created.len(), reservation, "RunInstances");
    respond_reservation(ctx, created).await
}

/// Removes what a launch that could not reach MinCount made.
async fn roll_back(ctx: &Ctx<'_>, instances: &[Instance], volumes: &[Vec<String>]) {
    for i in instances {
        let name = &i.metadata.name;
        let current = match ctx.store.get::<Instance>(ctx.project(), name).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "rolling back a launch");
                continue;
            }
        };
        if let Err(e) = objects::delete(ctx.store, &current).await {
            tracing::warn!(instance = %name, error = %e.message, "rolling back a launch");
        }
    }
    for v in volumes {
        cleanup(ctx, v).await;
    }
    // Give the quota back now, not at the quota controller's next pass:
    // the caller's retry must see it.
    if let Err(e) = corral_registry::quota::settle(ctx.store, ctx.project()).await {
        tracing::warn!(error = %e, "recounting the quota after a rolled-back launch");
    }
    tracing::info!(
        count = instances.len(),
        "RunInstances below MinCount: rolled back"
    );
}

async fn cleanup(ctx: &Ctx<'_>, volumes: &[String]) {
    for v in volumes {
        if let Err(e) = ctx.store.delete::<Volume>(ctx.project(), v, None).await {
            tracing::warn!(volume = %v, error = %e, "removing a volume of a failed launch");
        }
    }
}

async fn respond_reservation(ctx: &Ctx<'_>, mut instances: Vec<Instance>) -> Result<Xml> {
    instances.sort_by_key(|i| {
        i.metadata
            .annotations
            .get(LAUNCH_INDEX_ANNOTATION)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    let l = Lookup::load(ctx).await?;
    let r = instances
        .first()
        .map(super::instance_view::reservation)
        .unwrap_or_default();
    let refs: Vec<&Instance> = instances.iter().collect();
    let mut x = Xml::new();
    write_reservation_body(&mut x, &r, &refs, &l, &ctx.account());
    Ok(x)
}

/// (instance id, current state, previous state).
type StateChange = (String, (i32, &'static str), (i32, &'static str));

fn state_change(x: &mut Xml, changes: &[StateChange]) {
    x.set("instancesSet", changes, |x, (id, cur, prev)| {
        x.leaf("instanceId", id)
            .el("currentState", |x| {
                x.leaf("code", cur.0).leaf("name", cur.1);
            })
            .el("previousState", |x| {
                x.leaf("code", prev.0).leaf("name", prev.1);
            });
    });
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
            objects::update(
                ctx.store,
                ctx.project(),
                &i.metadata.name,
                |i: &mut Instance| {
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
                },
            )
            .await?
        };
        let cur = if state(&now) == TERMINATED && prev != TERMINATED {
            SHUTTING_DOWN
        } else {
            state(&now)
        };
        changes.push((instance_id(&now.metadata.uid), cur, prev));
    }
    let mut x = Xml::new();
    state_change(&mut x, &changes);
    Ok(x)
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
        let now = objects::update(
            ctx.store,
            ctx.project(),
            &i.metadata.name,
            |i: &mut Instance| {
                i.spec.power_state = want;
                Ok(())
            },
        )
        .await?;
        changes.push((instance_id(&now.metadata.uid), state(&now), prev));
    }
    let mut x = Xml::new();
    state_change(&mut x, &changes);
    Ok(x)
}

/// GetConsoleOutput: the newest serial console bytes (64 KiB at most, as
/// EC2 returns), base64-encoded.
pub async fn console_output(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = ctx.params.required("InstanceId")?.to_string();
    check_ids(
        std::slice::from_ref(&id),
        &["i"],
        "InvalidInstanceID.Malformed",
        "instance id",
    )?;
    ctx.params.bool("Latest")?;
    let all = visible_instances(ctx).await?;
    let Some(i) = all.iter().find(|i| instance_id(&i.metadata.uid) == id) else {
        return Err(not_found(std::slice::from_ref(&id)));
    };
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
        objects::update(
            ctx.store,
            ctx.project(),
            &i.metadata.name,
            |i: &mut Instance| {
                i.metadata
                    .annotations
                    .insert(REBOOT_ANNOTATION.into(), at.clone());
                Ok(())
            },
        )
        .await?;
    }
    Ok(super::ok_return())
}
