//! Volume: a block device (a qcow2 file on a node), empty or created from an
//! image, a snapshot or another volume (clone).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_zero_i64;
use crate::validate::{
    check_opt_ref, check_range, check_spec_update, check_tags, header, NameRule,
};
use crate::{Condition, Defaults, FieldErrors, Validate, ValidateUpdate};

crate::resource!(
    /// A block storage volume.
    Volume,
    VolumeSpec,
    VolumeStatus,
    "volumes",
    Project
);

/// Smallest and largest volume size, GiB.
pub const VOLUME_SIZE_GIB_RANGE: (u32, u32) = (1, 16384);

/// What a new volume's contents come from. At most one field may be set;
/// none means an empty volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSource {
    /// Name of an Image to copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of a Snapshot to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Name of a Volume to clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

impl VolumeSource {
    /// True for an empty (blank) volume.
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.snapshot.is_none() && self.volume.is_none()
    }
}

/// Desired state of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    /// Size in GiB (1-16384). Required for an empty volume; defaults to the
    /// source's size otherwise.
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<u32>,
    /// Initial contents; an empty volume when absent.
    #[serde(default, skip_serializing_if = "VolumeSource::is_empty")]
    pub source: VolumeSource,
    /// Zone to create the volume in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VolumePhase {
    #[default]
    Creating,
    Available,
    InUse,
    Deleting,
    Error,
}

/// The instance a volume is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachedTo {
    pub instance: String,
    /// Guest device, e.g. `vdb`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
}

/// Observed state of a volume.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeStatus {
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<AttachedTo>,
    /// The node holding the volume's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Path of the volume's file on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// EC2 id, `vol-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// Actual size in GiB.
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Validate for Volume {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        let src = &spec.source;
        let set = [&src.image, &src.snapshot, &src.volume]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if set > 1 {
            errs.push(
                "spec.source",
                "at most one of image, snapshot or volume may be set",
            );
        }
        check_opt_ref(&mut errs, "spec.source.image", src.image.as_ref());
        check_opt_ref(&mut errs, "spec.source.snapshot", src.snapshot.as_ref());
        check_opt_ref(&mut errs, "spec.source.volume", src.volume.as_ref());
        match spec.size_gib {
            None if src.is_empty() => {
                errs.push("spec.sizeGiB", "required when spec.source is empty")
            }
            None => {}
            Some(s) => check_range(
                &mut errs,
                "spec.sizeGiB",
                s,
                VOLUME_SIZE_GIB_RANGE.0,
                VOLUME_SIZE_GIB_RANGE.1,
            ),
        }
        check_opt_ref(
            &mut errs,
            "spec.availabilityZone",
            spec.availability_zone.as_ref(),
        );
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl crate::HostRefs for Volume {}

impl Defaults for Volume {}

impl ValidateUpdate for Volume {
    /// Source and zone are fixed; the size may only grow.
    fn validate_update(&self, old: &Self) -> FieldErrors {
        let mut errs = check_spec_update!(
            old,
            self,
            "spec.source" => source,
            "spec.availabilityZone" => availability_zone,
        );
        if let (Some(was), Some(now)) = (old.spec.size_gib, self.spec.size_gib) {
            if now < was {
                errs.push("spec.sizeGiB", format!("may only grow (was {was})"));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::{assert_wire_names, round_trip_kind};
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    #[test]
    fn round_trip_with_status() {
        let v: Volume = round_trip_kind(
            r#"
metadata: {name: data, project: demo}
spec:
  sizeGiB: 10
  source: {snapshot: nightly}
  availabilityZone: zone-a
  tags: {Name: data}
status:
  phase: in-use
  attachedTo: {instance: web-1, device: vdb}
  nodeName: host-1
  location: /var/lib/corral/volumes/demo/data.qcow2
  ec2Id: vol-0123456789abcdef0
  sizeGiB: 10
"#,
        );
        assert_eq!(v.spec.source.snapshot.as_deref(), Some("nightly"));
        let st = v.status.as_ref().unwrap();
        assert_eq!(st.phase, VolumePhase::InUse);
        assert_eq!(st.attached_to.as_ref().unwrap().device, "vdb");
        assert_valid(&v);
    }

    #[test]
    fn phase_names() {
        assert_wire_names(&[
            ("creating", VolumePhase::Creating),
            ("available", VolumePhase::Available),
            ("in-use", VolumePhase::InUse),
            ("deleting", VolumePhase::Deleting),
            ("error", VolumePhase::Error),
        ]);
    }

    #[test]
    fn size_and_source_rules() {
        let mut v = Volume::new("demo", "data", VolumeSpec::default());
        assert_errors(
            &v.validate(),
            &["spec.sizeGiB: required when spec.source is empty"],
        );
        v.spec.size_gib = Some(0);
        assert_errors(
            &v.validate(),
            &["spec.sizeGiB: must be between 1 and 16384 (is 0)"],
        );
        v.spec.size_gib = Some(16385);
        assert_errors(
            &v.validate(),
            &["spec.sizeGiB: must be between 1 and 16384 (is 16385)"],
        );
        v.spec.size_gib = None;
        v.spec.source.image = Some("tiny".into());
        assert!(v.validate().is_empty(), "size may be omitted with a source");
        v.spec.source.volume = Some("Other".into());
        v.spec.availability_zone = Some("Z".into());
        assert_errors(
            &v.validate(),
            &[
                "spec.source: at most one of image, snapshot or volume may be set",
                &format!("spec.source.volume: {DNS_LABEL_MSG}"),
                &format!("spec.availabilityZone: {DNS_LABEL_MSG}"),
            ],
        );
    }
}
