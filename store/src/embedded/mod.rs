//! The embedded backend: one crash-safe redb file, for `corral up`.
//!
//! Same contract as etcd. Tables:
//! - `kv`: key -> (create_revision, mod_revision, value), the current state;
//! - `log`: revision -> event (key, new value, previous value), the history
//!   that feeds watches and lists at past revisions;
//! - `meta`: the current and the compacted revision.
//!
//! All writes go through one writer thread that commits whatever requests
//! are waiting as one redb transaction (group commit: one fsync for many
//! writers), while each request still gets its own revision and its own
//! precondition check. A request is acknowledged only after its
//! transaction is durable. Reads use redb's snapshot read transactions.
//!
//! A list at an older revision R reads the current state and undoes the
//! log entries after R for the keys it covers; a watch reads the log from
//! its position and then waits for the writer to publish new revisions.
//!
//! A commit that fails on I/O (a full disk) latches redb's file handle:
//! every later write fails until the file is reopened. The writer reopens
//! it itself once space is back (a small probe file can be written beside
//! it, checked every [`REOPEN_EVERY`](writer::REOPEN_EVERY)): readers
//! wait out the swap, redb repairs the file as after a crash, and writes
//! and `/readyz` recover without a restart.
//!
//! The parts: [`tables`] (the file's layout and opening it), [`record`]
//! (the bytes of its rows), [`writer`] (the writer thread, the only
//! writer), [`read`] (lists) and [`watch`] (watches). This module holds
//! the handle callers share and maps the [`Store`] contract onto them.

mod read;
mod record;
mod tables;
mod watch;
mod writer;

use std::path::Path;
use std::sync::{mpsc as std_mpsc, Arc, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use crate::contract::{
    check_update_revision, KeyValue, ListOptions, ListPage, Result, Store, StoreError,
    UpdateOutcome, WatchStream,
};
use record::decode_record;
use tables::{open_file, KV};
use writer::{Op, OpOutput, Request, Writer};

/// The open database, shared by readers and the writer; empty while the
/// writer swaps a failed handle for a fresh one.
type Slot = Arc<RwLock<Option<Arc<Database>>>>;

fn reopening() -> StoreError {
    StoreError::Unavailable("the embedded store is reopening its file after a failed commit".into())
}

/// Tuning for the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// History kept for watches and old-revision lists, in revisions. When
    /// the log grows past twice this, the oldest part is compacted.
    pub history: u64,
    /// Page cache of the redb file, in bytes.
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history: 50_000,
            cache_bytes: 64 << 20,
        }
    }
}

/// Store in one local file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Slot,
    requests: std_mpsc::Sender<Request>,
    /// Newest committed revision, published by the writer after each commit.
    revision: tokio::sync::watch::Receiver<i64>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Why the writer's last commit failed, until one succeeds.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        // redb caches up to 1 GiB of pages by default; the history log
        // alone would fill it. A bounded cache keeps `corral up` small
        // (reads of hot objects stay cached, the log streams from disk).
        let (db, revision, compacted) = open_file(path, options.cache_bytes)?;
        let db: Slot = Arc::new(RwLock::new(Some(Arc::new(db))));
        let (rev_tx, rev_rx) = tokio::sync::watch::channel(revision as i64);
        let (req_tx, req_rx) = std_mpsc::channel();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let writer = Writer {
            db: db.clone(),
            path: path.to_path_buf(),
            cache_bytes: options.cache_bytes,
            broken: false,
            last_reopen: None,
            revision,
            compacted,
            history: options.history.max(1),
            published: rev_tx,
            failure: failure.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("corral-store-writer".into())
            .spawn(move || writer.run(req_rx))
            .map_err(backend)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                requests: req_tx,
                revision: rev_rx,
                writer: std::sync::Mutex::new(Some(handle)),
                failure,
            }),
        })
    }

    /// Runs redb's full integrity check on a store file that no process
    /// has open. True when the file is intact.
    pub fn check_integrity(path: &Path) -> Result<bool> {
        let mut db = Database::open(path).map_err(backend)?;
        db.check_integrity().map_err(backend)
    }
}

impl EmbeddedStore {
    async fn submit(&self, op: Op) -> Result<OpOutput> {
        let stopped = || StoreError::Unavailable("embedded store writer has stopped".into());
        let (reply, rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request { op, reply })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs a read on the blocking pool with its own snapshot.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    {
        let db = self
            .inner
            .db
            .read()
            .map_err(|_| reopening())?
            .clone()
            .ok_or_else(reopening)?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            f(&txn)
        })
        .await
        .map_err(backend)?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping `requests` (after this) stops the writer; it finishes the
        // batch in flight first. Join so the file is closed when we return.
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        let (dummy, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.requests, dummy));
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |txn| {
            let kv = txn.open_table(KV).map_err(backend)?;
            let value = kv.get(key.as_str()).map_err(backend)?;
            value.map(|v| decode_record(&key, v.value())).transpose()
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        match self
            .submit(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            OpOutput::Created(rev) => Ok(rev),
            _ => unreachable!("create answers Created"),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_revision: i64,
    ) -> Result<UpdateOutcome> {
        check_update_revision(key, expected_revision)?;
        match self
            .submit(Op::Update {
                key: key.to_string(),
                value,
                expected: expected_revision,
            })
            .await?
        {
            OpOutput::Updated(outcome) => Ok(outcome),
            _ => unreachable!("update answers Updated"),
        }
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<(KeyValue, i64)> {
        match self
            .submit(Op::Delete {
                key: key.to_string(),
                expected: expected_revision,
            })
            .await?
        {
            OpOutput::Deleted(kv, rev) => Ok((kv, rev)),
            _ => unreachable!("delete answers Deleted"),
        }
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        let prefix = prefix.to_string();
        self.read(move |txn| read::list_at(txn, &prefix, options))
            .await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        self.watch_log(prefix, after_revision).await
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(*self.inner.revision.borrow())
    }

    async fn health(&self) -> Result<()> {
        let stopped = self
            .inner
            .writer
            .lock()
            .map(|h| h.as_ref().is_none_or(|h| h.is_finished()))
            .unwrap_or(true);
        if stopped {
            return Err(StoreError::Unavailable(
                "the embedded store's writer thread has stopped".into(),
            ));
        }
        let failure = self.inner.failure.lock().ok().and_then(|f| f.clone());
        if let Some(why) = failure {
            return Err(StoreError::Unavailable(
                format!("the embedded store's last commit failed: {why}").into(),
            ));
        }
        Ok(())
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.submit(Op::Compact { revision }).await? {
            OpOutput::Compacted => Ok(()),
            _ => unreachable!("compact answers Compacted"),
        }
    }
}
