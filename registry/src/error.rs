//! What a registry write can fail with, before any façade words it.

use corral_api_types::{FieldErrors, InvalidResourceVersion};
use corral_store::StoreError;

use crate::quota::QuotaError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The object breaks its kind's rules (or a transition's).
    #[error("{kind} {name:?} is invalid: {errors}")]
    Invalid {
        kind: &'static str,
        name: String,
        errors: FieldErrors,
    },
    /// No such object.
    #[error("{plural} {name:?} not found")]
    NotFound { plural: &'static str, name: String },
    /// The caller named a `resourceVersion` that is no longer current.
    #[error(
        "{kind} {name:?} was modified: you sent resourceVersion {sent}, it is now {current}; read it again and retry"
    )]
    Stale {
        kind: &'static str,
        name: String,
        sent: String,
        current: String,
    },
    /// The caller sent a `resourceVersion` that is not one.
    #[error(transparent)]
    BadResourceVersion(#[from] InvalidResourceVersion),
    /// Every retry of the compare-and-swap lost to another writer.
    #[error("{kind} {name:?} kept changing while it was written: retry")]
    Contended { kind: &'static str, name: String },
    /// Over a project quota (always [`QuotaError::Exceeded`]: a store
    /// error while charging is [`RegistryError::Store`]).
    #[error(transparent)]
    Quota(QuotaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QuotaError> for RegistryError {
    fn from(e: QuotaError) -> RegistryError {
        match e {
            QuotaError::Store(e) => RegistryError::Store(e),
            e => RegistryError::Quota(e),
        }
    }
}
