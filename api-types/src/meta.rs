//! Object metadata shared by every kind, and the [`Resource`] trait that
//! lets the store and the runtime handle kinds generically.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only API version this model speaks.
pub const API_VERSION: &str = "corral/v1";

/// Project placeholder used in store keys of cluster-scoped kinds.
pub const CLUSTER_PROJECT: &str = "_";

/// Whether a kind lives inside a project (tenant) or cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Project,
    Cluster,
}

/// Metadata every object carries. Fields the server owns (`uid`,
/// `resourceVersion`, `generation`, timestamps) are ignored or checked on
/// write; users set `name`, `project`, `labels`, `annotations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS label (RFC 1123), unique per kind within a project.
    #[serde(default)]
    pub name: String,
    /// The tenant. Empty for cluster-scoped kinds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Store revision of the last write; opaque to clients. Never stored in
    /// the object's bytes: the store fills it in on every read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Bumped when (and only when) the spec changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Points at the object that owns this one; deleting the owner deletes the
/// dependents (garbage collection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub controller: bool,
}

/// `True`, `False` or `Unknown`, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// One observed fact about an object, with why and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
}

/// What the store, the API server and the runtime need to know about a kind.
pub trait Resource:
    Serialize + DeserializeOwned + JsonSchema + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// `Instance`, `Network`, ...
    const KIND: &'static str;
    /// Lower-case plural used in store keys and URLs: `instances`.
    const PLURAL: &'static str;
    const SCOPE: Scope;

    type Spec: Serialize + PartialEq + Clone;
    type Status: Serialize + PartialEq + Clone + Default;

    /// The object's own `apiVersion` and `kind` fields, as written (a
    /// decoded body may name another kind than its type's).
    fn type_meta(&self) -> (&str, &str);
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn spec(&self) -> &Self::Spec;
    fn status(&self) -> Option<&Self::Status>;
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
    /// A new object with this name/project, default spec and no status.
    fn new(project: &str, name: &str, spec: Self::Spec) -> Self;

    /// Whether the kind has fields the store seals at rest.
    const HAS_SECRETS: bool = false;
    /// Those fields (spec fields declared `secret` in [`resource!`]): the
    /// store encrypts them on write and decrypts them on read.
    fn secrets_mut(&mut self) -> Vec<&mut String> {
        Vec::new()
    }
}

/// Declares a kind: the top-level struct (`apiVersion`, `kind`, `metadata`,
/// `spec`, `status`) and its [`Resource`] impl.
#[macro_export]
macro_rules! resource {
    ($(#[$doc:meta])* $kind:ident, $spec:ty, $status:ty, $plural:literal, $scope:ident $(, secret $field:ident)*) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $kind {
            /// Always `corral/v1`.
            pub api_version: String,
            /// The kind's name; must match the type.
            pub kind: String,
            pub metadata: $crate::ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            /// Written by controllers and agents only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }

        impl $crate::Resource for $kind {
            const KIND: &'static str = stringify!($kind);
            const PLURAL: &'static str = $plural;
            const SCOPE: $crate::Scope = $crate::Scope::$scope;
            type Spec = $spec;
            type Status = $status;

            fn type_meta(&self) -> (&str, &str) {
                (&self.api_version, &self.kind)
            }
            fn meta(&self) -> &$crate::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut $crate::ObjectMeta {
                &mut self.metadata
            }
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
            const HAS_SECRETS: bool = !<[&str]>::is_empty(&[$(stringify!($field)),*]);
            fn secrets_mut(&mut self) -> Vec<&mut String> {
                vec![$(&mut self.spec.$field),*]
            }
            fn new(project: &str, name: &str, spec: $spec) -> Self {
                $kind {
                    api_version: $crate::API_VERSION.to_string(),
                    kind: stringify!($kind).to_string(),
                    metadata: $crate::ObjectMeta {
                        name: name.to_string(),
                        project: project.to_string(),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                }
            }
        }
    };
}
