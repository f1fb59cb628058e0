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
//! it, checked every [`REOPEN_EVERY`]): readers wait out the swap, redb
//! repairs the file as after a crash, and writes and `/readyz` recover
//! without a restart.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use crate::contract::{
    continue_token, prefix_end, KeyValue, ListOptions, ListPage, Result, Store, StoreError,
    UpdateOutcome, WatchEvent, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most log entries a watcher reads per step.
const WATCH_SCAN: usize = 1024;
/// How often a writer whose file failed tries to reopen it.
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// Bytes that must be writable beside the file before it is reopened.
const REOPEN_PROBE: usize = 256 << 10;
/// How long a reopen waits for reads in flight on the old handle.
const REOPEN_DRAIN: Duration = Duration::from_secs(5);

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
    revision: watch::Receiver<i64>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Why the writer's last commit failed, until one succeeds.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

enum OpOutput {
    Created(i64),
    Updated(UpdateOutcome),
    Deleted(KeyValue, i64),
    Compacted,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<OpOutput>>,
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
        let (rev_tx, rev_rx) = watch::channel(revision as i64);
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

/// Opens (creating if needed) the file, with its tables and its current
/// and compacted revisions.
fn open_file(path: &Path, cache_bytes: usize) -> Result<(Database, u64, u64)> {
    // redb caches up to 1 GiB of pages by default; the history log
    // alone would fill it. A bounded cache keeps `corral up` small
    // (reads of hot objects stay cached, the log streams from disk).
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(backend)?;
    let (revision, compacted) = {
        let txn = db.begin_write().map_err(backend)?;
        let state = {
            let mut meta = txn.open_table(META).map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(LOG).map_err(backend)?;
            let rev = meta.get(META_REVISION).map_err(backend)?.map(|g| g.value());
            let rev = match rev {
                Some(r) => r,
                None => {
                    // etcd starts at revision 1; so do we.
                    meta.insert(META_REVISION, 1).map_err(backend)?;
                    meta.insert(META_COMPACTED, 0).map_err(backend)?;
                    1
                }
            };
            let compacted = meta
                .get(META_COMPACTED)
                .map_err(backend)?
                .map(|g| g.value())
                .unwrap_or(0);
            (rev, compacted)
        };
        txn.commit().map_err(backend)?;
        state
    };
    Ok((db, revision, compacted))
}

impl EmbeddedStore {
    async fn submit(&self, op: Op) -> Result<OpOutput> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request { op, reply })
            .map_err(|_| StoreError::Unavailable("embedded store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("embedded store writer has stopped".into()))?
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

// ---- record encoding -------------------------------------------------------

fn encode_record(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    if bytes.len() < 16 {
        return Err(StoreError::Backend(
            format!("record for {key} is truncated").into(),
        ));
    }
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")) as i64,
        mod_revision: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as i64,
        value: bytes[16..].to_vec(),
    })
}

/// A log entry: what happened at one revision.
struct LogEntry {
    key: String,
    /// The new record for a put; `None` for a delete.
    new: Option<Vec<u8>>,
    /// The record before the write, if the key existed.
    prev: Option<Vec<u8>>,
}

fn put_chunk(out: &mut Vec<u8>, chunk: Option<&[u8]>) {
    match chunk {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
    }
}

fn take_chunk<'a>(bytes: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (&flag, rest) = bytes.split_first()?;
    *bytes = rest;
    if flag == 0 {
        return Some(None);
    }
    if bytes.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return None;
    }
    let (chunk, rest) = rest.split_at(len);
    *bytes = rest;
    Some(Some(chunk))
}

fn encode_log(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::new();
    put_chunk(&mut out, Some(entry.key.as_bytes()));
    put_chunk(&mut out, entry.new.as_deref());
    put_chunk(&mut out, entry.prev.as_deref());
    out
}

fn decode_log(revision: u64, mut bytes: &[u8]) -> Result<LogEntry> {
    let corrupt = || StoreError::Backend(format!("log entry {revision} is corrupt").into());
    let key = take_chunk(&mut bytes).flatten().ok_or_else(corrupt)?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
    let new = take_chunk(&mut bytes)
        .ok_or_else(corrupt)?
        .map(<[u8]>::to_vec);
    let prev = take_chunk(&mut bytes)
        .ok_or_else(corrupt)?
        .map(<[u8]>::to_vec);
    Ok(LogEntry { key, new, prev })
}

impl LogEntry {
    fn into_event(self, revision: u64) -> Result<WatchEvent> {
        let prev = self
            .prev
            .as_deref()
            .map(|p| decode_record(&self.key, p))
            .transpose()?;
        Ok(match self.new {
            Some(new) => WatchEvent::Put {
                kv: decode_record(&self.key, &new)?,
                prev,
            },
            None => WatchEvent::Delete {
                key: self.key,
                revision: revision as i64,
                prev,
            },
        })
    }
}

// ---- the writer ------------------------------------------------------------

struct Writer {
    db: Slot,
    path: PathBuf,
    cache_bytes: usize,
    /// The last commit failed on I/O: the handle must be reopened.
    broken: bool,
    last_reopen: Option<Instant>,
    revision: u64,
    compacted: u64,
    history: u64,
    published: watch::Sender<i64>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self, requests: std_mpsc::Receiver<Request>) {
        loop {
            let first = if self.broken {
                match requests.recv_timeout(REOPEN_EVERY) {
                    Ok(r) => Some(r),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match requests.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            if self.broken {
                self.reopen();
            }
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    /// Swaps a handle latched by an I/O error for a fresh one, when space
    /// is back (at most every [`REOPEN_EVERY`]). Reads wait for the swap;
    /// redb repairs the file as after a crash (nothing committed is lost:
    /// the failed transaction never was).
    fn reopen(&mut self) {
        if self
            .last_reopen
            .is_some_and(|at| at.elapsed() < REOPEN_EVERY)
        {
            return;
        }
        self.last_reopen = Some(Instant::now());
        let probe = self.path.with_extension("space-probe");
        let room = std::fs::write(&probe, vec![0u8; REOPEN_PROBE]);
        let _ = std::fs::remove_file(&probe);
        if let Err(e) = room {
            tracing::debug!(error = %e, "embedded store: no room to reopen yet");
            return;
        }
        let Ok(mut slot) = self.db.write() else {
            return;
        };
        if let Some(old) = slot.as_ref() {
            // Reads in flight hold the old handle; it must be closed
            // before the file can be opened again.
            let deadline = Instant::now() + REOPEN_DRAIN;
            while Arc::strong_count(old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Arc::strong_count(old) > 1 {
                tracing::warn!("embedded store: reads held the failed file past the drain time");
                return;
            }
        }
        drop(slot.take());
        match open_file(&self.path, self.cache_bytes) {
            Ok((db, revision, compacted)) => {
                *slot = Some(Arc::new(db));
                self.revision = revision;
                self.compacted = compacted;
                self.broken = false;
                self.failure.lock().map(|mut f| f.take()).ok();
                tracing::info!(revision, "embedded store reopened after a failed commit");
            }
            Err(e) => {
                let why = crate::contract::error_text(&e);
                tracing::error!(error = %why, "embedded store: reopening failed");
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(format!("reopening after a failed commit: {why}"));
                }
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let start_revision = self.revision;
        let start_compacted = self.compacted;
        let db = self.db.read().ok().and_then(|d| d.clone());
        let db = match db {
            Some(db) if !self.broken => db,
            _ => {
                // Still latched (no room to reopen yet): the failure that
                // latched it is the answer, not redb's "previous I/O".
                let why = self
                    .failure
                    .lock()
                    .ok()
                    .and_then(|f| f.clone())
                    .unwrap_or_else(|| "its file is being reopened".into());
                for request in batch {
                    let _ = request.reply.send(Err(StoreError::Unavailable(
                        format!("the embedded store could not commit: {why}").into(),
                    )));
                }
                return;
            }
        };
        let outcome = (|| -> Result<Vec<Result<OpOutput>>> {
            let txn = db.begin_write().map_err(backend)?;
            let mut results = Vec::with_capacity(batch.len());
            {
                let mut kv = txn.open_table(KV).map_err(backend)?;
                let mut log = txn.open_table(LOG).map_err(backend)?;
                for request in &batch {
                    let result = self.apply(&mut kv, &mut log, &request.op);
                    // A storage error poisons the whole transaction.
                    if let Err(e @ StoreError::Backend(_)) = result {
                        return Err(e);
                    }
                    results.push(result);
                }
                if self.revision - self.compacted > 2 * self.history {
                    let to = self.revision - self.history;
                    compact_log(&mut log, to)?;
                    self.compacted = to;
                }
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert(META_REVISION, self.revision).map_err(backend)?;
                meta.insert(META_COMPACTED, self.compacted)
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                self.failure.lock().map(|mut f| f.take()).ok();
                self.published.send_replace(self.revision as i64);
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                // Nothing of this batch was written. Health reports it
                // before any caller hears of it.
                let why = crate::contract::error_text(&e);
                tracing::error!(error = %why, "embedded store commit failed (is the disk full?)");
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(why.clone());
                }
                self.broken = true;
                self.revision = start_revision;
                self.compacted = start_compacted;
                for request in batch {
                    let _ = request.reply.send(Err(StoreError::Unavailable(
                        format!("the embedded store could not commit: {why}").into(),
                    )));
                }
            }
        }
    }

    fn apply(
        &mut self,
        kv: &mut redb::Table<&str, &[u8]>,
        log: &mut redb::Table<u64, &[u8]>,
        op: &Op,
    ) -> Result<OpOutput> {
        match op {
            Op::Create { key, value } => {
                let prev = kv.get(key.as_str()).map_err(backend)?.is_some();
                if prev {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
                let rev = self.revision + 1;
                let record = encode_record(rev, rev, value);
                kv.insert(key.as_str(), record.as_slice())
                    .map_err(backend)?;
                let entry = LogEntry {
                    key: key.clone(),
                    new: Some(record),
                    prev: None,
                };
                log.insert(rev, encode_log(&entry).as_slice())
                    .map_err(backend)?;
                self.revision = rev;
                Ok(OpOutput::Created(rev as i64))
            }
            Op::Update {
                key,
                value,
                expected,
            } => {
                let current = kv
                    .get(key.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_vec());
                let Some(current) = current else {
                    return Err(StoreError::NotFound { key: key.clone() });
                };
                let current_kv = decode_record(key, &current)?;
                if current_kv.mod_revision != *expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current: current_kv.mod_revision,
                    });
                }
                if current_kv.value == *value {
                    return Ok(OpOutput::Updated(UpdateOutcome {
                        revision: current_kv.mod_revision,
                        changed: false,
                    }));
                }
                let rev = self.revision + 1;
                let record = encode_record(current_kv.create_revision as u64, rev, value);
                kv.insert(key.as_str(), record.as_slice())
                    .map_err(backend)?;
                let entry = LogEntry {
                    key: key.clone(),
                    new: Some(record),
                    prev: Some(current),
                };
                log.insert(rev, encode_log(&entry).as_slice())
                    .map_err(backend)?;
                self.revision = rev;
                Ok(OpOutput::Updated(UpdateOutcome {
                    revision: rev as i64,
                    changed: true,
                }))
            }
            Op::Delete { key, expected } => {
                let current = kv
                    .get(key.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_vec());
                let Some(current) = current else {
                    return Err(StoreError::NotFound { key: key.clone() });
                };
                let current_kv = decode_record(key, &current)?;
                if let Some(expected) = expected {
                    if current_kv.mod_revision != *expected {
                        return Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: *expected,
                            current: current_kv.mod_revision,
                        });
                    }
                }
                let rev = self.revision + 1;
                kv.remove(key.as_str()).map_err(backend)?;
                let entry = LogEntry {
                    key: key.clone(),
                    new: None,
                    prev: Some(current),
                };
                log.insert(rev, encode_log(&entry).as_slice())
                    .map_err(backend)?;
                self.revision = rev;
                Ok(OpOutput::Deleted(current_kv, rev as i64))
            }
            Op::Compact { revision } => {
                let revision = *revision;
                if revision <= 0 || revision as u64 > self.revision {
                    return Err(StoreError::InvalidArgument(format!(
                        "cannot compact to revision {revision}: current revision is {}",
                        self.revision
                    )));
                }
                if (revision as u64) <= self.compacted {
                    return Ok(OpOutput::Compacted);
                }
                compact_log(log, revision as u64)?;
                self.compacted = revision as u64;
                Ok(OpOutput::Compacted)
            }
        }
    }
}

fn compact_log(log: &mut redb::Table<u64, &[u8]>, to: u64) -> Result<()> {
    log.retain_in(..=to, |_, _| false).map_err(backend)
}

// ---- reads -------------------------------------------------------------------

fn read_meta(txn: &redb::ReadTransaction) -> Result<(u64, u64)> {
    let meta = txn.open_table(META).map_err(backend)?;
    let rev = meta
        .get(META_REVISION)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(1);
    let compacted = meta
        .get(META_COMPACTED)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0);
    Ok((rev, compacted))
}

/// Upper bound of `prefix` as a string key range bound.
fn upper_bound(prefix: &str) -> Result<Option<String>> {
    let end = prefix_end(prefix);
    if end == [0] {
        return Ok(None);
    }
    String::from_utf8(end)
        .map(Some)
        .map_err(|_| StoreError::InvalidArgument(format!("prefix {prefix:?} has no UTF-8 end")))
}

fn list_at(txn: &redb::ReadTransaction, prefix: &str, options: ListOptions) -> Result<ListPage> {
    let (current, compacted) = read_meta(txn)?;
    let (after_key, target) = match &options.continue_token {
        Some(token) => {
            let (rev, last) = continue_token::decode(token)?;
            if !last.starts_with(prefix) {
                return Err(StoreError::InvalidContinueToken);
            }
            (Some(last), rev as u64)
        }
        None => (None, options.revision.map(|r| r as u64).unwrap_or(current)),
    };
    if target > current {
        return Err(StoreError::InvalidArgument(format!(
            "revision {target} is in the future (current revision is {current})"
        )));
    }
    if target < compacted {
        return Err(StoreError::Expired {
            requested: target as i64,
            compacted: compacted as i64,
        });
    }
    let end = upper_bound(prefix)?;
    let in_range =
        |key: &str| key.starts_with(prefix) && after_key.as_deref().is_none_or(|after| key > after);

    // Keys written after `target`, with the value each had at `target`.
    let mut touched: std::collections::BTreeMap<String, Option<KeyValue>> = Default::default();
    if target < current {
        let log = txn.open_table(LOG).map_err(backend)?;
        for item in log.range((target + 1)..=current).map_err(backend)? {
            let (rev, bytes) = item.map_err(backend)?;
            let entry = decode_log(rev.value(), bytes.value())?;
            if !in_range(&entry.key) || touched.contains_key(&entry.key) {
                continue;
            }
            let prev = entry
                .prev
                .as_deref()
                .map(|p| decode_record(&entry.key, p))
                .transpose()?;
            touched.insert(entry.key, prev);
        }
    }

    let limit = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let kv = txn.open_table(KV).map_err(backend)?;
    let lower = match &after_key {
        Some(k) => Bound::Excluded(k.as_str()),
        None => Bound::Included(prefix),
    };
    let upper = match &end {
        Some(e) => Bound::Excluded(e.as_str()),
        None => Bound::Unbounded,
    };
    let mut current_iter = kv
        .range::<&str>((lower, upper))
        .map_err(backend)?
        .peekable();
    let mut touched_iter = touched.into_iter().peekable();
    let mut items = Vec::new();
    let mut more = false;
    loop {
        let from_current = match (current_iter.peek(), touched_iter.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => {
                let err = current_iter.next().expect("peeked").err().expect("error");
                return Err(backend(err));
            }
            (Some(Ok((k, _))), Some((t, _))) => {
                let k = k.value();
                match k.cmp(t.as_str()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        // Touched after target: the log has its old value.
                        current_iter.next();
                        false
                    }
                }
            }
            (Some(Ok(_)), None) => true,
            (None, Some(_)) => false,
        };
        let item = if from_current {
            let (k, v) = current_iter.next().expect("peeked").map_err(backend)?;
            Some(decode_record(k.value(), v.value())?)
        } else {
            touched_iter.next().expect("peeked").1
        };
        if let Some(item) = item {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(item);
        }
    }
    let continue_token = if more {
        items
            .last()
            .map(|last| continue_token::encode(target as i64, &last.key))
    } else {
        None
    };
    Ok(ListPage {
        items,
        revision: target as i64,
        continue_token,
    })
}

/// Reads up to [`WATCH_SCAN`] log entries after `after`; returns the events
/// under `prefix` and the last revision scanned.
fn read_log(
    txn: &redb::ReadTransaction,
    prefix: &str,
    after: u64,
) -> Result<(Vec<WatchEvent>, u64)> {
    let (current, compacted) = read_meta(txn)?;
    if after < compacted {
        return Err(StoreError::Expired {
            requested: after as i64 + 1,
            compacted: compacted as i64,
        });
    }
    let log = txn.open_table(LOG).map_err(backend)?;
    let mut events = Vec::new();
    let mut last = after;
    for item in log
        .range((after + 1)..=current)
        .map_err(backend)?
        .take(WATCH_SCAN)
    {
        let (rev, bytes) = item.map_err(backend)?;
        let rev = rev.value();
        last = rev;
        let entry = decode_log(rev, bytes.value())?;
        if entry.key.starts_with(prefix) {
            events.push(entry.into_event(rev)?);
        }
    }
    if last < current && events.is_empty() && last == after {
        // Nothing logged between: revisions are dense, so this only
        // happens if the log was compacted under us.
        last = current;
    }
    Ok((events, last))
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
        if expected_revision <= 0 {
            return Err(StoreError::InvalidArgument(format!(
                "update of {key} needs the revision it read, got {expected_revision}"
            )));
        }
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
        self.read(move |txn| list_at(txn, &prefix, options)).await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let after = after_revision.max(0) as u64;
        // Fail fast, like etcd, when the start is already compacted.
        let check_prefix = prefix.to_string();
        self.read(move |txn| {
            let (_, compacted) = read_meta(txn)?;
            let _ = check_prefix;
            if after < compacted {
                return Err(StoreError::Expired {
                    requested: after as i64 + 1,
                    compacted: compacted as i64,
                });
            }
            Ok(())
        })
        .await?;
        let (tx, stream) = WatchStream::channel(1024);
        let store = self.clone();
        let prefix = prefix.to_string();
        let mut published = self.inner.revision.clone();
        tokio::spawn(async move {
            let mut position = after;
            loop {
                let newest = *published.borrow_and_update() as u64;
                while position < newest {
                    let p = prefix.clone();
                    let from = position;
                    let batch = store.read(move |txn| read_log(txn, &p, from)).await;
                    match batch {
                        Ok((events, last)) => {
                            for event in events {
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                            position = last;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = published.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(stream)
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
