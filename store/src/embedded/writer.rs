//! The writer thread: the one place the file is written.
//!
//! It commits whatever requests are waiting as one redb transaction
//! (group commit: one fsync for many writers), while each request still
//! gets its own revision and its own precondition check, and answers a
//! request only once its transaction is durable. It publishes each new
//! revision for watches, compacts the log past twice the history kept,
//! and swaps a file handle latched by a failed commit (a full disk) for a
//! fresh one once space is back.
//!
//! It must not answer a request before its commit, nor keep a revision a
//! failed commit counted: a batch is all written or not at all.

use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tokio::sync::{oneshot, watch};

use super::record::{decode_record, encode_log, encode_record, LogEntry};
use super::tables::{open_file, KV, LOG, META, META_COMPACTED, META_REVISION};
use super::{backend, Slot};
use crate::contract::{KeyValue, Result, StoreError, UpdateOutcome};

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 512;
/// How often a writer whose file failed tries to reopen it.
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// Bytes that must be writable beside the file before it is reopened.
const REOPEN_PROBE: usize = 256 << 10;
/// How long a reopen waits for reads in flight on the old handle.
const REOPEN_DRAIN: Duration = Duration::from_secs(5);

pub(super) enum Op {
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

pub(super) enum OpOutput {
    Created(i64),
    Updated(UpdateOutcome),
    Deleted(KeyValue, i64),
    Compacted,
}

pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<OpOutput>>,
}

pub(super) struct Writer {
    pub(super) db: Slot,
    pub(super) path: PathBuf,
    pub(super) cache_bytes: usize,
    /// The last commit failed on I/O: the handle must be reopened.
    pub(super) broken: bool,
    pub(super) last_reopen: Option<Instant>,
    pub(super) revision: u64,
    pub(super) compacted: u64,
    pub(super) history: u64,
    pub(super) published: watch::Sender<i64>,
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// Answers every request of `batch` that nothing of it was written.
fn refuse(batch: Vec<Request>, why: &str) {
    for request in batch {
        let _ = request.reply.send(Err(StoreError::Unavailable(
            format!("the embedded store could not commit: {why}").into(),
        )));
    }
}

/// The key's current record, as stored and decoded; `NotFound` if absent.
fn stored(kv: &redb::Table<&str, &[u8]>, key: &str) -> Result<(Vec<u8>, KeyValue)> {
    let current = kv.get(key).map_err(backend)?.map(|g| g.value().to_vec());
    let Some(current) = current else {
        return Err(StoreError::NotFound {
            key: key.to_string(),
        });
    };
    let current_kv = decode_record(key, &current)?;
    Ok((current, current_kv))
}

/// `Conflict` unless the key is still at the revision the caller read.
fn check_expected(key: &str, expected: i64, current: &KeyValue) -> Result<()> {
    if current.mod_revision != expected {
        return Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            current: current.mod_revision,
        });
    }
    Ok(())
}

impl Writer {
    pub(super) fn run(mut self, requests: std_mpsc::Receiver<Request>) {
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
                refuse(batch, &why);
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
                refuse(batch, &why);
            }
        }
    }

    /// Logs the write of `key` at `rev` and makes `rev` the current revision.
    fn logged(
        &mut self,
        log: &mut redb::Table<u64, &[u8]>,
        rev: u64,
        key: &str,
        new: Option<Vec<u8>>,
        prev: Option<Vec<u8>>,
    ) -> Result<()> {
        let entry = LogEntry {
            key: key.to_string(),
            new,
            prev,
        };
        log.insert(rev, encode_log(&entry).as_slice())
            .map_err(backend)?;
        self.revision = rev;
        Ok(())
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
                self.logged(log, rev, key, Some(record), None)?;
                Ok(OpOutput::Created(rev as i64))
            }
            Op::Update {
                key,
                value,
                expected,
            } => {
                let (current, current_kv) = stored(kv, key)?;
                check_expected(key, *expected, &current_kv)?;
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
                self.logged(log, rev, key, Some(record), Some(current))?;
                Ok(OpOutput::Updated(UpdateOutcome {
                    revision: rev as i64,
                    changed: true,
                }))
            }
            Op::Delete { key, expected } => {
                let (current, current_kv) = stored(kv, key)?;
                if let Some(expected) = expected {
                    check_expected(key, *expected, &current_kv)?;
                }
                let rev = self.revision + 1;
                kv.remove(key.as_str()).map_err(backend)?;
                self.logged(log, rev, key, None, Some(current))?;
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
