//! Store history compaction on a real etcd and on the embedded store:
//! history older than the interval goes (a watch from there is Expired),
//! the last interval stays (a watch from there works), and objects are
//! untouched.

use std::sync::Arc;
use std::time::Duration;

use corral_api_types::{Network, NetworkSpec, Resource};
use corral_controllers::compactor;
use corral_store::{EmbeddedStore, EtcdStore, ResourceStore, Store, StoreError};
use corral_test_support::EtcdServer;

async fn churn(store: &ResourceStore, name: &str, n: usize) -> i64 {
    let spec = NetworkSpec {
        cidr: "10.0.0.0/24".into(),
        ..Default::default()
    };
    let mut net = match store.get::<Network>("p", name).await.unwrap() {
        Some(n) => n,
        None => store.create(&Network::new("p", name, spec)).await.unwrap(),
    };
    for i in 0..n {
        net.metadata.labels.insert("i".into(), i.to_string());
        net = store.update(&net).await.unwrap();
    }
    net.meta().resource_version.parse().unwrap()
}

async fn watch_from(store: &ResourceStore, rev: i64) -> Result<(), StoreError> {
    let mut w = store.watch::<Network>(Some("p"), rev).await?;
    // Expiry may come as the stream's first item rather than at open.
    match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
        Ok(Some(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

async fn compaction_keeps_one_interval(raw: Arc<dyn Store>) {
    let store = ResourceStore::new(raw);
    let first = churn(&store, "n", 20).await;
    // Step 1 only notes the revision; nothing is compacted yet.
    let mark = compactor::compact_step(&store, None).await.unwrap();
    assert_eq!(mark, Some(first));
    watch_from(&store, 1).await.expect("nothing compacted yet");

    let second = churn(&store, "n", 20).await;
    // Step 2 compacts to what step 1 saw.
    let next = compactor::compact_step(&store, mark).await.unwrap();
    assert_eq!(next, Some(second));
    match watch_from(&store, 1).await {
        Err(StoreError::Expired { .. }) => {}
        other => panic!("a watch from before the mark should be Expired, got {other:?}"),
    }
    watch_from(&store, first)
        .await
        .expect("the last interval of history is kept");
    let net = store.get::<Network>("p", "n").await.unwrap().unwrap();
    assert_eq!(net.metadata.labels["i"], "19");
    // A step whose mark is already compacted (or current) is harmless.
    compactor::compact_step(&store, mark).await.unwrap();
    compactor::compact_step(&store, next).await.unwrap();
}

#[tokio::test]
async fn etcd_history_is_compacted_to_one_interval() {
    let server = EtcdServer::start().await.expect("start a real etcd");
    let raw = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    compaction_keeps_one_interval(Arc::new(raw)).await;
}

#[tokio::test]
async fn embedded_history_is_compacted_to_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    compaction_keeps_one_interval(Arc::new(raw)).await;
}
