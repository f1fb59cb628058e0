//! Watch events in the form the HTTP layer serves them: [`WatchEvent`],
//! one change already in JSON, shared by every watcher it goes to (with
//! its labels read and its line encoded once), and the task turning a
//! kind's typed watch into [`WatchItem`]s.
//!
//! It must not filter nor authorize: which watcher gets an event is the
//! server's and the watch cache's.

use std::sync::{Arc, OnceLock};

use corral_api_types::{Resource, ResourceVersion};
use corral_store::{ObjectEvent, ObjectWatch};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::list::ListParams;

/// One event of a watch, already in JSON form.
#[derive(Debug)]
pub enum WatchItem {
    /// Shared by every watcher that gets it: a hundred node agents
    /// watching Instances share one copy of each event, and the matching
    /// ones one encoding of it.
    Event(Arc<WatchEvent>),
    /// The watch ended with an error (410 when compacted).
    Error(ApiError),
}

/// A change to one object, as watchers are sent it.
#[derive(Debug)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
    /// The previous state for MODIFIED (for selector transitions).
    pub prev: Option<Value>,
    pub resource_version: i64,
    /// `metadata.project` of the object ("" for cluster kinds).
    pub project: String,
    /// `status.nodeName` now and before ("" when unbound): the index the
    /// shared watch routes node agents' watches by, so an agent's stream
    /// is not woken for the other nodes' instances.
    pub node: (String, Option<String>),
    labels: OnceLock<(Labels, Option<Labels>)>,
    encoded: OnceLock<Vec<u8>>,
}

type Labels = std::collections::BTreeMap<String, String>;

fn labels_of(v: &Value) -> Labels {
    v.pointer("/metadata/labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl WatchEvent {
    pub fn new(
        kind: &'static str,
        object: Value,
        prev: Option<Value>,
        resource_version: i64,
    ) -> WatchEvent {
        let project = object
            .pointer("/metadata/project")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string();
        let node_of = |v: &Value| {
            v.pointer("/status/nodeName")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string()
        };
        let node = (node_of(&object), prev.as_ref().map(node_of));
        WatchEvent {
            kind,
            object,
            prev,
            resource_version,
            project,
            node,
            labels: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    /// Whether the object is, or was before the change, on `node`.
    pub fn touches_node(&self, node: &str) -> bool {
        self.node.0 == node || self.node.1.as_deref() == Some(node)
    }

    /// Whether the object (now, and before the change) matches `params`:
    /// the labels are read once per event, whoever asks.
    pub fn matches(&self, params: &ListParams) -> (bool, Option<bool>) {
        if !params.is_filtered() {
            return (true, self.prev.as_ref().map(|_| true));
        }
        let (now, before) = self
            .labels
            .get_or_init(|| (labels_of(&self.object), self.prev.as_ref().map(labels_of)));
        (
            params.matches(now, &self.object),
            self.prev
                .as_ref()
                .zip(before.as_ref())
                .map(|(p, l)| params.matches(l, p)),
        )
    }

    /// One NDJSON line `{"type":..,"object":..}` with the object encoded
    /// once per event.
    pub fn line(&self, kind: &str) -> Vec<u8> {
        let object = self
            .encoded
            .get_or_init(|| serde_json::to_vec(&self.object).unwrap_or_default());
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        line
    }
}

/// A kind's typed watch as [`WatchItem`]s, until the receiver is dropped
/// or the watch ends (after an error, the last item).
pub(super) fn forward<K: Resource>(mut watch: ObjectWatch<K>) -> mpsc::Receiver<WatchItem> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = watch.next() => n,
                _ = tx.closed() => return,
            };
            let item = match next {
                None => return,
                Some(Err(e)) => WatchItem::Error(ApiError::from(e)),
                Some(Ok(event)) => item_of(event),
            };
            let end = matches!(item, WatchItem::Error(_));
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// One typed event in JSON form.
fn item_of<K: Resource>(event: ObjectEvent<K>) -> WatchItem {
    let (kind, prev) = match &event {
        ObjectEvent::Added(_) => ("ADDED", None),
        ObjectEvent::Modified(_, prev) => (
            "MODIFIED",
            prev.as_deref().and_then(|p| serde_json::to_value(p).ok()),
        ),
        ObjectEvent::Deleted(_) => ("DELETED", None),
    };
    let object = event.object();
    let resource_version = ResourceVersion::parse(&object.meta().resource_version)
        .ok()
        .flatten()
        .map_or(0, ResourceVersion::get);
    match serde_json::to_value(object) {
        Ok(object) => WatchItem::Event(Arc::new(WatchEvent::new(
            kind,
            object,
            prev,
            resource_version,
        ))),
        Err(e) => WatchItem::Error(ApiError::internal(e.to_string())),
    }
}
