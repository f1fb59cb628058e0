//! The controllers against a real store (embedded and etcd), with Node
//! objects standing in for registered hosts: placement, capacity, IPAM,
//! references, node lifecycle and deletion.
//!
//! Over 600 lines on purpose: each scenario runs on both backends from the
//! list at the end, which is the suite's index.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::{embedded, etcd, mutate, until, Env};
use corral_api_types::{
    Condition, ConditionStatus, Instance, InstancePhase, InstanceSpec, Network, NetworkSpec, Nic,
    Node, NodeResources, NodeSpec, NodeStatus, Resource, SecurityGroup,
};
use corral_store::{ListOptions, ResourceStore};

async fn node(store: &ResourceStore, name: &str, vcpus: u32, memory_mib: u64, ready: bool) {
    let mut n = Node::new("", name, NodeSpec::default());
    n.status = Some(NodeStatus {
        capacity: NodeResources {
            vcpus,
            memory_mib,
            disk_gib: 1000,
        },
        allocatable: NodeResources {
            vcpus,
            memory_mib,
            disk_gib: 1000,
        },
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if ready {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: "AgentReady".into(),
            message: String::new(),
            last_transition_time: Some(Utc::now()),
            observed_generation: 0,
        }],
        heartbeat_time: Some(Utc::now()),
        ..Default::default()
    });
    // Users create Nodes without status; agents write it. Here, one write.
    store.create(&n).await.unwrap();
}

async fn heartbeat(store: &ResourceStore, name: &str) {
    mutate::<Node>(store, "", name, |n| {
        n.status.as_mut().unwrap().heartbeat_time = Some(Utc::now())
    })
    .await;
}

/// A heartbeat stamped by a clock `offset` off this host's.
async fn heartbeat_skewed(store: &ResourceStore, name: &str, offset: chrono::Duration) {
    mutate::<Node>(store, "", name, |n| {
        n.status.as_mut().unwrap().heartbeat_time = Some(Utc::now() + offset)
    })
    .await;
}

fn condition(n: &Node, type_: &str) -> Option<Condition> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn instance(name: &str, itype: &str) -> Instance {
    Instance::new(
        "p",
        name,
        InstanceSpec {
            instance_type: Some(itype.into()),
            image: Some("tiny".into()),
            nics: vec![Nic {
                network: "lan".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

async fn all_instances(store: &ResourceStore) -> Vec<Instance> {
    store
        .list::<Instance>(Some("p"), ListOptions::default())
        .await
        .unwrap()
        .items
}

fn node_of(i: &Instance) -> Option<String> {
    i.status.as_ref().and_then(|s| s.node_name.clone())
}

async fn placement_capacity_and_ipam(env: Env) {
    let s = &env.store;
    s.create(&Network::new(
        "p",
        "lan",
        NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    // Two ready nodes of 4 GiB and one not ready.
    node(s, "n1", 8, 4096, true).await;
    node(s, "n2", 8, 4096, true).await;
    node(s, "n3", 64, 65536, false).await;
    // m1.small is 2 GiB: exactly four fit; created all at once.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create(&instance(&format!("vm{i}"), "m1.small"))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    until("4 placed, 2 pending with a reason", 20, || async {
        let all = all_instances(s).await;
        let placed = all.iter().filter(|i| node_of(i).is_some()).count();
        let pending_with_reason = all
            .iter()
            .filter(|i| {
                i.status.as_ref().is_some_and(|st| {
                    st.phase == InstancePhase::Pending
                        && st.conditions.iter().any(|c| {
                            // A first try may have seen no nodes yet
                            // (caches fill at their own pace): wait
                            // for the verdict on these nodes.
                            c.type_ == "Scheduled"
                                && c.status == ConditionStatus::False
                                && c.message.contains("insufficient memory")
                        })
                })
            })
            .count();
        placed == 4 && pending_with_reason == 2
    })
    .await;
    let all = all_instances(s).await;
    // No node holds more than 2 (no overcommit), spread evenly, never n3.
    for n in ["n1", "n2"] {
        assert_eq!(
            all.iter()
                .filter(|i| node_of(i).as_deref() == Some(n))
                .count(),
            2,
            "{n}"
        );
    }
    let pending = all.iter().find(|i| node_of(i).is_none()).unwrap();
    let msg = &pending
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .unwrap()
        .message;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 not ready, 2 insufficient memory."
    );
    assert_eq!(
        pending.status.as_ref().unwrap().phase,
        InstancePhase::Pending
    );

    // Every instance (placed or not) got a unique address and MAC.
    until("addresses", 20, || async {
        all_instances(s).await.iter().all(|i| {
            i.status
                .as_ref()
                .is_some_and(|st| st.addresses.len() == 1 && !st.addresses[0].ip.is_empty())
        })
    })
    .await;
    let all = all_instances(s).await;
    let ips: HashSet<_> = all
        .iter()
        .map(|i| i.status.as_ref().unwrap().addresses[0].ip.clone())
        .collect();
    let macs: HashSet<_> = all
        .iter()
        .map(|i| i.status.as_ref().unwrap().addresses[0].mac.clone())
        .collect();
    assert_eq!((ips.len(), macs.len()), (6, 6));
    assert!(!ips.contains("10.0.0.1"), "gateway never handed out");
    let net: Network = s.get("p", "lan").await.unwrap().unwrap();
    assert_eq!(net.status.unwrap().allocations.len(), 6);

    // Missing references are a condition, cleared when they appear.
    let ready = |i: &Instance, want: ConditionStatus| {
        i.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "ReferencesResolved" && c.status == want)
        })
    };
    until("missing image reported", 20, || async {
        let i: Instance = s.get("p", "vm0").await.unwrap().unwrap();
        ready(&i, ConditionStatus::False)
    })
    .await;
    let i: Instance = s.get("p", "vm0").await.unwrap().unwrap();
    let c = i
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "ReferencesResolved")
        .unwrap();
    assert!(
        c.message.contains("image \"tiny\" not found"),
        "{}",
        c.message
    );
    s.create(&corral_api_types::Image::new(
        "p",
        "tiny",
        Default::default(),
    ))
    .await
    .unwrap();
    until("references resolved", 20, || async {
        let i: Instance = s.get("p", "vm0").await.unwrap().unwrap();
        ready(&i, ConditionStatus::True)
    })
    .await;

    // A node with room appears: the pending ones get placed there.
    node(s, "n4", 8, 8192, true).await;
    until("pending ones placed on n4", 20, || async {
        all_instances(s)
            .await
            .iter()
            .filter(|i| node_of(i).as_deref() == Some("n4"))
            .count()
            == 2
    })
    .await;

    // Deleting: an instance on a live node waits for its domain (its agent
    // reports Destroyed); the address goes back to the pool afterwards.
    let victim = all
        .iter()
        .find(|i| node_of(i).as_deref() == Some("n1"))
        .unwrap()
        .metadata
        .name
        .clone();
    let victim_ip = all
        .iter()
        .find(|i| i.metadata.name == victim)
        .unwrap()
        .status
        .as_ref()
        .unwrap()
        .addresses[0]
        .ip
        .clone();
    let marked = s.get::<Instance>("p", &victim).await.unwrap().unwrap();
    assert!(marked
        .metadata
        .finalizers
        .contains(&"corral/instance".to_string()));
    mutate::<Instance>(s, "p", &victim, |i| {
        i.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
    until("terminating", 20, || async {
        s.get::<Instance>("p", &victim)
            .await
            .unwrap()
            .is_some_and(|i| i.status.as_ref().unwrap().phase == InstancePhase::Terminating)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.get::<Instance>("p", &victim).await.unwrap().is_some(),
        "held until the domain is gone"
    );
    mutate::<Instance>(s, "p", &victim, |i| {
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
    until("gone", 20, || async {
        s.get::<Instance>("p", &victim).await.unwrap().is_none()
    })
    .await;
    until("address released", 20, || async {
        let net: Network = s.get("p", "lan").await.unwrap().unwrap();
        !net.status.unwrap().allocations.contains_key(&victim_ip)
    })
    .await;

    // Full again (n1 has room for one, n4 for two): the fourth waits...
    for i in 0..4 {
        s.create(&instance(&format!("w{i}"), "m1.small"))
            .await
            .unwrap();
    }
    let unplaced = || async {
        all_instances(s)
            .await
            .into_iter()
            .filter(|i| i.metadata.name.starts_with('w') && node_of(i).is_none())
            .collect::<Vec<_>>()
    };
    until("three placed, one waiting for room", 20, || async {
        let left = unplaced().await;
        left.len() == 1
            && left[0].status.as_ref().is_some_and(|st| {
                st.conditions.iter().any(|c| {
                    c.type_ == "Scheduled"
                        && c.status == ConditionStatus::False
                        && c.message.contains("insufficient memory")
                })
            })
    })
    .await;
    // ...until an instance is gone and leaves room (no Node changes here).
    // First let the waiting one settle: the writes its refusal caused
    // (its condition, then what other controllers write in answer) each
    // wake the scheduler for it once; only the deletion may place it now.
    let waiting = unplaced().await[0].metadata.name.clone();
    let mut last = String::new();
    let mut quiet_since = tokio::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        let i: Instance = s.get("p", &waiting).await.unwrap().unwrap();
        if i.metadata.resource_version != last {
            last = i.metadata.resource_version.clone();
            quiet_since = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_n2 = all_instances(s)
        .await
        .into_iter()
        .find(|i| node_of(i).as_deref() == Some("n2"))
        .unwrap()
        .metadata
        .name;
    s.delete::<Instance>("p", &on_n2, None).await.unwrap();
    until(
        "the waiting one placed where room was freed",
        20,
        || async { unplaced().await.is_empty() },
    )
    .await;
}

async fn node_lifecycle_marks_unknown(env: Env) {
    let s = &env.store;
    s.create(&Network::new(
        "p",
        "lan",
        NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    node(s, "n1", 8, 8192, true).await;
    s.create(&instance("vm", "m1.tiny")).await.unwrap();
    until("scheduled", 20, || async {
        s.get::<Instance>("p", "vm")
            .await
            .unwrap()
            .is_some_and(|i| node_of(&i).is_some())
    })
    .await;
    // Heartbeats keep it Ready...
    for _ in 0..3 {
        heartbeat(s, "n1").await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let n: Node = s.get("", "n1").await.unwrap().unwrap();
    assert_eq!(
        n.status.unwrap().conditions[0].status,
        ConditionStatus::True
    );
    // ...silence makes it Unknown, and its instance Unknown (not Failed).
    until("node and instance Unknown", 20, || async {
        let n: Node = s.get("", "n1").await.unwrap().unwrap();
        let i: Instance = s.get("p", "vm").await.unwrap().unwrap();
        n.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::Unknown)
            && i.status.unwrap().phase == InstancePhase::Unknown
    })
    .await;
    let i: Instance = s.get("p", "vm").await.unwrap().unwrap();
    assert_eq!(node_of(&i).as_deref(), Some("n1"), "not rescheduled");
    let _ = Instance::KIND;
}

async fn owned_objects_go_with_their_owner(env: Env) {
    use corral_api_types::{OwnerReference, Volume, VolumeSpec};
    let s = &env.store;
    // No nodes: the instance is never placed, so its deletion is immediate.
    let vm = s.create(&instance("vm", "m1.tiny")).await.unwrap();
    let owned = |name: &str, kind: &str, uid: &str| {
        let mut v = Volume::new(
            "p",
            name,
            VolumeSpec {
                size_gib: Some(1),
                ..Default::default()
            },
        );
        v.metadata.owner_references = vec![OwnerReference {
            kind: kind.into(),
            name: "vm".into(),
            uid: uid.into(),
            controller: false,
        }];
        v
    };
    s.create(&owned("scratch", "Instance", &vm.metadata.uid))
        .await
        .unwrap();
    s.create(&owned("stale-owner", "Instance", "some-other-uid"))
        .await
        .unwrap();
    s.create(&owned("unknown-kind", "Widget", "x"))
        .await
        .unwrap();
    until("stale owner's dependent collected", 20, || async {
        s.get::<Volume>("p", "stale-owner").await.unwrap().is_none()
    })
    .await;
    assert!(
        s.get::<Volume>("p", "scratch").await.unwrap().is_some(),
        "owner alive: kept"
    );
    // Delete the owner (as the API does: mark, finalizers release it).
    until("finalizer on vm", 20, || async {
        s.get::<Instance>("p", "vm")
            .await
            .unwrap()
            .is_some_and(|i| !i.metadata.finalizers.is_empty())
    })
    .await;
    mutate::<Instance>(s, "p", "vm", |i| {
        i.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
    until("owner gone and its volume collected", 20, || async {
        s.get::<Instance>("p", "vm").await.unwrap().is_none()
            && s.get::<Volume>("p", "scratch").await.unwrap().is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.get::<Volume>("p", "unknown-kind")
            .await
            .unwrap()
            .is_some(),
        "unknown owner kind: kept"
    );
}

/// A group's `status.members` follows the addresses of the NICs that
/// carry it, as instances get addresses and go away.
async fn security_group_members_follow_instances(env: Env) {
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
    s.create(&SecurityGroup::new("p", "web", Default::default()))
        .await
        .unwrap();
    node(s, "n1", 8, 8192, true).await;
    let mut tagged = instance("w1", "m1.tiny");
    tagged.spec.nics[0].security_groups = vec!["web".into()];
    tagged.spec.nics[0].fixed_ip = Some("10.9.0.7".into());
    s.create(&tagged).await.unwrap();
    s.create(&instance("plain", "m1.tiny")).await.unwrap();
    let members = || async {
        s.get::<SecurityGroup>("p", "web")
            .await
            .unwrap()
            .and_then(|g| g.status)
            .map(|st| st.members)
            .unwrap_or_default()
    };
    until("w1's address listed", 20, || async {
        members().await == ["10.9.0.7".to_string()]
    })
    .await;
    mutate::<Instance>(s, "p", "w1", |i| {
        i.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
    until("w1 no longer listed", 20, || async {
        members().await.is_empty()
    })
    .await;
}

/// Found by the chaos suite: the scheduler placed instances before the
/// instance controller had put its finalizer on them, so a delete in that
/// window removed an instance whose domain was already running (left to
/// the agent's orphan sweep, its address released meanwhile). No write may
/// bind an instance that lacks the finalizer.
async fn only_finalized_instances_are_bound(env: Env) {
    let s = &env.store;
    s.create(&Network::new(
        "p",
        "lan",
        NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    node(s, "n1", 64, 65536, true).await;
    let from = s.raw().current_revision().await.unwrap();
    let mut watch = s.watch::<Instance>(Some("p"), from).await.unwrap();
    for i in 0..20 {
        s.create(&instance(&format!("vm{i}"), "m1.tiny"))
            .await
            .unwrap();
    }
    let mut bound = HashSet::new();
    while bound.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("instances get placed")
            .unwrap()
            .unwrap();
        if let corral_store::ObjectEvent::Modified(i, _) = event {
            if i.status
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
            {
                assert!(
                    i.metadata.finalizers.iter().any(|f| f == "corral/instance"),
                    "{} bound without the instance finalizer",
                    i.metadata.name
                );
                bound.insert(i.metadata.name.clone());
            }
        }
    }
}

/// Heartbeats are aged by the controller's clock: a node an hour fast
/// still goes Unknown when it stops, nodes a minute and an hour slow stay
/// Ready while they beat, and all say how far off their clock is.
async fn node_liveness_uses_the_controllers_clock(env: Env) {
    let s = &env.store;
    node(s, "fast", 8, 8192, true).await;
    node(s, "slow", 8, 8192, true).await;
    node(s, "late", 8, 8192, true).await;
    // Beats for longer than the grace (2 s): an hour ahead, a minute and
    // an hour behind.
    for _ in 0..6 {
        heartbeat_skewed(s, "fast", chrono::Duration::hours(1)).await;
        heartbeat_skewed(s, "slow", chrono::Duration::seconds(-60)).await;
        heartbeat_skewed(s, "late", chrono::Duration::hours(-1)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    for name in ["fast", "slow", "late"] {
        let n: Node = s.get("", name).await.unwrap().unwrap();
        let ready = condition(&n, "Ready").unwrap();
        assert_eq!(
            ready.status,
            ConditionStatus::True,
            "{name} while beating: {ready:?}"
        );
    }
    until("skew reported", 10, || async {
        let fast: Node = s.get("", "fast").await.unwrap().unwrap();
        let slow: Node = s.get("", "slow").await.unwrap().unwrap();
        let late: Node = s.get("", "late").await.unwrap().unwrap();
        let says = |n: &Node, what: &str| {
            condition(n, "ClockSynchronized").is_some_and(|c| {
                c.status == ConditionStatus::False
                    && c.reason == "ClockSkew"
                    && c.message.contains(what)
            })
        };
        says(&fast, "ahead of") && says(&slow, "behind") && says(&late, "behind")
    })
    .await;
    // The fast one stops: Unknown after the grace, by the controller's clock.
    until("the silent fast node Unknown", 20, || async {
        heartbeat_skewed(s, "slow", chrono::Duration::seconds(-60)).await;
        heartbeat_skewed(s, "late", chrono::Duration::hours(-1)).await;
        let fast: Node = s.get("", "fast").await.unwrap().unwrap();
        condition(&fast, "Ready").is_some_and(|c| c.status == ConditionStatus::Unknown)
    })
    .await;
    for name in ["slow", "late"] {
        let n: Node = s.get("", name).await.unwrap().unwrap();
        assert_eq!(
            condition(&n, "Ready").unwrap().status,
            ConditionStatus::True,
            "{name} still beats"
        );
    }
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn placement_capacity_and_ipam() {
                super::placement_capacity_and_ipam(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn only_finalized_instances_are_bound() {
                super::only_finalized_instances_are_bound(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn owned_objects_go_with_their_owner() {
                super::owned_objects_go_with_their_owner(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn security_group_members_follow_instances() {
                super::security_group_members_follow_instances(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events_expire() {
                super::events_expire(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn node_liveness_uses_the_controllers_clock() {
                super::node_liveness_uses_the_controllers_clock(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn node_lifecycle_marks_unknown() {
                super::node_lifecycle_marks_unknown(super::$backend().await).await;
            }
        }
    };
}

suite!(embedded);
suite!(etcd);

/// Events past their TTL are deleted, fresher ones kept, on both stores.
async fn events_expire(env: Env) {
    use corral_api_types::{Event, EventSpec, ObjectReference};
    let s = &env.store;
    let ev = |name: &str, age_secs: i64| {
        let at = Utc::now() - chrono::Duration::seconds(age_secs);
        Event::new(
            "p",
            name,
            EventSpec {
                involved_object: ObjectReference {
                    kind: "Instance".into(),
                    name: "vm".into(),
                    uid: "u".into(),
                },
                reason: "Scheduled".into(),
                count: 1,
                first_timestamp: Some(at),
                last_timestamp: Some(at),
                ..Default::default()
            },
        )
    };
    for i in 0..3 {
        s.create(&ev(&format!("old-{i}"), 7200)).await.unwrap();
    }
    s.create(&ev("fresh", 10)).await.unwrap();
    let gone = corral_controllers::events::expire(s, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(gone, 3);
    let left: Vec<String> = s
        .list::<Event>(Some("p"), ListOptions::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.metadata.name)
        .collect();
    assert_eq!(left, ["fresh"]);
}
