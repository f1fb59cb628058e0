//! Runs a private `etcd` process on loopback, for tests and benchmarks.
//!
//! Uses Debian's `etcd` binary (package etcd-server) from `$PATH`, or
//! `$CORRAL_ETCD_BIN`. There is no fallback: without etcd this fails
//! loudly, so a suite cannot pass without having talked to a real etcd.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
pub use cluster::EtcdCluster;

/// Why a private etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    #[error("cannot run etcd ({binary}); install Debian's etcd-server or set CORRAL_ETCD_BIN")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd did not become healthy within {0:?}; its log: {1}")]
    NotHealthy(Duration, String),
    #[error("no free loopback port")]
    NoPort(#[source] std::io::Error),
    #[error("cannot create etcd's data directory")]
    DataDir(#[source] std::io::Error),
}

/// A running etcd, killed (SIGKILL) and its data removed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
    /// `--quota-backend-bytes`.
    quota_bytes: u64,
}

fn free_port() -> Result<u16, EtcdServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(EtcdServerError::NoPort)?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(EtcdServerError::NoPort)
}

fn scratch_root() -> PathBuf {
    // etcd 3.4 fsyncs every write; tmpfs keeps tests quick.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl EtcdServer {
    /// Starts etcd on free loopback ports with a fresh data directory and
    /// waits until it answers.
    pub async fn start() -> Result<EtcdServer, EtcdServerError> {
        // Benchmarks hold 100,000 objects and their history: etcd's
        // default 2 GiB backend quota would stop them with NOSPACE.
        EtcdServer::start_with_quota(8 << 30).await
    }

    /// [`EtcdServer::start`] with a backend quota of `quota_bytes` (small
    /// ones let tests run etcd out of space).
    pub async fn start_with_quota(quota_bytes: u64) -> Result<EtcdServer, EtcdServerError> {
        let data = tempfile::Builder::new()
            .prefix("corral-etcd-")
            .tempdir_in(scratch_root())
            .map_err(EtcdServerError::DataDir)?;
        let mut server = EtcdServer {
            child: None,
            client_port: free_port()?,
            peer_port: free_port()?,
            data,
            quota_bytes,
        };
        // A port found free can be taken by another process before etcd
        // binds it (tests run in parallel): then try other ports.
        let mut attempts = 0;
        loop {
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(EtcdServerError::NotHealthy(_, log))
                    if log.contains("address already in use") && attempts < 5 =>
                {
                    attempts += 1;
                    server.kill();
                    server.client_port = free_port()?;
                    server.peer_port = free_port()?;
                    let _ = std::fs::remove_dir_all(server.data.path().join("data"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd with SIGKILL (its clients see the connection drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data (after [`kill`]).
    ///
    /// [`kill`]: EtcdServer::kill
    pub async fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.kill();
        self.spawn().await
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    async fn spawn(&mut self) -> Result<(), EtcdServerError> {
        let binary = std::env::var("CORRAL_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(EtcdServerError::DataDir)?;
        let log_err = log.try_clone().map_err(EtcdServerError::DataDir)?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&binary)
            .arg("--name")
            .arg("corral-test")
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("corral-test={peer}"))
            .arg("--quota-backend-bytes")
            .arg(self.quota_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| EtcdServerError::Spawn { binary, source })?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20)).await
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdServerError> {
        let deadline = Instant::now() + timeout;
        let endpoint = self.endpoint();
        loop {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            if let Ok(mut client) =
                etcd_client::Client::connect([endpoint.as_str()], Some(options)).await
            {
                if client.get("health-probe", None).await.is_ok() {
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(EtcdServerError::NotHealthy(timeout, tail));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
