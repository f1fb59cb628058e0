//! The address controller against a real store (embedded and etcd):
//! floating IPs allocated from a pool Network never twice, associated with
//! an instance NIC (one Address per NIC), reported with conditions, and
//! given back on deletion.

mod common;

use std::collections::HashSet;

use chrono::Utc;
use common::{embedded, etcd, mutate, until, Env};
use corral_api_types::{
    Address, AddressSpec, ConditionStatus, Instance, InstanceSpec, Network, NetworkSpec, Nic,
    Resource,
};
use corral_store::ResourceStore;

async fn network(store: &ResourceStore, name: &str, cidr: &str) {
    store
        .create(&Network::new(
            "p",
            name,
            NetworkSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

async fn instance(store: &ResourceStore, name: &str) {
    store
        .create(&Instance::new(
            "p",
            name,
            InstanceSpec {
                instance_type: Some("m1.tiny".into()),
                image: Some("tiny".into()),
                nics: vec![Nic {
                    network: "lan".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

async fn address(store: &ResourceStore, name: &str, pool: &str, instance: Option<&str>) {
    store
        .create(&Address::new(
            "p",
            name,
            AddressSpec {
                network: pool.into(),
                instance: instance.map(Into::into),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

async fn get_address(store: &ResourceStore, name: &str) -> Option<Address> {
    store.get::<Address>("p", name).await.unwrap()
}

fn cond(a: &Address, type_: &str) -> Option<(ConditionStatus, String)> {
    a.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason.clone()))
}

fn ip_of(a: &Address) -> Option<String> {
    a.status.as_ref().and_then(|s| s.ip.clone())
}

async fn floating(store: &ResourceStore, instance: &str) -> Option<String> {
    let i: Instance = store.get("p", instance).await.unwrap()?;
    i.status?.addresses.first()?.floating_ip.clone()
}

async fn pool_owners(store: &ResourceStore, pool: &str) -> Vec<(String, String)> {
    let n: Network = store.get("p", pool).await.unwrap().unwrap();
    n.status
        .map(|s| s.allocations.into_iter().collect())
        .unwrap_or_default()
}

async fn wait_condition(
    store: &ResourceStore,
    name: &str,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
) -> Address {
    until(
        &format!("{name}: {type_}={status:?}/{reason}"),
        20,
        || async {
            get_address(store, name)
                .await
                .and_then(|a| cond(&a, type_))
                .is_some_and(|(s, r)| s == status && r == reason)
        },
    )
    .await;
    get_address(store, name).await.unwrap()
}

async fn delete_address(store: &ResourceStore, name: &str) {
    mutate::<Address>(store, "p", name, |a| {
        a.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
}

async fn allocate_associate_move_release(env: Env) {
    let s = &env.store;
    // 192.0.2.0/29: hosts .1-.6, .1 is the gateway: five floating IPs.
    network(s, "public", "192.0.2.0/29").await;
    network(s, "lan", "10.0.0.0/24").await;
    instance(s, "web").await;
    address(s, "ip1", "public", Some("web")).await;

    let a1 = wait_condition(s, "ip1", "Associated", ConditionStatus::True, "Associated").await;
    let ip1 = ip_of(&a1).expect("an ip");
    let st = a1.status.as_ref().unwrap();
    assert!(corral_api_types::ec2::is_id_with_prefix(
        st.ec2_id.as_deref().unwrap(),
        "eipalloc"
    ));
    assert!(corral_api_types::ec2::is_id_with_prefix(
        st.association_id.as_deref().unwrap(),
        "eipassoc"
    ));
    assert_eq!(
        cond(&a1, "Allocated"),
        Some((ConditionStatus::True, "Allocated".into()))
    );
    until("web carries ip1", 20, || async {
        floating(s, "web").await.as_deref() == Some(ip1.as_str())
    })
    .await;
    assert!(pool_owners(s, "public")
        .await
        .contains(&(ip1.clone(), "Address/ip1".into())));

    // A second Address on the same NIC waits: one floating IP per NIC.
    address(s, "ip2", "public", Some("web")).await;
    let a2 = wait_condition(s, "ip2", "Associated", ConditionStatus::False, "NicTaken").await;
    let ip2 = ip_of(&a2).expect("allocated anyway");
    assert_ne!(ip1, ip2);

    // ip1 lets go: ip2 moves in, ip1 keeps its IP.
    mutate::<Address>(s, "p", "ip1", |a| a.spec.instance = None).await;
    wait_condition(s, "ip2", "Associated", ConditionStatus::True, "Associated").await;
    until("web carries ip2", 20, || async {
        floating(s, "web").await.as_deref() == Some(ip2.as_str())
    })
    .await;
    let a1 = wait_condition(
        s,
        "ip1",
        "Associated",
        ConditionStatus::False,
        "NotRequested",
    )
    .await;
    assert_eq!(ip_of(&a1), Some(ip1.clone()), "allocation is stable");
    assert!(a1.status.unwrap().association_id.is_none());

    // An Address naming a missing instance says so.
    address(s, "ip3", "public", Some("ghost")).await;
    wait_condition(
        s,
        "ip3",
        "Associated",
        ConditionStatus::False,
        "InstanceNotFound",
    )
    .await;

    // Deleting ip2 clears the instance and gives the IP back.
    delete_address(s, "ip2").await;
    until("ip2 gone", 20, || async {
        get_address(s, "ip2").await.is_none()
    })
    .await;
    until("web without a floating IP", 20, || async {
        floating(s, "web").await.is_none()
    })
    .await;
    assert!(!pool_owners(s, "public")
        .await
        .iter()
        .any(|(_, who)| who == "Address/ip2"));
    // The instance's own address was never touched.
    let web: Instance = s.get("p", "web").await.unwrap().unwrap();
    assert!(web.status.unwrap().addresses[0].ip.starts_with("10.0.0."));
}

async fn never_twice_and_exhaustion(env: Env) {
    let s = &env.store;
    // Missing pool: reported, then allocated once it appears.
    address(s, "early", "public", None).await;
    wait_condition(
        s,
        "early",
        "Allocated",
        ConditionStatus::False,
        "NetworkNotFound",
    )
    .await;
    network(s, "public", "192.0.2.0/29").await;
    wait_condition(s, "early", "Allocated", ConditionStatus::True, "Allocated").await;

    // Four more at once take the four left; a sixth finds the pool empty.
    let mut tasks = Vec::new();
    for k in 0..5 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            address(&s, &format!("a{k}"), "public", None).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    until("every address decided", 20, || async {
        let mut decided = 0;
        for k in 0..5 {
            if get_address(s, &format!("a{k}"))
                .await
                .and_then(|a| cond(&a, "Allocated"))
                .is_some()
            {
                decided += 1;
            }
        }
        decided == 5
    })
    .await;
    let mut ips = HashSet::new();
    let mut exhausted = 0;
    for name in ["early", "a0", "a1", "a2", "a3", "a4"] {
        let a = get_address(s, name).await.unwrap();
        match cond(&a, "Allocated").unwrap() {
            (ConditionStatus::True, _) => assert!(ips.insert(ip_of(&a).unwrap()), "{name}"),
            (ConditionStatus::False, r) => {
                assert_eq!(r, "PoolExhausted");
                exhausted += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ips.len(), exhausted), (5, 1));
    assert!(!ips.contains("192.0.2.1"), "never the gateway");

    // Releasing one lets the waiting one in.
    let waiting = {
        let mut w = String::new();
        for k in 0..5 {
            let a = get_address(s, &format!("a{k}")).await.unwrap();
            if ip_of(&a).is_none() {
                w = a.metadata.name.clone();
            }
        }
        w
    };
    delete_address(s, "early").await;
    wait_condition(s, &waiting, "Allocated", ConditionStatus::True, "Allocated").await;
    let owners = pool_owners(s, "public").await;
    assert_eq!(owners.len(), 5, "{owners:?}");
}

/// The operator's pool (a Network in `corral-pools`) serves every
/// project: two projects' Addresses take distinct IPs from it under
/// project-qualified owners, and a deleted one gives its IP back.
async fn operator_pool_serves_every_project(env: Env) {
    use corral_api_types::kinds::address::POOL_PROJECT;
    let s = &env.store;
    s.create(&Network::new(
        POOL_PROJECT,
        "public",
        NetworkSpec {
            cidr: "172.24.4.0/29".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    for project in ["p", "q"] {
        s.create(&Address::new(
            project,
            "eip",
            AddressSpec {
                pool: Some("public".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    }
    let ip = |project: &'static str| async move {
        let a: Address = s.get(project, "eip").await.unwrap().unwrap();
        a.status.and_then(|st| st.ip)
    };
    until("both allocated", 20, || async {
        ip("p").await.is_some() && ip("q").await.is_some()
    })
    .await;
    assert_ne!(ip("p").await, ip("q").await);
    let owners = || async {
        let n: Network = s.get(POOL_PROJECT, "public").await.unwrap().unwrap();
        n.status.unwrap_or_default().allocations
    };
    let table = owners().await;
    assert_eq!(
        table.get(&ip("p").await.unwrap()).map(String::as_str),
        Some("Address/p/eip")
    );
    assert_eq!(
        table.get(&ip("q").await.unwrap()).map(String::as_str),
        Some("Address/q/eip")
    );
    mutate::<Address>(s, "q", "eip", |a| {
        a.metadata.deletion_timestamp = Some(Utc::now())
    })
    .await;
    until("q's IP given back, p's kept", 20, || async {
        let t = owners().await;
        t.len() == 1 && t.values().all(|w| w == "Address/p/eip")
    })
    .await;
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn allocate_associate_move_release() {
                super::allocate_associate_move_release(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn never_twice_and_exhaustion() {
                super::never_twice_and_exhaustion(super::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn operator_pool_serves_every_project() {
                super::operator_pool_serves_every_project(super::$backend().await).await;
            }
        }
    };
}

suite!(embedded);
suite!(etcd);
