//! Writes keys into an embedded store as fast as it can, printing
//! `ack <key> <revision>` for each write only after the store acknowledged
//! it. The durability test SIGKILLs it mid-stream and checks that every
//! acknowledged write survived.
//!
//! Usage: corral-store-writer PATH PREFIX WRITERS

use std::io::Write;
use std::sync::Arc;

use corral_store::{EmbeddedStore, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(prefix), Some(writers)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: corral-store-writer PATH PREFIX WRITERS");
        std::process::exit(2);
    };
    let writers: usize = writers.parse().expect("WRITERS is a number");
    let store = Arc::new(EmbeddedStore::open(std::path::Path::new(&path)).expect("open store"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..writers {
        let store = store.clone();
        let tx = tx.clone();
        let prefix = prefix.clone();
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
