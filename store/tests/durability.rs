//! Kill -9 a process in the middle of a write burst to the embedded store:
//! every write it acknowledged must be there on reopen, and the file must be
//! intact and writable.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use corral_store::{EmbeddedStore, ListOptions, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut acked: BTreeMap<String, (String, i64)> = BTreeMap::new();

    for round in 0..3 {
        let prefix = format!("/d/{round}/");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corral-store-writer"))
            .arg(&path)
            .arg(&prefix)
            .arg("16")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        // Kill at a different point each round.
        let kill_after = 200 + round * 150;
        while let Some(Ok(line)) = lines.next() {
            let mut parts = line.split_whitespace();
            assert_eq!(parts.next(), Some("ack"));
            let key = parts.next().unwrap().to_string();
            let rev: i64 = parts.next().unwrap().parse().unwrap();
            let (w, i) = key
                .trim_start_matches(&prefix)
                .split_once('/')
                .expect("key shape");
            acked.insert(key.clone(), (format!("value-{w}-{i}"), rev));
            this_round += 1;
            if this_round == kill_after {
                // SIGKILL: no destructors, no flush, mid-commit if the
                // writer thread is in one.
                child.kill().unwrap();
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "writer must have been killed");
        assert!(this_round >= kill_after, "round {round}: {this_round} acks");

        // Reopen: every acknowledged write is there, at its revision.
        assert!(
            EmbeddedStore::check_integrity(&path).unwrap(),
            "round {round}: redb integrity check"
        );
        let store = EmbeddedStore::open(&path).unwrap();
        let listed = store.list("/d/", ListOptions::default()).await.unwrap();
        let on_disk: BTreeMap<_, _> = listed.items.iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (key, (value, rev)) in &acked {
            let kv = on_disk
                .get(key)
                .unwrap_or_else(|| panic!("acknowledged write {key} lost"));
            assert_eq!(kv.value, value.as_bytes(), "{key}");
            assert_eq!(kv.mod_revision, *rev, "{key}");
        }
        // Unacknowledged writes may or may not have landed; nothing else may
        // appear, and the store keeps working.
        for kv in &listed.items {
            assert!(kv.key.starts_with("/d/"), "{}", kv.key);
        }
        let max_acked = acked.values().map(|(_, r)| *r).max().unwrap();
        assert!(store.current_revision().await.unwrap() >= max_acked);
        let r = store
            .create(&format!("/check/{round}"), b"ok".to_vec())
            .await
            .unwrap();
        assert!(r > max_acked);
    }
}
