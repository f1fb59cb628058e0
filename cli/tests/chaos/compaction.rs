//! Scenario 2: etcd compaction while native API watchers are behind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use corral_store::{EtcdStore, Store};
use corral_test_support::EtcdServer;
use serde_json::{json, Value};

use crate::seeded::{seed, Rng};
use crate::support::*;

/// A native API watch client that keeps a copy of a collection the way
/// every client must: list, watch from the list's revision, relist on 410.
pub(crate) struct Watcher {
    pub(crate) api: Api,
    pub(crate) path: String,
    pub(crate) seen: Seen,
    pub(crate) rev: String,
    pub(crate) stream: Option<reqwest::Response>,
    pub(crate) buf: Vec<u8>,
    pub(crate) relists: u32,
    pub(crate) expired_mid_stream: u32,
    pub(crate) expired_at_start: u32,
}

pub(crate) enum Next {
    Event,
    Expired,
    Ended,
}

impl Watcher {
    pub(crate) async fn new(api: &Api, path: &str) -> Watcher {
        let mut w = Watcher {
            api: api.clone(),
            path: path.to_string(),
            seen: Seen::new(),
            rev: String::new(),
            stream: None,
            buf: Vec::new(),
            relists: 0,
            expired_mid_stream: 0,
            expired_at_start: 0,
        };
        w.relist().await;
        w.relists = 0;
        w
    }

    pub(crate) async fn relist(&mut self) {
        let (items, rev) = self.api.list_all(&self.path).await.expect("relist");
        self.seen = items.iter().map(|i| (name_of(i), entry(i))).collect();
        self.rev = rev;
        self.relists += 1;
    }

    /// Opens the watch from the last revision seen; a 410 relists first.
    pub(crate) async fn open(&mut self) {
        loop {
            let url = format!(
                "{}{}?watch=true&heartbeatSeconds=1&resourceVersion={}",
                self.api.base, self.path, self.rev
            );
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(&self.api.token)
                .send()
                .await
                .expect("open watch");
            if resp.status().as_u16() == 410 {
                self.expired_at_start += 1;
                self.relist().await;
                continue;
            }
            assert_eq!(
                resp.status().as_u16(),
                200,
                "watch answered {}",
                resp.status()
            );
            self.stream = Some(resp);
            self.buf.clear();
            return;
        }
    }

    /// Reads one event (or the end) from the stream.
    pub(crate) async fn next(&mut self) -> Next {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let ev: Value = serde_json::from_slice(&line).expect("watch event is JSON");
                let obj = &ev["object"];
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match ev["type"].as_str() {
                    Some("ADDED") | Some("MODIFIED") => {
                        self.seen.insert(name_of(obj), entry(obj));
                    }
                    Some("DELETED") => {
                        self.seen.remove(&name_of(obj));
                    }
                    Some("BOOKMARK") => {}
                    Some("ERROR") => {
                        assert_eq!(obj["code"], 410, "watch error: {ev}");
                        self.stream = None;
                        return Next::Expired;
                    }
                    other => panic!("unknown watch event {other:?}: {ev}"),
                }
                if !rv.is_empty() {
                    self.rev = rv;
                }
                return Next::Event;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Next::Ended;
            };
            match stream.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                _ => {
                    self.stream = None;
                    return Next::Ended;
                }
            }
        }
    }

    /// Follows the stream (relisting on 410) until it has seen revision
    /// `target`, or holds exactly `truth` (every object at its listed
    /// revision). A bookmark carries the revision of the kind's last event,
    /// so when other kinds were written last (a quota charge on the
    /// Project), the list's revision is never reached and the state is
    /// what shows the watcher caught up.
    pub(crate) async fn catch_up(&mut self, target: u64, truth: &Seen) {
        let t0 = Instant::now();
        while self.rev.parse::<u64>().unwrap_or(0) < target && self.seen != *truth {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "watcher stuck at {}",
                self.rev
            );
            match tokio::time::timeout(Duration::from_secs(5), self.next()).await {
                Ok(Next::Event) => {}
                Ok(Next::Expired) => {
                    self.expired_mid_stream += 1;
                    self.relist().await;
                    self.open().await;
                }
                Ok(Next::Ended) | Err(_) => self.open().await,
            }
        }
    }
}

pub(crate) fn entry(i: &Value) -> (String, String) {
    (
        i["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        i["spec"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Creates, updates and deletes security groups with big descriptions;
/// answers how many writes were acknowledged.
pub(crate) async fn churn(
    api: &Api,
    rng: &mut Rng,
    ops: usize,
    tag: &str,
    live: &mut Vec<String>,
) -> usize {
    // Big objects fill a stalled watcher's buffers sooner.
    let pad = "x".repeat(3000);
    let mut acked = 0;
    let mut batch = Vec::new();
    // Writes to one name stay in order: a batch never holds two.
    let mut touched = BTreeSet::new();
    for n in 0..ops {
        let op = rng.range(0, 10);
        let idx = rng.range(0, live.len().max(1) as u64) as usize;
        let pick = live.get(idx).filter(|x| !touched.contains(*x)).cloned();
        let (method, path, body) = match pick {
            Some(name) if op >= 5 && live.len() >= 10 => {
                touched.insert(name.clone());
                if op < 8 {
                    (
                        reqwest::Method::PUT,
                        format!("/v1/projects/watch/securitygroups/{name}"),
                        Some(
                            json!({"metadata": {"name": name, "annotations": {"chaos/pad": pad}}, "spec": {"description": format!("{tag} updated {n}")}}),
                        ),
                    )
                } else {
                    live.swap_remove(idx);
                    (
                        reqwest::Method::DELETE,
                        format!("/v1/projects/watch/securitygroups/{name}"),
                        None,
                    )
                }
            }
            _ => {
                let name = format!("{tag}-{n}");
                touched.insert(name.clone());
                live.push(name.clone());
                (
                    reqwest::Method::POST,
                    "/v1/projects/watch/securitygroups".to_string(),
                    Some(
                        json!({"metadata": {"name": name, "annotations": {"chaos/pad": pad}}, "spec": {"description": format!("{tag} {n}")}}),
                    ),
                )
            }
        };
        let api = api.clone();
        batch.push(tokio::spawn(async move {
            api.ok(method, &path, body).await;
        }));
        if batch.len() == 8 || n + 1 == ops {
            touched.clear();
            for t in batch.drain(..) {
                t.await.unwrap();
                acked += 1;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn watchers_behind_etcd_compaction_relist_and_miss_nothing() {
    let seed = seed();
    let mut rng = Rng::new(seed, 2);
    let t_all = Instant::now();
    let dir = scratch("corral-chaos-watch-");
    let etcd = EtcdServer::start().await.expect("start etcd");
    let mut server = spawn_server(
        dir.path(),
        "server",
        &etcd.endpoint(),
        &free_addr(),
        &free_addr(),
        &["--write-config", "--controllers", "false"],
    );
    wait_healthy(&mut server).await;
    server
        .api
        .set_token(wait_config_token(&dir.path().join("home")).await);
    let api = server.api.clone();
    api.ok(
        reqwest::Method::POST,
        "/v1/projects",
        // Thousands of groups: far past the default count quota.
        Some(
            json!({"metadata": {"name": "watch"}, "spec": {"quotas": {"securityGroups": 1000000}}}),
        ),
    )
    .await;
    let path = "/v1/projects/watch/securitygroups";
    // C: listed before anything watched this kind, then away until after
    // the compaction: older than the server's watch cache, so its resume
    // goes to etcd itself, which must answer 410.
    let mut late = Watcher::new(&api, path).await;
    // D: the store's own watch (what controllers and the API's cache sit
    // on), not read through the burst and the compaction.
    let store = EtcdStore::connect(&[etcd.endpoint()])
        .await
        .expect("etcd client");
    let prefix = "/corral/securitygroups/watch/";
    let d_start = store.current_revision().await.unwrap();
    let mut d_watch = store.watch(prefix, d_start).await.expect("store watch");
    let mut live = Vec::new();
    churn(&api, &mut rng, 40, "base", &mut live).await;

    // A: stalls mid-stream (never reads) through the churn and compaction.
    let mut stalled = Watcher::new(&api, path).await;
    stalled.open().await;
    // B: reads a little, then loses its connection; resumes afterwards
    // from the last revision it saw.
    let mut dropped = Watcher::new(&api, path).await;
    dropped.open().await;
    churn(&api, &mut rng, 20, "pre", &mut live).await;
    let (pre_items, pre) = api.list_all(path).await.unwrap();
    let pre_truth: Seen = pre_items.iter().map(|i| (name_of(i), entry(i))).collect();
    dropped.catch_up(pre.parse().unwrap(), &pre_truth).await;
    dropped.stream = None;

    let writes = churn(&api, &mut rng, 2400, "burst", &mut live).await;
    let compacted_at = store.current_revision().await.unwrap();
    store.compact(compacted_at).await.expect("compact");
    let after = churn(&api, &mut rng, 60, "after", &mut live).await;

    // Truth: one list at one revision, after all writes.
    let (items, rev) = api.list_all(path).await.unwrap();
    let truth: Seen = items.iter().map(|i| (name_of(i), entry(i))).collect();
    let target: u64 = rev.parse().unwrap();

    dropped.open().await;
    dropped.catch_up(target, &truth).await;
    stalled.catch_up(target, &truth).await;
    late.open().await;
    late.catch_up(target, &truth).await;

    // D catches up: every event in order, or Expired and a relist.
    let mut d_seen: BTreeMap<String, i64> = BTreeMap::new();
    {
        let page = store
            .list(
                prefix,
                corral_store::ListOptions {
                    revision: Some(d_start),
                    ..Default::default()
                },
            )
            .await;
        // d_start may be compacted by now: then the relist below decides.
        if let Ok(page) = page {
            d_seen = page
                .items
                .iter()
                .map(|kv| (kv.key.clone(), kv.mod_revision))
                .collect();
        }
    }
    let d_truth: BTreeMap<String, i64> = truth
        .iter()
        .map(|(k, (rv, _))| (format!("{prefix}{k}"), rv.parse().unwrap()))
        .collect();
    let (mut d_rev, mut d_expired, mut d_events) = (d_start, 0, 0);
    // Up to the list's revision, or (when other kinds were written last)
    // until it holds exactly what the list holds.
    while d_rev < target as i64 && d_seen != d_truth {
        match tokio::time::timeout(Duration::from_secs(10), d_watch.next()).await {
            Ok(Some(Ok(ev))) => {
                assert!(
                    ev.revision() > d_rev,
                    "store watch out of order: {} after {d_rev}",
                    ev.revision()
                );
                d_rev = ev.revision();
                d_events += 1;
                match ev {
                    corral_store::WatchEvent::Put { kv, .. } => {
                        d_seen.insert(kv.key.clone(), kv.mod_revision);
                    }
                    corral_store::WatchEvent::Delete { key, .. } => {
                        d_seen.remove(&key);
                    }
                }
            }
            Ok(Some(Err(corral_store::StoreError::Expired { .. }))) | Ok(None) => {
                d_expired += 1;
                let page = store.list(prefix, Default::default()).await.unwrap();
                d_seen = page
                    .items
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.mod_revision))
                    .collect();
                d_rev = page.revision;
                d_watch = store.watch(prefix, d_rev).await.expect("store watch");
            }
            Ok(Some(Err(e))) => panic!("store watch failed: {e}"),
            Err(_) => panic!("store watch silent at {d_rev}, target {target}"),
        }
    }
    assert_eq!(d_seen, d_truth, "store watcher diverged (seed {seed:#x})");
    // The point of D: its history really was compacted under it (the
    // burst outgrows the store's 1,024-event channel and etcd's buffers;
    // raise it if those grow).
    assert!(
        d_expired >= 1,
        "the unread store watcher never fell behind the compaction"
    );
    println!(
        "chaos/compaction: stalled store watcher: {} objects == store; {d_events} events read, Expired {d_expired}x",
        d_seen.len()
    );

    for (label, w) in [
        ("disconnected", &dropped),
        ("stalled", &stalled),
        ("late", &late),
    ] {
        let missing: Vec<_> = truth.keys().filter(|k| !w.seen.contains_key(*k)).collect();
        let extra: Vec<_> = w.seen.keys().filter(|k| !truth.contains_key(*k)).collect();
        let stale: Vec<_> = truth
            .iter()
            .filter(|(k, v)| w.seen.get(*k).is_some_and(|s| s != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "{label} watcher diverged (seed {seed:#x}): missing {missing:?}, extra {extra:?}, stale {stale:?}"
        );
        println!(
            "chaos/compaction: {label} watcher: {} objects == store at revision {target}; 410 on reopen {}x, 410 mid-stream {}x, relists {}",
            w.seen.len(),
            w.expired_at_start,
            w.expired_mid_stream,
            w.relists
        );
    }
    assert!(
        late.expired_at_start >= 1,
        "resuming from a compacted revision (older than the watch cache) must answer 410"
    );
    println!(
        "chaos/compaction: {writes} writes, compaction at revision {compacted_at}, {after} writes after; seed {seed:#x}; {:?}",
        t_all.elapsed()
    );
}
