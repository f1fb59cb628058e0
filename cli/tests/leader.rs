//! Two `corral server` processes on one etcd: exactly one runs the
//! controllers; SIGKILL it and the other takes over within the lease TTL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_store::etcd_server::EtcdServer;

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
