//! Volumes: Create/Describe/Delete/Attach/Detach (snapshots are
//! `snapshots`'). Attachments are the Instances' `spec.volumes`; states
//! come from the observed phases.
//!
//! The guest sees a virtio disk (`vdf`), but EC2 shows the device name
//! the user gave (`/dev/sdf`, `xvdf`) everywhere: AttachVolume records it,
//! with the time of attaching, in an annotation of the Instance
//! ([`ATTACHMENT_ANNOTATION_PREFIX`]), written in the same update as the
//! attachment itself.

use chrono::{DateTime, Utc};
use corral_api_types::ec2::{instance_id, resource_id};
use corral_api_types::{
    Instance, Resource, Snapshot, Volume, VolumeAttachment, VolumePhase, VolumeSource, VolumeSpec,
};
use serde::{Deserialize, Serialize};

use super::describe::{page_answer, Describe};
use super::disks::data_device;
use super::ids::{INSTANCE, SNAPSHOT, VOLUME};
use super::instances::visible_instances;
use super::{created, ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one};
use crate::objects::{self, client_token, earlier, new_uid, stamp_token, tag_specs, Tagged};
use crate::query::clip;
use crate::xml::Xml;

/// Instance annotation `<prefix><guest device>` (`…attachment.vdf`): the
/// EC2 side of the attachment at that guest device, an [`Ec2Attachment`]
/// as JSON.
pub const ATTACHMENT_ANNOTATION_PREFIX: &str = "ec2.corral/attachment.";

/// What EC2 shows of one attachment that the guest does not see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ec2Attachment {
    /// The Volume (resource name) attached: the record only holds while
    /// the same volume is at that guest device.
    pub volume: String,
    /// The device name as the user gave it (`/dev/sdf`).
    pub device: String,
    /// When it was attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_time: Option<DateTime<Utc>>,
}

/// The annotation (key, value) recording that `volume` was attached at
/// guest device `guest` (`vdf`) as `device` (`/dev/sdf`), at `time`.
pub fn attachment_annotation(
    guest: &str,
    volume: &str,
    device: &str,
    time: Option<DateTime<Utc>>,
) -> (String, String) {
    let record = Ec2Attachment {
        volume: volume.to_string(),
        device: device.to_string(),
        attach_time: time,
    };
    (
        format!("{ATTACHMENT_ANNOTATION_PREFIX}{guest}"),
        serde_json::to_string(&record).unwrap_or_default(),
    )
}

/// The EC2 view of attachment `a` of `i`: the device name EC2 shows (the
/// one the user gave, else `/dev/<guest device>`) and, when recorded, the
/// time it was attached.
pub fn ec2_attachment(i: &Instance, a: &VolumeAttachment) -> (String, Option<DateTime<Utc>>) {
    let guest = a.device.as_deref().unwrap_or_default();
    let record = i
        .metadata
        .annotations
        .get(&format!("{ATTACHMENT_ANNOTATION_PREFIX}{guest}"))
        .and_then(|v| serde_json::from_str::<Ec2Attachment>(v).ok())
        .filter(|r| r.volume == a.volume && !r.device.is_empty());
    match record {
        Some(r) => (r.device, r.attach_time),
        None => (format!("/dev/{guest}"), None),
    }
}

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

/// A volume's attachment as EC2 shows it.
struct Attached<'a> {
    instance: &'a Instance,
    /// The device name EC2 shows.
    device: String,
    /// The guest's device (`vdf`); None for the boot disk.
    guest: Option<String>,
    delete_on_termination: bool,
    /// When it was attached: the recorded time, else the instance's
    /// creation; never before the volume's own creation.
    time: Option<DateTime<Utc>>,
}

/// The instance (live, not terminated) whose spec attaches `v`.
fn attached<'a>(v: &Volume, instances: &'a [Instance]) -> Option<Attached<'a>> {
    let (instance, device, guest, delete_on_termination, recorded) = instances
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .find_map(|i| {
            if i.spec.boot_volume.as_deref() == Some(v.metadata.name.as_str()) {
                return Some((i, "/dev/vda".to_string(), None, false, None));
            }
            i.spec
                .volumes
                .iter()
                .find(|a| a.volume == v.metadata.name)
                .map(|a| {
                    let (device, time) = ec2_attachment(i, a);
                    (i, device, a.device.clone(), a.delete_on_termination, time)
                })
        })?;
    let time = recorded.or(instance.metadata.creation_timestamp).map(|t| {
        match v.metadata.creation_timestamp {
            Some(made) if made > t => made,
            _ => t,
        }
    });
    Some(Attached {
        instance,
        device,
        guest,
        delete_on_termination,
        time,
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
            |x, a| {
                x.leaf("volumeId", v.ec2_id())
                    .leaf("instanceId", instance_id(&a.instance.metadata.uid))
                    .leaf("device", &a.device)
                    .leaf("status", attach_state)
                    .opt("attachTime", a.time.as_ref().map(ts))
                    .leaf("deleteOnTermination", a.delete_on_termination);
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
    if p.bool("Encrypted")?.unwrap_or(false) || p.get_nonempty("KmsKeyId").is_some() {
        return Err(Ec2Error::client(
            "UnsupportedOperation",
            "Encrypted volumes (Encrypted, KmsKeyId) are not supported",
        ));
    }
    super::disks::volume_class(p, "")?;
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
            "attachment.instance-id" => att
                .iter()
                .map(|a| instance_id(&a.instance.metadata.uid))
                .collect(),
            "attachment.device" => att.iter().map(|a| a.device.clone()).collect(),
            "attachment.status" => att.iter().map(|_| attach_state(v).to_string()).collect(),
            "attachment.delete-on-termination" => att
                .iter()
                .flat_map(|a| b(a.delete_on_termination))
                .collect(),
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
    if let Some(a) = attached(&v, &visible_instances(ctx).await?) {
        return Err(Ec2Error::client(
            "VolumeInUse",
            format!(
                "Volume {} is currently attached to {}",
                v.ec2_id(),
                instance_id(&a.instance.metadata.uid)
            ),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &v).await?;
    Ok(super::ok_return())
}

/// The answer of AttachVolume and DetachVolume.
fn write_attachment(
    x: &mut Xml,
    v: &Volume,
    i: &Instance,
    dev: &str,
    status: &str,
    time: Option<DateTime<Utc>>,
    delete_on_termination: bool,
) {
    x.leaf("volumeId", v.ec2_id())
        .leaf("instanceId", instance_id(&i.metadata.uid))
        .leaf("device", dev)
        .leaf("status", status)
        .opt("attachTime", time.as_ref().map(ts))
        .leaf("deleteOnTermination", delete_on_termination);
}

/// The guest device AttachVolume's `Device` maps to: `/dev/sdf`,
/// `/dev/xvdf`, `/dev/vdf` (or without `/dev/`) → `vdf`.
fn guest_device(device: &str) -> Result<String> {
    match data_device(device) {
        Ok(Some(dev)) if corral_api_types::is_data_device(&dev) => Ok(dev),
        Ok(_) => Err(in_use(device)),
        Err(_) => Err(Ec2Error::invalid_value(format!(
            "Value ({}) for parameter device is invalid. {} is not a valid EBS device name.",
            clip(device),
            clip(device)
        ))),
    }
}

fn in_use(device: &str) -> Ec2Error {
    Ec2Error::invalid_value(format!(
        "Invalid value '{}' for unixDevice. Attachment point {} is already in use",
        clip(device),
        clip(device)
    ))
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
    let dev = guest_device(&device)?;
    if i.spec
        .volumes
        .iter()
        .any(|a| a.device.as_deref() == Some(dev.as_str()))
    {
        return Err(in_use(&device));
    }
    ctx.gate()?;
    // Never before the volume was created (clocks of other writers).
    let now = match v.metadata.creation_timestamp {
        Some(made) if made > Utc::now() => made,
        _ => Utc::now(),
    };
    let name = v.metadata.name.clone();
    let vid = v.ec2_id();
    let (key, record) = attachment_annotation(&dev, &name, &device, Some(now));
    // Checked again on the stored instance: a concurrent attach may have
    // taken the volume or the device since it was read.
    ctx.update(&i.metadata.name, |i: &mut Instance| {
        if i.spec.volumes.iter().any(|a| a.volume == name) {
            return Err(Ec2Error::client(
                "IncorrectState",
                format!("{vid} is not 'available'."),
            ));
        }
        if i.spec
            .volumes
            .iter()
            .any(|a| a.device.as_deref() == Some(dev.as_str()))
        {
            return Err(in_use(&device));
        }
        i.spec.volumes.push(VolumeAttachment {
            volume: name.clone(),
            device: Some(dev.clone()),
            delete_on_termination: false,
        });
        i.metadata.annotations.insert(key.clone(), record.clone());
        Ok(())
    })
    .await?;
    let mut x = Xml::new();
    write_attachment(&mut x, &v, i, &device, "attaching", Some(now), false);
    Ok(x)
}

pub async fn detach(ctx: &Ctx<'_>) -> Result<Xml> {
    let v = volume_by_id(ctx).await?;
    let instances = visible_instances(ctx).await?;
    let Some(a) = attached(&v, &instances) else {
        return Err(Ec2Error::client(
            "IncorrectState",
            format!("Volume '{}' is in the '{}' state.", v.ec2_id(), phase(&v)),
        ));
    };
    let Some(guest) = a.guest.clone() else {
        return Err(Ec2Error::client(
            "OperationNotPermitted",
            "The root volume cannot be detached",
        ));
    };
    let i = a.instance;
    if let Some(want) = ctx.params.get_nonempty("InstanceId") {
        if want != instance_id(&i.metadata.uid) {
            return Err(Ec2Error::client(
                "IncorrectState",
                format!(
                    "Volume '{}' is not attached to '{}'",
                    v.ec2_id(),
                    clip(want)
                ),
            ));
        }
    }
    // The name shown, or any name of the same guest device (an
    // attachment made before names were recorded shows `/dev/vdf`).
    if let Some(want) = ctx.params.get_nonempty("Device") {
        let same = want == a.device || data_device(want).ok().flatten().as_deref() == Some(&guest);
        if !same {
            return Err(Ec2Error::client(
                "IncorrectState",
                format!(
                    "Volume '{}' is not attached at '{}'",
                    v.ec2_id(),
                    clip(want)
                ),
            ));
        }
    }
    ctx.gate()?;
    let name = v.metadata.name.clone();
    let key = format!("{ATTACHMENT_ANNOTATION_PREFIX}{guest}");
    ctx.update(&i.metadata.name, |i: &mut Instance| {
        i.spec.volumes.retain(|a| a.volume != name);
        i.metadata.annotations.remove(&key);
        Ok(())
    })
    .await?;
    let mut x = Xml::new();
    write_attachment(
        &mut x,
        &v,
        i,
        &a.device,
        "detaching",
        a.time,
        a.delete_on_termination,
    );
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(volume: &str, device: &str) -> VolumeAttachment {
        VolumeAttachment {
            volume: volume.into(),
            device: Some(device.into()),
            delete_on_termination: false,
        }
    }

    #[test]
    fn the_recorded_name_holds_while_the_same_volume_is_there() {
        let mut i = Instance::new("p", "i-1", Default::default());
        let at = Utc::now();
        let (k, v) = attachment_annotation("vdf", "vol-a", "/dev/sdf", Some(at));
        assert_eq!(k, "ec2.corral/attachment.vdf");
        assert!(corral_api_types::validate::is_qualified_name(&k));
        i.metadata.annotations.insert(k, v);
        assert_eq!(
            ec2_attachment(&i, &attachment("vol-a", "vdf")),
            ("/dev/sdf".to_string(), Some(at))
        );
        // Another volume at that device since (attached outside EC2):
        // the guest's name, no recorded time.
        assert_eq!(
            ec2_attachment(&i, &attachment("vol-b", "vdf")),
            ("/dev/vdf".to_string(), None)
        );
        // Nothing recorded, or garbage.
        assert_eq!(
            ec2_attachment(&i, &attachment("vol-c", "vdg")),
            ("/dev/vdg".to_string(), None)
        );
        i.metadata
            .annotations
            .insert("ec2.corral/attachment.vdg".into(), "{not json".into());
        assert_eq!(
            ec2_attachment(&i, &attachment("vol-c", "vdg")),
            ("/dev/vdg".to_string(), None)
        );
    }

    #[test]
    fn device_names() {
        for (given, guest) in [
            ("/dev/sdf", "vdf"),
            ("/dev/xvdf", "vdf"),
            ("/dev/vdf", "vdf"),
            ("sdz", "vdz"),
            ("xvdb", "vdb"),
        ] {
            assert_eq!(guest_device(given).unwrap(), guest, "{given}");
        }
        for bad in [
            "/dev/sda1",
            "/dev/xvda",
            "/dev/vda",
            "/dev/sdf1",
            "/dev/hdf",
            "",
            "/dev/",
        ] {
            let e = guest_device(bad).unwrap_err();
            assert_eq!(e.code, "InvalidParameterValue", "{bad}");
        }
    }
}
