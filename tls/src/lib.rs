//! The certificates of Corral's links and the listeners that present them.
//!
//! It owns: the CA a server makes in its data directory on first start and
//! the server certificate issued from it at every start ([`pki`]), the
//! operator's own files as an alternative, the TLS listener the native and
//! EC2 APIs serve on ([`listener`]) and the connection limits they serve
//! with ([`serve`]), and learning a server's CA from a pinned hash at join
//! time ([`discover`]).
//!
//! It must not know about HTTP routes, users or the store, and must never
//! accept a certificate it has not verified: the only verifier here checks
//! the pinned hash and then the whole chain.

pub mod discover;
mod host;
pub mod listener;
pub mod pki;
pub mod serve;

use std::path::PathBuf;
use std::sync::Arc;

pub use discover::{fetch_pinned_ca, parse_pin};
pub use listener::{Listen, TlsListener};
pub use pki::{ca_hash, from_files, load_or_create, ServerIdentity, SubjectNames};
pub use serve::{serve, Limits, Peer};

/// What went wrong making, reading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{0}: not a PEM certificate bundle: {1}")]
    Pem(PathBuf, String),
    #[error("{0}: not a usable private key: {1}")]
    Key(PathBuf, String),
    #[error("making a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{0:?} cannot be a certificate name")]
    Name(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
    #[error("{0:?} is not a CA hash: expected sha256: and 64 hex digits (`corral up` prints it)")]
    Pin(String),
    #[error("{0}: {1}")]
    Url(String, String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0}: {1}")]
    Handshake(String, String),
    #[error("the server presented no CA with the pinned hash {0}")]
    PinMismatch(String),
}

/// The one crypto provider Corral's TLS uses (aws-lc-rs, as reqwest's).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
