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
        volume_class(&ebs, &format!("BlockDeviceMapping ({}): Ebs.", clip(name)))?;
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

/// Corral's volumes are of one kind: a qcow2 file on the node, which EC2
/// calls `standard`. A request for another type, provisioned IOPS or
/// throughput, or multi-attach is refused (`what` prefixes the parameter
/// in the message) rather than quietly given a standard volume.
pub fn volume_class(p: &Params, what: &str) -> Result<()> {
    let refuse = |param: String, why: &str| {
        Err(Ec2Error::client(
            "UnsupportedOperation",
            format!("{what}{param} is not supported: {why}"),
        ))
    };
    if let Some(t) = p.get_nonempty("VolumeType") {
        if t != "standard" {
            return refuse(
                format!("VolumeType={}", clip(t)),
                "Corral's volumes are all 'standard' (a qcow2 file on the node)",
            );
        }
    }
    for key in ["Iops", "Throughput"] {
        if p.get_nonempty(key).is_some() {
            return refuse(
                key.to_string(),
                "Corral's volumes have no provisioned IOPS or throughput",
            );
        }
    }
    if p.bool("MultiAttachEnabled")?.unwrap_or(false) {
        return refuse(
            "MultiAttachEnabled=true".to_string(),
            "a Corral volume is attached to one instance at a time",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn only_standard_volumes_without_provisioned_performance_pass() {
        assert!(volume_class(&params(&[]), "").is_ok());
        assert!(volume_class(&params(&[("VolumeType", "standard")]), "").is_ok());
        assert!(volume_class(&params(&[("MultiAttachEnabled", "false")]), "").is_ok());
        for (pairs, names) in [
            (vec![("VolumeType", "gp3")], "VolumeType=gp3"),
            (
                vec![("VolumeType", "io2"), ("Iops", "3000")],
                "VolumeType=io2",
            ),
            (vec![("Iops", "3000")], "Iops"),
            (vec![("Throughput", "125")], "Throughput"),
            (
                vec![("MultiAttachEnabled", "true")],
                "MultiAttachEnabled=true",
            ),
        ] {
            let e = volume_class(&params(&pairs), "Ebs.").unwrap_err();
            assert_eq!(e.code, "UnsupportedOperation", "{pairs:?}");
            assert!(
                e.to_string()
                    .contains(&format!("Ebs.{names} is not supported")),
                "{e}"
            );
        }
    }

    #[test]
    fn block_device_mappings_name_the_mapping_refused() {
        let p = params(&[
            ("BlockDeviceMapping.1.DeviceName", "/dev/sdf"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "2"),
            ("BlockDeviceMapping.1.Ebs.VolumeType", "gp2"),
        ]);
        let Err(e) = disk_requests(&p, &[]) else {
            panic!("a gp2 mapping was accepted");
        };
        assert!(
            e.to_string()
                .contains("BlockDeviceMapping (/dev/sdf): Ebs.VolumeType=gp2 is not supported"),
            "{e}"
        );
        let p = params(&[
            ("BlockDeviceMapping.1.DeviceName", "/dev/sdf"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "2"),
            ("BlockDeviceMapping.1.Ebs.VolumeType", "standard"),
        ]);
        let Ok(disks) = disk_requests(&p, &[]) else {
            panic!("a standard mapping was refused");
        };
        assert_eq!(disks.len(), 1);
    }
}
