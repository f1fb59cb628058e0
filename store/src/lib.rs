//! The versioned store: the one contract every part of Corral reads and
//! writes desired and observed state through, with two backends — etcd for
//! clusters and an embedded single-file store for `corral up`.
//!
//! What it guarantees (the contract suite in `tests/contract.rs` checks
//! each, against both backends):
//! - writes are compare-and-swap: create only if absent, update/delete only
//!   at the revision the caller read; a lost race is [`StoreError::Conflict`],
//!   never a silent overwrite; an update with unchanged bytes writes nothing;
//! - `resourceVersion` is the store revision (etcd's `mod_revision`);
//! - a list is paged with limit/continue, every page at one revision;
//! - a watch from revision R delivers every later event once, in order,
//!   across etcd reconnects; when R's history is compacted it ends with
//!   [`StoreError::Expired`] and the caller relists.
//!
//! [`blobs`] keeps content-addressed files (image bytes) beside it;
//! [`import`] says what a tenant-named path or URL may make a server read.
//! [`secrets`] seals the fields a kind declares secret with a key file
//! outside the store, so the store's bytes alone reveal no secret.
//!
//! It must not know about any kind's rules (validation, generation,
//! finalizers, quotas): that is `corral-registry`'s job, over
//! [`ResourceStore`].

pub mod blobs;
mod contract;
mod embedded;
mod etcd;
pub mod import;
pub mod secrets;
mod typed;

pub use contract::{
    continue_after, error_text, KeyValue, ListOptions, ListPage, Result, Store, StoreError,
    UpdateOutcome, WatchEvent, WatchStream,
};
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use etcd::EtcdStore;
pub use typed::{
    console_key, kind_prefix, object_key, parse_resource_version, ObjectEvent, ObjectList,
    ObjectWatch, ResourceStore, ROOT,
};
