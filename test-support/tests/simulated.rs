//! Issue 4's proof, in process: the example manifests run on simulated
//! hosts (libvirt's test driver) through the real API, controllers and
//! agents, on both stores; deletion leaves nothing behind; a silent agent
//! makes its node and instances Unknown and its return restores the truth
//! without restarting a guest; drift is repaired.

use std::time::Duration;

use corral_api_types::Protocol;
use corral_api_types::{ConditionStatus, Instance, InstancePhase, Network, Node};
use corral_controllers::ControllerOptions;
use corral_node_agent::hypervisor::{domain_name, DomainSpec, Hypervisor, PowerState};
use corral_store::ListOptions;
use corral_test_support::{Backend, Cluster};
use reqwest::Method;

fn examples() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
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

    // The agent half of storage and networking ran on the simulated hosts
    // too: each host was asked for exactly its own guests' disks, seeds,
    // NICs, DHCP reservations, firewall allows and metadata.
    until("host plans", 30, || async { host_plans_complete(&c).await }).await;
    assert_host_plans(&c).await;

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
    // ... and the hosts were asked to undo all of it.
    until("host plans emptied", 30, || async {
        c.hosts.values().all(|h| {
            h.plans().is_some_and(|p| {
                p.instances.is_empty()
                    && p.firewall.ports.is_empty()
                    && p.metadata.is_empty()
                    && p.networks.values().all(|n| n.hosts.is_empty())
            })
        })
    })
    .await;
}

/// Every Running instance's NIC is in its node's firewall plan.
async fn host_plans_complete(c: &Cluster) -> bool {
    let is = instances(c).await;
    is.iter().all(|i| {
        let node = i.status.as_ref().and_then(|s| s.node_name.clone());
        let plans = node.and_then(|n| c.hosts.get(&n)).and_then(|h| h.plans());
        plans.is_some_and(|p| p.ports_of(&i.metadata.uid).len() == i.spec.nics.len())
    })
}

/// The examples' two instances as their hosts' plans hold them.
async fn assert_host_plans(c: &Cluster) {
    let gateway: std::net::Ipv4Addr = "10.42.0.1".parse().unwrap();
    for i in instances(c).await {
        let uid = &i.metadata.uid;
        let name = &i.metadata.name;
        let status = i.status.as_ref().unwrap();
        let node = status.node_name.clone().unwrap();
        let plans = c.hosts[&node].plans().expect("the agent registered");
        let address = &status.addresses[0];
        let ip: std::net::Ipv4Addr = address.ip.parse().unwrap();

        // Root disk from the image and a seed with the key and user-data.
        let planned = plans
            .instances
            .get(uid)
            .unwrap_or_else(|| panic!("{name}: no disks on {node}"));
        assert!(planned.root_disk.is_some(), "{name}: no root disk");
        let seed = planned
            .seed
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no seed"));
        assert_eq!(&seed.hostname, name);
        assert!(
            seed.public_keys.iter().any(|k| k.ends_with("admin@demo")),
            "{name}: {:?}",
            seed.public_keys
        );
        let user_data = String::from_utf8_lossy(&seed.user_data);
        assert!(
            user_data.contains(&format!("hostname: {name}")),
            "{user_data}"
        );

        // One NIC: its tap carries the IPAM address and MAC, the web
        // group's three ingress rules and its open egress.
        let ports = plans.ports_of(uid);
        assert_eq!(ports.len(), 1, "{name}: {ports:?}");
        let port = ports[0];
        assert_eq!(port.tap, corral_node_agent::net::tap_name(uid, 0));
        assert_eq!(port.ip, ip);
        assert_eq!(port.mac, address.mac.to_ascii_lowercase());
        let mut ingress: Vec<(Protocol, Option<i32>)> = port
            .ingress
            .iter()
            .map(|a| (a.protocol, a.from_port))
            .collect();
        ingress.sort_by_key(|(p, f)| (format!("{p:?}"), *f));
        assert_eq!(
            ingress,
            vec![
                (Protocol::Icmp, Some(-1)),
                (Protocol::Tcp, Some(22)),
                (Protocol::Tcp, Some(80))
            ],
            "{name}: {:?}",
            port.ingress
        );
        assert!(
            port.ingress.iter().all(|a| a.peers == ["0.0.0.0/0"]),
            "{:?}",
            port.ingress
        );
        let egress = port
            .egress
            .as_ref()
            .expect("the web group restricts egress");
        assert!(
            egress.iter().any(|a| a.protocol == Protocol::All),
            "{egress:?}"
        );

        // The network, with this NIC's DHCP reservation.
        let net = plans
            .networks
            .values()
            .find(|n| n.uid == port.network)
            .unwrap_or_else(|| panic!("{name}: network {} not planned", port.network));
        assert_eq!(net.gateway, gateway);
        assert_eq!(net.cidr.to_string(), "10.42.0.0/24");
        assert_eq!(
            net.hosts.get(&port.mac),
            Some(&(ip, name.clone())),
            "{name}: DHCP {:?}",
            net.hosts
        );

        // The metadata service answers this guest on its gateway.
        let md = plans
            .metadata
            .get(&(gateway, ip))
            .unwrap_or_else(|| panic!("{name}: no metadata entry"));
        assert_eq!(md.instance_id, corral_api_types::ec2::instance_id(uid));

        // Only its own guests: nothing of the other node's instance.
        for other in instances(c).await.iter().filter(|o| o.metadata.uid != *uid) {
            if other.status.as_ref().unwrap().node_name.as_deref() != Some(node.as_str()) {
                assert!(!plans.instances.contains_key(&other.metadata.uid));
                assert!(plans.ports_of(&other.metadata.uid).is_empty());
            }
        }
    }
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

/// An overlay Network across two simulated hosts: the overlay controller
/// gives it a VNI and records each port's node and each node's tunnel
/// endpoint; each host's plan holds the tunnel with a flood entry for the
/// other node and the other node's guest MAC — never its own — learnt
/// through the agent's watch of the Network (no re-read by age here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_networks_span_hosts_in_their_plans() {
    let mut c = Cluster::start(Backend::Embedded, options()).await;
    let vtep = |n: u8| std::net::Ipv4Addr::new(192, 0, 2, n);
    for n in 1..=2u8 {
        c.add_host_with(&format!("sim-{n}"), |o| {
            o.vtep = Some(vtep(n));
            // No re-read by age: only the watch of the Network can bring
            // the other node's port.
            o.object_refresh = Duration::from_secs(3600);
        })
        .await;
    }
    let overlay = examples().replace("mode: nat", "mode: overlay");
    assert!(overlay.contains("mode: overlay"));
    c.apply_manifests("examples", &overlay).await;
    until("Running", 60, || async {
        let is = instances(&c).await;
        is.len() == 2 && is.iter().all(|i| phase(i) == Some(InstancePhase::Running))
    })
    .await;
    let is = instances(&c).await;
    let placed: Vec<(String, String)> = is
        .iter()
        .map(|i| {
            let s = i.status.as_ref().unwrap();
            (
                s.node_name.clone().unwrap(),
                s.addresses[0].mac.to_ascii_lowercase(),
            )
        })
        .collect();
    assert_ne!(placed[0].0, placed[1].0, "spread over both hosts");

    let net = || async {
        c.store
            .get::<corral_api_types::Network>("demo", "lan")
            .await
            .unwrap()
            .unwrap()
    };
    until("the network's endpoints", 30, || async {
        net()
            .await
            .status
            .is_some_and(|s| s.ports.len() == 2 && s.vteps.len() == 2)
    })
    .await;
    let lan = net().await;
    let status = lan.status.clone().unwrap();
    let vni = status.vni.expect("a VNI");
    assert!(vni >= corral_controllers::overlay::VNI_FIRST, "{vni}");
    for (node, mac) in &placed {
        assert_eq!(&status.ports[mac], node);
    }
    let name = corral_node_agent::net::network_name(&lan.metadata.uid);
    for n in 1..=2u8 {
        let node = format!("sim-{n}");
        let other = if n == 1 { 2 } else { 1 };
        let (_, other_mac) = placed.iter().find(|(h, _)| *h != node).unwrap();
        let want = corral_node_agent::net::OverlayDef {
            vni,
            local: vtep(n),
            port: 4789,
            mtu: 1450,
            flood: [vtep(other)].into(),
            macs: [(other_mac.clone(), vtep(other))].into(),
        };
        until(&format!("{node}'s tunnel"), 30, || async {
            c.hosts[&node]
                .plans()
                .and_then(|p| p.networks.get(&name).and_then(|d| d.overlay.clone()))
                == Some(want.clone())
        })
        .await;
    }

    // A guest placed later on one node reaches the other node's table
    // through its watch of the Network (its cached copy never ages out).
    let pinned = placed[1].0.clone();
    let mut node: Node = c.store.get("", &pinned).await.unwrap().unwrap();
    node.metadata.labels.insert("pin".into(), "here".into());
    c.store.update(&node).await.unwrap();
    c.apply_manifests(
        "third",
        "apiVersion: corral/v1\nkind: Instance\nmetadata: {name: web-3, project: demo}\n\
         spec:\n  instanceType: m1.tiny\n  image: tiny\n  nodeSelector: {pin: here}\n  nics: [{network: lan}]\n",
    )
    .await;
    until("web-3 Running", 60, || async {
        instances(&c)
            .await
            .iter()
            .any(|i| i.metadata.name == "web-3" && phase(i) == Some(InstancePhase::Running))
    })
    .await;
    let web3 = instances(&c)
        .await
        .into_iter()
        .find(|i| i.metadata.name == "web-3")
        .unwrap();
    let mac3 = web3.status.as_ref().unwrap().addresses[0]
        .mac
        .to_ascii_lowercase();
    let watcher = if pinned == "sim-1" { "sim-2" } else { "sim-1" };
    let pinned_vtep = if pinned == "sim-1" { vtep(1) } else { vtep(2) };
    until(&format!("{watcher} to learn web-3's MAC"), 30, || async {
        c.hosts[watcher]
            .plans()
            .and_then(|p| p.networks.get(&name).and_then(|d| d.overlay.clone()))
            .is_some_and(|o| o.macs.get(&mac3) == Some(&pinned_vtep))
    })
    .await;

    // A second overlay network gets another VNI.
    c.apply_manifests(
        "second",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: lan2, project: demo}\nspec: {cidr: 10.43.0.0/24, mode: overlay}\n",
    )
    .await;
    until("lan2's VNI", 30, || async {
        let n2 = c
            .store
            .get::<corral_api_types::Network>("demo", "lan2")
            .await
            .unwrap()
            .unwrap();
        n2.status
            .and_then(|s| s.vni)
            .is_some_and(|v| v != vni && v >= 4096)
    })
    .await;
}
