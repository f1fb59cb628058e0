//! Node: one hypervisor host, registered by its agent. Cluster-scoped.
//! Labels (e.g. the zone) live in `metadata.labels`; taints and
//! `unschedulable` steer the scheduler.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_zero_i64};
use crate::validate::{
    check_opt_ref, header, impl_validate_update, index, is_label_value, is_qualified_name, join,
    NameRule, LABEL_VALUE_MSG, QUALIFIED_NAME_MSG,
};
use crate::{Condition, Defaults, FieldErrors, Validate};

crate::resource!(
    /// A hypervisor host running the Corral agent.
    Node,
    NodeSpec,
    NodeStatus,
    "nodes",
    Cluster
);

impl Node {
    /// Condition type: the agent is heartbeating and the host is usable.
    pub const CONDITION_READY: &'static str = "Ready";
    /// Label naming a node's zone when `spec.zone` is not set.
    pub const ZONE_LABEL: &'static str = "topology.corral/zone";
    /// The zone of a node that names none: every cluster has at least this
    /// one (EC2's region `corral-1`, zone `a`).
    pub const DEFAULT_ZONE: &'static str = "corral-1a";

    /// The availability zone this node is in: `spec.zone`, else the
    /// [`Node::ZONE_LABEL`] label, else [`Node::DEFAULT_ZONE`]. The one
    /// rule the scheduler and the EC2 façade's zone list both follow.
    pub fn zone(&self) -> &str {
        self.spec
            .zone
            .as_deref()
            .or_else(|| {
                self.metadata
                    .labels
                    .get(Self::ZONE_LABEL)
                    .map(String::as_str)
            })
            .unwrap_or(Self::DEFAULT_ZONE)
    }
}

/// What a taint does to instances that do not tolerate it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum TaintEffect {
    /// New instances are not placed here.
    #[default]
    NoSchedule,
    /// The scheduler avoids this node when it can.
    PreferNoSchedule,
    /// New instances are not placed here and running ones are moved away.
    NoExecute,
}

/// A mark on a node that repels instances without a matching toleration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// Qualified name, e.g. `corral.dev/maintenance`.
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: TaintEffect,
}

/// How a toleration's key/value is compared with a taint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    /// Key and value must both match.
    #[default]
    Equal,
    /// The key must match (any value); an empty key matches every taint.
    Exists,
}

/// Lets an instance be placed on (or stay on) nodes with a matching taint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// Taint key to match; empty with `operator: Exists` matches all taints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    /// Taint value to match (only with `operator: Equal`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Effect to match; absent matches every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration lets an instance ignore `taint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        }
    }
}

/// Desired state of a node, set by administrators.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordon: no new instances are scheduled here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Availability zone this host belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Amounts of compute a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeResources {
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: u64,
    #[serde(default, rename = "diskGiB")]
    pub disk_gib: u64,
}

/// The hypervisor driver a node's agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorType {
    /// QEMU with KVM acceleration.
    #[default]
    Kvm,
    /// QEMU emulation without KVM.
    Qemu,
    /// libvirt's test driver (simulated hosts).
    Test,
}

/// Facts about the hypervisor, reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HypervisorInfo {
    #[serde(rename = "type", default)]
    pub type_: HypervisorType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub libvirt_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// libvirt domain virtualisation type, e.g. `hvm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virt_type: Option<String>,
}

/// Observed state of a node, written by its agent and the node-lifecycle
/// controller.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// Total resources of the host.
    #[serde(default)]
    pub capacity: NodeResources,
    /// What instances may use (capacity minus reservations).
    #[serde(default)]
    pub allocatable: NodeResources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Last time the agent reported in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorInfo>,
    /// Address other hosts and the server reach the agent at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The node's VXLAN tunnel endpoint: the underlay IPv4 address other
    /// nodes send its overlay networks' traffic to (the agent's
    /// `--vtep`). Without one the node runs overlay networks alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
}

pub(crate) fn check_taint_key_value(errs: &mut FieldErrors, path: &str, key: &str, value: &str) {
    if !is_qualified_name(key) {
        errs.push(join(path, "key"), QUALIFIED_NAME_MSG);
    }
    if !is_label_value(value) {
        errs.push(join(path, "value"), LABEL_VALUE_MSG);
    }
}

/// Validates a list of tolerations at `path` (`spec.tolerations`).
pub(crate) fn check_tolerations(errs: &mut FieldErrors, path: &str, tolerations: &[Toleration]) {
    for (i, t) in tolerations.iter().enumerate() {
        let p = index(path, i);
        match t.operator {
            TolerationOperator::Exists => {
                if !t.key.is_empty() && !is_qualified_name(&t.key) {
                    errs.push(join(&p, "key"), QUALIFIED_NAME_MSG);
                }
                if !t.value.is_empty() {
                    errs.push(join(&p, "value"), "must be empty when operator is Exists");
                }
            }
            TolerationOperator::Equal => {
                if t.key.is_empty() {
                    errs.push(join(&p, "key"), "required when operator is Equal");
                } else {
                    check_taint_key_value(errs, &p, &t.key, &t.value);
                }
            }
        }
    }
}

impl Validate for Node {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        check_opt_ref(&mut errs, "spec.zone", spec.zone.as_ref());
        for (i, t) in spec.taints.iter().enumerate() {
            let p = index("spec.taints", i);
            if t.key.is_empty() {
                errs.push(join(&p, "key"), "required");
            } else {
                check_taint_key_value(&mut errs, &p, &t.key, &t.value);
            }
            if spec.taints[..i]
                .iter()
                .any(|o| o.key == t.key && o.effect == t.effect)
            {
                errs.push(
                    p,
                    format!("duplicate taint {:?} with effect {:?}", t.key, t.effect),
                );
            }
        }
        errs
    }
}

impl crate::HostRefs for Node {}

impl Defaults for Node {}

// Everything may change.
impl_validate_update!(Node);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;

    const YAML: &str = r#"
apiVersion: corral/v1
kind: Node
metadata:
  name: host-1
  labels:
    corral.dev/zone: zone-a
spec:
  unschedulable: true
  taints:
    - key: corral.dev/maintenance
      value: "true"
      effect: NoSchedule
  zone: zone-a
status:
  capacity: {vcpus: 16, memoryMiB: 65536, diskGiB: 2000}
  allocatable: {vcpus: 15, memoryMiB: 63488, diskGiB: 1900}
  conditions:
    - type: Ready
      status: "True"
      lastTransitionTime: 2024-05-01T10:00:00Z
  heartbeatTime: 2024-05-01T10:00:30Z
  hypervisor:
    type: kvm
    libvirtVersion: "9.0.0"
    hostname: host-1
    virtType: hvm
  address: 192.0.2.10
"#;

    #[test]
    fn round_trips_and_validates() {
        let n: Node = round_trip(YAML);
        let st = n.status.as_ref().unwrap();
        assert_eq!(st.capacity.memory_mib, 65536);
        assert_eq!(st.hypervisor.as_ref().unwrap().type_, HypervisorType::Kvm);
        assert_valid(&n);
    }

    #[test]
    fn taint_and_zone_rules() {
        let mut n: Node = yaml_serde::from_str(YAML).unwrap();
        n.spec.zone = Some("Zone A".into());
        n.spec.taints = vec![
            Taint {
                key: String::new(),
                value: String::new(),
                effect: TaintEffect::NoSchedule,
            },
            Taint {
                key: "bad key".into(),
                value: "-x".into(),
                effect: TaintEffect::NoExecute,
            },
            Taint {
                key: "a".into(),
                value: String::new(),
                effect: TaintEffect::NoExecute,
            },
            Taint {
                key: "a".into(),
                value: "other".into(),
                effect: TaintEffect::NoExecute,
            },
        ];
        assert_errors(
            &n.validate(),
            &[
                &format!("spec.zone: {DNS_LABEL_MSG}"),
                "spec.taints[0].key: required",
                &format!("spec.taints[1].key: {QUALIFIED_NAME_MSG}"),
                &format!("spec.taints[1].value: {LABEL_VALUE_MSG}"),
                "spec.taints[3]: duplicate taint \"a\" with effect NoExecute",
            ],
        );
    }

    #[test]
    fn toleration_matching() {
        let taint = Taint {
            key: "k".into(),
            value: "v".into(),
            effect: TaintEffect::NoSchedule,
        };
        let eq = |k: &str, v: &str, e: Option<TaintEffect>| Toleration {
            key: k.into(),
            operator: TolerationOperator::Equal,
            value: v.into(),
            effect: e,
        };
        assert!(eq("k", "v", None).tolerates(&taint));
        assert!(eq("k", "v", Some(TaintEffect::NoSchedule)).tolerates(&taint));
        assert!(!eq("k", "v", Some(TaintEffect::NoExecute)).tolerates(&taint));
        assert!(!eq("k", "w", None).tolerates(&taint));
        let exists = |k: &str| Toleration {
            key: k.into(),
            operator: TolerationOperator::Exists,
            ..Default::default()
        };
        assert!(exists("").tolerates(&taint));
        assert!(exists("k").tolerates(&taint));
        assert!(!exists("j").tolerates(&taint));
    }

    #[test]
    fn toleration_rules() {
        let mut errs = FieldErrors::default();
        check_tolerations(
            &mut errs,
            "spec.tolerations",
            &[
                Toleration {
                    operator: TolerationOperator::Exists,
                    value: "x".into(),
                    ..Default::default()
                },
                Toleration::default(),
                Toleration {
                    key: "ok".into(),
                    value: "bad value".into(),
                    ..Default::default()
                },
            ],
        );
        assert_errors(
            &errs,
            &[
                "spec.tolerations[0].value: must be empty when operator is Exists",
                "spec.tolerations[1].key: required when operator is Equal",
                &format!("spec.tolerations[2].value: {LABEL_VALUE_MSG}"),
            ],
        );
    }
}
