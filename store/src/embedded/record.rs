//! The bytes of the file's rows: a `kv` record (its two revisions and the
//! value) and a `log` entry (the key, the new record, the previous one),
//! and turning a log entry into the [`WatchEvent`] it stands for.
//!
//! Pure encoding: it must not open tables nor know about transactions.

use crate::contract::{KeyValue, Result, StoreError, WatchEvent};

pub(super) fn encode_record(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue> {
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
pub(super) struct LogEntry {
    pub(super) key: String,
    /// The new record for a put; `None` for a delete.
    pub(super) new: Option<Vec<u8>>,
    /// The record before the write, if the key existed.
    pub(super) prev: Option<Vec<u8>>,
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

pub(super) fn encode_log(entry: &LogEntry) -> Vec<u8> {
    let mut out = Vec::new();
    put_chunk(&mut out, Some(entry.key.as_bytes()));
    put_chunk(&mut out, entry.new.as_deref());
    put_chunk(&mut out, entry.prev.as_deref());
    out
}

pub(super) fn decode_log(revision: u64, mut bytes: &[u8]) -> Result<LogEntry> {
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
    /// The previous record, decoded.
    pub(super) fn prev_kv(&self) -> Result<Option<KeyValue>> {
        self.prev
            .as_deref()
            .map(|p| decode_record(&self.key, p))
            .transpose()
    }

    pub(super) fn into_event(self, revision: u64) -> Result<WatchEvent> {
        let prev = self.prev_kv()?;
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
