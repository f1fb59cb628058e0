//! CreateTags, DeleteTags, DescribeTags over every taggable kind: tags are
//! the objects' `spec.tags`.

use std::collections::BTreeMap;

use corral_api_types::ec2::subnet_id;
use corral_api_types::{
    Address, Image, Instance, KeyPair, Network, SecurityGroup, Snapshot, Volume,
};

use super::describe::{page_answer, NO_TAGS};
use super::instances::visible_instances;
use super::subnets::{set_subnet_tags, subnet_tags};
use super::Ctx;
use crate::error::{Ec2Error, Result};
use crate::filter::{one, Filters};
use crate::objects::Tagged;
use crate::page::Page;
use crate::query::clip;
use crate::xml::Xml;

/// (id prefix, EC2 resource type, NotFound code).
const TYPES: &[(&str, &str, &str)] = &[
    ("i", "instance", "InvalidInstanceID.NotFound"),
    ("vol", "volume", "InvalidVolume.NotFound"),
    ("snap", "snapshot", "InvalidSnapshot.NotFound"),
    ("sg", "security-group", "InvalidGroup.NotFound"),
    ("ami", "image", "InvalidAMIID.NotFound"),
    ("aki", "image", "InvalidAMIID.NotFound"),
    ("ari", "image", "InvalidAMIID.NotFound"),
    ("eipalloc", "elastic-ip", "InvalidAllocationID.NotFound"),
    ("key", "key-pair", "InvalidKeyPair.NotFound"),
    ("vpc", "vpc", "InvalidVpcID.NotFound"),
    ("subnet", "subnet", "InvalidSubnetID.NotFound"),
];

fn type_of(id: &str) -> Result<(&'static str, &'static str, &'static str)> {
    TYPES
        .iter()
        .find(|(p, _, _)| corral_api_types::ec2::is_id_with_prefix(id, p))
        .copied()
        .ok_or_else(|| Ec2Error::client("InvalidID", format!("The ID '{}' is not valid", clip(id))))
}

/// Applies `f` to the tags of the object with EC2 id `id` (`key` gives an
/// object's id; subnets are their Network's).
async fn edit<K: Tagged>(
    ctx: &Ctx<'_>,
    id: &str,
    key: impl Fn(&K) -> String,
    not_found: &str,
    f: &(dyn Fn(&mut BTreeMap<String, String>) + Sync),
) -> Result<()> {
    let objs = ctx.list::<K>().await?;
    let o = objs
        .iter()
        .find(|o| key(o) == id)
        .ok_or_else(|| Ec2Error::client(not_found, format!("The ID '{id}' does not exist")))?;
    if ctx.dry_run {
        return Ok(());
    }
    ctx.update(&o.meta().name, |o: &mut K| {
        f(o.tags_mut());
        Ok(())
    })
    .await?;
    Ok(())
}

async fn edit_any(
    ctx: &Ctx<'_>,
    id: &str,
    f: &(dyn Fn(&mut BTreeMap<String, String>) + Sync),
) -> Result<()> {
    let (prefix, _, nf) = type_of(id)?;
    match prefix {
        "i" => edit::<Instance>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "vol" => edit::<Volume>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "snap" => edit::<Snapshot>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "sg" => edit::<SecurityGroup>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "ami" | "aki" | "ari" => edit::<Image>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "eipalloc" => edit::<Address>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "key" => edit::<KeyPair>(ctx, id, |o| o.ec2_id(), nf, f).await,
        "vpc" => edit::<Network>(ctx, id, |o| o.ec2_id(), nf, f).await,
        _ => edit_subnet(ctx, id, nf, f).await,
    }
}

/// [`edit`] for a subnet: its tags are its own (see `subnets`), not the
/// VPC's.
async fn edit_subnet(
    ctx: &Ctx<'_>,
    id: &str,
    not_found: &str,
    f: &(dyn Fn(&mut BTreeMap<String, String>) + Sync),
) -> Result<()> {
    let objs = ctx.list::<Network>().await?;
    let o = objs
        .iter()
        .find(|o| subnet_id(&o.metadata.uid) == id)
        .ok_or_else(|| Ec2Error::client(not_found, format!("The ID '{id}' does not exist")))?;
    if ctx.dry_run {
        return Ok(());
    }
    ctx.update(&o.metadata.name, |n: &mut Network| {
        let mut tags = subnet_tags(n);
        f(&mut tags);
        set_subnet_tags(n, &tags);
        Ok(())
    })
    .await?;
    Ok(())
}

fn resource_ids(ctx: &Ctx<'_>) -> Result<Vec<String>> {
    let ids = ctx.params.list("ResourceId")?;
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId"));
    }
    for id in &ids {
        type_of(id)?;
    }
    Ok(ids)
}

pub async fn create(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = resource_ids(ctx)?;
    let mut tags = BTreeMap::new();
    for t in ctx.params.structs("Tag")? {
        tags.insert(
            t.required("Key")?.to_string(),
            t.get("Value").unwrap_or_default().to_string(),
        );
    }
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag"));
    }
    let add = move |m: &mut BTreeMap<String, String>| m.extend(tags.clone());
    for id in &ids {
        edit_any(ctx, id, &add).await?;
    }
    ctx.gate()?;
    Ok(super::ok_return())
}

pub async fn delete(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = resource_ids(ctx)?;
    let mut keys: Vec<(String, Option<String>)> = Vec::new();
    for t in ctx.params.structs("Tag")? {
        keys.push((
            t.required("Key")?.to_string(),
            t.get("Value").map(str::to_string),
        ));
    }
    let remove = move |m: &mut BTreeMap<String, String>| {
        if keys.is_empty() {
            m.clear();
        }
        for (k, v) in &keys {
            if v.is_none() || m.get(k) == v.as_ref() {
                m.remove(k);
            }
        }
    };
    for id in &ids {
        edit_any(ctx, id, &remove).await?;
    }
    ctx.gate()?;
    Ok(super::ok_return())
}

/// (resource id, resource type, key, value).
type Row = (String, &'static str, String, String);

/// The rows of the tags of `objs`, of resource type `rtype` (`key` gives
/// an object's id).
fn push_by<K: Tagged>(
    out: &mut Vec<Row>,
    objs: Vec<K>,
    rtype: &'static str,
    key: impl Fn(&K) -> String,
) {
    for o in objs {
        let id = key(&o);
        for (k, v) in o.tags() {
            out.push((id.clone(), rtype, k.clone(), v.clone()));
        }
    }
}

/// [`push_by`] for objects that are their own EC2 resource.
fn push<K: Tagged>(out: &mut Vec<Row>, objs: Vec<K>, rtype: &'static str) {
    push_by(out, objs, rtype, |o| o.ec2_id());
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let page = Page::parse(ctx.params, false, "", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &["key", "value", "resource-id", "resource-type"],
        false,
    )?;
    ctx.gate()?;
    let mut rows = Vec::new();
    push(&mut rows, visible_instances(ctx).await?, "instance");
    push(&mut rows, ctx.list::<Volume>().await?, "volume");
    push(&mut rows, ctx.list::<Snapshot>().await?, "snapshot");
    push(
        &mut rows,
        ctx.list::<SecurityGroup>().await?,
        "security-group",
    );
    push(&mut rows, ctx.list::<Image>().await?, "image");
    push(&mut rows, ctx.list::<Address>().await?, "elastic-ip");
    push(&mut rows, ctx.list::<KeyPair>().await?, "key-pair");
    let nets = ctx.list::<Network>().await?;
    push(&mut rows, nets.clone(), "vpc");
    for n in nets {
        let id = subnet_id(&n.metadata.uid);
        for (k, v) in subnet_tags(&n) {
            rows.push((id.clone(), "subnet", k, v));
        }
    }
    rows.retain(|(id, t, k, v)| {
        filters.matches(
            |f| match f {
                "key" => one(k.clone()),
                "value" => one(v.clone()),
                "resource-id" => one(id.clone()),
                _ => one(*t),
            },
            &NO_TAGS,
        )
    });
    rows.sort();
    let (rows, next) = page.apply(rows, |(id, _, k, _)| format!("{id}\u{1}{k}"));
    Ok(page_answer("tagSet", &rows, next, |x, (id, t, k, v)| {
        x.leaf("resourceId", id)
            .leaf("resourceType", t)
            .leaf("key", k)
            .leaf("value", v);
    }))
}
