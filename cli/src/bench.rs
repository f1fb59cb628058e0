//! `corral bench`: throughput and latency figures, printed as a table with
//! the ratios the performance goals are stated in (docs/PERFORMANCE.md).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_store::etcd_server::EtcdServer;
use corral_store::{EmbeddedStore, EtcdStore, Store};

/// Figures for one case.
pub struct Figures {
    pub name: String,
    pub writers: usize,
    pub ops: usize,
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    fn row(&self) -> String {
        format!(
            "{:<28} {:>7} {:>8} {:>10.0} {:>9.2} {:>9.2}",
            self.name,
            self.writers,
            self.ops,
            self.per_sec,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }
}

fn header() -> String {
    format!(
        "{:<28} {:>7} {:>8} {:>10} {:>9} {:>9}",
        "case", "writers", "ops", "ops/s", "p50 ms", "p99 ms"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `ops` calls of `op(task, i)` spread over `writers` concurrent tasks.
pub async fn measure<F, Fut>(name: &str, writers: usize, ops: usize, op: F) -> Result<Figures>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let per_task = ops.div_ceil(writers);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for t in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                op(t, i).await?;
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(per_task * writers);
    for task in tasks {
        latencies.extend(task.await.context("bench task panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Figures {
        name: name.to_string(),
        writers,
        ops: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

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

pub struct ApiBenchOptions {
    pub ops: usize,
    pub clients: usize,
    pub list_size: usize,
    pub list_runs: usize,
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
    let dir = tempfile::Builder::new().prefix("corral-bench-").tempdir()?;
    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("api.redb"))?);
    api_on_backend("embedded", embedded, &options).await?;
    let server = EtcdServer::start()
        .await
        .context("starting a private etcd for the benchmark")?;
    let etcd: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[server.endpoint()]).await?);
    api_on_backend("etcd", etcd, &options).await?;
    Ok(())
}

pub struct ReconcileBenchOptions {
    pub nodes: usize,
    pub instances: usize,
    pub clients: usize,
    pub timeout: Duration,
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Everything in one process on etcd: API, controllers and `nodes`
/// simulated hosts (libvirt's test driver) each with its own agent;
/// `instances` created through the API; timed until all are Running.
pub async fn reconcile(options: ReconcileBenchOptions) -> Result<()> {
    use corral_api_types::{Instance, InstancePhase};
    use corral_controllers::ControllerOptions;
    use corral_e2e::{Backend, Cluster};
    use corral_store::ObjectEvent;
    use std::collections::HashMap;
    use std::sync::Mutex;

    println!(
        "corral bench reconcile: {} simulated nodes, {} instances, {} API clients, etcd backend",
        options.nodes, options.instances, options.clients
    );
    let mut cluster = Cluster::start(
        Backend::Etcd,
        ControllerOptions {
            concurrency: 32,
            ..Default::default()
        },
    )
    .await;
    cluster.agent_options.heartbeat = Duration::from_secs(5);
    cluster.agent_options.resync = Duration::from_secs(120);
    cluster.agent_options.concurrency = 4;
    let endpoint = cluster.etcd_endpoint.clone().context("etcd endpoint")?;

    // Baseline on the same etcd: raw puts at 64 writers.
    let raw_client = EtcdStore::connect(std::slice::from_ref(&endpoint))
        .await?
        .client();
    let value = vec![b'x'; 1024];
    let raw = measure(
        "etcd-client put (raw)",
        64,
        options.instances,
        move |t, i| {
            let mut kv = raw_client.kv_client();
            let v = value.clone();
            async move {
                kv.put(format!("/bench/raw/{t}/{i}"), v, None).await?;
                Ok(())
            }
        },
    )
    .await?;

    for n in 0..options.nodes {
        cluster.add_host(&format!("sim-{n:04}")).await;
    }
    let store = cluster.store.clone();
    let started = Instant::now();
    loop {
        let nodes = store
            .list::<corral_api_types::Node>(None, Default::default())
            .await?
            .items;
        let ready = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.status == corral_api_types::ConditionStatus::True
                    })
                })
            })
            .count();
        if ready == options.nodes {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "only {ready} nodes registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} nodes registered in {:.1} s",
        options.nodes,
        started.elapsed().as_secs_f64()
    );

    for (path, body) in [
        (
            "/v1/projects",
            serde_json::json!({"metadata": {"name": "bench"}}),
        ),
        (
            "/v1/projects/bench/networks",
            serde_json::json!({"metadata": {"name": "lan"}, "spec": {"cidr": "10.64.0.0/16", "mode": "isolated"}}),
        ),
        (
            "/v1/projects/bench/images",
            serde_json::json!({"metadata": {"name": "tiny"}, "spec": {"source": {"path": "/dev/null"}, "format": "raw"}}),
        ),
    ] {
        let (code, b) = cluster.call(reqwest::Method::POST, path, Some(body)).await;
        anyhow::ensure!(code == 201, "{path}: {code} {b}");
    }

    // Watch for Running, from now.
    let rev = store.raw().current_revision().await?;
    let mut watch = store.watch::<Instance>(Some("bench"), rev).await?;
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (all_tx, mut all_rx) = tokio::sync::watch::channel(0usize);
    {
        let running = running.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = watch.next().await {
                if let ObjectEvent::Modified(i, _) | ObjectEvent::Added(i) = event {
                    if i.status.as_ref().map(|s| s.phase) == Some(InstancePhase::Running) {
                        let mut r = running.lock().expect("running");
                        r.entry(i.metadata.name.clone())
                            .or_insert_with(Instant::now);
                        all_tx.send_replace(r.len());
                    }
                }
            }
        });
    }

    let t0 = Instant::now();
    let (http, base, token) = (
        cluster.http.clone(),
        cluster.base.clone(),
        cluster.admin.clone(),
    );
    let c2 = created.clone();
    let creates = measure("API create", options.clients, options.instances, move |t, i| {
        let (http, base, token, created) = (http.clone(), base.clone(), token.clone(), c2.clone());
        async move {
            let name = format!("vm-{t}-{i}");
            let body = serde_json::json!({"metadata": {"name": name}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}]}});
            created.lock().expect("created").insert(name.clone(), Instant::now());
            let resp = http
                .post(format!("{base}/v1/projects/bench/instances"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(resp.status().as_u16() == 201, "create: {}", resp.status());
            Ok(())
        }
    })
    .await?;
    let total = creates.ops;
    let deadline = tokio::time::Instant::now() + options.timeout;
    let done = tokio::time::timeout_at(deadline, async {
        let _ = all_rx.wait_for(|n| *n >= total).await;
    })
    .await;
    let elapsed = t0.elapsed();
    let reached = *all_rx.borrow();
    let (rss, hwm) = rss_kib();

    let mut lat: Vec<Duration> = {
        let c = created.lock().expect("created");
        let r = running.lock().expect("running");
        r.iter()
            .filter_map(|(k, at)| c.get(k).map(|start| at.saturating_duration_since(*start)))
            .collect()
    };
    lat.sort_unstable();
    println!();
    println!("{}", header());
    println!("{}", raw.row());
    println!("{}", creates.row());
    println!();
    println!(
        "instances Running:        {reached} / {total}{}",
        if done.is_err() { " (TIMED OUT)" } else { "" }
    );
    println!(
        "time until all Running:   {:.2} s (from the first create)",
        elapsed.as_secs_f64()
    );
    let rate = reached as f64 / elapsed.as_secs_f64();
    println!("instances/s to Running:   {rate:.0}");
    println!(
        "create -> Running:        p50 {:.0} ms, p99 {:.0} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "process RSS:              {:.0} MiB now, {:.0} MiB peak (API + controllers + {} agents + libvirt test driver, one process)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        options.nodes
    );
    println!(
        "raw etcd puts/s:          {:.0}; instances-to-Running/s / raw puts/s = {:.3}",
        raw.per_sec,
        rate / raw.per_sec
    );
    let goal = options.nodes == 100 && options.instances == 5000;
    if goal {
        println!(
            "goal (5,000 Running in < 15 s on this machine): {}",
            if done.is_ok() && elapsed < Duration::from_secs(15) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    Ok(())
}
