//! The client against a real API server (embedded store, plain HTTP on
//! loopback): typed errors, paging, and the watcher's list → watch loop.

use std::sync::Arc;
use std::time::Duration;

use corral_client::{Client, WatcherEvent};
use corral_store::{EmbeddedStore, ResourceStore};
use serde_json::{json, Value};

async fn server() -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    let store = ResourceStore::new(Arc::new(raw));
    let admin = corral_apiserver::bootstrap(&store, "admin")
        .await
        .unwrap()
        .admin
        .unwrap()
        .token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(corral_apiserver::serve(
        corral_apiserver::ApiState::new(store),
        listener,
        std::future::pending(),
    ));
    (dir, Client::with_ca(&base, &admin, None).unwrap())
}

fn network(name: &str, third: u8) -> Value {
    json!({"kind": "Network", "metadata": {"name": name},
           "spec": {"cidr": format!("10.{third}.0.0/24")}})
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap()
}

async fn next(w: &mut corral_client::Watcher) -> WatcherEvent {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("an event within 20 s")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_pages_and_the_watch_loop() {
    let (_dir, c) = server().await;
    c.post("/v1/projects", &[], &json!({"metadata": {"name": "w"}}))
        .await
        .unwrap();
    let nets = "/v1/projects/w/networks";
    for i in 0..7u8 {
        c.post(nets, &[], &network(&format!("n{i}"), i))
            .await
            .unwrap();
    }

    // Errors come typed, with the server's Status.
    let err = c.get(&format!("{nets}/absent"), &[]).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.code(), Some(404));
    let err = c
        .post(nets, &[], &network("bad name!", 9))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(422));
    assert!(err.to_string().contains("metadata.name"), "{err}");
    assert_eq!(c.get_opt(&format!("{nets}/absent")).await.unwrap(), None);

    // Pages of 3 come whole, with the list's revision.
    let all = c.list_paged(nets, &[], 3).await.unwrap();
    assert_eq!(all.items.len(), 7);
    assert!(all.resource_version.parse::<i64>().unwrap() > 0);

    // The watcher: the set first, then each change, in order.
    let mut w = c.watcher(nets, &[]);
    match next(&mut w).await {
        WatcherEvent::Restarted(items) => assert_eq!(items.len(), 7),
        other => panic!("{other:?}"),
    }
    c.post(nets, &[], &network("late", 20)).await.unwrap();
    match next(&mut w).await {
        WatcherEvent::Added(o) => assert_eq!(name(&o), "late"),
        other => panic!("{other:?}"),
    }
    let mut late = c.get(&format!("{nets}/late"), &[]).await.unwrap();
    late["metadata"]["labels"] = json!({"tier": "gold"});
    c.put(&format!("{nets}/late"), &[], &late).await.unwrap();
    match next(&mut w).await {
        WatcherEvent::Modified(o) => assert_eq!(o["metadata"]["labels"]["tier"], "gold"),
        other => panic!("{other:?}"),
    }
    c.delete(&format!("{nets}/n0"), &[]).await.unwrap();
    match next(&mut w).await {
        WatcherEvent::Deleted(o) => assert_eq!(name(&o), "n0"),
        other => panic!("{other:?}"),
    }
    // A label selector narrows the list and the watch alike.
    let mut gold = c.watcher(nets, &[("labelSelector", "tier=gold")]);
    match next(&mut gold).await {
        WatcherEvent::Restarted(items) => {
            let names: Vec<&str> = items.iter().map(name).collect();
            assert_eq!(names, ["late"]);
        }
        other => panic!("{other:?}"),
    }
}
