//! Lists: a page of the keys under a prefix, at the newest revision or
//! an older one still in the log, read from one snapshot.
//!
//! A list at an older revision R reads the current state and undoes the
//! log entries after R for the keys it covers. Read-only: it must not
//! open a write transaction.

use std::ops::Bound;

use super::backend;
use super::record::{decode_log, decode_record};
use super::tables::{read_meta, KV, LOG};
use crate::contract::{
    continue_token, prefix_end, KeyValue, ListOptions, ListPage, Result, StoreError,
};

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

pub(super) fn list_at(
    txn: &redb::ReadTransaction,
    prefix: &str,
    options: ListOptions,
) -> Result<ListPage> {
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
            let prev = entry.prev_kv()?;
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
