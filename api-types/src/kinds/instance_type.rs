//! InstanceType: a named size (Nova's flavor, EC2's instance type).
//! Cluster-scoped; its name may contain dots (`m1.tiny`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::instance::{CPUS_RANGE, MEMORY_MIB_RANGE};
use super::is_zero_u32;
use crate::validate::{check_description, check_range, header, impl_validate_update, NameRule};
use crate::{Defaults, FieldErrors, Resource, Validate};

crate::resource!(
    /// A named instance size.
    InstanceType,
    InstanceTypeSpec,
    InstanceTypeStatus,
    "instancetypes",
    Cluster
);

/// Desired state of an instance type.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceTypeSpec {
    /// Virtual CPUs (1-256).
    pub vcpus: u32,
    /// Memory in MiB (64-4194304).
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,
    /// Root disk size in GiB (0 = the image's size).
    #[serde(rename = "rootDiskGiB")]
    pub root_disk_gib: u32,
    /// Extra ephemeral disk in GiB, deleted with the instance.
    #[serde(default, rename = "ephemeralGiB", skip_serializing_if = "is_zero_u32")]
    pub ephemeral_gib: u32,
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Instance types have no observed state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceTypeStatus {}

/// Nova's classic flavors, created at cluster bootstrap:
/// m1.tiny, m1.small, m1.medium, m1.large, m1.xlarge.
pub fn seeded_instance_types() -> Vec<InstanceType> {
    [
        ("m1.tiny", 1, 512, 1),
        ("m1.small", 1, 2048, 20),
        ("m1.medium", 2, 4096, 40),
        ("m1.large", 4, 8192, 80),
        ("m1.xlarge", 8, 16384, 160),
    ]
    .into_iter()
    .map(|(name, vcpus, memory_mib, root_disk_gib)| {
        InstanceType::new(
            "",
            name,
            InstanceTypeSpec {
                vcpus,
                memory_mib,
                root_disk_gib,
                ..Default::default()
            },
        )
    })
    .collect()
}

impl Validate for InstanceType {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsSubdomain);
        let s = &self.spec;
        check_range(&mut errs, "spec.vcpus", s.vcpus, CPUS_RANGE.0, CPUS_RANGE.1);
        check_range(
            &mut errs,
            "spec.memoryMiB",
            s.memory_mib,
            MEMORY_MIB_RANGE.0,
            MEMORY_MIB_RANGE.1,
        );
        check_range(&mut errs, "spec.rootDiskGiB", s.root_disk_gib, 0, 16384);
        check_range(&mut errs, "spec.ephemeralGiB", s.ephemeral_gib, 0, 16384);
        check_description(&mut errs, "spec.description", s.description.as_deref());
        errs
    }
}

impl crate::HostRefs for InstanceType {}

impl Defaults for InstanceType {}

// Sizes are fixed (instances refer to them): create a new type instead.
impl_validate_update!(
    InstanceType,
    "spec.vcpus" => vcpus,
    "spec.memoryMiB" => memory_mib,
    "spec.rootDiskGiB" => root_disk_gib,
    "spec.ephemeralGiB" => ephemeral_gib,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_SUBDOMAIN_MSG;

    #[test]
    fn seeded_types_are_novas_and_valid() {
        let types = seeded_instance_types();
        let got: Vec<_> = types
            .iter()
            .map(|t| {
                (
                    t.metadata.name.as_str(),
                    t.spec.vcpus,
                    t.spec.memory_mib,
                    t.spec.root_disk_gib,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m1.tiny", 1, 512, 1),
                ("m1.small", 1, 2048, 20),
                ("m1.medium", 2, 4096, 40),
                ("m1.large", 4, 8192, 80),
                ("m1.xlarge", 8, 16384, 160),
            ]
        );
        for t in &types {
            assert!(t.metadata.project.is_empty());
            assert!(
                t.validate().is_empty(),
                "{}: {}",
                t.metadata.name,
                t.validate()
            );
        }
    }

    #[test]
    fn round_trip_and_rules() {
        let t: InstanceType = round_trip(
            "apiVersion: corral/v1\nkind: InstanceType\nmetadata: {name: c1.big}\nspec: {vcpus: 2, memoryMiB: 1024, rootDiskGiB: 10, ephemeralGiB: 5}\n",
        );
        assert_eq!(t.spec.ephemeral_gib, 5);
        assert_valid(&t);

        let mut bad = InstanceType::new("demo", "M1_tiny", InstanceTypeSpec::default());
        bad.spec.root_disk_gib = 20000;
        assert_errors(
            &bad.validate(),
            &[
                &format!("metadata.name: {DNS_SUBDOMAIN_MSG}"),
                "metadata.project: must be empty: InstanceType is cluster-scoped",
                "spec.vcpus: must be between 1 and 256 (is 0)",
                "spec.memoryMiB: must be between 64 and 4194304 (is 0)",
                "spec.rootDiskGiB: must be between 0 and 16384 (is 20000)",
            ],
        );
    }
}
