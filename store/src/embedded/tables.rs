//! The redb file's layout: its three tables, the `meta` rows that hold
//! the current and the compacted revision, and opening (or creating) the
//! file with them.
//!
//! It must not write anything but the tables' first rows: every later
//! write is the writer thread's ([`super::writer`]).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::backend;
use crate::contract::Result;

/// key -> (create_revision, mod_revision, value): the current state.
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// revision -> event (key, new value, previous value): the history.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The current and the compacted revision.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACTED: &str = "compacted";

/// Opens (creating if needed) the file, with its tables and its current
/// and compacted revisions.
pub(super) fn open_file(path: &Path, cache_bytes: usize) -> Result<(Database, u64, u64)> {
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

/// The current and the compacted revision, as of `txn`'s snapshot.
pub(super) fn read_meta(txn: &redb::ReadTransaction) -> Result<(u64, u64)> {
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
