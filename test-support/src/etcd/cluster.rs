//! A private multi-member etcd cluster on loopback, for fault tests: each
//! member can be SIGKILLed and restarted on its own ports and data, and
//! rejoins the cluster it left.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, scratch_root, EtcdServerError};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed (SIGKILL) and the data
/// removed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// This attempt's data and logs (under `_root`).
    dir: PathBuf,
    _root: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members on free loopback ports and waits until every
    /// one answers a read (which needs a quorum).
    pub async fn start(size: usize) -> Result<EtcdCluster, EtcdServerError> {
        let root = tempfile::Builder::new()
            .prefix("corral-etcd-cluster-")
            .tempdir_in(scratch_root())
            .map_err(EtcdServerError::DataDir)?;
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir: root.path().join("attempt-0"),
            _root: root,
        };
        for attempt in 0.. {
            cluster.dir = cluster._root.path().join(format!("attempt-{attempt}"));
            std::fs::create_dir_all(&cluster.dir).map_err(EtcdServerError::DataDir)?;
            cluster.members = Vec::with_capacity(size);
            for i in 0..size {
                cluster.members.push(Member {
                    name: format!("m{i}"),
                    client_port: free_port()?,
                    peer_port: free_port()?,
                    child: None,
                });
            }
            for i in 0..size {
                cluster.spawn(i, "new")?;
            }
            let mut outcome = Ok(());
            for i in 0..size {
                if let Err(e) = cluster.wait_healthy(i, Duration::from_secs(30)).await {
                    outcome = Err(e);
                    break;
                }
            }
            match outcome {
                Ok(()) => return Ok(cluster),
                // Ports taken between probing and binding: try others.
                Err(EtcdServerError::NotHealthy(_, log))
                    if log.contains("address already in use") && attempt < 5 =>
                {
                    for i in 0..size {
                        cluster.kill(i);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `http://127.0.0.1:PORT` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The OS process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data (after [`kill`]) and
    /// waits until it answers.
    ///
    /// [`kill`]: EtcdCluster::kill
    pub async fn restart(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_healthy(i, Duration::from_secs(30)).await
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), EtcdServerError> {
        let binary = std::env::var("CORRAL_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(EtcdServerError::DataDir)?;
        let log_err = log.try_clone().map_err(EtcdServerError::DataDir)?;
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(self.dir.display().to_string())
            // Loopback: elect quickly after a member dies.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| EtcdServerError::Spawn { binary, source })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<(), EtcdServerError> {
        let deadline = Instant::now() + timeout;
        let endpoint = self.endpoint(i);
        loop {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            if let Ok(mut client) =
                etcd_client::Client::connect([endpoint.as_str()], Some(options)).await
            {
                // A linearizable read: answered only with a quorum.
                if client.get("health-probe", None).await.is_ok() {
                    return Ok(());
                }
            }
            let exited = self.members[i]
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                if exited {
                    self.kill(i);
                }
                return Err(EtcdServerError::NotHealthy(timeout, tail.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
