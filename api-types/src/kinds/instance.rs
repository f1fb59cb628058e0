//! Instance: a virtual machine — the durable intent. The scheduler binds it
//! to a node; that node's agent makes libvirt match it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::node::{check_tolerations, Toleration};
use super::{is_false, is_zero_i64};
use crate::net::{is_unicast_mac, parse_ipv4, parse_mac};
use crate::validate::{
    check_labels, check_opt_ref, check_range, check_ref, check_tags, header, impl_validate_update,
    index, is_dns_subdomain, join, NameRule, DNS_SUBDOMAIN_MSG,
};
use crate::{Condition, Defaults, FieldErrors, Validate};

#[path = "instance_metadata_options.rs"]
mod metadata_options;
use metadata_options::check_metadata_options;
pub use metadata_options::{
    metadata_tag_key_refusal, HttpTokens, MetadataOptions, MetadataSwitch, HOP_LIMIT_RANGE,
};

crate::resource!(
    /// A virtual machine.
    Instance,
    InstanceSpec,
    InstanceStatus,
    "instances",
    Project
);

/// Instance type used when a spec names neither `instanceType` nor
/// `cpus`/`memoryMiB`.
pub const DEFAULT_INSTANCE_TYPE: &str = "m1.tiny";
/// NICs one instance may have: each gets a tap device named after the
/// instance and its NIC's one-digit index.
pub const MAX_NICS: usize = 10;
/// Largest `userData` accepted, in bytes (EC2's limit).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// Smallest and largest `cpus`.
pub const CPUS_RANGE: (u32, u32) = (1, 256);
/// Smallest and largest `memoryMiB`.
pub const MEMORY_MIB_RANGE: (u32, u32) = (64, 4_194_304);

impl Instance {
    /// Condition type: bound to a node.
    pub const CONDITION_SCHEDULED: &'static str = "Scheduled";
    /// Condition type: the domain and its disks exist on the node.
    pub const CONDITION_PROVISIONED: &'static str = "Provisioned";
    /// Condition type: running as requested.
    pub const CONDITION_READY: &'static str = "Ready";
    /// Condition type: what runs differs from the spec and is being corrected.
    pub const CONDITION_DRIFTED: &'static str = "Drifted";
    /// The instance controller's finalizer: held from creation until the
    /// node has destroyed the domain.
    pub const FINALIZER: &'static str = "corral/instance";

    /// Deleted, with its domain gone: it holds no node capacity, no
    /// address and no quota any more, even while another finalizer (EC2's
    /// visibility of terminated instances) keeps its record.
    pub fn is_terminated(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
            && !self
                .metadata
                .finalizers
                .iter()
                .any(|f| f == Self::FINALIZER)
    }

    /// The NICs, each with its position and the address observed for it:
    /// `spec.nics[i]` and `status.addresses[i]` are one NIC, and this is
    /// the one place that pairs them (an address is absent until IPAM
    /// gives one).
    pub fn nics(&self) -> impl Iterator<Item = NicView<'_>> {
        let addresses = self.status.as_ref().map(|s| s.addresses.as_slice());
        self.spec
            .nics
            .iter()
            .enumerate()
            .map(move |(index, spec)| NicView {
                index,
                spec,
                address: addresses.and_then(|a| a.get(index)),
            })
    }

    /// NIC `index`, when the spec has it.
    pub fn nic(&self, index: usize) -> Option<NicView<'_>> {
        self.nics().nth(index)
    }
}

/// One NIC of an instance: what was asked (`spec.nics[index]`) and what
/// was given (`status.addresses[index]`).
#[derive(Debug, Clone, Copy)]
pub struct NicView<'a> {
    pub index: usize,
    pub spec: &'a Nic,
    pub address: Option<&'a InstanceAddress>,
}

impl<'a> NicView<'a> {
    /// The private address, once IPAM gave one.
    pub fn ip(&self) -> Option<&'a str> {
        self.address
            .map(|a| a.ip.as_str())
            .filter(|ip| !ip.is_empty())
    }
}

/// The power state the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum PowerState {
    #[default]
    Running,
    /// Shut down; the instance keeps its node, disks and addresses.
    Stopped,
    /// Paused in memory (vCPUs halted).
    Paused,
    /// Memory saved to disk (managed save); resumes where it left off.
    Suspended,
}

/// Where an instance is in its life, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum InstancePhase {
    /// Accepted, not yet placed on a node.
    #[default]
    Pending,
    /// Bound to a node, not yet being built there.
    Scheduled,
    /// Disks, network and domain being created on the node.
    Provisioning,
    Running,
    Stopping,
    Stopped,
    Paused,
    Suspended,
    /// Being deleted: the node is destroying the domain.
    Terminating,
    /// Deleted and its domain gone; only the record remains (EC2 shows a
    /// terminated instance for an hour). It holds nothing.
    Terminated,
    /// Cannot run; see `message` and conditions.
    Failed,
    /// The node stopped reporting; the instance's real state is unknown.
    Unknown,
}

/// A volume attached to the instance as an extra disk.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeAttachment {
    /// Name of a Volume in the same project.
    pub volume: String,
    /// Guest device name, `vdb`..`vdz`; the next free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Delete the volume when the instance is deleted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delete_on_termination: bool,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nic {
    /// Name of a Network in the same project.
    pub network: String,
    /// Request this IPv4 address inside the network's CIDR; allocated
    /// automatically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<String>,
    /// Names of SecurityGroups applied to this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Unicast MAC address (`52:54:00:xx:xx:xx`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Desired state of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// Name of an InstanceType (flavor), e.g. `m1.small`. Either this or
    /// both `cpus` and `memoryMiB`; `m1.tiny` when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Virtual CPUs (1-256), instead of `instanceType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB (64-4194304), instead of `instanceType`.
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Name of the Image to boot from. Exactly one of `image` and
    /// `bootVolume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Name of a Volume to boot from (boot from volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<String>,
    /// Extra volumes to attach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeAttachment>,
    /// Network interfaces, in guest order (the first is `eth0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// Name of a KeyPair whose public key is injected into the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Data handed to the guest (cloud-init user-data), plain text, at most
    /// 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Zone to place the instance in; any zone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Requested power state: `Running` (default), `Stopped`, `Paused` or
    /// `Suspended`.
    #[serde(default)]
    pub power_state: PowerState,
    /// Refuse deletion until this is set back to false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_api_termination: bool,
    /// EC2-style tags (at most 50).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Only nodes carrying all these labels are eligible.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints this instance tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How the metadata service (169.254.169.254) answers this instance
    /// (EC2's instance metadata options); EC2's defaults when absent.
    #[serde(default, skip_serializing_if = "MetadataOptions::is_default")]
    pub metadata_options: MetadataOptions,
}

/// An address an interface actually has.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceAddress {
    pub network: String,
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Public (floating) address mapped to `ip`, from an Address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_ip: Option<String>,
}

/// Observed state of an instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatus {
    #[serde(default)]
    pub phase: InstancePhase,
    /// The node the instance is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<InstanceAddress>,
    /// EC2 id, `i-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// When the instance was first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<DateTime<Utc>>,
    /// `Scheduled`, `Provisioned`, `Ready`, `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
    /// Human-readable detail about the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether `s` is a data-disk device name: `vdb`..`vdz`.
pub fn is_data_device(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 3 && b[0] == b'v' && b[1] == b'd' && (b'b'..=b'z').contains(&b[2])
}

impl Validate for Instance {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        let errs_ref = &mut errs;

        // Size: an instance type, or cpus and memory.
        match &spec.instance_type {
            Some(t) => {
                if !is_dns_subdomain(t) {
                    errs_ref.push("spec.instanceType", DNS_SUBDOMAIN_MSG);
                }
                if spec.cpus.is_some() {
                    errs_ref.push(
                        "spec.cpus",
                        "must not be set together with spec.instanceType",
                    );
                }
                if spec.memory_mib.is_some() {
                    errs_ref.push(
                        "spec.memoryMiB",
                        "must not be set together with spec.instanceType",
                    );
                }
            }
            None => match (spec.cpus, spec.memory_mib) {
                (None, None) => errs_ref.push(
                    "spec.instanceType",
                    "required: set spec.instanceType, or both spec.cpus and spec.memoryMiB",
                ),
                (Some(_), None) => {
                    errs_ref.push("spec.memoryMiB", "required when spec.cpus is set")
                }
                (None, Some(_)) => {
                    errs_ref.push("spec.cpus", "required when spec.memoryMiB is set")
                }
                (Some(_), Some(_)) => {}
            },
        }
        if let Some(c) = spec.cpus {
            check_range(errs_ref, "spec.cpus", c, CPUS_RANGE.0, CPUS_RANGE.1);
        }
        if let Some(m) = spec.memory_mib {
            check_range(
                errs_ref,
                "spec.memoryMiB",
                m,
                MEMORY_MIB_RANGE.0,
                MEMORY_MIB_RANGE.1,
            );
        }

        // Boot source.
        match (&spec.image, &spec.boot_volume) {
            (None, None) => {
                errs_ref.push("spec.image", "required: set spec.image or spec.bootVolume")
            }
            (Some(_), Some(_)) => errs_ref.push(
                "spec.bootVolume",
                "must not be set together with spec.image",
            ),
            _ => {}
        }
        check_opt_ref(errs_ref, "spec.image", spec.image.as_ref());
        check_opt_ref(errs_ref, "spec.bootVolume", spec.boot_volume.as_ref());

        // Volumes.
        let mut devices = BTreeSet::new();
        let mut volumes = BTreeSet::new();
        for (i, v) in spec.volumes.iter().enumerate() {
            let p = index("spec.volumes", i);
            check_ref(errs_ref, &join(&p, "volume"), &v.volume);
            if !v.volume.is_empty() {
                if spec.boot_volume.as_deref() == Some(v.volume.as_str()) {
                    errs_ref.push(
                        join(&p, "volume"),
                        format!("{:?} is already the boot volume", v.volume),
                    );
                } else if !volumes.insert(v.volume.as_str()) {
                    errs_ref.push(join(&p, "volume"), format!("duplicate {:?}", v.volume));
                }
            }
            if let Some(d) = &v.device {
                if !is_data_device(d) {
                    errs_ref.push(
                        join(&p, "device"),
                        "must be a virtio disk name from vdb to vdz (vda is the boot disk)",
                    );
                } else if !devices.insert(d.as_str()) {
                    errs_ref.push(join(&p, "device"), format!("duplicate {d:?}"));
                }
            }
        }

        // NICs. Several NICs on one network are allowed.
        if spec.nics.len() > MAX_NICS {
            errs_ref.push(
                "spec.nics",
                format!(
                    "must have at most {MAX_NICS} entries (has {})",
                    spec.nics.len()
                ),
            );
        }
        let mut macs = BTreeSet::new();
        for (i, n) in spec.nics.iter().enumerate() {
            let p = index("spec.nics", i);
            check_ref(errs_ref, &join(&p, "network"), &n.network);
            if let Some(ip) = &n.fixed_ip {
                if parse_ipv4(ip).is_none() {
                    errs_ref.push(join(&p, "fixedIp"), "must be an IPv4 address like 10.0.0.5");
                }
            }
            if let Some(mac) = &n.mac {
                match parse_mac(mac) {
                    None => errs_ref.push(join(&p, "mac"), "must be a MAC address like 52:54:00:12:34:56"),
                    Some(m) if !is_unicast_mac(&m) => errs_ref.push(
                        join(&p, "mac"),
                        "must be a unicast MAC address (lowest bit of the first octet clear, not all zeros)",
                    ),
                    Some(m) => {
                        if !macs.insert(m) {
                            errs_ref.push(join(&p, "mac"), format!("duplicate {mac:?}"));
                        }
                    }
                }
            }
            let sgp = join(&p, "securityGroups");
            let mut seen = BTreeSet::new();
            for (j, sg) in n.security_groups.iter().enumerate() {
                check_ref(errs_ref, &index(&sgp, j), sg);
                if !seen.insert(sg.as_str()) {
                    errs_ref.push(index(&sgp, j), format!("duplicate {sg:?}"));
                }
            }
        }

        check_opt_ref(errs_ref, "spec.keyName", spec.key_name.as_ref());
        if let Some(ud) = &spec.user_data {
            if ud.len() > MAX_USER_DATA_BYTES {
                errs_ref.push(
                    "spec.userData",
                    format!(
                        "must be at most {MAX_USER_DATA_BYTES} bytes (is {})",
                        ud.len()
                    ),
                );
            }
        }
        check_opt_ref(
            errs_ref,
            "spec.availabilityZone",
            spec.availability_zone.as_ref(),
        );
        check_tags(errs_ref, "spec.tags", &spec.tags);
        check_labels(errs_ref, "spec.nodeSelector", &spec.node_selector);
        check_tolerations(errs_ref, "spec.tolerations", &spec.tolerations);
        check_metadata_options(errs_ref, spec);
        errs
    }
}

impl crate::HostRefs for Instance {}

impl Defaults for Instance {
    /// `instanceType: m1.tiny` when no size is given; MACs lower-cased;
    /// each volume without a device gets the next free `vdX`.
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        if spec.instance_type.is_none() && spec.cpus.is_none() && spec.memory_mib.is_none() {
            spec.instance_type = Some(DEFAULT_INSTANCE_TYPE.to_string());
        }
        for nic in &mut spec.nics {
            if let Some(mac) = &mut nic.mac {
                mac.make_ascii_lowercase();
            }
        }
        let mut used: BTreeSet<String> = spec
            .volumes
            .iter()
            .filter_map(|v| v.device.clone())
            .collect();
        let mut free = (b'b'..=b'z').map(|c| format!("vd{}", c as char));
        for v in &mut spec.volumes {
            if v.device.is_none() {
                if let Some(d) = free.by_ref().find(|d| !used.contains(d)) {
                    used.insert(d.clone());
                    v.device = Some(d);
                }
            }
        }
    }
}

// Boot source and zone are fixed at creation.
impl_validate_update!(
    Instance,
    "spec.image" => image,
    "spec.bootVolume" => boot_volume,
    "spec.availabilityZone" => availability_zone,
);

#[cfg(test)]
#[path = "instance_tests.rs"]
mod tests;
