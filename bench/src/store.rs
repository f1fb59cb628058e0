//! `corral bench store`: raw etcd-client puts next to the Store on etcd
//! and on the embedded backend.

use std::sync::Arc;

use anyhow::{Context, Result};
use corral_store::{EmbeddedStore, EtcdStore, Store};
use corral_test_support::EtcdServer;

use crate::figures::*;

pub struct StoreBenchOptions {
    pub etcd: Option<String>,
    pub ops: usize,
    pub value_size: usize,
    pub writers: Vec<usize>,
}

pub async fn store(options: StoreBenchOptions) -> Result<()> {
    let _server;
    let endpoint = match &options.etcd {
        Some(e) => e.clone(),
        None => {
            let server = EtcdServer::start()
                .await
                .context("starting a private etcd for the benchmark")?;
            let e = server.endpoint();
            _server = server;
            e
        }
    };
    let etcd = EtcdStore::connect(std::slice::from_ref(&endpoint))
        .await
        .context("connecting to etcd")?;
    let dir = tempfile::Builder::new()
        .prefix("corral-bench-")
        .tempdir()
        .context("temp dir")?;
    let embedded = EmbeddedStore::open(&dir.path().join("bench.redb"))?;
    let value = Arc::new(vec![b'x'; options.value_size]);

    println!(
        "corral bench store: etcd at {endpoint}, embedded file in {}",
        dir.path().display()
    );
    println!(
        "{} ops per case, {}-byte values, unique keys (creates)\n",
        options.ops, options.value_size
    );
    println!("{}", header());
    let mut rows: Vec<Figures> = Vec::new();
    for (round, &writers) in options.writers.iter().enumerate() {
        // Warm connections and caches outside the measurement.
        let client = etcd.client();
        for i in 0..50 {
            client
                .kv_client()
                .put(format!("/bench/warm/{round}/{i}"), value.to_vec(), None)
                .await?;
        }

        let client = etcd.client();
        let v = value.clone();
        let raw = measure(
            "etcd-client put (raw)",
            writers,
            options.ops,
            move |t, i| {
                let mut kv = client.kv_client();
                let v = v.clone();
                async move {
                    kv.put(format!("/bench/raw/{round}/{t}/{i}"), v.to_vec(), None)
                        .await?;
                    Ok(())
                }
            },
        )
        .await?;
        println!("{}", raw.row());

        let client = etcd.client();
        let v = value.clone();
        let rawtxn = measure(
            "etcd-client txn (raw)",
            writers,
            options.ops,
            move |t, i| {
                let mut kv = client.kv_client();
                let v = v.clone();
                async move {
                    let key = format!("/bench/rawtxn/{round}/{t}/{i}");
                    let txn = etcd_client::Txn::new()
                        .when([etcd_client::Compare::create_revision(
                            key.clone(),
                            etcd_client::CompareOp::Equal,
                            0,
                        )])
                        .and_then([etcd_client::TxnOp::put(key, v.to_vec(), None)]);
                    kv.txn(txn).await?;
                    Ok(())
                }
            },
        )
        .await?;
        println!("{}", rawtxn.row());

        let s: Arc<dyn Store> = Arc::new(etcd.clone());
        let v = value.clone();
        let on_etcd = measure("Store create (etcd)", writers, options.ops, move |t, i| {
            let s = s.clone();
            let v = v.clone();
            async move {
                s.create(&format!("/bench/store/{round}/{t}/{i}"), v.to_vec())
                    .await?;
                Ok(())
            }
        })
        .await?;
        println!("{}", on_etcd.row());

        let s: Arc<dyn Store> = Arc::new(embedded.clone());
        let v = value.clone();
        let on_embedded = measure(
            "Store create (embedded)",
            writers,
            options.ops,
            move |t, i| {
                let s = s.clone();
                let v = v.clone();
                async move {
                    s.create(&format!("/bench/store/{round}/{t}/{i}"), v.to_vec())
                        .await?;
                    Ok(())
                }
            },
        )
        .await?;
        println!("{}", on_embedded.row());
        rows.push(raw);
        rows.push(rawtxn);
        rows.push(on_etcd);
        rows.push(on_embedded);
    }

    println!("\nratios (throughput):");
    println!("  Store/put: the Store against raw etcd-client puts (the stated goal: >= 0.90 at 64 writers)");
    println!("  Store/txn: the Store against the same compare-and-put txn sent raw (the Store's own overhead)");
    for chunk in rows.chunks(4) {
        let [raw, rawtxn, on_etcd, on_embedded] = chunk else {
            continue;
        };
        let ratio = on_etcd.per_sec / raw.per_sec;
        let goal = if raw.writers >= 64 {
            if ratio >= 0.9 {
                " (goal met)"
            } else {
                " (goal NOT met)"
            }
        } else {
            ""
        };
        println!(
            "  {:>3} writers: etcd Store/put = {:.2}{}, etcd Store/txn = {:.2}, embedded Store/put = {:.2}",
            raw.writers,
            ratio,
            goal,
            on_etcd.per_sec / rawtxn.per_sec,
            on_embedded.per_sec / raw.per_sec
        );
    }
    Ok(())
}
