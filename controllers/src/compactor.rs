//! Store history compaction. etcd keeps every revision of every key until
//! someone compacts it; without that its database grows until it hits its
//! space quota and refuses all writes. As Kubernetes' API server does, the
//! leader compacts every interval to the revision it saw one interval
//! earlier, so a watcher always has at least one interval of history to
//! resume from; one that falls further behind gets `Expired` and relists.
//! (The embedded store also trims its own history by size.)

use std::time::Duration;

use corral_runtime::Shutdown;
use corral_store::{ResourceStore, StoreError};

/// One step: compacts to `previous` (if any) and returns the revision to
/// compact to next time.
pub async fn compact_step(
    store: &ResourceStore,
    previous: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let now = store.raw().current_revision().await?;
    if let Some(to) = previous.filter(|r| *r > 0 && *r < now) {
        match store.raw().compact(to).await {
            Ok(()) => tracing::info!(revision = to, "compacted store history"),
            // Someone (an operator, etcd's own auto-compaction) went further.
            Err(StoreError::Expired { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(now))
}

/// Compacts every `interval` until `stop`.
pub async fn run(store: ResourceStore, interval: Duration, mut stop: Shutdown) {
    let mut next = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match compact_step(&store, next).await {
            Ok(n) => next = n,
            Err(e) => tracing::warn!(error = %e, "compacting store history"),
        }
    }
}
