//! The store contract: a versioned key-value space with compare-and-swap
//! writes, consistent paginated lists and ordered watches. Both backends
//! implement [`Store`] and pass the same contract suite (tests/contract.rs).
//!
//! Revisions are etcd's: one global counter, bumped by every write; a key's
//! `mod_revision` is the revision of its last write and is what callers
//! pass back as the precondition of their next write.

use async_trait::async_trait;
use tokio::sync::mpsc;

/// A key with its value and the revisions that version it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which this key was (last) created.
    pub create_revision: i64,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
}

/// One change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created (when `kv.create_revision == kv.mod_revision`) or updated.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// Deleted at `revision`; `prev` is the value it had.
    Delete {
        key: String,
        revision: i64,
        prev: Option<KeyValue>,
    },
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { kv, .. } => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// Result of an update: the key's new `mod_revision`, and whether anything
/// was written (an update with unchanged bytes writes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub revision: i64,
    pub changed: bool,
}

/// How to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// At most this many items; `None` or 0 means all.
    pub limit: Option<usize>,
    /// Token from a previous page; the listing continues at that page's
    /// revision.
    pub continue_token: Option<String>,
    /// List as of this revision instead of the newest.
    pub revision: Option<i64>,
}

/// One page of a listing, all read at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    pub revision: i64,
    /// Present when more items follow; absent on the last page.
    pub continue_token: Option<String>,
}

/// Errors every backend reports the same way, so callers can branch on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    /// The precondition failed: someone else wrote the key first.
    #[error("{key} was modified: expected revision {expected}, current revision {current}")]
    Conflict {
        key: String,
        expected: i64,
        current: i64,
    },
    /// The requested revision's history is gone; relist and watch again.
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Expired { requested: i64, compacted: i64 },
    #[error("invalid continue token")]
    InvalidContinueToken,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("store backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored object at {key} could not be decoded")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("object could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// The backend is out of space (etcd's NOSPACE alarm, a full disk).
    #[error("the store is out of space: {0}")]
    NoSpace(String),
    /// The object's stored form is larger than the backend keeps.
    #[error("{key} would be {size} bytes stored; this store keeps objects up to {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// A sealed secret field of the object at `key` did not open.
    #[error("a secret of {key} could not be opened")]
    Secret {
        key: String,
        #[source]
        source: crate::secrets::SecretsError,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An error and its causes on one line (`a: b: c`), for messages that
/// must name the real cause (a full disk) without a logging layer.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A live watch. Events arrive in revision order, each exactly once. If the
/// history the watch needs was compacted, it yields one
/// [`StoreError::Expired`] and ends: the caller relists.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent>>,
}

impl WatchStream {
    pub(crate) fn channel(capacity: usize) -> (mpsc::Sender<Result<WatchEvent>>, WatchStream) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, WatchStream { rx })
    }

    /// The next event; `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

/// The versioned store. Keys are `/`-separated paths; prefixes passed to
/// `list` and `watch` match byte-wise, so callers end them with `/`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and benchmarks: `etcd`, `embedded`.
    fn backend(&self) -> &'static str;

    /// The largest value this backend stores; [`crate::ResourceStore`]
    /// refuses larger objects with [`StoreError::TooLarge`] before asking.
    fn max_value_bytes(&self) -> usize {
        usize::MAX
    }

    /// Whether the backend can take writes now; the error says why not
    /// (`/readyz` answers it).
    async fn health(&self) -> Result<()> {
        self.current_revision().await.map(|_| ())
    }

    /// Repairs what the backend can repair by itself (etcd: a NOSPACE
    /// alarm once space is back); true when something was repaired.
    async fn heal(&self) -> Result<bool> {
        Ok(false)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Creates `key`; fails with `AlreadyExists` if it is there. Returns the
    /// new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64>;

    /// Replaces `key`'s value if its `mod_revision` is still
    /// `expected_revision`; `Conflict` otherwise, `NotFound` if gone.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
    ) -> Result<UpdateOutcome>;

    /// Deletes `key`, if given only at `expected_revision`. Returns the
    /// deleted value and the revision of the deletion.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(KeyValue, i64)>;

    /// Keys under `prefix` in key order, all at one revision.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage>;

    /// Every event under `prefix` with a revision greater than
    /// `after_revision`, in order, then live ones.
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream>;

    /// The store's newest revision.
    async fn current_revision(&self) -> Result<i64>;

    /// Drops the history up to and including `revision`.
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// A continue token resuming a list at `revision` right after `last_key`
/// (for a caller that stops inside a page, e.g. at a byte budget).
pub fn continue_after(revision: i64, last_key: &str) -> String {
    continue_token::encode(revision, last_key)
}

/// Continue tokens are opaque to clients: `<revision>:<last key>` encoded.
pub(crate) mod continue_token {
    use base64::Engine;

    use super::StoreError;

    const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub fn encode(revision: i64, last_key: &str) -> String {
        ENGINE.encode(format!("{revision}:{last_key}"))
    }

    pub fn decode(token: &str) -> Result<(i64, String), StoreError> {
        let bytes = ENGINE
            .decode(token)
            .map_err(|_| StoreError::InvalidContinueToken)?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::InvalidContinueToken)?;
        let (rev, key) = text
            .split_once(':')
            .ok_or(StoreError::InvalidContinueToken)?;
        let rev = rev
            .parse::<i64>()
            .map_err(|_| StoreError::InvalidContinueToken)?;
        if rev <= 0 {
            return Err(StoreError::InvalidContinueToken);
        }
        Ok((rev, key.to_string()))
    }
}

/// `InvalidArgument` for an update that names no revision it read: every
/// backend's update is a compare-and-swap.
pub(crate) fn check_update_revision(key: &str, expected_revision: i64) -> Result<()> {
    if expected_revision <= 0 {
        return Err(StoreError::InvalidArgument(format!(
            "update of {key} needs the revision it read, got {expected_revision}"
        )));
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): no upper bound; etcd spells that "\0".
    vec![0]
}
