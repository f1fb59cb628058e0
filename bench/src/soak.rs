//! `corral bench soak`: a bounded mixed workload against a real server
//! process, watching for errors and memory growth.
//!
//! Phases: `corral up` (embedded store, simulated host), then `corral
//! server` on a private 3-member etcd cluster plus a `corral agent` on a
//! simulated host. Each phase runs `--seconds` of, per client, a seeded mix
//! of native creates (apply) and deletes, EC2 RunInstances and
//! TerminateInstances (SigV4, as awscli signs), native lists and EC2
//! DescribeInstances, with watchers streaming the project meanwhile.
//! Printed: operations per second, p50/p99 per kind, errors (anything but
//! a 2xx or an expected 409), watch events seen, and the server's RSS
//! after setup and at the end, against a stated bound.
//!
//! With `--abuse`, each phase runs twice, each time on a fresh server set
//! up alike: clean, then beside the abusive clients of [`super::abuse`].
//! The normal clients' p99 per kind must stay within 2x of the clean
//! run's, and the server's peak RSS within the bound stated from the
//! clean run's warm RSS (a fresh server each time: both are as old at
//! every sample, so the server's own retention does not count as abuse).
//!
//! Slightly over 600 lines: one benchmark, its phases and its report.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::abuse;
use crate::figures::percentile;

pub struct SoakOptions {
    pub seconds: u64,
    pub clients: usize,
    pub watchers: usize,
    /// Also soak `corral server` on etcd.
    pub etcd: bool,
    /// Run each phase again beside abusive clients, and compare.
    pub abuse: bool,
    pub seed: u64,
}

/// RSS growth allowed over a phase, once warm (after its first third:
/// caches and connection pools fill first): the end may be at most this
/// factor of the warm figure plus [`RSS_SLACK_MIB`].
const RSS_FACTOR: f64 = 1.25;
const RSS_SLACK_MIB: u64 = 32;
/// Instances one client keeps at most; beyond it, it deletes.
const LIVE_PER_CLIENT: usize = 10;

/// A small seeded generator (xorshift64*): the same seed, the same mix.
pub(super) struct Mix(u64);

impl Mix {
    pub(super) fn new(seed: u64) -> Mix {
        Mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n`.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// CPU time a process or thread has used (user + system) from its
/// `/proc/.../stat`, assuming 100 ticks a second (Linux's USER_HZ).
pub(super) fn cpu_secs(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // After the `)` ending the command name: utime and stime are the 12th
    // and 13th fields.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one phase runs against.
struct Target {
    api: String,
    ec2: String,
    admin: String,
    /// The process whose RSS is watched.
    server_pid: u32,
    _procs: Vec<Proc>,
    _etcd: Option<corral_test_support::EtcdCluster>,
    _dir: tempfile::TempDir,
}

async fn wait_healthy(http: &reqwest::Client, api: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{api}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server at {api} did not become healthy")
}

fn token_from_config(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config at {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .map(|t| t.trim().trim_matches('"').to_string())
        .context("no token in the config")
}

fn spawn(dir: &std::path::Path, args: &[&str], log: &str) -> Result<Proc> {
    let exe = crate::corral_exe()?;
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let child = Command::new(exe)
        .args(args)
        .env("HOME", &home)
        .env("CORRAL_CONFIG", home.join("config.yaml"))
        .env("RUST_LOG", "warn")
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log))?)
        .spawn()?;
    Ok(Proc(child))
}

async fn up_target(http: &reqwest::Client) -> Result<Target> {
    let dir = tempfile::Builder::new().prefix("corral-soak-").tempdir()?;
    let (api_port, ec2_port) = (free_port()?, free_port()?);
    let data = dir.path().join("data");
    let agent_dir = dir.path().join("agent");
    let up = spawn(
        dir.path(),
        &[
            "up",
            // Loopback; the soak measures the API's work, not TLS.
            "--insecure-http",
            "--data-dir",
            data.to_str().context("utf-8 path")?,
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--ec2-listen",
            &format!("127.0.0.1:{ec2_port}"),
            "--libvirt",
            "test:///default",
            "--agent-dir",
            agent_dir.to_str().context("utf-8 path")?,
            "--node",
            "soak",
        ],
        "up.log",
    )?;
    let api = format!("http://127.0.0.1:{api_port}");
    wait_healthy(http, &api).await?;
    let config = dir.path().join("home/config.yaml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !config.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Target {
        admin: token_from_config(&config)?,
        api,
        ec2: format!("http://127.0.0.1:{ec2_port}"),
        server_pid: up.0.id(),
        _procs: vec![up],
        _etcd: None,
        _dir: dir,
    })
}

async fn etcd_target(http: &reqwest::Client) -> Result<Target> {
    let dir = tempfile::Builder::new().prefix("corral-soak-").tempdir()?;
    let etcd = corral_test_support::EtcdCluster::start(3)
        .await
        .context("starting a private 3-member etcd cluster")?;
    let (api_port, ec2_port) = (free_port()?, free_port()?);
    let blobs = dir.path().join("blobs");
    let server = spawn(
        dir.path(),
        &[
            "server",
            "--insecure-http",
            "--etcd",
            &etcd.endpoints().join(","),
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--ec2-listen",
            &format!("127.0.0.1:{ec2_port}"),
            "--write-config",
            "--blob-dir",
            blobs.to_str().context("utf-8 path")?,
        ],
        "server.log",
    )?;
    let api = format!("http://127.0.0.1:{api_port}");
    wait_healthy(http, &api).await?;
    let config = dir.path().join("home/config.yaml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !config.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = token_from_config(&config)?;
    // A node user and its agent on a simulated host.
    let r = http
        .post(format!("{api}/v1/users"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "node-soak", "role": "node", "nodeName": "soak"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "node user: {}", r.status());
    let node: serde_json::Value = r.json().await?;
    let agent_dir = dir.path().join("agent");
    let agent = spawn(
        dir.path(),
        &[
            "agent",
            "--server",
            &api,
            "--token",
            node["token"].as_str().context("node token")?,
            "--node",
            "soak",
            "--libvirt",
            "test:///default",
            "--agent-dir",
            agent_dir.to_str().context("utf-8 path")?,
        ],
        "agent.log",
    )?;
    Ok(Target {
        admin,
        api,
        ec2: format!("http://127.0.0.1:{ec2_port}"),
        server_pid: server.0.id(),
        _procs: vec![server, agent],
        _etcd: Some(etcd),
        _dir: dir,
    })
}

/// Latencies and outcomes by operation kind.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: Vec<String>,
    conflicts: usize,
}

impl Tally {
    fn record(&mut self, op: &'static str, took: Duration, outcome: Result<u16, String>) {
        self.latencies.entry(op).or_default().push(took);
        match outcome {
            Ok(409) => self.conflicts += 1,
            Ok(c) if (200..300).contains(&c) => {}
            Ok(c) => self.errors.push(format!("{op}: HTTP {c}")),
            Err(e) => self.errors.push(format!("{op}: {e}")),
        }
    }
}

/// One signed EC2 call: (HTTP status, body), or why it was not answered.
async fn ec2_call(
    client: &crate::ec2::Ec2Client,
    action: &str,
    params: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let (status, body) = client
        .send(action, params)
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status.as_u16(),
        String::from_utf8_lossy(body.as_ref()).into_owned(),
    ))
}

/// What one run measured, for the clean/abused comparison.
struct RunFigures {
    normal: abuse::Normal,
    /// RSS a third of the way in, MiB: what the bound is stated from.
    rss_warm: u64,
    /// The largest RSS sample of the run, MiB.
    rss_peak: u64,
    /// `/metrics` at the end: bytes and series.
    metrics: (usize, usize),
    /// What the abusers saw, when they ran.
    abusers: Option<abuse::Report>,
    ok: bool,
}

/// One run on `t`: its tenant, then `--seconds` of the normal load,
/// printed; beside the abusers if `abused`.
async fn run(label: &str, t: &Target, o: &SoakOptions, abused: bool) -> Result<RunFigures> {
    let http = reqwest::Client::new();
    let api = t.api.clone();
    let admin = t.admin.clone();
    let post = |path: String, body: serde_json::Value| {
        let (http, api, admin) = (http.clone(), api.clone(), admin.clone());
        async move {
            let r = http
                .post(format!("{api}{path}"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await?;
            let code = r.status();
            let text = r.text().await?;
            anyhow::ensure!(code.is_success(), "{path}: {code} {text}");
            Ok::<serde_json::Value, anyhow::Error>(serde_json::from_str(&text)?)
        }
    };
    post(
        "/v1/projects".into(),
        serde_json::json!({"metadata": {"name": "soak"}}),
    )
    .await?;
    post(
        "/v1/projects/soak/networks".into(),
        serde_json::json!({"metadata": {"name": "default"}, "spec": {"cidr": "10.200.0.0/16"}}),
    )
    .await?;
    post(
        "/v1/projects/soak/images".into(),
        serde_json::json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
    )
    .await?;
    let user = post(
        "/v1/users".into(),
        serde_json::json!({"name": "soaker", "role": "member", "project": "soak"}),
    )
    .await?;
    let member = user["token"].as_str().context("token")?.to_string();
    let key = user["accessKeyId"].as_str().context("key")?.to_string();
    let secret = user["secretAccessKey"]
        .as_str()
        .context("secret")?
        .to_string();
    let ec2c = Arc::new(crate::ec2::Ec2Client {
        http: http.clone(),
        url: t.ec2.clone(),
        host: t.ec2.trim_start_matches("http://").to_string(),
        key,
        secret,
    });
    // The image's ami id, as EC2 names it.
    let (_, images) = ec2_call(&ec2c, "DescribeImages", &[])
        .await
        .map_err(anyhow::Error::msg)?;
    let ami = crate::ec2::all_of(&images, "imageId")
        .first()
        .copied()
        .context("DescribeImages lists the image")?
        .to_string();
    // The abusers' tenant is made on every run: both servers then hold
    // the same objects.
    let abusers = match o.abuse {
        true => Some(abuse::prepare(&http, &t.api, &t.ec2, &t.admin).await?),
        false => None,
    };

    let stat = format!("/proc/{}/stat", t.server_pid);
    let (rss_start, cpu_start) = (rss_mib(t.server_pid), cpu_secs(&stat));
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let abusers = abusers
        .filter(|_| abused)
        .map(|a| abuse::start(a, deadline));
    // RSS every sixth of the phase.
    let sampler = {
        let pid = t.server_pid;
        let every = Duration::from_secs_f64(o.seconds as f64 / 6.0);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for _ in 0..6 {
                tokio::time::sleep(every).await;
                samples.push(rss_mib(pid));
            }
            samples
        })
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Watchers stream the project's instances for the whole phase.
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut watchers = Vec::new();
    for _ in 0..o.watchers {
        let (http, url, member, events) = (
            http.clone(),
            format!("{}/v1/projects/soak/instances?watch=true", t.api),
            member.clone(),
            events.clone(),
        );
        watchers.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            let Ok(r) = http.get(url).bearer_auth(member).send().await else {
                return false;
            };
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { return false };
                let n = chunk.iter().filter(|b| **b == b'\n').count() as u64;
                events.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            true
        }));
    }
    let mut clients = Vec::new();
    for c in 0..o.clients {
        let (http, api, ec2c, member, ami, tally) = (
            http.clone(),
            t.api.clone(),
            ec2c.clone(),
            member.clone(),
            ami.clone(),
            tally.clone(),
        );
        let seed = o.seed.wrapping_add(c as u64);
        clients.push(tokio::spawn(async move {
            let mut rng = Mix::new(seed);
            let mut native: Vec<String> = Vec::new();
            let mut ec2_ids: Vec<String> = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let started = Instant::now();
                let pick = rng.below(100);
                let (op, outcome): (&'static str, Result<u16, String>) = if pick < 25 {
                    if native.len() >= LIVE_PER_CLIENT {
                        let name = native.remove(0);
                        let r = http
                            .delete(format!("{api}/v1/projects/soak/instances/{name}"))
                            .bearer_auth(&member)
                            .send()
                            .await;
                        ("native delete", r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()))
                    } else {
                        let name = format!("s{c}-{n}");
                        let body = serde_json::json!({
                            "apiVersion": "corral/v1", "kind": "Instance",
                            "metadata": {"name": name, "project": "soak"},
                            "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "default"}]}
                        });
                        let r = http
                            .post(format!("{api}/v1/apply"))
                            .bearer_auth(&member)
                            .json(&body)
                            .send()
                            .await;
                        native.push(name);
                        ("native apply", r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()))
                    }
                } else if pick < 50 {
                    if ec2_ids.len() >= LIVE_PER_CLIENT {
                        let id = ec2_ids.remove(0);
                        let r = ec2_call(&ec2c, "TerminateInstances", &[("InstanceId.1", &id)]).await;
                        ("ec2 terminate", r.map(|(c, _)| c))
                    } else {
                        let r = ec2_call(
                            &ec2c,
                            "RunInstances",
                            &[("ImageId", &ami), ("MinCount", "1"), ("MaxCount", "1"), ("InstanceType", "m1.tiny")],
                        )
                        .await;
                        if let Ok((200, xml)) = &r {
                            if let Some(id) = crate::ec2::all_of(xml, "instanceId").first() {
                                ec2_ids.push(id.to_string());
                            }
                        }
                        ("ec2 run", r.map(|(c, _)| c))
                    }
                } else if pick < 75 {
                    let r = http
                        .get(format!("{api}/v1/projects/soak/instances"))
                        .bearer_auth(&member)
                        .send()
                        .await;
                    let r = match r {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            r.bytes().await.map(|_| code).map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    ("native list", r)
                } else {
                    let r = ec2_call(&ec2c, "DescribeInstances", &[]).await;
                    ("ec2 describe", r.map(|(c, _)| c))
                };
                tally.lock().expect("tally").record(op, started.elapsed(), outcome);
            }
        }));
    }
    for c in clients {
        c.await?;
    }
    let abusers = match abusers {
        Some(a) => Some(a.finish().await?),
        None => None,
    };
    let elapsed = o.seconds as f64;
    let samples = sampler.await?;
    let rss_warm = samples.get(1).copied().unwrap_or(rss_start);
    let rss_end = samples
        .last()
        .copied()
        .unwrap_or_else(|| rss_mib(t.server_pid));
    let live_watchers = watchers.iter().filter(|w| !w.is_finished()).count();
    for w in &watchers {
        w.abort();
    }
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    let total: usize = tally.latencies.values().map(Vec::len).sum();
    println!(
        "{label}: {total} ops in {elapsed:.0} s = {:.0} ops/s, {} clients, {} watchers",
        total as f64 / elapsed,
        o.clients,
        o.watchers
    );
    println!(
        "  {:<16} {:>7} {:>9} {:>9}",
        "op", "count", "p50 ms", "p99 ms"
    );
    let mut latency = BTreeMap::new();
    for (op, mut l) in tally.latencies {
        l.sort();
        latency.insert(op, [percentile(&l, 0.50), percentile(&l, 0.99)]);
        println!(
            "  {op:<16} {:>7} {:>9.1} {:>9.1}",
            l.len(),
            percentile(&l, 0.50).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3
        );
    }
    let bound = rss_bound(rss_warm);
    println!(
        "  errors {} (409s expected and not counted: {}), watch events {}, watchers still streaming {}/{}",
        tally.errors.len(),
        tally.conflicts,
        events.load(std::sync::atomic::Ordering::Relaxed),
        live_watchers,
        o.watchers
    );
    for e in tally.errors.iter().take(10) {
        println!("    {e}");
    }
    println!(
        "  server RSS MiB: {rss_start} after setup, every sixth {samples:?}; end {rss_end} (bound {bound} = {RSS_FACTOR} x the warm {rss_warm} at a third + {RSS_SLACK_MIB}); server CPU {:.1} s",
        cpu_secs(&stat) - cpu_start
    );
    let ok = tally.errors.is_empty() && rss_end <= bound && live_watchers == o.watchers;
    println!("  {}", if ok { "PASS" } else { "FAIL" });
    Ok(RunFigures {
        normal: abuse::Normal {
            latency,
            per_sec: total as f64 / elapsed,
        },
        rss_warm,
        rss_peak: samples.iter().copied().max().unwrap_or(rss_end),
        metrics: abuse::metrics_size(&http, &t.api).await?,
        abusers,
        ok,
    })
}

fn rss_bound(warm: u64) -> u64 {
    (warm as f64 * RSS_FACTOR) as u64 + RSS_SLACK_MIB
}

/// A phase: one run; with `--abuse`, a second on a fresh server (as old
/// as the first at each sample) beside the abusers, and the two compared.
async fn soak_phase(label: &str, etcd: bool, o: &SoakOptions) -> Result<bool> {
    let http = reqwest::Client::new();
    let target = || async {
        match etcd {
            true => etcd_target(&http).await,
            false => up_target(&http).await,
        }
    };
    let name = if o.abuse { ", clean" } else { "" };
    let clean = run(&format!("{label}{name}"), &target().await?, o, false).await?;
    if !o.abuse {
        return Ok(clean.ok);
    }
    let label = format!("{label}, beside abusers");
    let abused = run(&label, &target().await?, o, true).await?;
    let report = abused.abusers.as_ref().context("the abusers' report")?;
    report.print();
    let held = abuse::verdict(
        [&clean.normal, &abused.normal],
        [clean.rss_peak, abused.rss_peak],
        rss_bound(clean.rss_warm),
        clean.metrics,
        report,
    );
    Ok(clean.ok && abused.ok && held)
}

pub async fn soak(o: SoakOptions) -> Result<()> {
    println!(
        "corral bench soak: {} s per phase{}, {} clients, {} watchers, seed {}",
        o.seconds,
        match o.abuse {
            true => ", clean and then beside abusive clients (a fresh server each)",
            false => "",
        },
        o.clients,
        o.watchers,
        o.seed
    );
    let mut ok = soak_phase("corral up (embedded)", false, &o).await?;
    if o.etcd {
        ok &= soak_phase("corral server (3-member etcd) + agent", true, &o).await?;
    }
    if !ok {
        bail!("the soak found errors, memory growth beyond the bound, or abusers that hurt the normal clients");
    }
    Ok(())
}
