//! The resource model: every kind Corral stores (Instance, Network, Volume,
//! ...), their metadata, validation with field paths, defaulting, manifest
//! parsing and JSON Schemas.
//!
//! This crate owns the shape of the data and the rules about it — one place
//! for each rule, used by the API server, the CLI and the EC2 façade alike.
//! It must not do I/O: no network, no files, no clocks beyond what callers
//! pass in, no async. Anything that talks to the world lives above it.

mod any;
pub mod auth;
pub mod ec2;
mod field;
pub mod kinds;
mod manifest;
mod meta;
pub mod net;
pub mod rate;
mod resource_version;
mod schema;
pub mod selector;
pub mod validate;
pub mod wire;

pub use any::{kind_info, AnyObject, KindInfo, ParseError, KINDS};
pub use field::{FieldError, FieldErrors};
pub use kinds::*;
pub use manifest::{parse_manifests, ManifestError, ManifestErrorKind};
pub use meta::{
    Condition, ConditionStatus, ObjectMeta, OwnerReference, Resource, Scope, API_VERSION,
    CLUSTER_PROJECT,
};
pub use resource_version::{InvalidResourceVersion, ResourceVersion};
pub use schema::json_schemas;
pub use validate::{Defaults, HostRef, HostRefs, Validate, ValidateUpdate};
