//! Security groups: Create/Describe/Delete and Authorize/Revoke for
//! ingress and egress, from the classic flat parameters (as
//! euca-authorize sends them) or `IpPermissions.N`.
//!
//! A rule's `cidr` holds either family: EC2's `IpRanges.M.CidrIp` and
//! `Ipv6Ranges.M.CidrIpv6` both land there, kept as written, and are told
//! apart again on the way out by [`spelled_ipv6`] (the rule api-types'
//! `IpCidr` parses by). A new VPC group's default egress is IPv4 only, as
//! in an AWS VPC without an IPv6 block (Corral's VPCs have none).

use corral_api_types::ec2::{derive_id, resource_id, NAME_ANNOTATION};
use corral_api_types::net::{spelled_ipv6, IpCidr};
use corral_api_types::{
    Instance, Network, Protocol, Resource, SecurityGroup, SecurityGroupRule, SecurityGroupSpec,
};

use super::default_groups::{
    default_group, ensure_defaults, vpc_of, DEFAULT_GROUP, DEFAULT_GROUP_ANNOTATION,
};
use super::ids::{SECURITY_GROUP, VPC};
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::objects::{self, ec2_name, new_uid, place_name, tag_specs, Tagged};
use crate::page::Page;
use crate::query::{clip, Params};
use crate::xml::Xml;

/// Annotation with the VPC a group was created in (groups are not tied to
/// a Network in Corral; EC2 tools read it back).
pub const VPC_ANNOTATION: &str = "ec2.corral/vpc-id";

/// The id of the project's default VPC, if it exists.
async fn default_vpc_id(ctx: &Ctx<'_>) -> Result<Option<String>> {
    Ok(ctx
        .store
        .get::<Network>(ctx.project(), super::vpcs::DEFAULT_NETWORK)
        .await?
        .map(|n| n.ec2_id()))
}

/// Whether `g` is in the default VPC `default_vpc` (or in none): where a
/// group name without a VPC points, as in EC2.
fn in_default_vpc(g: &SecurityGroup, default_vpc: Option<&str>) -> bool {
    vpc_of(g).is_none() || vpc_of(g) == default_vpc
}

/// Resolves a group by id or EC2 name among `groups`. A name means a
/// group of the default VPC `default_vpc` (or of none), as in EC2, where
/// group names are unique per VPC.
fn resolve<'a>(
    groups: &'a [SecurityGroup],
    id: Option<&str>,
    name: Option<&str>,
    default_vpc: Option<&str>,
) -> Result<&'a SecurityGroup> {
    if let Some(id) = id {
        SECURITY_GROUP.check_one(id)?;
        return SECURITY_GROUP.find(groups, id, |g| g.ec2_id());
    }
    let name = name.ok_or_else(|| Ec2Error::missing("GroupId"))?;
    groups
        .iter()
        .find(|g| ec2_name(&g.metadata) == name && in_default_vpc(g, default_vpc))
        .ok_or_else(|| SECURITY_GROUP.not_found(name))
}

pub async fn create(ctx: &Ctx<'_>) -> Result<Xml> {
    let name = ctx.params.required("GroupName")?.to_string();
    let description = ctx.params.required("GroupDescription")?.to_string();
    if name.len() > 255 || name.starts_with("sg-") {
        return Err(Ec2Error::invalid_value(
            "GroupName must be at most 255 characters and must not start with sg-",
        ));
    }
    let tags = tag_specs(ctx.params, "security-group")?;
    let given = match ctx.params.get_nonempty("VpcId") {
        Some(v) => {
            let Some(n) = super::vpcs::find_vpc(ctx, v).await? else {
                return Err(VPC.not_found(v));
            };
            Some(n)
        }
        None => None,
    };
    // Names are unique per VPC: `default` is taken in every one.
    let default_vpc = default_vpc_id(ctx).await?;
    let in_vpc = |g: &SecurityGroup| match &given {
        Some(n) => vpc_of(g) == Some(n.ec2_id().as_str()),
        None => in_default_vpc(g, default_vpc.as_deref()),
    };
    let groups = ctx.list::<SecurityGroup>().await?;
    if name == DEFAULT_GROUP
        || groups
            .iter()
            .any(|g| ec2_name(&g.metadata) == name && in_vpc(g))
    {
        return Err(Ec2Error::client(
            "InvalidGroup.Duplicate",
            format!(
                "The security group '{}' already exists for VPC '{}'",
                clip(&name),
                given
                    .as_ref()
                    .map(|n| n.ec2_id())
                    .or(default_vpc.clone())
                    .unwrap_or_default()
            ),
        ));
    }
    ctx.gate()?;
    // Without a VpcId, the default VPC (made when missing, with its group).
    let vpc = match given {
        Some(n) => n,
        None => {
            let n = super::vpcs::default_network(ctx).await?;
            default_group(ctx, &n).await?;
            n
        }
    };
    let vpc = Some(vpc.ec2_id());
    let uid = new_uid(ctx.project(), SecurityGroup::KIND, None, 0);
    let id = resource_id(SecurityGroup::KIND, &uid).unwrap_or_default();
    let spec = SecurityGroupSpec {
        description,
        ingress: vec![],
        // VPC groups start with "allow all outbound", as in EC2.
        egress: vec![SecurityGroupRule {
            protocol: Protocol::All,
            cidr: Some("0.0.0.0/0".into()),
            ..Default::default()
        }],
        tags,
    };
    let mut g = SecurityGroup::new(ctx.project(), "", spec);
    g.metadata.uid = uid;
    place_name(&mut g.metadata, &name, &id);
    // Another VPC's group holds the plain name: this one goes by its id.
    if groups.iter().any(|o| o.metadata.name == g.metadata.name) {
        g.metadata.name = id.clone();
        g.metadata
            .annotations
            .insert(NAME_ANNOTATION.into(), name.clone());
    }
    if let Some(v) = vpc {
        g.metadata.annotations.insert(VPC_ANNOTATION.into(), v);
    }
    let g = match objects::create(ctx.store, g).await {
        Err(e) if e.code == "IncorrectState" => {
            return Err(Ec2Error::client(
                "InvalidGroup.Duplicate",
                format!("The security group '{}' already exists", clip(&name)),
            ))
        }
        other => other?,
    };
    let mut x = Xml::new();
    x.leaf("return", true)
        .leaf("groupId", g.ec2_id())
        .tags("tagSet", g.tags());
    Ok(x)
}

fn proto_out(p: Protocol) -> String {
    match p {
        Protocol::All => "-1".into(),
        other => other.to_string(),
    }
}

/// Rules grouped into IpPermissions: one per (protocol, from, to).
fn permissions(rules: &[SecurityGroupRule]) -> Vec<Vec<&SecurityGroupRule>> {
    let mut out: Vec<Vec<&SecurityGroupRule>> = Vec::new();
    for r in rules {
        match out.iter_mut().find(|p| {
            p[0].protocol == r.protocol
                && p[0].from_port == r.from_port
                && p[0].to_port == r.to_port
        }) {
            Some(p) => p.push(r),
            None => out.push(vec![r]),
        }
    }
    out
}

fn write_permissions(
    x: &mut Xml,
    name: &str,
    rules: &[SecurityGroupRule],
    groups: &[SecurityGroup],
    account: &str,
) {
    let perms = permissions(rules);
    x.set(name, &perms, |x, p| {
        let first = p[0];
        x.leaf("ipProtocol", proto_out(first.protocol));
        if has_ports(first.protocol) {
            x.leaf("fromPort", first.from_port.unwrap_or(-1))
                .leaf("toPort", first.to_port.unwrap_or(-1));
        }
        let peers: Vec<&&SecurityGroupRule> =
            p.iter().filter(|r| r.source_group.is_some()).collect();
        x.set("groups", &peers, |x, r| {
            let src = r.source_group.as_deref().unwrap_or_default();
            let g = groups.iter().find(|g| g.metadata.name == src);
            x.leaf("userId", account)
                .opt("groupId", g.map(|g| g.ec2_id()))
                .leaf("groupName", g.map(|g| ec2_name(&g.metadata)).unwrap_or(src))
                .opt("description", r.description.as_deref());
        });
        for (set, leaf, ipv6) in [
            ("ipRanges", "cidrIp", false),
            ("ipv6Ranges", "cidrIpv6", true),
        ] {
            let ranges: Vec<(&str, Option<&str>)> = p
                .iter()
                .filter_map(|r| Some((cidr_of(r, ipv6)?, r.description.as_deref())))
                .collect();
            x.set(set, &ranges, |x, (cidr, description)| {
                x.leaf(leaf, *cidr).opt("description", *description);
            });
        }
        x.set("prefixListIds", &[] as &[u8], |_, _| {});
    });
}

/// Whether EC2 shows the protocol's `fromPort` and `toPort`: tcp, udp,
/// icmp, and icmpv6 (always -1 here: Corral's ICMPv6 rules cover every
/// type, see [`proto_ports`]).
fn has_ports(p: Protocol) -> bool {
    !matches!(p, Protocol::All | Protocol::Number(_)) || p == ICMPV6
}

const ICMPV6: Protocol = Protocol::Number(58);

/// The rule's CIDR block if it is of the family asked for (EC2's
/// `IpRanges` or, `ipv6`, `Ipv6Ranges`).
fn cidr_of(r: &SecurityGroupRule, ipv6: bool) -> Option<&str> {
    r.cidr.as_deref().filter(|c| spelled_ipv6(c) == ipv6)
}

fn rule_values(g: &SecurityGroup, groups: &[SecurityGroup], f: &str) -> Vec<String> {
    let (rules, field) = match f.strip_prefix("egress.") {
        Some(rest) => (&g.spec.egress, rest),
        None => (&g.spec.ingress, f),
    };
    rules
        .iter()
        .filter_map(|r| match field {
            "ip-permission.cidr" => cidr_of(r, false).map(str::to_string),
            "ip-permission.ipv6-cidr" => cidr_of(r, true).map(str::to_string),
            "ip-permission.from-port" => r.from_port.map(|p| p.to_string()),
            "ip-permission.to-port" => r.to_port.map(|p| p.to_string()),
            "ip-permission.protocol" => Some(proto_out(r.protocol)),
            "ip-permission.group-name" => r.source_group.as_ref().map(|s| {
                groups
                    .iter()
                    .find(|g| &g.metadata.name == s)
                    .map(|g| ec2_name(&g.metadata).to_string())
                    .unwrap_or(s.clone())
            }),
            "ip-permission.group-id" => r.source_group.as_ref().and_then(|s| {
                groups
                    .iter()
                    .find(|g| &g.metadata.name == s)
                    .map(|g| g.ec2_id())
            }),
            _ => None,
        })
        .collect()
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let names = ctx.params.list("GroupName")?;
    let ids = SECURITY_GROUP.list(ctx.params)?;
    let page = Page::parse(
        ctx.params,
        !ids.is_empty() || !names.is_empty(),
        SECURITY_GROUP.list_name,
        5,
    )?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "description",
            "group-id",
            "group-name",
            "owner-id",
            "vpc-id",
            "ip-permission.cidr",
            "ip-permission.ipv6-cidr",
            "ip-permission.from-port",
            "ip-permission.group-id",
            "ip-permission.group-name",
            "ip-permission.protocol",
            "ip-permission.to-port",
            "egress.ip-permission.cidr",
            "egress.ip-permission.ipv6-cidr",
            "egress.ip-permission.from-port",
            "egress.ip-permission.group-id",
            "egress.ip-permission.group-name",
            "egress.ip-permission.protocol",
            "egress.ip-permission.to-port",
        ],
        true,
    )?;
    ctx.gate()?;
    ensure_defaults(ctx).await;
    let groups = ctx.list::<SecurityGroup>().await?;
    let default_vpc = default_vpc_id(ctx).await?;
    // A name means a group of the default VPC, as in EC2.
    let named = |g: &SecurityGroup, n: &str| {
        ec2_name(&g.metadata) == n && in_default_vpc(g, default_vpc.as_deref())
    };
    for id in &ids {
        if !groups.iter().any(|g| g.ec2_id() == *id) {
            return Err(SECURITY_GROUP.not_found(id));
        }
    }
    for n in &names {
        if !groups.iter().any(|g| named(g, n)) {
            return Err(SECURITY_GROUP.not_found(n));
        }
    }
    let account = ctx.account();
    let mut items: Vec<&SecurityGroup> = groups
        .iter()
        .filter(|g| ids.is_empty() || ids.contains(&g.ec2_id()))
        .filter(|g| names.is_empty() || names.iter().any(|n| named(g, n)))
        .filter(|g| {
            filters.matches(
                |f| match f {
                    "description" => one(g.spec.description.clone()),
                    "group-id" => one(g.ec2_id()),
                    "group-name" => one(ec2_name(&g.metadata)),
                    "owner-id" => one(account.clone()),
                    "vpc-id" => g
                        .metadata
                        .annotations
                        .get(VPC_ANNOTATION)
                        .cloned()
                        .into_iter()
                        .collect(),
                    other => rule_values(g, &groups, other),
                },
                g.tags(),
            )
        })
        .collect();
    items.sort_by_key(|g| g.ec2_id());
    let (items, next) = page.apply(items, |g| g.ec2_id());
    let mut x = Xml::new();
    x.set("securityGroupInfo", &items, |x, g| {
        x.leaf("ownerId", &account)
            .leaf("groupId", g.ec2_id())
            .leaf("groupName", ec2_name(&g.metadata))
            .leaf("groupDescription", &g.spec.description)
            .opt("vpcId", g.metadata.annotations.get(VPC_ANNOTATION));
        write_permissions(x, "ipPermissions", &g.spec.ingress, &groups, &account);
        write_permissions(x, "ipPermissionsEgress", &g.spec.egress, &groups, &account);
        x.tags("tagSet", g.tags());
    });
    x.opt("nextToken", next);
    Ok(x)
}

pub async fn delete(ctx: &Ctx<'_>) -> Result<Xml> {
    let groups = ctx.list::<SecurityGroup>().await?;
    let default_vpc = default_vpc_id(ctx).await?;
    let g = resolve(
        &groups,
        ctx.params.get_nonempty("GroupId"),
        ctx.params.get_nonempty("GroupName"),
        default_vpc.as_deref(),
    )?;
    if g.metadata
        .annotations
        .contains_key(DEFAULT_GROUP_ANNOTATION)
    {
        return Err(Ec2Error::client(
            "CannotDelete",
            format!(
                "the specified group: \"{}\" name: \"{DEFAULT_GROUP}\" cannot be deleted by a user",
                g.ec2_id()
            ),
        ));
    }
    let name = &g.metadata.name;
    let instances = ctx.list::<Instance>().await?;
    let used = instances.iter().any(|i| {
        i.metadata.deletion_timestamp.is_none()
            && i.spec.nics.iter().any(|n| n.security_groups.contains(name))
    });
    let referenced = groups.iter().any(|o| {
        o.metadata.name != *name
            && o.spec
                .ingress
                .iter()
                .chain(&o.spec.egress)
                .any(|r| r.source_group.as_ref() == Some(name))
    });
    if used || referenced {
        return Err(Ec2Error::client(
            "DependencyViolation",
            format!("resource {} has a dependent object", g.ec2_id()),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, g).await?;
    let mut x = Xml::new();
    x.leaf("return", true).leaf("groupId", g.ec2_id());
    Ok(x)
}

fn port(p: &Params, name: &str) -> Result<Option<i32>> {
    Ok(p.int_in(name, -1, 65535)?.map(|v| v as i32))
}

/// One permission's protocol and ports, normalised to Corral's rules.
fn proto_ports(p: &Params) -> Result<(Protocol, Option<i32>, Option<i32>)> {
    let raw = p.required("IpProtocol")?;
    let proto = Protocol::parse(raw).ok_or_else(|| {
        Ec2Error::invalid_value(format!(
            "Invalid value '{}' for IP protocol. Unknown protocol.",
            clip(raw)
        ))
    })?;
    let (from, to) = (port(p, "FromPort")?, port(p, "ToPort")?);
    Ok(match proto {
        Protocol::Tcp | Protocol::Udp => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(Ec2Error::invalid_value(
                    "Invalid value 'Must specify both from and to ports with TCP/UDP.'",
                ));
            };
            (proto, Some(f), Some(t))
        }
        Protocol::Icmp => (proto, Some(from.unwrap_or(-1)), Some(to.unwrap_or(-1))),
        // EC2 matches ICMPv6 types and codes; Corral's rules (and the
        // node's ip6tables) take the protocol whole, so a narrower rule is
        // refused rather than widened.
        ICMPV6 if from.is_some_and(|f| f != -1) || to.is_some_and(|t| t != -1) => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid value 'FromPort={}, ToPort={}' for IP protocol 58 (icmpv6): \
                 Corral's ICMPv6 rules take every type and code; use -1 for both",
                from.unwrap_or(-1),
                to.unwrap_or(-1)
            )));
        }
        _ => (proto, None, None),
    })
}

/// The rules a request names (flat parameters or IpPermissions.N).
fn requested_rules(
    p: &Params,
    groups: &[SecurityGroup],
    default_vpc: Option<&str>,
) -> Result<Vec<SecurityGroupRule>> {
    let source = |id: Option<&str>, name: Option<&str>| -> Result<String> {
        Ok(resolve(groups, id, name, default_vpc)?
            .metadata
            .name
            .clone())
    };
    let mut out = Vec::new();
    let perms = p.structs("IpPermissions")?;
    if perms.is_empty() {
        let (protocol, from_port, to_port) = if p.get("IpProtocol").is_some() {
            proto_ports(p)?
        } else {
            (Protocol::All, None, None)
        };
        let base = SecurityGroupRule {
            protocol,
            from_port,
            to_port,
            ..Default::default()
        };
        if let Some(c) = p.get_nonempty("CidrIp") {
            out.push(SecurityGroupRule {
                cidr: Some(ipv4_range("CidrIp", c)?),
                ..base.clone()
            });
        }
        if let Some(n) = p.get_nonempty("SourceSecurityGroupName") {
            out.push(SecurityGroupRule {
                source_group: Some(source(None, Some(n))?),
                ..base
            });
        }
        if out.is_empty() {
            return Err(Ec2Error::missing("IpPermissions"));
        }
        return Ok(out);
    }
    for perm in perms {
        if !perm.sub("PrefixListIds").is_empty() {
            return Err(Ec2Error::invalid_value(
                "IpPermissions.N.PrefixListIds: prefix lists are not supported",
            ));
        }
        let (protocol, from_port, to_port) = proto_ports(&perm)?;
        let base = SecurityGroupRule {
            protocol,
            from_port,
            to_port,
            ..Default::default()
        };
        let before = out.len();
        for r in perm.structs("IpRanges")? {
            out.push(SecurityGroupRule {
                cidr: Some(ipv4_range(
                    "IpPermissions.N.IpRanges.M.CidrIp",
                    r.required("CidrIp")?,
                )?),
                description: r.get_nonempty("Description").map(str::to_string),
                ..base.clone()
            });
        }
        for r in perm.structs("Ipv6Ranges")? {
            let cidr = r.required("CidrIpv6")?;
            if !spelled_ipv6(cidr) {
                return Err(Ec2Error::invalid_value(format!(
                    "Invalid value '{}' for IpPermissions.N.Ipv6Ranges.M.CidrIpv6: \
                     not an IPv6 CIDR block (IPv4 blocks go in IpRanges)",
                    clip(cidr)
                )));
            }
            out.push(SecurityGroupRule {
                cidr: Some(cidr.to_string()),
                description: r.get_nonempty("Description").map(str::to_string),
                ..base.clone()
            });
        }
        for g in perm.structs("Groups")? {
            out.push(SecurityGroupRule {
                source_group: Some(source(
                    g.get_nonempty("GroupId"),
                    g.get_nonempty("GroupName"),
                )?),
                description: g.get_nonempty("Description").map(str::to_string),
                ..base.clone()
            });
        }
        if out.len() == before {
            return Err(Ec2Error::missing("IpPermissions.N.IpRanges"));
        }
    }
    Ok(out)
}

/// An `IpRanges` block as given; an IPv6 one belongs in `Ipv6Ranges`.
fn ipv4_range(field: &str, cidr: &str) -> Result<String> {
    if spelled_ipv6(cidr) {
        return Err(Ec2Error::invalid_value(format!(
            "Invalid value '{}' for {field}: an IPv6 CIDR block goes in \
             IpPermissions.N.Ipv6Ranges.M.CidrIpv6",
            clip(cidr)
        )));
    }
    Ok(cidr.to_string())
}

/// Whether two rules' blocks are the same network (`2001:DB8::/32` is
/// `2001:db8::/32`), however written.
fn same_cidr(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a == b
                || matches!(
                    (a.parse::<IpCidr>(), b.parse::<IpCidr>()),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        (a, b) => a == b,
    }
}

fn same_rule(a: &SecurityGroupRule, b: &SecurityGroupRule) -> bool {
    a.protocol == b.protocol
        && a.from_port == b.from_port
        && a.to_port == b.to_port
        && same_cidr(a.cidr.as_deref(), b.cidr.as_deref())
        && a.source_group == b.source_group
}

/// Authorize (`add`) or revoke rules, on ingress or egress.
pub async fn change(ctx: &Ctx<'_>, ingress: bool, add: bool) -> Result<Xml> {
    // `euca-authorize default …`: the group exists before anyone made it.
    ensure_defaults(ctx).await;
    let groups = ctx.list::<SecurityGroup>().await?;
    let name_param = if ingress {
        ctx.params.get_nonempty("GroupName")
    } else {
        None
    };
    let default_vpc = default_vpc_id(ctx).await?;
    let g = resolve(
        &groups,
        ctx.params.get_nonempty("GroupId"),
        name_param,
        default_vpc.as_deref(),
    )?;
    let rules = requested_rules(ctx.params, &groups, default_vpc.as_deref())?;
    let current = if ingress {
        &g.spec.ingress
    } else {
        &g.spec.egress
    };
    if add {
        if let Some(dup) = rules
            .iter()
            .find(|r| current.iter().any(|c| same_rule(c, r)))
        {
            return Err(Ec2Error::client(
                "InvalidPermission.Duplicate",
                format!(
                    "the specified rule \"peer: {}, {}, ALLOW\" already exists",
                    dup.cidr
                        .clone()
                        .or(dup.source_group.clone())
                        .unwrap_or_default(),
                    proto_out(dup.protocol)
                ),
            ));
        }
    } else if let Some(missing) = rules
        .iter()
        .find(|r| !current.iter().any(|c| same_rule(c, r)))
    {
        return Err(Ec2Error::client(
            "InvalidPermission.NotFound",
            format!(
                "The specified rule does not exist in this security group (peer {}, protocol {})",
                missing
                    .cidr
                    .clone()
                    .or(missing.source_group.clone())
                    .unwrap_or_default(),
                proto_out(missing.protocol)
            ),
        ));
    }
    ctx.gate()?;
    let written: SecurityGroup = objects::update(
        ctx.store,
        ctx.project(),
        &g.metadata.name,
        |sg: &mut SecurityGroup| {
            let list = if ingress {
                &mut sg.spec.ingress
            } else {
                &mut sg.spec.egress
            };
            if add {
                for r in &rules {
                    if !list.iter().any(|c| same_rule(c, r)) {
                        list.push(r.clone());
                    }
                }
                let max = corral_api_types::kinds::security_group::MAX_RULES;
                if list.len() > max {
                    return Err(Ec2Error::client(
                        "RulesPerSecurityGroupLimitExceeded",
                        format!(
                            "The maximum number of rules per security group has been reached: \
                             {max} {} rules",
                            if ingress { "inbound" } else { "outbound" }
                        ),
                    ));
                }
            } else {
                list.retain(|c| !rules.iter().any(|r| same_rule(c, r)));
            }
            Ok(())
        },
    )
    .await?;
    let mut x = Xml::new();
    x.leaf("return", true);
    if add {
        let account = ctx.account();
        x.set("securityGroupRuleSet", &rules, |x, r| {
            let rid = derive_id(
                "sgr",
                "SecurityGroupRule",
                &format!("{}/{ingress}/{r:?}", written.metadata.uid),
            );
            x.leaf("securityGroupRuleId", rid)
                .leaf("groupId", written.ec2_id())
                .leaf("groupOwnerId", &account)
                .leaf("isEgress", !ingress)
                .leaf("ipProtocol", proto_out(r.protocol))
                .leaf("fromPort", r.from_port.unwrap_or(-1))
                .leaf("toPort", r.to_port.unwrap_or(-1))
                .opt("cidrIpv4", cidr_of(r, false))
                .opt("cidrIpv6", cidr_of(r, true))
                .opt("description", r.description.as_deref());
        });
    }
    Ok(x)
}
