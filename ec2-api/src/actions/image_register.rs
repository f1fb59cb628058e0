//! RegisterImage, DescribeImageAttribute and ModifyImageAttribute.
//!
//! RegisterImage writes an Image. `ImageLocation` says where the bytes
//! are (there is no S3 here):
//! - an `http://` or `https://` URL → `spec.source.url`;
//! - an absolute path on the server host → `spec.source.path`, only
//!   beneath the operator's import directories;
//! - the id (`ami-`/`aki-`/`ari-`) or name of an image of the project
//!   whose source is a URL or path → the same source, registered again
//!   (an uploaded image's bytes cannot be shared this way: register its
//!   URL, or upload again).
//!
//! The kind of image follows the file name, as uec-publish-tarball names
//! the trio: `*vmlinuz*`, `*kernel*`, `bzImage` → kernel (`aki-`);
//! `*initrd*`, `*initramfs*`, `*ramdisk*` → ramdisk (`ari-`); anything
//! else → machine image (`ami-`), which may name a `KernelId` and a
//! `RamdiskId` of the project. Kernels and ramdisks are `raw`; machine
//! images `qcow2` unless the name ends in `.raw` (raw) or `.iso` (iso).
//!
//! Launch permissions: the `all` group is `visibility: public`; user ids
//! (account ids of other projects) are `spec.launchPermissions`.

use corral_api_types::ec2::account_id;
use corral_api_types::{
    Architecture, Image, ImageFormat, ImageSource, ImageSpec, ImageType, Resource, Visibility,
};

use super::ids::IMAGE;
use super::{check_ids, Ctx};
use crate::error::{Ec2Error, Result};
use crate::objects::{self, client_token, earlier, new_uid, stamp_token, tag_specs, Tagged};
use crate::query::clip;
use crate::xml::Xml;

/// The image type a file name suggests.
pub fn type_of_location(location: &str) -> ImageType {
    let file = location
        .rsplit('/')
        .next()
        .unwrap_or(location)
        .to_ascii_lowercase();
    if file.contains("vmlinuz") || file.contains("kernel") || file == "bzimage" {
        ImageType::Kernel
    } else if file.contains("initrd") || file.contains("initramfs") || file.contains("ramdisk") {
        ImageType::Ramdisk
    } else {
        ImageType::Machine
    }
}

fn format_of_location(location: &str, t: ImageType) -> ImageFormat {
    let l = location.to_ascii_lowercase();
    if t != ImageType::Machine || l.ends_with(".raw") {
        ImageFormat::Raw
    } else if l.ends_with(".iso") {
        ImageFormat::Iso
    } else {
        ImageFormat::Qcow2
    }
}

/// A kernel or ramdisk of the project named by its id, checked for type.
fn part<'i>(images: &'i [Image], id: &str, want: ImageType, param: &str) -> Result<&'i Image> {
    let prefix = corral_api_types::ec2::image_prefix(want);
    check_ids(
        &[id.to_string()],
        &[prefix],
        "InvalidAMIID.Malformed",
        &format!("{param} must be an {prefix}- id"),
    )?;
    images
        .iter()
        .find(|i| i.ec2_id() == id && i.spec.image_type == want)
        .ok_or_else(|| IMAGE.not_found(id))
}

fn architecture(v: &str) -> Result<Architecture> {
    Ok(match v {
        "x86_64" => Architecture::X86_64,
        "arm64" | "aarch64" => Architecture::Aarch64,
        "i386" | "i686" => Architecture::I686,
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Architecture: '{}' is not one of x86_64, arm64, i386",
                clip(other)
            )))
        }
    })
}

pub async fn register(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let name = p.required("Name")?.to_string();
    if name.len() < 3 || name.len() > 128 {
        return Err(Ec2Error::invalid_value(
            "Name: must be between 3 and 128 characters long",
        ));
    }
    let description = p.get("Description").map(str::to_string);
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 255)
    {
        return Err(Ec2Error::invalid_value(
            "Description: at most 255 characters",
        ));
    }
    let arch = p
        .get_nonempty("Architecture")
        .map(architecture)
        .transpose()?;
    let root_device = match p.get_nonempty("RootDeviceName") {
        Some(d) if super::images::valid_root_device_name(d) => Some(d.to_string()),
        Some(d) => {
            return Err(Ec2Error::invalid_value(format!(
                "RootDeviceName: '{}' is not a device name EC2 takes (/dev/sda1, /dev/xvda, /dev/vda, …)",
                clip(d)
            )))
        }
        None => None,
    };
    let token = client_token(p)?;
    let tags = tag_specs(p, "image")?;
    let images = ctx.list::<Image>().await?;
    if let Some(found) = earlier(&images, token.as_deref(), p)? {
        let mut x = Xml::new();
        x.leaf("imageId", found[0].ec2_id());
        return Ok(x);
    }
    if images
        .iter()
        .any(|i| objects::ec2_name(&i.metadata) == name)
    {
        return Err(Ec2Error::client(
            "InvalidAMIName.Duplicate",
            format!("AMI name {} is already in use by an image", clip(&name)),
        ));
    }
    let Some(location) = p.get_nonempty("ImageLocation") else {
        if p.get("BlockDeviceMapping.1.DeviceName").is_some() {
            return Err(Ec2Error::invalid_value(
                "BlockDeviceMapping: images backed by snapshots are not supported; give \
                 ImageLocation (an http(s) URL or a path on the server)",
            ));
        }
        return Err(Ec2Error::missing("ImageLocation"));
    };
    let (source, image_type, format) =
        if location.starts_with("http://") || location.starts_with("https://") {
            let t = type_of_location(location);
            (
                ImageSource {
                    url: Some(location.to_string()),
                    ..Default::default()
                },
                t,
                format_of_location(location, t),
            )
        } else if location.starts_with('/') {
            let t = type_of_location(location);
            (
                ImageSource {
                    path: Some(location.to_string()),
                    ..Default::default()
                },
                t,
                format_of_location(location, t),
            )
        } else {
            let existing = images
                .iter()
                .find(|i| i.ec2_id() == location || i.metadata.name == location)
                .ok_or_else(|| {
                    Ec2Error::invalid_value(format!(
                        "ImageLocation: '{}' is neither an http(s) URL, an absolute path, nor an \
                     image of this project",
                        clip(location)
                    ))
                })?;
            if existing.spec.source.upload {
                return Err(Ec2Error::invalid_value(format!(
                    "ImageLocation: image '{}' was uploaded; register its URL or upload the bytes \
                 again",
                    clip(location)
                )));
            }
            (
                existing.spec.source.clone(),
                existing.spec.image_type,
                existing.spec.format,
            )
        };
    let mut kernel = None;
    let mut ramdisk = None;
    if let Some(k) = p.get_nonempty("KernelId") {
        kernel = Some(
            part(&images, k, ImageType::Kernel, "KernelId")?
                .metadata
                .name
                .clone(),
        );
    }
    if let Some(r) = p.get_nonempty("RamdiskId") {
        if kernel.is_none() {
            return Err(Ec2Error::missing("KernelId"));
        }
        ramdisk = Some(
            part(&images, r, ImageType::Ramdisk, "RamdiskId")?
                .metadata
                .name
                .clone(),
        );
    }
    if image_type != ImageType::Machine && kernel.is_some() {
        return Err(Ec2Error::invalid_combination(
            "KernelId and RamdiskId go with machine images, not with a kernel or ramdisk",
        ));
    }
    // The server's host is not the tenant's to read: the same rules as
    // the native API's admission (and the import itself, which checks
    // again).
    let refused = if let Some(path) = &source.path {
        ctx.config.imports.check_path(path).err()
    } else if let Some(url) = &source.url {
        ctx.config.imports.check_url(url).err()
    } else {
        None
    };
    if let Some(why) = refused {
        return Err(Ec2Error::invalid_value(format!("ImageLocation: {why}")));
    }
    ctx.gate()?;
    let uid = new_uid(ctx.project(), Image::KIND, token.as_deref(), 0);
    let id = corral_api_types::ec2::image_id(image_type, &uid);
    let mut img = Image::new(
        ctx.project(),
        &id,
        ImageSpec {
            source,
            format,
            image_type,
            kernel,
            ramdisk,
            description,
            architecture: arch.unwrap_or_default(),
            tags,
            ..Default::default()
        },
    );
    img.metadata.uid = uid;
    if let Some(d) = root_device {
        img.metadata
            .annotations
            .insert(super::images::ROOT_DEVICE_ANNOTATION.to_string(), d);
    }
    objects::place_name(&mut img.metadata, &name, &id);
    stamp_token(&mut img.metadata, token.as_deref(), p);
    let img = objects::create(ctx.store, img).await?;
    let mut x = Xml::new();
    x.leaf("imageId", img.ec2_id());
    Ok(x)
}

/// An image of the caller's own project, by id.
async fn own_image(ctx: &Ctx<'_>) -> Result<Image> {
    let id = IMAGE.required(ctx.params)?;
    IMAGE.find(ctx.list::<Image>().await?, &id, |i| i.ec2_id())
}

const ATTRIBUTES: &[&str] = &[
    "description",
    "kernel",
    "ramdisk",
    "launchPermission",
    "productCodes",
    "blockDeviceMapping",
    "sriovNetSupport",
    "bootMode",
    "tpmSupport",
    "uefiData",
    "lastLaunchedTime",
    "imdsSupport",
    "deregistrationProtection",
];

pub async fn describe_attribute(ctx: &Ctx<'_>) -> Result<Xml> {
    let attr = ctx.params.required("Attribute")?.to_string();
    if !ATTRIBUTES.contains(&attr.as_str()) {
        return Err(Ec2Error::invalid_value(format!(
            "Value ({}) for parameter attribute is invalid. Unknown attribute.",
            clip(&attr)
        )));
    }
    let img = own_image(ctx).await?;
    ctx.gate()?;
    let images = ctx.list::<Image>().await?;
    let id_of = |name: &Option<String>| {
        name.as_ref().and_then(|n| {
            images
                .iter()
                .find(|i| &i.metadata.name == n)
                .map(|i| i.ec2_id())
        })
    };
    let mut x = Xml::new();
    x.leaf("imageId", img.ec2_id());
    let value = |x: &mut Xml, name: &str, v: Option<String>| {
        x.el(name, |x| {
            x.opt("value", v);
        });
    };
    match attr.as_str() {
        "description" => value(&mut x, "description", img.spec.description.clone()),
        "kernel" => value(&mut x, "kernel", id_of(&img.spec.kernel)),
        "ramdisk" => value(&mut x, "ramdisk", id_of(&img.spec.ramdisk)),
        "launchPermission" => {
            let mut perms: Vec<(&str, String)> = Vec::new();
            if img.spec.visibility == Visibility::Public {
                perms.push(("group", "all".to_string()));
            }
            perms.extend(
                img.spec
                    .launch_permissions
                    .iter()
                    .map(|u| ("userId", u.clone())),
            );
            x.set("launchPermission", &perms, |x, (k, v)| {
                x.leaf(k, v);
            });
        }
        "productCodes" => {
            x.set("productCodes", &[] as &[u8], |_, _| {});
        }
        "blockDeviceMapping" => {
            x.set("blockDeviceMapping", &[] as &[u8], |_, _| {});
        }
        "deregistrationProtection" => {
            value(&mut x, "deregistrationProtection", Some("disabled".into()))
        }
        // Attributes Corral has no notion of: present, without a value.
        other => value(&mut x, other, None),
    }
    Ok(x)
}

/// Launch permission changes: (add?, group all?, user ids).
struct PermissionChange {
    add: bool,
    all: bool,
    users: Vec<String>,
}

fn check_user(u: &str) -> Result<()> {
    if u.len() == 12 && u.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Ec2Error::client(
            "InvalidUserID.Malformed",
            format!("Invalid user id: '{}'", clip(u)),
        ))
    }
}

fn check_group(g: &str) -> Result<bool> {
    if g == "all" {
        Ok(true)
    } else {
        Err(Ec2Error::invalid_value(format!(
            "Group: '{}' is not a valid group; the only group is 'all'",
            clip(g)
        )))
    }
}

fn permission_changes(ctx: &Ctx<'_>) -> Result<Vec<PermissionChange>> {
    let p = ctx.params;
    let mut out = Vec::new();
    // The structured form: LaunchPermission.Add.N.Group / .UserId.
    for (key, add) in [
        ("LaunchPermission.Add", true),
        ("LaunchPermission.Remove", false),
    ] {
        for item in p.structs(key)? {
            let mut c = PermissionChange {
                add,
                all: false,
                users: Vec::new(),
            };
            if let Some(g) = item.get_nonempty("Group") {
                c.all = check_group(g)?;
            }
            if let Some(u) = item.get_nonempty("UserId") {
                check_user(u)?;
                c.users.push(u.to_string());
            }
            if item.get_nonempty("OrganizationArn").is_some()
                || item.get_nonempty("OrganizationalUnitArn").is_some()
            {
                return Err(Ec2Error::invalid_value(
                    "LaunchPermission: organizations are not supported; use UserId or Group",
                ));
            }
            out.push(c);
        }
    }
    // The flat form: OperationType + UserGroup.N / UserId.N.
    let groups = p.list("UserGroup")?;
    let users = p.list("UserId")?;
    if !groups.is_empty() || !users.is_empty() {
        let add = match p.get_nonempty("OperationType") {
            Some("add") => true,
            Some("remove") => false,
            Some(other) => {
                return Err(Ec2Error::invalid_value(format!(
                    "OperationType: '{}' is not add or remove",
                    clip(other)
                )))
            }
            None => return Err(Ec2Error::missing("OperationType")),
        };
        let mut c = PermissionChange {
            add,
            all: false,
            users: Vec::new(),
        };
        for g in &groups {
            c.all |= check_group(g)?;
        }
        for u in users {
            check_user(&u)?;
            c.users.push(u);
        }
        out.push(c);
    }
    Ok(out)
}

pub async fn modify_attribute(ctx: &Ctx<'_>) -> Result<Xml> {
    let p = ctx.params;
    let img = own_image(ctx).await?;
    let attr = p.get_nonempty("Attribute");
    let description = p
        .get("Description.Value")
        .or_else(|| {
            (attr == Some("description"))
                .then(|| p.get("Value"))
                .flatten()
        })
        .map(str::to_string);
    let changes = permission_changes(ctx)?;
    match attr {
        None | Some("description") | Some("launchPermission") => {}
        Some(other) => {
            return Err(Ec2Error::invalid_value(format!(
                "Attribute: '{}' cannot be modified; use description or launchPermission",
                clip(other)
            )))
        }
    }
    if description.is_none() && changes.is_empty() {
        return Err(Ec2Error::missing("LaunchPermission"));
    }
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 255)
    {
        return Err(Ec2Error::invalid_value(
            "Description: at most 255 characters",
        ));
    }
    ctx.gate()?;
    let me = account_id(ctx.project());
    objects::update(
        ctx.store,
        ctx.project(),
        &img.metadata.name,
        |i: &mut Image| {
            if let Some(d) = &description {
                i.spec.description = (!d.is_empty()).then(|| d.clone());
            }
            for c in &changes {
                if c.all {
                    i.spec.visibility = if c.add {
                        Visibility::Public
                    } else {
                        Visibility::Private
                    };
                }
                for u in &c.users {
                    // Sharing with oneself is a no-op, as on EC2.
                    if *u == me {
                        continue;
                    }
                    let perms = &mut i.spec.launch_permissions;
                    if c.add {
                        if !perms.contains(u) {
                            perms.push(u.clone());
                        }
                    } else {
                        perms.retain(|x| x != u);
                    }
                }
            }
            Ok(())
        },
    )
    .await?;
    Ok(super::ok_return())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_types_follow_file_names() {
        for (loc, t) in [
            ("https://x/ubuntu-vmlinuz-virtual", ImageType::Kernel),
            ("/srv/bzImage", ImageType::Kernel),
            ("https://x/initrd.img-6.1", ImageType::Ramdisk),
            ("https://x/my-initramfs.gz", ImageType::Ramdisk),
            ("https://x/cirros.img", ImageType::Machine),
        ] {
            assert_eq!(type_of_location(loc), t, "{loc}");
        }
        assert_eq!(
            format_of_location("https://x/disk.raw", ImageType::Machine),
            ImageFormat::Raw
        );
        assert_eq!(
            format_of_location("https://x/disk.img", ImageType::Machine),
            ImageFormat::Qcow2
        );
        assert_eq!(
            format_of_location("https://x/vmlinuz", ImageType::Kernel),
            ImageFormat::Raw
        );
    }
}
