//! How an Instance looks through EC2: its state from the observed phase,
//! its reservation, and the `<item>` DescribeInstances/RunInstances write.

use std::collections::HashMap;
use std::sync::Arc;

use corral_api_types::ec2::{
    instance_id, network_interface_id, reservation_id, subnet_id, CLIENT_TOKEN_ANNOTATION,
    LAUNCH_INDEX_ANNOTATION, RESERVATION_ANNOTATION, TERMINATED_FINALIZER,
};
use corral_api_types::{
    Image, Instance, InstancePhase, InstanceType, KeyPair, Network, PowerState, SecurityGroup,
    Volume,
};

use super::{ts, Ctx};
use crate::decoded::DecodedInstance;
use crate::error::Result;
use crate::objects::{ec2_name, list_all, Tagged};
use crate::xml::Xml;

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
    pub keys: HashMap<String, String>,
    pub volumes: HashMap<String, String>,
    pub vcpus: HashMap<String, u32>,
    pub zone: String,
}

impl Lookup {
    pub async fn load(ctx: &Ctx<'_>) -> Result<Lookup> {
        let p = ctx.project();
        let mut l = Lookup {
            zone: ctx.zones().await?.into_iter().next().unwrap_or_default(),
            ..Default::default()
        };
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

    pub fn zone_of(&self, i: &Instance) -> String {
        i.spec
            .availability_zone
            .clone()
            .unwrap_or_else(|| self.zone.clone())
    }

    fn group_items(&self, names: &[String]) -> Vec<(String, String)> {
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
            "image-id" => i
                .spec
                .image
                .as_ref()
                .and_then(|n| self.images.get(n))
                .map(|v| v.0.clone())
                .into_iter()
                .collect(),
            "key-name" => i
                .spec
                .key_name
                .as_ref()
                .map(|k| self.keys.get(k).cloned().unwrap_or(k.clone()))
                .into_iter()
                .collect(),
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
            "launch-time" => i
                .metadata
                .creation_timestamp
                .as_ref()
                .map(ts)
                .into_iter()
                .collect(),
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
            "architecture" => i
                .spec
                .image
                .as_ref()
                .and_then(|n| self.images.get(n))
                .map(|v| v.1.clone())
                .into_iter()
                .collect(),
            "root-device-type" => one(root_device_type(i).to_string()),
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
    "owner-id",
    "launch-index",
];

/// (device name, volume id, deleteOnTermination) of each EBS-style disk.
pub fn block_devices(i: &Instance, l: &Lookup) -> Vec<(String, String, bool)> {
    let mut devices: Vec<(String, String, bool)> = Vec::new();
    if let Some(b) = &i.spec.boot_volume {
        devices.push((
            "/dev/vda".into(),
            l.volumes.get(b).cloned().unwrap_or_default(),
            false,
        ));
    }
    for v in &i.spec.volumes {
        let dev = format!("/dev/{}", v.device.clone().unwrap_or_default());
        devices.push((
            dev,
            l.volumes.get(&v.volume).cloned().unwrap_or_default(),
            v.delete_on_termination,
        ));
    }
    devices
}

fn root_device_type(i: &Instance) -> &'static str {
    if i.spec.boot_volume.is_some() {
        "ebs"
    } else {
        "instance-store"
    }
}

fn launch_index(i: &Instance) -> String {
    i.metadata
        .annotations
        .get(LAUNCH_INDEX_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "0".into())
}

/// One `<item>` of an instancesSet.
pub fn write_instance(x: &mut Xml, i: &Instance, l: &Lookup, account: &str) {
    let (code, name) = state(i);
    let uid = &i.metadata.uid;
    let status = i.status.as_ref();
    let addr0 = status.and_then(|s| s.addresses.first());
    let nic0 = i.spec.nics.first();
    let net0 = nic0.and_then(|n| l.networks.get(&n.network));
    let groups = l.group_items(
        &i.spec
            .nics
            .iter()
            .flat_map(|n| n.security_groups.clone())
            .collect::<Vec<_>>(),
    );
    let image = i.spec.image.as_ref().and_then(|n| l.images.get(n));
    x.leaf("instanceId", instance_id(uid))
        .opt("imageId", image.map(|v| &v.0))
        .el("instanceState", |x| {
            x.leaf("code", code).leaf("name", name);
        })
        .leaf("privateDnsName", "")
        .leaf("dnsName", "")
        .leaf("reason", "")
        .opt(
            "keyName",
            i.spec
                .key_name
                .as_ref()
                .map(|k| l.keys.get(k).cloned().unwrap_or(k.clone())),
        )
        .leaf("amiLaunchIndex", launch_index(i))
        .set("productCodes", &[] as &[u8], |_, _| {})
        .opt("instanceType", i.spec.instance_type.as_ref())
        .opt(
            "launchTime",
            status
                .and_then(|s| s.launch_time)
                .or(i.metadata.creation_timestamp)
                .as_ref()
                .map(ts),
        )
        .el("placement", |x| {
            x.leaf("availabilityZone", l.zone_of(i))
                .leaf("groupName", "")
                .leaf("tenancy", "default");
        })
        .el("monitoring", |x| {
            x.leaf("state", "disabled");
        })
        .opt("subnetId", net0.map(|n| &n.1))
        .opt("vpcId", net0.map(|n| &n.0))
        .opt("privateIpAddress", addr0.map(|a| &a.ip))
        .opt("ipAddress", addr0.and_then(|a| a.floating_ip.as_ref()))
        .leaf("sourceDestCheck", true)
        .set("groupSet", &groups, |x, (id, n)| {
            x.leaf("groupId", id).leaf("groupName", n);
        })
        .opt("architecture", image.map(|v| &v.1))
        .leaf("rootDeviceType", root_device_type(i))
        .leaf("rootDeviceName", "/dev/vda");
    let devices = block_devices(i, l);
    x.set("blockDeviceMapping", &devices, |x, (dev, vol, dot)| {
        x.leaf("deviceName", dev).el("ebs", |x| {
            x.leaf("volumeId", vol)
                .leaf("status", "attached")
                .opt("attachTime", i.metadata.creation_timestamp.as_ref().map(ts))
                .leaf("deleteOnTermination", dot);
        });
    })
    .leaf("virtualizationType", "hvm")
    .opt(
        "clientToken",
        i.metadata.annotations.get(CLIENT_TOKEN_ANNOTATION),
    )
    .tags("tagSet", i.tags());
    let nics: Vec<corral_api_types::NicView> = i.nics().collect();
    x.set("networkInterfaceSet", &nics, |x, v| {
        let (nic, addr, n) = (v.spec, v.address, v.index);
        let net = l.networks.get(&nic.network);
        x.leaf("networkInterfaceId", network_interface_id(uid, n))
            .opt("subnetId", net.map(|v| &v.1))
            .opt("vpcId", net.map(|v| &v.0))
            .leaf("description", "")
            .leaf("ownerId", account)
            .leaf("status", "in-use")
            .opt("macAddress", addr.map(|a| &a.mac).or(nic.mac.as_ref()))
            .opt(
                "privateIpAddress",
                addr.map(|a| &a.ip).or(nic.fixed_ip.as_ref()),
            )
            .leaf("sourceDestCheck", true)
            .set(
                "groupSet",
                &l.group_items(&nic.security_groups),
                |x, (id, gn)| {
                    x.leaf("groupId", id).leaf("groupName", gn);
                },
            )
            .el_opt(
                "association",
                addr.and_then(|a| a.floating_ip.as_ref()),
                |x, ip| {
                    x.leaf("publicIp", ip)
                        .leaf("publicDnsName", "")
                        .leaf("ipOwnerId", account);
                },
            )
            .el("attachment", |x| {
                x.leaf("deviceIndex", n)
                    .leaf("status", "attached")
                    .leaf("deleteOnTermination", true);
            });
    });
    let vcpus = i.spec.cpus.or_else(|| {
        i.spec
            .instance_type
            .as_ref()
            .and_then(|t| l.vcpus.get(t).copied())
    });
    x.leaf("ebsOptimized", false).leaf("enaSupport", false);
    if let Some(v) = vcpus {
        x.el("cpuOptions", |x| {
            x.leaf("coreCount", v).leaf("threadsPerCore", 1);
        });
    }
    x.el("metadataOptions", |x| {
        x.leaf("state", "applied")
            .leaf("httpTokens", "optional")
            .leaf("httpPutResponseHopLimit", 1)
            .leaf("httpEndpoint", "enabled");
    });
}

/// Writes `reservationSet`: consecutive instances of one reservation share
/// an item. (DescribeInstances writes it from rendered instances with
/// [`write_reservations_rendered`]; this is what that must equal.)
#[cfg(test)]
pub fn write_reservations<I: std::borrow::Borrow<Instance>>(
    x: &mut Xml,
    instances: &[I],
    l: &Lookup,
    account: &str,
) {
    let mut groups: Vec<(String, Vec<&Instance>)> = Vec::new();
    for i in instances {
        let i: &Instance = i.borrow();
        let r = reservation(i);
        match groups.last_mut() {
            Some((last, members)) if *last == r => members.push(i),
            _ => groups.push((r, vec![i])),
        }
    }
    x.set("reservationSet", &groups, |x, (r, members)| {
        write_reservation_body(x, r, members, l, account);
    });
}

/// Bytes [`write_reservations_rendered`] writes, about.
pub fn rendered_size(rendered: &[Arc<str>], account: &str) -> usize {
    const PER_ITEM: usize = "<item></item>".len();
    let per_reservation = 200 + account.len();
    rendered
        .iter()
        .map(|r| r.len() + PER_ITEM + per_reservation)
        .sum::<usize>()
        + 64
}

/// Writes `reservationSet` like [`write_reservations`] from instances
/// already rendered (`rendered[n]` is what [`write_instance`] writes for
/// `instances[n]`).
pub fn write_reservations_rendered(
    x: &mut Xml,
    instances: &[Arc<DecodedInstance>],
    rendered: &[Arc<str>],
    account: &str,
) {
    x.open("reservationSet");
    let mut n = 0;
    while n < instances.len() {
        let r = &instances[n].reservation;
        let end = n + instances[n..]
            .iter()
            .take_while(|i| i.reservation == *r)
            .count();
        x.open("item")
            .leaf("reservationId", r)
            .leaf("ownerId", account)
            .set("groupSet", &[] as &[u8], |_, _| {})
            .open("instancesSet");
        for xml in &rendered[n..end] {
            x.open("item").raw(xml).close("item");
        }
        x.close("instancesSet").close("item");
        n = end;
    }
    x.close("reservationSet");
}

pub fn write_reservation_body(
    x: &mut Xml,
    r: &str,
    members: &[&Instance],
    l: &Lookup,
    account: &str,
) {
    x.leaf("reservationId", r)
        .leaf("ownerId", account)
        .set("groupSet", &[] as &[u8], |_, _| {})
        .set("instancesSet", members, |x, i| {
            write_instance(x, i, l, account)
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::{InstanceAddress, InstanceStatus, Nic, Resource, VolumeAttachment};

    fn instance(name: &str, reservation: Option<&str>, n: usize) -> Instance {
        let mut i = Instance::new("p", name, Default::default());
        i.metadata.uid = format!("uid-{name}");
        i.metadata.creation_timestamp = Some(chrono::Utc::now());
        if let Some(r) = reservation {
            i.metadata
                .annotations
                .insert(RESERVATION_ANNOTATION.into(), r.into());
            i.metadata
                .annotations
                .insert(LAUNCH_INDEX_ANNOTATION.into(), n.to_string());
        }
        i.spec.instance_type = Some("m1.tiny".into());
        i.spec.image = Some("tiny".into());
        i.spec.key_name = Some("k & <key>".into());
        i.spec.nics = vec![
            Nic {
                network: "default".into(),
                security_groups: vec!["web".into(), "gone".into()],
                ..Default::default()
            },
            Nic {
                network: "lan".into(),
                fixed_ip: Some("10.0.0.9".into()),
                ..Default::default()
            },
        ];
        i.spec.volumes = vec![VolumeAttachment {
            volume: "data".into(),
            device: Some("vdb".into()),
            delete_on_termination: true,
        }];
        i.spec
            .tags
            .insert("Name".into(), format!("\"{name}\" <'x'>"));
        if n % 2 == 0 {
            i.status = Some(InstanceStatus {
                phase: InstancePhase::Running,
                addresses: vec![InstanceAddress {
                    network: "default".into(),
                    ip: "172.31.0.5".into(),
                    mac: "52:54:00:00:00:01".into(),
                    floating_ip: Some("198.51.100.7".into()),
                }],
                ..Default::default()
            });
        }
        i
    }

    /// DescribeInstances' answer from rendered fragments is byte for byte
    /// the one written directly, reservations grouped the same way.
    #[test]
    fn rendered_reservations_equal_the_direct_writing() {
        let mut l = Lookup {
            zone: "corral-1a".into(),
            ..Default::default()
        };
        l.groups
            .insert("web".into(), ("sg-1".into(), "Web & co".into()));
        l.networks.insert(
            "default".into(),
            ("vpc-1".into(), "subnet-1".into(), "172.31.0.0/16".into()),
        );
        l.images
            .insert("tiny".into(), ("ami-1".into(), "x86_64".into()));
        l.volumes.insert("data".into(), "vol-1".into());
        l.vcpus.insert("m1.tiny".into(), 1);
        let instances = vec![
            instance("a", Some("r-0000000000000000a"), 0),
            instance("b", Some("r-0000000000000000a"), 1),
            instance("c", None, 2),
            instance("d", Some("r-0000000000000000a"), 3),
            instance("e", Some("r-0000000000000000e"), 4),
        ];
        let mut direct = Xml::new();
        write_reservations(&mut direct, &instances, &l, "123456789012");
        let decoded: Vec<Arc<DecodedInstance>> = instances
            .iter()
            .map(|i| Arc::new(DecodedInstance::new(Arc::new(i.clone()), 1)))
            .collect();
        let rendered: Vec<Arc<str>> = decoded
            .iter()
            .map(|e| {
                e.rendered(1, |i| {
                    let mut x = Xml::new();
                    write_instance(&mut x, i, &l, "123456789012");
                    x.into_string()
                })
            })
            .collect();
        let mut from_rendered = Xml::new();
        write_reservations_rendered(&mut from_rendered, &decoded, &rendered, "123456789012");
        let (direct, from_rendered) = (direct.into_string(), from_rendered.into_string());
        assert_eq!(direct, from_rendered);
        assert_eq!(direct.matches("<reservationId>").count(), 4);
        assert!(
            direct.contains("&quot;a&quot; &lt;&apos;x&apos;&gt;"),
            "{direct}"
        );
        assert!(
            direct.contains("<keyName>k &amp; &lt;key&gt;</keyName>"),
            "{direct}"
        );
        assert!(
            direct.contains("<groupName>Web &amp; co</groupName>"),
            "{direct}"
        );
        assert!(direct.contains("<volumeId>vol-1</volumeId>"), "{direct}");
        // Nothing at all: an empty set.
        let mut empty = Xml::new();
        write_reservations_rendered(&mut empty, &[], &[], "123456789012");
        let empty = empty.into_string();
        let mut direct = Xml::new();
        write_reservations::<Instance>(&mut direct, &[], &l, "123456789012");
        assert_eq!(empty, direct.into_string());
    }
}
