//! The one write path for resources: admission and the compare-and-swap
//! loop every writer on a tenant's behalf goes through — the native API
//! server and the EC2 façade alike (and GitOps, through [`Registry::apply`]).
//!
//! For each kind, [`Registry`] owns the sequence: defaults → validation →
//! (for a change) the transition rules of `validate_update`, the server's
//! metadata carried over and `generation` bumped on a spec change → quota
//! charge ([`quota`]) → write by compare-and-swap, retried on a conflict
//! the caller did not risk → quota confirm or refund; deletes honour
//! finalizers (mark, then whoever holds one finishes). The rules themselves
//! are api-types'; the bytes are the store's.
//!
//! Errors are [`RegistryError`]; each façade maps them to its own wire
//! form (HTTP `Status` bodies, EC2 error codes) with a `From` impl, and
//! may pass its own checks in as closures returning its own error type.
//!
//! It must not know about HTTP, EC2 or who the caller is (roles, host
//! references): those checks are the façades', handed in as closures.

mod error;
pub mod quota;
mod registry;

pub use error::RegistryError;
pub use registry::{ApplyResult, ProjectCache, Registry, APPLIED_ANNOTATION};
