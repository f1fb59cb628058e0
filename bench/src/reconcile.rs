//! `corral bench reconcile`: instances created through the API on
//! simulated hosts until all are Running, with etcd request counts and the
//! server's RSS; and `sim-hosts`, its agents in a process of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_store::EtcdStore;

use crate::figures::*;

/// The samples of counter `metric` in the Prometheus page at `url`,
/// summed by the values of `labels` (joined by spaces); empty when the
/// page cannot be read.
async fn counters(
    url: &str,
    metric: &str,
    labels: &[&str],
) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(resp) = reqwest::get(url).await else {
        return out;
    };
    let Ok(text) = resp.text().await else {
        return out;
    };
    let prefix = format!("{metric}{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((have, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            have.split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or_default()
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            let key: Vec<&str> = labels.iter().map(|l| label(l)).collect();
            *out.entry(key.join(" ")).or_default() += v;
        }
    }
    out
}

/// etcd's handled gRPC requests by method.
async fn etcd_requests(endpoint: &str) -> std::collections::HashMap<String, f64> {
    counters(
        &format!("{endpoint}/metrics"),
        "grpc_server_handled_total",
        &["grpc_method"],
    )
    .await
}

/// A gauge without labels (e.g. etcd's `process_cpu_seconds_total`).
async fn gauge(url: &str, metric: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(metric)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// CPU seconds (user + system) a process (`self` or a pid) has used.
fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is the 3rd
    // field, utime and stime the 14th and 15th, in clock ticks.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on every Linux this runs on.
    (ticks(11) + ticks(12)) / 100.0
}

/// The API server's requests by verb, kind and status code.
async fn api_requests(base: &str) -> std::collections::HashMap<String, f64> {
    counters(
        &format!("{base}/metrics"),
        "corral_api_requests_total",
        &["verb", "kind", "code"],
    )
    .await
}

pub struct ReconcileBenchOptions {
    pub nodes: usize,
    pub instances: usize,
    pub clients: usize,
    pub timeout: Duration,
    pub agents_in_process: bool,
}

/// The agents' settings on simulated hosts, in either process.
pub(crate) fn sim_agent_options() -> corral_node_agent::AgentOptions {
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
        hosts.push(corral_test_support::start_sim_host(
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
    use corral_store::ObjectEvent;
    use corral_test_support::{Backend, Cluster};
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
            .args(["sim-hosts", "--server", &cluster.base, "--tokens"])
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
    let api_before = api_requests(&cluster.base).await;
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

    let agents_pid = agents.as_ref().and_then(|c| c.id()).map(|p| p.to_string());
    let cpu_before = (
        cpu_seconds_of("self"),
        agents_pid.as_deref().map(cpu_seconds_of),
        gauge(&format!("{endpoint}/metrics"), "process_cpu_seconds_total").await,
    );
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
    let cpu_after = (
        cpu_seconds_of("self"),
        agents_pid.as_deref().map(cpu_seconds_of),
        gauge(&format!("{endpoint}/metrics"), "process_cpu_seconds_total").await,
    );
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
    // Where the machine's CPU went until all were Running: on 2 cores the
    // three compete, so this explains a slow run better than its wall time.
    let used = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1} s", b - a),
        _ => "n/a".to_string(),
    };
    println!(
        "CPU until all Running:    server {:.1} s, agents {}, etcd {} (wall {:.1} s)",
        cpu_after.0 - cpu_before.0,
        used(cpu_before.1, cpu_after.1),
        used(cpu_before.2, cpu_after.2),
        elapsed.as_secs_f64()
    );
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
    // And what was asked of the API, by verb and kind: who reads.
    let api_after = api_requests(&cluster.base).await;
    let mut api: Vec<(String, f64)> = api_after
        .iter()
        .map(|(k, v)| (k.clone(), v - api_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    api.sort_by(|a, b| b.1.total_cmp(&a.1));
    let line: Vec<String> = api
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k} {:.2}", v / reached.max(1) as f64))
        .collect();
    println!("API per instance:         {}", line.join(", "));
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
