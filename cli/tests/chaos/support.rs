//! What every chaos scenario stands on: processes and signals, the
//! native API client, waiting, the counting hypervisor, `corral up` and
//! `corral server` processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_client::{Client, ClientError};
use corral_node_agent::hypervisor::{
    simulated_host, DiskSpec, DomainInfo, DomainSpec, HostFacts, PowerState, Result as HvResult,
};
use corral_node_agent::{Hypervisor, Libvirt};
use serde_json::Value;

use crate::seeded::seed;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_corral");

// ---------------------------------------------------------------- helpers

pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address").to_string()
}

/// A scratch directory (removed on drop), kept small.
pub(crate) fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// A process this test started; SIGKILLed on drop.
pub(crate) struct Proc {
    pub(crate) child: Option<Child>,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM, then waits (SIGKILL after `grace`); answers whether it
    /// exited by itself.
    pub(crate) fn terminate(&mut self, grace: Duration) -> bool {
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

pub(crate) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    let g = f.try_clone().expect("log file");
    (Stdio::from(f), Stdio::from(g))
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The native API through `corral-client`, with the calls this suite
/// judges itself.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) client: Client,
}

impl Api {
    pub(crate) fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.to_string(),
            token: token.to_string(),
            client: Client::with_ca(base, token, None)
                .expect("API client")
                .with_timeout(Duration::from_secs(10)),
        }
    }

    pub(crate) fn set_token(&mut self, token: String) {
        self.client = self.client.with_token(&token);
        self.token = token;
    }

    /// The status and body (null when not JSON); Err when nothing answered.
    pub(crate) async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let (code, v) = self.client.exchange(method, path, body).await?;
        Ok((code.as_u16(), if v.is_string() { Value::Null } else { v }))
    }

    /// A request that must get a 2xx.
    pub(crate) async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let (code, v) = self
            .try_call(method.clone(), path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
        v
    }

    pub(crate) async fn healthy(&self) -> bool {
        matches!(
            self.client.exchange(reqwest::Method::GET, "/healthz", None).await,
            Ok((code, _)) if code.is_success()
        )
    }

    /// Every item of a list path (following continue tokens), and the
    /// list's revision.
    pub(crate) async fn list_all(&self, path: &str) -> Result<(Vec<Value>, String), String> {
        let list = self
            .client
            .list_all(path, &[])
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        Ok((list.items, list.resource_version))
    }
}

pub(crate) async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Duration
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

pub(crate) fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The admin token from the client config `corral up`/`server` wrote.
pub(crate) fn config_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("token: "))
        .map(|t| t.trim().trim_matches('\'').trim_matches('"').to_string())
}

/// The common environment of the processes we start.
pub(crate) fn child_env(cmd: &mut Command, home: &Path) {
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
pub(crate) struct Calls {
    pub(crate) define: u64,
    pub(crate) start: u64,
    pub(crate) destroy: u64,
    pub(crate) undefine: u64,
}

/// Delegates to libvirt and counts start/destroy/define/undefine per domain.
pub(crate) struct CountingHost {
    pub(crate) inner: Libvirt,
    pub(crate) calls: Mutex<BTreeMap<String, Calls>>,
}

impl CountingHost {
    pub(crate) fn open(dir: &Path, node: &str) -> Arc<CountingHost> {
        let uri = simulated_host(dir, node, 64, 256 * 1024).expect("simulated host");
        Arc::new(CountingHost {
            inner: Libvirt::open(&uri, "test").expect("libvirt test driver"),
            calls: Mutex::default(),
        })
    }
    pub(crate) fn count(&self, name: &str, f: impl FnOnce(&mut Calls)) {
        f(self
            .calls
            .lock()
            .expect("calls")
            .entry(name.to_string())
            .or_default());
    }
    pub(crate) fn calls(&self) -> BTreeMap<String, Calls> {
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
pub(crate) struct HostView {
    pub(crate) domains: Vec<(String, String, Option<u32>)>,
    pub(crate) calls: BTreeMap<String, Calls>,
}

pub(crate) fn host_view(h: &CountingHost) -> HostView {
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

// ------------------------------ 2. etcd compaction while watchers are behind

/// A `corral server` process on etcd.
pub(crate) struct ServerProc {
    pub(crate) proc: Proc,
    pub(crate) api: Api,
    pub(crate) addr: String,
    pub(crate) ec2: String,
    pub(crate) log: PathBuf,
    /// Set while its stderr says it leads the controllers.
    pub(crate) leading: Arc<AtomicBool>,
}

pub(crate) fn spawn_server(
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

pub(crate) async fn wait_healthy(s: &mut ServerProc) {
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

pub(crate) async fn wait_config_token(home: &Path) -> String {
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
pub(crate) type Seen = BTreeMap<String, (String, String)>;
