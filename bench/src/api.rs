//! `corral bench api`: the native API (creates, gets, whole lists) at N
//! clients next to raw Store creates, on both backends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use corral_store::{EmbeddedStore, EtcdStore, Store};
use corral_test_support::EtcdServer;

use crate::figures::*;

pub struct ApiBenchOptions {
    pub ops: usize,
    pub clients: usize,
    pub list_size: usize,
    pub list_runs: usize,
    pub backend: Backends,
}

/// The store backends a benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backends {
    Embedded,
    Etcd,
    Both,
}

fn bench_instance(project: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "corral/v1",
        "kind": "Instance",
        "metadata": {"name": name, "project": project, "labels": {"app": "bench", "tier": "web"}},
        "spec": {
            "instanceType": "m1.tiny",
            "image": "tiny",
            "nics": [{"network": "lan", "securityGroups": ["web"]}],
            "keyName": "admin",
            "userData": "#cloud-config\nruncmd: [echo hello]\n",
            "tags": {"Name": name, "owner": "bench"}
        }
    })
}

/// One backend's API figures.
async fn api_on_backend(label: &str, raw: Arc<dyn Store>, options: &ApiBenchOptions) -> Result<()> {
    use corral_api_types::{Instance, Project, ProjectSpec, Resource};
    use corral_store::ResourceStore;

    let store = ResourceStore::new(raw.clone());
    let boot = corral_apiserver::bootstrap(&store, "admin").await?;
    let token = boot.admin.context("fresh store has no admin yet")?.token;
    for p in ["bench", "rawbench", "listbench"] {
        store
            .create(&Project::new("", p, ProjectSpec::default()))
            .await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = corral_apiserver::ApiState::new(store.clone());
    tokio::spawn(corral_apiserver::serve(
        state,
        listener,
        std::future::pending(),
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .build()?;

    // Raw Store creates of the same objects, for the ratio.
    let s = store.clone();
    let raw_fig = measure(
        &format!("{label}: Store create"),
        options.clients,
        options.ops,
        move |t, i| {
            let s = s.clone();
            async move {
                let obj: Instance =
                    serde_json::from_value(bench_instance("rawbench", &format!("vm-{t}-{i}")))?;
                s.create(&obj).await?;
                Ok(())
            }
        },
    )
    .await?;
    println!("{}", raw_fig.row());

    let (h, b, tk) = (http.clone(), base.clone(), token.clone());
    let create = measure(
        &format!("{label}: API create"),
        options.clients,
        options.ops,
        move |t, i| {
            let (h, b, tk) = (h.clone(), b.clone(), tk.clone());
            async move {
                let resp = h
                    .post(format!("{b}/v1/projects/bench/instances"))
                    .bearer_auth(&tk)
                    .json(&bench_instance("bench", &format!("vm-{t}-{i}")))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 201, "create: {}", resp.status());
                // Read to its end, as any client does: a response dropped
                // unread closes its connection, and every create would
                // then pay a new one.
                resp.bytes().await?;
                Ok(())
            }
        },
    )
    .await?;
    println!("{}", create.row());

    let per_task = options.ops.div_ceil(options.clients);
    let (h, b, tk) = (http.clone(), base.clone(), token.clone());
    let get = measure(
        &format!("{label}: API get"),
        options.clients,
        options.ops,
        move |t, i| {
            let (h, b, tk) = (h.clone(), b.clone(), tk.clone());
            async move {
                let resp = h
                    .get(format!(
                        "{b}/v1/projects/bench/instances/vm-{t}-{}",
                        (i * 7) % per_task
                    ))
                    .bearer_auth(&tk)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "get: {}", resp.status());
                resp.bytes().await?;
                Ok(())
            }
        },
    )
    .await?;
    println!("{}", get.row());

    // A project with `list_size` instances, listed whole.
    let s = store.clone();
    let fill = options.list_size;
    measure("(filling list project)", 64, fill, move |t, i| {
        let s = s.clone();
        async move {
            let obj: Instance =
                serde_json::from_value(bench_instance("listbench", &format!("vm-{t}-{i}")))?;
            match s.create(&obj).await {
                Ok(_) | Err(corral_store::StoreError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    let (h, b, tk) = (http.clone(), base.clone(), token.clone());
    let expected = store
        .list::<Instance>(Some("listbench"), Default::default())
        .await?
        .items
        .len();
    // Check the answer once, untimed; then time each list to its last
    // byte at the client (an API latency, not the client's JSON parsing).
    let body: serde_json::Value = http
        .get(format!("{base}/v1/projects/listbench/instances"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let n = body["items"].as_array().map(Vec::len).unwrap_or(0);
    anyhow::ensure!(n == expected, "list returned {n} of {expected}");
    let list = measure(
        &format!("{label}: API list {expected}"),
        1,
        options.list_runs,
        move |_, _| {
            let (h, b, tk) = (h.clone(), b.clone(), tk.clone());
            async move {
                let resp = h
                    .get(format!("{b}/v1/projects/listbench/instances"))
                    .bearer_auth(&tk)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "list: {}", resp.status());
                let bytes = resp.bytes().await?;
                anyhow::ensure!(bytes.len() > expected * 100, "short list answer");
                Ok(())
            }
        },
    )
    .await?;
    println!("{}", list.row());
    let _ = Instance::KIND;

    let ratio = create.per_sec / raw_fig.per_sec;
    println!(
        "  {label}: API create / Store create = {ratio:.2} (goal >= 0.50: {}); list {expected} p99 = {:.1} ms (goal < 200 ms: {})",
        if ratio >= 0.5 { "met" } else { "NOT met" },
        list.p99.as_secs_f64() * 1e3,
        if list.p99 < Duration::from_millis(200) { "met" } else { "NOT met" },
    );
    Ok(())
}

pub async fn api(options: ApiBenchOptions) -> Result<()> {
    println!(
        "corral bench api: {} clients, {} ops per case, list of {} instances x {}",
        options.clients, options.ops, options.list_size, options.list_runs
    );
    println!("{}", header());
    if options.backend != Backends::Etcd {
        let dir = tempfile::Builder::new().prefix("corral-bench-").tempdir()?;
        let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("api.redb"))?);
        api_on_backend("embedded", embedded, &options).await?;
    }
    if options.backend != Backends::Embedded {
        let server = EtcdServer::start()
            .await
            .context("starting a private etcd for the benchmark")?;
        let etcd: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[server.endpoint()]).await?);
        api_on_backend("etcd", etcd, &options).await?;
    }
    Ok(())
}
