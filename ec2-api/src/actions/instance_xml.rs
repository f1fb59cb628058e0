//! The XML of instances: the `<item>` DescribeInstances and RunInstances
//! write for an instance (its NICs and disks too), and the reservations
//! that group them.

use std::collections::HashMap;
use std::sync::Arc;

use corral_api_types::ec2::{instance_id, network_interface_id, CLIENT_TOKEN_ANNOTATION};
use corral_api_types::{Instance, NicView};

use super::instance_view::{launch_index, root_device_type, state, Lookup};
use super::volumes::ec2_attachment;
use super::{ts, write_group_set};
use crate::decoded::DecodedInstance;
use crate::objects::Tagged;
use crate::xml::Xml;

/// A NIC's network: `subnetId` and `vpcId`.
pub fn write_nic_network(x: &mut Xml, l: &Lookup, network: Option<&str>) {
    let net = network.and_then(|n| l.networks.get(n));
    x.opt("subnetId", net.map(|v| &v.1))
        .opt("vpcId", net.map(|v| &v.0));
}

/// A NIC's `macAddress` and `privateIpAddress`: its address's, else its
/// spec's.
pub fn write_nic_address(x: &mut Xml, nic: &NicView) {
    let addr = nic.address;
    x.opt("macAddress", addr.map(|a| &a.mac).or(nic.spec.mac.as_ref()))
        .opt(
            "privateIpAddress",
            addr.map(|a| &a.ip).or(nic.spec.fixed_ip.as_ref()),
        );
}

/// A NIC's `association`: the floating IP its address has, if any.
pub fn write_nic_association(x: &mut Xml, nic: &NicView, account: &str) {
    x.el_opt(
        "association",
        nic.address.and_then(|a| a.floating_ip.as_ref()),
        |x, ip| {
            x.leaf("publicIp", ip)
                .leaf("publicDnsName", "")
                .leaf("ipOwnerId", account);
        },
    );
}

fn write_block_device(x: &mut Xml, dev: &str, vol: &str, dot: bool, attach_time: Option<&str>) {
    x.leaf("deviceName", dev).el("ebs", |x| {
        x.leaf("volumeId", vol)
            .leaf("status", "attached")
            .opt("attachTime", attach_time)
            .leaf("deleteOnTermination", dot);
    });
}

/// One disk of an instance as EC2 shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2BlockDevice {
    /// The device name the user gave (`/dev/sdf`), else the guest's
    /// (`/dev/vdf`); the boot disk is `/dev/vda`.
    pub device: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
    /// When it was attached: recorded by AttachVolume, else the
    /// instance's creation.
    pub attach_time: Option<String>,
}

/// An instance's EBS-style disks, boot disk first, named as EC2 names
/// them (the device name given to AttachVolume, which the guest does not
/// see: see `volumes::ec2_attachment`).
pub fn ec2_block_devices(i: &Instance, l: &Lookup) -> Vec<Ec2BlockDevice> {
    let created = i.metadata.creation_timestamp;
    let mut out = Vec::new();
    if let Some(b) = &i.spec.boot_volume {
        out.push(Ec2BlockDevice {
            device: "/dev/vda".into(),
            volume_id: l.volumes.get(b).cloned().unwrap_or_default(),
            delete_on_termination: false,
            attach_time: created.as_ref().map(ts),
        });
    }
    for a in &i.spec.volumes {
        let (device, time) = ec2_attachment(i, a);
        out.push(Ec2BlockDevice {
            device,
            volume_id: l.volumes.get(&a.volume).cloned().unwrap_or_default(),
            delete_on_termination: a.delete_on_termination,
            attach_time: time.or(created).as_ref().map(ts),
        });
    }
    out
}

/// `<blockDeviceMapping>` of an instance ([`ec2_block_devices`]), with
/// attach times when `with_time` (DescribeInstanceAttribute has none).
pub fn write_instance_block_devices(x: &mut Xml, i: &Instance, l: &Lookup, with_time: bool) {
    x.set("blockDeviceMapping", &ec2_block_devices(i, l), |x, d| {
        let time = d.attach_time.as_deref().filter(|_| with_time);
        write_block_device(x, &d.device, &d.volume_id, d.delete_on_termination, time);
    });
}

/// One `<item>` of an instancesSet.
pub fn write_instance(x: &mut Xml, i: &Instance, l: &Lookup, account: &str) {
    let (code, name) = state(i);
    let uid = &i.metadata.uid;
    let status = i.status.as_ref();
    let addr0 = status.and_then(|s| s.addresses.first());
    let network0 = i.spec.nics.first().map(|n| n.network.as_str());
    let groups = l.group_items(
        &i.spec
            .nics
            .iter()
            .flat_map(|n| n.security_groups.clone())
            .collect::<Vec<_>>(),
    );
    let image = l.image(i);
    x.leaf("instanceId", instance_id(uid))
        .opt("imageId", image.map(|v| &v.0))
        .el("instanceState", |x| {
            x.leaf("code", code).leaf("name", name);
        })
        .leaf("privateDnsName", "")
        .leaf("dnsName", "")
        .leaf("reason", "")
        .opt("keyName", l.key_name(i))
        .leaf("amiLaunchIndex", launch_index(i))
        .empty_set("productCodes")
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
        });
    write_nic_network(x, l, network0);
    x.opt("privateIpAddress", addr0.map(|a| &a.ip))
        .opt("ipAddress", addr0.and_then(|a| a.floating_ip.as_ref()))
        .leaf("sourceDestCheck", true);
    write_group_set(x, &groups);
    x.opt("architecture", image.map(|v| &v.1))
        .leaf("rootDeviceType", root_device_type(i))
        .leaf("rootDeviceName", l.root_device_name(i));
    write_instance_block_devices(x, i, l, true);
    x.leaf("virtualizationType", "hvm")
        .opt(
            "clientToken",
            i.metadata.annotations.get(CLIENT_TOKEN_ANNOTATION),
        )
        .tags("tagSet", i.tags());
    let nics: Vec<NicView> = i.nics().collect();
    x.set("networkInterfaceSet", &nics, |x, nic| {
        x.leaf("networkInterfaceId", network_interface_id(uid, nic.index));
        write_nic_network(x, l, Some(&nic.spec.network));
        x.leaf("description", "")
            .leaf("ownerId", account)
            .leaf("status", "in-use");
        write_nic_address(x, nic);
        x.leaf("sourceDestCheck", true);
        write_group_set(x, &l.group_items(&nic.spec.security_groups));
        write_nic_association(x, nic, account);
        x.el("attachment", |x| {
            x.leaf("deviceIndex", nic.index)
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
        super::instance_meta::write_options(x, &i.spec.metadata_options, "applied");
    });
}

/// Writes `reservationSet`: all the instances of one reservation share an
/// item, reservations in the order of their first instance.
/// (DescribeInstances writes it from rendered instances with
/// [`write_reservations_rendered`]; this is what that must equal.)
#[cfg(test)]
pub fn write_reservations<I: std::borrow::Borrow<Instance>>(
    x: &mut Xml,
    instances: &[I],
    l: &Lookup,
    account: &str,
) {
    let reservations: Vec<String> = instances
        .iter()
        .map(|i| super::instance_view::reservation(i.borrow()))
        .collect();
    let groups: Vec<(&str, Vec<&Instance>)> =
        by_reservation(reservations.iter().map(String::as_str))
            .into_iter()
            .map(|(r, members)| (r, members.iter().map(|&n| instances[n].borrow()).collect()))
            .collect();
    x.set("reservationSet", &groups, |x, (r, members)| {
        write_reservation_body(x, r, members, l, account);
    });
}

/// The positions of `reservations` grouped by reservation: each
/// reservation once, in the order of its first appearance, with the
/// positions of all its members in their order. (A page of
/// DescribeInstances is sorted by instance id, which interleaves the
/// instances of different launches.)
pub fn by_reservation<'a>(
    reservations: impl Iterator<Item = &'a str>,
) -> Vec<(&'a str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (n, r) in reservations.enumerate() {
        match index.get(r) {
            Some(&g) => groups[g].1.push(n),
            None => {
                index.insert(r, groups.len());
                groups.push((r, vec![n]));
            }
        }
    }
    groups
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

/// Writes `reservationSet` like [`write_reservations`] (one item per
/// reservation, whatever the order of `instances`) from instances
/// already rendered (`rendered[n]` is what [`write_instance`] writes for
/// `instances[n]`).
pub fn write_reservations_rendered(
    x: &mut Xml,
    instances: &[Arc<DecodedInstance>],
    rendered: &[Arc<str>],
    account: &str,
) {
    x.open("reservationSet");
    let groups = by_reservation(instances.iter().map(|i| i.reservation.as_str()));
    for (r, members) in groups {
        x.open("item")
            .leaf("reservationId", r)
            .leaf("ownerId", account)
            .empty_set("groupSet")
            .open("instancesSet");
        for n in members {
            x.open("item").raw(&rendered[n]).close("item");
        }
        x.close("instancesSet").close("item");
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
        .empty_set("groupSet")
        .set("instancesSet", members, |x, i| {
            write_instance(x, i, l, account)
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::ec2::{LAUNCH_INDEX_ANNOTATION, RESERVATION_ANNOTATION};
    use corral_api_types::{
        InstanceAddress, InstancePhase, InstanceStatus, Nic, Resource, VolumeAttachment,
    };

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
        // a, b and d share r-…a although c (its own reservation) sits
        // between them: three reservations, r-…a first with its three.
        assert_eq!(direct.matches("<reservationId>").count(), 3);
        let first = direct
            .split("<reservationId>")
            .nth(1)
            .expect("a first reservation");
        assert!(first.starts_with("r-0000000000000000a<"), "{first}");
        let ids: Vec<String> = ["a", "b", "d"]
            .iter()
            .map(|n| instance_id(&format!("uid-{n}")))
            .collect();
        let at: Vec<usize> = ids
            .iter()
            .map(|id| first.find(id.as_str()).unwrap())
            .collect();
        assert!(at[0] < at[1] && at[1] < at[2], "{first}");
        assert!(!first.contains(&instance_id("uid-c")), "{first}");
        assert_eq!(
            by_reservation(["r1", "r2", "r1", "r3", "r2"].into_iter()),
            [("r1", vec![0, 2]), ("r2", vec![1, 4]), ("r3", vec![3])]
        );
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
