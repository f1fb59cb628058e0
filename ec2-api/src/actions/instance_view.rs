//! How an Instance looks through EC2: its state from the observed phase,
//! its reservation, the names of what it refers to ([`Lookup`]) and its
//! values for the DescribeInstances filters. Its XML is `instance_xml`'s.

use std::collections::HashMap;

use corral_api_types::ec2::{
    instance_id, network_interface_id, reservation_id, subnet_id, CLIENT_TOKEN_ANNOTATION,
    LAUNCH_INDEX_ANNOTATION, RESERVATION_ANNOTATION, TERMINATED_FINALIZER,
};
use corral_api_types::{
    Image, Instance, InstancePhase, InstanceType, KeyPair, Network, Node, PowerState,
    SecurityGroup, Volume,
};

use super::{created, Ctx};
use crate::error::Result;
use crate::objects::{ec2_name, list_all, Tagged};

pub const PENDING: (i32, &str) = (0, "pending");
pub const RUNNING: (i32, &str) = (16, "running");
pub const SHUTTING_DOWN: (i32, &str) = (32, "shutting-down");
pub const TERMINATED: (i32, &str) = (48, "terminated");
pub const STOPPING: (i32, &str) = (64, "stopping");
pub const STOPPED: (i32, &str) = (80, "stopped");

/// The EC2 state of an instance, from its observed phase (no status yet:
/// pending) and its requested power state. A deleted instance is
/// shutting-down while controllers still hold finalizers, then terminated
/// while only the façade's visibility finalizer keeps it.
pub fn state(i: &Instance) -> (i32, &'static str) {
    if i.metadata.deletion_timestamp.is_some() {
        return if i
            .metadata
            .finalizers
            .iter()
            .all(|f| f == TERMINATED_FINALIZER)
        {
            TERMINATED
        } else {
            SHUTTING_DOWN
        };
    }
    let want_running = i.spec.power_state == PowerState::Running;
    match i.status.as_ref().map(|s| s.phase) {
        None
        | Some(InstancePhase::Pending | InstancePhase::Scheduled | InstancePhase::Provisioning) => {
            if want_running {
                PENDING
            } else {
                STOPPED
            }
        }
        Some(InstancePhase::Running) => {
            if want_running {
                RUNNING
            } else {
                STOPPING
            }
        }
        Some(InstancePhase::Stopping) => STOPPING,
        Some(InstancePhase::Stopped | InstancePhase::Paused | InstancePhase::Suspended) => {
            if want_running {
                PENDING
            } else {
                STOPPED
            }
        }
        Some(InstancePhase::Terminating) => SHUTTING_DOWN,
        Some(InstancePhase::Terminated) => TERMINATED,
        Some(InstancePhase::Failed) => STOPPED,
        Some(InstancePhase::Unknown) => {
            if want_running {
                RUNNING
            } else {
                STOPPED
            }
        }
    }
}

pub fn reservation(i: &Instance) -> String {
    i.metadata
        .annotations
        .get(RESERVATION_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| reservation_id(&i.metadata.uid))
}

/// Names of the project's related objects, by resource name, loaded once
/// per request. Everything an instance's XML depends on besides the
/// instance itself and the account: two equal Lookups render an instance
/// alike (DescribeInstances reuses rendered XML while it is unchanged).
#[derive(Default, Clone, PartialEq)]
pub struct Lookup {
    pub groups: HashMap<String, (String, String)>,
    pub networks: HashMap<String, (String, String, String)>,
    pub images: HashMap<String, (String, String)>,
    /// Image name -> the root device name EC2 shows (see
    /// `images::root_device_name`).
    pub root_devices: HashMap<String, String>,
    pub keys: HashMap<String, String>,
    pub volumes: HashMap<String, String>,
    pub vcpus: HashMap<String, u32>,
    /// Node name -> its zone ([`Node::zone`]).
    pub node_zones: HashMap<String, String>,
    /// The zone of an instance on no node yet that asked for none.
    pub zone: String,
}

impl Lookup {
    /// The root device name EC2 shows for `i`: its image's, `/dev/vda`
    /// when booted from a volume.
    pub fn root_device_name(&self, i: &Instance) -> &str {
        i.spec
            .image
            .as_ref()
            .and_then(|n| self.root_devices.get(n))
            .map(String::as_str)
            .unwrap_or(super::images::DEFAULT_ROOT_DEVICE)
    }

    pub async fn load(ctx: &Ctx<'_>) -> Result<Lookup> {
        let p = ctx.project();
        let mut l = Lookup::default();
        for n in list_all::<Node>(ctx.store, "").await? {
            let zone = n.zone().to_string();
            l.node_zones.insert(n.metadata.name, zone);
        }
        l.zone = l
            .node_zones
            .values()
            .min()
            .cloned()
            .unwrap_or_else(|| Node::DEFAULT_ZONE.to_string());
        for g in list_all::<SecurityGroup>(ctx.store, p).await? {
            let v = (g.ec2_id(), ec2_name(&g.metadata).to_string());
            l.groups.insert(g.metadata.name, v);
        }
        for n in list_all::<Network>(ctx.store, p).await? {
            let v = (n.ec2_id(), subnet_id(&n.metadata.uid), n.spec.cidr.clone());
            l.networks.insert(n.metadata.name, v);
        }
        for i in list_all::<Image>(ctx.store, p).await? {
            let arch = serde_json::to_value(i.spec.architecture)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let root = super::images::root_device_name(&i).to_string();
            l.root_devices.insert(i.metadata.name.clone(), root);
            l.images.insert(i.metadata.name.clone(), (i.ec2_id(), arch));
        }
        for k in list_all::<KeyPair>(ctx.store, p).await? {
            let v = ec2_name(&k.metadata).to_string();
            l.keys.insert(k.metadata.name, v);
        }
        for v in list_all::<Volume>(ctx.store, p).await? {
            let id = v.ec2_id();
            l.volumes.insert(v.metadata.name, id);
        }
        for t in list_all::<InstanceType>(ctx.store, "").await? {
            l.vcpus.insert(t.metadata.name, t.spec.vcpus);
        }
        Ok(l)
    }

    /// The zone an instance asked for, else the one its node is in.
    pub fn zone_of(&self, i: &Instance) -> String {
        let node = i.status.as_ref().and_then(|s| s.node_name.as_ref());
        i.spec
            .availability_zone
            .clone()
            .or_else(|| node.and_then(|n| self.node_zones.get(n)).cloned())
            .unwrap_or_else(|| self.zone.clone())
    }

    /// The (image id, architecture) of the image an instance booted.
    pub fn image(&self, i: &Instance) -> Option<&(String, String)> {
        i.spec.image.as_ref().and_then(|n| self.images.get(n))
    }

    /// The EC2 name of an instance's key pair.
    pub fn key_name(&self, i: &Instance) -> Option<String> {
        i.spec
            .key_name
            .as_ref()
            .map(|k| self.keys.get(k).cloned().unwrap_or(k.clone()))
    }

    /// (group id, group name) of each of `names` (a group gone keeps its
    /// name, with no id).
    pub fn group_items(&self, names: &[String]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| {
                self.groups
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| (String::new(), n.clone()))
            })
            .collect()
    }

    /// Values of the DescribeInstances filters for one instance.
    pub fn field(&self, i: &Instance, f: &str) -> Vec<String> {
        let (code, name) = state(i);
        let nic0 = i.spec.nics.first();
        let net0 = nic0.and_then(|n| self.networks.get(&n.network));
        let groups: Vec<&String> = i
            .spec
            .nics
            .iter()
            .flat_map(|n| &n.security_groups)
            .collect();
        let ips = || -> Vec<String> {
            i.status
                .iter()
                .flat_map(|s| &s.addresses)
                .map(|a| a.ip.clone())
                .collect()
        };
        let one = |s: String| vec![s];
        match f {
            "instance-id" => one(instance_id(&i.metadata.uid)),
            "instance-state-name" => one(name.to_string()),
            "instance-state-code" => one(code.to_string()),
            "instance-type" => i.spec.instance_type.clone().into_iter().collect(),
            "image-id" => self.image(i).map(|v| v.0.clone()).into_iter().collect(),
            "key-name" => self.key_name(i).into_iter().collect(),
            "availability-zone" => one(self.zone_of(i)),
            "private-ip-address" | "network-interface.addresses.private-ip-address" => ips(),
            "ip-address" => i
                .status
                .iter()
                .flat_map(|s| &s.addresses)
                .filter_map(|a| a.floating_ip.clone())
                .collect(),
            "subnet-id" => net0.map(|n| n.1.clone()).into_iter().collect(),
            "vpc-id" => net0.map(|n| n.0.clone()).into_iter().collect(),
            "reservation-id" => one(reservation(i)),
            "launch-time" => created(&i.metadata).into_iter().collect(),
            "client-token" => i
                .metadata
                .annotations
                .get(CLIENT_TOKEN_ANNOTATION)
                .cloned()
                .into_iter()
                .collect(),
            "instance.group-id" | "group-id" => groups
                .iter()
                .filter_map(|g| self.groups.get(*g).map(|v| v.0.clone()))
                .collect(),
            "instance.group-name" | "group-name" => groups
                .iter()
                .map(|g| {
                    self.groups
                        .get(*g)
                        .map(|v| v.1.clone())
                        .unwrap_or((*g).clone())
                })
                .collect(),
            "network-interface.network-interface-id" => (0..i.spec.nics.len())
                .map(|n| network_interface_id(&i.metadata.uid, n))
                .collect(),
            "architecture" => self.image(i).map(|v| v.1.clone()).into_iter().collect(),
            "root-device-type" => one(root_device_type(i).to_string()),
            "root-device-name" => one(self.root_device_name(i).to_string()),
            "owner-id" => vec![],
            "launch-index" => one(launch_index(i)),
            _ => vec![],
        }
    }
}

pub const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "instance-state-name",
    "instance-state-code",
    "instance-type",
    "image-id",
    "key-name",
    "availability-zone",
    "private-ip-address",
    "ip-address",
    "subnet-id",
    "vpc-id",
    "reservation-id",
    "launch-time",
    "client-token",
    "instance.group-id",
    "instance.group-name",
    "group-id",
    "group-name",
    "network-interface.network-interface-id",
    "network-interface.addresses.private-ip-address",
    "architecture",
    "root-device-type",
    "root-device-name",
    "owner-id",
    "launch-index",
];

pub fn root_device_type(i: &Instance) -> &'static str {
    if i.spec.boot_volume.is_some() {
        "ebs"
    } else {
        "instance-store"
    }
}

pub fn launch_index(i: &Instance) -> String {
    i.metadata
        .annotations
        .get(LAUNCH_INDEX_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::{InstanceSpec, Resource};

    #[test]
    fn an_instance_shows_its_images_root_device_name() {
        let mut l = Lookup::default();
        l.root_devices.insert("trio".into(), "/dev/sda1".into());
        let mut i = Instance::new("p", "a", InstanceSpec::default());
        i.spec.image = Some("trio".into());
        assert_eq!(l.root_device_name(&i), "/dev/sda1");
        i.spec.image = Some("other".into());
        assert_eq!(l.root_device_name(&i), "/dev/vda");
        i.spec.image = None;
        i.spec.boot_volume = Some("boot".into());
        assert_eq!(l.root_device_name(&i), "/dev/vda");
    }
}
