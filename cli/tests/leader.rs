//! Two `corral server` processes on one etcd: exactly one runs the
//! controllers; SIGKILL it and the other takes over within the lease TTL.
//! Cut the leader off etcd (its connections go through an in-test TCP
//! proxy that drops them and refuses new ones) and it steps down before
//! its lease can expire, the other takes over, and once the cut heals the
//! first rejoins as a follower with nothing lost or written twice.
//!
//! Over 600 lines on purpose: the three cases share the etcd proxy and the
//! log collector defined here; they are one story (election, handover,
//! cut).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_client::Client;
use corral_test_support::EtcdServer;

const BIN: &str = env!("CARGO_BIN_EXE_corral");

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    name: &'static str,
    etcd: &str,
    home: &std::path::Path,
    events: mpsc::Sender<(&'static str, String)>,
) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--insecure-http",
            "--etcd",
            etcd,
            "--listen",
            &free_addr(),
            "--ec2-listen",
            &free_addr(),
        ])
        .env("HOME", home)
        .env("RUST_LOG", "corral_runtime=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start corral server");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if events.send((name, line)).is_err() {
                return;
            }
        }
    });
    Server { child }
}

/// The next "became leader" line within `timeout`, and from whom.
fn next_leader(
    rx: &mpsc::Receiver<(&'static str, String)>,
    timeout: Duration,
) -> Option<&'static str> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((who, line)) if line.contains("became leader") => return Some(who),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_handover_on_sigkill() {
    let etcd = EtcdServer::start().await.expect("start a real etcd");
    let home = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut a = spawn("a", &etcd.endpoint(), home.path(), tx.clone());
    let mut b = spawn("b", &etcd.endpoint(), home.path(), tx);

    let first = next_leader(&rx, Duration::from_secs(30)).expect("one server leads");
    // The other does not lead as well.
    assert_eq!(
        next_leader(&rx, Duration::from_secs(5)),
        None,
        "two leaders"
    );

    // SIGKILL the leader: no resignation, the lease must expire (15 s).
    let killed_at = Instant::now();
    let leader = if first == "a" { &mut a } else { &mut b };
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let second = next_leader(&rx, Duration::from_secs(30)).expect("the other server takes over");
    assert_ne!(second, first);
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_secs(20),
        "handover took {took:?} (lease TTL is 15 s)"
    );
}

// ------------------------------------------- the leader cut off from etcd

#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use proxy::Proxy;
use serde_json::{json, Value};

/// One stderr line: which server, when it arrived, what it says.
type Line = (&'static str, Instant, String);

/// Every stderr line of a test's servers.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Line>>>);

impl Lines {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Arrival times of `who`'s lines containing `needle`, from `from` on.
    fn find(&self, who: &str, needle: &str, from: usize) -> Vec<Instant> {
        let lines = self.0.lock().unwrap();
        lines[from.min(lines.len())..]
            .iter()
            .filter(|(w, _, l)| *w == who && l.contains(needle))
            .map(|(_, t, _)| *t)
            .collect()
    }

    /// The first such line within `timeout`: its arrival time.
    async fn wait(
        &self,
        who: &str,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.find(who, needle, from).first() {
                return Some(*t);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `who`'s newest lines, for a failure's message.
    fn tail(&self, who: &str) -> String {
        let lines = self.0.lock().unwrap();
        // Backtrace frames say little and would push the error itself
        // out of the tail.
        let frame = |l: &str| {
            let t = l.trim_start();
            t.starts_with("at ")
                || t.split_once(": ")
                    .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        };
        let mine: Vec<&String> = lines
            .iter()
            .filter(|(w, _, l)| *w == who && !frame(l))
            .map(|x| &x.2)
            .collect();
        let from = mine.len().saturating_sub(40);
        mine[from..]
            .iter()
            .map(|l| format!("{who}: {l}\n"))
            .collect()
    }
}

/// A `corral server` on `etcd` (its own HOME, blob directory and client
/// config; the secrets key file shared), its stderr into `lines`.
fn spawn_logged(
    name: &'static str,
    etcd: &str,
    dir: &std::path::Path,
    lines: &Lines,
) -> (Server, String) {
    let home = dir.join(format!("home-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    let listen = free_addr();
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--insecure-http",
            "--write-config",
            "--etcd",
            etcd,
        ])
        .args(["--listen", &listen, "--ec2-listen", &free_addr()])
        .arg("--blob-dir")
        .arg(dir.join(format!("blobs-{name}")))
        .arg("--secrets-key-file")
        .arg(dir.join("secrets.keys"))
        .env("HOME", &home)
        .env("CORRAL_CONFIG", home.join("config.yaml"))
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_TOKEN")
        .env_remove("XDG_CONFIG_HOME")
        .env(
            "RUST_LOG",
            "warn,corral_runtime=info,corral_controllers::ipam=debug",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start corral server");
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.0.lock().unwrap().push((name, Instant::now(), line));
        }
    });
    (Server { child }, format!("http://{listen}"))
}

/// The native API of one server, as the admin, through `corral-client`.
struct Api {
    base: String,
    token: String,
    client: Client,
}

impl Api {
    fn new(base: &str, token: String) -> Api {
        let client = Client::with_ca(base, &token, None)
            .expect("API client")
            .with_timeout(Duration::from_secs(5));
        Api {
            base: base.to_string(),
            token,
            client,
        }
    }

    fn set_token(&mut self, token: String) {
        self.client = self.client.with_token(&token);
        self.token = token;
    }

    /// The status and body (null when not JSON); Err when nothing answered.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let (code, v) = self
            .client
            .exchange(method, path, body.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        Ok((code.as_u16(), if v.is_string() { Value::Null } else { v }))
    }

    async fn create(&self, path: &str, body: Value) {
        let (code, v) = self
            .call(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", self.base));
        assert!(
            (200..300).contains(&code),
            "POST {path} on {}: {code} {v}",
            self.base
        );
    }

    async fn ready(&self) -> bool {
        matches!(
            self.call(reqwest::Method::GET, "/readyz", None).await,
            Ok((200, _))
        )
    }

    /// Every Instance of project `cut` and its first address ("" if none).
    async fn addresses(&self) -> BTreeMap<String, String> {
        let (code, v) = self
            .call(reqwest::Method::GET, "/v1/projects/cut/instances", None)
            .await
            .unwrap_or_else(|e| panic!("listing instances on {}: {e}", self.base));
        assert_eq!(code, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let ip = i["status"]["addresses"][0]["ip"].as_str().unwrap_or("");
                (
                    i["metadata"]["name"].as_str().unwrap().to_string(),
                    ip.to_string(),
                )
            })
            .collect()
    }

    /// Creates instances `names` and waits until each has an address.
    async fn instances(&self, names: &[String], lines: &Lines) {
        for n in names {
            self.create(
                "/v1/projects/cut/instances",
                json!({"metadata": {"name": n}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}]}}),
            )
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.addresses().await;
            if names
                .iter()
                .all(|n| now.get(n).is_some_and(|ip| !ip.is_empty()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instances {names:?} got no address in 30 s: {now:?}\n{}{}",
                lines.tail("a"),
                lines.tail("b")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn api(base: &str, home: &std::path::Path) -> Api {
    let text = std::fs::read_to_string(home.join("config.yaml")).unwrap_or_default();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .map(|t| t.trim().trim_matches('\'').trim_matches('"').to_string())
        .unwrap_or_default();
    Api::new(base, token)
}

/// Every write etcd kept under `/corral/instances/cut/` and
/// `/corral/networks/cut/`, replayed from revision 1: no instance's
/// address ever changes or goes once given, no address of the network's
/// table ever changes hands, no instance ever holds two. Answers how many
/// writes were looked at.
async fn history_has_no_second_allocation(endpoint: &str) -> usize {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let last = client
        .put("/corral/zz-test-marker", "x", None)
        .await
        .unwrap();
    let last = last.header().unwrap().revision();
    let mut stream = client
        .watch(
            "/corral/",
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1),
            ),
        )
        .await
        .unwrap();
    let mut instance_ip: BTreeMap<String, String> = BTreeMap::new();
    let mut ip_owner: BTreeMap<String, String> = BTreeMap::new();
    let mut owner_ip: BTreeMap<String, String> = BTreeMap::new();
    let mut writes = 0;
    let mut seen = 0;
    while seen < last {
        let Some(m) = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("etcd's history within 10 s")
            .unwrap()
        else {
            break;
        };
        for e in m.events() {
            let Some(kv) = e.kv() else { continue };
            seen = seen.max(kv.mod_revision());
            let key = kv.key_str().unwrap_or_default().to_string();
            let value: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
            if let Some(name) = key.strip_prefix("/corral/instances/cut/") {
                writes += 1;
                if e.event_type() == etcd_client::EventType::Delete {
                    panic!("instance {name} deleted at revision {}", kv.mod_revision());
                }
                let ip = value["status"]["addresses"][0]["ip"].as_str().unwrap_or("");
                match instance_ip.get(name) {
                    Some(before) if before != ip => panic!(
                        "instance {name}'s address went from {before} to {ip:?} at revision {}",
                        kv.mod_revision()
                    ),
                    _ if !ip.is_empty() => {
                        instance_ip.insert(name.to_string(), ip.to_string());
                    }
                    _ => {}
                }
            } else if key == "/corral/networks/cut/lan" {
                writes += 1;
                let table = value["status"]["allocations"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for (ip, owner) in table {
                    let owner = owner.as_str().unwrap_or_default().to_string();
                    if let Some(o) = ip_owner.insert(ip.clone(), owner.clone()) {
                        assert_eq!(
                            o,
                            owner,
                            "{ip} changed hands at revision {}",
                            kv.mod_revision()
                        );
                    }
                    if let Some(i) = owner_ip.insert(owner.clone(), ip.clone()) {
                        assert_eq!(
                            i,
                            ip,
                            "{owner} given a second address at revision {}",
                            kv.mod_revision()
                        );
                    }
                }
            }
        }
    }
    assert!(seen >= last, "replayed etcd's history to {seen} of {last}");
    writes
}

/// How the leader is cut off etcd.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Its connections dropped, new ones refused.
    Refused,
    /// Its connections held open, no byte moving either way.
    Blackholed,
}

/// The controller leader's connection to etcd goes through a proxy the
/// test cuts (open connections dropped, new ones refused) while it leads.
/// It must step down before its lease can expire (so before the other
/// server can lead), the other must take over within the lease TTL plus a
/// margin, and the cut one must do no controller work from then on: not
/// while cut, not after the proxy is restored, when it rejoins as a
/// follower. Instances created before (through the leader), during
/// (through the other) and after (through the rejoined one) all exist
/// once, each with one address that never changes, no address given twice
/// in etcd's whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_from_etcd_steps_down_and_rejoins_as_follower() {
    leader_cut_off(Cut::Refused).await;
}

/// The same with a blackhole instead: the leader's connections to etcd
/// stay open but nothing moves, so its lease renewals hang instead of
/// failing. It must still step down before its lease can expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_blackholed_from_etcd_steps_down_before_its_lease_can_expire() {
    leader_cut_off(Cut::Blackholed).await;
}

async fn leader_cut_off(how: Cut) {
    let t0 = Instant::now();
    let etcd = EtcdServer::start().await.expect("start a real etcd");
    let upstream: std::net::SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines = Lines::default();
    let proxies = [Proxy::start(upstream), Proxy::start(upstream)];
    let names = ["a", "b"];
    let mut servers = Vec::new();
    let mut apis = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (server, base) = spawn_logged(
            name,
            &format!("http://{}", proxies[i].addr()),
            dir.path(),
            &lines,
        );
        servers.push(server);
        let home = dir.path().join(format!("home-{name}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = api(&base, &home);
            if !a.token.is_empty() && a.ready().await {
                apis.push(a);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server {name} not ready:\n{}",
                lines.tail(name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Server a's admin token works on both (credentials live in etcd).
    let token = apis[0].token.clone();
    apis[1].set_token(token);

    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader.is_none() && Instant::now() < deadline {
        leader = names
            .iter()
            .position(|n| !lines.find(n, "became leader", 0).is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = leader.expect("one server leads within 30 s");
    let f = 1 - l;
    let (ln, fname) = (names[l], names[f]);

    apis[l]
        .create("/v1/projects", json!({"metadata": {"name": "cut"}}))
        .await;
    apis[l]
        .create(
            "/v1/projects/cut/networks",
            json!({"metadata": {"name": "lan"}, "spec": {"cidr": "10.88.0.0/24", "mode": "isolated"}}),
        )
        .await;
    apis[l]
        .create(
            "/v1/projects/cut/images",
            json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
        )
        .await;
    let before: Vec<String> = (0..4).map(|i| format!("before-{i}")).collect();
    apis[l].instances(&before, &lines).await;
    assert!(
        lines.find(fname, "became leader", 0).is_empty(),
        "two leaders"
    );
    let started = lines.find(ln, "controller started", 0).len();
    assert!(
        started >= 10,
        "{ln} started {started} controllers:\n{}",
        lines.tail(ln)
    );

    // Cut the leader off etcd.
    let mark = lines.len();
    let cut_at = Instant::now();
    match how {
        Cut::Refused => proxies[l].cut(),
        Cut::Blackholed => proxies[l].stall(),
    }
    let ttl = Duration::from_secs(15);
    let down = lines
        .wait(ln, "stepping down", mark, ttl)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{ln} still leads {ttl:?} after the cut:\n{}",
                lines.tail(ln)
            )
        });
    let up = lines
        .wait(fname, "became leader", mark, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{fname} did not take over within 30 s:\n{}",
                lines.tail(fname)
            )
        });
    let (down_after, up_after) = (down - cut_at, up - cut_at);
    assert!(
        down < up,
        "{fname} led at {up_after:?} after the cut, before {ln} stepped down at {down_after:?}"
    );
    assert!(
        up_after <= ttl + Duration::from_secs(5),
        "handover took {up_after:?} (lease TTL {ttl:?})"
    );
    // Every controller the cut leader ran has stopped.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lines.find(ln, "controller stopped", mark).len() < started {
        assert!(
            Instant::now() < deadline,
            "{ln}'s controllers did not stop:\n{}",
            lines.tail(ln)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = *lines
        .find(ln, "controller stopped", mark)
        .iter()
        .max()
        .unwrap();
    if let Cut::Refused = how {
        // Its store calls fail at once, so its reconciles end at once. (A
        // blackhole holds them until the client's HTTP/2 keepalive gives
        // the connection up, about when the lease expires; their writes
        // cannot reach etcd meanwhile.)
        assert!(
            stopped_at < up,
            "{ln}'s controllers still ran at {:?}, after {fname} led at {up_after:?}",
            stopped_at - cut_at
        );
    }
    assert!(
        !apis[l].ready().await,
        "{ln} says it is ready while cut off etcd"
    );

    // Work while it is cut: done by the new leader.
    let during: Vec<String> = (0..4).map(|i| format!("during-{i}")).collect();
    apis[f].instances(&during, &lines).await;

    // Restore: it rejoins, as a follower.
    proxies[l].restore();
    let restored_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !apis[l].ready().await {
        assert!(
            Instant::now() < deadline,
            "{ln} not ready 30 s after the restore:\n{}",
            lines.tail(ln)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejoined = restored_at.elapsed();
    let after: Vec<String> = (0..2).map(|i| format!("after-{i}")).collect();
    apis[l].instances(&after, &lines).await;
    // Two renewal periods and more as a follower.
    tokio::time::sleep(Duration::from_secs(12)).await;

    for (what, who) in [
        ("became leader", ln),
        ("controller started", ln),
        ("allocation table written", ln),
        ("stepping down", fname),
    ] {
        let at = lines.find(who, what, mark);
        let late: Vec<_> = at.iter().filter(|t| **t > down).collect();
        assert!(
            late.is_empty(),
            "{who} logged {what:?} after {ln} stepped down:\n{}",
            lines.tail(who)
        );
    }
    assert!(
        !lines
            .find(fname, "allocation table written", mark)
            .is_empty(),
        "the new leader allocated nothing:\n{}",
        lines.tail(fname)
    );

    // Nothing lost, nothing written twice: the same view on both servers.
    let all: Vec<String> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let view = apis[f].addresses().await;
    assert_eq!(view, apis[l].addresses().await, "the servers disagree");
    assert_eq!(view.keys().cloned().collect::<Vec<_>>(), {
        let mut a = all.clone();
        a.sort();
        a
    });
    let ips: std::collections::BTreeSet<&String> = view.values().collect();
    assert_eq!(ips.len(), all.len(), "an address given twice: {view:?}");
    let writes = history_has_no_second_allocation(&etcd.endpoint()).await;

    println!(
        "leader/cut ({how:?}): {ln} led; cut at 0 s: it stepped down at {down_after:?}, its {started} controllers stopped by {:?}; {fname} led at {up_after:?} (TTL {ttl:?}); restored after {:?}, {ln} ready again in {rejoined:?} and a follower for 12 s more; {} instances (4 before through {ln}, 4 during through {fname}, 2 after through {ln}) each with one address, {writes} writes in etcd's history with no address changed or given twice; {:?} in all",
        stopped_at - cut_at,
        restored_at - cut_at,
        all.len(),
        t0.elapsed()
    );
    println!(
        "  proxies: {} and {} connections accepted",
        proxies[0].accepted(),
        proxies[1].accepted()
    );
}
