//! The XML of instances: the `<item>` DescribeInstances and RunInstances
//! write for an instance (its NICs and disks too), and the reservations
//! that group them.

use std::sync::Arc;

use corral_api_types::ec2::{instance_id, network_interface_id, CLIENT_TOKEN_ANNOTATION};
use corral_api_types::{Instance, NicView};

use super::instance_view::{block_devices, launch_index, root_device_type, state, Lookup};
use super::{created, ts, write_group_set};
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

/// `<blockDeviceMapping>` of an instance's disks ([`block_devices`]),
/// with the time they were attached when it is given.
pub fn write_block_devices(
    x: &mut Xml,
    devices: &[(String, String, bool)],
    attach_time: Option<&str>,
) {
    x.set("blockDeviceMapping", devices, |x, (dev, vol, dot)| {
        x.leaf("deviceName", dev).el("ebs", |x| {
            x.leaf("volumeId", vol)
                .leaf("status", "attached")
                .opt("attachTime", attach_time)
                .leaf("deleteOnTermination", dot);
        });
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
        .leaf("rootDeviceName", "/dev/vda");
    write_block_devices(x, &block_devices(i, l), created(&i.metadata).as_deref());
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
        let r = super::instance_view::reservation(i);
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
            .empty_set("groupSet")
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
