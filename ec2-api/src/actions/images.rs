//! DescribeImages and DeregisterImage. Public images of other projects, and
//! those shared with the caller's account (`spec.launchPermissions`), are
//! listed too (as EC2 lists them), owned by their project's account.

use corral_api_types::{Image, ImagePhase, ImageType, Instance, Visibility};

use super::{check_ids, ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::{self, list_all, Tagged};
use crate::page::Page;
use crate::xml::Xml;

fn state(i: &Image) -> &'static str {
    match i.status.as_ref().map(|s| s.phase) {
        Some(ImagePhase::Available) => "available",
        Some(ImagePhase::Failed) => "failed",
        _ => "pending",
    }
}

fn kind(i: &Image) -> &'static str {
    match i.spec.image_type {
        ImageType::Machine => "machine",
        ImageType::Kernel => "kernel",
        ImageType::Ramdisk => "ramdisk",
    }
}

fn arch(i: &Image) -> String {
    serde_json::to_value(i.spec.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("ImageId")?;
    check_ids(
        &ids,
        &["ami", "aki", "ari"],
        "InvalidAMIID.Malformed",
        "image id",
    )?;
    let owners = ctx.params.list("Owner")?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "imageIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "image-id",
            "name",
            "state",
            "image-type",
            "is-public",
            "owner-id",
            "architecture",
            "description",
            "root-device-type",
            "virtualization-type",
            "kernel-id",
            "ramdisk-id",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut images: Vec<Image> = list_all::<Image>(ctx.store, ctx.project()).await?;
    let others = ctx
        .store
        .list::<Image>(None, Default::default())
        .await?
        .items;
    let me = ctx.account();
    images.extend(others.into_iter().filter(|i| {
        i.metadata.project != ctx.project()
            && (i.spec.visibility == Visibility::Public || i.spec.launch_permissions.contains(&me))
    }));
    if let Some(missing) = ids
        .iter()
        .find(|id| !images.iter().any(|i| i.ec2_id() == **id))
    {
        return Err(Ec2Error::client(
            "InvalidAMIID.NotFound",
            format!("The image id '[{missing}]' does not exist"),
        ));
    }
    let owner = |i: &Image| corral_api_types::ec2::account_id(&i.metadata.project);
    let id_of = |name: &Option<String>, project: &str, all: &[Image]| {
        name.as_ref()
            .and_then(|n| {
                all.iter()
                    .find(|i| &i.metadata.name == n && i.metadata.project == project)
            })
            .map(|i| i.ec2_id())
    };
    let all = images.clone();
    images.retain(|i| ids.is_empty() || ids.contains(&i.ec2_id()));
    images.retain(|i| {
        owners.is_empty()
            || owners
                .iter()
                .any(|o| *o == owner(i) || (o == "self" && owner(i) == me))
    });
    images.retain(|i| {
        filters.matches(
            |f| match f {
                "image-id" => one(i.ec2_id()),
                "name" => one(crate::objects::ec2_name(&i.metadata)),
                "state" => one(state(i)),
                "image-type" => one(kind(i)),
                "is-public" => b(i.spec.visibility == Visibility::Public),
                "owner-id" => one(owner(i)),
                "architecture" => one(arch(i)),
                "description" => i.spec.description.clone().into_iter().collect(),
                "root-device-type" => one("instance-store"),
                "virtualization-type" => one("hvm"),
                "kernel-id" => id_of(&i.spec.kernel, &i.metadata.project, &all)
                    .into_iter()
                    .collect(),
                _ => id_of(&i.spec.ramdisk, &i.metadata.project, &all)
                    .into_iter()
                    .collect(),
            },
            i.tags(),
        )
    });
    images.sort_by_key(|i| i.ec2_id());
    let (images, next) = page.apply(images, |i| i.ec2_id());
    let mut x = Xml::new();
    x.set("imagesSet", &images, |x, i| {
        x.leaf("imageId", i.ec2_id())
            .leaf(
                "imageLocation",
                i.spec
                    .source
                    .url
                    .clone()
                    .or(i.spec.source.path.clone())
                    .unwrap_or_default(),
            )
            .leaf("imageState", state(i))
            .leaf("imageOwnerId", owner(i))
            .opt(
                "creationDate",
                i.metadata.creation_timestamp.as_ref().map(ts),
            )
            .leaf("isPublic", i.spec.visibility == Visibility::Public)
            .leaf("architecture", arch(i))
            .leaf("imageType", kind(i))
            .opt("kernelId", id_of(&i.spec.kernel, &i.metadata.project, &all))
            .opt(
                "ramdiskId",
                id_of(&i.spec.ramdisk, &i.metadata.project, &all),
            )
            .leaf("name", crate::objects::ec2_name(&i.metadata))
            .opt("description", i.spec.description.as_deref())
            .leaf("rootDeviceType", "instance-store")
            .leaf("rootDeviceName", "/dev/vda")
            .set("blockDeviceMapping", &[] as &[u8], |_, _| {})
            .leaf("virtualizationType", "hvm")
            .tags("tagSet", i.tags());
    });
    x.opt("nextToken", next);
    Ok(x)
}

pub async fn deregister(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = ctx.params.required("ImageId")?.to_string();
    check_ids(
        std::slice::from_ref(&id),
        &["ami", "aki", "ari"],
        "InvalidAMIID.Malformed",
        "image id",
    )?;
    let images = list_all::<Image>(ctx.store, ctx.project()).await?;
    let img = images.iter().find(|i| i.ec2_id() == id).ok_or_else(|| {
        Ec2Error::client(
            "InvalidAMIID.NotFound",
            format!("The image id '[{id}]' does not exist"),
        )
    })?;
    let name = &img.metadata.name;
    let in_use = list_all::<Instance>(ctx.store, ctx.project())
        .await?
        .iter()
        .any(|i| i.spec.image.as_ref() == Some(name))
        || images
            .iter()
            .any(|i| i.spec.kernel.as_ref() == Some(name) || i.spec.ramdisk.as_ref() == Some(name));
    if in_use {
        return Err(Ec2Error::client(
            "InvalidAMIID.InUse",
            format!("The image {id} is used by instances or images"),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, img).await?;
    Ok(super::ok_return())
}
