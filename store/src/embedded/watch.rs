//! Watches: a task per watch that reads the log from its position, in
//! steps of [`WATCH_SCAN`] entries, then waits for the writer to publish
//! newer revisions; one whose start was compacted ends with `Expired`.
//!
//! Read-only: it must not write, and must deliver each event once, in
//! revision order.

use super::record::decode_log;
use super::tables::{read_meta, LOG};
use super::{backend, EmbeddedStore};
use crate::contract::{Result, StoreError, WatchEvent, WatchStream};

/// Most log entries a watcher reads per step.
const WATCH_SCAN: usize = 1024;

/// `Expired` when the events after `after` were compacted away.
fn still_logged(after: u64, compacted: u64) -> Result<()> {
    if after < compacted {
        return Err(StoreError::Expired {
            requested: after as i64 + 1,
            compacted: compacted as i64,
        });
    }
    Ok(())
}

/// Reads up to [`WATCH_SCAN`] log entries after `after`; returns the events
/// under `prefix` and the last revision scanned.
fn read_log(
    txn: &redb::ReadTransaction,
    prefix: &str,
    after: u64,
) -> Result<(Vec<WatchEvent>, u64)> {
    let (current, compacted) = read_meta(txn)?;
    still_logged(after, compacted)?;
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

impl EmbeddedStore {
    /// Every event under `prefix` after `after_revision`: what the log
    /// holds, then each revision the writer publishes.
    pub(super) async fn watch_log(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let after = after_revision.max(0) as u64;
        // Fail fast, like etcd, when the start is already compacted.
        self.read(move |txn| {
            let (_, compacted) = read_meta(txn)?;
            still_logged(after, compacted)
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
}
