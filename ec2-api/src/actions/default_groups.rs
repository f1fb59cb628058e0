//! What every EC2 project and VPC has before anyone makes it: the
//! project's default VPC (the Network `default`, see `vpcs`) and each
//! VPC's security group `default` — members reach each other on every
//! protocol, everything may go out, it cannot be deleted, and RunInstances
//! uses it when no group is named. Made on the calls that expect them.

use corral_api_types::ec2::{resource_id, NAME_ANNOTATION};
use corral_api_types::{
    Network, Protocol, Resource, SecurityGroup, SecurityGroupRule, SecurityGroupSpec,
};

use super::security_groups::VPC_ANNOTATION;
use super::vpcs::is_default;
use super::Ctx;
use crate::error::Result;
use crate::objects::{self, ec2_name, new_uid, Tagged};

/// Marks the group EC2 made for a VPC: named `default`, not deletable.
pub const DEFAULT_GROUP_ANNOTATION: &str = "ec2.corral/default-group";

/// The VPC id a group belongs to, if any.
pub(super) fn vpc_of(g: &SecurityGroup) -> Option<&str> {
    g.metadata
        .annotations
        .get(VPC_ANNOTATION)
        .map(String::as_str)
}

/// Whether `g` is the default group of the VPC `vpc` (the default VPC's
/// also when it predates the VPC annotation).
fn is_default_of(g: &SecurityGroup, vpc: &Network) -> bool {
    ec2_name(&g.metadata) == DEFAULT_GROUP
        && match vpc_of(g) {
            Some(v) => v == vpc.ec2_id(),
            None => is_default(vpc),
        }
}

/// The name of every VPC's default group.
pub const DEFAULT_GROUP: &str = "default";

/// The default security group of `vpc`, made when missing: members may
/// reach each other on every protocol, everything may go out (EC2's
/// default group). Idempotent under concurrent callers: the group's uid
/// (and so its name) is derived from the VPC's, so two creates collide.
pub async fn default_group(ctx: &Ctx<'_>, vpc: &Network) -> Result<SecurityGroup> {
    let find = |groups: Vec<SecurityGroup>| groups.into_iter().find(|g| is_default_of(g, vpc));
    if let Some(g) = find(ctx.list::<SecurityGroup>().await?) {
        return Ok(g);
    }
    let token = format!("default-group/{}", vpc.metadata.uid);
    let uid = new_uid(ctx.project(), SecurityGroup::KIND, Some(&token), 0);
    let id = resource_id(SecurityGroup::KIND, &uid).unwrap_or_default();
    // The default VPC's group is `default` in the native API too; other
    // VPCs' are named by id (names are unique per project there, per VPC
    // in EC2).
    let name = if is_default(vpc) {
        DEFAULT_GROUP
    } else {
        id.as_str()
    };
    let mut g = SecurityGroup::new(
        ctx.project(),
        name,
        SecurityGroupSpec {
            description: format!("default VPC security group of {}", vpc.ec2_id()),
            ingress: vec![SecurityGroupRule {
                protocol: Protocol::All,
                source_group: Some(name.to_string()),
                ..Default::default()
            }],
            egress: vec![SecurityGroupRule {
                protocol: Protocol::All,
                cidr: Some("0.0.0.0/0".into()),
                ..Default::default()
            }],
            tags: Default::default(),
        },
    );
    g.metadata.uid = uid;
    let a = &mut g.metadata.annotations;
    a.insert(VPC_ANNOTATION.into(), vpc.ec2_id());
    a.insert(DEFAULT_GROUP_ANNOTATION.into(), "true".into());
    if name != DEFAULT_GROUP {
        a.insert(NAME_ANNOTATION.into(), DEFAULT_GROUP.into());
    }
    match objects::create(ctx.store, g).await {
        Ok(g) => Ok(g),
        // Made meanwhile by a concurrent request (or a group of that name
        // is in the way: say so).
        Err(e) => find(ctx.list::<SecurityGroup>().await?).ok_or(e),
    }
}

/// The project's default VPC and its default group, made when missing,
/// for the calls where EC2 users expect them to exist already. A failure
/// (a quota reached) is logged, not answered: the call goes on without.
pub async fn ensure_defaults(ctx: &Ctx<'_>) {
    if ctx.dry_run {
        return;
    }
    let made = async {
        let vpc = super::vpcs::default_network(ctx).await?;
        default_group(ctx, &vpc).await
    };
    if let Err(e) = made.await {
        tracing::warn!(project = %ctx.project(), error = %e.message, "making the default VPC and group");
    }
}
