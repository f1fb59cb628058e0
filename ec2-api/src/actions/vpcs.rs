//! Networks through EC2: a Network is a VPC with exactly one subnet (and
//! one route table); the Network named `default` is the default VPC.
//! Network interfaces are instances' NICs.
//!
//! A Network made by CreateVpc has no subnet until CreateSubnet gives it
//! one (annotation `ec2.corral/subnet-pending`; DescribeSubnets hides it
//! and RunInstances cannot name it). CreateSubnet with the VPC's own CIDR
//! clears the annotation; with a smaller block inside it, the Network is
//! recreated under the same name and uid (so its `vpc-` and `subnet-` ids
//! stay) with the subnet's CIDR as `spec.cidr` and the VPC's kept in the
//! annotation `ec2.corral/vpc-cidr`. A second CreateSubnet is
//! `InvalidSubnet.Conflict`: the one subnet is taken. Networks from
//! manifests, and the default one, have their subnet from the start.
//!
//! Every project has a default VPC: RunInstances without a SubnetId
//! creates the Network `default` (172.31.0.0/16) when it is missing.

use corral_api_types::ec2::{
    instance_id, network_interface_id, resource_id, route_table_id, subnet_id,
};
use corral_api_types::net::Ipv4Cidr;
use corral_api_types::{Instance, Network, NetworkSpec, NicView, Resource, NETWORK_PREFIX_RANGE};

use super::instance_view::Lookup;
use super::instances::visible_instances;
use super::{check_ids, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::{self, list_all, new_uid, tag_specs, Tagged};
use crate::page::Page;
use crate::query::clip;
use crate::xml::Xml;

fn is_default(n: &Network) -> bool {
    n.metadata.name == DEFAULT_NETWORK
}

/// The Network that is a project's default VPC.
pub const DEFAULT_NETWORK: &str = "default";
/// Its CIDR, as AWS's default VPCs.
pub const DEFAULT_CIDR: &str = "172.31.0.0/16";
/// Set on a Network made by CreateVpc until CreateSubnet.
pub const SUBNET_PENDING_ANNOTATION: &str = "ec2.corral/subnet-pending";
/// The VPC's CIDR when its subnet is smaller.
pub const VPC_CIDR_ANNOTATION: &str = "ec2.corral/vpc-cidr";

/// Whether the Network's one subnet exists.
pub fn has_subnet(n: &Network) -> bool {
    !n.metadata
        .annotations
        .contains_key(SUBNET_PENDING_ANNOTATION)
}

fn vpc_cidr(n: &Network) -> &str {
    n.metadata
        .annotations
        .get(VPC_CIDR_ANNOTATION)
        .map(String::as_str)
        .unwrap_or(&n.spec.cidr)
}

/// The project's default Network, created when missing (idempotent under
/// concurrent callers: the loser of the create reads the winner's).
pub async fn default_network(ctx: &Ctx<'_>) -> Result<Network> {
    let p = ctx.project();
    if let Some(n) = ctx.store.get::<Network>(p, DEFAULT_NETWORK).await? {
        return Ok(n);
    }
    let mut n = Network::new(
        p,
        DEFAULT_NETWORK,
        NetworkSpec {
            cidr: DEFAULT_CIDR.to_string(),
            ..Default::default()
        },
    );
    n.metadata.uid = new_uid(p, Network::KIND, None, 0);
    match objects::create(ctx.store, n).await {
        Ok(n) => Ok(n),
        Err(e) => match ctx.store.get::<Network>(p, DEFAULT_NETWORK).await? {
            Some(n) => Ok(n),
            None => Err(e),
        },
    }
}

fn write_vpc(x: &mut Xml, n: &Network, account: &str) {
    x.leaf("vpcId", n.ec2_id())
        .leaf("ownerId", account)
        .leaf("state", "available")
        .leaf("cidrBlock", vpc_cidr(n))
        .set("cidrBlockAssociationSet", &[vpc_cidr(n)], |x, c| {
            x.leaf("cidrBlock", c)
                .leaf(
                    "associationId",
                    corral_api_types::ec2::derive_id("vpc-cidr-assoc", "VpcCidr", &n.metadata.uid),
                )
                .el("cidrBlockState", |x| {
                    x.leaf("state", "associated");
                });
        })
        .leaf("dhcpOptionsId", "default")
        .leaf("instanceTenancy", "default")
        .leaf("isDefault", is_default(n))
        .tags("tagSet", n.tags());
}

pub async fn describe_vpcs(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("VpcId")?;
    check_ids(&ids, &["vpc"], "InvalidVpcID.Malformed", "vpc id")?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "vpcIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "vpc-id",
            "cidr",
            "cidr-block-association.cidr-block",
            "is-default",
            "state",
            "owner-id",
            "dhcp-options-id",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut nets = list_all::<Network>(ctx.store, ctx.project()).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !nets.iter().any(|n| n.ec2_id() == **id))
    {
        return Err(Ec2Error::client(
            "InvalidVpcID.NotFound",
            format!("The vpc ID '{missing}' does not exist"),
        ));
    }
    let account = ctx.account();
    nets.retain(|n| ids.is_empty() || ids.contains(&n.ec2_id()));
    nets.retain(|n| {
        filters.matches(
            |f| match f {
                "vpc-id" => one(n.ec2_id()),
                "cidr" | "cidr-block-association.cidr-block" => one(vpc_cidr(n)),
                "is-default" => b(is_default(n)),
                "state" => one("available"),
                "owner-id" => one(account.clone()),
                _ => one("default"),
            },
            n.tags(),
        )
    });
    nets.sort_by_key(|n| n.ec2_id());
    let (nets, next) = page.apply(nets, |n| n.ec2_id());
    let mut x = Xml::new();
    x.set("vpcSet", &nets, |x, n| write_vpc(x, n, &account));
    x.opt("nextToken", next);
    Ok(x)
}

pub async fn describe_subnets(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("SubnetId")?;
    check_ids(&ids, &["subnet"], "InvalidSubnetID.Malformed", "subnet id")?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "subnetIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "subnet-id",
            "vpc-id",
            "cidr-block",
            "cidr",
            "availability-zone",
            "default-for-az",
            "state",
            "owner-id",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut nets = list_all::<Network>(ctx.store, ctx.project()).await?;
    nets.retain(has_subnet);
    let sid = |n: &Network| subnet_id(&n.metadata.uid);
    if let Some(missing) = ids.iter().find(|id| !nets.iter().any(|n| sid(n) == **id)) {
        return Err(Ec2Error::client(
            "InvalidSubnetID.NotFound",
            format!("The subnet ID '{missing}' does not exist"),
        ));
    }
    let zone = ctx.zones().await?.remove(0);
    let account = ctx.account();
    nets.retain(|n| ids.is_empty() || ids.contains(&sid(n)));
    nets.retain(|n| {
        filters.matches(
            |f| match f {
                "subnet-id" => one(sid(n)),
                "vpc-id" => one(n.ec2_id()),
                "cidr-block" | "cidr" => one(n.spec.cidr.clone()),
                "availability-zone" => one(zone.clone()),
                "default-for-az" => b(is_default(n)),
                "state" => one("available"),
                _ => one(account.clone()),
            },
            n.tags(),
        )
    });
    nets.sort_by_key(sid);
    let (nets, next) = page.apply(nets, sid);
    let mut x = Xml::new();
    x.set("subnetSet", &nets, |x, n| {
        write_subnet(x, n, &zone, &account)
    });
    x.opt("nextToken", next);
    Ok(x)
}

fn write_subnet(x: &mut Xml, n: &Network, zone: &str, account: &str) {
    let free = n
        .spec
        .parsed_cidr()
        .map(|c| {
            c.host_count()
                .saturating_sub(n.status.as_ref().map_or(0, |s| s.allocations.len() as u64) + 1)
        })
        .unwrap_or(0);
    x.leaf("subnetId", subnet_id(&n.metadata.uid))
        .leaf("state", "available")
        .leaf("ownerId", account)
        .leaf("vpcId", n.ec2_id())
        .leaf("cidrBlock", &n.spec.cidr)
        .leaf("availableIpAddressCount", free)
        .leaf("availabilityZone", zone)
        .leaf("defaultForAz", is_default(n))
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false)
        .set("ipv6CidrBlockAssociationSet", &[] as &[u8], |_, _| {})
        .tags("tagSet", n.tags());
}

pub async fn create_subnet(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let vpc = p.required("VpcId")?.to_string();
    let cidr_text = p.required("CidrBlock")?.to_string();
    let cidr: Ipv4Cidr = cidr_text.parse().map_err(|_| {
        Ec2Error::invalid_value(format!(
            "Value ({}) for parameter cidrBlock is invalid. This is not a valid CIDR block.",
            clip(&cidr_text)
        ))
    })?;
    let zones = ctx.zones().await?;
    let zone = match p.get_nonempty("AvailabilityZone") {
        Some(z) if zones.iter().any(|x| x == z) => z.to_string(),
        Some(z) => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({}) for parameter availabilityZone is invalid. Subnets can currently                  only be created in the following availability zones: {}.",
                clip(z),
                zones.join(", ")
            )))
        }
        None => zones[0].clone(),
    };
    let tags = tag_specs(p, "subnet")?;
    let n = network_by_vpc(ctx, &vpc).await?;
    if has_subnet(&n) {
        return Err(Ec2Error::client(
            "InvalidSubnet.Conflict",
            format!(
                "The CIDR '{}' conflicts with another subnet: VPC {vpc} has its one subnet                  ({}) already",
                cidr,
                n.spec.cidr
            ),
        ));
    }
    let vpc_block: Ipv4Cidr = n.spec.cidr.parse().map_err(|_| {
        Ec2Error::internal(format!("network {} has an invalid cidr", n.metadata.name))
    })?;
    let (min, max) = NETWORK_PREFIX_RANGE;
    let inside = cidr.prefix() >= vpc_block.prefix()
        && vpc_block.contains(cidr.network())
        && (min..=max).contains(&cidr.prefix());
    if !inside {
        return Err(Ec2Error::client(
            "InvalidSubnet.Range",
            format!(
                "The CIDR '{cidr}' is invalid: it must lie inside the VPC's {} with a prefix                  between /{min} and /{max}",
                n.spec.cidr
            ),
        ));
    }
    ctx.gate()?;
    let n = if cidr.to_string() == n.spec.cidr {
        objects::update(
            ctx.store,
            ctx.project(),
            &n.metadata.name,
            |x: &mut Network| {
                x.metadata.annotations.remove(SUBNET_PENDING_ANNOTATION);
                x.spec.tags.extend(tags.clone());
                Ok(())
            },
        )
        .await?
    } else {
        narrow(ctx, &n, &cidr.to_string(), &tags).await?
    };
    let mut x = Xml::new();
    x.el("subnet", |x| write_subnet(x, &n, &zone, &ctx.account()));
    Ok(x)
}

/// Recreates a subnet-less Network with the subnet's CIDR, same name and
/// uid (`spec.cidr` is immutable; nothing can use the Network yet).
async fn narrow(
    ctx: &Ctx<'_>,
    n: &Network,
    cidr: &str,
    tags: &std::collections::BTreeMap<String, String>,
) -> Result<Network> {
    let (p, name) = (ctx.project(), n.metadata.name.clone());
    for _ in 0..16 {
        let Some(current) = ctx.store.get::<Network>(p, &name).await? else {
            return Err(Ec2Error::client(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{}' does not exist", n.ec2_id()),
            ));
        };
        if has_subnet(&current) || current.metadata.uid != n.metadata.uid {
            return Err(Ec2Error::client(
                "InvalidSubnet.Conflict",
                format!("The CIDR '{cidr}' conflicts with another subnet"),
            ));
        }
        let rv = current.metadata.resource_version.clone();
        match ctx.store.delete::<Network>(p, &name, Some(&rv)).await {
            Ok(_) => {}
            Err(corral_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        let mut fresh = Network::new(
            p,
            &name,
            NetworkSpec {
                cidr: cidr.to_string(),
                gateway: None,
                ..current.spec.clone()
            },
        );
        fresh.spec.tags.extend(tags.clone());
        fresh.metadata.uid = current.metadata.uid.clone();
        fresh.metadata.labels = current.metadata.labels.clone();
        fresh.metadata.annotations = current.metadata.annotations.clone();
        fresh.metadata.annotations.remove(SUBNET_PENDING_ANNOTATION);
        fresh
            .metadata
            .annotations
            .insert(VPC_CIDR_ANNOTATION.into(), current.spec.cidr.clone());
        return objects::create(ctx.store, fresh).await;
    }
    Err(Ec2Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "RequestLimitExceeded",
        "The VPC was modified concurrently; retry the request.",
    ))
}

async fn network_by_vpc(ctx: &Ctx<'_>, id: &str) -> Result<Network> {
    check_ids(
        &[id.to_string()],
        &["vpc"],
        "InvalidVpcID.Malformed",
        "vpc id",
    )?;
    list_all::<Network>(ctx.store, ctx.project())
        .await?
        .into_iter()
        .find(|n| n.ec2_id() == id)
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{id}' does not exist"),
            )
        })
}

pub async fn describe_vpc_attribute(ctx: &Ctx<'_>) -> Result<Xml> {
    let attr = ctx.params.required("Attribute")?.to_string();
    let n = network_by_vpc(ctx, ctx.params.required("VpcId")?).await?;
    let v = match attr.as_str() {
        "enableDnsSupport" => n.spec.dhcp,
        "enableDnsHostnames" | "enableNetworkAddressUsageMetrics" => false,
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({}) for parameter attribute is invalid.",
                clip(other)
            )))
        }
    };
    ctx.gate()?;
    let mut x = Xml::new();
    x.leaf("vpcId", n.ec2_id()).el(&attr, |x| {
        x.leaf("value", v);
    });
    Ok(x)
}

async fn create_network(
    ctx: &Ctx<'_>,
    name: Option<&str>,
    cidr: &str,
    with_subnet: bool,
) -> Result<Xml> {
    let tags = tag_specs(ctx.params, "vpc")?;
    ctx.gate()?;
    let uid = new_uid(ctx.project(), Network::KIND, None, 0);
    let id = resource_id(Network::KIND, &uid).unwrap_or_default();
    let mut n = Network::new(
        ctx.project(),
        name.unwrap_or(&id),
        NetworkSpec {
            cidr: cidr.to_string(),
            tags,
            ..Default::default()
        },
    );
    n.metadata.uid = uid;
    if !with_subnet {
        n.metadata
            .annotations
            .insert(SUBNET_PENDING_ANNOTATION.into(), "true".into());
    }
    let n = objects::create(ctx.store, n).await?;
    let mut x = Xml::new();
    x.el("vpc", |x| write_vpc(x, &n, &ctx.account()));
    Ok(x)
}

pub async fn create_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    let cidr = ctx.params.required("CidrBlock")?.to_string();
    create_network(ctx, None, &cidr, false).await
}

pub async fn create_default_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    if ctx
        .store
        .get::<Network>(ctx.project(), "default")
        .await?
        .is_some()
    {
        return Err(Ec2Error::client(
            "DefaultVpcAlreadyExists",
            "A Default VPC already exists for this account in this region.",
        ));
    }
    create_network(ctx, Some(DEFAULT_NETWORK), DEFAULT_CIDR, true).await
}

pub async fn delete_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    let n = network_by_vpc(ctx, ctx.params.required("VpcId")?).await?;
    let used = list_all::<Instance>(ctx.store, ctx.project())
        .await?
        .iter()
        .any(|i| i.spec.nics.iter().any(|nic| nic.network == n.metadata.name));
    if used {
        return Err(Ec2Error::client(
            "DependencyViolation",
            format!(
                "The vpc '{}' has dependencies and cannot be deleted.",
                n.ec2_id()
            ),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &n).await?;
    Ok(super::ok_return())
}

pub async fn describe_network_interfaces(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("NetworkInterfaceId")?;
    check_ids(
        &ids,
        &["eni"],
        "InvalidNetworkInterfaceID.Malformed",
        "network interface id",
    )?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "networkInterfaceIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
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
        ],
        true,
    )?;
    ctx.gate()?;
    let instances = visible_instances(ctx).await?;
    let l = Lookup::load(ctx).await?;
    let account = ctx.account();
    let mut rows: Vec<(String, &Instance, NicView)> = instances
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .flat_map(|i| {
            i.nics()
                .map(move |n| (network_interface_id(&i.metadata.uid, n.index), i, n))
        })
        .collect();
    if let Some(missing) = ids.iter().find(|id| !rows.iter().any(|r| r.0 == **id)) {
        return Err(Ec2Error::client(
            "InvalidNetworkInterfaceID.NotFound",
            format!("The networkInterface ID '{missing}' does not exist"),
        ));
    }
    let empty = Default::default();
    rows.retain(|(id, i, n)| {
        let (nic, addr, n) = (n.spec, n.address, n.index);
        let net = l.networks.get(&nic.network);
        (ids.is_empty() || ids.contains(id))
            && filters.matches(
                |f| match f {
                    "network-interface-id" => one(id.clone()),
                    "group-id" => nic
                        .security_groups
                        .iter()
                        .filter_map(|g| l.groups.get(g).map(|v| v.0.clone()))
                        .collect(),
                    "group-name" => nic
                        .security_groups
                        .iter()
                        .filter_map(|g| l.groups.get(g).map(|v| v.1.clone()))
                        .collect(),
                    "subnet-id" => net.map(|v| v.1.clone()).into_iter().collect(),
                    "vpc-id" => net.map(|v| v.0.clone()).into_iter().collect(),
                    "attachment.instance-id" => one(instance_id(&i.metadata.uid)),
                    "attachment.device-index" => one(n.to_string()),
                    "private-ip-address" => addr.map(|a| a.ip.clone()).into_iter().collect(),
                    "mac-address" => addr.map(|a| a.mac.clone()).into_iter().collect(),
                    "status" => one("in-use"),
                    "owner-id" => one(account.clone()),
                    _ => one(l.zone_of(i)),
                },
                &empty,
            )
    });
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let (rows, next) = page.apply(rows, |r| r.0.clone());
    let mut x = Xml::new();
    x.set("networkInterfaceSet", &rows, |x, (id, i, n)| {
        let (nic, addr, n) = (n.spec, n.address, n.index);
        let net = l.networks.get(&nic.network);
        let groups: Vec<(String, String)> = nic
            .security_groups
            .iter()
            .filter_map(|g| l.groups.get(g).cloned())
            .collect();
        x.leaf("networkInterfaceId", id)
            .opt("subnetId", net.map(|v| &v.1))
            .opt("vpcId", net.map(|v| &v.0))
            .leaf("availabilityZone", l.zone_of(i))
            .leaf("description", "")
            .leaf("ownerId", &account)
            .leaf("requesterManaged", false)
            .leaf("status", "in-use")
            .opt("macAddress", addr.map(|a| &a.mac).or(nic.mac.as_ref()))
            .opt(
                "privateIpAddress",
                addr.map(|a| &a.ip).or(nic.fixed_ip.as_ref()),
            )
            .leaf("sourceDestCheck", true)
            .el_opt(
                "association",
                addr.and_then(|a| a.floating_ip.as_ref()),
                |x, ip| {
                    x.leaf("publicIp", ip)
                        .leaf("publicDnsName", "")
                        .leaf("ipOwnerId", &account);
                },
            )
            .leaf("interfaceType", "interface")
            .set("groupSet", &groups, |x, (gid, gn)| {
                x.leaf("groupId", gid).leaf("groupName", gn);
            })
            .el("attachment", |x| {
                x.leaf(
                    "attachmentId",
                    corral_api_types::ec2::derive_id("eni-attach", "NicAttachment", id),
                )
                .leaf("instanceId", instance_id(&i.metadata.uid))
                .leaf("instanceOwnerId", &account)
                .leaf("deviceIndex", n)
                .leaf("status", "attached")
                .leaf("deleteOnTermination", true);
            })
            .set("tagSet", &[] as &[u8], |_, _| {});
    });
    x.opt("nextToken", next);
    Ok(x)
}

pub async fn describe_route_tables(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("RouteTableId")?;
    check_ids(
        &ids,
        &["rtb"],
        "InvalidRouteTableID.Malformed",
        "route table id",
    )?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "routeTableIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "route-table-id",
            "vpc-id",
            "association.main",
            "association.subnet-id",
            "owner-id",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut nets = list_all::<Network>(ctx.store, ctx.project()).await?;
    let rid = |n: &Network| route_table_id(&n.metadata.uid);
    if let Some(missing) = ids.iter().find(|id| !nets.iter().any(|n| rid(n) == **id)) {
        return Err(Ec2Error::client(
            "InvalidRouteTableID.NotFound",
            format!("The routeTable ID '{missing}' does not exist"),
        ));
    }
    let account = ctx.account();
    nets.retain(|n| ids.is_empty() || ids.contains(&rid(n)));
    nets.retain(|n| {
        filters.matches(
            |f| match f {
                "route-table-id" => one(rid(n)),
                "vpc-id" => one(n.ec2_id()),
                "association.main" => b(true),
                "association.subnet-id" => one(subnet_id(&n.metadata.uid)),
                _ => one(account.clone()),
            },
            &Default::default(),
        )
    });
    nets.sort_by_key(rid);
    let (nets, next) = page.apply(nets, rid);
    let mut x = Xml::new();
    x.set("routeTableSet", &nets, |x, n| {
        x.leaf("routeTableId", rid(n))
            .leaf("vpcId", n.ec2_id())
            .leaf("ownerId", &account)
            .set("routeSet", &[&n.spec.cidr], |x, c| {
                x.leaf("destinationCidrBlock", c)
                    .leaf("gatewayId", "local")
                    .leaf("state", "active")
                    .leaf("origin", "CreateRouteTable");
            })
            .set("associationSet", &[()], |x, _| {
                x.leaf(
                    "routeTableAssociationId",
                    corral_api_types::ec2::derive_id(
                        "rtbassoc",
                        "RouteTableAssociation",
                        &n.metadata.uid,
                    ),
                )
                .leaf("routeTableId", rid(n))
                .leaf("main", true)
                .el("associationState", |x| {
                    x.leaf("state", "associated");
                });
            })
            .set("propagatingVgwSet", &[] as &[u8], |_, _| {})
            .set("tagSet", &[] as &[u8], |_, _| {});
    });
    x.opt("nextToken", next);
    Ok(x)
}
