//! The agent on a simulated host (libvirt's test driver) runs the same
//! convergence as on a real one, and its host — the simulated twin,
//! [`SimHost`] — records what it was asked for: a NIC's firewall port
//! (tap, address, MAC, its security group's allows), the seed (hostname,
//! keys, user-data), the root disk, the network with its DHCP reservation,
//! and the metadata table. Deleting the instance takes all of it away.
//!
//! The native API is a small in-memory stand-in (just what the agent
//! reads and writes, with a watch stream), so the agent's own requests
//! can be counted: defining many instances costs no read per instance
//! beyond what the host networking passes share.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use corral_api_types::{
    Image, ImagePhase, ImageSpec, ImageStatus, Instance, InstanceAddress, InstancePhase,
    InstanceSpec, InstanceStatus, InstanceType, InstanceTypeSpec, KeyPair, KeyPairSpec, Network,
    NetworkMode, NetworkSpec, Nic, Protocol, Resource, SecurityGroup, SecurityGroupRule,
    SecurityGroupSpec, SecurityGroupStatus,
};
use corral_node_agent::host::{named_image, SimPlans};
use corral_node_agent::hypervisor::{domain_name, simulated_host, Hypervisor};
use corral_node_agent::net::{network_name, tap_name};
use corral_node_agent::{Agent, AgentOptions, ApiClient, Libvirt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

const NODE: &str = "sim-1";
const PROJECT: &str = "demo";
const NET_UID: &str = "6a1f0c2e-0000-4000-8000-00000000aaaa";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdmin admin@demo";

// ------------------------------------------------------- the API stand-in

#[derive(Default)]
struct Store {
    /// Objects by path (`/v1/projects/P/instances/N`, `/v1/nodes/N`, …).
    objects: BTreeMap<String, Value>,
    revision: u64,
}

struct FakeApi {
    store: Mutex<Store>,
    /// Watch lines for `/v1/instances`.
    events: broadcast::Sender<String>,
    /// GETs of one object (not lists, not watches), by kind plural.
    reads: Mutex<BTreeMap<String, u64>>,
    requests: AtomicU64,
}

impl FakeApi {
    fn put(&self, path: &str, mut obj: Value) -> Value {
        let mut s = self.store.lock().unwrap();
        s.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(s.revision.to_string());
        s.objects.insert(path.to_string(), obj.clone());
        drop(s);
        if path.contains("/instances/") {
            let line = json!({"type": "MODIFIED", "object": obj}).to_string() + "\n";
            let _ = self.events.send(line);
        }
        obj
    }

    fn remove(&self, path: &str) {
        let obj = self.store.lock().unwrap().objects.remove(path);
        if let Some(obj) = obj {
            let line = json!({"type": "DELETED", "object": obj}).to_string() + "\n";
            let _ = self.events.send(line);
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(path).cloned()
    }

    fn list(&self, plural: &str) -> Value {
        let s = self.store.lock().unwrap();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|(k, _)| k.split('/').nth(4) == Some(plural))
            .map(|(_, v)| v.clone())
            .collect();
        json!({"items": items, "metadata": {"resourceVersion": s.revision.to_string()}})
    }
}

fn not_found(path: &str) -> Response {
    let body = json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": format!("{path} not found")});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn handle(
    State(api): State<Arc<FakeApi>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    match method {
        Method::GET if query.contains("watch=true") => {
            // Only Instances change under the agent here: other kinds'
            // watches see bookmarks alone.
            let rx = (path == "/v1/instances").then(|| api.events.subscribe());
            let lines = futures_util::stream::unfold(rx, |mut rx| async move {
                let next = async {
                    match rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let line = tokio::select! {
                    got = next => match got {
                        Ok(line) => line,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            "{\"type\":\"ERROR\",\"object\":{}}\n".to_string()
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        "{\"type\":\"BOOKMARK\",\"object\":{}}\n".to_string()
                    }
                };
                Some((Ok::<_, Infallible>(line), rx))
            });
            Body::from_stream(lines).into_response()
        }
        Method::GET
            if matches!(
                path.as_str(),
                "/v1/instances" | "/v1/volumes" | "/v1/snapshots"
            ) =>
        {
            axum::Json(api.list(&path["/v1/".len()..])).into_response()
        }
        Method::GET => {
            if segments.len() == 6 && segments[2] == "projects" {
                *api.reads
                    .lock()
                    .unwrap()
                    .entry(segments[4].to_string())
                    .or_default() += 1;
            }
            match api.get(&path) {
                Some(v) => axum::Json(v).into_response(),
                None => not_found(&path),
            }
        }
        Method::POST if path == "/v1/nodes" => {
            let obj: Value = serde_json::from_slice(&body).unwrap();
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            let stored = api.put(&format!("/v1/nodes/{name}"), obj);
            (StatusCode::CREATED, axum::Json(stored)).into_response()
        }
        Method::PUT if path.ends_with("/status") => {
            let obj: Value = serde_json::from_slice(&body).unwrap();
            let at = path.trim_end_matches("/status");
            if api.get(at).is_none() {
                return not_found(at);
            }
            axum::Json(api.put(at, obj)).into_response()
        }
        Method::PUT | Method::DELETE if path.ends_with("/console") => {
            axum::Json(json!({})).into_response()
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "not in the stand-in").into_response(),
    }
}

async fn start_api() -> (Arc<FakeApi>, String) {
    let (events, _) = broadcast::channel(4096);
    let api = Arc::new(FakeApi {
        store: Mutex::default(),
        events,
        reads: Mutex::default(),
        requests: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(handle).with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (api, base)
}

// ------------------------------------------------------------- the objects

fn with_uid<T: Resource + serde::Serialize>(obj: T, uid: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["metadata"]["uid"] = json!(uid);
    v
}

/// A project with a NAT network, a security group letting SSH in, a key
/// pair, an image and the default instance type.
fn seed_objects(api: &FakeApi) {
    let p = |kind: &str, name: &str| format!("/v1/projects/{PROJECT}/{kind}/{name}");
    api.put(
        "/v1/instancetypes/m1.tiny",
        with_uid(
            InstanceType::new(
                "",
                "m1.tiny",
                InstanceTypeSpec {
                    vcpus: 1,
                    memory_mib: 512,
                    root_disk_gib: 1,
                    ..Default::default()
                },
            ),
            "it-1",
        ),
    );
    api.put(
        &p("networks", "lan"),
        with_uid(
            Network::new(
                PROJECT,
                "lan",
                NetworkSpec {
                    cidr: "10.42.0.0/24".into(),
                    mode: NetworkMode::Nat,
                    dhcp: true,
                    ..Default::default()
                },
            ),
            NET_UID,
        ),
    );
    let mut sg = SecurityGroup::new(
        PROJECT,
        "web",
        SecurityGroupSpec {
            ingress: vec![SecurityGroupRule {
                protocol: Protocol::Tcp,
                from_port: Some(22),
                to_port: Some(22),
                cidr: Some("0.0.0.0/0".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    sg.status = Some(SecurityGroupStatus::default());
    api.put(&p("securitygroups", "web"), with_uid(sg, "sg-1"));
    api.put(
        &p("keypairs", "admin"),
        with_uid(
            KeyPair::new(
                PROJECT,
                "admin",
                KeyPairSpec {
                    public_key: KEY.into(),
                    ..Default::default()
                },
            ),
            "kp-1",
        ),
    );
    let mut image = Image::new(PROJECT, "tiny", ImageSpec::default());
    image.status = Some(ImageStatus {
        phase: ImagePhase::Available,
        ec2_id: Some("ami-0123456789abcdef0".into()),
        ..Default::default()
    });
    api.put(&p("images", "tiny"), with_uid(image, "img-1"));
}

/// Instance `n`, bound to this node with its address allocated.
fn instance(n: u8) -> (String, String, Value) {
    let name = format!("web-{n}");
    let uid = format!("00000000-0000-4000-8000-0000000000{n:02x}");
    let mut i = Instance::new(
        PROJECT,
        &name,
        InstanceSpec {
            instance_type: Some("m1.tiny".into()),
            image: Some("tiny".into()),
            nics: vec![Nic {
                network: "lan".into(),
                security_groups: vec!["web".into()],
                ..Default::default()
            }],
            key_name: Some("admin".into()),
            user_data: Some(format!("#cloud-config\nhostname: {name}\n")),
            ..Default::default()
        },
    );
    i.status = Some(InstanceStatus {
        phase: InstancePhase::Scheduled,
        node_name: Some(NODE.into()),
        addresses: vec![InstanceAddress {
            network: "lan".into(),
            ip: format!("10.42.0.{}", 10 + u32::from(n)),
            mac: format!("52:54:00:00:00:{n:02x}"),
            ..Default::default()
        }],
        ..Default::default()
    });
    let path = format!("/v1/projects/{PROJECT}/instances/{name}");
    (path, uid.clone(), with_uid(i, &uid))
}

// ------------------------------------------------------------------ helpers

async fn until<F: Fn() -> bool>(what: &str, secs: u64, f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

fn phase(api: &FakeApi, path: &str) -> Option<String> {
    api.get(path)
        .and_then(|v| v["status"]["phase"].as_str().map(str::to_string))
}

fn condition(api: &FakeApi, path: &str, type_: &str) -> Option<(String, String)> {
    let v = api.get(path)?;
    let c = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

struct Running {
    agent: Arc<Agent>,
    hv: Arc<Libvirt>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn start_agent(base: &str) -> Running {
    start_agent_with(base, |_| {})
}

fn start_agent_with(base: &str, tune: impl FnOnce(&mut AgentOptions)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let uri = simulated_host(dir.path(), NODE, 64, 256 * 1024).unwrap();
    let hv = Arc::new(Libvirt::open(&uri, "test").unwrap());
    let mut opts = AgentOptions::new(NODE);
    opts.heartbeat = Duration::from_millis(500);
    opts.resync = Duration::from_secs(2);
    opts.host_sync = Duration::from_millis(200);
    opts.state_dir = dir.path().join("unused");
    tune(&mut opts);
    let agent = Agent::new(ApiClient::new(base, "token"), hv.clone(), opts);
    let (stop, rx) = watch::channel(false);
    tokio::spawn(agent.clone().run(rx));
    Running {
        agent,
        hv,
        _stop: stop,
        _dir: dir,
    }
}

fn plans(agent: &Agent) -> SimPlans {
    agent
        .host()
        .expect("registered")
        .as_sim()
        .expect("a simulated host on the test driver")
        .plans()
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_host_holds_the_plans_of_its_guests() {
    let (api, base) = start_api().await;
    seed_objects(&api);
    let (path, uid, obj) = instance(5);
    api.put(&path, obj);
    let run = start_agent(&base);

    until("web-5 Running", 30, || {
        phase(&api, &path).as_deref() == Some("Running")
    })
    .await;
    until("its lease held", 10, || {
        condition(&api, &path, "AddressLeased") == Some(("True".into(), "Leased".into()))
    })
    .await;
    assert_eq!(
        condition(&api, &path, "Ready").map(|c| c.0).as_deref(),
        Some("True")
    );
    let p = plans(&run.agent);

    // The seed and the root disk.
    let guest = &p.instances[&uid];
    let seed = guest.seed.as_ref().expect("a seed");
    assert_eq!(seed.hostname, "web-5");
    assert_eq!(seed.public_keys, [KEY]);
    assert_eq!(seed.user_data, b"#cloud-config\nhostname: web-5\n");
    assert!(seed.instance_id.starts_with("i-"), "{}", seed.instance_id);
    let root = guest.root_disk.as_ref().expect("a root disk");
    assert_eq!(root.base, named_image(PROJECT, "tiny"));
    assert_eq!(root.min_bytes, 1 << 30);
    // The domain has them, in boot order.
    let targets = run.hv.disk_targets(&domain_name(&uid)).unwrap();
    assert_eq!(targets, ["vda", "hdc"]);

    // The network, with the guest's DHCP reservation.
    let lan = &p.networks[&network_name(NET_UID)];
    assert_eq!(lan.gateway, Ipv4Addr::new(10, 42, 0, 1));
    assert_eq!(lan.cidr.to_string(), "10.42.0.0/24");
    assert_eq!(
        lan.hosts["52:54:00:00:00:05"],
        (Ipv4Addr::new(10, 42, 0, 15), "web-5".to_string())
    );

    // The NIC as the firewall sees it.
    let ports = p.ports_of(&uid);
    assert_eq!(ports.len(), 1);
    let nic = ports[0];
    assert_eq!(nic.tap, tap_name(&uid, 0));
    assert_eq!(nic.network, NET_UID);
    assert_eq!(nic.ip, Ipv4Addr::new(10, 42, 0, 15));
    assert_eq!(nic.mac, "52:54:00:00:00:05");
    assert_eq!(nic.ingress.len(), 1);
    assert_eq!(nic.ingress[0].protocol, Protocol::Tcp);
    assert_eq!(
        (nic.ingress[0].from_port, nic.ingress[0].to_port),
        (Some(22), Some(22))
    );
    assert_eq!(nic.ingress[0].peers, ["0.0.0.0/0"]);
    assert_eq!(nic.egress, None, "no group restricts egress");
    assert!(p.firewall_applies.0 >= 1);

    // What the metadata service tells the guest on its gateway.
    let md = &p.metadata[&(Ipv4Addr::new(10, 42, 0, 1), Ipv4Addr::new(10, 42, 0, 15))];
    assert_eq!(md.instance_id, seed.instance_id);
    assert_eq!(md.hostname, "web-5");
    assert_eq!(md.local_ipv4, "10.42.0.15");
    assert_eq!(md.ami_id.as_deref(), Some("ami-0123456789abcdef0"));
    assert_eq!(md.public_keys, [("admin".to_string(), KEY.to_string())]);
    assert_eq!(md.security_groups, ["web"]);
    // EC2's default options; changed ones reach the table with the
    // instance (ModifyInstanceMetadataOptions on a running guest).
    assert!(!md.http_tokens_required && md.http_endpoint_enabled);
    assert_eq!((md.http_put_response_hop_limit, md.tags.clone()), (1, None));
    let mut changed = api.get(&path).unwrap();
    changed["spec"]["metadataOptions"] = json!({"httpTokens": "required",
        "httpEndpoint": "disabled", "httpPutResponseHopLimit": 3,
        "instanceMetadataTags": "enabled"});
    changed["spec"]["tags"] = json!({"Name": "web-5"});
    api.put(&path, changed);
    let at = (Ipv4Addr::new(10, 42, 0, 1), Ipv4Addr::new(10, 42, 0, 15));
    until("the new options in the metadata table", 10, || {
        plans(&run.agent)
            .metadata
            .get(&at)
            .is_some_and(|m| m.http_tokens_required)
    })
    .await;
    let md = plans(&run.agent).metadata[&at].clone();
    assert!(!md.http_endpoint_enabled);
    assert_eq!(md.http_put_response_hop_limit, 3);
    assert_eq!(
        md.tags,
        Some(BTreeMap::from([("Name".to_string(), "web-5".to_string())]))
    );

    // A root disk deleted behind Corral's back is reported as drift.
    run.agent
        .host()
        .unwrap()
        .as_sim()
        .unwrap()
        .delete_root_disk(&uid);
    until("the drift reported", 10, || {
        condition(&api, &path, "Drifted") == Some(("True".into(), "DiskMissing".into()))
    })
    .await;

    // Deleted: the domain and the instance's files go at once; the rest
    // with the instance.
    let mut gone = api.get(&path).unwrap();
    gone["metadata"]["deletionTimestamp"] = json!("2026-12-07T00:00:00Z");
    api.put(&path, gone);
    until("web-5 Terminating", 30, || {
        phase(&api, &path).as_deref() == Some("Terminating")
    })
    .await;
    assert!(run.hv.state(&domain_name(&uid)).unwrap().is_none());
    assert!(!plans(&run.agent).instances.contains_key(&uid));
    api.remove(&path);
    until("the host holds nothing", 10, || {
        let p = plans(&run.agent);
        p.networks.is_empty() && p.firewall.ports.is_empty() && p.metadata.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defining_many_guests_reads_each_object_once_per_pass() {
    const N: u8 = 60;
    let (api, base) = start_api().await;
    seed_objects(&api);
    let run = start_agent(&base);
    // Registered, listed and idle first: what follows is the defines.
    until("registered", 10, || run.agent.host().is_some()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: u64 = api.reads.lock().unwrap().values().sum();
    let mut paths = Vec::new();
    for n in 1..=N {
        let (path, _, obj) = instance(n);
        api.put(&path, obj);
        paths.push(path);
    }
    until("all Running", 60, || {
        paths
            .iter()
            .all(|p| phase(&api, p).as_deref() == Some("Running"))
    })
    .await;
    let reads = api.reads.lock().unwrap().clone();
    let total: u64 = reads.values().sum::<u64>() - before;
    // Four objects a pass (network, group, key pair, image); passes are
    // shared by the workers defining at once and run every `host_sync`.
    // A read per instance and object, or a pass per instance reading every
    // instance's objects, would be well over this.
    eprintln!("{N} guests defined with {total} object reads: {reads:?}");
    assert!(total < 4 * u64::from(N), "{total} reads: {reads:?}");
    let p = plans(&run.agent);
    assert_eq!(p.instances.len(), usize::from(N));
    assert_eq!(p.firewall.ports.len(), usize::from(N));
    assert_eq!(
        p.networks[&network_name(NET_UID)].hosts.len(),
        usize::from(N)
    );
    assert_eq!(p.metadata.len(), usize::from(N));
}

/// The ports the firewall port of instance `n`'s NIC admits.
fn ports_of(agent: &Agent, n: u8) -> Vec<Option<i32>> {
    let Some(host) = agent.host() else {
        return Vec::new();
    };
    host.as_sim()
        .expect("a simulated host")
        .plans()
        .firewall
        .ports
        .iter()
        .find(|p| p.display == format!("{PROJECT}/web-{n}/0"))
        .map(|p| p.ingress.iter().map(|a| a.from_port).collect())
        .unwrap_or_default()
}

fn reads_of(api: &FakeApi, plural: &str) -> u64 {
    api.reads.lock().unwrap().get(plural).copied().unwrap_or(0)
}

fn group(name: &str, port: i32) -> SecurityGroup {
    let mut sg = SecurityGroup::new(
        PROJECT,
        name,
        SecurityGroupSpec {
            ingress: vec![SecurityGroupRule {
                protocol: Protocol::Tcp,
                from_port: Some(port),
                to_port: Some(port),
                cidr: Some("0.0.0.0/0".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    sg.status = Some(SecurityGroupStatus::default());
    sg
}

/// Passes run every `host_sync`, but one reuses what an earlier pass read
/// until it is `object_refresh` old: an idle node reads nothing, while a
/// group no pass has read yet is read at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_passes_read_nothing_and_new_objects_at_once() {
    let (api, base) = start_api().await;
    seed_objects(&api);
    let run = start_agent_with(&base, |o| o.object_refresh = Duration::from_secs(3600));
    let (one, _, obj) = instance(1);
    api.put(&one, obj);
    until("web-1 Running", 30, || {
        phase(&api, &one).as_deref() == Some("Running")
    })
    .await;
    let before = api.reads.lock().unwrap().clone();
    // Ten passes' worth of idle (host_sync is 200 ms here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        *api.reads.lock().unwrap(),
        before,
        "idle passes read objects"
    );

    let db = with_uid(group("db", 5432), "sg-2");
    api.put(&format!("/v1/projects/{PROJECT}/securitygroups/db"), db);
    let (two, _, mut obj) = instance(2);
    obj["spec"]["nics"][0]["securityGroups"] = json!(["db"]);
    api.put(&two, obj);
    until("web-2's port with db's rule", 30, || {
        ports_of(&run.agent, 2) == [Some(5432)]
    })
    .await;
    assert_eq!(
        reads_of(&api, "securitygroups"),
        before["securitygroups"] + 1
    );
    assert_eq!(reads_of(&api, "networks"), before["networks"]);
    assert_eq!(ports_of(&run.agent, 1), [Some(22)]);
}

/// A changed rule reaches the host's firewall once the copy a pass holds
/// is `object_refresh` old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_reaches_the_firewall_after_the_refresh() {
    let (api, base) = start_api().await;
    seed_objects(&api);
    let run = start_agent_with(&base, |o| o.object_refresh = Duration::from_millis(500));
    let (one, _, obj) = instance(1);
    api.put(&one, obj);
    until("web-1's port", 30, || ports_of(&run.agent, 1) == [Some(22)]).await;
    // The new rule names an IPv6 block: it reaches the IPv6 ruleset only.
    let mut web = group("web", 2222);
    web.spec.ingress[0].cidr = Some("2001:db8::/32".into());
    api.put(
        &format!("/v1/projects/{PROJECT}/securitygroups/web"),
        with_uid(web, "sg-1"),
    );
    until("the changed rule", 30, || {
        ports_of(&run.agent, 1) == [Some(2222)]
    })
    .await;
    let plan = run.agent.host().unwrap().as_sim().unwrap().plans().firewall;
    let allow = "-s 2001:db8::/32 -p tcp -m tcp --dport 2222 -j RETURN".to_string();
    let lines = |rules: Vec<corral_node_agent::net::TableRules>| -> Vec<String> {
        rules
            .into_iter()
            .flat_map(|t| t.chains)
            .flat_map(|(_, lines)| lines)
            .collect()
    };
    assert!(lines(plan.rules_v6()).contains(&allow), "{plan:?}");
    assert!(!lines(plan.rules()).iter().any(|l| l.contains("2001:db8")));
}

/// libvirt's test driver has no persistent hot-plug: the hypervisor keeps
/// a simulated domain's disks in its definition, so volume hot-plug
/// converges there as on a real host.
#[test]
fn volumes_hot_plug_on_the_test_driver() {
    use corral_node_agent::hypervisor::{DiskSpec, DomainSpec};
    let dir = tempfile::tempdir().unwrap();
    let uri = simulated_host(dir.path(), "plug", 4, 4096).unwrap();
    let hv = Libvirt::open(&uri, "test").unwrap();
    let disk = |target: &str, path: &str, cdrom: bool| DiskSpec {
        path: path.into(),
        format: if cdrom { "raw" } else { "qcow2" }.into(),
        target: target.into(),
        readonly: cdrom,
        serial: None,
        cdrom,
    };
    let uid = "00000000-0000-4000-8000-0000000000ff";
    let spec = DomainSpec {
        node: NODE.into(),
        uid: uid.into(),
        project: PROJECT.into(),
        instance: "plug".into(),
        vcpus: 1,
        memory_mib: 64,
        disks: vec![disk("vda", "/x/root", false), disk("hdc", "/x/seed", true)],
        ..Default::default()
    };
    hv.define(&spec).unwrap();
    let name = domain_name(uid);
    hv.start(&name).unwrap();
    assert_eq!(hv.disk_targets(&name).unwrap(), ["vda", "hdc"]);
    hv.attach_disk(&name, &disk("vdb", "/x/vol", false))
        .unwrap();
    // Twice is once.
    hv.attach_disk(&name, &disk("vdb", "/x/vol", false))
        .unwrap();
    // libvirt keeps disks in its own order (by bus and name).
    let mut targets = hv.disk_targets(&name).unwrap();
    targets.sort();
    assert_eq!(targets, ["hdc", "vda", "vdb"]);
    hv.detach_disk(&name, "vdb").unwrap();
    hv.detach_disk(&name, "vdb").unwrap();
    assert_eq!(hv.disk_targets(&name).unwrap(), ["vda", "hdc"]);
    hv.destroy(&name).unwrap();
    hv.undefine(&name).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floating_addresses_are_held_on_the_uplink_and_announced() {
    let (api, base) = start_api().await;
    seed_objects(&api);
    let fip = Ipv4Addr::new(172, 24, 4, 7);
    let (path, _, mut obj) = instance(6);
    obj["status"]["addresses"][0]["floatingIp"] = json!(fip.to_string());
    api.put(&path, obj);
    let (other, _, plain) = instance(7);
    api.put(&other, plain);
    let run = start_agent_with(&base, |o| o.uplink = Some("eth0".into()));
    until("registered", 30, || run.agent.host().is_some()).await;
    until("the floating address on the uplink", 30, || {
        plans(&run.agent)
            .uplink
            .get("eth0")
            .is_some_and(|a| a.contains(&fip))
    })
    .await;
    let p = plans(&run.agent);
    assert!(p.forgotten.is_empty(), "{:?}", p.forgotten);
    // Exactly the floating addresses of the ports here, announced once;
    // the DNAT that takes their packets to the guest is in the plan.
    assert_eq!(p.uplink["eth0"], BTreeSet::from([fip]));
    assert_eq!(p.announced, [("eth0".to_string(), fip)]);
    assert!(p.firewall.ports.iter().any(|n| n.floating_ip == Some(fip)));

    // Disassociated: it leaves the uplink; associated again (here, say,
    // after it moved away and back): announced again.
    let mut moved = api.get(&path).unwrap();
    moved["status"]["addresses"][0]
        .as_object_mut()
        .unwrap()
        .remove("floatingIp");
    api.put(&path, moved.clone());
    until("the floating address off the uplink", 30, || {
        plans(&run.agent).uplink["eth0"].is_empty()
    })
    .await;
    // Its tracked flows were forgotten (no connection keeps reaching the
    // guest it left); nothing was forgotten before.
    until("the released address's flows forgotten", 30, || {
        plans(&run.agent).forgotten == [fip]
    })
    .await;
    moved["status"]["addresses"][0]["floatingIp"] = json!(fip.to_string());
    api.put(&path, moved);
    until("the floating address back and announced again", 30, || {
        plans(&run.agent).announced.len() == 2
    })
    .await;
    assert_eq!(plans(&run.agent).uplink["eth0"], BTreeSet::from([fip]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_uplink_floating_addresses_are_only_translated() {
    let (api, base) = start_api().await;
    seed_objects(&api);
    let (path, _, mut obj) = instance(8);
    obj["status"]["addresses"][0]["floatingIp"] = json!("172.24.4.8");
    api.put(&path, obj);
    let run = start_agent(&base);
    until("registered", 30, || run.agent.host().is_some()).await;
    until("the floating address in the firewall plan", 30, || {
        plans(&run.agent)
            .firewall
            .ports
            .iter()
            .any(|n| n.floating_ip.is_some())
    })
    .await;
    let p = plans(&run.agent);
    assert!(p.uplink.is_empty() && p.announced.is_empty());
}
