//! Volumes (Create/Describe/Delete/Attach/Detach) and snapshots
//! (Create/Describe/Delete). Attachments are the Instances'
//! `spec.volumes`; states come from the observed phases.

use corral_api_types::ec2::{instance_id, resource_id};
use corral_api_types::{
    Instance, Resource, Snapshot, Volume, VolumeAttachment, VolumePhase, VolumeSource, VolumeSpec,
};

use super::instances::visible_instances;
use super::{check_ids, ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::{
    self, client_token, earlier, list_all, new_uid, stamp_token, tag_specs, Tagged,
};
use crate::page::Page;
use crate::xml::Xml;

fn phase(v: &Volume) -> &'static str {
    if v.metadata.deletion_timestamp.is_some() {
        return "deleting";
    }
    match v.status.as_ref().map(|s| s.phase) {
        None | Some(VolumePhase::Creating) => "creating",
        Some(VolumePhase::Available) => "available",
        Some(VolumePhase::InUse) => "in-use",
        Some(VolumePhase::Deleting) => "deleting",
        Some(VolumePhase::Error) => "error",
    }
}

/// The instance (live, not terminated) whose spec attaches `v`.
fn attached<'a>(v: &Volume, instances: &'a [Instance]) -> Option<(&'a Instance, String, bool)> {
    instances
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .find_map(|i| {
            if i.spec.boot_volume.as_deref() == Some(v.metadata.name.as_str()) {
                return Some((i, "/dev/vda".to_string(), false));
            }
            i.spec
                .volumes
                .iter()
                .find(|a| a.volume == v.metadata.name)
                .map(|a| {
                    (
                        i,
                        format!("/dev/{}", a.device.clone().unwrap_or_default()),
                        a.delete_on_termination,
                    )
                })
        })
}

pub(super) fn size(v: &Volume) -> u32 {
    v.status
        .as_ref()
        .and_then(|s| s.size_gib)
        .or(v.spec.size_gib)
        .unwrap_or(0)
}

fn write_volume(x: &mut Xml, v: &Volume, instances: &[Instance], snaps: &[Snapshot], zone: &str) {
    let att = attached(v, instances);
    let attach_state = if phase(v) == "in-use" {
        "attached"
    } else {
        "attaching"
    };
    x.leaf("volumeId", v.ec2_id())
        .leaf("size", size(v))
        .leaf(
            "snapshotId",
            v.spec
                .source
                .snapshot
                .as_ref()
                .and_then(|s| snaps.iter().find(|x| &x.metadata.name == s))
                .map(|s| s.ec2_id())
                .unwrap_or_default(),
        )
        .leaf(
            "availabilityZone",
            v.spec.availability_zone.as_deref().unwrap_or(zone),
        )
        .leaf("status", phase(v))
        .opt("createTime", v.metadata.creation_timestamp.as_ref().map(ts))
        .set(
            "attachmentSet",
            &att.into_iter().collect::<Vec<_>>(),
            |x, (i, dev, dot)| {
                x.leaf("volumeId", v.ec2_id())
                    .leaf("instanceId", instance_id(&i.metadata.uid))
                    .leaf("device", dev)
                    .leaf("status", attach_state)
                    .opt("attachTime", i.metadata.creation_timestamp.as_ref().map(ts))
                    .leaf("deleteOnTermination", dot);
            },
        )
        .leaf("volumeType", "standard")
        .leaf("encrypted", false)
        .leaf("multiAttachEnabled", false)
        .tags("tagSet", v.tags());
}

pub async fn create(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let size = p.int_in("Size", 1, 16384)?.map(|s| s as u32);
    let zones = ctx.zones().await?;
    let zone = match p.get_nonempty("AvailabilityZone") {
        Some(z) if zones.iter().any(|x| x == z) => z.to_string(),
        Some(z) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid availability zone: [{}]",
                crate::query::clip(z)
            )))
        }
        None => return Err(Ec2Error::missing("AvailabilityZone")),
    };
    if p.bool("Encrypted")?.unwrap_or(false) {
        return Err(Ec2Error::client(
            "UnsupportedOperation",
            "Encrypted volumes are not supported",
        ));
    }
    let snaps = list_all::<Snapshot>(ctx.store, ctx.project()).await?;
    let snapshot = match p.get_nonempty("SnapshotId") {
        Some(id) => {
            check_ids(
                &[id.to_string()],
                &["snap"],
                "InvalidSnapshotID.Malformed",
                "snapshot id",
            )?;
            Some(
                snaps
                    .iter()
                    .find(|s| s.ec2_id() == id)
                    .ok_or_else(|| {
                        Ec2Error::client(
                            "InvalidSnapshot.NotFound",
                            format!("The snapshot '{id}' does not exist."),
                        )
                    })?
                    .metadata
                    .name
                    .clone(),
            )
        }
        None if size.is_none() => return Err(Ec2Error::missing("Size")),
        None => None,
    };
    let tags = tag_specs(p, "volume")?;
    let token = client_token(p)?;
    let vols = list_all::<Volume>(ctx.store, ctx.project()).await?;
    let instances = visible_instances(ctx).await?;
    if let Some(found) = earlier(&vols, token.as_deref(), p)? {
        let mut x = Xml::new();
        write_volume(&mut x, &found[0], &instances, &snaps, &zone);
        return Ok(x);
    }
    ctx.gate()?;
    let uid = new_uid(ctx.project(), Volume::KIND, token.as_deref(), 0);
    let id = resource_id(Volume::KIND, &uid).unwrap_or_default();
    let spec = VolumeSpec {
        size_gib: size,
        source: VolumeSource {
            snapshot,
            ..Default::default()
        },
        availability_zone: Some(zone.clone()),
        tags,
    };
    let mut v = Volume::new(ctx.project(), &id, spec);
    v.metadata.uid = uid;
    stamp_token(&mut v.metadata, token.as_deref(), p);
    let v = objects::create(ctx.store, v).await?;
    let mut x = Xml::new();
    write_volume(&mut x, &v, &instances, &snaps, &zone);
    Ok(x)
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("VolumeId")?;
    check_ids(&ids, &["vol"], "InvalidVolumeID.Malformed", "volume id")?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "volumeIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "volume-id",
            "status",
            "size",
            "snapshot-id",
            "availability-zone",
            "attachment.instance-id",
            "attachment.device",
            "attachment.status",
            "attachment.delete-on-termination",
            "create-time",
            "volume-type",
            "encrypted",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut vols = list_all::<Volume>(ctx.store, ctx.project()).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !vols.iter().any(|v| v.ec2_id() == **id))
    {
        return Err(Ec2Error::client(
            "InvalidVolume.NotFound",
            format!("The volume '{missing}' does not exist."),
        ));
    }
    let instances = visible_instances(ctx).await?;
    let snaps = list_all::<Snapshot>(ctx.store, ctx.project()).await?;
    let zone = ctx.zones().await?.remove(0);
    vols.retain(|v| ids.is_empty() || ids.contains(&v.ec2_id()));
    vols.retain(|v| {
        let att = attached(v, &instances);
        filters.matches(
            |f| match f {
                "volume-id" => one(v.ec2_id()),
                "status" => one(phase(v)),
                "size" => one(size(v).to_string()),
                "snapshot-id" => v
                    .spec
                    .source
                    .snapshot
                    .as_ref()
                    .and_then(|s| snaps.iter().find(|x| &x.metadata.name == s))
                    .map(|s| s.ec2_id())
                    .into_iter()
                    .collect(),
                "availability-zone" => {
                    one(v.spec.availability_zone.clone().unwrap_or(zone.clone()))
                }
                "attachment.instance-id" => {
                    att.iter().map(|a| instance_id(&a.0.metadata.uid)).collect()
                }
                "attachment.device" => att.iter().map(|a| a.1.clone()).collect(),
                "attachment.status" => att
                    .iter()
                    .map(|_| {
                        if phase(v) == "in-use" {
                            "attached"
                        } else {
                            "attaching"
                        }
                        .to_string()
                    })
                    .collect(),
                "attachment.delete-on-termination" => att.iter().flat_map(|a| b(a.2)).collect(),
                "create-time" => v
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(ts)
                    .into_iter()
                    .collect(),
                "volume-type" => one("standard"),
                _ => b(false),
            },
            v.tags(),
        )
    });
    vols.sort_by_key(|v| v.ec2_id());
    let (vols, next) = page.apply(vols, |v| v.ec2_id());
    let mut x = Xml::new();
    x.set("volumeSet", &vols, |x, v| {
        write_volume(x, v, &instances, &snaps, &zone)
    });
    x.opt("nextToken", next);
    Ok(x)
}

pub(super) async fn volume_by_id(ctx: &Ctx<'_>) -> Result<Volume> {
    let id = ctx.params.required("VolumeId")?.to_string();
    check_ids(
        std::slice::from_ref(&id),
        &["vol"],
        "InvalidVolumeID.Malformed",
        "volume id",
    )?;
    list_all::<Volume>(ctx.store, ctx.project())
        .await?
        .into_iter()
        .find(|v| v.ec2_id() == id)
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidVolume.NotFound",
                format!("The volume '{id}' does not exist."),
            )
        })
}

pub async fn delete(ctx: &Ctx<'_>) -> Result<Xml> {
    let v = volume_by_id(ctx).await?;
    if let Some((i, _, _)) = attached(&v, &visible_instances(ctx).await?) {
        return Err(Ec2Error::client(
            "VolumeInUse",
            format!(
                "Volume {} is currently attached to {}",
                v.ec2_id(),
                instance_id(&i.metadata.uid)
            ),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &v).await?;
    Ok(super::ok_return())
}

fn write_attachment(x: &mut Xml, v: &Volume, i: &Instance, dev: &str, status: &str) {
    x.leaf("volumeId", v.ec2_id())
        .leaf("instanceId", instance_id(&i.metadata.uid))
        .leaf("device", dev)
        .leaf("status", status)
        .leaf("attachTime", ts(&chrono::Utc::now()))
        .leaf("deleteOnTermination", false);
}

pub async fn attach(ctx: &Ctx<'_>) -> Result<Xml> {
    let v = volume_by_id(ctx).await?;
    let device = ctx.params.required("Device")?.to_string();
    let instances = visible_instances(ctx).await?;
    let iid = ctx.params.required("InstanceId")?.to_string();
    check_ids(
        std::slice::from_ref(&iid),
        &["i"],
        "InvalidInstanceID.Malformed",
        "instance id",
    )?;
    let i = instances
        .iter()
        .find(|i| instance_id(&i.metadata.uid) == iid)
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{iid}' does not exist"),
            )
        })?;
    if i.metadata.deletion_timestamp.is_some() {
        return Err(Ec2Error::incorrect_state(format!(
            "Instance '{iid}' is not 'running'."
        )));
    }
    if attached(&v, &instances).is_some() || phase(&v) != "available" {
        return Err(Ec2Error::client(
            "IncorrectState",
            format!("{} is not 'available'.", v.ec2_id()),
        ));
    }
    let dev = device
        .trim_start_matches("/dev/")
        .replace("xvd", "vd")
        .replace("sd", "vd");
    if !corral_api_types::is_data_device(&dev)
        || i.spec
            .volumes
            .iter()
            .any(|a| a.device.as_deref() == Some(dev.as_str()))
    {
        return Err(Ec2Error::invalid_value(format!(
            "Invalid value '{}' for unixDevice. Attachment point {} is already in use or not valid",
            crate::query::clip(&device),
            crate::query::clip(&device)
        )));
    }
    ctx.gate()?;
    let name = v.metadata.name.clone();
    objects::update(
        ctx.store,
        ctx.project(),
        &i.metadata.name,
        |i: &mut Instance| {
            i.spec.volumes.push(VolumeAttachment {
                volume: name.clone(),
                device: Some(dev.clone()),
                delete_on_termination: false,
            });
            Ok(())
        },
    )
    .await?;
    let mut x = Xml::new();
    write_attachment(&mut x, &v, i, &device, "attaching");
    Ok(x)
}

pub async fn detach(ctx: &Ctx<'_>) -> Result<Xml> {
    let v = volume_by_id(ctx).await?;
    let instances = visible_instances(ctx).await?;
    let Some((i, dev, _)) = attached(&v, &instances) else {
        return Err(Ec2Error::client(
            "IncorrectState",
            format!("Volume '{}' is in the '{}' state.", v.ec2_id(), phase(&v)),
        ));
    };
    if dev == "/dev/vda" {
        return Err(Ec2Error::client(
            "OperationNotPermitted",
            "The root volume cannot be detached",
        ));
    }
    if let Some(want) = ctx.params.get_nonempty("InstanceId") {
        if want != instance_id(&i.metadata.uid) {
            return Err(Ec2Error::client(
                "IncorrectState",
                format!(
                    "Volume '{}' is not attached to '{}'",
                    v.ec2_id(),
                    crate::query::clip(want)
                ),
            ));
        }
    }
    ctx.gate()?;
    let name = v.metadata.name.clone();
    objects::update(
        ctx.store,
        ctx.project(),
        &i.metadata.name,
        |i: &mut Instance| {
            i.spec.volumes.retain(|a| a.volume != name);
            Ok(())
        },
    )
    .await?;
    let mut x = Xml::new();
    write_attachment(&mut x, &v, i, &dev, "detaching");
    Ok(x)
}
