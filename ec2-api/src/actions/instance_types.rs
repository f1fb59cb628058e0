//! DescribeInstanceTypes (complete InstanceTypeInfo objects from the
//! cluster's InstanceTypes), DescribeInstanceTypeOfferings (every type in
//! every location: any node may run any type) and
//! DescribeInstanceCreditSpecifications.

use corral_api_types::ec2::instance_id;
use corral_api_types::InstanceType;

use super::ids::INSTANCE;
use super::instances::visible_instances;
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::list_all;
use crate::page::Page;
use crate::xml::Xml;

/// Network interfaces EC2 clients are told an instance may have.
pub const MAX_NICS: u32 = 8;

const FILTERS: &[&str] = &[
    "instance-type",
    "current-generation",
    "bare-metal",
    "burstable-performance-supported",
    "free-tier-eligible",
    "hibernation-supported",
    "instance-storage-supported",
    "memory-info.size-in-mib",
    "processor-info.supported-architecture",
    "supported-root-device-type",
    "supported-usage-class",
    "supported-virtualization-type",
    "vcpu-info.default-vcpus",
    "vcpu-info.default-cores",
    "vcpu-info.default-threads-per-core",
    "instance-storage-info.total-size",
];

fn field(t: &InstanceType, f: &str) -> Vec<String> {
    let s = &t.spec;
    match f {
        "instance-type" => one(t.metadata.name.clone()),
        "current-generation" => b(true),
        "bare-metal"
        | "burstable-performance-supported"
        | "free-tier-eligible"
        | "hibernation-supported" => b(false),
        "instance-storage-supported" => b(s.ephemeral_gib > 0),
        "memory-info.size-in-mib" => one(s.memory_mib.to_string()),
        "processor-info.supported-architecture" => one("x86_64"),
        "supported-root-device-type" => vec!["ebs".into(), "instance-store".into()],
        "supported-usage-class" => one("on-demand"),
        "supported-virtualization-type" => one("hvm"),
        "vcpu-info.default-vcpus" | "vcpu-info.default-cores" => one(s.vcpus.to_string()),
        "vcpu-info.default-threads-per-core" => one("1"),
        "instance-storage-info.total-size" => one(s.ephemeral_gib.to_string()),
        _ => vec![],
    }
}

fn write_type(x: &mut Xml, t: &InstanceType) {
    let s = &t.spec;
    let strings = |x: &mut Xml, name: &str, items: &[&str]| {
        x.open(name);
        for i in items {
            x.leaf("item", i);
        }
        x.close(name);
    };
    x.leaf("instanceType", &t.metadata.name)
        .leaf("currentGeneration", true)
        .leaf("freeTierEligible", false);
    strings(x, "supportedUsageClasses", &["on-demand"]);
    strings(x, "supportedRootDeviceTypes", &["ebs", "instance-store"]);
    strings(x, "supportedVirtualizationTypes", &["hvm"]);
    x.leaf("bareMetal", false);
    x.el("processorInfo", |x| {
        strings(x, "supportedArchitectures", &["x86_64"]);
    });
    x.el("vCpuInfo", |x| {
        x.leaf("defaultVCpus", s.vcpus)
            .leaf("defaultCores", s.vcpus)
            .leaf("defaultThreadsPerCore", 1);
    });
    x.el("memoryInfo", |x| {
        x.leaf("sizeInMiB", s.memory_mib);
    });
    x.leaf("instanceStorageSupported", s.ephemeral_gib > 0);
    if s.ephemeral_gib > 0 {
        x.el("instanceStorageInfo", |x| {
            x.leaf("totalSizeInGB", s.ephemeral_gib)
                .set("disks", &[s.ephemeral_gib], |x, g| {
                    x.leaf("sizeInGB", g).leaf("count", 1).leaf("type", "ssd");
                })
                .leaf("nvmeSupport", "unsupported")
                .leaf("encryptionSupport", "unsupported");
        });
    }
    x.el("ebsInfo", |x| {
        x.leaf("ebsOptimizedSupport", "unsupported")
            .leaf("encryptionSupport", "unsupported")
            .leaf("nvmeSupport", "unsupported");
    });
    x.el("networkInfo", |x| {
        x.leaf("networkPerformance", "Moderate")
            .leaf("maximumNetworkInterfaces", MAX_NICS)
            .leaf("maximumNetworkCards", 1)
            .leaf("defaultNetworkCardIndex", 0)
            .set("networkCards", &[0], |x, i| {
                x.leaf("networkCardIndex", i)
                    .leaf("networkPerformance", "Moderate")
                    .leaf("maximumNetworkInterfaces", MAX_NICS);
            })
            .leaf("ipv4AddressesPerInterface", 1)
            .leaf("ipv6AddressesPerInterface", 0)
            .leaf("ipv6Supported", false)
            .leaf("enaSupport", "unsupported")
            .leaf("efaSupported", false)
            .leaf("encryptionInTransitSupported", false)
            .leaf("enaSrdSupported", false);
    });
    x.el("placementGroupInfo", |x| {
        strings(x, "supportedStrategies", &[]);
    });
    x.leaf("hibernationSupported", false)
        .leaf("burstablePerformanceSupported", false)
        .leaf("dedicatedHostsSupported", false)
        .leaf("autoRecoverySupported", false);
    strings(x, "supportedBootModes", &["legacy-bios"]);
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let names = ctx.params.list("InstanceType")?;
    let page = Page::parse(ctx.params, false, "instanceTypes", 5)?;
    if page.max.is_some_and(|m| m > 100) {
        return Err(Ec2Error::invalid_value(
            "Value for parameter maxResults is invalid. Expect a value between 5 and 100.",
        ));
    }
    let filters = Filters::parse(ctx.params, FILTERS, false)?;
    ctx.gate()?;
    let mut types = list_all::<InstanceType>(ctx.store, "").await?;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !types.iter().any(|t| t.metadata.name == **n))
        .collect();
    if !missing.is_empty() {
        return Err(Ec2Error::client(
            "InvalidInstanceType",
            format!(
                "The following supplied instance types do not exist: [{}]",
                missing
                    .iter()
                    .map(|s| crate::query::clip(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let empty = Default::default();
    types.retain(|t| names.is_empty() || names.contains(&t.metadata.name));
    types.retain(|t| filters.matches(|f| field(t, f), &empty));
    types.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let (items, next) = page.apply(types, |t| t.metadata.name.clone());
    let mut x = Xml::new();
    x.set("instanceTypeSet", &items, write_type);
    x.opt("nextToken", next);
    Ok(x)
}

/// DescribeInstanceTypeOfferings: each InstanceType offered in each
/// location of `LocationType` — the region (the default), every zone
/// ([`Ctx::zones`]) or every zone id — filtered by `location` and
/// `instance-type`, in (type, location) order. Corral has no Outposts: no
/// offering is on one.
pub async fn describe_offerings(ctx: &Ctx<'_>) -> Result<Xml> {
    let location_type = ctx
        .params
        .get_nonempty("LocationType")
        .unwrap_or("region")
        .to_string();
    let page = Page::parse(ctx.params, false, "", 5)?;
    let filters = Filters::parse(ctx.params, &["location", "instance-type"], false)?;
    let region = &ctx.config.region;
    let locations: Vec<String> = match location_type.as_str() {
        "region" => vec![region.clone()],
        "availability-zone" => ctx.zones().await?,
        "availability-zone-id" => (0..ctx.zones().await?.len())
            .map(|i| super::region::zone_id(region, i))
            .collect(),
        "outpost" => vec![],
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Value ({}) for parameter LocationType is invalid. Expected: 'region', \
                 'availability-zone', 'availability-zone-id' or 'outpost'.",
                crate::query::clip(other)
            )))
        }
    };
    ctx.gate()?;
    let types: Vec<String> = list_all::<InstanceType>(ctx.store, "")
        .await?
        .into_iter()
        .map(|t| t.metadata.name)
        .collect();
    let (items, next) = page.apply(offerings(&types, &locations, &filters), offering_key);
    let mut x = Xml::new();
    x.set("instanceTypeOfferingSet", &items, |x, (t, l)| {
        x.leaf("instanceType", t)
            .leaf("locationType", &location_type)
            .leaf("location", l);
    });
    x.opt("nextToken", next);
    Ok(x)
}

/// Every (type, location) pair that passes `filters`, in the order of
/// [`offering_key`].
fn offerings<'a>(
    types: &'a [String],
    locations: &'a [String],
    filters: &Filters,
) -> Vec<(&'a str, &'a str)> {
    let empty = Default::default();
    let mut out: Vec<(&str, &str)> = types
        .iter()
        .flat_map(|t| locations.iter().map(move |l| (t.as_str(), l.as_str())))
        .filter(|(t, l)| {
            filters.matches(
                |f| match f {
                    "location" => one(*l),
                    _ => one(*t),
                },
                &empty,
            )
        })
        .collect();
    out.sort_by_key(offering_key);
    out
}

/// The page key of an offering. A space sorts before every character of
/// a type's name (a DNS subdomain), so keys sort in (type, location)
/// order.
fn offering_key((t, l): &(&str, &str)) -> String {
    format!("{t} {l}")
}

pub async fn describe_credits(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = INSTANCE.list(ctx.params)?;
    let page = Page::parse(ctx.params, !ids.is_empty(), INSTANCE.list_name, 5)?;
    let filters = Filters::parse(ctx.params, &["instance-id"], false)?;
    ctx.gate()?;
    let all = visible_instances(ctx).await?;
    let mut known: Vec<String> = all.iter().map(|i| instance_id(&i.metadata.uid)).collect();
    if let Some(missing) = ids.iter().find(|id| !known.contains(id)) {
        return Err(INSTANCE.not_found(missing));
    }
    let empty = Default::default();
    known.retain(|id| ids.is_empty() || ids.contains(id));
    known.retain(|id| filters.matches(|_| one(id.clone()), &empty));
    known.sort();
    let (items, next) = page.apply(known, |s| s.clone());
    let mut x = Xml::new();
    // Corral has no CPU credits: every instance is "standard".
    x.set("instanceCreditSpecificationSet", &items, |x, id| {
        x.leaf("instanceId", id).leaf("cpuCredits", "standard");
    });
    x.opt("nextToken", next);
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Params;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_type_is_offered_in_every_location_and_filters_narrow() {
        let types = strings(&["m1.small", "m1", "m1.tiny"]);
        let zones = strings(&["corral-1b", "corral-1a"]);
        let none = Filters::default();
        assert_eq!(
            offerings(&types, &zones, &none),
            [
                ("m1", "corral-1a"),
                ("m1", "corral-1b"),
                ("m1.small", "corral-1a"),
                ("m1.small", "corral-1b"),
                ("m1.tiny", "corral-1a"),
                ("m1.tiny", "corral-1b"),
            ]
        );
        let q = "Filter.1.Name=location&Filter.1.Value.1=corral-1b\
                 &Filter.2.Name=instance-type&Filter.2.Value.1=m1.*";
        let f = Filters::parse(
            &Params::parse(q.as_bytes()),
            &["location", "instance-type"],
            false,
        )
        .unwrap();
        assert_eq!(
            offerings(&types, &zones, &f),
            [("m1.small", "corral-1b"), ("m1.tiny", "corral-1b")]
        );
        // Pages follow the same order, whatever the page size.
        let all = offerings(&types, &zones, &none);
        let page = Page {
            max: Some(4),
            after: None,
        };
        let (first, token) = page.apply(all.clone(), offering_key);
        assert_eq!(first, all[..4]);
        assert!(token.is_some());
        let rest = Page {
            max: Some(4),
            after: Some(offering_key(&all[3])),
        };
        assert_eq!(
            rest.apply(all.clone(), offering_key),
            (all[4..].to_vec(), None)
        );
    }
}
