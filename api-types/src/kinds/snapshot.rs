//! Snapshot: a point-in-time copy of a volume, restorable into new volumes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_zero_i64, is_zero_u8};
use crate::validate::{
    check_description, check_ref, check_tags, header, impl_validate_update, NameRule,
};
use crate::{Condition, Defaults, FieldErrors, Validate};

crate::resource!(
    /// A point-in-time copy of a volume.
    Snapshot,
    SnapshotSpec,
    SnapshotStatus,
    "snapshots",
    Project
);

/// Desired state of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotSpec {
    /// Name of the Volume to snapshot.
    pub volume: String,
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotPhase {
    #[default]
    Pending,
    Completed,
    Error,
}

/// Observed state of a snapshot.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotStatus {
    #[serde(default)]
    pub phase: SnapshotPhase,
    /// Size of the source volume, GiB.
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<u32>,
    /// Percent done, 0-100.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub progress: u8,
    /// EC2 id, `snap-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// The node holding the snapshot's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Path of the snapshot's file on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Validate for Snapshot {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        check_ref(&mut errs, "spec.volume", &self.spec.volume);
        check_description(
            &mut errs,
            "spec.description",
            self.spec.description.as_deref(),
        );
        check_tags(&mut errs, "spec.tags", &self.spec.tags);
        errs
    }
}

impl crate::HostRefs for Snapshot {}

impl Defaults for Snapshot {}

// The source volume is fixed.
impl_validate_update!(Snapshot, "spec.volume" => volume);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    #[test]
    fn round_trip_with_status() {
        let s: Snapshot = round_trip_kind(
            r#"
metadata: {name: nightly, project: demo}
spec: {volume: data, description: before upgrade}
status: {phase: completed, sizeGiB: 10, progress: 100, ec2Id: snap-0123456789abcdef0}
"#,
        );
        let st = s.status.as_ref().unwrap();
        assert_eq!(st.phase, SnapshotPhase::Completed);
        assert_eq!(st.progress, 100);
        assert_valid(&s);
    }

    #[test]
    fn rules() {
        let mut s = Snapshot::new("demo", "s", SnapshotSpec::default());
        s.spec.description = Some("d".repeat(256));
        assert_errors(
            &s.validate(),
            &[
                "spec.volume: required",
                "spec.description: must be at most 255 characters (is 256)",
            ],
        );
        s.spec.volume = "Data".into();
        s.spec.description = None;
        assert_errors(&s.validate(), &[&format!("spec.volume: {DNS_LABEL_MSG}")]);
    }
}
