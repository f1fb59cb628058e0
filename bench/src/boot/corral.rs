//! A private `corral up` (or server) for the rounds, and one round of
//! instances applied and watched until their guests are ready.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::*;

/// What must be cleaned up, whatever happens.
pub(super) struct Env {
    pub(super) dir: PathBuf,
    pub(super) node: String,
    pub(super) virt_type: &'static str,
    pub(super) up: Option<Child>,
    pub(super) agent: Option<Child>,
    pub(super) api: Option<Api>,
    pub(super) watcher: Option<Watcher>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

pub(super) fn child_env(cmd: &mut Command, home: &Path) {
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

pub(super) fn log_file(path: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((f.try_clone()?, f))
}

impl Env {
    /// Starts `corral up --no-agent` and answers the admin's API.
    pub(super) async fn start_server(&mut self) -> Result<Api> {
        let exe = crate::corral_exe()?;
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
                    let c: UpConfig = yaml_serde::from_str(&text)
                        .with_context(|| format!("reading {}", config.display()))?;
                    return Api::new(url, &c.token);
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
    pub(super) async fn start_agent(&mut self, api: &Api) -> Result<u64> {
        let exe = crate::corral_exe()?;
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
    pub(super) async fn cleanup(&mut self) {
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
pub(super) async fn delete_all(api: &Api, w: &Watcher, timeout: Duration) -> Result<()> {
    let names = api.instance_names().await?;
    delete_and_wait(api, w, &names, timeout).await
}

pub(super) async fn delete_and_wait(
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
pub(super) async fn corral_round(
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
            tokio::task::spawn_blocking(move || uids.iter().map(|u| c.qemu_started(u)).collect())
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

/// What the rounds need of the client config `corral up` writes.
#[derive(serde::Deserialize)]
pub(super) struct UpConfig {
    pub(super) token: String,
}
