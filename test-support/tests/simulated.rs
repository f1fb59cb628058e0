//! Issue 4's proof, in process: the example manifests run on simulated
//! hosts (libvirt's test driver) through the real API, controllers and
//! agents, on both stores; deletion leaves nothing behind; a silent agent
//! makes its node and instances Unknown and its return restores the truth
//! without restarting a guest; drift is repaired.

use std::time::Duration;

use corral_api_types::{ConditionStatus, Instance, InstancePhase, Network, Node};
use corral_controllers::ControllerOptions;
use corral_node_agent::hypervisor::{domain_name, DomainSpec, Hypervisor, PowerState};
use corral_store::ListOptions;
use corral_test_support::{Backend, Cluster};
use reqwest::Method;

fn examples() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

async fn until<F, Fut>(what: &str, secs: u64, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

async fn instances(c: &Cluster) -> Vec<Instance> {
    c.store
        .list::<Instance>(Some("demo"), ListOptions::default())
        .await
        .unwrap()
        .items
}

fn phase(i: &Instance) -> Option<InstancePhase> {
    i.status.as_ref().map(|s| s.phase)
}

fn all_domains(c: &Cluster) -> Vec<(String, String, PowerState, Option<u32>)> {
    let mut out = Vec::new();
    for (node, h) in &c.hosts {
        for d in h.hv.list().unwrap() {
            out.push((node.clone(), d.name, d.state, d.id));
        }
    }
    out.sort();
    out
}

fn options() -> ControllerOptions {
    ControllerOptions {
        node_grace: Duration::from_secs(3),
        ..Default::default()
    }
}

async fn examples_run_and_leave_nothing_behind(backend: Backend) {
    let mut c = Cluster::start(backend, options()).await;
    c.add_host("sim-1").await;
    c.add_host("sim-2").await;
    c.apply_manifests("examples", &examples()).await;
    until("both instances Running with addresses", 60, || async {
        let is = instances(&c).await;
        is.len() == 2
            && is.iter().all(|i| {
                phase(i) == Some(InstancePhase::Running)
                    && i.status.as_ref().is_some_and(|s| {
                        s.addresses.len() == 1 && s.addresses[0].ip.starts_with("10.42.0.")
                    })
            })
    })
    .await;
    // One domain per instance, on the node its status names; spread.
    let domains = all_domains(&c);
    assert_eq!(domains.len(), 2, "{domains:?}");
    for i in instances(&c).await {
        let node = i.status.as_ref().unwrap().node_name.clone().unwrap();
        let name = domain_name(&i.metadata.uid);
        assert!(
            domains
                .iter()
                .any(|(n, d, s, _)| *n == node && *d == name && *s == PowerState::Running),
            "{name} on {node}"
        );
        let ready = i
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, ConditionStatus::True);
        assert!(i.status.as_ref().unwrap().launch_time.is_some());
    }
    assert_ne!(domains[0].0, domains[1].0, "spread over both hosts");

    // The key pair controller recorded the fingerprint and the EC2 id.
    until("key pair status", 30, || async {
        let k: corral_api_types::KeyPair = c.store.get("demo", "admin").await.unwrap().unwrap();
        k.status.as_ref().is_some_and(|s| {
            s.fingerprint.as_deref() == Some("tOCELBY1lqU41OSQOFH7G3jrNMS6g/usnVMuGYhGNv4=")
                && s.ec2_id.as_deref().is_some_and(|id| id.starts_with("key-"))
        })
    })
    .await;

    // Delete everything that holds a domain or an address.
    for name in ["web-1", "web-2"] {
        let (code, body) = c
            .call(
                Method::DELETE,
                &format!("/v1/projects/demo/instances/{name}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    until("instances gone", 60, || async {
        instances(&c).await.is_empty()
    })
    .await;
    assert!(
        all_domains(&c).is_empty(),
        "domains left: {:?}",
        all_domains(&c)
    );
    until("addresses released", 30, || async {
        let n: Network = c.store.get("demo", "lan").await.unwrap().unwrap();
        n.status.map(|s| s.allocations.is_empty()).unwrap_or(true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_and_leave_nothing_behind_embedded() {
    examples_run_and_leave_nothing_behind(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_and_leave_nothing_behind_etcd() {
    examples_run_and_leave_nothing_behind(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_means_unknown_and_its_return_restarts_nothing() {
    let mut c = Cluster::start(Backend::Embedded, options()).await;
    c.add_host("sim-1").await;
    c.apply_manifests("examples", &examples()).await;
    until("Running", 60, || async {
        let is = instances(&c).await;
        is.len() == 2 && is.iter().all(|i| phase(i) == Some(InstancePhase::Running))
    })
    .await;
    let before = all_domains(&c);

    c.kill_agent("sim-1");
    until("node and instances Unknown", 20, || async {
        let n: Node = c.store.get("", "sim-1").await.unwrap().unwrap();
        let node_unknown = n
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|x| x.type_ == "Ready" && x.status == ConditionStatus::Unknown);
        node_unknown
            && instances(&c)
                .await
                .iter()
                .all(|i| phase(i) == Some(InstancePhase::Unknown))
    })
    .await;
    // The guests never stopped.
    assert_eq!(all_domains(&c), before);

    c.restart_agent("sim-1");
    until("back to Ready and Running", 30, || async {
        let n: Node = c.store.get("", "sim-1").await.unwrap().unwrap();
        let ready = n
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|x| x.type_ == "Ready" && x.status == ConditionStatus::True);
        ready
            && instances(&c)
                .await
                .iter()
                .all(|i| phase(i) == Some(InstancePhase::Running))
    })
    .await;
    // Same domains, same ids: nothing duplicated, nothing restarted.
    assert_eq!(all_domains(&c), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_states_and_drift() {
    let mut c = Cluster::start(Backend::Embedded, options()).await;
    c.add_host("sim-1").await;
    c.apply_manifests("examples", &examples()).await;
    until("Running", 60, || async {
        let is = instances(&c).await;
        is.len() == 2 && is.iter().all(|i| phase(i) == Some(InstancePhase::Running))
    })
    .await;
    let hv = c.hosts["sim-1"].hv.clone();
    let web1: Instance = c.store.get("demo", "web-1").await.unwrap().unwrap();
    let dom = domain_name(&web1.metadata.uid);

    for (desired, want_phase, want_state) in [
        ("Paused", InstancePhase::Paused, PowerState::Paused),
        ("Running", InstancePhase::Running, PowerState::Running),
        ("Suspended", InstancePhase::Suspended, PowerState::Saved),
        ("Running", InstancePhase::Running, PowerState::Running),
        ("Stopped", InstancePhase::Stopped, PowerState::Shutoff),
        ("Running", InstancePhase::Running, PowerState::Running),
    ] {
        let (_, mut obj) = c
            .call(Method::GET, "/v1/projects/demo/instances/web-1", None)
            .await;
        obj["spec"]["powerState"] = serde_json::json!(desired);
        let (code, body) = c
            .call(Method::PUT, "/v1/projects/demo/instances/web-1", Some(obj))
            .await;
        assert_eq!(code, 200, "{body}");
        until(&format!("phase {want_phase:?}"), 30, || async {
            let i: Instance = c.store.get("demo", "web-1").await.unwrap().unwrap();
            phase(&i) == Some(want_phase)
        })
        .await;
        assert_eq!(hv.state(&dom).unwrap(), Some(want_state), "{desired}");
    }

    // Drift: a domain destroyed by hand comes back.
    hv.destroy(&dom).unwrap();
    until("domain running again", 30, || async {
        hv.state(&dom).unwrap() == Some(PowerState::Running)
    })
    .await;
    // An unknown domain this node made is removed; one labelled with
    // another node (an agent sharing libvirt) is left alone.
    let foreign = DomainSpec {
        node: "elsewhere".into(),
        uid: "00000000-0000-4000-8000-000000000002".into(),
        project: "x".into(),
        instance: "theirs".into(),
        vcpus: 1,
        memory_mib: 128,
        ..Default::default()
    };
    hv.define(&foreign).unwrap();
    let orphan = DomainSpec {
        node: "sim-1".into(),
        uid: "00000000-0000-4000-8000-000000000001".into(),
        project: "x".into(),
        instance: "ghost".into(),
        vcpus: 1,
        memory_mib: 128,
        ..Default::default()
    };
    hv.define(&orphan).unwrap();
    hv.start(&domain_name(&orphan.uid)).unwrap();
    until("orphan removed", 30, || async {
        hv.state(&domain_name(&orphan.uid)).unwrap().is_none()
    })
    .await;
    assert!(hv.state(&domain_name(&foreign.uid)).unwrap().is_some());
    hv.undefine(&domain_name(&foreign.uid)).unwrap();
    assert_eq!(all_domains(&c).len(), 2);
}
