//! The network controller's IPAM: every NIC of every Instance gets one
//! address from its Network's CIDR — its `fixedIp` when it asked for one —
//! and a stable MAC; no address is ever handed out twice; an address goes
//! back to the pool when its Instance is gone.
//!
//! One reconcile handles one Network and all NICs on it, so the allocation
//! table (`Network.status.allocations`, ip -> `instance/nic-index`) is
//! written once per batch, with compare-and-swap: two controllers racing
//! on it cannot both win. Instances then get their `status.addresses`.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use corral_api_types::net::{parse_ipv4, Ipv4Cidr};
use corral_api_types::{Instance, InstanceAddress, InstanceStatus, Network, NetworkStatus};
use corral_runtime::status::update_cached;
use corral_runtime::{Action, Cache, Change, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;
use tokio::task::JoinSet;

pub struct Ipam {
    store: ResourceStore,
    instances: Cache<Instance>,
}

/// `instance/nic-index`
fn owner(instance: &str, nic: usize) -> String {
    format!("{instance}/{nic}")
}

/// A MAC in QEMU's 52:54:00 range derived from the instance's uid and NIC
/// index, so it is stable across restarts and agents; `salt` moves it on
/// the rare clash.
pub fn derived_mac(uid: &str, nic: usize, salt: u32) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in uid
        .bytes()
        .chain((nic as u64).to_le_bytes())
        .chain(salt.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) as u8,
        (h >> 8) as u8,
        h as u8
    )
}

impl Ipam {
    pub fn new(store: ResourceStore, instances: Cache<Instance>) -> Ipam {
        Ipam { store, instances }
    }
}

/// What the allocation pass decided for one Network.
struct Plan {
    allocations: BTreeMap<String, String>,
    /// (instance name, nic index) -> ip
    assigned: BTreeMap<(String, usize), String>,
    /// NICs that could not get an address, with why.
    failed: Vec<(String, usize, String)>,
}

fn plan(network: &Network, instances: &[Arc<Instance>]) -> Result<Plan, String> {
    let cidr: Ipv4Cidr = network
        .spec
        .cidr
        .parse()
        .map_err(|e| format!("spec.cidr: {e}"))?;
    let (_, gateway) = network.spec.gateway().ok_or("spec.cidr: not a CIDR")?;
    let current = network
        .status
        .as_ref()
        .map(|s| s.allocations.clone())
        .unwrap_or_default();

    // Who should hold an address on this network.
    let mut wanted: BTreeMap<String, (String, usize, Option<Ipv4Addr>)> = BTreeMap::new();
    // A terminated instance's record (kept for EC2) gives its addresses back.
    for i in instances.iter().filter(|i| !i.is_terminated()) {
        for (idx, nic) in i.spec.nics.iter().enumerate() {
            if nic.network == network.metadata.name {
                let fixed = nic.fixed_ip.as_deref().and_then(parse_ipv4);
                wanted.insert(
                    owner(&i.metadata.name, idx),
                    (i.metadata.name.clone(), idx, fixed),
                );
            }
        }
    }
    // Keep what is still owned (and still where a fixed IP wants it).
    let mut allocations = BTreeMap::new();
    let mut held: HashSet<String> = HashSet::new();
    for (ip, who) in &current {
        // Floating IPs are the address controller's to give back.
        if crate::address::is_address_owner(who) {
            allocations.insert(ip.clone(), who.clone());
            continue;
        }
        if let Some((_, _, fixed)) = wanted.get(who) {
            if fixed.is_none_or(|f| f.to_string() == *ip) && !held.contains(who) {
                allocations.insert(ip.clone(), who.clone());
                held.insert(who.clone());
            }
        }
    }
    let mut assigned = BTreeMap::new();
    let mut failed = Vec::new();
    for (ip, who) in &allocations {
        if let Some((name, idx, _)) = wanted.get(who) {
            assigned.insert((name.clone(), *idx), ip.clone());
        }
    }
    let usable = |ip: Ipv4Addr| cidr.is_host(ip) && ip != gateway;
    // Fixed addresses first, so a dynamic one never takes them.
    let mut pending: Vec<_> = wanted
        .iter()
        .filter(|(who, _)| !held.contains(*who))
        .collect();
    pending.sort_by_key(|(_, (_, _, fixed))| fixed.is_none());
    let mut next = u32::from(cidr.first_host());
    let last = u32::from(cidr.last_host());
    for (who, (name, idx, fixed)) in pending {
        let ip = match fixed {
            Some(f) => {
                if !usable(*f) {
                    failed.push((
                        name.clone(),
                        *idx,
                        format!(
                            "fixedIp {f} is not a usable host address of {}",
                            network.spec.cidr
                        ),
                    ));
                    continue;
                }
                if let Some(other) = allocations.get(&f.to_string()) {
                    failed.push((
                        name.clone(),
                        *idx,
                        format!("fixedIp {f} is already used by {other}"),
                    ));
                    continue;
                }
                *f
            }
            None => {
                let mut found = None;
                while next <= last {
                    let candidate = Ipv4Addr::from(next);
                    next += 1;
                    if usable(candidate) && !allocations.contains_key(&candidate.to_string()) {
                        found = Some(candidate);
                        break;
                    }
                }
                match found {
                    Some(ip) => ip,
                    None => {
                        failed.push((
                            name.clone(),
                            *idx,
                            format!("network {} has no free address", network.metadata.name),
                        ));
                        continue;
                    }
                }
            }
        };
        allocations.insert(ip.to_string(), who.clone());
        assigned.insert((name.clone(), *idx), ip.to_string());
    }
    Ok(Plan {
        allocations,
        assigned,
        failed,
    })
}

#[async_trait]
impl Reconciler<Network> for Ipam {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Network>>,
    ) -> Result<Action, ReconcileError> {
        let Some(network) = object else {
            return Ok(Action::AwaitChange);
        };
        let instances = self.instances.list_project(&key.project);
        let plan = match plan(&network, &instances) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(network = %key, error = %e, "cannot allocate");
                return Ok(Action::AwaitChange);
            }
        };
        // 1. The table, with CAS: a lost race replans from fresh state.
        let current = network.status.as_ref().map(|s| &s.allocations);
        if current != Some(&plan.allocations) {
            let mut n = (*network).clone();
            n.status
                .get_or_insert_with(NetworkStatus::default)
                .allocations = plan.allocations.clone();
            self.store.update(&n).await?;
            tracing::debug!(network = %key, entries = plan.allocations.len(), "allocation table written");
        }
        for (name, idx, why) in &plan.failed {
            tracing::warn!(network = %key, instance = %name, nic = idx, "{why}");
        }
        // 2. Each instance's addresses on this network.
        let mut writes = JoinSet::new();
        for i in instances {
            let mut desired: Vec<(usize, String)> = Vec::new();
            for (idx, nic) in i.spec.nics.iter().enumerate() {
                if nic.network != network.metadata.name {
                    continue;
                }
                if let Some(ip) = plan.assigned.get(&(i.metadata.name.clone(), idx)) {
                    desired.push((idx, ip.clone()));
                }
            }
            if desired.is_empty() || addresses_match(&i, &network.metadata.name, &desired) {
                continue;
            }
            let store = self.store.clone();
            let net_name = network.metadata.name.clone();
            writes.spawn(async move {
                update_cached::<Instance, _>(&store, &i, |inst| {
                    let uid = inst.metadata.uid.clone();
                    let nics = inst.spec.nics.clone();
                    let status = inst.status.get_or_insert_with(InstanceStatus::default);
                    set_addresses(status, &uid, &nics, &net_name, &desired)
                })
                .await
            });
            while writes.len() >= 32 {
                if let Some(r) = writes.join_next().await {
                    r??;
                }
            }
        }
        while let Some(r) = writes.join_next().await {
            r??;
        }
        Ok(Action::AwaitChange)
    }
}

fn addresses_match(i: &Instance, network: &str, desired: &[(usize, String)]) -> bool {
    let Some(status) = &i.status else {
        return false;
    };
    desired.iter().all(|(idx, ip)| {
        status
            .addresses
            .get(*idx)
            .is_some_and(|a| a.network == network && a.ip == *ip && !a.mac.is_empty())
    })
}

/// Puts the addresses for `network` in place (one entry per NIC, in NIC
/// order). Returns whether anything changed.
fn set_addresses(
    status: &mut InstanceStatus,
    uid: &str,
    nics: &[corral_api_types::Nic],
    network: &str,
    desired: &[(usize, String)],
) -> bool {
    let before = status.addresses.clone();
    if status.addresses.len() < nics.len() {
        status
            .addresses
            .resize_with(nics.len(), InstanceAddress::default);
    }
    status.addresses.truncate(nics.len());
    for (idx, ip) in desired {
        let nic = &nics[*idx];
        let a = &mut status.addresses[*idx];
        a.network = network.to_string();
        a.ip = ip.clone();
        a.mac = nic.mac.clone().unwrap_or_else(|| derived_mac(uid, *idx, 0));
    }
    status.addresses != before
}

/// Networks an instance change may concern.
pub fn networks_of(change: &Change<Instance>) -> Vec<ObjectRef> {
    let i = change.object();
    let mut keys: Vec<ObjectRef> = i
        .spec
        .nics
        .iter()
        .map(|n| ObjectRef::new(&i.metadata.project, &n.network))
        .collect();
    if let Some(s) = &i.status {
        keys.extend(
            s.addresses
                .iter()
                .filter(|a| !a.network.is_empty())
                .map(|a| ObjectRef::new(&i.metadata.project, &a.network)),
        );
    }
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api_types::{InstanceSpec, NetworkSpec, Nic, Resource};

    fn net(cidr: &str) -> Network {
        let mut n = Network::new(
            "p",
            "lan",
            NetworkSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        );
        n.status = Some(NetworkStatus::default());
        n
    }

    fn inst(name: &str, fixed: Option<&str>) -> Arc<Instance> {
        Arc::new(Instance::new(
            "p",
            name,
            InstanceSpec {
                nics: vec![Nic {
                    network: "lan".into(),
                    fixed_ip: fixed.map(Into::into),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
    }

    #[test]
    fn allocates_unique_addresses_skipping_gateway_and_respecting_fixed() {
        let n = net("10.0.0.0/29"); // hosts .1-.6, gateway .1
        let is = vec![
            inst("a", None),
            inst("b", Some("10.0.0.2")),
            inst("c", None),
        ];
        let p = plan(&n, &is).unwrap();
        assert_eq!(p.assigned[&("b".to_string(), 0)], "10.0.0.2");
        let ips: HashSet<_> = p.assigned.values().collect();
        assert_eq!(ips.len(), 3);
        assert!(!ips.contains(&"10.0.0.1".to_string()));
        assert!(p.failed.is_empty());
    }

    #[test]
    fn keeps_existing_allocations_and_releases_the_departed() {
        let mut n = net("10.0.0.0/29");
        n.status.as_mut().unwrap().allocations = [
            ("10.0.0.5".to_string(), "a/0".to_string()),
            ("10.0.0.6".to_string(), "gone/0".to_string()),
        ]
        .into();
        let p = plan(&n, &[inst("a", None)]).unwrap();
        assert_eq!(
            p.allocations,
            [("10.0.0.5".to_string(), "a/0".to_string())].into()
        );
    }

    #[test]
    fn exhaustion_and_taken_fixed_ips_are_reported_not_doubled() {
        let n = net("10.0.0.0/30"); // hosts .1-.2, gateway .1: one usable
        let p = plan(
            &n,
            &[
                inst("a", None),
                inst("b", None),
                inst("c", Some("10.0.0.2")),
            ],
        )
        .unwrap();
        assert_eq!(p.assigned.len(), 1, "{:?}", p.assigned);
        assert_eq!(p.assigned[&("c".to_string(), 0)], "10.0.0.2", "fixed first");
        assert_eq!(p.failed.len(), 2);
        assert!(p
            .failed
            .iter()
            .all(|(_, _, why)| why.contains("no free address")));
    }

    #[test]
    fn floating_addresses_are_kept_and_never_reused() {
        let mut n = net("10.0.0.0/29");
        n.status.as_mut().unwrap().allocations =
            [("10.0.0.2".to_string(), crate::address::owner("eip"))].into();
        let p = plan(&n, &[inst("a", None)]).unwrap();
        assert_eq!(p.allocations["10.0.0.2"], crate::address::owner("eip"));
        assert_eq!(p.assigned[&("a".to_string(), 0)], "10.0.0.3");
    }

    #[test]
    fn macs_are_stable_and_local() {
        assert_eq!(derived_mac("u1", 0, 0), derived_mac("u1", 0, 0));
        assert_ne!(derived_mac("u1", 0, 0), derived_mac("u1", 1, 0));
        assert!(derived_mac("u1", 0, 0).starts_with("52:54:00:"));
    }
}
