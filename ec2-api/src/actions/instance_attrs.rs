//! DescribeInstanceStatus, DescribeInstanceAttribute and
//! ModifyInstanceAttribute.

use base64::Engine;
use corral_api_types::ec2::{
    instance_id, DISABLE_API_STOP_ANNOTATION, SHUTDOWN_BEHAVIOR_ANNOTATION,
};
use corral_api_types::{ConditionStatus, Instance, SecurityGroup};

use super::describe::{page_answer, Describe, NO_TAGS};
use super::ids::{INSTANCE, SECURITY_GROUP};
use super::instance_view::{state, Lookup, RUNNING, STOPPED};
use super::instance_xml::write_instance_block_devices;
use super::instances::{visible_instance, visible_instances};
use super::launch::{check_instance_type, check_shutdown_behavior, decode_user_data};
use super::{write_group_set, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::page::Page;
use crate::query::{clip, Params};
use crate::xml::Xml;

/// EC2's status checks from the Ready condition the agents report.
fn health(i: &Instance) -> (&'static str, &'static str) {
    if state(i) != RUNNING {
        return ("not-applicable", "not-applicable");
    }
    let ready = i
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == Instance::CONDITION_READY)
        .map(|c| c.status);
    match ready {
        Some(ConditionStatus::True) => ("ok", "passed"),
        Some(ConditionStatus::False) => ("impaired", "failed"),
        _ => ("initializing", "initializing"),
    }
}

const STATUS_FILTERS: &[&str] = &[
    "availability-zone",
    "instance-state-name",
    "instance-state-code",
    "instance-status.status",
    "instance-status.reachability",
    "system-status.status",
    "system-status.reachability",
];

pub async fn describe_status(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = INSTANCE.list(ctx.params)?;
    let page = Page::parse(ctx.params, !ids.is_empty(), INSTANCE.list_name, 5)?;
    let all_states = ctx.params.bool("IncludeAllInstances")?.unwrap_or(false);
    let filters = Filters::parse(ctx.params, STATUS_FILTERS, false)?;
    let d = Describe { ids, page, filters };
    ctx.gate()?;
    let mut all = visible_instances(ctx).await?;
    let id_of = |i: &Instance| instance_id(&i.metadata.uid);
    d.check_found(&INSTANCE, &all, id_of)?;
    let l = Lookup::load(ctx).await?;
    all.retain(|i| all_states || state(i) == RUNNING);
    let field = |i: &Instance, f: &str| {
        let (code, name) = state(i);
        let (st, reach) = health(i);
        match f {
            "availability-zone" => one(l.zone_of(i)),
            "instance-state-name" => one(name),
            "instance-state-code" => one(code.to_string()),
            "instance-status.status" | "system-status.status" => one(st),
            _ => one(reach),
        }
    };
    let (items, next) = d.select(all, id_of, field, |_| &NO_TAGS);
    Ok(page_answer("instanceStatusSet", &items, next, |x, i| {
        let (code, name) = state(i);
        let (st, reach) = health(i);
        let summary = |x: &mut Xml, el: &str| {
            x.el(el, |x| {
                x.leaf("status", st).set("details", &[reach], |x, r| {
                    x.leaf("name", "reachability").leaf("status", r);
                });
            });
        };
        x.leaf("instanceId", instance_id(&i.metadata.uid))
            .leaf("availabilityZone", l.zone_of(i))
            .el("instanceState", |x| {
                x.leaf("code", code).leaf("name", name);
            });
        summary(x, "systemStatus");
        summary(x, "instanceStatus");
        x.empty_set("eventsSet");
    }))
}

fn value(x: &mut Xml, name: &str, v: impl std::fmt::Display) {
    x.el(name, |x| {
        x.leaf("value", v);
    });
}

pub async fn describe_attribute(ctx: &Ctx<'_>) -> Result<Xml> {
    let attr = ctx.params.required("Attribute")?.to_string();
    let id = INSTANCE.required(ctx.params)?;
    const KNOWN: &[&str] = &[
        "instanceType",
        "kernel",
        "ramdisk",
        "userData",
        "disableApiTermination",
        "instanceInitiatedShutdownBehavior",
        "rootDeviceName",
        "blockDeviceMapping",
        "productCodes",
        "sourceDestCheck",
        "groupSet",
        "ebsOptimized",
        "sriovNetSupport",
        "enaSupport",
        "disableApiStop",
    ];
    if !KNOWN.contains(&attr.as_str()) {
        return Err(Ec2Error::invalid_value(format!(
            "Value ({}) for parameter attribute is invalid. Unknown attribute.",
            clip(&attr)
        )));
    }
    let i = &visible_instance(ctx, &id).await?;
    ctx.gate()?;
    let a = &i.metadata.annotations;
    let mut x = Xml::new();
    x.leaf("instanceId", &id);
    match attr.as_str() {
        "instanceType" => value(
            &mut x,
            "instanceType",
            i.spec.instance_type.clone().unwrap_or_default(),
        ),
        "userData" => {
            x.el("userData", |x| {
                if let Some(u) = &i.spec.user_data {
                    x.leaf("value", base64::engine::general_purpose::STANDARD.encode(u));
                }
            });
        }
        "disableApiTermination" => value(
            &mut x,
            "disableApiTermination",
            i.spec.disable_api_termination,
        ),
        "disableApiStop" => value(
            &mut x,
            "disableApiStop",
            a.get(DISABLE_API_STOP_ANNOTATION)
                .is_some_and(|v| v == "true"),
        ),
        "instanceInitiatedShutdownBehavior" => value(
            &mut x,
            "instanceInitiatedShutdownBehavior",
            a.get(SHUTDOWN_BEHAVIOR_ANNOTATION)
                .map(String::as_str)
                .unwrap_or("stop"),
        ),
        "rootDeviceName" => {
            let l = Lookup::load(ctx).await?;
            value(&mut x, "rootDeviceName", l.root_device_name(i))
        }
        "sourceDestCheck" => value(&mut x, "sourceDestCheck", true),
        "ebsOptimized" => value(&mut x, "ebsOptimized", false),
        "enaSupport" => value(&mut x, "enaSupport", false),
        "productCodes" => {
            x.empty_set("productCodes");
        }
        "kernel" | "ramdisk" | "sriovNetSupport" => {
            x.el(&attr, |_| {});
        }
        "groupSet" => {
            let l = Lookup::load(ctx).await?;
            let groups: Vec<(String, String)> = i
                .spec
                .nics
                .first()
                .map(|n| {
                    n.security_groups
                        .iter()
                        .filter_map(|g| l.groups.get(g).cloned())
                        .collect()
                })
                .unwrap_or_default();
            write_group_set(&mut x, &groups);
        }
        _ => {
            let l = Lookup::load(ctx).await?;
            // The device names the user gave (AttachVolume, mappings).
            write_instance_block_devices(&mut x, i, &l, false);
        }
    }
    Ok(x)
}

/// `X.Value` or, for the old form, `Attribute=x&Value=v`.
fn attr_value<'a>(p: &'a Params, name: &str, lower: &str) -> Option<&'a str> {
    p.get(&format!("{name}.Value")).or_else(|| {
        (p.get("Attribute") == Some(lower))
            .then(|| p.get("Value"))
            .flatten()
    })
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Ec2Error::invalid_value(format!(
            "Value ({}) for parameter {name} is invalid.",
            clip(v)
        ))),
    }
}

pub async fn modify_attribute(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let id = INSTANCE.required(p)?;
    let i = visible_instance(ctx, &id).await?;
    let instance_type = attr_value(p, "InstanceType", "instanceType").map(str::to_string);
    let user_data = attr_value(p, "UserData", "userData")
        .map(decode_user_data)
        .transpose()?;
    let termination = attr_value(p, "DisableApiTermination", "disableApiTermination")
        .map(|v| parse_bool("DisableApiTermination", v))
        .transpose()?;
    let stop = attr_value(p, "DisableApiStop", "disableApiStop")
        .map(|v| parse_bool("DisableApiStop", v))
        .transpose()?;
    let shutdown = attr_value(
        p,
        "InstanceInitiatedShutdownBehavior",
        "instanceInitiatedShutdownBehavior",
    )
    .map(str::to_string);
    let source_dest = attr_value(p, "SourceDestCheck", "sourceDestCheck")
        .map(|v| parse_bool("SourceDestCheck", v))
        .transpose()?;
    let ebs_optimized = attr_value(p, "EbsOptimized", "ebsOptimized")
        .map(|v| parse_bool("EbsOptimized", v))
        .transpose()?;
    let group_ids = p.list("GroupId")?;
    let bdm = p.structs("BlockDeviceMapping")?;
    if instance_type.is_none()
        && user_data.is_none()
        && termination.is_none()
        && stop.is_none()
        && shutdown.is_none()
        && source_dest.is_none()
        && ebs_optimized.is_none()
        && group_ids.is_empty()
        && bdm.is_empty()
    {
        return Err(Ec2Error::missing("Attribute"));
    }
    if (instance_type.is_some() || user_data.is_some()) && state(&i) != STOPPED {
        return Err(Ec2Error::incorrect_state(format!(
            "The instance '{id}' is not in the 'stopped' state."
        )));
    }
    if let Some(t) = &instance_type {
        check_instance_type(ctx, t).await?;
    }
    if let Some(s) = &shutdown {
        check_shutdown_behavior(s)?;
    }
    if source_dest == Some(false) {
        return Err(Ec2Error::client(
            "UnsupportedOperation",
            "Corral always checks source/destination addresses",
        ));
    }
    if ebs_optimized == Some(true) {
        return Err(Ec2Error::client(
            "UnsupportedOperation",
            "EBS optimization is not available",
        ));
    }
    let mut groups = Vec::new();
    if !group_ids.is_empty() {
        SECURITY_GROUP.check(&group_ids)?;
        let all = ctx.list::<SecurityGroup>().await?;
        for g in &group_ids {
            groups.push(SECURITY_GROUP.find_named(&all, g)?);
        }
        if i.spec.nics.is_empty() {
            return Err(Ec2Error::client(
                "UnsupportedOperation",
                format!("The instance '{id}' has no network interface"),
            ));
        }
    }
    let mut dot = Vec::new();
    for m in &bdm {
        let name = m.required("DeviceName")?;
        // `/dev/sdf`, `xvdf` or `vdf`: the guest's device the name means.
        let dev = super::disks::data_device(name)?.unwrap_or_default();
        let d = m.sub("Ebs").bool("DeleteOnTermination")?.unwrap_or(true);
        if !i
            .spec
            .volumes
            .iter()
            .any(|v| !dev.is_empty() && v.device.as_deref() == Some(dev.as_str()))
        {
            return Err(Ec2Error::invalid_value(format!(
                "The device '{}' is not attached (the root device's DeleteOnTermination cannot be changed)",
                clip(name)
            )));
        }
        dot.push((dev, d));
    }
    ctx.gate()?;
    ctx.update(&i.metadata.name, |i: &mut Instance| {
        if let Some(t) = &instance_type {
            i.spec.instance_type = Some(t.clone());
            i.spec.cpus = None;
            i.spec.memory_mib = None;
        }
        if let Some(u) = &user_data {
            i.spec.user_data = Some(u.clone());
        }
        if let Some(t) = termination {
            i.spec.disable_api_termination = t;
        }
        let a = &mut i.metadata.annotations;
        if let Some(s) = stop {
            if s {
                a.insert(DISABLE_API_STOP_ANNOTATION.into(), "true".into());
            } else {
                a.remove(DISABLE_API_STOP_ANNOTATION);
            }
        }
        if let Some(s) = &shutdown {
            a.insert(SHUTDOWN_BEHAVIOR_ANNOTATION.into(), s.clone());
        }
        if !groups.is_empty() {
            i.spec.nics[0].security_groups = groups.clone();
        }
        for (dev, d) in &dot {
            for v in i
                .spec
                .volumes
                .iter_mut()
                .filter(|v| v.device.as_deref() == Some(dev.as_str()))
            {
                v.delete_on_termination = *d;
            }
        }
        Ok(())
    })
    .await?;
    Ok(super::ok_return())
}
