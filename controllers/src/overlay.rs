//! The overlay controller: for each `overlay` Network, a VXLAN network
//! identifier unique in the cluster (`status.vni`), and what every node's
//! forwarding table needs — the tunnel endpoint of each node with a port
//! on the network (`status.vteps`, from `Node.status.vtep`) and the node
//! of each port's MAC (`status.ports`). Node agents read these with the
//! Network itself (they may not read other nodes' instances), as
//! Neutron's l2population tells each agent of the others' ports.
//!
//! It writes those three status fields only, and nothing on any host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_api_types::{Instance, Network, NetworkMode, Node};
use corral_runtime::status::update_with_retry;
use corral_runtime::{Action, Cache, Change, ObjectRef, ReconcileError, Reconciler};
use corral_store::ResourceStore;

/// The first VNI handed out (lower ones are left to the operator's own
/// VXLAN segments).
pub const VNI_FIRST: u32 = 4096;
/// VNIs are 24 bits.
pub const VNI_LAST: u32 = (1 << 24) - 1;
/// Ports and endpoints of one Network are written at most this often:
/// every node with a port on it receives the whole Network at each write,
/// so a burst of placements is batched into a few writes.
pub const BATCH: Duration = Duration::from_millis(250);

pub struct OverlayController {
    store: ResourceStore,
    networks: Cache<Network>,
    instances: Cache<Instance>,
    nodes: Cache<Node>,
    /// VNIs this controller gave, by Network uid: the cache may not show
    /// its own last write yet when the next network is reconciled.
    given: Mutex<HashMap<String, u32>>,
    /// When each Network's endpoints were last written, by uid.
    written: Mutex<HashMap<String, Instant>>,
}

impl OverlayController {
    pub fn new(
        store: ResourceStore,
        networks: Cache<Network>,
        instances: Cache<Instance>,
        nodes: Cache<Node>,
    ) -> OverlayController {
        OverlayController {
            store,
            networks,
            instances,
            nodes,
            given: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The lowest VNI no other Network holds (in the cache or given by
    /// this controller), or `None` when all 16 million are taken.
    fn free_vni(&self, uid: &str) -> Option<u32> {
        let given = self.given.lock().expect("given");
        if let Some(v) = given.get(uid) {
            return Some(*v);
        }
        let mut used: Vec<u32> = self
            .networks
            .list()
            .iter()
            .filter(|n| n.metadata.uid != uid)
            .filter_map(|n| n.status.as_ref().and_then(|s| s.vni))
            .chain(given.values().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        let mut want = VNI_FIRST;
        for v in used {
            if v < want {
                continue;
            }
            if v > want {
                break;
            }
            want += 1;
        }
        (want <= VNI_LAST).then_some(want)
    }
}

/// The ports of overlay network `project/name`: MAC → node, and the
/// tunnel endpoint of each of those nodes that reports one.
pub fn endpoints(
    instances: &Cache<Instance>,
    nodes: &Cache<Node>,
    project: &str,
    name: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut ports = BTreeMap::new();
    let mut vteps = BTreeMap::new();
    for i in instances.list() {
        if i.metadata.project != project || i.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(node) = i.status.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        for nic in i.nics() {
            let Some(a) = nic.address else { continue };
            if a.network != name || a.mac.is_empty() {
                continue;
            }
            ports.insert(a.mac.to_ascii_lowercase(), node.clone());
            if !vteps.contains_key(&node) {
                let vtep = nodes
                    .get(&ObjectRef::new("", &node))
                    .and_then(|n| n.status.as_ref().and_then(|s| s.vtep.clone()));
                if let Some(v) = vtep {
                    vteps.insert(node.clone(), v);
                }
            }
        }
    }
    (ports, vteps)
}

/// Maps a node change to the overlay networks to look at again: all of
/// them, but only when the node's tunnel endpoint changed (nodes beat
/// every few seconds; endpoints almost never move).
pub fn networks_of_node(
    networks: Cache<Network>,
) -> impl Fn(&Change<Node>) -> Vec<ObjectRef> + Send + Sync + 'static {
    let seen: Mutex<HashMap<String, Option<String>>> = Mutex::new(HashMap::new());
    move |ch: &Change<Node>| {
        let n = ch.object();
        let vtep = match ch {
            Change::Deleted(_) => None,
            _ => n.status.as_ref().and_then(|s| s.vtep.clone()),
        };
        let before = seen
            .lock()
            .expect("seen")
            .insert(n.metadata.name.clone(), vtep.clone());
        if before.as_ref() == Some(&vtep) {
            return Vec::new();
        }
        networks
            .list()
            .iter()
            .filter(|net| net.spec.mode == NetworkMode::Overlay)
            .map(|net| ObjectRef::of(net.as_ref()))
            .collect()
    }
}

#[async_trait]
impl Reconciler<Network> for OverlayController {
    async fn reconcile(
        &self,
        key: &ObjectRef,
        object: Option<Arc<Network>>,
    ) -> Result<Action, ReconcileError> {
        let Some(n) = object else {
            return Ok(Action::AwaitChange);
        };
        if n.spec.mode != NetworkMode::Overlay {
            return Ok(Action::AwaitChange);
        }
        let uid = n.metadata.uid.clone();
        let status = n.status.clone().unwrap_or_default();
        let vni = match status.vni {
            Some(v) => v,
            None => match self.free_vni(&uid) {
                Some(v) => {
                    self.given.lock().expect("given").insert(uid.clone(), v);
                    v
                }
                None => return Err("every VXLAN network identifier is in use".into()),
            },
        };
        let (ports, vteps) = endpoints(&self.instances, &self.nodes, &key.project, &key.name);
        if status.vni == Some(vni) && status.ports == ports && status.vteps == vteps {
            return Ok(Action::AwaitChange);
        }
        if status.vni.is_some() {
            let last = self.written.lock().expect("written").get(&uid).copied();
            if let Some(wait) = last.and_then(|t| BATCH.checked_sub(t.elapsed())) {
                // Written moments ago: this change goes with the next
                // write, with whatever else arrives meanwhile.
                return Ok(Action::Requeue(wait));
            }
        }
        update_with_retry::<Network, _>(&self.store, &key.project, &key.name, |n| {
            if n.metadata.uid != uid {
                return false;
            }
            let s = n.status.get_or_insert_with(Default::default);
            let vni = *s.vni.get_or_insert(vni);
            let changed = s.ports != ports || s.vteps != vteps || Some(vni) != status.vni;
            s.ports = ports.clone();
            s.vteps = vteps.clone();
            changed
        })
        .await?;
        self.written
            .lock()
            .expect("written")
            .insert(uid, Instant::now());
        Ok(Action::AwaitChange)
    }
}
