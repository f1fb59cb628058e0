//! Scenario 3: a node agent cut off (SIGSTOP) and back: Unknown, then
//! the truth, with no guest restarted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_node_agent::{Agent, AgentOptions, ApiClient};
use serde_json::{json, Value};

use crate::kill9::*;
use crate::support::*;

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
pub(crate) struct AgentProc {
    pub(crate) proc: Proc,
    pub(crate) window: String,
    pub(crate) _stdin: std::process::ChildStdin,
}

pub(crate) fn spawn_agent_process(dir: &Path, server: &str, token: &str, node: &str) -> AgentProc {
    let window = free_addr();
    let host_dir = dir.join(node);
    std::fs::create_dir_all(&host_dir).unwrap();
    let (out, err) = log_file(&dir.join(format!("{node}.log")));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "stopped_agent::agent_host_process",
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
pub(crate) fn look_at_host(agent: &AgentProc) -> HostView {
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
pub(crate) async fn seed_project(api: &Api, project: &str, cidr: &str) {
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

pub(crate) async fn node_token(api: &Api, node: &str) -> String {
    let issued = api
        .ok(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({"name": format!("node-{node}"), "role": "node", "nodeName": node})),
        )
        .await;
    issued["token"].as_str().expect("node token").to_string()
}

pub(crate) fn ready_status(node: &Value) -> String {
    condition(node, "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

pub(crate) fn phase(i: &Value) -> &str {
    i["status"]["phase"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn stopped_agent_goes_unknown_and_returns_without_restarting_guests() {
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
