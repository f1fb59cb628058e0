//! What EC2 users assume of placement, on a real store with the whole
//! controller set:
//! - a deleted instance whose record another finalizer keeps (EC2 shows a
//!   terminated instance for an hour) holds nothing once its domain is
//!   gone: its node capacity, its address and its quota are free at once,
//!   and its record says Terminated;
//! - a node that names no zone is in the default zone, so an instance
//!   asking for that zone (terraform and most scripts pass one) is placed;
//! - a snapshot of a volume no instance has used yet does not wait
//!   forever: the volume goes to a node, which makes its file.

mod common;

use chrono::Utc;
use common::{embedded, etcd, mutate, until, Env};
use corral_api_types::{
    Condition, ConditionStatus, Instance, InstancePhase, InstanceSpec, Network, NetworkSpec, Nic,
    Node, NodeResources, NodeSpec, NodeStatus, Project, ProjectResources, ProjectSpec, Resource,
};
use corral_registry::quota;
use corral_store::ResourceStore;

/// What the EC2 façade puts on an instance it terminates.
const KEEP_RECORD: &str = "ec2.corral/terminated-visibility";

async fn one_slot_node(store: &ResourceStore) {
    one_slot_node_in(store, "small", None).await
}

async fn one_slot_node_in(store: &ResourceStore, name: &str, zone: Option<&str>) {
    let room = NodeResources {
        vcpus: 1,
        memory_mib: 512,
        disk_gib: 100,
    };
    let mut n = Node::new(
        "",
        name,
        NodeSpec {
            zone: zone.map(str::to_string),
            ..Default::default()
        },
    );
    n.status = Some(NodeStatus {
        capacity: room.clone(),
        allocatable: room,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "AgentReady".into(),
            message: String::new(),
            last_transition_time: Some(Utc::now()),
            observed_generation: 0,
        }],
        heartbeat_time: Some(Utc::now()),
        ..Default::default()
    });
    store.create(&n).await.unwrap();
}

fn tiny(name: &str) -> Instance {
    Instance::new(
        "p",
        name,
        InstanceSpec {
            instance_type: Some("m1.tiny".into()),
            image: Some("img".into()),
            nics: vec![Nic {
                network: "lan".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

async fn get(s: &ResourceStore, name: &str) -> Instance {
    s.get::<Instance>("p", name).await.unwrap().unwrap()
}

fn node_of(i: &Instance) -> Option<&str> {
    i.status.as_ref()?.node_name.as_deref()
}

fn ip_of(i: &Instance) -> Option<String> {
    let a = i.status.as_ref()?.addresses.first()?;
    (!a.ip.is_empty()).then(|| a.ip.clone())
}

/// What the node agent reports once it destroyed the domain.
async fn report_destroyed(s: &ResourceStore, name: &str) {
    mutate::<Instance>(s, "p", name, |i| {
        i.status.as_mut().unwrap().conditions.push(Condition {
            type_: "Provisioned".into(),
            status: ConditionStatus::False,
            reason: "Destroyed".into(),
            message: String::new(),
            last_transition_time: Some(Utc::now()),
            observed_generation: 0,
        })
    })
    .await;
}

async fn terminated_instances_hold_nothing(env: Env) {
    let s = &env.store;
    s.create(&Project::new(
        "",
        "p",
        ProjectSpec {
            quotas: ProjectResources {
                instances: Some(1),
                ..Default::default()
            },
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    // A /30 has two usable addresses, one of them the gateway's.
    s.create(&Network::new(
        "p",
        "lan",
        NetworkSpec {
            cidr: "10.9.0.0/30".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    one_slot_node(s).await;

    let mut first = tiny("first");
    first.metadata.finalizers.push(KEEP_RECORD.into());
    let charge = quota::charge(s, &first, None, false).await.unwrap();
    s.create(&first).await.unwrap();
    if let Some(c) = charge {
        quota::confirm(s, &c).await;
    }
    until("first placed and addressed", 20, || async {
        let i = get(s, "first").await;
        node_of(&i) == Some("small") && ip_of(&i).is_some()
    })
    .await;
    let ip = ip_of(&get(s, "first").await).unwrap();

    // Full on every count: node, network and quota.
    assert!(
        quota::charge(s, &tiny("second"), None, true).await.is_err(),
        "the quota of one instance is used"
    );

    // Terminated the way the EC2 façade does it; the agent destroys.
    mutate::<Instance>(s, "p", "first", |i| {
        i.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
    until("terminating", 20, || async {
        get(s, "first")
            .await
            .status
            .is_some_and(|st| st.phase == InstancePhase::Terminating)
    })
    .await;
    report_destroyed(s, "first").await;
    until("the record says Terminated", 20, || async {
        let i = get(s, "first").await;
        i.is_terminated()
            && i.status
                .as_ref()
                .is_some_and(|st| st.phase == InstancePhase::Terminated && st.addresses.is_empty())
    })
    .await;
    let record = get(s, "first").await;
    assert_eq!(record.metadata.finalizers, vec![KEEP_RECORD.to_string()]);

    // The record stays; what it held does not.
    until("its quota is released", 20, || async {
        quota::charge(s, &tiny("second"), None, true).await.is_ok()
    })
    .await;
    let charge = quota::charge(s, &tiny("second"), None, false)
        .await
        .unwrap();
    s.create(&tiny("second")).await.unwrap();
    if let Some(c) = charge {
        quota::confirm(s, &c).await;
    }
    until(
        "second placed on the same node with the same address",
        20,
        || async {
            let i = get(s, "second").await;
            node_of(&i) == Some("small") && ip_of(&i).as_deref() == Some(ip.as_str())
        },
    )
    .await;
    assert!(s.get::<Instance>("p", "first").await.unwrap().is_some());
}

async fn zoneless_nodes_are_in_the_default_zone(env: Env) {
    let s = &env.store;
    s.create(&Network::new(
        "p",
        "lan",
        NetworkSpec {
            cidr: "10.9.0.0/24".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    one_slot_node(s).await;
    let mut a = tiny("in-default-zone");
    a.spec.availability_zone = Some(Node::DEFAULT_ZONE.into());
    s.create(&a).await.unwrap();
    let mut b = tiny("in-zone-b");
    b.spec.availability_zone = Some("corral-1b".into());
    s.create(&b).await.unwrap();
    until("placed on the zoneless node", 20, || async {
        node_of(&get(s, "in-default-zone").await) == Some("small")
    })
    .await;
    until("zone b waits, saying why", 20, || async {
        let i = get(s, "in-zone-b").await;
        node_of(&i).is_none()
            && i.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.message.contains("1 in another availability zone"))
            })
    })
    .await;
    // A node in zone b appears: the waiting one goes there.
    one_slot_node_in(s, "b1", Some("corral-1b")).await;
    until("placed in zone b", 20, || async {
        node_of(&get(s, "in-zone-b").await) == Some("b1")
    })
    .await;
}

async fn a_snapshot_places_a_volume_never_attached(env: Env) {
    use corral_api_types::{Snapshot, SnapshotSpec, Volume, VolumeSpec};
    let s = &env.store;
    one_slot_node_in(s, "a1", Some("corral-1b")).await;
    one_slot_node(s).await;
    let vol = |name: &str| {
        Volume::new(
            "p",
            name,
            VolumeSpec {
                size_gib: Some(1),
                availability_zone: Some(Node::DEFAULT_ZONE.into()),
                ..Default::default()
            },
        )
    };
    s.create(&vol("data")).await.unwrap();
    s.create(&vol("idle")).await.unwrap();
    let vol_node = |name: &'static str| async move {
        s.get::<Volume>("p", name)
            .await
            .unwrap()
            .unwrap()
            .status
            .and_then(|st| st.node_name)
    };
    s.create(&Snapshot::new(
        "p",
        "snap",
        SnapshotSpec {
            volume: "data".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    // To the node of its zone, not the other one.
    until("the snapshotted volume placed", 20, || async {
        vol_node("data").await.as_deref() == Some("small")
    })
    .await;
    assert_eq!(vol_node("idle").await, None, "no snapshot: no node yet");
    // The node's agent makes the file; the snapshot follows the volume.
    mutate::<Volume>(s, "p", "data", |v| {
        v.status.as_mut().unwrap().location = Some("/var/lib/corral/volumes/x.qcow2".into())
    })
    .await;
    until("the snapshot bound to the volume's node", 20, || async {
        s.get::<Snapshot>("p", "snap")
            .await
            .unwrap()
            .unwrap()
            .status
            .is_some_and(|st| st.node_name.as_deref() == Some("small") && st.message.is_none())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_places_a_volume_never_attached_embedded() {
    a_snapshot_places_a_volume_never_attached(embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoneless_nodes_are_in_the_default_zone_embedded() {
    zoneless_nodes_are_in_the_default_zone(embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_instances_hold_nothing_embedded() {
    terminated_instances_hold_nothing(embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_instances_hold_nothing_etcd() {
    terminated_instances_hold_nothing(etcd().await).await;
}
