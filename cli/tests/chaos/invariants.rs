//! Scenario 4, part b: what must hold after every SIGKILL round: a snapshot of API and
//! hosts, and the violations found in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use crate::stopped_agent::*;
use crate::support::*;

/// Everything observed at one moment.
/// Everything observed at one moment.
pub(crate) struct Snapshot {
    pub(crate) instances: Vec<Value>,
    pub(crate) volumes: Vec<Value>,
    pub(crate) networks: Vec<Value>,
    pub(crate) nodes: Vec<Value>,
    /// node -> host view
    pub(crate) hosts: BTreeMap<String, HostView>,
}

pub(crate) async fn snapshot(
    apis: &[Api],
    hosts: &BTreeMap<String, Arc<CountingHost>>,
) -> Option<Snapshot> {
    for api in apis {
        let get = |p: &'static str| async move { api.list_all(p).await.ok().map(|x| x.0) };
        let (Some(instances), Some(volumes), Some(networks), Some(nodes)) = (
            get("/v1/projects/chaos/instances").await,
            get("/v1/projects/chaos/volumes").await,
            get("/v1/projects/chaos/networks").await,
            get("/v1/nodes").await,
        ) else {
            continue;
        };
        let hosts = hosts
            .iter()
            .map(|(n, h)| (n.clone(), host_view(h)))
            .collect();
        return Some(Snapshot {
            instances,
            volumes,
            networks,
            nodes,
            hosts,
        });
    }
    None
}

pub(crate) fn uid_of(v: &Value) -> String {
    v["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// An instance in brief, to explain a finding.
pub(crate) fn summary(i: &Value) -> String {
    format!(
        "{} rv {} phase {:?} node {} deletion {} finalizers {} message {}",
        name_of(i),
        i["metadata"]["resourceVersion"],
        phase(i),
        i["status"]["nodeName"],
        i["metadata"]["deletionTimestamp"],
        i["metadata"]["finalizers"],
        i["status"]["message"]
    )
}

/// Says why an object being deleted is still there, if it says anything.
pub(crate) fn visible_reason(v: &Value) -> Option<String> {
    if let Some(m) = v["status"]["message"].as_str().filter(|m| !m.is_empty()) {
        return Some(m.to_string());
    }
    v["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .filter_map(|c| c["message"].as_str().filter(|m| !m.is_empty()))
            .map(|m| m.to_string())
            .next()
    })
}

/// Every way the cluster is not (yet) converged and consistent; empty when
/// all invariants hold. Counts the checks made into `checks`.
pub(crate) fn violations(
    s: &Snapshot,
    history: &BTreeMap<String, Value>,
    checks: &mut BTreeMap<&'static str, usize>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, ok: bool, what: String| {
        *checks.entry(name).or_default() += 1;
        if !ok {
            out.push(format!("{name}: {what}"));
        }
    };
    for n in &s.nodes {
        check(
            "node Ready",
            ready_status(n) == "True",
            format!("node {} is {}", name_of(n), ready_status(n)),
        );
    }
    // uid -> (node, state) of every domain on every host.
    let mut domains: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (node, view) in &s.hosts {
        for (name, state, _) in &view.domains {
            let uid = name.strip_prefix("corral-").unwrap_or(name).to_string();
            domains
                .entry(uid)
                .or_default()
                .push((node.clone(), state.clone()));
        }
    }
    let by_uid: BTreeMap<String, &Value> = s.instances.iter().map(|i| (uid_of(i), i)).collect();
    for i in &s.instances {
        let name = name_of(i);
        let want = i["spec"]["powerState"].as_str().unwrap_or("Running");
        check(
            "nothing deleting",
            !deleting(i),
            format!("instance {name} still deleting ({:?})", visible_reason(i)),
        );
        if deleting(i) {
            continue;
        }
        check(
            "phase matches powerState",
            phase(i) == want,
            format!("instance {name} is {:?}, wants {want}", phase(i)),
        );
        let node = i["status"]["nodeName"].as_str().unwrap_or("");
        let doms = domains.get(&uid_of(i)).cloned().unwrap_or_default();
        let want_state = if want == "Running" {
            "Running"
        } else {
            "Shutoff"
        };
        check(
            "one domain per instance, on its node",
            doms.len() == 1 && doms[0].0 == node && doms[0].1 == want_state,
            format!("instance {name} (node {node:?}, wants {want_state}) has domains {doms:?}"),
        );
    }
    for (uid, doms) in &domains {
        let owner = by_uid.get(uid);
        for (node, _) in doms {
            check(
                "no domain without an owner",
                owner.is_some_and(|i| i["status"]["nodeName"] == node.as_str()),
                format!(
                    "domain corral-{uid} on {node} has no Instance bound there (last seen: {}; calls {:?})",
                    history
                        .get(uid)
                        .map(summary)
                        .unwrap_or_else(|| "never".into()),
                    s.hosts[node].calls.get(&format!("corral-{uid}"))
                ),
            );
        }
    }
    for v in &s.volumes {
        check(
            "nothing deleting",
            !deleting(v),
            format!(
                "volume {} still deleting ({:?})",
                name_of(v),
                visible_reason(v)
            ),
        );
        check(
            "volume available",
            deleting(v) || phase(v) == "available",
            format!("volume {} is {:?}", name_of(v), phase(v)),
        );
    }
    // IPAM: every allocation has its owner, every address its allocation.
    let by_name: BTreeMap<String, &Value> = s.instances.iter().map(|i| (name_of(i), i)).collect();
    let mut allocated: BTreeSet<(String, String)> = BTreeSet::new();
    for net in &s.networks {
        check(
            "nothing deleting",
            !deleting(net),
            format!(
                "network {} still deleting ({:?})",
                name_of(net),
                visible_reason(net)
            ),
        );
        let allocations = net["status"]["allocations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (ip, owner) in allocations {
            let owner = owner.as_str().unwrap_or_default().to_string();
            // `<instance>/<nic>` (floating addresses are `Address/<name>`;
            // this workload makes none).
            let inst = (!owner.starts_with("Address/"))
                .then(|| owner.strip_prefix("Instance/").unwrap_or(&owner))
                .and_then(|r| r.split('/').next());
            let has = inst.and_then(|n| by_name.get(n)).is_some_and(|i| {
                i["status"]["addresses"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["ip"] == ip.as_str() && x["network"] == name_of(net).as_str())
                })
            });
            check(
                "no IP allocation without an owner",
                has,
                format!(
                    "{}: {ip} allocated to {owner}, which does not hold it",
                    name_of(net)
                ),
            );
            allocated.insert((name_of(net), ip));
        }
    }
    for i in &s.instances {
        if deleting(i) {
            continue;
        }
        let addrs = i["status"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        check(
            "every NIC addressed",
            !addrs.is_empty(),
            format!("instance {} has no address", name_of(i)),
        );
        for a in addrs {
            let key = (
                a["network"].as_str().unwrap_or("").to_string(),
                a["ip"].as_str().unwrap_or("").to_string(),
            );
            check(
                "every address allocated",
                allocated.contains(&key),
                format!(
                    "instance {} holds {key:?} without an allocation",
                    name_of(i)
                ),
            );
        }
    }
    out
}
