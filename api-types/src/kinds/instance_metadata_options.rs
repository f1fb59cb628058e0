//! An instance's metadata options (EC2's): how the metadata service at
//! 169.254.169.254 answers it, and the rules they bring (the hop limit's
//! range; while tags are served, tag keys that can be paths).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::InstanceSpec;
use crate::validate::{check_range, key};
use crate::FieldErrors;

/// Smallest and largest `metadataOptions.httpPutResponseHopLimit`.
pub const HOP_LIMIT_RANGE: (u32, u32) = (1, 64);

/// Whether the metadata service asks for IMDSv2 session tokens (EC2's
/// `HttpTokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// IMDSv1 and IMDSv2 alike.
    #[default]
    Optional,
    /// IMDSv2 only: a request without a valid token is answered 401.
    Required,
}

impl HttpTokens {
    /// The name as written (and as EC2 writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Optional => "optional",
            HttpTokens::Required => "required",
        }
    }
}

/// A metadata service feature turned on or off (EC2's `HttpEndpoint` and
/// `InstanceMetadataTags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetadataSwitch {
    Enabled,
    Disabled,
}

impl MetadataSwitch {
    fn enabled() -> Self {
        MetadataSwitch::Enabled
    }

    fn disabled() -> Self {
        MetadataSwitch::Disabled
    }

    /// The name as written (and as EC2 writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataSwitch::Enabled => "enabled",
            MetadataSwitch::Disabled => "disabled",
        }
    }

    pub fn is_enabled(self) -> bool {
        self == MetadataSwitch::Enabled
    }
}

fn default_hop_limit() -> u32 {
    1
}

/// How the metadata service answers one instance. Every field has EC2's
/// default for a launch, so an absent `metadataOptions` and one that
/// names only what differs mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetadataOptions {
    /// `optional` (default): IMDSv1 and IMDSv2; `required`: IMDSv2 only.
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// `enabled` (default); `disabled`: every request is answered 403
    /// Forbidden, as EC2 answers when the IMDS is turned off.
    #[serde(default = "MetadataSwitch::enabled")]
    pub http_endpoint: MetadataSwitch,
    /// IP TTL of the answers to token requests (1-64, default 1): how
    /// many hops an IMDSv2 token can travel, so that with 1 a container
    /// behind the guest's own bridge gets none.
    #[serde(default = "default_hop_limit")]
    pub http_put_response_hop_limit: u32,
    /// `enabled`: the instance's tags are served under
    /// `meta-data/tags/instance/`, and their keys must then be usable as
    /// path names; `disabled` (default).
    #[serde(default = "MetadataSwitch::disabled")]
    pub instance_metadata_tags: MetadataSwitch,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        Self {
            http_tokens: HttpTokens::default(),
            http_endpoint: MetadataSwitch::enabled(),
            http_put_response_hop_limit: default_hop_limit(),
            instance_metadata_tags: MetadataSwitch::disabled(),
        }
    }
}

impl MetadataOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a tag key cannot be served as a metadata path (EC2's rule for
/// instances that allow tags in their metadata): letters, digits and
/// `+ - = . , _ : @` only, and not `.`, `..` or `_index`.
pub fn metadata_tag_key_refusal(key: &str) -> Option<&'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c);
    if !key.chars().all(allowed) {
        Some("key must hold only letters, digits and + - = . , _ : @")
    } else if matches!(key, "." | ".." | "_index") {
        Some("key must not be \".\", \"..\" or \"_index\"")
    } else {
        None
    }
}

/// `spec.metadataOptions`, and the tag keys it makes metadata paths.
pub(super) fn check_metadata_options(errs: &mut FieldErrors, spec: &InstanceSpec) {
    let o = &spec.metadata_options;
    check_range(
        errs,
        "spec.metadataOptions.httpPutResponseHopLimit",
        o.http_put_response_hop_limit,
        HOP_LIMIT_RANGE.0,
        HOP_LIMIT_RANGE.1,
    );
    if o.instance_metadata_tags.is_enabled() {
        for k in spec.tags.keys() {
            if let Some(why) = metadata_tag_key_refusal(k) {
                errs.push(
                    key("spec.tags", k),
                    format!(
                        "{why} while spec.metadataOptions.instanceMetadataTags is enabled \
                         (the key is a path of the metadata service)"
                    ),
                );
            }
        }
    }
}
