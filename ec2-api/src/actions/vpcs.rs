//! Networks through EC2: a Network is a VPC with exactly one subnet (and
//! one route table); the Network named `default` is the default VPC. This
//! file owns the VPCs (Describe/Create/Delete, CreateDefaultVpc,
//! DescribeVpcAttribute); `subnets` the subnets and route tables,
//! `network_interfaces` the instances' NICs.
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

use corral_api_types::ec2::resource_id;
use corral_api_types::{Instance, Network, NetworkSpec, Resource, SecurityGroup};

use super::describe::{page_answer, Describe};
use super::ids::VPC;
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one};
use crate::objects::{self, new_uid, tag_specs, Tagged};
use crate::query::clip;
use crate::xml::Xml;

/// Whether the Network is the default VPC.
pub fn is_default(n: &Network) -> bool {
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

/// DescribeVpcs' filters, as the EC2 API reference lists them, plus
/// `isDefault`: the name terraform's `data "aws_vpc" { default = true }`
/// sends (AWS takes it too).
const VPC_FILTERS: &[&str] = &[
    "vpc-id",
    "cidr",
    "cidr-block-association.cidr-block",
    "cidr-block-association.association-id",
    "cidr-block-association.state",
    "is-default",
    "isDefault",
    "state",
    "owner-id",
    "dhcp-options-id",
    "instance-tenancy",
];

pub async fn describe_vpcs(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &VPC, VPC_FILTERS)?;
    // The default VPC exists before anyone asks for it.
    super::default_groups::ensure_defaults(ctx).await;
    let nets = ctx.list::<Network>().await?;
    d.check_found(&VPC, &nets, |n| n.ec2_id())?;
    let account = ctx.account();
    let field = |n: &Network, f: &str| match f {
        "vpc-id" => one(n.ec2_id()),
        "cidr" | "cidr-block-association.cidr-block" => one(vpc_cidr(n)),
        "is-default" | "isDefault" => b(is_default(n)),
        "state" => one("available"),
        "cidr-block-association.state" => one("associated"),
        "cidr-block-association.association-id" => one(corral_api_types::ec2::derive_id(
            "vpc-cidr-assoc",
            "VpcCidr",
            &n.metadata.uid,
        )),
        "owner-id" => one(account.clone()),
        // dhcp-options-id, instance-tenancy
        _ => one("default"),
    };
    let (nets, next) = d.select(nets, |n| n.ec2_id(), field, |n| n.tags());
    Ok(page_answer("vpcSet", &nets, next, |x, n| {
        write_vpc(x, n, &account)
    }))
}

/// The Network that is the VPC `id`.
///
/// CreateSubnet and DeleteSubnet may recreate the Network (same name and
/// uid, see `subnets::narrow`): for the moment between its delete and its
/// create the VPC is not in the store, so a VPC not found is looked for
/// again a few times before it is `InvalidVpcID.NotFound` (terraform
/// creates a VPC's subnet and security group at the same time).
pub async fn network_by_vpc(ctx: &Ctx<'_>, id: &str) -> Result<Network> {
    VPC.check_one(id)?;
    find_vpc(ctx, id).await?.ok_or_else(|| VPC.not_found(id))
}

/// The Network that is the VPC `id`, if any (looked for again while it
/// may be being recreated; see [`network_by_vpc`]).
pub async fn find_vpc(ctx: &Ctx<'_>, id: &str) -> Result<Option<Network>> {
    for attempt in 0..=RECREATE_RETRIES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let found = ctx
            .list::<Network>()
            .await?
            .into_iter()
            .find(|n| n.ec2_id() == id);
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// How many times [`network_by_vpc`] looks again (20ms apart).
const RECREATE_RETRIES: usize = 10;

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
    // Every VPC comes with its default security group.
    super::default_groups::default_group(ctx, &n).await?;
    let mut x = Xml::new();
    x.el("vpc", |x| write_vpc(x, &n, &ctx.account()));
    Ok(x)
}

/// VPC sizes AWS allows: a /16 to a /28.
fn check_vpc_cidr(cidr: &str) -> Result<()> {
    let prefix = cidr
        .parse::<corral_api_types::net::Ipv4Cidr>()
        .ok()
        .map(|c| c.prefix());
    match prefix {
        Some(16..=28) => Ok(()),
        Some(_) => Err(Ec2Error::client(
            "InvalidVpc.Range",
            format!(
                "The CIDR '{}' is invalid: a VPC's block must be between /16 and /28.",
                clip(cidr)
            ),
        )),
        None => Err(Ec2Error::invalid_value(format!(
            "Value ({}) for parameter cidrBlock is invalid. This is not a valid CIDR block.",
            clip(cidr)
        ))),
    }
}

pub async fn create_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    let cidr = ctx.params.required("CidrBlock")?.to_string();
    check_vpc_cidr(&cidr)?;
    create_network(ctx, None, &cidr, false).await
}

pub async fn create_default_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    if ctx
        .store
        .get::<Network>(ctx.project(), DEFAULT_NETWORK)
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

/// Whether an instance not yet terminated (one EC2 still shows for a
/// while holds nothing) has a NIC on Network `name`.
pub async fn network_in_use(ctx: &Ctx<'_>, name: &str) -> Result<bool> {
    Ok(ctx
        .list::<Instance>()
        .await?
        .iter()
        .any(|i| !i.is_terminated() && i.spec.nics.iter().any(|nic| nic.network == name)))
}

pub async fn delete_vpc(ctx: &Ctx<'_>) -> Result<Xml> {
    let n = network_by_vpc(ctx, ctx.params.required("VpcId")?).await?;
    if network_in_use(ctx, &n.metadata.name).await? {
        return Err(Ec2Error::client(
            "DependencyViolation",
            format!(
                "The vpc '{}' has dependencies and cannot be deleted.",
                n.ec2_id()
            ),
        ));
    }
    // Its own groups must go first; its default group goes with it.
    let groups: Vec<SecurityGroup> = ctx
        .list::<SecurityGroup>()
        .await?
        .into_iter()
        .filter(|g| {
            g.metadata
                .annotations
                .get(super::security_groups::VPC_ANNOTATION)
                == Some(&n.ec2_id())
        })
        .collect();
    let is_default_group = |g: &SecurityGroup| {
        g.metadata
            .annotations
            .contains_key(super::default_groups::DEFAULT_GROUP_ANNOTATION)
    };
    if let Some(g) = groups.iter().find(|g| !is_default_group(g)) {
        return Err(Ec2Error::client(
            "DependencyViolation",
            format!(
                "The vpc '{}' has dependencies and cannot be deleted: security group {}.",
                n.ec2_id(),
                g.ec2_id()
            ),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &n).await?;
    for g in groups.iter().filter(|g| is_default_group(g)) {
        objects::delete(ctx.store, g).await?;
    }
    Ok(super::ok_return())
}
