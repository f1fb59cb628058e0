//! DescribeImages and DeregisterImage. Public images of other projects, and
//! those shared with the caller's account (`spec.launchPermissions`), are
//! listed too (as EC2 lists them), owned by their project's account.

use corral_api_types::{Image, ImagePhase, ImageType, Instance, Visibility};

use super::describe::{page_answer, Describe};
use super::ids::IMAGE;
use super::{created, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::{self, ec2_name, Tagged};
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

const FILTERS: &[&str] = &[
    "image-id",
    "name",
    "state",
    "image-type",
    "is-public",
    "owner-id",
    "architecture",
    "description",
    "root-device-type",
    "root-device-name",
    "virtualization-type",
    "kernel-id",
    "ramdisk-id",
];

pub async fn describe(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = IMAGE.list(ctx.params)?;
    let owners = ctx.params.list("Owner")?;
    let d = Describe {
        page: Page::parse(ctx.params, !ids.is_empty(), IMAGE.list_name, 5)?,
        filters: Filters::parse(ctx.params, FILTERS, true)?,
        ids,
    };
    ctx.gate()?;
    let mut images: Vec<Image> = ctx.list::<Image>().await?;
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
    d.check_found(&IMAGE, &images, |i| i.ec2_id())?;
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
    images.retain(|i| {
        owners.is_empty()
            || owners
                .iter()
                .any(|o| *o == owner(i) || (o == "self" && owner(i) == me))
    });
    let field = |i: &Image, f: &str| match f {
        "image-id" => one(i.ec2_id()),
        "name" => one(ec2_name(&i.metadata)),
        "state" => one(state(i)),
        "image-type" => one(kind(i)),
        "is-public" => b(i.spec.visibility == Visibility::Public),
        "owner-id" => one(owner(i)),
        "architecture" => one(arch(i)),
        "description" => i.spec.description.clone().into_iter().collect(),
        "root-device-type" => one("instance-store"),
        "root-device-name" => one(root_device_name(i)),
        "virtualization-type" => one("hvm"),
        "kernel-id" => id_of(&i.spec.kernel, &i.metadata.project, &all)
            .into_iter()
            .collect(),
        _ => id_of(&i.spec.ramdisk, &i.metadata.project, &all)
            .into_iter()
            .collect(),
    };
    let (images, next) = d.select(images, |i| i.ec2_id(), field, |i| i.tags());
    Ok(page_answer("imagesSet", &images, next, |x, i| {
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
            .opt("creationDate", created(&i.metadata))
            .leaf("isPublic", i.spec.visibility == Visibility::Public)
            .leaf("architecture", arch(i))
            .leaf("imageType", kind(i))
            .opt("kernelId", id_of(&i.spec.kernel, &i.metadata.project, &all))
            .opt(
                "ramdiskId",
                id_of(&i.spec.ramdisk, &i.metadata.project, &all),
            )
            .leaf("name", ec2_name(&i.metadata))
            .opt("description", i.spec.description.as_deref())
            .leaf("rootDeviceType", "instance-store")
            .leaf("rootDeviceName", root_device_name(i))
            .empty_set("blockDeviceMapping")
            .leaf("virtualizationType", "hvm")
            .tags("tagSet", i.tags());
    }))
}

pub async fn deregister(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = IMAGE.required(ctx.params)?;
    let images = ctx.list::<Image>().await?;
    let img = IMAGE.find(&images, &id, |i| i.ec2_id())?;
    let name = &img.metadata.name;
    let in_use = ctx
        .list::<Instance>()
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

/// The root device name RegisterImage was given (`/dev/sda1`,
/// `/dev/xvda`, …): what EC2 shows for the image and for instances
/// launched from it. The guest's root disk is `vda` whatever it says, as
/// on AWS's Nitro instances, where `/dev/sda1` is `nvme0n1`.
pub const ROOT_DEVICE_ANNOTATION: &str = "ec2.corral/root-device-name";

/// The root device name EC2 shows for `i` (`/dev/vda` unless registered
/// with another).
pub fn root_device_name(i: &Image) -> &str {
    i.metadata
        .annotations
        .get(ROOT_DEVICE_ANNOTATION)
        .map(String::as_str)
        .filter(|d| valid_root_device_name(d))
        .unwrap_or(DEFAULT_ROOT_DEVICE)
}

/// The root device name of an image registered without one.
pub const DEFAULT_ROOT_DEVICE: &str = "/dev/vda";

/// `/dev/` then `sd`, `xvd` or `vd`, one letter, and an optional
/// partition number of one or two digits: the names EC2 accepts for a
/// root device.
pub fn valid_root_device_name(d: &str) -> bool {
    let Some(rest) = d.strip_prefix("/dev/") else {
        return false;
    };
    let Some(rest) = ["xvd", "sd", "vd"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
    else {
        return false;
    };
    let mut chars = rest.chars();
    let letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let digits = chars.as_str();
    letter && digits.len() <= 2 && digits.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod root_device_tests {
    use super::*;
    use corral_api_types::Resource;

    #[test]
    fn root_device_names_are_the_ones_ec2_takes() {
        for ok in [
            "/dev/sda1",
            "/dev/xvda",
            "/dev/vda",
            "/dev/sda",
            "/dev/xvdb12",
        ] {
            assert!(valid_root_device_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/dev/",
            "/dev/sda123",
            "/dev/hda",
            "sda1",
            "/dev/sdA",
            "/dev/sd1",
            "/dev/../x",
        ] {
            assert!(!valid_root_device_name(bad), "{bad}");
        }
        let mut i = Image::new("p", "x", Default::default());
        assert_eq!(root_device_name(&i), "/dev/vda");
        i.metadata
            .annotations
            .insert(ROOT_DEVICE_ANNOTATION.into(), "/dev/sda1".into());
        assert_eq!(root_device_name(&i), "/dev/sda1");
        // A hand-set value that is no device name is not shown.
        i.metadata
            .annotations
            .insert(ROOT_DEVICE_ANNOTATION.into(), "<x>".into());
        assert_eq!(root_device_name(&i), "/dev/vda");
    }
}
