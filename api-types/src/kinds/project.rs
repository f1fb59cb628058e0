//! Project: a tenant (Nova's project, EC2's account) with its quotas.
//! Cluster-scoped; the project's name is what other objects put in
//! `metadata.project`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_zero_i64;
use crate::validate::{check_max_chars, check_meta_update, header, NameRule, MAX_DESCRIPTION};
use crate::{Defaults, FieldErrors, Validate, ValidateUpdate};

crate::resource!(
    /// A tenant.
    Project,
    ProjectSpec,
    ProjectStatus,
    "projects",
    Cluster
);

/// Amounts counted against a project. In `spec.quotas` an absent field
/// means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectResources {
    /// Number of instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Total virtual CPUs of all instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Total memory of all instances, MiB.
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Total size of all volumes, GiB.
    #[serde(default, rename = "volumeGiB", skip_serializing_if = "Option::is_none")]
    pub volume_gib: Option<u32>,
    /// Number of volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u32>,
    /// Number of floating addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<u32>,
}

impl ProjectResources {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == ProjectResources::default()
    }
}

/// Desired state of a project.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Limits; absent fields are unlimited.
    #[serde(default, skip_serializing_if = "ProjectResources::is_empty")]
    pub quotas: ProjectResources,
}

/// Observed state of a project.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectStatus {
    /// Current consumption.
    #[serde(default, skip_serializing_if = "ProjectResources::is_empty")]
    pub usage: ProjectResources,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

impl Validate for Project {
    fn validate(&self) -> FieldErrors {
        let mut errs = header::<Self>(
            &self.api_version,
            &self.kind,
            &self.metadata,
            NameRule::DnsLabel,
        );
        if let Some(d) = &self.spec.description {
            check_max_chars(&mut errs, "spec.description", d, MAX_DESCRIPTION);
        }
        errs
    }
}

impl Defaults for Project {
    fn apply_defaults(&mut self) {}
}

impl ValidateUpdate for Project {
    /// Everything may change.
    fn validate_update(&self, old: &Self) -> FieldErrors {
        check_meta_update(&old.metadata, &self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip;
    use crate::validate::testing::assert_errors;
    use crate::Resource;

    #[test]
    fn round_trip_and_rules() {
        let p: Project = round_trip(
            r#"
apiVersion: corral/v1
kind: Project
metadata: {name: demo}
spec:
  description: the demo tenant
  quotas: {instances: 10, vcpus: 20, memoryMiB: 40960, volumeGiB: 500, volumes: 10, addresses: 2}
status:
  usage: {instances: 2, vcpus: 2, memoryMiB: 1024, volumeGiB: 1, volumes: 1, addresses: 0}
"#,
        );
        assert_eq!(p.spec.quotas.memory_mib, Some(40960));
        assert_eq!(p.status.as_ref().unwrap().usage.addresses, Some(0));
        assert!(p.validate().is_empty(), "{}", p.validate());

        let mut bad = Project::new("x", "demo", ProjectSpec::default());
        bad.spec.description = Some("d".repeat(256));
        assert_errors(
            &bad.validate(),
            &[
                "metadata.project: must be empty: Project is cluster-scoped",
                "spec.description: must be at most 255 characters (is 256)",
            ],
        );
    }
}
