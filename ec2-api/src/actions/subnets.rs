//! Subnets and route tables: a Network's one subnet (DescribeSubnets,
//! CreateSubnet) and its one route table (DescribeRouteTables). See
//! `vpcs` for how a VPC made by CreateVpc gets its subnet.
//!
//! The subnet's tags are its own, not the VPC's `spec.tags`: they live in
//! the annotation `ec2.corral/subnet-tags` (a JSON object) once CreateSubnet
//! or CreateTags/DeleteTags on the subnet id set them; until then (Networks
//! from manifests) the subnet shows the Network's tags.

use std::collections::BTreeMap;

use corral_api_types::ec2::{route_table_id, subnet_id};
use corral_api_types::net::Ipv4Cidr;
use corral_api_types::{Network, NetworkSpec, Resource, NETWORK_PREFIX_RANGE};

use super::describe::{page_answer, Describe, NO_TAGS};
use super::ids::{ROUTE_TABLE, SUBNET, VPC};
use super::vpcs::{
    has_subnet, is_default, network_by_vpc, SUBNET_PENDING_ANNOTATION, VPC_CIDR_ANNOTATION,
};
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one};
use crate::objects::{self, tag_specs, Tagged};
use crate::query::clip;
use crate::xml::Xml;

const SUBNET_FILTERS: &[&str] = &[
    "subnet-id",
    "vpc-id",
    "cidr-block",
    "cidr",
    "availability-zone",
    "availabilityZone",
    "default-for-az",
    "defaultForAz",
    "state",
    "owner-id",
];

fn sid(n: &Network) -> String {
    subnet_id(&n.metadata.uid)
}

/// Where a subnet's own tags are kept (a JSON object).
pub const SUBNET_TAGS_ANNOTATION: &str = "ec2.corral/subnet-tags";

/// The tags of a Network's subnet: its own once set, else the Network's.
pub fn subnet_tags(n: &Network) -> BTreeMap<String, String> {
    n.metadata
        .annotations
        .get(SUBNET_TAGS_ANNOTATION)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| n.spec.tags.clone())
}

/// Sets the tags of a Network's subnet, leaving the VPC's alone.
pub fn set_subnet_tags(n: &mut Network, tags: &BTreeMap<String, String>) {
    n.metadata.annotations.insert(
        SUBNET_TAGS_ANNOTATION.into(),
        serde_json::to_string(tags).unwrap_or_default(),
    );
}

pub async fn describe_subnets(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &SUBNET, SUBNET_FILTERS)?;
    // The default VPC's subnet exists before anyone asks for it.
    super::default_groups::ensure_defaults(ctx).await;
    let mut nets = ctx.list::<Network>().await?;
    nets.retain(has_subnet);
    d.check_found(&SUBNET, &nets, sid)?;
    let zone = ctx.zones().await?.remove(0);
    let account = ctx.account();
    let field = |n: &Network, f: &str| match f {
        "subnet-id" => one(sid(n)),
        "vpc-id" => one(n.ec2_id()),
        "cidr-block" | "cidr" => one(n.spec.cidr.clone()),
        "availability-zone" | "availabilityZone" => one(zone.clone()),
        "default-for-az" | "defaultForAz" => b(is_default(n)),
        "state" => one("available"),
        _ => one(account.clone()),
    };
    let nets: Vec<(Network, BTreeMap<String, String>)> = nets
        .into_iter()
        .map(|n| {
            let t = subnet_tags(&n);
            (n, t)
        })
        .collect();
    let (nets, next) = d.select(nets, |(n, _)| sid(n), |(n, _), f| field(n, f), |(_, t)| t);
    Ok(page_answer("subnetSet", &nets, next, |x, (n, _)| {
        write_subnet(x, n, &zone, &account)
    }))
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
    x.leaf("subnetId", sid(n))
        .leaf("state", "available")
        .leaf("ownerId", account)
        .leaf("vpcId", n.ec2_id())
        .leaf("cidrBlock", &n.spec.cidr)
        .leaf("availableIpAddressCount", free)
        .leaf("availabilityZone", zone)
        .leaf("defaultForAz", is_default(n))
        .leaf("mapPublicIpOnLaunch", false)
        .leaf("assignIpv6AddressOnCreation", false)
        .empty_set("ipv6CidrBlockAssociationSet")
        .tags("tagSet", &subnet_tags(n));
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
        ctx.update(&n.metadata.name, |x: &mut Network| {
            x.metadata.annotations.remove(SUBNET_PENDING_ANNOTATION);
            set_subnet_tags(x, &tags);
            Ok(())
        })
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
    let conflict = || {
        Ec2Error::client(
            "InvalidSubnet.Conflict",
            format!("The CIDR '{cidr}' conflicts with another subnet"),
        )
    };
    recreate(
        ctx,
        n,
        cidr,
        |current| match current {
            None => Err(VPC.not_found(&n.ec2_id())),
            Some(c) if has_subnet(c) || c.metadata.uid != n.metadata.uid => Err(conflict()),
            Some(_) => Ok(()),
        },
        |current, fresh| {
            let a = &mut fresh.metadata.annotations;
            a.remove(SUBNET_PENDING_ANNOTATION);
            a.insert(VPC_CIDR_ANNOTATION.into(), current.spec.cidr.clone());
            set_subnet_tags(fresh, tags);
        },
    )
    .await
}

/// Recreates Network `n` under the same name and uid with `cidr`, while
/// `check` accepts the stored copy (`None`: it is gone); `edit` adjusts
/// the new copy's annotations, which start as the stored one's.
async fn recreate(
    ctx: &Ctx<'_>,
    n: &Network,
    cidr: &str,
    check: impl Fn(Option<&Network>) -> Result<()>,
    edit: impl Fn(&Network, &mut Network),
) -> Result<Network> {
    let (p, name) = (ctx.project(), n.metadata.name.clone());
    for _ in 0..16 {
        let current = ctx.store.get::<Network>(p, &name).await?;
        check(current.as_ref())?;
        let Some(current) = current else {
            return Err(VPC.not_found(&n.ec2_id()));
        };
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
        fresh.metadata.uid = current.metadata.uid.clone();
        fresh.metadata.labels = current.metadata.labels.clone();
        fresh.metadata.annotations = current.metadata.annotations.clone();
        edit(&current, &mut fresh);
        return objects::create(ctx.store, fresh).await;
    }
    Err(Ec2Error::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "RequestLimitExceeded",
        "The VPC was modified concurrently; retry the request.",
    ))
}

/// DeleteSubnet: the VPC is left without its one subnet (as CreateVpc made
/// it), so a later CreateSubnet can make it again and DeleteVpc can remove
/// it. A subnet with instances in it is `DependencyViolation`. A subnet
/// that was narrowed inside its VPC gives the Network back the VPC's CIDR
/// (recreated under the same name and uid, as [`narrow`] did).
pub async fn delete_subnet(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = ctx.params.required("SubnetId")?.to_string();
    let mut nets = ctx.list::<Network>().await?;
    nets.retain(has_subnet);
    let n = SUBNET.find(nets, &id, |n: &Network| sid(n))?;
    if super::vpcs::network_in_use(ctx, &n.metadata.name).await? {
        return Err(Ec2Error::client(
            "DependencyViolation",
            format!("The subnet '{id}' has dependencies and cannot be deleted."),
        ));
    }
    ctx.gate()?;
    match n.metadata.annotations.get(VPC_CIDR_ANNOTATION).cloned() {
        Some(vpc_cidr) => widen(ctx, &n, &vpc_cidr).await?,
        None => {
            ctx.update(&n.metadata.name, |x: &mut Network| {
                x.metadata
                    .annotations
                    .insert(SUBNET_PENDING_ANNOTATION.into(), "true".into());
                x.metadata.annotations.remove(SUBNET_TAGS_ANNOTATION);
                Ok(())
            })
            .await?;
        }
    }
    Ok(super::ok_return())
}

/// The inverse of [`narrow`]: the Network again has the VPC's CIDR and no
/// subnet.
async fn widen(ctx: &Ctx<'_>, n: &Network, vpc_cidr: &str) -> Result<()> {
    recreate(
        ctx,
        n,
        vpc_cidr,
        |current| match current {
            Some(c) if c.metadata.uid == n.metadata.uid && has_subnet(c) => Ok(()),
            _ => Err(SUBNET.not_found(&sid(n))),
        },
        |_, fresh| {
            let a = &mut fresh.metadata.annotations;
            a.remove(VPC_CIDR_ANNOTATION);
            a.remove(SUBNET_TAGS_ANNOTATION);
            a.insert(SUBNET_PENDING_ANNOTATION.into(), "true".into());
        },
    )
    .await?;
    Ok(())
}

const ROUTE_TABLE_FILTERS: &[&str] = &[
    "route-table-id",
    "vpc-id",
    "association.main",
    "association.subnet-id",
    "owner-id",
];

pub async fn describe_route_tables(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &ROUTE_TABLE, ROUTE_TABLE_FILTERS)?;
    let nets = ctx.list::<Network>().await?;
    let rid = |n: &Network| route_table_id(&n.metadata.uid);
    d.check_found(&ROUTE_TABLE, &nets, rid)?;
    let account = ctx.account();
    let field = |n: &Network, f: &str| match f {
        "route-table-id" => one(rid(n)),
        "vpc-id" => one(n.ec2_id()),
        "association.main" => b(true),
        "association.subnet-id" => one(sid(n)),
        _ => one(account.clone()),
    };
    let (nets, next) = d.select(nets, rid, field, |_| &NO_TAGS);
    Ok(page_answer("routeTableSet", &nets, next, |x, n| {
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
            .empty_set("propagatingVgwSet")
            .empty_set("tagSet");
    }))
}
