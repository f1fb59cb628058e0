//! The EC2-compatible instance metadata service (IMDSv1 and IMDSv2) that
//! guests reach at 169.254.169.254:80.
//!
//! The host DNATs 169.254.169.254:80 to a listener of this service on the
//! gateway address of the guest's network, so a connection says who is
//! asking by its two ends: the *local* address is the gateway of the guest's
//! network on this host, the *peer* address is the guest's own IP (the host
//! firewall drops guest traffic with a source address that is not the
//! guest's). [`MetadataTable`] maps exactly that pair to one instance's
//! [`InstanceMetadata`].
//!
//! Invariants:
//! - identity comes from the TCP connection only, never from anything in the
//!   request (`Host`, `X-Forwarded-For`, the query): a pair that is not in
//!   the table gets 404 for every request, so no guest can read another's
//!   data;
//! - IMDSv2 tokens are stateless: an HMAC, under a random key held by the
//!   table, over the (local, peer) pair, the instance id and the expiry. A
//!   token is good only for the instance it was issued to, on any listener
//!   sharing the table, until it expires or the agent restarts (clients
//!   then get 401 and ask for a new one, as on EC2);
//! - expiry is measured on the monotonic clock: a wall-clock jump neither
//!   extends nor cuts a token's life;
//! - no input makes the service panic or answer 500; requests with an
//!   oversized target or header block are refused before any work;
//! - one guest address holds at most 16 connections, each closed after 5 s
//!   without I/O, and [`serve`] returns at most [`SHUTDOWN_GRACE`] after its
//!   shutdown signal: no guest can take the agent's file descriptors or
//!   hold up its shutdown.
//!
//! The answers follow EC2's: `text/plain` values and listings (one entry a
//! line, no trailing newline, directories with a trailing `/`), a trailing
//! `/` on a leaf is ignored (botocore asks for
//! `placement/availability-zone/`), dated versions show only the categories
//! that existed at that version, and errors are EC2's small HTML pages
//! (`404 - Not Found`, `401 - Unauthorized`, ...). An instance's options
//! are EC2's too: a turned-off endpoint answers `403 - Forbidden` to
//! everything, `HttpTokens=required` refuses requests without a token,
//! the answer to a token request leaves with the hop limit as its IP TTL,
//! and tags are under `meta-data/tags/instance/` (`latest` only) when
//! allowed.
//!
//! Where things are: the table and what an instance sees (here), the
//! listener and the answer to one request (listener.rs), the tree of
//! paths (tree.rs) and IMDSv2 tokens (token.rs).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};

mod listener;
mod token;
mod tree;

pub use listener::{serve, SHUTDOWN_GRACE};
use token::TokenKey;

/// Where guests reach the service; the host DNATs it to a listener of
/// [`serve`] on the guest network's gateway address.
pub const METADATA_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80);

/// Request header carrying an IMDSv2 token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Request header asking for a token's lifetime; echoed on the answer.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Longest token lifetime EC2 grants (six hours), in seconds.
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;

/// What one instance sees. Built by the agent from the Instance and the
/// objects it names; the service only reads it. The default serves
/// nothing about anyone, with EC2's default options (endpoint on, tokens
/// optional, hop limit 1, no tags).
#[derive(Clone, Debug)]
pub struct InstanceMetadata {
    /// EC2 id, `i-` and 17 hex digits.
    pub instance_id: String,
    /// The project's EC2 account id (`ownerId`), for the identity document.
    pub account_id: String,
    /// `ami-…` of the boot image; absent when booted from a volume.
    pub ami_id: Option<String>,
    /// `aki-…`/`ari-…` of a separately booted kernel and ramdisk.
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub instance_type: String,
    /// `x86_64`, `arm64`, … (identity document).
    pub architecture: String,
    /// `local-hostname` and `hostname`.
    pub hostname: String,
    /// The first interface's private address.
    pub local_ipv4: String,
    /// Floating address mapped to `local_ipv4`, if any.
    pub public_ipv4: Option<String>,
    pub public_hostname: Option<String>,
    /// The first interface's MAC; `mac` and `network/` are left out when
    /// empty.
    pub mac: String,
    pub availability_zone: String,
    pub region: String,
    /// (key name, OpenSSH public key), served as `public-keys/N`.
    pub public_keys: Vec<(String, String)>,
    /// Served raw at `/{version}/user-data`; absent or empty gives 404.
    pub user_data: Option<Vec<u8>>,
    /// Security group names.
    pub security_groups: Vec<String>,
    pub reservation_id: Option<String>,
    /// `pendingTime` in the identity document.
    pub launch_time: Option<DateTime<Utc>>,
    /// IMDSv2 only (EC2's `HttpTokens=required`): requests without a valid
    /// token get 401.
    pub http_tokens_required: bool,
    /// EC2's `HttpEndpoint`: when false every request, token requests
    /// included, is answered 403 Forbidden, as EC2 answers an instance
    /// whose IMDS is turned off.
    pub http_endpoint_enabled: bool,
    /// EC2's `HttpPutResponseHopLimit` (1-64): the IP TTL of the answers to
    /// token requests, so that a token travels at most this many hops.
    pub http_put_response_hop_limit: u8,
    /// The instance's tags, served as `meta-data/tags/instance/<key>` when
    /// present (EC2's `InstanceMetadataTags=enabled`); `None` serves none.
    pub tags: Option<BTreeMap<String, String>>,
}

impl Default for InstanceMetadata {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            account_id: String::new(),
            ami_id: None,
            kernel_id: None,
            ramdisk_id: None,
            instance_type: String::new(),
            architecture: String::new(),
            hostname: String::new(),
            local_ipv4: String::new(),
            public_ipv4: None,
            public_hostname: None,
            mac: String::new(),
            availability_zone: String::new(),
            region: String::new(),
            public_keys: Vec::new(),
            user_data: None,
            security_groups: Vec::new(),
            reservation_id: None,
            launch_time: None,
            http_tokens_required: false,
            http_endpoint_enabled: true,
            http_put_response_hop_limit: 1,
            tags: None,
        }
    }
}

type Entries = HashMap<(Ipv4Addr, Ipv4Addr), Arc<InstanceMetadata>>;

/// Who is who on this host: (local gateway address, guest address) →
/// metadata. Cheap to clone; every clone sees the same set and the same
/// token key, so one table can back every listener of the agent.
#[derive(Clone)]
pub struct MetadataTable {
    inner: Arc<TableInner>,
}

struct TableInner {
    entries: RwLock<Arc<Entries>>,
    tokens: TokenKey,
}

impl MetadataTable {
    /// An empty table with a fresh random token key.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(TableInner {
                entries: RwLock::new(Arc::new(HashMap::new())),
                tokens: TokenKey::random(),
            }),
        }
    }

    /// Replaces the whole set at once: a request sees either the old set or
    /// the new one. Keys are (local gateway address, guest address); when a
    /// key repeats, the last entry wins.
    pub fn set<I, M>(&self, entries: I)
    where
        I: IntoIterator<Item = ((Ipv4Addr, Ipv4Addr), M)>,
        M: Into<Arc<InstanceMetadata>>,
    {
        let mut next = HashMap::new();
        for (key, md) in entries {
            if let Some(old) = next.insert(key, md.into()) {
                tracing::warn!(
                    local = %key.0, peer = %key.1, dropped = %old.instance_id,
                    "two instances claim one metadata address; the last wins"
                );
            }
        }
        *self
            .inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }

    /// The instance answering to a guest at `peer` that reached us on
    /// `local`.
    pub fn get(&self, local: Ipv4Addr, peer: Ipv4Addr) -> Option<Arc<InstanceMetadata>> {
        self.snapshot().get(&(local, peer)).cloned()
    }

    /// Number of instances in the table.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<Entries> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Default for MetadataTable {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MetadataTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token key stays out of logs.
        f.debug_struct("MetadataTable")
            .field("instances", &self.len())
            .finish_non_exhaustive()
    }
}
