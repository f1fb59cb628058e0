//! RunInstances' block device mappings: which volumes to create, from
//! what, and where to attach them.

use corral_api_types::Snapshot;

use super::ids::SNAPSHOT;
use crate::error::{Ec2Error, Result};
use crate::query::{clip, Params};

/// `/dev/sdb`, `/dev/xvdb`, `/dev/vdb` (or without `/dev/`) → `vdb`; the
/// root names → None.
pub(super) fn data_device(name: &str) -> Result<Option<String>> {
    let base = name.strip_prefix("/dev/").unwrap_or(name);
    if matches!(base, "sda" | "sda1" | "vda" | "xvda" | "vda1" | "xvda1") {
        return Ok(None);
    }
    let letter = base
        .strip_prefix("xvd")
        .or_else(|| base.strip_prefix("sd"))
        .or_else(|| base.strip_prefix("vd"))
        .filter(|l| l.len() == 1 && ('b'..='z').contains(&l.chars().next().unwrap_or('a')));
    match letter {
        Some(l) => Ok(Some(format!("vd{l}"))),
        None => Err(Ec2Error::invalid_value(format!(
            "Invalid device name {}",
            clip(name)
        ))),
    }
}

/// A volume a block device mapping asks for: (device or root, source, size, deleteOnTermination).
pub struct DiskRequest {
    /// The guest device (`vdb`); None for the root disk.
    pub device: Option<String>,
    /// The `DeviceName` as given (`/dev/sdb`): the name EC2 shows (see
    /// `volumes::attachment_annotation`), for launch to record.
    pub name: String,
    pub snapshot: Option<String>,
    pub size: Option<u32>,
    pub delete_on_termination: bool,
}

pub fn disk_requests(p: &Params, snapshots: &[Snapshot]) -> Result<Vec<DiskRequest>> {
    let mut out = Vec::new();
    for m in p.structs("BlockDeviceMapping")? {
        let name = m.required("DeviceName")?;
        if m.get("NoDevice").is_some() {
            continue;
        }
        if m.get("VirtualName").is_some() {
            return Err(Ec2Error::invalid_value(
                "instance store volumes (VirtualName) are not supported",
            ));
        }
        let ebs = m.sub("Ebs");
        if ebs.bool("Encrypted")?.unwrap_or(false) || ebs.get_nonempty("KmsKeyId").is_some() {
            return Err(Ec2Error::client(
                "UnsupportedOperation",
                format!(
                    "BlockDeviceMapping ({}): encrypted volumes (Ebs.Encrypted, Ebs.KmsKeyId) are not supported",
                    clip(name)
                ),
            ));
        }
        let snapshot = match ebs.get_nonempty("SnapshotId") {
            Some(id) => Some(SNAPSHOT.find_named(snapshots, id)?),
            None => None,
        };
        let size = ebs.int_in("VolumeSize", 1, 16384)?.map(|s| s as u32);
        if snapshot.is_none() && size.is_none() {
            return Err(Ec2Error::missing("BlockDeviceMapping.N.Ebs.VolumeSize"));
        }
        out.push(DiskRequest {
            device: data_device(name)?,
            name: name.to_string(),
            snapshot,
            size,
            delete_on_termination: ebs.bool("DeleteOnTermination")?.unwrap_or(true),
        });
    }
    Ok(out)
}
