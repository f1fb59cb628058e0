//! Scenario 4, part a: the seeded workload of the SIGKILL rounds and the in-process
//! agents it runs beside.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_client::ClientError;
use corral_node_agent::{Agent, AgentOptions, ApiClient};
use serde_json::{json, Value};

use crate::seeded::Rng;
use crate::support::*;

/// A node agent inside this process on its own runtime, over a host that
/// outlives it.
pub(crate) struct InProcAgent {
    pub(crate) rt: Option<tokio::runtime::Runtime>,
    pub(crate) stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl InProcAgent {
    pub(crate) fn start(
        dir: &Path,
        server: &str,
        token: &str,
        node: &str,
        host: Arc<CountingHost>,
    ) -> InProcAgent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("agent-{node}"))
            .enable_all()
            .build()
            .unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        {
            let _in = rt.enter();
            // `corral agent`'s defaults.
            let mut opts = AgentOptions::new(node);
            opts.state_dir = dir.join(node);
            let agent = Agent::new(ApiClient::new(server, token), host, opts);
            rt.spawn(async move {
                let _ = agent.run(rx).await;
            });
        }
        InProcAgent {
            rt: Some(rt),
            stop: Some(stop),
        }
    }

    /// Drops every task of the agent at once: no shutdown path runs.
    pub(crate) fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.stop.take();
    }
}

impl Drop for InProcAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a client may assume about an object after its acknowledged writes.
#[derive(Clone, Debug)]
pub(crate) enum Expect {
    /// The last write was acknowledged: these spec fields hold.
    Present(Value),
    /// Acknowledged delete.
    Gone,
    /// The last write was not acknowledged (the server or etcd died under
    /// it): either outcome is allowed.
    Uncertain { deleting: bool },
}

#[derive(Clone, Debug)]
pub(crate) struct Tracked {
    pub(crate) plural: &'static str,
    pub(crate) name: String,
    pub(crate) expect: Expect,
    /// The round of the last write attempted.
    pub(crate) round: u64,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) acked: u64,
    pub(crate) uncertain: u64,
    /// 4xx on objects whose state was known: a finding.
    pub(crate) anomalies: Vec<String>,
}

pub(crate) enum Outcome {
    Acked(Value),
    Refused(u16, Value),
    /// No answer: the write may or may not have happened.
    Unknown,
    /// Nothing was written (a read before the write failed).
    Skipped,
}

/// A client that knows both servers: a request that could not connect
/// goes to the other (it was never sent); anything else is an answer.
pub(crate) async fn send(
    apis: &[Api],
    first: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Outcome {
    for k in 0..apis.len() {
        let api = &apis[(first + k) % apis.len()];
        match api.try_call(method.clone(), path, body).await {
            Ok((code, v)) if (200..300).contains(&code) => return Outcome::Acked(v),
            Ok((code, v)) if (400..500).contains(&code) => return Outcome::Refused(code, v),
            Ok(_) => return Outcome::Unknown,
            Err(ClientError::Unreachable { .. }) => continue,
            Err(_) => return Outcome::Unknown,
        }
    }
    Outcome::Unknown
}

/// A change as a careful client makes it: read the object, change its
/// spec, write it back with what was read (its resourceVersion and
/// finalizers); 409: read again. (A blind PUT of name and spec would also
/// replace `metadata.finalizers` with none: see the module docs.)
pub(crate) async fn read_modify_write(
    apis: &[Api],
    first: usize,
    path: &str,
    fields: &Value,
) -> Outcome {
    for _ in 0..8 {
        let mut obj = match send(apis, first, reqwest::Method::GET, path, None).await {
            Outcome::Acked(v) => v,
            Outcome::Refused(c, v) => return Outcome::Refused(c, v),
            Outcome::Unknown | Outcome::Skipped => return Outcome::Skipped,
        };
        for (k, v) in fields.as_object().expect("fields") {
            obj["spec"][k] = v.clone();
        }
        obj.as_object_mut().expect("object").remove("status");
        match send(apis, first, reqwest::Method::PUT, path, Some(&obj)).await {
            Outcome::Refused(409, _) => continue,
            other => return other,
        }
    }
    Outcome::Refused(409, json!("8 conflicts in a row"))
}

pub(crate) fn instance_spec(power: &str, gen: u64) -> Value {
    json!({"instanceType": "m1.tiny", "image": "tiny", "nics": [{"network": "lan"}],
           "powerState": power, "tags": {"gen": gen.to_string()}})
}

/// One workload worker: creates, changes and deletes its own instances,
/// volumes and networks until `stop`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn workload(
    w: usize,
    seed: u64,
    apis: Vec<Api>,
    objects: Arc<Mutex<BTreeMap<String, Tracked>>>,
    tally: Arc<Mutex<Tally>>,
    round: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(seed, 100 + w as u64 + 1000 * round.load(Ordering::SeqCst));
    while !stop.load(Ordering::SeqCst) {
        let r = round.load(Ordering::SeqCst);
        let mine: Vec<Tracked> = objects
            .lock()
            .unwrap()
            .values()
            .filter(|t| t.name.starts_with(&format!("w{w}-")))
            .filter(|t| {
                !matches!(
                    t.expect,
                    Expect::Gone | Expect::Uncertain { deleting: true }
                )
            })
            .cloned()
            .collect();
        let of = |p: &str| {
            mine.iter()
                .filter(|t| t.plural == p)
                .cloned()
                .collect::<Vec<_>>()
        };
        let (instances, volumes, networks) = (of("instances"), of("volumes"), of("networks"));
        let choice = rng.range(0, 100);
        let n = counter.fetch_add(1, Ordering::SeqCst);
        // (plural, name, method, body, expected spec fields if acked)
        let (plural, name, method, body, fields): (
            &'static str,
            String,
            reqwest::Method,
            Option<Value>,
            Option<Value>,
        ) = if choice < 30 && instances.len() < 3 {
            let name = format!("w{w}-i{n}");
            let spec = instance_spec("Running", 0);
            (
                "instances",
                name.clone(),
                reqwest::Method::POST,
                Some(json!({"metadata": {"name": name}, "spec": spec})),
                Some(json!({"powerState": "Running", "tags": {"gen": "0"}})),
            )
        } else if choice < 55 && !instances.is_empty() {
            let t = &instances[rng.range(0, instances.len() as u64) as usize];
            let power = if rng.chance(40) { "Stopped" } else { "Running" };
            let gen = n;
            (
                "instances",
                t.name.clone(),
                reqwest::Method::PUT,
                Some(json!({"metadata": {"name": t.name}, "spec": instance_spec(power, gen)})),
                Some(json!({"powerState": power, "tags": {"gen": gen.to_string()}})),
            )
        } else if choice < 65 && !instances.is_empty() {
            let t = &instances[rng.range(0, instances.len() as u64) as usize];
            (
                "instances",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if choice < 75 && volumes.len() < 3 {
            let name = format!("w{w}-v{n}");
            (
                "volumes",
                name.clone(),
                reqwest::Method::POST,
                Some(
                    json!({"metadata": {"name": name}, "spec": {"sizeGiB": 1, "tags": {"gen": "0"}}}),
                ),
                Some(json!({"sizeGiB": 1, "tags": {"gen": "0"}})),
            )
        } else if choice < 80 && !volumes.is_empty() {
            let t = &volumes[rng.range(0, volumes.len() as u64) as usize];
            (
                "volumes",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if choice < 88 && networks.len() < 2 {
            let name = format!("w{w}-n{n}");
            let cidr = format!("10.{}.{}.0/24", 200 + w, n % 250);
            (
                "networks",
                name.clone(),
                reqwest::Method::POST,
                Some(
                    json!({"metadata": {"name": name}, "spec": {"cidr": cidr, "mode": "isolated", "tags": {"gen": "0"}}}),
                ),
                Some(json!({"cidr": cidr, "tags": {"gen": "0"}})),
            )
        } else if choice < 94 && !networks.is_empty() {
            let t = &networks[rng.range(0, networks.len() as u64) as usize];
            (
                "networks",
                t.name.clone(),
                reqwest::Method::DELETE,
                None,
                None,
            )
        } else if !volumes.is_empty() {
            let t = &volumes[rng.range(0, volumes.len() as u64) as usize];
            let gen = n.to_string();
            (
                "volumes",
                t.name.clone(),
                reqwest::Method::PUT,
                Some(
                    json!({"metadata": {"name": t.name}, "spec": {"sizeGiB": 1, "tags": {"gen": gen}}}),
                ),
                Some(json!({"sizeGiB": 1, "tags": {"gen": gen}})),
            )
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let path = if method == reqwest::Method::POST {
            format!("/v1/projects/chaos/{plural}")
        } else {
            format!("/v1/projects/chaos/{plural}/{name}")
        };
        let deleting = method == reqwest::Method::DELETE;
        let key = format!("{plural}/{name}");
        let before = objects.lock().unwrap().get(&key).map(|t| t.expect.clone());
        let first = rng.range(0, 2) as usize;
        let outcome = if method == reqwest::Method::PUT && rng.chance(50) {
            // The GitOps path: the manifest (whole spec) applied.
            let mut manifest = body.clone().expect("body");
            manifest["apiVersion"] = json!("corral/v1");
            manifest["kind"] = json!(if plural == "instances" {
                "Instance"
            } else {
                "Volume"
            });
            manifest["metadata"]["project"] = json!("chaos");
            send(
                &apis,
                first,
                reqwest::Method::POST,
                "/v1/apply",
                Some(&manifest),
            )
            .await
        } else if method == reqwest::Method::PUT {
            read_modify_write(&apis, first, &path, fields.as_ref().expect("fields")).await
        } else {
            send(&apis, first, method.clone(), &path, body.as_ref()).await
        };
        let expect = match outcome {
            Outcome::Acked(_) => {
                tally.lock().unwrap().acked += 1;
                if deleting {
                    Expect::Gone
                } else {
                    Expect::Present(fields.unwrap())
                }
            }
            // Asked of an object whose last write was lost: it is not there.
            Outcome::Refused(404, _) if matches!(before, Some(Expect::Uncertain { .. })) => {
                Expect::Gone
            }
            Outcome::Refused(code, v) => {
                tally
                    .lock()
                    .unwrap()
                    .anomalies
                    .push(format!("{method} {path}: {code} {v}"));
                before.clone().unwrap_or(Expect::Gone)
            }
            Outcome::Skipped => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Outcome::Unknown => {
                tally.lock().unwrap().uncertain += 1;
                Expect::Uncertain { deleting }
            }
        };
        objects.lock().unwrap().insert(
            key,
            Tracked {
                plural,
                name,
                expect,
                round: r,
            },
        );
        tokio::time::sleep(Duration::from_millis(rng.range(10, 80))).await;
    }
}
