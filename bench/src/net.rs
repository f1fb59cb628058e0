//! `corral bench net`: how fast overlay forwarding tables learn a new
//! port. Simulated nodes, each with a tunnel endpoint, share one overlay
//! Network; instances are created through the API (spread over the
//! nodes). For each instance the benchmark times the interval from the
//! store showing it Running to every other node with a Running port on
//! the network holding its MAC → node entry in that network's tunnel
//! (the hosts' plans, polled), first for the burst of creates, then for
//! guests placed one at a time into the settled network (the goal's
//! figure). Packets over real tunnels
//! between real guests are the rig test's (`cli/tests/rig.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_api_types::{Instance, InstancePhase, Network};
use corral_controllers::ControllerOptions;
use corral_store::ObjectEvent;
use corral_test_support::{Backend, Cluster};

use crate::figures::{header, measure, percentile};

pub struct NetBenchOptions {
    pub nodes: usize,
    pub instances: usize,
    pub timeout: Duration,
}

/// Simulated node `n`'s tunnel endpoint (never routed: nothing leaves).
fn vtep(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// API clients creating the burst.
const CLIENTS: usize = 8;

/// Guests placed one at a time after the burst.
const STEADY: usize = 20;

/// A Running instance: where it is and when it got there.
struct Placed {
    node: String,
    mac: String,
    running: Instant,
}

pub async fn net(o: NetBenchOptions) -> Result<()> {
    println!(
        "corral bench net: {} simulated nodes, {} instances on one overlay Network, etcd backend",
        o.nodes, o.instances
    );
    let mut cluster = Cluster::start(
        Backend::Etcd,
        ControllerOptions {
            concurrency: 32,
            ..Default::default()
        },
    )
    .await;
    cluster.agent_options = crate::reconcile::sim_agent_options();
    let mut vteps = HashMap::new();
    for n in 0..o.nodes {
        let name = format!("sim-{n:04}");
        cluster
            .add_host_with(&name, |a| a.vtep = Some(vtep(n)))
            .await;
        vteps.insert(name, vtep(n));
    }
    for (path, body) in [
        (
            "/v1/projects",
            serde_json::json!({"metadata": {"name": "bench"}}),
        ),
        (
            "/v1/projects/bench/networks",
            serde_json::json!({"metadata": {"name": "ovl"}, "spec": {"cidr": "10.200.0.0/16", "mode": "overlay"}}),
        ),
        (
            "/v1/projects/bench/images",
            serde_json::json!({"metadata": {"name": "tiny"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
        ),
    ] {
        let (code, b) = cluster.call(reqwest::Method::POST, path, Some(body)).await;
        anyhow::ensure!(code == 201, "{path}: {code} {b}");
    }
    let store = cluster.store.clone();
    let uid = store
        .get::<Network>("bench", "ovl")
        .await?
        .context("the network")?
        .metadata
        .uid;
    let network = corral_node_agent::net::network_name(&uid);

    // Running instances, from the store's own watch.
    let rev = store.raw().current_revision().await?;
    let mut watch = store.watch::<Instance>(Some("bench"), rev).await?;
    let placed: Arc<Mutex<BTreeMap<String, Placed>>> = Arc::default();
    {
        let placed = placed.clone();
        tokio::spawn(async move {
            while let Some(Ok(ObjectEvent::Modified(i, _) | ObjectEvent::Added(i))) =
                watch.next().await
            {
                let Some(s) = i.status.as_ref() else { continue };
                let (Some(node), Some(a)) = (s.node_name.clone(), s.addresses.first()) else {
                    continue;
                };
                if s.phase == InstancePhase::Running && !a.mac.is_empty() {
                    placed
                        .lock()
                        .expect("placed")
                        .entry(i.metadata.name.clone())
                        .or_insert(Placed {
                            node,
                            mac: a.mac.to_ascii_lowercase(),
                            running: Instant::now(),
                        });
                }
            }
        });
    }

    let t0 = Instant::now();
    let (http, base, token) = (
        cluster.http.clone(),
        cluster.base.clone(),
        cluster.admin.clone(),
    );
    // `measure` gives each client the same count: round up to it.
    let total = o.instances.div_ceil(CLIENTS) * CLIENTS;
    let creates = measure("API create", CLIENTS, total, move |t, i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let body = serde_json::json!({"metadata": {"name": format!("vm-{t}-{i}")}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "ovl"}]}});
            let resp = http
                .post(format!("{base}/v1/projects/bench/instances"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(resp.status().as_u16() == 201, "create: {}", resp.status());
            Ok(())
        }
    })
    .await?;
    println!("{}", header());
    println!("{}", creates.row());

    // Poll the hosts' tunnels until every Running port is known to every
    // other node with a Running port.
    let poll = |learnt: &mut HashMap<String, Duration>| {
        let now = Instant::now();
        let placed = placed.lock().expect("placed");
        let occupied: std::collections::BTreeSet<&str> =
            placed.values().map(|p| p.node.as_str()).collect();
        for (name, p) in placed.iter() {
            if learnt.contains_key(name) {
                continue;
            }
            let want = vteps[&p.node];
            let known = occupied
                .iter()
                .filter(|n| **n != p.node)
                .all(|n| cluster.hosts[*n].overlay_mac(&network, &p.mac) == Some(want));
            if known {
                learnt.insert(name.clone(), now - p.running);
            }
        }
    };
    let mut learnt: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + o.timeout;
    while learnt.len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        poll(&mut learnt);
    }
    let elapsed = t0.elapsed();
    let burst = learnt.len();
    let mut lat: Vec<Duration> = learnt.values().copied().collect();
    lat.sort();

    // Then one at a time into the settled network: a guest placed while
    // nothing else happens (the goal's figure: a burst measures this
    // machine's saturation as much as the forwarding tables).
    let mut steady = Vec::new();
    for k in 0..STEADY {
        let name = format!("steady-{k}");
        let body = serde_json::json!({"metadata": {"name": name}, "spec": {"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "ovl"}]}});
        let (code, b) = cluster
            .call(
                reqwest::Method::POST,
                "/v1/projects/bench/instances",
                Some(body),
            )
            .await;
        anyhow::ensure!(code == 201, "create {name}: {code} {b}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !learnt.contains_key(&name) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            poll(&mut learnt);
        }
        if let Some(d) = learnt.get(&name) {
            steady.push(*d);
        }
    }
    steady.sort();

    let status_bytes = store
        .get::<Network>("bench", "ovl")
        .await?
        .and_then(|n| n.status)
        .map(|s| serde_json::to_vec(&s).map(|v| v.len()).unwrap_or(0))
        .unwrap_or(0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "burst: ports learnt by every other node: {burst} / {}{} in {:.1} s",
        total,
        if burst < total { " (TIMED OUT)" } else { "" },
        elapsed.as_secs_f64()
    );
    println!(
        "burst: Running -> in every other node's forwarding table: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (20 ms polls)",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    println!(
        "one at a time ({} of {STEADY} learnt): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (10 ms polls)",
        steady.len(),
        ms(percentile(&steady, 0.50)),
        ms(percentile(&steady, 0.99)),
        ms(steady.last().copied().unwrap_or_default()),
    );
    println!("the Network's status (ports, endpoints, allocations): {status_bytes} bytes");
    if o.nodes >= 100 && o.instances >= 1000 {
        let met = steady.len() == STEADY && percentile(&steady, 0.99) < Duration::from_secs(1);
        println!(
            "goal (one at a time, p99 < 1 s at 100 nodes x 1,000 ports): {}",
            if met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
