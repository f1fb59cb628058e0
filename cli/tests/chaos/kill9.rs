//! Scenario 1: `corral up` (embedded store) SIGKILLed mid write burst.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_store::EmbeddedStore;
use serde_json::json;

use crate::seeded::{seed, Rng};
use crate::support::*;

pub(crate) struct Up {
    pub(crate) proc: Proc,
    pub(crate) api: Api,
    pub(crate) log: PathBuf,
}

pub(crate) fn start_up(dir: &Path, addr: &str, ec2: &str, n: usize) -> Up {
    start_up_with(
        dir,
        addr,
        ec2,
        n,
        &["--libvirt", "test:///default", "--node", "chaos-up"],
    )
}

pub(crate) fn start_up_with(dir: &Path, addr: &str, ec2: &str, n: usize, extra: &[&str]) -> Up {
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

pub(crate) async fn wait_up(up: &mut Up, config: &Path) {
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
pub(crate) async fn embedded_store_kill9_during_write_burst() {
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
