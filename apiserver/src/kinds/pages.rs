//! Lists as the HTTP layer serves them: pages of a kind's stored JSON,
//! bounded in items and in bytes, with each object's `resourceVersion`
//! put into its bytes so that lists are served without decoding objects.
//!
//! It must not decode objects into their types: a list of thousands is
//! bytes in, bytes out (only a label or field selector parses them).

use corral_api_types::Resource;
use corral_store::{kind_prefix, ListOptions, ResourceStore, StoreError};
use serde_json::Value;

use crate::error::ApiError;
use crate::list::ListParams;

/// A page of a list. Items are the objects' JSON, as stored, with their
/// `resourceVersion` put in: lists are served without decoding objects.
pub struct ListOutput {
    pub items: Vec<Vec<u8>>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
}

impl ListOutput {
    /// The items as JSON values (for callers that look inside).
    pub fn values(&self) -> Vec<Value> {
        self.items
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect()
    }
}

/// Puts `"resourceVersion":"N"` into stored object bytes. The store keeps
/// objects as canonical JSON with `metadata` right after `apiVersion` and
/// `kind` (fixed strings), so the first `"metadata":{` is the key itself;
/// anything else is parsed and rewritten the slow way.
pub fn with_resource_version(stored: &[u8], revision: i64) -> Vec<u8> {
    const KEY: &[u8] = b"\"metadata\":{";
    if let Some(pos) = stored.windows(KEY.len()).position(|w| w == KEY) {
        let at = pos + KEY.len();
        let rv = format!("\"resourceVersion\":\"{revision}\"");
        let mut out = Vec::with_capacity(stored.len() + rv.len() + 1);
        out.extend_from_slice(&stored[..at]);
        out.extend_from_slice(rv.as_bytes());
        if stored.get(at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&stored[at..]);
        return out;
    }
    match serde_json::from_slice::<Value>(stored) {
        Ok(mut v) => {
            if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(revision.to_string()),
                );
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| stored.to_vec())
        }
        Err(_) => stored.to_vec(),
    }
}

/// A page of `K`'s objects under `project` (every project: `None`), as
/// `params` asks: at most `params.limit` items (0: all) and, past
/// [`crate::limits::LIST_BYTES`], the rest after a continue token.
pub(super) async fn list<K: Resource>(
    store: &ResourceStore,
    project: Option<&str>,
    params: &ListParams,
) -> Result<ListOutput, ApiError> {
    let limit = params.limit.unwrap_or(0);
    let mut items = Vec::new();
    let mut bytes_out = 0usize;
    let mut token = params.continue_token.clone();
    let mut revision = params.resource_version;
    'pages: loop {
        // Ask for no more than still fits, so the store's continue token
        // always points right after the last item we return.
        let want = if limit > 0 {
            Some(limit - items.len())
        } else {
            None
        };
        // Stored bytes are the object's canonical JSON: parse them
        // straight into the answer instead of through the typed model.
        let page = store
            .raw()
            .list(
                &kind_prefix::<K>(project),
                ListOptions {
                    limit: want,
                    continue_token: token.clone(),
                    revision: if token.is_some() { None } else { revision },
                },
            )
            .await?;
        revision = Some(page.revision);
        let filtered = params.is_filtered();
        for kv in &page.items {
            let bytes = with_resource_version(&kv.value, kv.mod_revision);
            if filtered {
                let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::from(StoreError::Corrupt {
                        key: kv.key.clone(),
                        source: e,
                    })
                })?;
                if !params.matches_value(&value) {
                    continue;
                }
            }
            bytes_out += bytes.len();
            items.push(bytes);
            // A page is bounded in bytes as well as items: past the
            // budget, the rest comes after a continue token.
            if bytes_out >= crate::limits::LIST_BYTES {
                let more_in_page = page.items.last().is_some_and(|last| last.key != kv.key);
                token = if more_in_page {
                    Some(corral_store::continue_after(page.revision, &kv.key))
                } else {
                    page.continue_token.clone()
                };
                break 'pages;
            }
        }
        token = page.continue_token;
        if token.is_none() || (limit > 0 && items.len() >= limit) {
            break;
        }
    }
    Ok(ListOutput {
        items,
        resource_version: revision.unwrap_or(0),
        continue_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_goes_into_metadata() {
        let stored =
            br#"{"apiVersion":"corral/v1","kind":"Network","metadata":{"name":"a"},"spec":{}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(stored, 42)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        let empty = br#"{"kind":"X","metadata":{},"spec":{}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(empty, 7)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        // Not our layout: parsed and rewritten.
        let odd = br#"{"spec":{"x":1},"metadata" : {"name":"b"}}"#;
        let v: Value = serde_json::from_slice(&with_resource_version(odd, 9)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "9");
    }
}
