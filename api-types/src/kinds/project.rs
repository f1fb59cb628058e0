//! Project: a tenant (Nova's project, EC2's account) with its quotas.
//! Cluster-scoped; the project's name is what other objects put in
//! `metadata.project`.
//!
//! The quota rules live here, without I/O: what each object counts
//! against its project ([`instance_amounts`], [`volume_amounts`],
//! [`address_amounts`]), and whether a growth fits
//! ([`ProjectResources::check_growth`]). The mechanism that charges them
//! race-free at admission is `corral_registry::quota`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_zero_i64;
use crate::validate::{check_description, header, impl_validate_update, NameRule};
use crate::{Defaults, FieldErrors, Validate};

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
    /// Number of security groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<u32>,
    /// Number of key pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pairs: Option<u32>,
    /// Number of networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<u32>,
    /// Number of images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    /// Number of snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u32>,
}

/// The field holding quota `$r` in `$q`, a [`ProjectResources`] or a
/// [`QuotaAmounts`] (`&mut` one for a place to write): the one pairing of
/// quotas and fields.
macro_rules! quota_field {
    ($r:expr, $($q:tt)+) => {
        match $r {
            QuotaResource::Instances => $($q)+.instances,
            QuotaResource::Vcpus => $($q)+.vcpus,
            QuotaResource::MemoryMiB => $($q)+.memory_mib,
            QuotaResource::VolumeGiB => $($q)+.volume_gib,
            QuotaResource::Volumes => $($q)+.volumes,
            QuotaResource::Addresses => $($q)+.addresses,
            QuotaResource::SecurityGroups => $($q)+.security_groups,
            QuotaResource::KeyPairs => $($q)+.key_pairs,
            QuotaResource::Networks => $($q)+.networks,
            QuotaResource::Images => $($q)+.images,
            QuotaResource::Snapshots => $($q)+.snapshots,
        }
    };
}

impl ProjectResources {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == ProjectResources::default()
    }

    /// The limit on `r`, if any.
    pub fn limit(&self, r: QuotaResource) -> Option<u32> {
        quota_field!(r, self)
    }

    /// Whether any of `resources` is limited.
    pub fn limits_any(&self, resources: &[QuotaResource]) -> bool {
        resources.iter().any(|r| self.limit(*r).is_some())
    }

    /// Whether `used` may grow by `growth` under these limits (absent
    /// limits are unlimited). Only the resources that grow are checked, as
    /// in Kubernetes' ResourceQuota: a project already over a lowered limit
    /// may still shrink or change other things.
    pub fn check_growth(
        &self,
        used: &QuotaAmounts,
        growth: &QuotaAmounts,
    ) -> Result<(), QuotaExceeded> {
        for r in QuotaResource::ALL {
            let (Some(limit), want) = (self.limit(r), growth.get(r)) else {
                continue;
            };
            if want > 0 && used.get(r).saturating_add(want) > u64::from(limit) {
                return Err(QuotaExceeded {
                    resource: r,
                    requested: want,
                    used: used.get(r),
                    limit: u64::from(limit),
                });
            }
        }
        Ok(())
    }
}

/// One quota of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaResource {
    Instances,
    Vcpus,
    MemoryMiB,
    VolumeGiB,
    Volumes,
    Addresses,
    SecurityGroups,
    KeyPairs,
    Networks,
    Images,
    Snapshots,
}

impl QuotaResource {
    pub const ALL: [QuotaResource; 11] = [
        QuotaResource::Instances,
        QuotaResource::Vcpus,
        QuotaResource::MemoryMiB,
        QuotaResource::VolumeGiB,
        QuotaResource::Volumes,
        QuotaResource::Addresses,
        QuotaResource::SecurityGroups,
        QuotaResource::KeyPairs,
        QuotaResource::Networks,
        QuotaResource::Images,
        QuotaResource::Snapshots,
    ];

    /// The resources whose only amount is their number, by the plural of
    /// the kind they count.
    pub const COUNTS: [(&'static str, QuotaResource); 5] = [
        ("securitygroups", QuotaResource::SecurityGroups),
        ("keypairs", QuotaResource::KeyPairs),
        ("networks", QuotaResource::Networks),
        ("images", QuotaResource::Images),
        ("snapshots", QuotaResource::Snapshots),
    ];

    /// The count quota on objects of the kind named `plural`, if it has
    /// one of its own (instances, volumes and addresses count more than
    /// their number: see [`instance_amounts`] and its siblings).
    pub fn counting(plural: &str) -> Option<QuotaResource> {
        Self::COUNTS
            .iter()
            .find(|(p, _)| *p == plural)
            .map(|(_, r)| *r)
    }

    /// The field name in `spec.quotas`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaResource::Instances => "instances",
            QuotaResource::Vcpus => "vcpus",
            QuotaResource::MemoryMiB => "memoryMiB",
            QuotaResource::VolumeGiB => "volumeGiB",
            QuotaResource::Volumes => "volumes",
            QuotaResource::Addresses => "addresses",
            QuotaResource::SecurityGroups => "securityGroups",
            QuotaResource::KeyPairs => "keyPairs",
            QuotaResource::Networks => "networks",
            QuotaResource::Images => "images",
            QuotaResource::Snapshots => "snapshots",
        }
    }
}

impl std::fmt::Display for QuotaResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A growth refused by a quota: what was asked, what is used, the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exceeded quota {resource}: requested {requested}, used {used}, limit {limit}")]
pub struct QuotaExceeded {
    pub resource: QuotaResource,
    pub requested: u64,
    pub used: u64,
    pub limit: u64,
}

/// Amounts of every quota resource, for arithmetic (absent = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaAmounts {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub volume_gib: u64,
    pub volumes: u64,
    pub addresses: u64,
    pub security_groups: u64,
    pub key_pairs: u64,
    pub networks: u64,
    pub images: u64,
    pub snapshots: u64,
}

impl QuotaAmounts {
    pub fn get(&self, r: QuotaResource) -> u64 {
        quota_field!(r, self)
    }

    /// One of `r`, nothing else.
    pub fn one(r: QuotaResource) -> QuotaAmounts {
        let mut out = QuotaAmounts::default();
        out.set(r, 1);
        out
    }

    fn set(&mut self, r: QuotaResource, v: u64) {
        *quota_field!(r, &mut self) = v;
    }

    fn zip(self, other: QuotaAmounts, f: impl Fn(u64, u64) -> u64) -> QuotaAmounts {
        let mut out = QuotaAmounts::default();
        for r in QuotaResource::ALL {
            out.set(r, f(self.get(r), other.get(r)));
        }
        out
    }

    pub fn saturating_add(self, other: QuotaAmounts) -> QuotaAmounts {
        self.zip(other, u64::saturating_add)
    }

    /// Per resource, how much `self` exceeds `old` (never negative).
    pub fn growth_over(self, old: QuotaAmounts) -> QuotaAmounts {
        self.zip(old, u64::saturating_sub)
    }

    pub fn max(self, other: QuotaAmounts) -> QuotaAmounts {
        self.zip(other, u64::max)
    }

    /// True when `self` is at least `other` in every resource.
    pub fn covers(&self, other: &QuotaAmounts) -> bool {
        QuotaResource::ALL
            .iter()
            .all(|r| self.get(*r) >= other.get(*r))
    }

    pub fn is_zero(&self) -> bool {
        *self == QuotaAmounts::default()
    }

    /// Absent fields read as 0.
    pub fn from_resources(r: &ProjectResources) -> QuotaAmounts {
        let mut out = QuotaAmounts::default();
        for q in QuotaResource::ALL {
            out.set(q, r.limit(q).map(u64::from).unwrap_or(0));
        }
        out
    }

    /// The non-zero amounts (saturating at `u32::MAX`): zero is absent, so
    /// a project whose usage went back to nothing stores what it started
    /// with.
    pub fn to_resources(&self) -> ProjectResources {
        let c = |v: u64| (v > 0).then(|| u32::try_from(v).unwrap_or(u32::MAX));
        ProjectResources {
            instances: c(self.instances),
            vcpus: c(self.vcpus),
            memory_mib: c(self.memory_mib),
            volume_gib: c(self.volume_gib),
            volumes: c(self.volumes),
            addresses: c(self.addresses),
            security_groups: c(self.security_groups),
            key_pairs: c(self.key_pairs),
            networks: c(self.networks),
            images: c(self.images),
            snapshots: c(self.snapshots),
        }
    }
}

/// What one instance counts: itself, and its vCPUs and memory — explicit
/// `cpus`/`memoryMiB` win over its type's (`itype`, when it exists; an
/// unknown type counts no vCPUs or memory until it appears, since
/// references are checked for syntax only).
pub fn instance_amounts(
    spec: &super::InstanceSpec,
    itype: Option<&super::InstanceTypeSpec>,
) -> QuotaAmounts {
    QuotaAmounts {
        instances: 1,
        vcpus: u64::from(spec.cpus.or(itype.map(|t| t.vcpus)).unwrap_or(0)),
        memory_mib: u64::from(spec.memory_mib.or(itype.map(|t| t.memory_mib)).unwrap_or(0)),
        ..Default::default()
    }
}

/// What one volume of `size_gib` counts.
pub fn volume_amounts(size_gib: u32) -> QuotaAmounts {
    QuotaAmounts {
        volumes: 1,
        volume_gib: u64::from(size_gib),
        ..Default::default()
    }
}

/// What one floating address counts.
pub fn address_amounts() -> QuotaAmounts {
    QuotaAmounts {
        addresses: 1,
        ..Default::default()
    }
}

/// A charge made at admission for an object not yet written (or not yet
/// grown): counted in `status.usage` until the object is seen holding it,
/// or until it expires (the write failed or its writer crashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaCharge {
    /// `<plural>/<name>` of the object charged for.
    pub object: String,
    /// What the object holds once written.
    pub amounts: ProjectResources,
    /// When the charge stops counting unless the object holds it.
    pub expires: DateTime<Utc>,
}

/// Desired state of a project.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Limits; absent fields are unlimited, except the count quotas of
    /// [`DEFAULT_COUNT_QUOTAS`], which default.
    #[serde(default, skip_serializing_if = "ProjectResources::is_empty")]
    pub quotas: ProjectResources,
}

/// Observed state of a project.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectStatus {
    /// Current consumption, charged at admission and recomputed from
    /// what exists by the quota controller.
    #[serde(default, skip_serializing_if = "ProjectResources::is_empty")]
    pub usage: ProjectResources,
    /// Charges for writes admitted but not yet seen (see [`QuotaCharge`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_charges: Vec<QuotaCharge>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

impl Validate for Project {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        check_description(
            &mut errs,
            "spec.description",
            self.spec.description.as_deref(),
        );
        errs
    }
}

impl crate::HostRefs for Project {}

/// The count quotas every project has unless its own spec sets them
/// (Nova and Neutron give every project default quotas the same way):
/// each object may be up to the store's object size, so the number of
/// them a tenant may create bounds what it can make the server hold.
/// Raise them per project by setting the field.
pub const DEFAULT_COUNT_QUOTAS: [(QuotaResource, u32); 5] = [
    (QuotaResource::SecurityGroups, 100),
    (QuotaResource::KeyPairs, 100),
    (QuotaResource::Networks, 100),
    (QuotaResource::Images, 100),
    (QuotaResource::Snapshots, 1000),
];

impl Defaults for Project {
    /// The count quotas the spec leaves out get [`DEFAULT_COUNT_QUOTAS`].
    fn apply_defaults(&mut self) {
        for (r, v) in DEFAULT_COUNT_QUOTAS {
            let limit = quota_field!(r, &mut self.spec.quotas);
            limit.get_or_insert(v);
        }
    }
}

// Everything may change.
impl_validate_update!(Project);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::{InstanceSpec, InstanceTypeSpec, Resource};

    #[test]
    fn round_trip_and_rules() {
        let p: Project = round_trip_kind(
            r#"
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
        assert_valid(&p);

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

    #[test]
    fn quota_growth_is_checked_only_where_it_grows() {
        let limits = ProjectResources {
            instances: Some(2),
            vcpus: Some(4),
            ..Default::default()
        };
        let used = QuotaAmounts {
            instances: 1,
            vcpus: 3,
            memory_mib: 1 << 40,
            ..Default::default()
        };
        let tiny = InstanceTypeSpec {
            vcpus: 1,
            memory_mib: 512,
            root_disk_gib: 1,
            ..Default::default()
        };
        let one = instance_amounts(&InstanceSpec::default(), Some(&tiny));
        assert_eq!((one.instances, one.vcpus, one.memory_mib), (1, 1, 512));
        assert_eq!(limits.check_growth(&used, &one), Ok(()));
        let big = instance_amounts(
            &InstanceSpec {
                cpus: Some(2),
                memory_mib: Some(64),
                ..Default::default()
            },
            Some(&tiny),
        );
        let err = limits.check_growth(&used, &big).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exceeded quota vcpus: requested 2, used 3, limit 4"
        );
        // Shrinking or unlimited resources never fail, even when over.
        let over = QuotaAmounts {
            vcpus: 9,
            ..Default::default()
        };
        let mem_only = QuotaAmounts {
            memory_mib: 10,
            ..Default::default()
        };
        assert_eq!(limits.check_growth(&over, &mem_only), Ok(()));
        assert_eq!(big.growth_over(one).instances, 0);
        assert_eq!(big.growth_over(one).vcpus, 1);
        assert!(big.max(one).covers(&one));
        assert_eq!(
            QuotaAmounts::from_resources(&used.to_resources()),
            QuotaAmounts {
                memory_mib: u64::from(u32::MAX),
                ..used
            }
        );
    }
}
