//! DescribeNetworkInterfaces: network interfaces are the NICs of the
//! live instances (`eni-` ids derived from the instance and the NIC's
//! index), always attached.

use corral_api_types::ec2::{derive_id, instance_id, network_interface_id};
use corral_api_types::{Instance, NicView};

use super::describe::{page_answer, Describe, NO_TAGS};
use super::ids::NETWORK_INTERFACE;
use super::instance_view::Lookup;
use super::instance_xml::{write_nic_address, write_nic_association, write_nic_network};
use super::instances::visible_instances;
use super::{write_group_set, Ctx};
use crate::error::Result;
use crate::filter::one;
use crate::xml::Xml;

const FILTERS: &[&str] = &[
    "network-interface-id",
    "group-id",
    "group-name",
    "subnet-id",
    "vpc-id",
    "attachment.instance-id",
    "private-ip-address",
    "status",
    "mac-address",
    "owner-id",
    "availability-zone",
    "attachment.device-index",
];

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &NETWORK_INTERFACE, FILTERS)?;
    let instances = visible_instances(ctx).await?;
    let l = Lookup::load(ctx).await?;
    let account = ctx.account();
    let rows: Vec<(String, &Instance, NicView)> = instances
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .flat_map(|i| {
            i.nics()
                .map(move |n| (network_interface_id(&i.metadata.uid, n.index), i, n))
        })
        .collect();
    d.check_found(&NETWORK_INTERFACE, &rows, |r| r.0.clone())?;
    let field = |(id, i, nic): &(String, &Instance, NicView), f: &str| {
        let (spec, addr) = (nic.spec, nic.address);
        let net = l.networks.get(&spec.network);
        let groups = || spec.security_groups.iter().filter_map(|g| l.groups.get(g));
        match f {
            "network-interface-id" => one(id.clone()),
            "group-id" => groups().map(|v| v.0.clone()).collect(),
            "group-name" => groups().map(|v| v.1.clone()).collect(),
            "subnet-id" => net.map(|v| v.1.clone()).into_iter().collect(),
            "vpc-id" => net.map(|v| v.0.clone()).into_iter().collect(),
            "attachment.instance-id" => one(instance_id(&i.metadata.uid)),
            "attachment.device-index" => one(nic.index.to_string()),
            "private-ip-address" => addr.map(|a| a.ip.clone()).into_iter().collect(),
            "mac-address" => addr.map(|a| a.mac.clone()).into_iter().collect(),
            "status" => one("in-use"),
            "owner-id" => one(account.clone()),
            _ => one(l.zone_of(i)),
        }
    };
    let (rows, next) = d.select(rows, |r| r.0.clone(), field, |_| &NO_TAGS);
    Ok(page_answer(
        "networkInterfaceSet",
        &rows,
        next,
        |x, (id, i, nic)| {
            let groups: Vec<(String, String)> = nic
                .spec
                .security_groups
                .iter()
                .filter_map(|g| l.groups.get(g).cloned())
                .collect();
            x.leaf("networkInterfaceId", id);
            write_nic_network(x, &l, Some(&nic.spec.network));
            x.leaf("availabilityZone", l.zone_of(i))
                .leaf("description", "")
                .leaf("ownerId", &account)
                .leaf("requesterManaged", false)
                .leaf("status", "in-use");
            write_nic_address(x, nic);
            x.leaf("sourceDestCheck", true);
            write_nic_association(x, nic, &account);
            x.leaf("interfaceType", "interface");
            write_group_set(x, &groups);
            x.el("attachment", |x| {
                x.leaf("attachmentId", derive_id("eni-attach", "NicAttachment", id))
                    .leaf("instanceId", instance_id(&i.metadata.uid))
                    .leaf("instanceOwnerId", &account)
                    .leaf("deviceIndex", nic.index)
                    .leaf("status", "attached")
                    .leaf("deleteOnTermination", true);
            })
            .empty_set("tagSet");
        },
    ))
}
