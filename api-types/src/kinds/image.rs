//! Image: a bootable disk image (or an AKI/ARI-style kernel or ramdisk),
//! imported once and cached per node by sha256.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_zero_i64, is_zero_u8};
use crate::validate::{
    check_description, check_max_chars, check_opt_ref, check_range, check_tags, header,
    impl_validate_update, NameRule,
};
use crate::{Condition, Defaults, FieldErrors, Validate};

crate::resource!(
    /// A disk image instances and volumes are created from.
    Image,
    ImageSpec,
    ImageStatus,
    "images",
    Project
);

/// Most accounts an image may be shared with.
pub const MAX_LAUNCH_PERMISSIONS: usize = 100;

/// Longest `kernelArgs`, characters.
pub const MAX_KERNEL_ARGS: usize = 1024;

/// Where the image's bytes come from. Exactly one field must be set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSource {
    /// The bytes are uploaded through the API after the object is created.
    #[serde(default, skip_serializing_if = "is_false")]
    pub upload: bool,
    /// Download from this `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Import from this absolute path on the server host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Disk image file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Qcow2,
    Raw,
    /// A CD-ROM image, attached read-only.
    Iso,
}

/// What the image is for (EC2's AMI, AKI and ARI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// A bootable disk (`ami-`).
    #[default]
    Machine,
    /// A kernel for direct boot (`aki-`).
    Kernel,
    /// An initial ramdisk for direct boot (`ari-`).
    Ramdisk,
}

/// Who may use an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only its project.
    #[default]
    Private,
    /// Every project.
    Public,
}

/// CPU architecture of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum Architecture {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
    #[serde(rename = "i686")]
    I686,
}

/// Desired state of an image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    /// Where the bytes come from: `upload: true`, `url` or `path`.
    #[serde(default)]
    pub source: ImageSource,
    /// `qcow2` (default), `raw` or `iso`.
    #[serde(default)]
    pub format: ImageFormat,
    /// `machine` (default), `kernel` or `ramdisk`.
    #[serde(default)]
    pub image_type: ImageType,
    /// Name of a kernel Image to boot directly (machine images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Name of a ramdisk Image to go with `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    /// Kernel command line, with `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// `private` (default) or `public`.
    #[serde(default)]
    pub visibility: Visibility,
    /// EC2 account ids (12 digits, one per project) that may also see and
    /// launch this image — EC2's launchPermission by user id;
    /// `visibility: public` is its `all` group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub launch_permissions: Vec<String>,
    /// `x86_64` (default), `aarch64` or `i686`.
    #[serde(default)]
    pub architecture: Architecture,
    /// Free text, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Smallest root disk this image needs, GiB.
    #[serde(
        default,
        rename = "minDiskGiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_disk_gib: Option<u32>,
    /// EC2-style tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Where an image is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImagePhase {
    #[default]
    Pending,
    Importing,
    Available,
    Failed,
}

/// Observed state of an image.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageStatus {
    #[serde(default)]
    pub phase: ImagePhase,
    /// Hex SHA-256 of the image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// EC2 id: `ami-`, `aki-` or `ari-` and 17 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_id: Option<String>,
    /// Import progress, percent.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

impl Validate for Image {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let spec = &self.spec;
        let src = &spec.source;
        let set = usize::from(src.upload)
            + usize::from(src.url.is_some())
            + usize::from(src.path.is_some());
        match set {
            0 => errs.push("spec.source", "required: set one of upload, url or path"),
            1 => {}
            _ => errs.push("spec.source", "only one of upload, url or path may be set"),
        }
        if let Some(u) = &src.url {
            if !is_http_url(u) {
                errs.push("spec.source.url", "must be an http:// or https:// URL");
            }
        }
        if let Some(p) = &src.path {
            if !p.starts_with('/') || p.contains('\0') {
                errs.push("spec.source.path", "must be an absolute path");
            }
        }
        check_opt_ref(&mut errs, "spec.kernel", spec.kernel.as_ref());
        check_opt_ref(&mut errs, "spec.ramdisk", spec.ramdisk.as_ref());
        if spec.image_type != ImageType::Machine {
            if spec.kernel.is_some() {
                errs.push("spec.kernel", "only machine images may name a kernel");
            }
            if spec.ramdisk.is_some() {
                errs.push("spec.ramdisk", "only machine images may name a ramdisk");
            }
        } else if spec.kernel.is_none() && spec.ramdisk.is_some() {
            errs.push("spec.ramdisk", "requires spec.kernel");
        }
        if let Some(a) = &spec.kernel_args {
            if spec.kernel.is_none() {
                errs.push("spec.kernelArgs", "requires spec.kernel");
            }
            check_max_chars(&mut errs, "spec.kernelArgs", a, MAX_KERNEL_ARGS);
        }
        check_description(&mut errs, "spec.description", spec.description.as_deref());
        if let Some(m) = spec.min_disk_gib {
            check_range(&mut errs, "spec.minDiskGiB", m, 1, 16384);
        }
        for (k, id) in spec.launch_permissions.iter().enumerate() {
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                errs.push(
                    format!("spec.launchPermissions[{k}]"),
                    "must be a 12-digit account id",
                );
            }
        }
        if spec.launch_permissions.len() > MAX_LAUNCH_PERMISSIONS {
            errs.push(
                "spec.launchPermissions",
                format!("at most {MAX_LAUNCH_PERMISSIONS} accounts"),
            );
        }
        check_tags(&mut errs, "spec.tags", &spec.tags);
        errs
    }
}

impl crate::HostRefs for Image {
    fn host_refs(&self) -> Vec<crate::HostRef<'_>> {
        let src = &self.spec.source;
        let mut refs = Vec::new();
        if let Some(path) = &src.path {
            refs.push(crate::HostRef::File {
                field: "spec.source.path",
                path,
            });
        }
        if let Some(url) = &src.url {
            refs.push(crate::HostRef::Url {
                field: "spec.source.url",
                url,
            });
        }
        refs
    }
}

// Visibility, format, type and architecture have serde defaults
// (`private`, `qcow2`, `machine`, `x86_64`); nothing else to fill.
impl Defaults for Image {}

// What the bytes are and where they come from is fixed.
impl_validate_update!(
    Image,
    "spec.source" => source,
    "spec.format" => format,
    "spec.imageType" => image_type,
    "spec.architecture" => architecture,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::validate::DNS_LABEL_MSG;
    use crate::Resource;

    fn image(source: ImageSource) -> Image {
        Image::new(
            "demo",
            "tiny",
            ImageSpec {
                source,
                ..Default::default()
            },
        )
    }

    #[test]
    fn round_trip_and_defaults() {
        let i: Image = round_trip_kind(
            r#"
metadata: {name: tiny, project: demo}
spec:
  source: {url: "https://example.com/cirros.img"}
status:
  phase: available
  sha256: 0000000000000000000000000000000000000000000000000000000000000000
  sizeBytes: 16338944
  ec2Id: ami-0123456789abcdef0
  progress: 100
"#,
        );
        assert_eq!(i.spec.visibility, Visibility::Private);
        assert_eq!(i.spec.format, ImageFormat::Qcow2);
        assert_eq!(i.spec.image_type, ImageType::Machine);
        assert_eq!(i.spec.architecture, Architecture::X86_64);
        assert_eq!(serde_json::to_value(i.spec.architecture).unwrap(), "x86_64");
        assert_eq!(i.status.as_ref().unwrap().phase, ImagePhase::Available);
        assert_valid(&i);

        let k: Image = round_trip_kind(
            r#"
metadata: {name: vm, project: demo}
spec:
  source: {path: /srv/images/vm.raw}
  format: raw
  kernel: vmlinuz
  ramdisk: initrd
  kernelArgs: console=ttyS0 root=/dev/vda
  visibility: public
  architecture: aarch64
  minDiskGiB: 2
"#,
        );
        assert_valid(&k);
    }

    #[test]
    fn source_rules() {
        assert_errors(
            &image(ImageSource::default()).validate(),
            &["spec.source: required: set one of upload, url or path"],
        );
        assert_errors(
            &image(ImageSource {
                upload: true,
                url: Some("ftp://x/y".into()),
                path: Some("relative/p".into()),
            })
            .validate(),
            &[
                "spec.source: only one of upload, url or path may be set",
                "spec.source.url: must be an http:// or https:// URL",
                "spec.source.path: must be an absolute path",
            ],
        );
        assert!(image(ImageSource {
            upload: true,
            ..Default::default()
        })
        .validate()
        .is_empty());
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https://a b"));
        assert!(is_http_url("http://10.0.0.1:8080/x.img?sig=1"));
    }

    #[test]
    fn kernel_rules() {
        let mut i = image(ImageSource {
            upload: true,
            ..Default::default()
        });
        i.spec.ramdisk = Some("initrd".into());
        i.spec.kernel_args = Some("x".repeat(MAX_KERNEL_ARGS + 1));
        i.spec.min_disk_gib = Some(0);
        i.spec.description = Some("d".repeat(300));
        assert_errors(
            &i.validate(),
            &[
                "spec.ramdisk: requires spec.kernel",
                "spec.kernelArgs: requires spec.kernel",
                "spec.kernelArgs: must be at most 1024 characters (is 1025)",
                "spec.minDiskGiB: must be between 1 and 16384 (is 0)",
                "spec.description: must be at most 255 characters (is 300)",
            ],
        );
        let mut k = image(ImageSource {
            upload: true,
            ..Default::default()
        });
        k.spec.image_type = ImageType::Kernel;
        k.spec.kernel = Some("Other".into());
        k.spec.ramdisk = Some("rd".into());
        assert_errors(
            &k.validate(),
            &[
                &format!("spec.kernel: {DNS_LABEL_MSG}"),
                "spec.kernel: only machine images may name a kernel",
                "spec.ramdisk: only machine images may name a ramdisk",
            ],
        );
    }
}
