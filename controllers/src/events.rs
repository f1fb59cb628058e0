//! Event expiry: Events are history, not state. Each one is deleted once
//! its last occurrence is older than the TTL (an hour by default, like
//! Kubernetes' `--event-ttl`), so they do not pile up in the store and in
//! every cache for as long as the cluster lives.

use std::time::Duration;

use chrono::Utc;
use corral_api_types::{Event, Resource};
use corral_store::{ListOptions, ResourceStore, StoreError};

/// Deletes the Events whose last occurrence is older than `ttl`; answers
/// how many went.
pub async fn expire(store: &ResourceStore, ttl: Duration) -> Result<usize, StoreError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    let mut token = None;
    loop {
        let page = store
            .list::<Event>(
                None,
                ListOptions {
                    limit: Some(500),
                    continue_token: token.take(),
                    revision: None,
                },
            )
            .await?;
        for e in &page.items {
            let last = e.spec.last_timestamp.or(e.spec.first_timestamp);
            if last.is_some_and(|t| t < cutoff) {
                let m = e.meta();
                match store
                    .delete::<Event>(&m.project, &m.name, Some(&m.resource_version))
                    .await
                {
                    Ok(_) => deleted += 1,
                    // Recorded again meanwhile, or already gone: keep going.
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match page.continue_token {
            Some(t) => token = Some(t),
            None => return Ok(deleted),
        }
    }
}
