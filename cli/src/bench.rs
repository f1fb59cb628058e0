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

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

/// etcd's handled gRPC requests by method, from its `/metrics` (empty
/// when they cannot be read).
async fn etcd_requests(endpoint: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(resp) = reqwest::get(format!("{endpoint}/metrics")).await else {
        return out;
    };
    let Ok(text) = resp.text().await else {
        return out;
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches('"'));
        if let (Some(m), Ok(v)) = (method, value.trim().parse::<f64>()) {
            *out.entry(m.to_string()).or_default() += v;
        }
    }
    out
}

pub struct ReconcileBenchOptions {
    pub nodes: usize,
    pub instances: usize,
    pub clients: usize,
    pub timeout: Duration,
    pub agents_in_process: bool,
}

/// The agents' settings on simulated hosts, in either process.
fn sim_agent_options() -> corral_node_agent::AgentOptions {
    let mut o = corral_node_agent::AgentOptions::new("template");
    o.heartbeat = Duration::from_secs(5);
    o.resync = Duration::from_secs(120);
    o.concurrency = 4;
    o.stop_timeout = Duration::from_secs(5);
    o
}

/// `corral bench sim-hosts`: the simulated hosts of `bench reconcile` in a
/// process of their own. Runs until standard input closes (the parent
/// exited or is done).
pub async fn sim_hosts(server: &str, tokens: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(tokens).with_context(|| format!("reading {}", tokens.display()))?;
    let scratch = tempfile::tempdir()?;
    let options = sim_agent_options();
    let mut hosts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(node), Some(token)) = (words.next(), words.next()) else {
            anyhow::bail!("{}: line {}: want NODE TOKEN", tokens.display(), n + 1);
        };
        hosts.push(corral_e2e::start_sim_host(
            server,
            scratch.path(),
            node,
            token.to_string(),
            &options,
        ));
    }
    tracing::info!(hosts = hosts.len(), "simulated hosts started");
    // Standard input without tokio's io-std: a blocking read until EOF.
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
    })
    .await?;
    drop(hosts);
    Ok(())
}

fn rss_kib() -> (u64, u64) {
    rss_kib_of("self")
}

/// VmRSS and VmHWM of a process (`self` or a pid), in KiB.
fn rss_kib_of(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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

/// API and controllers on etcd, and `nodes` simulated hosts (libvirt's
/// test driver) each with its own agent, in a child process unless
/// `agents_in_process`; `instances` created through the API; timed until
/// all are Running.
pub async fn reconcile(options: ReconcileBenchOptions) -> Result<()> {
    use corral_api_types::{Instance, InstancePhase};
    use corral_controllers::ControllerOptions;
    use corral_e2e::{Backend, Cluster};
    use corral_store::ObjectEvent;
    use std::collections::HashMap;
    use std::sync::Mutex;

    println!(
        "corral bench reconcile: {} simulated nodes, {} instances, {} API clients, etcd backend, agents {}",
        options.nodes,
        options.instances,
        options.clients,
        if options.agents_in_process {
            "in the server's process"
        } else {
            "in a child process"
        }
    );
    let mut cluster = Cluster::start(
        Backend::Etcd,
        ControllerOptions {
            concurrency: 32,
            ..Default::default()
        },
    )
    .await;
    cluster.agent_options = sim_agent_options();
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

    // The child's standard input is its lifeline: it stops when it closes.
    let mut agents: Option<tokio::process::Child> = None;
    let scratch = tempfile::tempdir()?;
    if options.agents_in_process {
        for n in 0..options.nodes {
            cluster.add_host(&format!("sim-{n:04}")).await;
        }
    } else {
        let mut lines = String::new();
        for n in 0..options.nodes {
            let node = format!("sim-{n:04}");
            let token = cluster.node_token(&node).await;
            lines.push_str(&format!("{node} {token}\n"));
        }
        let tokens = scratch.path().join("tokens");
        std::fs::write(&tokens, lines)?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "sim-hosts", "--server", &cluster.base, "--tokens"])
            .arg(&tokens)
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulated hosts' process")?;
        agents = Some(child);
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
        if let Some(Ok(Some(status))) = agents.as_mut().map(|c| c.try_wait()) {
            anyhow::bail!("the simulated hosts' process exited: {status}");
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

    // One /16 network per 10,000 instances, as a large tenant would
    // split them into subnets (AWS caps a subnet at /16): a network's
    // address table is one object, and etcd caps one request at 1.5 MiB.
    let networks = options.instances.div_ceil(10_000).clamp(1, 64);
    let network_name = |k: usize| {
        if k == 0 {
            "lan".to_string()
        } else {
            format!("lan-{k}")
        }
    };
    let mut setup = vec![(
        "/v1/projects",
        serde_json::json!({"metadata": {"name": "bench"}}),
    )];
    for k in 0..networks {
        setup.push((
            "/v1/projects/bench/networks",
            serde_json::json!({"metadata": {"name": network_name(k)}, "spec": {"cidr": format!("10.{}.0.0/16", 64 + k), "mode": "isolated"}}),
        ));
    }
    setup.push((
        "/v1/projects/bench/images",
        serde_json::json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
    ));
    for (path, body) in setup {
        let (code, b) = cluster.call(reqwest::Method::POST, path, Some(body)).await;
        anyhow::ensure!(code == 201, "{path}: {code} {b}");
    }

    // Watch for Running, from now.
    let etcd_before = etcd_requests(&endpoint).await;
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
            let network = network_name((t + i) % networks);
            let body = serde_json::json!({"metadata": {"name": name}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": network}]}});
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
    let agents_rss = agents
        .as_ref()
        .and_then(|c| c.id())
        .map(|pid| rss_kib_of(&pid.to_string()));

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
    match agents_rss {
        Some((arss, ahwm)) => {
            println!(
                "server RSS:               {:.0} MiB now, {:.0} MiB peak (API + controllers + this benchmark's clients)",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
            );
            println!(
                "agents RSS:               {:.0} MiB now, {:.0} MiB peak ({} agents + libvirt test driver, child process)",
                arss as f64 / 1024.0,
                ahwm as f64 / 1024.0,
                options.nodes
            );
        }
        None => println!(
            "process RSS:              {:.0} MiB now, {:.0} MiB peak (API + controllers + {} agents + libvirt test driver, one process)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            options.nodes
        ),
    }
    println!(
        "raw etcd puts/s:          {:.0}; instances-to-Running/s / raw puts/s = {:.3}",
        raw.per_sec,
        rate / raw.per_sec
    );
    // What the run asked of etcd, per instance: where its time goes.
    let writes = store.raw().current_revision().await? - rev;
    let after = etcd_requests(&endpoint).await;
    let per = |m: &str| {
        (after.get(m).copied().unwrap_or(0.0) - etcd_before.get(m).copied().unwrap_or(0.0))
            / reached.max(1) as f64
    };
    println!(
        "etcd per instance:        {:.1} revisions; requests: {:.1} Txn, {:.1} Range, {:.1} Put, {:.1} DeleteRange",
        writes as f64 / reached.max(1) as f64,
        per("Txn"),
        per("Range"),
        per("Put"),
        per("DeleteRange"),
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

pub use boot::{boot, BootBenchOptions};

mod ec2;
pub use ec2::{ec2, Ec2BenchOptions};

mod abuse;
mod soak;
pub use soak::{soak, SoakOptions};

/// `corral bench boot`: apply → guest-ready through Corral on real QEMU
/// (libvirt, `qemu:///system`) next to a bare QEMU boot of the same guest
/// (B0), measured in the same run.
mod boot {
    use std::collections::{HashMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, Context, Result};
    use futures_util::StreamExt;
    use serde_json::{json, Value};
    use tokio::process::{Child, Command};
    use tokio::task::JoinHandle;

    use super::percentile;

    pub struct BootBenchOptions {
        /// Rounds of each kind.
        pub runs: usize,
        /// Instances (and bare QEMUs) booted at once in the concurrent rounds.
        pub concurrent: usize,
        /// Where `tests/images/build-guest` puts (or has put) the guest.
        pub guest_dir: PathBuf,
        /// Give up on a round after this long.
        pub timeout: Duration,
        /// Also boot `concurrent` bare QEMUs at once (the hardware's floor
        /// for the concurrent case).
        pub bare_concurrent: bool,
        /// Keep the temporary directory (logs, store) afterwards.
        pub keep: bool,
    }

    const PROJECT: &str = "bench";
    const LIBVIRT: &str = "qemu:///system";
    const READY_LINE: &[u8] = b"corral-guest: ready";
    /// Other processes using this many CPUs on average make a run "busy".
    const BUSY_CPUS: f64 = 0.1;
    /// How often bare QEMU's serial log and the clock are looked at.
    const POLL: Duration = Duration::from_millis(20);

    /// The instance type the Corral instances use, mirrored by bare QEMU.
    #[derive(Clone, Copy)]
    struct Size {
        vcpus: u64,
        memory_mib: u64,
        root_disk_gib: u64,
    }

    // ----------------------------------------------------------------
    // Preflight

    async fn check_tool(tool: &str, arg: &str, package: &str) -> Result<()> {
        let ok = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        anyhow::ensure!(ok, "`{tool}` is not usable (apt install {package})");
        Ok(())
    }

    async fn check_libvirt(virt_type: &'static str) -> Result<()> {
        tokio::task::spawn_blocking(move || -> Result<()> {
            use corral_node_agent::Hypervisor;
            let hv = corral_node_agent::Libvirt::open(LIBVIRT, virt_type)?;
            hv.list()?;
            Ok(())
        })
        .await?
        .map_err(|e| {
            anyhow!(
                "libvirtd is not answering on {LIBVIRT} (start it with scripts/start-libvirt, as root): {e:#}"
            )
        })
    }

    /// Builds the guest (or checks the cached build) and answers its disk.
    async fn guest_image(dir: &Path) -> Result<PathBuf> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build-guest");
        if script.is_file() {
            let out = Command::new(&script)
                .arg(dir)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "building the test guest with {} {} failed:\n{}{}",
                    script.display(),
                    dir.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let disk = dir.join("tiny.qcow2");
        anyhow::ensure!(
            disk.is_file(),
            "no test guest at {}: build it with `tests/images/build-guest {}` (as root)",
            disk.display(),
            dir.display()
        );
        Ok(disk)
    }

    fn chmod(p: &Path, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", p.display()))
    }

    async fn run_tool(cmd: &mut Command) -> Result<()> {
        let shown = format!("{cmd:?}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {shown}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn tail(path: &Path, lines: usize) -> String {
        let text = std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn find(haystack: &[u8], needle: &[u8], from: usize) -> bool {
        haystack.len() >= needle.len()
            && haystack[from.min(haystack.len())..]
                .windows(needle.len())
                .any(|w| w == needle)
    }

    // ----------------------------------------------------------------
    // Machine load: 1-min load average and QEMU processes that are not
    // this benchmark's (their command lines do not name its directory).

    #[derive(Clone, Copy)]
    struct LoadSample {
        at: Instant,
        load1: f64,
        foreign_qemu: usize,
        /// CPU seconds used by processes that are not this benchmark's
        /// since sampling began.
        foreign_cpu: f64,
    }

    /// One process in /proc.
    struct Proc {
        zombie: bool,
        ppid: u32,
        comm: String,
        /// utime + stime, clock ticks.
        ticks: u64,
    }

    fn read_proc(pid: u32) -> Option<Proc> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        // After the `)`: state (field 3), ppid (4), ... utime (14), stime (15).
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(Proc {
            zombie: *f.first()? == "Z",
            ppid: f.get(1)?.parse().ok()?,
            comm,
            ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        })
    }

    /// The 1-min load average, the number of QEMU processes that are not
    /// this benchmark's, and the CPU ticks of every process that is not
    /// (ours: this process and its descendants, QEMUs whose command line
    /// names our directory, libvirtd and virtlogd; kernel threads are
    /// left out).
    fn sample_load(ours: &str) -> (f64, usize, HashMap<u32, u64>) {
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        let mut procs: HashMap<u32, Proc> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(p) = read_proc(pid) {
                    procs.insert(pid, p);
                }
            }
        }
        let me = std::process::id();
        let mine = |mut pid: u32| {
            for _ in 0..64 {
                if pid == me {
                    return true;
                }
                match procs.get(&pid) {
                    Some(p) if p.ppid != 0 => pid = p.ppid,
                    _ => return false,
                }
            }
            false
        };
        let mut foreign_qemu = 0;
        let mut foreign = HashMap::new();
        for (pid, p) in &procs {
            if *pid == 2 || p.ppid == 2 || mine(*pid) {
                continue;
            }
            if matches!(p.comm.as_str(), "libvirtd" | "virtlogd") {
                continue;
            }
            // An exited QEMU not yet reaped (ours too) has no command line.
            if p.comm.starts_with("qemu-system") && !p.zombie {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if find(&cmdline, ours.as_bytes(), 0) {
                    continue;
                }
                foreign_qemu += 1;
            }
            foreign.insert(*pid, p.ticks);
        }
        (load1, foreign_qemu, foreign)
    }

    fn clock_ticks_per_sec() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// What the machine was doing besides this benchmark, over a window.
    struct LoadWindow {
        mean: f64,
        max: f64,
        /// Other QEMU processes at once, at most.
        foreign_qemu: usize,
        /// CPUs used by processes not this benchmark's, on average.
        foreign_cpus: f64,
    }

    #[derive(Clone, Default)]
    struct LoadLog(Arc<Mutex<Vec<LoadSample>>>);

    impl LoadLog {
        fn spawn(&self, ours: String) -> JoinHandle<()> {
            let log = self.0.clone();
            tokio::spawn(async move {
                let hz = tokio::task::spawn_blocking(clock_ticks_per_sec)
                    .await
                    .unwrap_or(100.0);
                let mut prev: HashMap<u32, u64> = HashMap::new();
                let mut used = 0.0;
                let mut first = true;
                loop {
                    let ours = ours.clone();
                    if let Ok((load1, foreign_qemu, now)) =
                        tokio::task::spawn_blocking(move || sample_load(&ours)).await
                    {
                        // A process first seen counts from its next sample.
                        if !first {
                            for (pid, ticks) in &now {
                                if let Some(before) = prev.get(pid) {
                                    used += ticks.saturating_sub(*before) as f64 / hz;
                                }
                            }
                        }
                        first = false;
                        log.lock().expect("load log").push(LoadSample {
                            at: Instant::now(),
                            load1,
                            foreign_qemu,
                            foreign_cpu: used,
                        });
                        prev = now;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        }

        fn window(&self, from: Instant, to: Instant) -> LoadWindow {
            let log = self.0.lock().expect("load log");
            let w: Vec<&LoadSample> = log.iter().filter(|s| s.at >= from && s.at <= to).collect();
            let (Some(a), Some(b)) = (w.first(), w.last()) else {
                return LoadWindow {
                    mean: 0.0,
                    max: 0.0,
                    foreign_qemu: 0,
                    foreign_cpus: 0.0,
                };
            };
            let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
            LoadWindow {
                mean: w.iter().map(|s| s.load1).sum::<f64>() / w.len() as f64,
                max: w.iter().map(|s| s.load1).fold(0.0, f64::max),
                foreign_qemu: w.iter().map(|s| s.foreign_qemu).max().unwrap_or(0),
                foreign_cpus: if secs > 0.0 {
                    (b.foreign_cpu - a.foreign_cpu) / secs
                } else {
                    0.0
                },
            }
        }
    }

    // ----------------------------------------------------------------
    // Bare QEMU: the same guest, disks and devices as the domain the node
    // agent defines (libvirt's command line, minus libvirt).

    /// Where bare QEMU attaches the NoCloud seed: a virtio disk (as
    /// tests/images/smoke does; the guest looks there first) or an IDE
    /// CD-ROM on the secondary channel (`hdc`, as Nova attaches config
    /// drives).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum SeedOn {
        Virtio,
        Cdrom,
    }

    struct Bare {
        kvm: bool,
        base: PathBuf,
        dir: PathBuf,
        size: Size,
    }

    struct BareRun {
        dir: PathBuf,
        child: Option<Child>,
        started: Instant,
        ready: Option<Duration>,
        scanned: usize,
    }

    impl Bare {
        async fn prepare(&self, name: &str) -> Result<PathBuf> {
            let dir = self.dir.join(name);
            let _ = tokio::fs::remove_dir_all(&dir).await;
            tokio::fs::create_dir_all(dir.join("seed.d")).await?;
            run_tool(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                    .arg(&self.base)
                    .arg(dir.join("disk.qcow2"))
                    .arg(format!("{}G", self.size.root_disk_gib.max(1))),
            )
            .await?;
            tokio::fs::write(
                dir.join("seed.d/meta-data"),
                format!("instance-id: i-bare-{name}\nlocal-hostname: {name}\n"),
            )
            .await?;
            tokio::fs::write(dir.join("seed.d/user-data"), b"").await?;
            run_tool(
                Command::new("genisoimage")
                    .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
                    .arg(dir.join("seed.iso"))
                    .arg(dir.join("seed.d/user-data"))
                    .arg(dir.join("seed.d/meta-data")),
            )
            .await?;
            Ok(dir)
        }

        fn command(&self, dir: &Path, seed: SeedOn) -> Command {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "pc,usb=off,acpi=on"]);
            if self.kvm {
                c.args(["-accel", "kvm", "-cpu", "host"]);
            } else {
                c.args(["-accel", "tcg", "-cpu", "qemu64"]);
            }
            c.arg("-m")
                .arg(self.size.memory_mib.to_string())
                .arg("-smp")
                .arg(self.size.vcpus.to_string())
                .args([
                    "-display",
                    "none",
                    "-no-user-config",
                    "-nodefaults",
                    "-rtc",
                    "base=utc",
                    "-no-reboot",
                    "-boot",
                    "strict=on",
                ])
                .arg("-drive")
                .arg(format!(
                    "file={},if=none,id=d0,format=qcow2,cache=none,discard=unmap",
                    dir.join("disk.qcow2").display()
                ))
                .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1"])
                .arg("-drive");
            match seed {
                SeedOn::Virtio => c
                    .arg(format!(
                        "file={},if=none,id=d1,format=raw,readonly=on,cache=none",
                        dir.join("seed.iso").display()
                    ))
                    .args(["-device", "virtio-blk-pci,drive=d1,serial=cidata"]),
                SeedOn::Cdrom => c
                    .arg(format!(
                        "file={},if=none,id=d1,format=raw,readonly=on",
                        dir.join("seed.iso").display()
                    ))
                    .args(["-device", "ide-cd,bus=ide.1,unit=0,drive=d1"]),
            };
            c.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .stdin(Stdio::null())
            .kill_on_drop(true);
            c
        }

        /// Boots `n` guests at once; answers each one's launch → ready.
        async fn round(
            &self,
            label: &str,
            n: usize,
            seed: SeedOn,
            timeout: Duration,
        ) -> Result<Vec<Duration>> {
            let mut runs = Vec::with_capacity(n);
            for i in 0..n {
                runs.push(BareRun {
                    dir: self.prepare(&format!("{label}-{i}")).await?,
                    child: None,
                    started: Instant::now(),
                    ready: None,
                    scanned: 0,
                });
            }
            let result = self.boot_all(&mut runs, seed, timeout).await;
            for r in &mut runs {
                if let Some(mut c) = r.child.take() {
                    let _ = c.kill().await;
                }
                let _ = tokio::fs::remove_dir_all(&r.dir).await;
            }
            result?;
            Ok(runs.iter().filter_map(|r| r.ready).collect())
        }

        async fn boot_all(
            &self,
            runs: &mut [BareRun],
            seed: SeedOn,
            timeout: Duration,
        ) -> Result<()> {
            for r in runs.iter_mut() {
                let out = std::fs::File::create(r.dir.join("qemu.out"))?;
                let mut cmd = self.command(&r.dir, seed);
                cmd.stdout(out.try_clone()?).stderr(out);
                r.started = Instant::now();
                r.child = Some(cmd.spawn().context("starting qemu-system-x86_64")?);
            }
            let deadline = Instant::now() + timeout;
            loop {
                let mut waiting = 0;
                for r in runs.iter_mut().filter(|r| r.ready.is_none()) {
                    let log = tokio::fs::read(r.dir.join("console.log"))
                        .await
                        .unwrap_or_default();
                    if find(&log, READY_LINE, r.scanned.saturating_sub(READY_LINE.len())) {
                        r.ready = Some(r.started.elapsed());
                        continue;
                    }
                    r.scanned = log.len();
                    waiting += 1;
                    if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
                    {
                        bail!(
                            "bare QEMU exited ({status}) before `corral-guest: ready`:\n{}\n{}",
                            tail(&r.dir.join("qemu.out"), 20),
                            tail(&r.dir.join("console.log"), 20)
                        );
                    }
                }
                if waiting == 0 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "{waiting} bare QEMU guest(s) not ready within {} s",
                        timeout.as_secs()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    // ----------------------------------------------------------------
    // Corral: `corral up --no-agent` and a `corral agent` on qemu:///system,
    // both children of this process (their own process group, so a Ctrl-C
    // reaches only the benchmark, which then cleans up).

    #[derive(Clone)]
    struct Api {
        url: String,
        token: String,
        http: reqwest::Client,
    }

    impl Api {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<&Value>,
        ) -> Result<(u16, Value)> {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.url))
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(60));
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let code = resp.status().as_u16();
            let bytes = resp.bytes().await?;
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok((code, v))
        }

        async fn ok(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<&Value>,
        ) -> Result<Value> {
            let (code, v) = self.call(method.clone(), path, body).await?;
            anyhow::ensure!((200..300).contains(&code), "{method} {path}: {code} {v}");
            Ok(v)
        }

        async fn instance_names(&self) -> Result<Vec<String>> {
            let list = self
                .ok(
                    reqwest::Method::GET,
                    &format!("/v1/projects/{PROJECT}/instances"),
                    None,
                )
                .await?;
            Ok(list["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default())
        }
    }

    fn free_port() -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    fn has_true_condition(obj: &Value, type_: &str) -> bool {
        obj["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
    }

    fn resource_version(obj: &Value) -> Option<String> {
        match &obj["metadata"]["resourceVersion"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// When the watch first showed each milestone of an instance.
    #[derive(Clone, Copy, Default)]
    struct Seen {
        scheduled: Option<Instant>,
        running: Option<Instant>,
        ready: Option<Instant>,
        gone: Option<Instant>,
    }

    #[derive(Clone)]
    struct Watcher {
        seen: Arc<Mutex<HashMap<String, Seen>>>,
        uids: Arc<Mutex<HashSet<String>>>,
        changed: tokio::sync::watch::Sender<u64>,
    }

    impl Watcher {
        fn observe(&self, obj: &Value, at: Instant) {
            let Some(name) = obj["metadata"]["name"].as_str() else {
                return;
            };
            if let Some(uid) = obj["metadata"]["uid"].as_str() {
                self.uids.lock().expect("uids").insert(uid.to_string());
            }
            let mut seen = self.seen.lock().expect("seen");
            let s = seen.entry(name.to_string()).or_default();
            if obj["status"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            {
                s.scheduled.get_or_insert(at);
            }
            if obj["status"]["phase"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("running"))
            {
                s.running.get_or_insert(at);
            }
            if has_true_condition(obj, "Ready") {
                s.ready.get_or_insert(at);
            }
        }

        fn gone(&self, name: &str, at: Instant) {
            let mut seen = self.seen.lock().expect("seen");
            seen.entry(name.to_string())
                .or_default()
                .gone
                .get_or_insert(at);
        }

        fn bump(&self) {
            self.changed.send_modify(|n| *n += 1);
        }

        /// Lists the project: every item observed, names no longer listed
        /// are gone; answers the list's revision.
        async fn relist(&self, api: &Api) -> Result<String> {
            let list = api
                .ok(
                    reqwest::Method::GET,
                    &format!("/v1/projects/{PROJECT}/instances"),
                    None,
                )
                .await?;
            let now = Instant::now();
            let mut listed = HashSet::new();
            for item in list["items"].as_array().into_iter().flatten() {
                self.observe(item, now);
                if let Some(n) = item["metadata"]["name"].as_str() {
                    listed.insert(n.to_string());
                }
            }
            let known: Vec<String> = self.seen.lock().expect("seen").keys().cloned().collect();
            for n in known.iter().filter(|n| !listed.contains(*n)) {
                self.gone(n, now);
            }
            self.bump();
            resource_version(&list).context("the instance list has no resourceVersion")
        }

        /// Follows the project's instances until aborted, resuming after
        /// disconnects and relisting when the revision expired.
        async fn run(self, api: Api) {
            let mut rv: Option<String> = None;
            loop {
                let from = match rv.clone() {
                    Some(rv) => rv,
                    None => match self.relist(&api).await {
                        Ok(rv) => rv,
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "bench watch: relist failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                rv = Some(from.clone());
                let resp = api
                    .http
                    .get(format!(
                        "{}/v1/projects/{PROJECT}/instances?watch=true&resourceVersion={from}",
                        api.url
                    ))
                    .bearer_auth(&api.token)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 410 => rv = None,
                    Ok(r) if r.status().is_success() => {
                        let mut stream = r.bytes_stream();
                        let mut buf: Vec<u8> = Vec::new();
                        while let Some(Ok(chunk)) = stream.next().await {
                            let now = Instant::now();
                            buf.extend_from_slice(&chunk);
                            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                                let line: Vec<u8> = buf.drain(..=pos).collect();
                                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                                    continue;
                                };
                                let obj = &ev["object"];
                                match ev["type"].as_str().unwrap_or("") {
                                    "ADDED" | "MODIFIED" => self.observe(obj, now),
                                    "DELETED" => {
                                        if let Some(n) = obj["metadata"]["name"].as_str() {
                                            self.gone(n, now);
                                        }
                                    }
                                    "ERROR" => {
                                        rv = None;
                                        continue;
                                    }
                                    _ => {}
                                }
                                if rv.is_some() {
                                    if let Some(v) = resource_version(obj) {
                                        rv = Some(v);
                                    }
                                }
                                self.bump();
                            }
                            if rv.is_none() {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Waits until `done` holds for every name, or the deadline.
        async fn wait_all(
            &self,
            names: &[String],
            deadline: tokio::time::Instant,
            done: impl Fn(&Seen) -> bool,
        ) -> Result<(), Vec<String>> {
            let mut rx = self.changed.subscribe();
            loop {
                let missing: Vec<String> = {
                    let seen = self.seen.lock().expect("seen");
                    names
                        .iter()
                        .filter(|n| !seen.get(*n).is_some_and(&done))
                        .cloned()
                        .collect()
                };
                if missing.is_empty() {
                    return Ok(());
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => {}
                    _ => return Err(missing),
                }
            }
        }
    }

    /// Milestones of one instance, from its POST.
    struct Sample {
        scheduled: Duration,
        /// The domain's QEMU process exec'd (from /proc; ±10 ms).
        qemu: Option<Duration>,
        running: Duration,
        ready: Duration,
    }

    /// Converts a process's start time in /proc (clock ticks since boot)
    /// to an `Instant`: aligned once on a tick of /proc/uptime.
    #[derive(Clone, Copy)]
    struct BootClock {
        at: Instant,
        uptime: f64,
        hz: f64,
    }

    fn read_uptime() -> Option<f64> {
        std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    impl BootClock {
        async fn calibrate() -> Option<BootClock> {
            let hz = Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .await
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .unwrap_or(100.0);
            tokio::task::spawn_blocking(move || {
                // /proc/uptime moves in 10 ms steps: catch a step.
                let first = read_uptime()?;
                let give_up = Instant::now() + Duration::from_millis(100);
                loop {
                    let now = read_uptime()?;
                    if now != first {
                        return Some(BootClock {
                            at: Instant::now(),
                            uptime: now,
                            hz,
                        });
                    }
                    if Instant::now() > give_up {
                        return None;
                    }
                }
            })
            .await
            .ok()
            .flatten()
        }

        /// When the QEMU process running domain `corral-<uid>` started.
        fn qemu_started(&self, uid: &str) -> Option<Instant> {
            let needle = format!("guest=corral-{uid}");
            for e in std::fs::read_dir("/proc").ok()?.flatten() {
                let p = e.path();
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                if !comm.starts_with("qemu-system") {
                    continue;
                }
                let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
                if !find(&cmdline, needle.as_bytes(), 0) {
                    continue;
                }
                let stat = std::fs::read_to_string(p.join("stat")).ok()?;
                // Field 22 (starttime); fields after the command's `)`
                // start at field 3.
                let ticks: f64 = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(19)?
                    .parse()
                    .ok()?;
                // Started somewhere in that tick: take its middle.
                let secs = (ticks + 0.5) / self.hz - self.uptime;
                return if secs >= 0.0 {
                    self.at.checked_add(Duration::from_secs_f64(secs))
                } else {
                    self.at.checked_sub(Duration::from_secs_f64(-secs))
                };
            }
            None
        }
    }

    /// What must be cleaned up, whatever happens.
    struct Env {
        dir: PathBuf,
        node: String,
        virt_type: &'static str,
        up: Option<Child>,
        agent: Option<Child>,
        api: Option<Api>,
        watcher: Option<Watcher>,
        tasks: Vec<JoinHandle<()>>,
    }

    fn child_env(cmd: &mut Command, home: &Path) {
        cmd.env("HOME", home)
            .env("CORRAL_CONFIG", home.join(".config/corral/config.yaml"))
            .env_remove("CORRAL_SERVER")
            .env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_PROJECT")
            .env_remove("CORRAL_DATA_DIR")
            .env_remove("CORRAL_AGENT_DIR")
            .env_remove("CORRAL_LIBVIRT")
            .env_remove("CORRAL_BLOB_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
    }

    fn log_file(path: &Path) -> Result<(std::fs::File, std::fs::File)> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((f.try_clone()?, f))
    }

    impl Env {
        /// Starts `corral up --no-agent` and answers the admin's API.
        async fn start_server(&mut self) -> Result<Api> {
            let exe = std::env::current_exe().context("finding the corral binary")?;
            let home = self.dir.join("home");
            std::fs::create_dir_all(&home)?;
            let config = home.join(".config/corral/config.yaml");
            for attempt in 0..3 {
                let addr = format!("127.0.0.1:{}", free_port()?);
                let ec2 = format!("127.0.0.1:{}", free_port()?);
                let (out, err) = log_file(&self.dir.join("up.log"))?;
                let mut cmd = Command::new(&exe);
                cmd.arg("up")
                    .arg("--data-dir")
                    .arg(self.dir.join("data"))
                    .args(["--listen", &addr, "--ec2-listen", &ec2, "--no-agent"])
                    // Loopback only; the boot path, not TLS, is measured.
                    .arg("--insecure-http")
                    .arg("--image-import-dir")
                    .arg(self.dir.join("import"))
                    .env("RUST_LOG", "warn")
                    .stdout(out)
                    .stderr(err);
                child_env(&mut cmd, &home);
                self.up = Some(cmd.spawn().context("starting corral up")?);
                let url = format!("http://{addr}");
                let http = reqwest::Client::builder().build()?;
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let healthy = http
                        .get(format!("{url}/healthz"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if healthy && config.exists() {
                        let text = std::fs::read_to_string(&config)?;
                        let c: crate::config::ClientConfig = yaml_serde::from_str(&text)
                            .with_context(|| format!("reading {}", config.display()))?;
                        return Ok(Api {
                            url,
                            token: c.token,
                            http,
                        });
                    }
                    if let Some(Ok(Some(_))) = self.up.as_mut().map(|c| c.try_wait()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some(mut c) = self.up.take() {
                    let _ = c.kill().await;
                }
                eprintln!("corral up did not come up (attempt {})", attempt + 1);
            }
            bail!(
                "corral up did not become healthy; its log:\n{}",
                tail(&self.dir.join("up.log"), 30)
            )
        }

        /// Starts the node agent on qemu:///system; answers the vCPUs its
        /// Node offers once Ready.
        async fn start_agent(&mut self, api: &Api) -> Result<u64> {
            let exe = std::env::current_exe().context("finding the corral binary")?;
            let issued = api
                .ok(
                    reqwest::Method::POST,
                    "/v1/users",
                    Some(&json!({"name": format!("node-{}", self.node), "role": "node", "nodeName": self.node})),
                )
                .await?;
            let token = issued["token"]
                .as_str()
                .context("no token for the node user")?
                .to_string();
            let agent_dir = self.dir.join("agent");
            std::fs::create_dir_all(&agent_dir)?;
            chmod(&agent_dir, 0o755)?;
            let (out, err) = log_file(&self.dir.join("agent.log"))?;
            let mut cmd = Command::new(&exe);
            cmd.args(["agent", "--server", &api.url, "--node", &self.node])
                .args(["--libvirt", LIBVIRT, "--virt-type", self.virt_type])
                .arg("--agent-dir")
                .arg(&agent_dir)
                .env(
                    "RUST_LOG",
                    std::env::var("CORRAL_BENCH_AGENT_LOG")
                        .unwrap_or_else(|_| "warn,corral_node_agent=info".into()),
                )
                .stdout(out)
                .stderr(err);
            child_env(&mut cmd, &self.dir.join("home"));
            cmd.env("CORRAL_TOKEN", token);
            self.agent = Some(cmd.spawn().context("starting corral agent")?);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (code, node) = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/nodes/{}", self.node),
                        None,
                    )
                    .await?;
                if code == 200 && has_true_condition(&node, "Ready") {
                    return Ok(node["status"]["allocatable"]["vcpus"].as_u64().unwrap_or(0));
                }
                if let Some(Ok(Some(status))) = self.agent.as_mut().map(|c| c.try_wait()) {
                    bail!(
                        "corral agent exited ({status}); its log:\n{}",
                        tail(&self.dir.join("agent.log"), 30)
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {} not Ready within 60 s; agent log:\n{}",
                    self.node,
                    tail(&self.dir.join("agent.log"), 30)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        /// Deletes every instance, stops the children, and removes any
        /// domain of an instance this run created that is still defined.
        async fn cleanup(&mut self) {
            if let (Some(api), Some(w)) = (self.api.clone(), self.watcher.clone()) {
                if let Err(e) = delete_all(&api, &w, Duration::from_secs(180)).await {
                    eprintln!("cleanup: {e:#}");
                }
            }
            for t in self.tasks.drain(..) {
                t.abort();
            }
            for (what, child) in [("agent", self.agent.take()), ("corral up", self.up.take())] {
                let Some(mut child) = child else { continue };
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(15), child.wait())
                    .await
                    .is_err()
                {
                    eprintln!("cleanup: {what} did not stop on SIGTERM; killing it");
                    let _ = child.kill().await;
                }
            }
            let uids: Vec<String> = self
                .watcher
                .as_ref()
                .map(|w| w.uids.lock().expect("uids").iter().cloned().collect())
                .unwrap_or_default();
            if uids.is_empty() {
                return;
            }
            let virt_type = self.virt_type;
            let node = self.node.clone();
            let left = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
                use corral_node_agent::Hypervisor;
                let hv = corral_node_agent::Libvirt::open(LIBVIRT, virt_type)?;
                let mut removed = Vec::new();
                for uid in uids {
                    let name = corral_node_agent::hypervisor::domain_name(&uid);
                    if hv.state(&name)?.is_none()
                        || hv.node_of(&name)?.as_deref() != Some(node.as_str())
                    {
                        continue;
                    }
                    let _ = hv.destroy(&name);
                    hv.undefine(&name)?;
                    removed.push(name);
                }
                Ok(removed)
            })
            .await;
            match left {
                Ok(Ok(removed)) if !removed.is_empty() => {
                    eprintln!("cleanup: removed leftover domains {}", removed.join(", "))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("cleanup: checking for leftover domains: {e:#}"),
                Err(e) => eprintln!("cleanup: {e}"),
            }
        }
    }

    /// Deletes every instance of the project and waits until all are gone
    /// (their domains destroyed and disks removed by the agent).
    async fn delete_all(api: &Api, w: &Watcher, timeout: Duration) -> Result<()> {
        let names = api.instance_names().await?;
        delete_and_wait(api, w, &names, timeout).await
    }

    async fn delete_and_wait(
        api: &Api,
        w: &Watcher,
        names: &[String],
        timeout: Duration,
    ) -> Result<()> {
        let mut tasks = Vec::new();
        for n in names {
            let api = api.clone();
            let path = format!("/v1/projects/{PROJECT}/instances/{n}");
            tasks.push(tokio::spawn(async move {
                let (code, v) = api.call(reqwest::Method::DELETE, &path, None).await?;
                anyhow::ensure!(
                    (200..300).contains(&code) || code == 404,
                    "DELETE {path}: {code} {v}"
                );
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(missing) = w.wait_all(names, deadline, |s| s.gone.is_some()).await {
            bail!(
                "instances not gone {} s after their deletion: {}",
                timeout.as_secs(),
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Creates `names` at once; answers each one's milestones from its
    /// POST, then deletes them and waits until they are gone.
    async fn corral_round(
        api: &Api,
        w: &Watcher,
        clock: Option<BootClock>,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<Sample>> {
        let mut tasks = Vec::new();
        for n in names {
            let api = api.clone();
            let body = json!({
                "metadata": {"name": n},
                "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}]}
            });
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let (code, v) = api
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/projects/{PROJECT}/instances"),
                        Some(&body),
                    )
                    .await?;
                anyhow::ensure!(code == 201, "creating an instance: {code} {v}");
                let uid = v["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                anyhow::Ok((t0, uid))
            }));
        }
        let mut started = Vec::with_capacity(names.len());
        for t in tasks {
            started.push(t.await??);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(missing) = w.wait_all(names, deadline, |s| s.ready.is_some()).await {
            let mut why = Vec::new();
            for n in &missing {
                let (_, v) = api
                    .call(
                        reqwest::Method::GET,
                        &format!("/v1/projects/{PROJECT}/instances/{n}"),
                        None,
                    )
                    .await
                    .unwrap_or((0, Value::Null));
                why.push(format!(
                    "{n}: phase {} ({}), conditions {}",
                    v["status"]["phase"], v["status"]["message"], v["status"]["conditions"]
                ));
            }
            bail!(
                "instances not Ready within {} s:\n  {}",
                timeout.as_secs(),
                why.join("\n  ")
            );
        }
        // The guests are still running: find their QEMU processes.
        let qemu: Vec<Option<Instant>> = match clock {
            Some(c) => {
                let uids: Vec<String> = started.iter().map(|(_, u)| u.clone()).collect();
                tokio::task::spawn_blocking(move || {
                    uids.iter().map(|u| c.qemu_started(u)).collect()
                })
                .await?
            }
            None => vec![None; started.len()],
        };
        let samples = {
            let seen = w.seen.lock().expect("seen");
            names
                .iter()
                .zip(&started)
                .zip(qemu)
                .map(|((n, (t0, _)), qemu)| {
                    let s = seen.get(n).copied().unwrap_or_default();
                    let ready = s
                        .ready
                        .map(|t| t.saturating_duration_since(*t0))
                        .unwrap_or_default();
                    let since = |t: Option<Instant>| {
                        t.map(|t| t.saturating_duration_since(*t0)).unwrap_or(ready)
                    };
                    Sample {
                        scheduled: since(s.scheduled),
                        qemu: qemu.map(|t| t.saturating_duration_since(*t0)),
                        running: since(s.running),
                        ready,
                    }
                })
                .collect()
        };
        delete_and_wait(api, w, names, timeout).await?;
        Ok(samples)
    }

    // ----------------------------------------------------------------
    // The run

    /// One kind of boot's results.
    #[derive(Default)]
    struct Series {
        ready: Vec<Duration>,
        scheduled: Vec<Duration>,
        /// POST -> the domain's QEMU process started.
        qemu: Vec<Duration>,
        /// QEMU process started -> Ready (comparable with B0).
        qemu_to_ready: Vec<Duration>,
        running: Vec<Duration>,
    }

    impl Series {
        fn add_bare(&mut self, v: Vec<Duration>) {
            self.ready.extend(v);
        }

        fn add(&mut self, v: Vec<Sample>) {
            for s in v {
                self.ready.push(s.ready);
                self.scheduled.push(s.scheduled);
                self.running.push(s.running);
                if let Some(q) = s.qemu {
                    self.qemu.push(q);
                    self.qemu_to_ready.push(s.ready.saturating_sub(q));
                }
            }
        }

        fn sorted(v: &[Duration]) -> Vec<Duration> {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        }

        fn p(&self, which: &[Duration], p: f64) -> f64 {
            percentile(&Self::sorted(which), p).as_secs_f64() * 1e3
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    fn fmt_ms(v: &[Duration]) -> String {
        let mut v = v.to_vec();
        v.sort_unstable();
        match v.len() {
            0 => "-".into(),
            1 => format!("{:.0} ms", ms(v[0])),
            _ => format!(
                "p50 {:.0} ms, max {:.0} ms",
                ms(percentile(&v, 0.5)),
                ms(v[v.len() - 1])
            ),
        }
    }

    pub async fn boot(options: BootBenchOptions) -> Result<()> {
        anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
        anyhow::ensure!(options.concurrent >= 1, "--concurrent must be at least 1");
        let virt_type = corral_node_agent::host::detect_virt_type();
        check_tool("qemu-system-x86_64", "--version", "qemu-system-x86").await?;
        check_tool("qemu-img", "--version", "qemu-utils").await?;
        check_tool("genisoimage", "--version", "genisoimage").await?;
        check_libvirt(virt_type).await?;
        let base = guest_image(&options.guest_dir).await?;

        let tmp = tempfile::Builder::new()
            .prefix("corral-bench-boot-")
            .tempdir()
            .context("creating a temporary directory")?;
        // QEMU under libvirt runs as its own user: the agent's directory
        // must be reachable.
        chmod(tmp.path(), 0o755)?;
        let mut env = Env {
            dir: tmp.path().to_path_buf(),
            node: format!("bench-boot-{}", std::process::id()),
            virt_type,
            up: None,
            agent: None,
            api: None,
            watcher: None,
            tasks: Vec::new(),
        };
        let load = LoadLog::default();
        env.tasks.push(load.spawn(tmp.path().display().to_string()));
        let result = tokio::select! {
            r = run(&mut env, &options, &base, &load) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        };
        if result.is_err() {
            for (what, file) in [("corral up", "up.log"), ("corral agent", "agent.log")] {
                let t = tail(&tmp.path().join(file), 15);
                if !t.is_empty() {
                    eprintln!("--- last lines of the {what} log ---\n{t}");
                }
            }
        }
        eprintln!("cleaning up (instances, server, agent, temporary files)...");
        env.cleanup().await;
        if options.keep {
            eprintln!("kept {}", tmp.keep().display());
        }
        result
    }

    async fn run(
        env: &mut Env,
        options: &BootBenchOptions,
        base: &Path,
        load: &LoadLog,
    ) -> Result<()> {
        let timeout = options.timeout;
        let n = options.concurrent;
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        println!(
            "corral bench boot: {} run(s) of 1 and of {n} concurrent; {} on {ncpu} host cpus; guest {}",
            options.runs,
            if virt_type_is_kvm(env.virt_type) { "KVM" } else { "TCG (no KVM)" },
            base.display()
        );

        // Corral: server, agent, project, network, image.
        let api = env.start_server().await?;
        env.api = Some(api.clone());
        let it = api
            .ok(reqwest::Method::GET, "/v1/instancetypes/m1.tiny", None)
            .await?;
        let size = Size {
            vcpus: it["spec"]["vcpus"].as_u64().unwrap_or(1),
            memory_mib: it["spec"]["memoryMiB"].as_u64().unwrap_or(512),
            root_disk_gib: it["spec"]["rootDiskGiB"].as_u64().unwrap_or(1),
        };
        // The node offers what the agent decides (with its default vCPU
        // overcommit); the concurrent round must fit on it.
        let vcpus = env.start_agent(&api).await?;
        anyhow::ensure!(
            vcpus >= size.vcpus * n as u64,
            "node {} offers {vcpus} vCPUs; {n} m1.tiny instances need {}: lower --concurrent",
            env.node,
            size.vcpus * n as u64
        );
        let watcher = Watcher {
            seen: Arc::default(),
            uids: Arc::default(),
            changed: tokio::sync::watch::channel(0).0,
        };
        env.watcher = Some(watcher.clone());
        env.tasks
            .push(tokio::spawn(watcher.clone().run(api.clone())));

        let import = env.dir.join("import");
        std::fs::create_dir_all(&import)?;
        chmod(&import, 0o755)?;
        let image = import.join("tiny.qcow2");
        std::fs::copy(base, &image).context("copying the guest image")?;
        chmod(&image, 0o644)?;
        for (path, body) in [
            (
                "/v1/projects".to_string(),
                json!({"metadata": {"name": PROJECT}}),
            ),
            (
                format!("/v1/projects/{PROJECT}/networks"),
                json!({"metadata": {"name": "lan"}, "spec": {"cidr": "10.77.0.0/24", "mode": "isolated"}}),
            ),
            (
                format!("/v1/projects/{PROJECT}/images"),
                json!({"metadata": {"name": "tiny"}, "spec": {"source": {"path": image}, "format": "qcow2"}}),
            ),
        ] {
            api.ok(reqwest::Method::POST, &path, Some(&body)).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let img = api
                .ok(
                    reqwest::Method::GET,
                    &format!("/v1/projects/{PROJECT}/images/tiny"),
                    None,
                )
                .await?;
            match img["status"]["phase"].as_str().unwrap_or("") {
                "available" => break,
                "failed" => bail!("the image import failed: {}", img["status"]),
                _ => {}
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "image not available within 120 s: {}",
                img["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "corral up (embedded store) and a node agent ({}, offering {vcpus} vCPUs) on {LIBVIRT}; instances m1.tiny ({} vcpu, {} MiB, {} GiB root)",
            env.node, size.vcpus, size.memory_mib, size.root_disk_gib
        );

        let clock = BootClock::calibrate().await;
        if clock.is_none() {
            eprintln!("/proc/uptime did not move: the QEMU-start milestone is left out");
        }
        let bare = Bare {
            kvm: virt_type_is_kvm(env.virt_type),
            // The very bytes the Image was imported from: a rebuild of the
            // guest directory meanwhile changes neither side.
            base: image.clone(),
            dir: env.dir.join("bare"),
            size,
        };

        // Untimed warm-up: the agent pulls the image into its cache on the
        // first boot; both paths get the page cache warm.
        print!("warm-up (untimed): bare ");
        let w = bare.round("warm", 1, SeedOn::Virtio, timeout).await?;
        print!("{:.0} ms, corral ", ms(w[0]));
        let w = corral_round(&api, &watcher, clock, &["warm-0".to_string()], timeout).await?;
        println!("{:.0} ms", ms(w[0].ready));

        let mut res = Results::default();
        let started = Instant::now();
        for run in 1..=options.runs {
            let t_run = Instant::now();
            let r = bare
                .round(&format!("b0-{run}"), 1, SeedOn::Virtio, timeout)
                .await?;
            let line_b0 = fmt_ms(&r);
            res.b0.add_bare(r);
            let r = bare
                .round(&format!("cd-{run}"), 1, SeedOn::Cdrom, timeout)
                .await?;
            let line_cd = fmt_ms(&r);
            res.b0_cdrom.add_bare(r);

            let names = vec![format!("one-{run}")];
            let r = corral_round(&api, &watcher, clock, &names, timeout).await?;
            let line_one = format!(
                "{:.0} ms (scheduled {:.0}, QEMU {}, running {:.0})",
                ms(r[0].ready),
                ms(r[0].scheduled),
                r[0].qemu
                    .map(|q| format!("{:.0}", ms(q)))
                    .unwrap_or("?".into()),
                ms(r[0].running)
            );
            res.one.add(r);

            let line_bare_n = if options.bare_concurrent && n > 1 {
                let r = bare
                    .round(&format!("bn-{run}"), n, SeedOn::Cdrom, timeout)
                    .await?;
                let l = fmt_ms(&r);
                res.bare_n.add_bare(r);
                format!(", bare x{n} {l}")
            } else {
                String::new()
            };

            let line_many = if n > 1 {
                let names: Vec<String> = (0..n).map(|i| format!("many-{run}-{i}")).collect();
                let r = corral_round(&api, &watcher, clock, &names, timeout).await?;
                let l = fmt_ms(&r.iter().map(|s| s.ready).collect::<Vec<_>>());
                res.many.add(r);
                format!(", corral x{n} {l}")
            } else {
                String::new()
            };
            let l = load.window(t_run, Instant::now());
            res.busy.push(l.foreign_cpus);
            println!(
                "run {run}/{}: bare {line_b0}, bare (seed on CD-ROM) {line_cd}, corral x1 {line_one}{line_bare_n}{line_many}  [load avg {:.1} (max {:.1}); others used {:.2} CPUs; other QEMUs: up to {}]",
                options.runs, l.mean, l.max, l.foreign_cpus, l.foreign_qemu
            );
        }
        let elapsed = started.elapsed();
        report(options, &res, elapsed, load, started);
        Ok(())
    }

    fn virt_type_is_kvm(v: &str) -> bool {
        v == "kvm"
    }

    /// Everything measured, by kind.
    #[derive(Default)]
    struct Results {
        /// Bare QEMU, seed on a virtio disk.
        b0: Series,
        /// Bare QEMU, seed on an IDE CD-ROM.
        b0_cdrom: Series,
        one: Series,
        bare_n: Series,
        many: Series,
        /// CPUs used by other processes during each run.
        busy: Vec<f64>,
    }

    fn report(
        options: &BootBenchOptions,
        res: &Results,
        elapsed: Duration,
        load: &LoadLog,
        started: Instant,
    ) {
        let Results {
            b0,
            b0_cdrom,
            one,
            bare_n,
            many,
            busy,
        } = res;
        let n = options.concurrent;
        println!();
        println!(
            "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "case (launch or POST -> ready)", "boots", "p50 ms", "p95 ms", "min ms", "max ms"
        );
        let row = |name: String, s: &Series| {
            if s.ready.is_empty() {
                return;
            }
            let v = Series::sorted(&s.ready);
            println!(
                "{:<34} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                name,
                v.len(),
                ms(percentile(&v, 0.50)),
                ms(percentile(&v, 0.95)),
                ms(v[0]),
                ms(v[v.len() - 1])
            );
        };
        row("bare QEMU, seed on virtio".into(), b0);
        row("bare QEMU, seed on CD-ROM (B0)".into(), b0_cdrom);
        row("corral, 1 instance".into(), one);
        row(format!("bare QEMU, {n} at once"), bare_n);
        row(format!("corral, {n} concurrent"), many);
        println!();
        println!("corral milestones from the POST, p50 ms: scheduled = status.nodeName set, QEMU = the domain's");
        println!(
            "QEMU process started (/proc, +-10 ms), running = phase Running, ready = Ready True;"
        );
        println!("QEMU->ready is the part comparable with a bare boot:");
        let concurrent = format!("{n} concurrent");
        let opt = |v: &[Duration]| {
            if v.is_empty() {
                "      -".to_string()
            } else {
                format!("{:>7.0}", ms(percentile(&Series::sorted(v), 0.5)))
            }
        };
        for (name, s) in [("1 instance", one), (concurrent.as_str(), many)] {
            if s.ready.is_empty() {
                continue;
            }
            println!(
                "  {name:<14} scheduled {:>7.0}  QEMU {}  running {:>7.0}  ready {:>7.0}  QEMU->ready {}",
                s.p(&s.scheduled, 0.5),
                opt(&s.qemu),
                s.p(&s.running, 0.5),
                s.p(&s.ready, 0.5),
                opt(&s.qemu_to_ready)
            );
        }
        println!();
        // B0 is the bare boot with the agent's devices, the seed on an IDE
        // CD-ROM where the agent attaches it (a Nova-style config drive):
        // what the guest does with its devices is the same on both sides.
        // The seed-on-virtio boot is shown too (the earlier B0).
        let (b0, virtio) = if b0_cdrom.ready.is_empty() {
            (b0, None)
        } else {
            (b0_cdrom, Some(b0))
        };
        let b0_p50 = b0.p(&b0.ready, 0.5);
        let overhead = one.p(&one.ready, 0.5) - b0_p50;
        println!(
            "goal p50(1) - p50(B0) <= 300 ms: {overhead:.0} ms: {}",
            if overhead <= 300.0 { "met" } else { "NOT met" }
        );
        if !one.qemu.is_empty() {
            println!(
                "  of which POST -> QEMU started {:.0} ms, and QEMU started -> Ready {:.0} ms against B0's {b0_p50:.0} ms",
                one.p(&one.qemu, 0.5),
                one.p(&one.qemu_to_ready, 0.5) - b0_p50
            );
        }
        if let Some(v) = virtio.filter(|v| !v.ready.is_empty()) {
            let vp = v.p(&v.ready, 0.5);
            println!(
                "  against a bare boot with the seed on virtio instead (p50 {vp:.0} ms): p50(1) - p50 = {:.0} ms",
                one.p(&one.ready, 0.5) - vp
            );
        }
        if !many.ready.is_empty() {
            let ratio = many.p(&many.ready, 0.95) / b0_p50;
            println!(
                "goal p95({n}) / p50(B0) <= 3.0: {ratio:.2}: {}",
                if ratio <= 3.0 { "met" } else { "NOT met" }
            );
            if !bare_n.ready.is_empty() {
                println!(
                    "  for scale: bare QEMU {n} at once p95 / p50(B0) = {:.2}; corral p95({n}) / bare p95({n}) = {:.2}",
                    bare_n.p(&bare_n.ready, 0.95) / b0_p50,
                    many.p(&many.ready, 0.95) / bare_n.p(&bare_n.ready, 0.95)
                );
            }
        }
        let l = load.window(started, Instant::now());
        let runs_busy = busy.iter().filter(|f| **f >= BUSY_CPUS).count();
        println!(
            "machine: load avg {:.1} on average (max {:.1}) over {:.0} s; processes not this run's used {:.2} CPUs on average; other QEMUs: up to {} at once{}",
            l.mean,
            l.max,
            elapsed.as_secs_f64(),
            l.foreign_cpus,
            l.foreign_qemu,
            if runs_busy > 0 {
                format!(
                    " (>= {BUSY_CPUS} CPUs in {runs_busy} of {} runs: figures are pessimistic)",
                    busy.len()
                )
            } else {
                String::new()
            }
        );
    }
}
