//! Scenario 4: SIGKILL rounds on a three-member etcd cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_test_support::EtcdCluster;
use serde_json::Value;

use crate::invariants::*;
use crate::seeded::{seed, Rng};
use crate::stopped_agent::*;
use crate::support::*;
use crate::workload::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    Server,
    Leader,
    Agent,
    EtcdMember,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sigkill_rounds_on_three_member_etcd() {
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
