//! Chaos suite (issue 8, "Faults"): real processes killed at seeded
//! moments, then the invariants that must survive it.
//!
//! - `embedded_store_kill9_during_write_burst`: `corral up` (redb store)
//!   SIGKILLed in the middle of concurrent creates, restarted on the same
//!   data: every acknowledged create is there, the file passes redb's
//!   integrity check, `corral up` starts cleanly.
//! - `watchers_behind_etcd_compaction_relist_and_miss_nothing`: through
//!   2,400 writes and an etcd compaction, a store watch nobody reads
//!   (it falls behind etcd itself: Expired, relist), native API watchers
//!   that stall or disconnect (served from the server's watch cache), and
//!   one that resumes from before that cache (410, relist) all end with
//!   exactly the store's objects.
//! - `stopped_agent_goes_unknown_and_returns_without_restarting_guests`: a
//!   node agent process SIGSTOPped while its guests run: Node and Instances
//!   Unknown within the node grace, back to the truth after SIGCONT, and the
//!   hypervisor saw no start, destroy or define.
//! - `sigkill_rounds_on_three_member_etcd`: three etcd members, two
//!   `corral server`s, two node agents on simulated hosts, a seeded
//!   workload; each round SIGKILLs one of {a server, the controller leader,
//!   an agent, an etcd member}, restarts it, waits for convergence and
//!   checks the invariants.
//!
//! Seeded by `CORRAL_CHAOS_SEED` (default below): a failure prints the seed
//! to rerun it. `--nocapture` shows the rounds and what was checked.
//!
//! How the test sees simulated hosts: libvirt's test driver lives inside
//! the process that opened it, so a separate agent process would take its
//! "host" with it when killed (that is a host crash, not an agent crash),
//! and nothing outside could list its domains. So:
//! - scenario 3 runs the agent as its own process — this test binary
//!   re-executed as `agent_host_process` — with the same `Agent` and
//!   `Libvirt` code `corral agent` runs, plus a read-only window (a tiny
//!   HTTP answer) listing the host's domains and how often the agent
//!   called start/destroy/define on each. SIGSTOP freezes agent and host
//!   together, which is what a stopped agent looks like to the server.
//! - scenario 4 runs the agents inside this process, each on its own tokio
//!   runtime, on hosts this process keeps open. "SIGKILL an agent" drops
//!   its runtime at once (no shutdown path runs; its connections reset);
//!   the host and its guests live on, as libvirtd would after a real agent
//!   died, and the test lists every host's domains directly.
//!
//! Servers, `corral up` and etcd members are real processes killed with
//! SIGKILL.
//!
//! The workload changes objects as a careful client does (read, change the
//! spec, write back what was read). A blind PUT of name and spec replaces
//! `metadata.finalizers` with none (Kubernetes' PUT semantics, which
//! docs/API.md keeps): an Instance changed that way and deleted before its
//! controller re-adds `corral/instance` is gone at once, its running domain
//! left to the agent's orphan sweep (up to 30 s) and its address released
//! meanwhile. This suite found that with blind PUTs; it is reported, not
//! hidden: the careful client is what the CLI (apply) and EC2 do.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_client::{Client, ClientError};
use corral_node_agent::hypervisor::{
    simulated_host, DiskSpec, DomainInfo, DomainSpec, HostFacts, PowerState, Result as HvResult,
};
use corral_node_agent::{Agent, AgentOptions, ApiClient, Hypervisor, Libvirt};
use corral_store::{EmbeddedStore, EtcdStore, Store};
use corral_test_support::{EtcdCluster, EtcdServer};
use serde_json::{json, Value};

#[path = "common/seeded.rs"]
mod seeded;
use seeded::{seed, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_corral");

// ---------------------------------------------------------------- helpers

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address").to_string()
}

/// A scratch directory (removed on drop), kept small.
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// A process this test started; SIGKILLed on drop.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM, then waits (SIGKILL after `grace`); answers whether it
    /// exited by itself.
    fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        signal(c.id(), "-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    let g = f.try_clone().expect("log file");
    (Stdio::from(f), Stdio::from(g))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The native API through `corral-client`, with the calls this suite
/// judges itself.
#[derive(Clone)]
struct Api {
    base: String,
    token: String,
    client: Client,
}

impl Api {
    fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.to_string(),
            token: token.to_string(),
            client: Client::with_ca(base, token, None)
                .expect("API client")
                .with_timeout(Duration::from_secs(10)),
        }
    }

    fn set_token(&mut self, token: String) {
        self.client = self.client.with_token(&token);
        self.token = token;
    }

    /// The status and body (null when not JSON); Err when nothing answered.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let (code, v) = self.client.exchange(method, path, body).await?;
        Ok((code.as_u16(), if v.is_string() { Value::Null } else { v }))
    }

    /// A request that must get a 2xx.
    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self
            .try_call(method.clone(), path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
        v
    }

    async fn healthy(&self) -> bool {
        matches!(
            self.client.exchange(reqwest::Method::GET, "/healthz", None).await,
            Ok((code, _)) if code.is_success()
        )
    }

    /// Every item of a list path (following continue tokens), and the
    /// list's revision.
    async fn list_all(&self, path: &str) -> Result<(Vec<Value>, String), String> {
        let list = self
            .client
            .list_all(path, &[])
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        Ok((list.items, list.resource_version))
    }
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f().await {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting for {what} (seed {:#x})",
        seed()
    );
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The admin token from the client config `corral up`/`server` wrote.
fn config_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("token: "))
        .map(|t| t.trim().trim_matches('\'').trim_matches('"').to_string())
}

/// The common environment of the processes we start.
fn child_env(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("CORRAL_CONFIG", home.join("config.yaml"))
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_TOKEN")
        .env_remove("CORRAL_PROJECT")
        .env_remove("CORRAL_DATA_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .stdin(Stdio::null());
}

// ------------------------------------------- a hypervisor that counts calls

/// How often the agent changed each domain's life: a guest restarted by
/// the agent shows up here even if its id were reused.
#[derive(Default, Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
struct Calls {
    define: u64,
    start: u64,
    destroy: u64,
    undefine: u64,
}

/// Delegates to libvirt and counts start/destroy/define/undefine per domain.
struct CountingHost {
    inner: Libvirt,
    calls: Mutex<BTreeMap<String, Calls>>,
}

impl CountingHost {
    fn open(dir: &Path, node: &str) -> Arc<CountingHost> {
        let uri = simulated_host(dir, node, 64, 256 * 1024).expect("simulated host");
        Arc::new(CountingHost {
            inner: Libvirt::open(&uri, "test").expect("libvirt test driver"),
            calls: Mutex::default(),
        })
    }
    fn count(&self, name: &str, f: impl FnOnce(&mut Calls)) {
        f(self
            .calls
            .lock()
            .expect("calls")
            .entry(name.to_string())
            .or_default());
    }
    fn calls(&self) -> BTreeMap<String, Calls> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Hypervisor for CountingHost {
    fn facts(&self) -> HvResult<HostFacts> {
        self.inner.facts()
    }
    fn list(&self) -> HvResult<Vec<DomainInfo>> {
        self.inner.list()
    }
    fn state(&self, name: &str) -> HvResult<Option<PowerState>> {
        self.inner.state(name)
    }
    fn define(&self, spec: &DomainSpec) -> HvResult<()> {
        let name = corral_node_agent::hypervisor::domain_name(&spec.uid);
        // `define` is "define if absent": count only real definitions.
        if self.inner.state(&name)?.is_none() {
            self.count(&name, |c| c.define += 1);
        }
        self.inner.define(spec)
    }
    fn start(&self, name: &str) -> HvResult<()> {
        self.count(name, |c| c.start += 1);
        self.inner.start(name)
    }
    fn shutdown(&self, name: &str) -> HvResult<()> {
        self.inner.shutdown(name)
    }
    fn destroy(&self, name: &str) -> HvResult<()> {
        self.count(name, |c| c.destroy += 1);
        self.inner.destroy(name)
    }
    fn undefine(&self, name: &str) -> HvResult<()> {
        self.count(name, |c| c.undefine += 1);
        self.inner.undefine(name)
    }
    fn pause(&self, name: &str) -> HvResult<()> {
        self.inner.pause(name)
    }
    fn resume(&self, name: &str) -> HvResult<()> {
        self.inner.resume(name)
    }
    fn save(&self, name: &str) -> HvResult<()> {
        self.inner.save(name)
    }
    fn reboot(&self, name: &str) -> HvResult<()> {
        self.inner.reboot(name)
    }
    fn attach_disk(&self, name: &str, disk: &DiskSpec) -> HvResult<()> {
        self.inner.attach_disk(name, disk)
    }
    fn detach_disk(&self, name: &str, target: &str) -> HvResult<()> {
        self.inner.detach_disk(name, target)
    }
    fn disk_targets(&self, name: &str) -> HvResult<Vec<String>> {
        self.inner.disk_targets(name)
    }
    fn node_of(&self, name: &str) -> HvResult<Option<String>> {
        self.inner.node_of(name)
    }
    fn sync_network(&self, name: &str, xml: &str, hosts: &[(String, String)]) -> HvResult<()> {
        self.inner.sync_network(name, xml, hosts)
    }
    fn networks(&self) -> HvResult<Vec<String>> {
        self.inner.networks()
    }
    fn remove_network(&self, name: &str) -> HvResult<()> {
        self.inner.remove_network(name)
    }
}

/// What a host window answers: every Corral domain with its state and id,
/// and the calls per domain.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
struct HostView {
    domains: Vec<(String, String, Option<u32>)>,
    calls: BTreeMap<String, Calls>,
}

fn host_view(h: &CountingHost) -> HostView {
    let mut domains: Vec<(String, String, Option<u32>)> = h
        .list()
        .expect("list domains")
        .into_iter()
        .map(|d| (d.name, format!("{:?}", d.state), d.id))
        .collect();
    domains.sort();
    HostView {
        domains,
        calls: h.calls(),
    }
}

// ----------------------------------------- 1. embedded store, kill -9

struct Up {
    proc: Proc,
    api: Api,
    log: PathBuf,
}

fn start_up(dir: &Path, addr: &str, ec2: &str, n: usize) -> Up {
    start_up_with(
        dir,
        addr,
        ec2,
        n,
        &["--libvirt", "test:///default", "--node", "chaos-up"],
    )
}

fn start_up_with(dir: &Path, addr: &str, ec2: &str, n: usize, extra: &[&str]) -> Up {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = dir.join(format!("up-{n}.log"));
    let (out, err) = log_file(&log);
    let mut cmd = Command::new(BIN);
    // Plain HTTP on loopback: these suites break the store and processes;
    // TLS is proven by tls.rs and the client suites.
    cmd.args([
        "up",
        "--insecure-http",
        "--listen",
        addr,
        "--ec2-listen",
        ec2,
    ])
    .arg("--data-dir")
    .arg(dir.join("data"))
    .args(extra)
    .arg("--agent-dir")
    .arg(dir.join("agent"))
    .env("RUST_LOG", "warn")
    .stdout(out)
    .stderr(err);
    child_env(&mut cmd, &home);
    let child = cmd.spawn().expect("start corral up");
    Up {
        proc: Proc { child: Some(child) },
        api: Api::new(&format!("http://{addr}"), ""),
        log,
    }
}

async fn wait_up(up: &mut Up, config: &Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if up.api.healthy().await {
            if let Some(t) = config_token(config) {
                up.api.set_token(t);
                return;
            }
        }
        if let Some(Ok(Some(status))) = up.proc.child.as_mut().map(|c| c.try_wait()) {
            panic!("corral up exited ({status}):\n{}", tail(&up.log, 30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("corral up not healthy:\n{}", tail(&up.log, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_kill9_during_write_burst() {
    const ROUNDS: u64 = 4;
    const WRITERS: usize = 32;
    let seed = seed();
    let mut rng = Rng::new(seed, 1);
    let dir = scratch("corral-chaos-up-");
    let config = dir.path().join("home/config.yaml");
    let (addr, ec2) = (free_addr(), free_addr());
    let store_file = dir.path().join("data/store.redb");
    let t_all = Instant::now();

    let mut up = start_up(dir.path(), &addr, &ec2, 0);
    wait_up(&mut up, &config).await;
    up.api
        .ok(
            reqwest::Method::POST,
            "/v1/projects",
            // Thousands of groups: far past the default count quota.
            Some(json!({"metadata": {"name": "chaos"}, "spec": {"quotas": {"securityGroups": 1000000}}})),
        )
        .await;

    // name -> description of every acknowledged create, all rounds.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.range(150, 700));
        let acks = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let unexpected = Arc::new(Mutex::new(Vec::<String>::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let api = up.api.clone();
            let (acks, unexpected, failed) = (acks.clone(), unexpected.clone(), failed.clone());
            writers.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let name = format!("r{round}-w{w}-{i}");
                    let description = format!("seed {seed:#x} round {round} writer {w} #{i}");
                    let body =
                        json!({"metadata": {"name": name}, "spec": {"description": description}});
                    match api
                        .try_call(
                            reqwest::Method::POST,
                            "/v1/projects/chaos/securitygroups",
                            Some(&body),
                        )
                        .await
                    {
                        Ok((201, _)) => acks.lock().unwrap().push((name, description)),
                        Ok((code, v)) => unexpected
                            .lock()
                            .unwrap()
                            .push(format!("{name}: {code} {v}")),
                        // The server is gone: this create may or may not
                        // have been written; it was not acknowledged.
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(kill_after).await;
        up.proc.kill9();
        for w in writers {
            w.await.unwrap();
        }
        let unexpected = unexpected.lock().unwrap().clone();
        assert!(unexpected.is_empty(), "creates refused: {unexpected:#?}");
        let round_acks = std::mem::take(&mut *acks.lock().unwrap());
        let n_acked = round_acks.len();
        acked.extend(round_acks);

        // The file is whole before anything opens it again.
        let intact = EmbeddedStore::check_integrity(&store_file).expect("integrity check runs");
        assert!(
            intact,
            "store file corrupt after SIGKILL (seed {seed:#x}, round {round})"
        );

        let t_restart = Instant::now();
        up = start_up(dir.path(), &addr, &ec2, round as usize + 1);
        wait_up(&mut up, &config).await;
        let restart = t_restart.elapsed();
        let (items, _) = up
            .api
            .list_all("/v1/projects/chaos/securitygroups")
            .await
            .expect("list after restart");
        let found: BTreeMap<String, String> = items
            .iter()
            .map(|i| {
                (
                    name_of(i),
                    i["spec"]["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|(n, d)| found.get(*n) != Some(*d))
            .map(|(n, _)| n)
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged creates lost after SIGKILL (seed {seed:#x}, round {round}): {lost:?}"
        );
        let log = std::fs::read_to_string(&up.log).unwrap_or_default();
        assert!(
            !log.contains("panicked") && !log.contains(" ERROR "),
            "corral up did not start cleanly:\n{log}"
        );
        println!(
            "chaos/embedded round {round}: SIGKILL after {kill_after:?}: {n_acked} creates acknowledged, {} in flight unacknowledged; after restart ({restart:?}) {} objects, all {} acknowledged present with their bytes; integrity ok; clean start",
            failed.load(Ordering::Relaxed),
            found.len(),
            acked.len()
        );
    }
    // A clean stop leaves a clean file too.
    assert!(
        up.proc.terminate(Duration::from_secs(15)),
        "corral up ignored SIGTERM"
    );
    assert!(EmbeddedStore::check_integrity(&store_file).unwrap());
    println!(
        "chaos/embedded: {ROUNDS} rounds, {} acknowledged creates checked, seed {seed:#x}, {:?}",
        acked.len(),
        t_all.elapsed()
    );
}

// ------------------------------ 2. etcd compaction while watchers are behind

/// A `corral server` process on etcd.
struct ServerProc {
    proc: Proc,
    api: Api,
    addr: String,
    ec2: String,
    log: PathBuf,
    /// Set while its stderr says it leads the controllers.
    leading: Arc<AtomicBool>,
}

fn spawn_server(
    dir: &Path,
    name: &str,
    etcd: &str,
    addr: &str,
    ec2: &str,
    extra: &[&str],
) -> ServerProc {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(BIN);
    cmd.args([
        "server",
        "--insecure-http",
        "--etcd",
        etcd,
        "--listen",
        addr,
        "--ec2-listen",
        ec2,
    ])
    .arg("--blob-dir")
    .arg(dir.join("blobs"))
    .args(extra)
    .env("RUST_LOG", "warn,corral_runtime::leader=info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    child_env(&mut cmd, &home);
    let mut child = cmd.spawn().expect("start corral server");
    let leading = Arc::new(AtomicBool::new(false));
    let stderr = child.stderr.take().unwrap();
    {
        let leading = leading.clone();
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("became leader") {
                    leading.store(true, Ordering::SeqCst);
                } else if line.contains("stepping down") {
                    leading.store(false, Ordering::SeqCst);
                }
                let _ = writeln!(out, "{line}");
            }
            leading.store(false, Ordering::SeqCst);
        });
    }
    ServerProc {
        proc: Proc { child: Some(child) },
        api: Api::new(&format!("http://{addr}"), ""),
        addr: addr.to_string(),
        ec2: ec2.to_string(),
        log,
        leading,
    }
}

async fn wait_healthy(s: &mut ServerProc) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if s.api.healthy().await {
            return;
        }
        if let Some(Ok(Some(status))) = s.proc.child.as_mut().map(|c| c.try_wait()) {
            panic!("corral server exited ({status}):\n{}", tail(&s.log, 30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("corral server not healthy:\n{}", tail(&s.log, 30));
}

async fn wait_config_token(home: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(t) = config_token(&home.join("config.yaml")) {
            return t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no client config written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a watcher knows: name -> (resourceVersion, description).
type Seen = BTreeMap<String, (String, String)>;

/// A native API watch client that keeps a copy of a collection the way
/// every client must: list, watch from the list's revision, relist on 410.
struct Watcher {
    api: Api,
    path: String,
    seen: Seen,
    rev: String,
    stream: Option<reqwest::Response>,
    buf: Vec<u8>,
    relists: u32,
    expired_mid_stream: u32,
    expired_at_start: u32,
}

enum Next {
    Event,
    Expired,
    Ended,
}

impl Watcher {
    async fn new(api: &Api, path: &str) -> Watcher {
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

    async fn relist(&mut self) {
        let (items, rev) = self.api.list_all(&self.path).await.expect("relist");
        self.seen = items.iter().map(|i| (name_of(i), entry(i))).collect();
        self.rev = rev;
        self.relists += 1;
    }

    /// Opens the watch from the last revision seen; a 410 relists first.
    async fn open(&mut self) {
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
    async fn next(&mut self) -> Next {
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
    async fn catch_up(&mut self, target: u64, truth: &Seen) {
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

fn entry(i: &Value) -> (String, String) {
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
async fn churn(api: &Api, rng: &mut Rng, ops: usize, tag: &str, live: &mut Vec<String>) -> usize {
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
async fn watchers_behind_etcd_compaction_relist_and_miss_nothing() {
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

// ------------------------------------------- 3. a node agent cut off

/// Not a chaos test by itself: the body of the agent process that
/// `stopped_agent_goes_unknown_and_returns_without_restarting_guests`
/// starts by re-executing this test binary. In a normal run it returns at
/// once.
///
/// It runs what `corral agent` runs (the same `Agent` with `corral
/// agent`'s default options, over HTTP with a node token) on a simulated
/// host it owns, and answers any TCP connection on
/// `CORRAL_CHAOS_AGENT_WINDOW` with that host's domains and the calls the
/// agent made on each ([`HostView`]). It exits when its stdin closes (the
/// test is gone).
#[test]
fn agent_host_process() {
    let Ok(server) = std::env::var("CORRAL_CHAOS_AGENT_SERVER") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (token, node) = (
        env("CORRAL_CHAOS_AGENT_TOKEN"),
        env("CORRAL_CHAOS_AGENT_NODE"),
    );
    let (window, dir) = (
        env("CORRAL_CHAOS_AGENT_WINDOW"),
        PathBuf::from(env("CORRAL_CHAOS_AGENT_DIR")),
    );
    std::thread::spawn(|| {
        let mut b = [0u8; 64];
        while std::io::stdin()
            .read(&mut b)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let host = CountingHost::open(&dir, &node);
        let listener = tokio::net::TcpListener::bind(&window)
            .await
            .expect("window");
        let h = host.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut b = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let body = serde_json::to_string(&host_view(&h)).unwrap();
                let _ = conn
                    .write_all(
                        format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}")
                            .as_bytes(),
                    )
                    .await;
            }
        });
        let mut opts = AgentOptions::new(&node);
        opts.state_dir = dir.join("agent");
        let agent = Agent::new(ApiClient::new(&server, &token), host, opts);
        let (_stop, rx) = tokio::sync::watch::channel(false);
        agent.run(rx).await.expect("agent");
    });
}

/// An agent process started from [`agent_host_process`].
struct AgentProc {
    proc: Proc,
    window: String,
    _stdin: std::process::ChildStdin,
}

fn spawn_agent_process(dir: &Path, server: &str, token: &str, node: &str) -> AgentProc {
    let window = free_addr();
    let host_dir = dir.join(node);
    std::fs::create_dir_all(&host_dir).unwrap();
    let (out, err) = log_file(&dir.join(format!("{node}.log")));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "agent_host_process",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CORRAL_CHAOS_AGENT_SERVER", server)
        .env("CORRAL_CHAOS_AGENT_TOKEN", token)
        .env("CORRAL_CHAOS_AGENT_NODE", node)
        .env("CORRAL_CHAOS_AGENT_WINDOW", &window)
        .env("CORRAL_CHAOS_AGENT_DIR", &host_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start the agent process");
    let stdin = child.stdin.take().unwrap();
    AgentProc {
        proc: Proc { child: Some(child) },
        window,
        _stdin: stdin,
    }
}

/// What the agent process's host holds (waits for the window to open).
fn look_at_host(agent: &AgentProc) -> HostView {
    let t0 = Instant::now();
    loop {
        let answer = std::net::TcpStream::connect(&agent.window).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        if let Ok(text) = answer {
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                return serde_json::from_str(body).expect("host view");
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent window never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates a project with a network and an image (simulated hosts need
/// no bytes).
async fn seed_project(api: &Api, project: &str, cidr: &str) {
    // The workload makes networks round after round: past the default
    // count quota over a long run.
    api.ok(
        reqwest::Method::POST,
        "/v1/projects",
        Some(json!({"metadata": {"name": project}, "spec": {"quotas": {"networks": 1000000}}})),
    )
    .await;
    api.ok(
        reqwest::Method::POST,
        &format!("/v1/projects/{project}/networks"),
        Some(json!({"metadata": {"name": "lan"}, "spec": {"cidr": cidr, "mode": "isolated"}})),
    )
    .await;
    api.ok(
        reqwest::Method::POST,
        &format!("/v1/projects/{project}/images"),
        Some(json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}})),
    )
    .await;
}

async fn node_token(api: &Api, node: &str) -> String {
    let issued = api
        .ok(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({"name": format!("node-{node}"), "role": "node", "nodeName": node})),
        )
        .await;
    issued["token"].as_str().expect("node token").to_string()
}

fn ready_status(node: &Value) -> String {
    condition(node, "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn phase(i: &Value) -> &str {
    i["status"]["phase"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_agent_goes_unknown_and_returns_without_restarting_guests() {
    let t_all = Instant::now();
    let dir = scratch("corral-chaos-agent-");
    let config = dir.path().join("home/config.yaml");
    let mut up = start_up_with(dir.path(), &free_addr(), &free_addr(), 0, &["--no-agent"]);
    wait_up(&mut up, &config).await;
    let api = up.api.clone();
    seed_project(&api, "cut", "10.77.0.0/24").await;
    let token = node_token(&api, "sim-cut").await;
    let agent = spawn_agent_process(dir.path(), &api.base, &token, "sim-cut");
    for n in 0..3 {
        api.ok(
            reqwest::Method::POST,
            "/v1/projects/cut/instances",
            Some(json!({"metadata": {"name": format!("vm-{n}")}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}]}})),
        )
        .await;
    }
    let instances = || async {
        api.list_all("/v1/projects/cut/instances")
            .await
            .map(|x| x.0)
            .unwrap_or_default()
    };
    let node = || async {
        api.ok(reqwest::Method::GET, "/v1/nodes/sim-cut", None)
            .await
    };
    until("3 instances Running", Duration::from_secs(40), || async {
        let is = instances().await;
        is.len() == 3 && is.iter().all(|i| phase(i) == "Running")
    })
    .await;
    let before = look_at_host(&agent);
    assert_eq!(before.domains.len(), 3, "{before:?}");
    assert!(
        before.calls.values().all(|c| c.start == 1 && c.define == 1),
        "{before:?}"
    );

    signal(agent.proc.pid(), "-STOP");
    let unknown_after = until(
        "Node and Instances Unknown",
        Duration::from_secs(40),
        || async {
            let is = instances().await;
            ready_status(&node().await) == "Unknown" && is.iter().all(|i| phase(i) == "Unknown")
        },
    )
    .await;
    // Unknown, never Failed or moved elsewhere.
    for i in instances().await {
        assert_eq!(i["status"]["nodeName"], "sim-cut", "{i}");
    }
    signal(agent.proc.pid(), "-CONT");
    let back_after = until(
        "Node Ready and Instances Running again",
        Duration::from_secs(40),
        || async {
            let is = instances().await;
            ready_status(&node().await) == "True" && is.iter().all(|i| phase(i) == "Running")
        },
    )
    .await;
    let after = look_at_host(&agent);
    assert_eq!(
        after, before,
        "the agent's return changed its guests (domains with ids, and start/destroy/define calls)"
    );
    // The node grace is 15 s after the last heartbeat (every 5 s).
    assert!(
        unknown_after <= Duration::from_secs(25),
        "Unknown only after {unknown_after:?}"
    );
    println!(
        "chaos/agent-cut: SIGSTOP: Node and 3 Instances Unknown after {unknown_after:?}; SIGCONT: Ready/Running after {back_after:?}; same 3 domains with the same ids, no start/destroy/define since; {:?}",
        t_all.elapsed()
    );
}

// ------------------------- 4. SIGKILL rounds on a 3-member etcd cluster

/// A node agent inside this process on its own runtime, over a host that
/// outlives it.
struct InProcAgent {
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl InProcAgent {
    fn start(
        dir: &Path,
        server: &str,
        token: &str,
        node: &str,
        host: Arc<CountingHost>,
    ) -> InProcAgent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("agent-{node}"))
            .enable_all()
            .build()
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        {
            let _in = rt.enter();
            // `corral agent`'s defaults.
            let mut opts = AgentOptions::new(node);
            opts.state_dir = dir.join(node);
            let agent = Agent::new(ApiClient::new(server, token), host, opts);
            rt.spawn(async move {
                let _ = agent.run(rx).await;
            });
        }
        InProcAgent {
            rt: Some(rt),
            stop: Some(stop),
        }
    }

    /// Drops every task of the agent at once: no shutdown path runs.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.stop.take();
    }
}

impl Drop for InProcAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a client may assume about an object after its acknowledged writes.
#[derive(Clone, Debug)]
enum Expect {
    /// The last write was acknowledged: these spec fields hold.
    Present(Value),
    /// Acknowledged delete.
    Gone,
    /// The last write was not acknowledged (the server or etcd died under
    /// it): either outcome is allowed.
    Uncertain { deleting: bool },
}

#[derive(Clone, Debug)]
struct Tracked {
    plural: &'static str,
    name: String,
    expect: Expect,
    /// The round of the last write attempted.
    round: u64,
}

#[derive(Default)]
struct Tally {
    acked: u64,
    uncertain: u64,
    /// 4xx on objects whose state was known: a finding.
    anomalies: Vec<String>,
}

enum Outcome {
    Acked(Value),
    Refused(u16, Value),
    /// No answer: the write may or may not have happened.
    Unknown,
    /// Nothing was written (a read before the write failed).
    Skipped,
}

/// A client that knows both servers: a request that could not connect
/// goes to the other (it was never sent); anything else is an answer.
async fn send(
    apis: &[Api],
    first: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Outcome {
    for k in 0..apis.len() {
        let api = &apis[(first + k) % apis.len()];
        match api.try_call(method.clone(), path, body).await {
            Ok((code, v)) if (200..300).contains(&code) => return Outcome::Acked(v),
            Ok((code, v)) if (400..500).contains(&code) => return Outcome::Refused(code, v),
            Ok(_) => return Outcome::Unknown,
            Err(ClientError::Unreachable { .. }) => continue,
            Err(_) => return Outcome::Unknown,
        }
    }
    Outcome::Unknown
}

/// A change as a careful client makes it: read the object, change its
/// spec, write it back with what was read (its resourceVersion and
/// finalizers); 409: read again. (A blind PUT of name and spec would also
/// replace `metadata.finalizers` with none: see the module docs.)
async fn read_modify_write(apis: &[Api], first: usize, path: &str, fields: &Value) -> Outcome {
    for _ in 0..8 {
        let mut obj = match send(apis, first, reqwest::Method::GET, path, None).await {
            Outcome::Acked(v) => v,
            Outcome::Refused(c, v) => return Outcome::Refused(c, v),
            Outcome::Unknown | Outcome::Skipped => return Outcome::Skipped,
        };
        for (k, v) in fields.as_object().expect("fields") {
            obj["spec"][k] = v.clone();
        }
        obj.as_object_mut().expect("object").remove("status");
        match send(apis, first, reqwest::Method::PUT, path, Some(&obj)).await {
            Outcome::Refused(409, _) => continue,
            other => return other,
        }
    }
    Outcome::Refused(409, json!("8 conflicts in a row"))
}

fn instance_spec(power: &str, gen: u64) -> Value {
    json!({"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}],
           "powerState": power, "tags": {"gen": gen.to_string()}})
}

/// One workload worker: creates, changes and deletes its own instances,
/// volumes and networks until `stop`.
#[allow(clippy::too_many_arguments)]
async fn workload(
    w: usize,
    seed: u64,
    apis: Vec<Api>,
    objects: Arc<Mutex<BTreeMap<String, Tracked>>>,
    tally: Arc<Mutex<Tally>>,
    round: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(seed, 100 + w as u64 + 1000 * round.load(Ordering::SeqCst));
    while !stop.load(Ordering::SeqCst) {
        let r = round.load(Ordering::SeqCst);
        let mine: Vec<Tracked> = objects
            .lock()
            .unwrap()
            .values()
            .filter(|t| t.name.starts_with(&format!("w{w}-")))
            .filter(|t| {
                !matches!(
                    t.expect,
                    Expect::Gone | Expect::Uncertain { deleting: true }
                )
            })
            .cloned()
            .collect();
        let of = |p: &str| {
            mine.iter()
                .filter(|t| t.plural == p)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (instances, volumes, networks) = (of("instances"), of("volumes"), of("networks"));
        let choice = rng.range(0, 100);
        let n = counter.fetch_add(1, Ordering::SeqCst);
        // (plural, name, method, body, expected spec fields if acked)
        let (plural, name, method, body, fields): (
            &'static str,
            String,
            reqwest::Method,
            Option<Value>,
            Option<Value>,
        ) = if choice < 30 && instances.len() < 3 {
            let name = format!("w{w}-i{n}");
            let spec = instance_spec("Running", 0);
            (
                "instances",
                name.clone(),
                reqwest::Method::POST,
                Some(json!({"metadata": {"name": name}, "spec": spec})),
                Some(json!({"powerState": "Running", "tags": {"gen": "0"}})),
            )
        } else if choice < 55 && !instances.is_empty() {
            let t = &instances[rng.range(0, instances.len() as u64) as usize];
            let power = if rng.chance(40) { "Stopped" } else { "Running" };
            let gen = n;
            (
                "instances",
                t.name.clone(),
                reqwest::Method::PUT,
                Some(json!({"metadata": {"name": t.name}, "spec": instance_spec(power, gen)})),
                Some(json!({"powerState": power, "tags": {"gen": gen.to_string()}})),
            )
        } else if choice < 65 && !instances.is_empty() {
            let t = &instances[rng.range(0, instances.len() as u64) as usize];
            (
                "instances",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if choice < 75 && volumes.len() < 3 {
            let name = format!("w{w}-v{n}");
            (
                "volumes",
                name.clone(),
                reqwest::Method::POST,
                Some(
                    json!({"metadata": {"name": name}, "spec": {"sizeGiB": 1, "tags": {"gen": "0"}}}),
                ),
                Some(json!({"sizeGiB": 1, "tags": {"gen": "0"}})),
            )
        } else if choice < 80 && !volumes.is_empty() {
            let t = &volumes[rng.range(0, volumes.len() as u64) as usize];
            (
                "volumes",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if choice < 88 && networks.len() < 2 {
            let name = format!("w{w}-n{n}");
            let cidr = format!("10.{}.{}.0/24", 200 + w, n % 250);
            (
                "networks",
                name.clone(),
                reqwest::Method::POST,
                Some(
                    json!({"metadata": {"name": name}, "spec": {"cidr": cidr, "mode": "isolated", "tags": {"gen": "0"}}}),
                ),
                Some(json!({"cidr": cidr, "tags": {"gen": "0"}})),
            )
        } else if choice < 94 && !networks.is_empty() {
            let t = &networks[rng.range(0, networks.len() as u64) as usize];
            (
                "networks",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if !volumes.is_empty() {
            let t = &volumes[rng.range(0, volumes.len() as u64) as usize];
            let gen = n.to_string();
            (
                "volumes",
                t.name.clone(),
                reqwest::Method::PUT,
                Some(
                    json!({"metadata": {"name": t.name}, "spec": {"sizeGiB": 1, "tags": {"gen": gen}}}),
                ),
                Some(json!({"sizeGiB": 1, "tags": {"gen": gen}})),
            )
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let path = if method == reqwest::Method::POST {
            format!("/v1/projects/chaos/{plural}")
        } else {
            format!("/v1/projects/chaos/{plural}/{name}")
        };
        let deleting = method == reqwest::Method::DELETE;
        let key = format!("{plural}/{name}");
        let before = objects.lock().unwrap().get(&key).map(|t| t.expect.clone());
        let first = rng.range(0, 2) as usize;
        let outcome = if method == reqwest::Method::PUT && rng.chance(50) {
            // The GitOps path: the manifest (whole spec) applied.
            let mut manifest = body.clone().expect("body");
            manifest["apiVersion"] = json!("corral/v1");
            manifest["kind"] = json!(if plural == "instances" {
                "Instance"
            } else {
                "Volume"
            });
            manifest["metadata"]["project"] = json!("chaos");
            send(
                &apis,
                first,
                reqwest::Method::POST,
                "/v1/apply",
                Some(&manifest),
            )
            .await
        } else if method == reqwest::Method::PUT {
            read_modify_write(&apis, first, &path, fields.as_ref().expect("fields")).await
        } else {
            send(&apis, first, method.clone(), &path, body.as_ref()).await
        };
        let expect = match outcome {
            Outcome::Acked(_) => {
                tally.lock().unwrap().acked += 1;
                if deleting {
                    Expect::Gone
                } else {
                    Expect::Present(fields.unwrap())
                }
            }
            // Asked of an object whose last write was lost: it is not there.
            Outcome::Refused(404, _) if matches!(before, Some(Expect::Uncertain { .. })) => {
                Expect::Gone
            }
            Outcome::Refused(code, v) => {
                tally
                    .lock()
                    .unwrap()
                    .anomalies
                    .push(format!("{method} {path}: {code} {v}"));
                before.clone().unwrap_or(Expect::Gone)
            }
            Outcome::Skipped => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Outcome::Unknown => {
                tally.lock().unwrap().uncertain += 1;
                Expect::Uncertain { deleting }
            }
        };
        objects.lock().unwrap().insert(
            key,
            Tracked {
                plural,
                name,
                expect,
                round: r,
            },
        );
        tokio::time::sleep(Duration::from_millis(rng.range(10, 80))).await;
    }
}

/// Everything observed at one moment.
struct Snapshot {
    instances: Vec<Value>,
    volumes: Vec<Value>,
    networks: Vec<Value>,
    nodes: Vec<Value>,
    /// node -> host view
    hosts: BTreeMap<String, HostView>,
}

async fn snapshot(apis: &[Api], hosts: &BTreeMap<String, Arc<CountingHost>>) -> Option<Snapshot> {
    for api in apis {
        let get = |p: &'static str| async move { api.list_all(p).await.ok().map(|x| x.0) };
        let (Some(instances), Some(volumes), Some(networks), Some(nodes)) = (
            get("/v1/projects/chaos/instances").await,
            get("/v1/projects/chaos/volumes").await,
            get("/v1/projects/chaos/networks").await,
            get("/v1/nodes").await,
        ) else {
            continue;
        };
        let hosts = hosts
            .iter()
            .map(|(n, h)| (n.clone(), host_view(h)))
            .collect();
        return Some(Snapshot {
            instances,
            volumes,
            networks,
            nodes,
            hosts,
        });
    }
    None
}

fn uid_of(v: &Value) -> String {
    v["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// An instance in brief, to explain a finding.
fn summary(i: &Value) -> String {
    format!(
        "{} rv {} phase {:?} node {} deletion {} finalizers {} message {}",
        name_of(i),
        i["metadata"]["resourceVersion"],
        phase(i),
        i["status"]["nodeName"],
        i["metadata"]["deletionTimestamp"],
        i["metadata"]["finalizers"],
        i["status"]["message"]
    )
}

/// Says why an object being deleted is still there, if it says anything.
fn visible_reason(v: &Value) -> Option<String> {
    if let Some(m) = v["status"]["message"].as_str().filter(|m| !m.is_empty()) {
        return Some(m.to_string());
    }
    v["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .filter_map(|c| c["message"].as_str().filter(|m| !m.is_empty()))
            .map(|m| m.to_string())
            .next()
    })
}

/// Every way the cluster is not (yet) converged and consistent; empty when
/// all invariants hold. Counts the checks made into `checks`.
fn violations(
    s: &Snapshot,
    history: &BTreeMap<String, Value>,
    checks: &mut BTreeMap<&'static str, usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, ok: bool, what: String| {
        *checks.entry(name).or_default() += 1;
        if !ok {
            out.push(format!("{name}: {what}"));
        }
    };
    for n in &s.nodes {
        check(
            "node Ready",
            ready_status(n) == "True",
            format!("node {} is {}", name_of(n), ready_status(n)),
        );
    }
    // uid -> (node, state) of every domain on every host.
    let mut domains: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (node, view) in &s.hosts {
        for (name, state, _) in &view.domains {
            let uid = name.strip_prefix("corral-").unwrap_or(name).to_string();
            domains
                .entry(uid)
                .or_default()
                .push((node.clone(), state.clone()));
        }
    }
    let by_uid: BTreeMap<String, &Value> = s.instances.iter().map(|i| (uid_of(i), i)).collect();
    for i in &s.instances {
        let name = name_of(i);
        let want = i["spec"]["powerState"].as_str().unwrap_or("Running");
        check(
            "nothing deleting",
            !deleting(i),
            format!("instance {name} still deleting ({:?})", visible_reason(i)),
        );
        if deleting(i) {
            continue;
        }
        check(
            "phase matches powerState",
            phase(i) == want,
            format!("instance {name} is {:?}, wants {want}", phase(i)),
        );
        let node = i["status"]["nodeName"].as_str().unwrap_or("");
        let doms = domains.get(&uid_of(i)).cloned().unwrap_or_default();
        let want_state = if want == "Running" {
            "Running"
        } else {
            "Shutoff"
        };
        check(
            "one domain per instance, on its node",
            doms.len() == 1 && doms[0].0 == node && doms[0].1 == want_state,
            format!("instance {name} (node {node:?}, wants {want_state}) has domains {doms:?}"),
        );
    }
    for (uid, doms) in &domains {
        let owner = by_uid.get(uid);
        for (node, _) in doms {
            check(
                "no domain without an owner",
                owner.is_some_and(|i| i["status"]["nodeName"] == node.as_str()),
                format!(
                    "domain corral-{uid} on {node} has no Instance bound there (last seen: {}; calls {:?})",
                    history
                        .get(uid)
                        .map(summary)
                        .unwrap_or_else(|| "never".into()),
                    s.hosts[node].calls.get(&format!("corral-{uid}"))
                ),
            );
        }
    }
    for v in &s.volumes {
        check(
            "nothing deleting",
            !deleting(v),
            format!(
                "volume {} still deleting ({:?})",
                name_of(v),
                visible_reason(v)
            ),
        );
        check(
            "volume available",
            deleting(v) || phase(v) == "available",
            format!("volume {} is {:?}", name_of(v), phase(v)),
        );
    }
    // IPAM: every allocation has its owner, every address its allocation.
    let by_name: BTreeMap<String, &Value> = s.instances.iter().map(|i| (name_of(i), i)).collect();
    let mut allocated: BTreeSet<(String, String)> = BTreeSet::new();
    for net in &s.networks {
        check(
            "nothing deleting",
            !deleting(net),
            format!(
                "network {} still deleting ({:?})",
                name_of(net),
                visible_reason(net)
            ),
        );
        let allocations = net["status"]["allocations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (ip, owner) in allocations {
            let owner = owner.as_str().unwrap_or_default().to_string();
            // `<instance>/<nic>` (floating addresses are `Address/<name>`;
            // this workload makes none).
            let inst = (!owner.starts_with("Address/"))
                .then(|| owner.strip_prefix("Instance/").unwrap_or(&owner))
                .and_then(|r| r.split('/').next());
            let has = inst.and_then(|n| by_name.get(n)).is_some_and(|i| {
                i["status"]["addresses"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["ip"] == ip.as_str() && x["network"] == name_of(net).as_str())
                })
            });
            check(
                "no IP allocation without an owner",
                has,
                format!(
                    "{}: {ip} allocated to {owner}, which does not hold it",
                    name_of(net)
                ),
            );
            allocated.insert((name_of(net), ip));
        }
    }
    for i in &s.instances {
        if deleting(i) {
            continue;
        }
        let addrs = i["status"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        check(
            "every NIC addressed",
            !addrs.is_empty(),
            format!("instance {} has no address", name_of(i)),
        );
        for a in addrs {
            let key = (
                a["network"].as_str().unwrap_or("").to_string(),
                a["ip"].as_str().unwrap_or("").to_string(),
            );
            check(
                "every address allocated",
                allocated.contains(&key),
                format!(
                    "instance {} holds {key:?} without an allocation",
                    name_of(i)
                ),
            );
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Server,
    Leader,
    Agent,
    EtcdMember,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_on_three_member_etcd() {
    let seed = seed();
    let rounds: u64 = std::env::var("CORRAL_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let mut rng = Rng::new(seed, 4);
    let t_all = Instant::now();
    let dir = scratch("corral-chaos-cluster-");
    let mut etcd = EtcdCluster::start(3).await.expect("a 3-member etcd");
    let endpoints = etcd.endpoints().join(",");
    let addrs: Vec<(String, String)> = (0..2).map(|_| (free_addr(), free_addr())).collect();
    let server_args = |i: usize| -> Vec<&'static str> {
        if i == 0 {
            vec!["--write-config"]
        } else {
            vec![]
        }
    };
    let mut servers: Vec<ServerProc> = (0..2)
        .map(|i| {
            spawn_server(
                dir.path(),
                &format!("server-{i}"),
                &endpoints,
                &addrs[i].0,
                &addrs[i].1,
                &server_args(i),
            )
        })
        .collect();
    for s in servers.iter_mut() {
        wait_healthy(s).await;
    }
    let token = wait_config_token(&dir.path().join("home")).await;
    let apis: Vec<Api> = servers
        .iter()
        .map(|s| Api::new(&s.api.base, &token))
        .collect();
    seed_project(&apis[0], "chaos", "10.88.0.0/16").await;

    let nodes = ["sim-a", "sim-b"];
    let mut hosts: BTreeMap<String, Arc<CountingHost>> = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    let mut agents: Vec<InProcAgent> = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let host = CountingHost::open(dir.path(), node);
        let t = node_token(&apis[0], node).await;
        // Each agent talks to one server, as a real agent is configured.
        agents.push(InProcAgent::start(
            dir.path(),
            &apis[k].base,
            &t,
            node,
            host.clone(),
        ));
        hosts.insert(node.to_string(), host);
        tokens.insert(node.to_string(), t);
    }
    until("both nodes Ready", Duration::from_secs(30), || async {
        let (items, _) = apis[0].list_all("/v1/nodes").await.unwrap_or_default();
        items.len() == 2 && items.iter().all(|n| ready_status(n) == "True")
    })
    .await;
    println!(
        "chaos/cluster: seed {seed:#x}; 3 etcd members, 2 servers, 2 agents up after {:?}",
        t_all.elapsed()
    );

    // Every target once in a seeded order, then seeded picks.
    let mut order = vec![
        Target::Server,
        Target::Leader,
        Target::Agent,
        Target::EtcdMember,
    ];
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    while (order.len() as u64) < rounds {
        let pick = order[rng.range(0, 4) as usize];
        order.push(pick);
    }
    let objects: Arc<Mutex<BTreeMap<String, Tracked>>> = Arc::default();
    let round_no = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let mut all_checks: BTreeMap<&'static str, usize> = BTreeMap::new();
    // The last version seen of every instance, by uid.
    let mut history: BTreeMap<String, Value> = BTreeMap::new();
    for round in 0..rounds {
        let t_round = Instant::now();
        round_no.store(round, Ordering::SeqCst);
        let target = order[round as usize];
        let before = snapshot(&apis, &hosts).await.expect("a server answers");
        for i in &before.instances {
            history.insert(uid_of(i), i.clone());
        }
        let tally: Arc<Mutex<Tally>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                tokio::spawn(workload(
                    w,
                    seed,
                    apis.clone(),
                    objects.clone(),
                    tally.clone(),
                    round_no.clone(),
                    stop.clone(),
                    counter.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.range(500, 2000))).await;
        let downtime = Duration::from_millis(rng.range(200, 1500));
        let victim = match target {
            Target::Server | Target::Leader => {
                let leader = if target == Target::Leader {
                    let t0 = Instant::now();
                    loop {
                        if let Some(i) = servers
                            .iter()
                            .position(|s| s.leading.load(Ordering::SeqCst))
                        {
                            break i;
                        }
                        assert!(t0.elapsed() < Duration::from_secs(30), "no server leads");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } else {
                    // A server that does not lead (either, if none does).
                    servers
                        .iter()
                        .position(|s| !s.leading.load(Ordering::SeqCst))
                        .unwrap_or(rng.range(0, 2) as usize)
                };
                let i = leader;
                let pid = servers[i].proc.pid();
                servers[i].proc.kill9();
                tokio::time::sleep(downtime).await;
                let (addr, ec2) = (servers[i].addr.clone(), servers[i].ec2.clone());
                servers[i] = spawn_server(
                    dir.path(),
                    &format!("server-{i}"),
                    &endpoints,
                    &addr,
                    &ec2,
                    &[],
                );
                wait_healthy(&mut servers[i]).await;
                format!(
                    "server-{i} (pid {pid}{})",
                    if target == Target::Leader {
                        ", the leader"
                    } else {
                        ""
                    }
                )
            }
            Target::Agent => {
                let k = rng.range(0, 2) as usize;
                agents[k].kill();
                tokio::time::sleep(downtime).await;
                let node = nodes[k];
                agents[k] = InProcAgent::start(
                    dir.path(),
                    &apis[k].base,
                    &tokens[node],
                    node,
                    hosts[node].clone(),
                );
                format!("agent {node}")
            }
            Target::EtcdMember => {
                let m = rng.range(0, 3) as usize;
                let pid = etcd.pid(m).unwrap_or(0);
                etcd.kill(m);
                tokio::time::sleep(downtime).await;
                etcd.restart(m).await.expect("etcd member restarts");
                format!("etcd member m{m} (pid {pid})")
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        let workload_done = t_round.elapsed();

        // Converge: every check passes, and some server leads.
        let t_conv = Instant::now();
        let mut last = Vec::new();
        let mut checks = BTreeMap::new();
        let mut converged = None;
        let mut report_at = Duration::from_secs(5);
        while t_conv.elapsed() < Duration::from_secs(60) {
            if t_conv.elapsed() >= report_at && !last.is_empty() {
                println!(
                    "  round {round}: not converged after {report_at:?}: {}",
                    last.iter().take(4).cloned().collect::<Vec<_>>().join("; ")
                );
                report_at += Duration::from_secs(5);
            }
            let leads = servers.iter().any(|s| s.leading.load(Ordering::SeqCst));
            if let Some(s) = snapshot(&apis, &hosts).await {
                for i in &s.instances {
                    history.insert(uid_of(i), i.clone());
                }
                checks.clear();
                last = violations(&s, &history, &mut checks);
                if !leads {
                    last.push("no server leads the controllers".into());
                }
                if last.is_empty() {
                    converged = Some(s);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(now) = converged else {
            panic!(
                "round {round} ({target:?}: {victim}) did not converge in 60 s (seed {seed:#x}):\n{}",
                last.join("\n")
            );
        };
        let converge_time = t_conv.elapsed();

        // Every acknowledged write is in the store.
        let tracked: Vec<Tracked> = objects.lock().unwrap().values().cloned().collect();
        let mut lost = Vec::new();
        let mut checked_writes = 0;
        for t in &tracked {
            let list = match t.plural {
                "instances" => &now.instances,
                "volumes" => &now.volumes,
                _ => &now.networks,
            };
            let live = list.iter().find(|o| name_of(o) == t.name);
            match (&t.expect, live) {
                (Expect::Present(fields), Some(o)) => {
                    checked_writes += 1;
                    for (k, v) in fields.as_object().unwrap() {
                        if o["spec"][k] != *v {
                            lost.push(format!(
                                "{}/{}: spec.{k} is {} but {v} was acknowledged",
                                t.plural, t.name, o["spec"][k]
                            ));
                        }
                    }
                }
                (Expect::Present(_), None) => {
                    lost.push(format!("{}/{}: acknowledged, missing", t.plural, t.name))
                }
                (Expect::Gone, Some(_)) => lost.push(format!(
                    "{}/{}: deletion acknowledged, still there",
                    t.plural, t.name
                )),
                (Expect::Gone, None) => checked_writes += 1,
                (Expect::Uncertain { .. }, _) => {}
            }
        }
        *all_checks
            .entry("acknowledged write in the store")
            .or_default() += checked_writes;
        assert!(
            lost.is_empty(),
            "round {round} ({victim}): acknowledged writes lost (seed {seed:#x}):\n{}",
            lost.join("\n")
        );

        // No guest restarted: an instance nobody touched this round that
        // ran before it runs in the same domain, started no more often.
        let mut kept = 0;
        for i in &now.instances {
            let name = name_of(i);
            let touched = tracked
                .iter()
                .any(|t| t.plural == "instances" && t.name == name && t.round >= round);
            let was = before.instances.iter().find(|b| uid_of(b) == uid_of(i));
            if touched || was.is_none_or(|b| phase(b) != "Running") || phase(i) != "Running" {
                continue;
            }
            let node = i["status"]["nodeName"].as_str().unwrap_or("").to_string();
            let dom = format!("corral-{}", uid_of(i));
            let find = |s: &Snapshot| {
                s.hosts.get(&node).and_then(|h| {
                    h.domains
                        .iter()
                        .find(|d| d.0 == dom)
                        .map(|d| (d.2, h.calls.get(&dom).map(|c| c.start).unwrap_or(0)))
                })
            };
            assert_eq!(
                find(&before),
                find(&now),
                "round {round} ({victim}): instance {name} was restarted (domain id, starts) (seed {seed:#x})"
            );
            kept += 1;
        }
        *all_checks
            .entry("untouched guest not restarted")
            .or_default() += kept;
        for (k, v) in &checks {
            *all_checks.entry(k).or_default() += v;
        }
        let tally = std::mem::take(&mut *tally.lock().unwrap());
        assert!(
            tally.anomalies.is_empty(),
            "round {round} ({victim}): writes refused unexpectedly (seed {seed:#x}):\n{}",
            tally.anomalies.join("\n")
        );
        println!(
            "chaos/cluster round {round}: SIGKILL {victim} down {downtime:?}; writes {} acknowledged, {} unacknowledged; converged {converge_time:?} after the workload ({workload_done:?}); {} instances ({} running), {} volumes, {} networks; {checked_writes} acknowledged writes found, {kept} untouched guests not restarted, {} checks passed",
            tally.acked,
            tally.uncertain,
            now.instances.len(),
            now.instances.iter().filter(|i| phase(i) == "Running").count(),
            now.volumes.len(),
            now.networks.len(),
            checks.values().sum::<usize>()
        );
    }
    println!(
        "chaos/cluster: {rounds} rounds in {:?}; invariants checked:",
        t_all.elapsed()
    );
    for (k, v) in &all_checks {
        println!("  {k}: {v}");
    }
    drop(agents);
}
