//! Helpers every controller needs: conditions, finalizers, Events, and
//! writes that survive conflicts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use corral_api_types::{
    Condition, ConditionStatus, Event, EventSpec, EventType, ObjectReference, Resource,
};
use corral_store::{ResourceStore, StoreError};

/// Sets condition `type_` in `conditions`. `lastTransitionTime` changes
/// only when the status does; returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    observed_generation: i64,
    now: DateTime<Utc>,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != reason
                || c.message != message
                || c.observed_generation != observed_generation;
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition_time: Some(now),
                observed_generation,
            });
            true
        }
    }
}

/// The condition of that type, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether `obj` carries `finalizer`.
pub fn has_finalizer<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.meta().finalizers.iter().any(|f| f == finalizer)
}

/// Reads the object fresh, lets `change` edit it, and writes it back if it
/// changed, retrying on conflicts. `change` returns false to write nothing.
/// Returns the object as stored afterwards (`None` if it is gone).
pub async fn update_with_retry<K, F>(
    store: &ResourceStore,
    project: &str,
    name: &str,
    mut change: F,
) -> Result<Option<K>, StoreError>
where
    K: Resource,
    F: FnMut(&mut K) -> bool,
{
    for attempt in 0..16u32 {
        let Some(mut obj) = store.get::<K>(project, name).await? else {
            return Ok(None);
        };
        if !change(&mut obj) {
            return Ok(Some(obj));
        }
        match store.update(&obj).await {
            Ok(written) => return Ok(Some(written)),
            Err(StoreError::Conflict { .. }) => {
                tokio::time::sleep(Duration::from_millis(2 << attempt.min(6))).await;
            }
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: format!("{}/{project}/{name}", K::PLURAL),
        expected: 0,
        current: 0,
    })
}

/// [`update_with_retry`] that first tries `cached`, the caller's cache
/// copy, as it is: while the cache is current (the common case) a change
/// costs one compare-and-swap and no read. A stale copy loses the CAS and
/// the change is made again on a fresh read.
pub async fn update_cached<K, F>(
    store: &ResourceStore,
    cached: &K,
    mut change: F,
) -> Result<Option<K>, StoreError>
where
    K: Resource,
    F: FnMut(&mut K) -> bool,
{
    let meta = cached.meta();
    if !meta.resource_version.is_empty() {
        let mut obj = cached.clone();
        if !change(&mut obj) {
            return Ok(Some(obj));
        }
        match store.update(&obj).await {
            Ok(written) => return Ok(Some(written)),
            Err(StoreError::Conflict { .. }) => {}
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    update_with_retry(store, &meta.project, &meta.name, change).await
}

/// Adds `finalizer` (no-op if present or if the object is being deleted).
pub async fn add_finalizer<K: Resource>(
    store: &ResourceStore,
    obj: &K,
    finalizer: &str,
) -> Result<Option<K>, StoreError> {
    let meta = obj.meta();
    update_with_retry::<K, _>(store, &meta.project, &meta.name, |o| {
        if o.meta().deletion_timestamp.is_some() || has_finalizer(o, finalizer) {
            return false;
        }
        o.meta_mut().finalizers.push(finalizer.to_string());
        true
    })
    .await
}

/// Removes `finalizer`; when it was the last one of an object being
/// deleted, the object is deleted for real.
pub async fn remove_finalizer<K: Resource>(
    store: &ResourceStore,
    obj: &K,
    finalizer: &str,
) -> Result<(), StoreError> {
    let meta = obj.meta();
    let (project, name) = (meta.project.clone(), meta.name.clone());
    for _ in 0..16 {
        let Some(mut current) = store.get::<K>(&project, &name).await? else {
            return Ok(());
        };
        if !has_finalizer(&current, finalizer) {
            return Ok(());
        }
        current.meta_mut().finalizers.retain(|f| f != finalizer);
        let done =
            current.meta().deletion_timestamp.is_some() && current.meta().finalizers.is_empty();
        let result = if done {
            let rv = current.meta().resource_version.clone();
            store
                .delete::<K>(&project, &name, Some(&rv))
                .await
                .map(|_| ())
        } else {
            store.update(&current).await.map(|_| ())
        };
        match result {
            Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: format!("{}/{project}/{name}", K::PLURAL),
        expected: 0,
        current: 0,
    })
}

/// Records Events on objects: one Event object per (object, reason),
/// counted up when it happens again, as Kubernetes aggregates them.
#[derive(Clone)]
pub struct EventRecorder {
    store: ResourceStore,
    source: String,
}

impl EventRecorder {
    pub fn new(store: ResourceStore, source: &str) -> EventRecorder {
        EventRecorder {
            store,
            source: source.to_string(),
        }
    }

    /// Best effort: an Event that cannot be written is logged, not fatal.
    pub async fn record<K: Resource>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(obj, type_, reason, message).await {
            tracing::warn!(error = %e, reason, "could not record event");
        }
    }

    async fn try_record<K: Resource>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let meta = obj.meta();
        // Events live in the object's project; cluster objects' in "default".
        let project = if meta.project.is_empty() {
            "default".to_string()
        } else {
            meta.project.clone()
        };
        let name = event_name(K::KIND, &meta.name, reason);
        let now = Utc::now();
        let updated = update_with_retry::<Event, _>(&self.store, &project, &name, |e| {
            e.spec.count += 1;
            e.spec.message = message.to_string();
            e.spec.last_timestamp = Some(now);
            e.spec.type_ = type_;
            true
        })
        .await?;
        if updated.is_some() {
            return Ok(());
        }
        let event = Event::new(
            &project,
            &name,
            EventSpec {
                involved_object: ObjectReference {
                    kind: K::KIND.to_string(),
                    name: meta.name.clone(),
                    uid: meta.uid.clone(),
                },
                reason: reason.to_string(),
                message: message.to_string(),
                type_,
                count: 1,
                first_timestamp: Some(now),
                last_timestamp: Some(now),
                source: self.source.clone(),
            },
        );
        match self.store.create(&event).await {
            Ok(_) => Ok(()),
            // Raced with another recorder: count it on theirs.
            Err(StoreError::AlreadyExists { .. }) => {
                Box::pin(self.try_record(obj, event.spec.type_, reason, message)).await
            }
            Err(e) => Err(e),
        }
    }
}

/// `<kind>-<name>-<reason>` cut to a DNS label with a short hash to keep
/// it unique.
fn event_name(kind: &str, name: &str, reason: &str) -> String {
    let full = format!(
        "{}-{}-{}",
        kind.to_ascii_lowercase(),
        name,
        reason.to_ascii_lowercase()
    );
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 63 {
        return clean.trim_matches('-').to_string();
    }
    // FNV-1a: stable across processes, no dependency.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in full.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!(
        "{}-{:012x}",
        clean[..50].trim_matches('-'),
        h & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A current cache copy is written as is; a stale one loses its CAS
    /// and the change is made again on what the store holds, losing
    /// nobody's write.
    #[tokio::test]
    async fn update_cached_writes_current_copies_and_redoes_stale_ones() {
        use corral_api_types::{Network, NetworkSpec};
        let dir = tempfile::tempdir().unwrap();
        let raw = corral_store::EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let store = ResourceStore::new(std::sync::Arc::new(raw));
        let spec = NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        };
        let cached = store.create(&Network::new("p", "n", spec)).await.unwrap();
        let label = |key: &'static str| {
            move |n: &mut Network| n.metadata.labels.insert(key.into(), "x".into()).is_none()
        };
        let first = update_cached(&store, &cached, label("a"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            first.metadata.resource_version,
            cached.metadata.resource_version
        );
        // `cached` is now stale: its write must not undo label a.
        let second = update_cached(&store, &cached, label("b"))
            .await
            .unwrap()
            .unwrap();
        let stored = store.get::<Network>("p", "n").await.unwrap().unwrap();
        assert_eq!(stored, second);
        assert!(stored.metadata.labels.contains_key("a"), "{stored:?}");
        assert!(stored.metadata.labels.contains_key("b"), "{stored:?}");
        // Nothing to change: no write.
        let again = update_cached(&store, &stored, label("b"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            again.metadata.resource_version,
            stored.metadata.resource_version
        );
    }

    #[test]
    fn conditions_keep_transition_time_unless_status_changes() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(5);
        let mut c = Vec::new();
        assert!(set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Booting",
            "",
            1,
            t0
        ));
        assert!(!set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Booting",
            "",
            1,
            t1
        ));
        assert_eq!(c[0].last_transition_time, Some(t0));
        assert!(set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Stuck",
            "x",
            1,
            t1
        ));
        assert_eq!(
            c[0].last_transition_time,
            Some(t0),
            "same status: same time"
        );
        assert!(set_condition(
            &mut c,
            "Ready",
            ConditionStatus::True,
            "Up",
            "",
            2,
            t1
        ));
        assert_eq!(c[0].last_transition_time, Some(t1));
        assert_eq!(condition(&c, "Ready").unwrap().observed_generation, 2);
        assert!(condition(&c, "Other").is_none());
    }

    #[test]
    fn event_names_are_dns_labels() {
        assert_eq!(
            event_name("Instance", "web-1", "Scheduled"),
            "instance-web-1-scheduled"
        );
        let long = event_name("Instance", &"x".repeat(60), "FailedScheduling");
        assert!(long.len() <= 63, "{long}");
        assert!(corral_api_types::validate::is_dns_label(&long), "{long}");
        assert_ne!(
            long,
            event_name("Instance", &"x".repeat(61), "FailedScheduling")
        );
    }
}
