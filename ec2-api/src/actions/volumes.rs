//! Volumes: Create/Describe/Delete/Attach/Detach (snapshots are
//! `snapshots`'). Attachments are the Instances' `spec.volumes`; states
//! come from the observed phases.

use corral_api_types::ec2::{instance_id, resource_id};
use corral_api_types::{
    Instance, Resource, Snapshot, Volume, VolumeAttachment, VolumePhase, VolumeSource, VolumeSpec,
};

use super::describe::{page_answer, Describe};
use super::ids::{INSTANCE, SNAPSHOT, VOLUME};
use super::instances::visible_instances;
use super::{created, ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one};
use crate::objects::{self, client_token, earlier, new_uid, stamp_token, tag_specs, Tagged};
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

/// The state of a volume's attachment.
fn attach_state(v: &Volume) -> &'static str {
    if phase(v) == "in-use" {
        "attached"
    } else {
        "attaching"
    }
}

/// The id of the snapshot a volume was made from.
fn snapshot_id(v: &Volume, snaps: &[Snapshot]) -> Option<String> {
    v.spec
        .source
        .snapshot
        .as_ref()
        .and_then(|s| snaps.iter().find(|x| &x.metadata.name == s))
        .map(|s| s.ec2_id())
}

fn write_volume(x: &mut Xml, v: &Volume, instances: &[Instance], snaps: &[Snapshot], zone: &str) {
    let att = attached(v, instances);
    let attach_state = attach_state(v);
    x.leaf("volumeId", v.ec2_id())
        .leaf("size", size(v))
        .leaf("snapshotId", snapshot_id(v, snaps).unwrap_or_default())
        .leaf(
            "availabilityZone",
            v.spec.availability_zone.as_deref().unwrap_or(zone),
        )
        .leaf("status", phase(v))
        .opt("createTime", created(&v.metadata))
        .set(
            "attachmentSet",
            &att.into_iter().collect::<Vec<_>>(),
            |x, (i, dev, dot)| {
                x.leaf("volumeId", v.ec2_id())
                    .leaf("instanceId", instance_id(&i.metadata.uid))
                    .leaf("device", dev)
                    .leaf("status", attach_state)
                    .opt("attachTime", created(&i.metadata))
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
    let zone = ctx
        .zone_param("AvailabilityZone")
        .await?
        .ok_or_else(|| Ec2Error::missing("AvailabilityZone"))?;
    if p.bool("Encrypted")?.unwrap_or(false) {
        return Err(Ec2Error::client(
            "UnsupportedOperation",
            "Encrypted volumes are not supported",
        ));
    }
    let snaps = ctx.list::<Snapshot>().await?;
    let snapshot = match p.get_nonempty("SnapshotId") {
        Some(id) => Some(SNAPSHOT.find_named(&snaps, id)?),
        None if size.is_none() => return Err(Ec2Error::missing("Size")),
        None => None,
    };
    let tags = tag_specs(p, "volume")?;
    let token = client_token(p)?;
    let vols = ctx.list::<Volume>().await?;
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

const FILTERS: &[&str] = &[
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
];

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &VOLUME, FILTERS)?;
    let vols = ctx.list::<Volume>().await?;
    d.check_found(&VOLUME, &vols, |v| v.ec2_id())?;
    let instances = visible_instances(ctx).await?;
    let snaps = ctx.list::<Snapshot>().await?;
    let zone = ctx.zones().await?.remove(0);
    let field = |v: &Volume, f: &str| {
        let att = attached(v, &instances);
        match f {
            "volume-id" => one(v.ec2_id()),
            "status" => one(phase(v)),
            "size" => one(size(v).to_string()),
            "snapshot-id" => snapshot_id(v, &snaps).into_iter().collect(),
            "availability-zone" => one(v.spec.availability_zone.clone().unwrap_or(zone.clone())),
            "attachment.instance-id" => {
                att.iter().map(|a| instance_id(&a.0.metadata.uid)).collect()
            }
            "attachment.device" => att.iter().map(|a| a.1.clone()).collect(),
            "attachment.status" => att.iter().map(|_| attach_state(v).to_string()).collect(),
            "attachment.delete-on-termination" => att.iter().flat_map(|a| b(a.2)).collect(),
            "create-time" => created(&v.metadata).into_iter().collect(),
            "volume-type" => one("standard"),
            _ => b(false),
        }
    };
    let (vols, next) = d.select(vols, |v| v.ec2_id(), field, |v| v.tags());
    Ok(page_answer("volumeSet", &vols, next, |x, v| {
        write_volume(x, v, &instances, &snaps, &zone)
    }))
}

/// The volume the required `VolumeId` names.
pub(super) async fn volume_by_id(ctx: &Ctx<'_>) -> Result<Volume> {
    let id = VOLUME.required(ctx.params)?;
    VOLUME.find(ctx.list::<Volume>().await?, &id, |v| v.ec2_id())
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
    let iid = INSTANCE.required(ctx.params)?;
    let i = INSTANCE.find(&instances, &iid, |i| instance_id(&i.metadata.uid))?;
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
    ctx.update(&i.metadata.name, |i: &mut Instance| {
        i.spec.volumes.push(VolumeAttachment {
            volume: name.clone(),
            device: Some(dev.clone()),
            delete_on_termination: false,
        });
        Ok(())
    })
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
    ctx.update(&i.metadata.name, |i: &mut Instance| {
        i.spec.volumes.retain(|a| a.volume != name);
        Ok(())
    })
    .await?;
    let mut x = Xml::new();
    write_attachment(&mut x, &v, i, &dev, "detaching");
    Ok(x)
}
