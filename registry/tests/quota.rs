//! Quota charges started from a caller's cached Project (the API server's
//! watch cache): a copy that is behind never refuses what the store
//! allows, and never admits what it does not.

use corral_api_types::{Project, Volume};
use corral_registry::quota::{charge_from, QuotaError};
use corral_store::{EmbeddedStore, ResourceStore};
use serde_json::json;

fn volume(name: &str, gib: u32) -> Volume {
    serde_json::from_value(json!({
        "apiVersion": "corral/v1",
        "kind": "Volume",
        "metadata": {"name": name, "project": "q"},
        "spec": {"sizeGiB": gib}
    }))
    .unwrap()
}

async fn store() -> (tempfile::TempDir, ResourceStore) {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, ResourceStore::new(std::sync::Arc::new(raw)))
}

#[tokio::test]
async fn a_stale_copy_at_the_limit_does_not_refuse_released_usage() {
    let (_dir, store) = store().await;
    let p: Project = serde_json::from_value(json!({
        "apiVersion": "corral/v1",
        "kind": "Project",
        "metadata": {"name": "q"},
        "spec": {"quotas": {"volumeGiB": 10}}
    }))
    .unwrap();
    store.create(&p).await.unwrap();
    // 10 GiB charged: the project is at its limit.
    let mut full: Project = store.get("", "q").await.unwrap().unwrap();
    full.status = Some(serde_json::from_value(json!({"usage": {"volumeGiB": 10}})).unwrap());
    let full = store.update(&full).await.unwrap();
    let over = charge_from(&store, Some(&full), &volume("a", 1), None, false).await;
    assert!(
        matches!(over, Err(QuotaError::Exceeded { .. })),
        "over the limit must be refused: {over:?}"
    );

    // The volume is deleted and usage settled back to 0, in a write the
    // cached copy (`full`) has not seen.
    let mut freed = full.clone();
    freed.status = Some(Default::default());
    store.update(&freed).await.unwrap();
    let charge = charge_from(&store, Some(&full), &volume("b", 10), None, false)
        .await
        .expect("the released 10 GiB are there to take");
    assert!(charge.is_some(), "the charge is recorded");
    let now: Project = store.get("", "q").await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(now.status.unwrap().usage).unwrap()["volumeGiB"],
        10
    );

    // And the copy being behind the other way never admits too much.
    let again = charge_from(&store, Some(&freed), &volume("c", 1), None, false).await;
    assert!(
        matches!(again, Err(QuotaError::Exceeded { .. })),
        "a stale copy showing room must still be refused: {again:?}"
    );
}
