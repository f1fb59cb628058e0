//! The typed layer over both backends: keys, resourceVersion, project
//! scoping and typed watch events.

use std::sync::Arc;
use std::time::Duration;

use corral_api_types::{resource, Resource};
use corral_store::{
    object_key, EmbeddedStore, EtcdStore, ListOptions, ObjectEvent, ResourceStore, Store,
    StoreError,
};
use corral_test_support::EtcdServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    pub size: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    pub ready: bool,
}

resource!(Widget, WidgetSpec, WidgetStatus, "widgets", Project);
resource!(Gadget, WidgetSpec, WidgetStatus, "gadgets", Cluster);

async fn exercise(raw: Arc<dyn Store>) {
    let store = ResourceStore::new(raw.clone());
    let w = Widget::new("demo", "w1", WidgetSpec { size: 3 });
    let created = store.create(&w).await.unwrap();
    assert!(!created.metadata.uid.is_empty());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, 1);
    let rv: i64 = created.metadata.resource_version.parse().unwrap();
    assert!(rv > 0);

    // Stored at the documented key, without resourceVersion in the bytes.
    let key = object_key::<Widget>("demo", "w1");
    assert_eq!(key, "/corral/widgets/demo/w1");
    let raw_kv = raw.get(&key).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw_kv.value).unwrap();
    assert!(json["metadata"].get("resourceVersion").is_none());
    assert_eq!(json["kind"], "Widget");

    let got: Widget = store.get("demo", "w1").await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(store.get::<Widget>("other", "w1").await.unwrap().is_none());

    // Writing back what was read changes nothing, not even the version.
    let same = store.update(&got).await.unwrap();
    assert_eq!(
        same.metadata.resource_version,
        got.metadata.resource_version
    );

    let mut changed = got.clone();
    changed.spec.size = 4;
    let changed = store.update(&changed).await.unwrap();
    assert_ne!(
        changed.metadata.resource_version,
        got.metadata.resource_version
    );
    // The stale copy loses.
    let mut stale = got.clone();
    stale.spec.size = 5;
    assert!(matches!(
        store.update(&stale).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut no_rv = got.clone();
    no_rv.metadata.resource_version.clear();
    assert!(matches!(
        store.update(&no_rv).await,
        Err(StoreError::InvalidArgument(_))
    ));

    // Projects are separate key spaces; a list of one sees only its own.
    store
        .create(&Widget::new("demo2", "w1", WidgetSpec { size: 9 }))
        .await
        .unwrap();
    let demo = store
        .list::<Widget>(Some("demo"), ListOptions::default())
        .await
        .unwrap();
    assert_eq!(demo.items.len(), 1);
    assert_eq!(demo.items[0].spec.size, 4);
    let all = store
        .list::<Widget>(None, ListOptions::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);

    // Cluster kinds ignore the project.
    let g = store
        .create(&Gadget::new("", "g1", WidgetSpec { size: 1 }))
        .await
        .unwrap();
    assert_eq!(
        object_key::<Gadget>("", "g1"),
        "/corral/gadgets/_/g1".to_string()
    );
    assert_eq!(
        store
            .get::<Gadget>("", "g1")
            .await
            .unwrap()
            .unwrap()
            .metadata
            .uid,
        g.metadata.uid
    );

    // Typed watch: Added, Modified, Deleted with the last state.
    let mut watch = store
        .watch::<Widget>(Some("demo"), demo.resource_version)
        .await
        .unwrap();
    let w2 = store
        .create(&Widget::new("demo", "w2", WidgetSpec { size: 1 }))
        .await
        .unwrap();
    let mut w2b = w2.clone();
    w2b.status = Some(WidgetStatus { ready: true });
    let w2b = store.update(&w2b).await.unwrap();
    let deleted: Widget = store
        .delete("demo", "w2", Some(&w2b.metadata.resource_version))
        .await
        .unwrap();
    assert_eq!(deleted.status, Some(WidgetStatus { ready: true }));
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(
            tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert!(matches!(&events[0], ObjectEvent::Added(o) if o.metadata.name == "w2"));
    assert!(matches!(&events[1], ObjectEvent::Modified(o, Some(prev))
        if o.status == Some(WidgetStatus { ready: true }) && prev.status.is_none()));
    match &events[2] {
        ObjectEvent::Deleted(o) => {
            assert_eq!(o.metadata.name, "w2");
            assert_eq!(
                o.metadata.resource_version,
                deleted.metadata.resource_version
            );
        }
        other => panic!("{other:?}"),
    }
    // Deleting at a stale version is refused.
    assert!(matches!(
        store
            .delete::<Widget>("demo", "w1", Some(&got.metadata.resource_version))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // A corrupt object is reported as such, not as a panic.
    raw.create("/corral/widgets/demo/bad", b"{not json".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        store.get::<Widget>("demo", "bad").await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(Widget::KIND, "Widget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_on_etcd() {
    let server = EtcdServer::start().await.expect("start a real etcd");
    let store = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    exercise(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_on_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    exercise(Arc::new(store)).await;
}

/// An object past the backend's own value limit (etcd's 1.5 MB request
/// limit) is refused before it is sent, naming the limit, and nothing of
/// it is stored; the embedded store keeps objects that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_past_the_backend_limit_are_refused_whole() {
    let mut w = Widget::new("demo", "big", WidgetSpec { size: 1 });
    w.metadata
        .annotations
        .insert("note".into(), "x".repeat(2_000_000));

    let server = EtcdServer::start().await.expect("start a real etcd");
    let etcd = ResourceStore::new(Arc::new(
        EtcdStore::connect(&[server.endpoint()]).await.unwrap(),
    ));
    match etcd.create(&w).await {
        Err(StoreError::TooLarge { size, limit, .. }) => {
            assert_eq!(limit, 1_500_000);
            assert!(size > 2_000_000, "{size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(etcd.get::<Widget>("demo", "big").await.unwrap().is_none());
    w.metadata.annotations.clear();
    etcd.create(&w).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let embedded = ResourceStore::new(Arc::new(
        EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
    ));
    w.metadata
        .annotations
        .insert("note".into(), "x".repeat(2_000_000));
    embedded.create(&w).await.unwrap();
}
