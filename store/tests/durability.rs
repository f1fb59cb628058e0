//! Kill -9 a process in the middle of a write burst to the embedded store:
//! every write it acknowledged must be there on reopen, and the file must be
//! intact and writable.
//!
//! The writer is this same test binary started again with
//! `CORRAL_STORE_WRITER=PATH PREFIX WRITERS` in its environment (the file
//! has its own `main`), so the store crate ships no test binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use corral_store::{EmbeddedStore, ListOptions, Store};

const WRITER_ENV: &str = "CORRAL_STORE_WRITER";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var(WRITER_ENV) {
        Ok(args) => runtime.block_on(writer(&args)),
        Err(_) => {
            runtime.block_on(sigkill_mid_stream_loses_no_acknowledged_write());
            println!("test sigkill_mid_stream_loses_no_acknowledged_write ... ok");
        }
    }
}

/// Writes keys as fast as it can, printing `ack <key> <revision>` for each
/// write only after the store acknowledged it, until killed.
async fn writer(args: &str) {
    let mut args = args.split(' ');
    let (Some(path), Some(prefix), Some(writers)) = (args.next(), args.next(), args.next()) else {
        panic!("{WRITER_ENV} must be \"PATH PREFIX WRITERS\"");
    };
    let writers: usize = writers.parse().expect("WRITERS is a number");
    let store = Arc::new(EmbeddedStore::open(std::path::Path::new(path)).expect("open store"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..writers {
        let store = store.clone();
        let tx = tx.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("{prefix}{w}/{i}");
                let rev = store
                    .create(&key, format!("value-{w}-{i}").into_bytes())
                    .await
                    .expect("write");
                if tx.send(format!("ack {key} {rev}\n")).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        out.write_all(line.as_bytes()).expect("stdout");
        out.flush().expect("stdout");
    }
}

async fn sigkill_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut acked: BTreeMap<String, (String, i64)> = BTreeMap::new();

    for round in 0..3 {
        let prefix = format!("/d/{round}/");
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(WRITER_ENV, format!("{} {prefix} 16", path.display()))
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
