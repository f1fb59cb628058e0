//! The store contract, run against both backends: a real etcd started on a
//! loopback port for each test, and the embedded redb file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_store::{
    EmbeddedStore, EtcdStore, KeyValue, ListOptions, Store, StoreError, WatchEvent, WatchStream,
};
use corral_test_support::EtcdServer;

/// A store plus whatever keeps it alive.
struct Harness {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdServer>,
    _dir: Option<tempfile::TempDir>,
}

async fn etcd() -> Harness {
    // No etcd, no pass: a missing binary fails the test here.
    let server = EtcdServer::start().await.expect("start a real etcd");
    let store = EtcdStore::connect(&[server.endpoint()])
        .await
        .expect("connect to etcd");
    Harness {
        store: Arc::new(store),
        _etcd: Some(server),
        _dir: None,
    }
}

async fn embedded() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open embedded store");
    Harness {
        store: Arc::new(store),
        _etcd: None,
        _dir: Some(dir),
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("watch event within 10s")
        .expect("watch still open")
        .expect("watch event, not an error")
}

async fn assert_quiet(w: &mut WatchStream) {
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("expected no event, got {ev:?}");
    }
}

fn values(items: &[KeyValue]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|kv| (kv.key.clone(), String::from_utf8(kv.value.clone()).unwrap()))
        .collect()
}

async fn create_and_get(s: Arc<dyn Store>) {
    let rev = s.create("/t/a", b"one".to_vec()).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().expect("created key is there");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, rev);
    assert_eq!(kv.mod_revision, rev);
    assert_eq!(s.current_revision().await.unwrap(), rev);
    match s.create("/t/a", b"two".to_vec()).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/t/a"),
        other => panic!("second create must fail with AlreadyExists, got {other:?}"),
    }
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().value, b"one");
    assert!(s.get("/t/missing").await.unwrap().is_none());
}

async fn update_is_compare_and_swap(s: Arc<dyn Store>) {
    let r1 = s.create("/t/k", b"v1".to_vec()).await.unwrap();
    let out = s.update("/t/k", b"v2".to_vec(), r1).await.unwrap();
    assert!(out.changed);
    assert!(out.revision > r1);
    let kv = s.get("/t/k").await.unwrap().unwrap();
    assert_eq!(kv.value, b"v2");
    assert_eq!(kv.mod_revision, out.revision);
    assert_eq!(kv.create_revision, r1, "update keeps create_revision");

    // A writer holding the old revision loses, and sees who won.
    match s.update("/t/k", b"stale".to_vec(), r1).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/t/k");
            assert_eq!(expected, r1);
            assert_eq!(current, out.revision);
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert_eq!(s.get("/t/k").await.unwrap().unwrap().value, b"v2");

    match s.update("/t/nope", b"x".to_vec(), r1).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/t/nope"),
        other => panic!("update of a missing key must be NotFound, got {other:?}"),
    }
    assert!(matches!(
        s.update("/t/k", b"x".to_vec(), 0).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn unchanged_update_writes_nothing(s: Arc<dyn Store>) {
    let r1 = s.create("/t/same", b"v".to_vec()).await.unwrap();
    let before = s.current_revision().await.unwrap();
    let mut w = s.watch("/t/", before).await.unwrap();
    let out = s.update("/t/same", b"v".to_vec(), r1).await.unwrap();
    assert!(!out.changed);
    assert_eq!(out.revision, r1);
    assert_eq!(s.current_revision().await.unwrap(), before);
    assert_quiet(&mut w).await;
    // A stale no-op is still a conflict, not a silent success.
    let r2 = s
        .update("/t/same", b"w".to_vec(), r1)
        .await
        .unwrap()
        .revision;
    assert!(matches!(
        s.update("/t/same", b"w".to_vec(), r1).await,
        Err(StoreError::Conflict { .. })
    ));
    let ev = next_event(&mut w).await;
    assert_eq!(ev.revision(), r2, "the only event is the real write");
}

/// Objects near etcd's request limit (1.5 MiB) can be written, rewritten
/// unchanged, and swapped: a big network's address table is one object.
async fn big_values_update_like_small_ones(s: Arc<dyn Store>) {
    let big = |c: u8| vec![c; 1024 * 1024];
    let r1 = s.create("/t/big", big(b'a')).await.unwrap();
    let before = s.current_revision().await.unwrap();
    let out = s.update("/t/big", big(b'a'), r1).await.unwrap();
    assert!(!out.changed);
    assert_eq!(out.revision, r1);
    assert_eq!(s.current_revision().await.unwrap(), before);
    let out = s.update("/t/big", big(b'b'), r1).await.unwrap();
    assert!(out.changed);
    assert!(out.revision > r1);
    assert_eq!(s.get("/t/big").await.unwrap().unwrap().value, big(b'b'));
    match s.update("/t/big", big(b'c'), r1).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, out.revision),
        other => panic!("stale big update must conflict, got {other:?}"),
    }
    assert!(matches!(
        s.update("/t/big-missing", big(b'a'), r1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get("/t/big").await.unwrap().unwrap().value, big(b'b'));
}

async fn delete_is_compare_and_swap(s: Arc<dyn Store>) {
    let r1 = s.create("/t/d", b"v1".to_vec()).await.unwrap();
    let r2 = s.update("/t/d", b"v2".to_vec(), r1).await.unwrap().revision;
    assert!(matches!(
        s.delete("/t/d", Some(r1)).await,
        Err(StoreError::Conflict { current, .. }) if current == r2
    ));
    assert!(s.get("/t/d").await.unwrap().is_some());
    let (prev, rev) = s.delete("/t/d", Some(r2)).await.unwrap();
    assert_eq!(prev.value, b"v2");
    assert_eq!(prev.mod_revision, r2);
    assert!(rev > r2);
    assert!(s.get("/t/d").await.unwrap().is_none());
    assert!(matches!(
        s.delete("/t/d", None).await,
        Err(StoreError::NotFound { .. })
    ));
    // Unconditional delete.
    s.create("/t/e", b"x".to_vec()).await.unwrap();
    let (prev, _) = s.delete("/t/e", None).await.unwrap();
    assert_eq!(prev.value, b"x");
    // Re-creating a deleted key starts a new life.
    let r3 = s.create("/t/d", b"again".to_vec()).await.unwrap();
    assert_eq!(s.get("/t/d").await.unwrap().unwrap().create_revision, r3);
}

async fn list_pages_are_consistent(s: Arc<dyn Store>) {
    for i in 0..25 {
        s.create(&format!("/t/items/{i:02}"), format!("v{i}").into_bytes())
            .await
            .unwrap();
    }
    // Neighbours that share a textual prefix must not leak in.
    s.create("/t/itemsx/0", b"no".to_vec()).await.unwrap();
    s.create("/t/item", b"no".to_vec()).await.unwrap();
    let expected: BTreeMap<String, String> = (0..25)
        .map(|i| (format!("/t/items/{i:02}"), format!("v{i}")))
        .collect();

    let first = s
        .list(
            "/t/items/",
            ListOptions {
                limit: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 10);
    let mut seen = first.items.clone();
    let mut token = first.continue_token.clone().expect("more pages");

    // Writes between pages must not show up in the listing.
    let twelve = s.get("/t/items/12").await.unwrap().unwrap();
    s.update("/t/items/12", b"changed".to_vec(), twelve.mod_revision)
        .await
        .unwrap();
    s.delete("/t/items/20", None).await.unwrap();
    s.create("/t/items/13a", b"new".to_vec()).await.unwrap();
    s.create("/t/items/99", b"new".to_vec()).await.unwrap();

    let mut pages = 1;
    loop {
        let page = s
            .list(
                "/t/items/",
                ListOptions {
                    limit: Some(10),
                    continue_token: Some(token.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.revision, first.revision, "all pages at one revision");
        seen.extend(page.items.iter().cloned());
        match page.continue_token {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(values(&seen), expected);
    let keys: Vec<_> = seen.iter().map(|kv| kv.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "key order");

    // An exact-size page has no token only when nothing follows.
    let all = s.list("/t/items/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 26);
    assert!(all.continue_token.is_none());
    assert_eq!(
        all.items
            .iter()
            .find(|kv| kv.key == "/t/items/12")
            .unwrap()
            .value,
        b"changed"
    );
}

async fn list_at_past_revision(s: Arc<dyn Store>) {
    let r1 = s.create("/t/p/a", b"a1".to_vec()).await.unwrap();
    s.create("/t/p/b", b"b1".to_vec()).await.unwrap();
    let at = s.current_revision().await.unwrap();
    s.update("/t/p/a", b"a2".to_vec(), r1).await.unwrap();
    s.delete("/t/p/b", None).await.unwrap();
    s.create("/t/p/c", b"c1".to_vec()).await.unwrap();
    let old = s
        .list(
            "/t/p/",
            ListOptions {
                revision: Some(at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(old.revision, at);
    let want: BTreeMap<String, String> = [("/t/p/a", "a1"), ("/t/p/b", "b1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(values(&old.items), want);
    let now = s.list("/t/p/", ListOptions::default()).await.unwrap();
    let want: BTreeMap<String, String> = [("/t/p/a", "a2"), ("/t/p/c", "c1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(values(&now.items), want);
}

/// More than one etcd response can carry (4 MiB): still one list.
async fn big_unbounded_list(s: Arc<dyn Store>) {
    let value = vec![b'v'; 4096];
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (s, value) = (s.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                s.create(&format!("/t/big/{t}-{i:03}"), value.clone())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = s.list("/t/big/", ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 1600);
    assert!(all.continue_token.is_none());
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

async fn bad_continue_token_is_rejected(s: Arc<dyn Store>) {
    for token in ["garbage!!", "", "bm90LWEtdG9rZW4"] {
        let r = s
            .list(
                "/t/",
                ListOptions {
                    continue_token: Some(token.to_string()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(r, Err(StoreError::InvalidContinueToken)),
            "token {token:?}: {r:?}"
        );
    }
}

async fn watch_delivers_every_event_in_order(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch("/t/w/", start).await.unwrap();
    let r1 = s.create("/t/w/a", b"1".to_vec()).await.unwrap();
    s.create("/t/other", b"x".to_vec()).await.unwrap();
    let r2 = s
        .update("/t/w/a", b"2".to_vec(), r1)
        .await
        .unwrap()
        .revision;
    let r3 = s.create("/t/w/b", b"3".to_vec()).await.unwrap();
    let (_, r4) = s.delete("/t/w/a", Some(r2)).await.unwrap();

    match next_event(&mut w).await {
        WatchEvent::Put { kv, prev } => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), ("/t/w/a", r1));
            assert_eq!(kv.create_revision, r1, "a create");
            assert!(prev.is_none());
        }
        other => panic!("{other:?}"),
    }
    match next_event(&mut w).await {
        WatchEvent::Put { kv, prev } => {
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"2"[..], r2));
            assert_eq!(kv.create_revision, r1, "an update");
            assert_eq!(prev.unwrap().value, b"1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event(&mut w).await.revision(), r3);
    match next_event(&mut w).await {
        WatchEvent::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!((key.as_str(), revision), ("/t/w/a", r4));
            assert_eq!(prev.unwrap().value, b"2");
        }
        other => panic!("{other:?}"),
    }
    assert_quiet(&mut w).await;
}

async fn watch_replays_history_then_follows(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(s.create(&format!("/t/h/{i}"), vec![i]).await.unwrap());
    }
    // Start in the middle of the history.
    let mut w = s.watch("/t/h/", revs[19]).await.unwrap();
    for i in 50..60 {
        revs.push(s.create(&format!("/t/h/{i}"), vec![i]).await.unwrap());
    }
    for want in &revs[20..] {
        assert_eq!(next_event(&mut w).await.revision(), *want);
    }
    assert_quiet(&mut w).await;
    assert!(revs[0] > start);
}

async fn many_watchers_see_the_same_history(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..8 {
        watchers.push(s.watch("/t/m/", start).await.unwrap());
    }
    let mut revs = Vec::new();
    for i in 0..100u8 {
        revs.push(s.create(&format!("/t/m/{i}"), vec![i]).await.unwrap());
    }
    for w in &mut watchers {
        for want in &revs {
            assert_eq!(next_event(w).await.revision(), *want);
        }
    }
}

async fn compacted_history_is_expired(s: Arc<dyn Store>) {
    let early = s.create("/t/c/a", b"1".to_vec()).await.unwrap();
    let mut rev = early;
    for i in 0..5 {
        rev = s
            .update("/t/c/a", format!("{i}").into_bytes(), rev)
            .await
            .unwrap()
            .revision;
    }
    s.compact(rev).await.unwrap();
    // Both backends refuse at once, so callers relist before streaming.
    match s.watch("/t/c/", early).await {
        Err(StoreError::Expired { requested, .. }) => assert_eq!(requested, early + 1),
        Err(other) => panic!("expected Expired, got {other:?}"),
        Ok(_) => panic!("a watch from a compacted revision must fail with Expired"),
    }
    let listed = s
        .list(
            "/t/c/",
            ListOptions {
                revision: Some(early),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(listed, Err(StoreError::Expired { .. })),
        "{listed:?}"
    );
    // From the compaction point on, all is there.
    let mut w = s.watch("/t/c/", rev).await.unwrap();
    let next = s
        .update("/t/c/a", b"after".to_vec(), rev)
        .await
        .unwrap()
        .revision;
    assert_eq!(next_event(&mut w).await.revision(), next);
    assert_eq!(
        s.list("/t/c/", ListOptions::default()).await.unwrap().items[0].value,
        b"after"
    );
}

/// 32 tasks increment one counter through CAS retries; no increment is lost.
async fn concurrent_cas_counter(s: Arc<dyn Store>) {
    const TASKS: usize = 32;
    const EACH: usize = 15;
    s.create("/t/counter", b"0".to_vec()).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..EACH {
                loop {
                    let kv = s.get("/t/counter").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    match s
                        .update(
                            "/t/counter",
                            (n + 1).to_string().into_bytes(),
                            kv.mod_revision,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    let kv = s.get("/t/counter").await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&kv.value).unwrap(),
        (TASKS * EACH).to_string()
    );
    // With 32 racing writers some must have lost a race and retried;
    // otherwise this test did not test CAS.
    assert!(conflicts > 0, "no conflicts seen");
}

macro_rules! contract_suite {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let h = super::$backend().await;
                        super::$name(h.store.clone()).await;
                    }
                };
            }

            case!(create_and_get);
            case!(update_is_compare_and_swap);
            case!(unchanged_update_writes_nothing);
            case!(big_values_update_like_small_ones);
            case!(delete_is_compare_and_swap);
            case!(list_pages_are_consistent);
            case!(list_at_past_revision);
            case!(bad_continue_token_is_rejected);
            case!(big_unbounded_list);
            case!(watch_delivers_every_event_in_order);
            case!(watch_replays_history_then_follows);
            case!(many_watchers_see_the_same_history);
            case!(compacted_history_is_expired);
            case!(concurrent_cas_counter);
        }
    };
}

contract_suite!(etcd);
contract_suite!(embedded);

/// etcd-client does not resume watches after a disconnect; the store must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_connection_drop() {
    let mut server = EtcdServer::start().await.expect("start a real etcd");
    let store = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let mut w = store.watch("/t/r/", start).await.unwrap();
    let r1 = store.create("/t/r/before", b"1".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), r1);

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await.expect("restart etcd");

    // Writes through the same client once etcd is back (the client
    // reconnects), and through a fresh one.
    let mut r2 = None;
    for _ in 0..100 {
        match store.create("/t/r/after", b"2".to_vec()).await {
            Ok(r) => {
                r2 = Some(r);
                break;
            }
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let r2 = r2.expect("store usable again after etcd restart");
    let other = EtcdStore::connect(&[server.endpoint()]).await.unwrap();
    let r3 = other.create("/t/r/third", b"3".to_vec()).await.unwrap();

    let ev = next_event(&mut w).await;
    assert_eq!((ev.key(), ev.revision()), ("/t/r/after", r2));
    let ev = next_event(&mut w).await;
    assert_eq!((ev.key(), ev.revision()), ("/t/r/third", r3));
    assert_quiet(&mut w).await;
}

/// Data and revisions outlive the process's handle on the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let (rev, watch_from) = {
        let s = EmbeddedStore::open(&path).unwrap();
        let from = s.current_revision().await.unwrap();
        let r = s.create("/t/x", b"kept".to_vec()).await.unwrap();
        (r, from)
    };
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.get("/t/x").await.unwrap().unwrap().value, b"kept");
    // History survives too: a watch from before the write replays it.
    let mut w = s.watch("/t/", watch_from).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), rev);
    let r2 = s.create("/t/y", b"new".to_vec()).await.unwrap();
    assert_eq!(r2, rev + 1);
}
