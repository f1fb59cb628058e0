//! DescribeRegions, DescribeAvailabilityZones, DescribeAccountAttributes.

use corral_api_types::{Network, Project};

use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::objects::Tagged;
use crate::xml::Xml;

pub async fn describe_regions(ctx: &Ctx<'_>) -> Result<Xml> {
    let names = ctx.params.list("RegionName")?;
    let filters = Filters::parse(
        ctx.params,
        &["endpoint", "region-name", "opt-in-status"],
        false,
    )?;
    let region = &ctx.config.region;
    for n in &names {
        if n != region {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid region: {}",
                crate::query::clip(n)
            )));
        }
    }
    ctx.gate()?;
    let endpoint = ctx.host.clone();
    let empty = Default::default();
    let show = filters.matches(
        |f| match f {
            "endpoint" => one(endpoint.clone()),
            "region-name" => one(region.clone()),
            _ => one("opt-in-not-required"),
        },
        &empty,
    );
    let items: Vec<&String> = if show { vec![region] } else { vec![] };
    let mut x = Xml::new();
    x.set("regionInfo", &items, |x, r| {
        x.leaf("regionName", r)
            .leaf("regionEndpoint", &endpoint)
            .leaf("optInStatus", "opt-in-not-required");
    });
    Ok(x)
}

/// The id of the zone at `index` of [`Ctx::zones`] (`corral-1-az1`, …).
pub fn zone_id(region: &str, index: usize) -> String {
    format!("{region}-az{}", index + 1)
}

pub async fn describe_zones(ctx: &Ctx<'_>) -> Result<Xml> {
    let names = ctx.params.list("ZoneName")?;
    let ids = ctx.params.list("ZoneId")?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "group-name",
            "group-long-name",
            "message",
            "opt-in-status",
            "region-name",
            "state",
            "zone-id",
            "zone-name",
            "zone-type",
            "network-border-group",
        ],
        false,
    )?;
    let zones = ctx.zones().await?;
    let region = ctx.config.region.clone();
    let zone_id = |i: usize| zone_id(&region, i);
    for n in &names {
        if !zones.contains(n) {
            return Err(Ec2Error::invalid_value(format!(
                "The zone '{}' does not exist.",
                crate::query::clip(n)
            )));
        }
    }
    for id in &ids {
        if !(0..zones.len()).any(|i| zone_id(i) == *id) {
            return Err(Ec2Error::invalid_value(format!(
                "The zone id '{}' does not exist.",
                crate::query::clip(id)
            )));
        }
    }
    ctx.gate()?;
    let empty = Default::default();
    let items: Vec<(String, String)> = zones
        .iter()
        .enumerate()
        .map(|(i, z)| (z.clone(), zone_id(i)))
        .filter(|(z, id)| {
            (names.is_empty() || names.contains(z)) && (ids.is_empty() || ids.contains(id))
        })
        .filter(|(z, id)| {
            filters.matches(
                |f| match f {
                    "zone-name" => one(z.clone()),
                    "zone-id" => one(id.clone()),
                    "region-name" | "group-name" | "group-long-name" | "network-border-group" => {
                        one(region.clone())
                    }
                    "state" => one("available"),
                    "zone-type" => one("availability-zone"),
                    "opt-in-status" => one("opt-in-not-required"),
                    _ => vec![],
                },
                &empty,
            )
        })
        .collect();
    let mut x = Xml::new();
    x.set("availabilityZoneInfo", &items, |x, (z, id)| {
        x.leaf("zoneName", z)
            .leaf("zoneState", "available")
            .leaf("regionName", &region)
            .leaf("zoneId", id)
            .leaf("groupName", &region)
            .leaf("networkBorderGroup", &region)
            .leaf("zoneType", "availability-zone")
            .leaf("optInStatus", "opt-in-not-required")
            .set("messageSet", &[] as &[String], |_, _| {});
    });
    Ok(x)
}

pub async fn describe_account_attributes(ctx: &Ctx<'_>) -> Result<Xml> {
    let wanted = ctx.params.list("AttributeName")?;
    const KNOWN: &[&str] = &[
        "supported-platforms",
        "default-vpc",
        "max-instances",
        "max-elastic-ips",
        "vpc-max-elastic-ips",
        "vpc-max-security-groups-per-interface",
    ];
    for w in &wanted {
        if !KNOWN.contains(&w.as_str()) {
            return Err(Ec2Error::invalid_value(format!(
                "The attribute '{}' is not valid",
                crate::query::clip(w)
            )));
        }
    }
    ctx.gate()?;
    let project = ctx.project();
    let default_vpc = match ctx.store.get::<Network>(project, "default").await? {
        Some(n) => n.ec2_id(),
        None => "none".to_string(),
    };
    let quotas = ctx
        .store
        .get::<Project>("", project)
        .await?
        .map(|p| p.spec.quotas)
        .unwrap_or_default();
    let mut attrs: Vec<(&str, Vec<String>)> = vec![
        ("supported-platforms", vec!["VPC".to_string()]),
        ("default-vpc", vec![default_vpc]),
    ];
    // Limits are reported only where the project has a quota: Corral has
    // no implicit ones.
    if let Some(n) = quotas.instances {
        attrs.push(("max-instances", vec![n.to_string()]));
    }
    if let Some(n) = quotas.addresses {
        attrs.push(("max-elastic-ips", vec![n.to_string()]));
        attrs.push(("vpc-max-elastic-ips", vec![n.to_string()]));
    }
    attrs.retain(|(n, _)| wanted.is_empty() || wanted.iter().any(|w| w == n));
    let mut x = Xml::new();
    x.set("accountAttributeSet", &attrs, |x, (name, values)| {
        x.leaf("attributeName", name)
            .set("attributeValueSet", values, |x, v| {
                x.leaf("attributeValue", v);
            });
    });
    Ok(x)
}
