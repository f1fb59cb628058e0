//! Elastic IPs through aws-sdk-ec2, with the real controllers running on
//! the façade's store: allocate from the project's pool, describe by id,
//! IP and filters, associate (instance or interface, reassociation rules),
//! the public IP in DescribeInstances, disassociate, release; every error
//! path a tool branches on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{DomainType, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use common::{client, code, create_network, filter, network, run_one};
use corral_api_types::Network;
use corral_controllers::{ControllerManager, ControllerOptions};
use corral_ec2_api::testing::{seed_project, start, TestServer};

async fn controllers(s: &TestServer) -> tokio::sync::watch::Sender<bool> {
    let manager = Arc::new(ControllerManager::new(
        s.store.clone(),
        ControllerOptions::default(),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(manager.run(rx));
    stop
}

/// The instance's public IP and its first interface's association IP.
async fn public_ip(ec2: &Client, id: &str) -> (Option<String>, Option<String>) {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let i = &out.reservations()[0].instances()[0];
    (
        i.public_ip_address().map(str::to_string),
        i.network_interfaces()
            .first()
            .and_then(|n| n.association())
            .and_then(|a| a.public_ip())
            .map(str::to_string),
    )
}

async fn until_public_ip(ec2: &Client, id: &str, want: Option<&str>) {
    for _ in 0..200 {
        let (ip, nic_ip) = public_ip(ec2, id).await;
        if ip.as_deref() == want && nic_ip.as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never showed public IP {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_ips_allocate_associate_release() {
    let s = start().await;
    let _stop = controllers(&s).await;
    let image = seed_project(&s.store, "default").await;
    let ec2 = client(&s, &s.admin);

    // No pool yet: the capacity error, saying how to make one.
    let err = ec2.allocate_address().send().await.unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&err),
        Some("InsufficientAddressCapacity")
    );
    assert!(aws_sdk_ec2::error::ProvideErrorMetadata::message(&err)
        .unwrap()
        .contains("public"));

    // 198.51.100.0/29: .1 is the gateway, five addresses.
    create_network(&s.store, "default", "public", "198.51.100.0/29").await;
    assert_eq!(
        code(ec2.allocate_address().dry_run(true).send().await),
        "DryRunOperation"
    );
    assert_eq!(
        code(
            ec2.allocate_address()
                .domain(DomainType::from("galaxy"))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    let a1 = ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::ElasticIp)
                .tags(Tag::builder().key("Name").value("web-ip").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let (id1, ip1) = (
        a1.allocation_id().unwrap().to_string(),
        a1.public_ip().unwrap().to_string(),
    );
    assert!(id1.starts_with("eipalloc-") && id1.len() == "eipalloc-".len() + 17);
    assert!(ip1.starts_with("198.51.100.") && ip1 != "198.51.100.1");
    assert_eq!(a1.domain(), Some(&DomainType::Vpc));
    let a2 = ec2
        .allocate_address()
        .domain(DomainType::Standard)
        .send()
        .await
        .unwrap();
    let (id2, ip2) = (
        a2.allocation_id().unwrap().to_string(),
        a2.public_ip().unwrap().to_string(),
    );
    assert_ne!(ip1, ip2);

    // Describe: all, by id, by IP, by filter; the errors.
    let all = ec2.describe_addresses().send().await.unwrap();
    assert_eq!(all.addresses().len(), 2);
    let by_id = ec2
        .describe_addresses()
        .allocation_ids(&id1)
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.addresses()[0].public_ip(), Some(ip1.as_str()));
    assert_eq!(by_id.addresses()[0].tags()[0].value(), Some("web-ip"));
    let by_ip = ec2
        .describe_addresses()
        .public_ips(&ip2)
        .send()
        .await
        .unwrap();
    assert_eq!(by_ip.addresses()[0].allocation_id(), Some(id2.as_str()));
    assert_eq!(by_ip.addresses()[0].domain(), Some(&DomainType::Standard));
    for (f, v, n) in [
        ("public-ip", ip1.as_str(), 1),
        ("domain", "vpc", 1),
        ("tag:Name", "web-*", 1),
        ("allocation-id", "eipalloc-*", 2),
        ("instance-id", "i-*", 0),
    ] {
        let out = ec2
            .describe_addresses()
            .filters(filter(f, &[v]))
            .send()
            .await
            .unwrap();
        assert_eq!(out.addresses().len(), n, "{f}={v}");
    }
    assert_eq!(
        code(
            ec2.describe_addresses()
                .filters(filter("colour", &["red"]))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            ec2.describe_addresses()
                .allocation_ids("eipalloc-00000000000000000")
                .send()
                .await
        ),
        "InvalidAllocationID.NotFound"
    );
    assert_eq!(
        code(
            ec2.describe_addresses()
                .allocation_ids("eip-nope")
                .send()
                .await
        ),
        "InvalidAllocationID.Malformed"
    );
    assert_eq!(
        code(
            ec2.describe_addresses()
                .public_ips("203.0.113.9")
                .send()
                .await
        ),
        "InvalidAddress.NotFound"
    );

    // Associate with an instance: its public IP shows up.
    let web = run_one(&ec2, &image).await;
    let db = run_one(&ec2, &image).await;
    assert_eq!(
        code(ec2.associate_address().instance_id(&web).send().await),
        "MissingParameter"
    );
    assert_eq!(
        code(ec2.associate_address().allocation_id(&id1).send().await),
        "MissingParameter"
    );
    assert_eq!(
        code(
            ec2.associate_address()
                .allocation_id(&id1)
                .instance_id("i-00000000000000000")
                .send()
                .await
        ),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(
            ec2.associate_address()
                .allocation_id(&id1)
                .instance_id(&web)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperation"
    );
    let assoc1 = ec2
        .associate_address()
        .allocation_id(&id1)
        .instance_id(&web)
        .send()
        .await
        .unwrap()
        .association_id()
        .unwrap()
        .to_string();
    assert!(assoc1.starts_with("eipassoc-"));
    until_public_ip(&ec2, &web, Some(&ip1)).await;
    let d = ec2
        .describe_addresses()
        .filters(filter("instance-id", &[&web]))
        .send()
        .await
        .unwrap();
    let row = &d.addresses()[0];
    assert_eq!(row.association_id(), Some(assoc1.as_str()));
    assert!(row.network_interface_id().unwrap().starts_with("eni-"));
    assert!(row.private_ip_address().unwrap().starts_with("10.0.0."));

    // Moving it needs AllowReassociation.
    assert_eq!(
        code(
            ec2.associate_address()
                .allocation_id(&id1)
                .instance_id(&db)
                .send()
                .await
        ),
        "Resource.AlreadyAssociated"
    );
    ec2.associate_address()
        .allocation_id(&id1)
        .instance_id(&db)
        .allow_reassociation(true)
        .send()
        .await
        .unwrap();
    until_public_ip(&ec2, &db, Some(&ip1)).await;
    until_public_ip(&ec2, &web, None).await;

    // The second address by PublicIp onto web's interface.
    let eni = ec2
        .describe_instances()
        .instance_ids(&web)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .network_interfaces()[0]
        .network_interface_id()
        .unwrap()
        .to_string();
    ec2.associate_address()
        .public_ip(&ip2)
        .network_interface_id(&eni)
        .send()
        .await
        .unwrap();
    until_public_ip(&ec2, &web, Some(&ip2)).await;

    // Release refuses an associated address.
    assert_eq!(
        code(ec2.release_address().allocation_id(&id1).send().await),
        "InvalidIPAddress.InUse"
    );

    // Disassociate by association id and by public IP.
    let assoc_db = ec2
        .describe_addresses()
        .allocation_ids(&id1)
        .send()
        .await
        .unwrap()
        .addresses()[0]
        .association_id()
        .unwrap()
        .to_string();
    assert_ne!(assoc_db, assoc1, "a new association, a new id");
    assert_eq!(
        code(
            ec2.disassociate_address()
                .association_id(&assoc1)
                .send()
                .await
        ),
        "InvalidAssociationID.NotFound"
    );
    assert_eq!(
        code(ec2.disassociate_address().send().await),
        "MissingParameter"
    );
    ec2.disassociate_address()
        .association_id(&assoc_db)
        .send()
        .await
        .unwrap();
    ec2.disassociate_address()
        .public_ip(&ip2)
        .send()
        .await
        .unwrap();
    until_public_ip(&ec2, &db, None).await;
    until_public_ip(&ec2, &web, None).await;
    let d = ec2.describe_addresses().send().await.unwrap();
    assert!(d.addresses().iter().all(|a| a.association_id().is_none()));

    // Release by id and by IP; then they are gone.
    ec2.release_address()
        .allocation_id(&id1)
        .send()
        .await
        .unwrap();
    ec2.release_address().public_ip(&ip2).send().await.unwrap();
    assert_eq!(
        code(ec2.describe_addresses().allocation_ids(&id1).send().await),
        "InvalidAllocationID.NotFound"
    );
    assert_eq!(
        code(ec2.release_address().allocation_id(&id1).send().await),
        "InvalidAllocationID.NotFound"
    );
    assert_eq!(code(ec2.release_address().send().await), "MissingParameter");

    // Five addresses in the pool, then none: the capacity error.
    for _ in 0..200 {
        let n: Network = s.store.get("default", "public").await.unwrap().unwrap();
        if n.status.is_none_or(|s| s.allocations.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ips = std::collections::HashSet::new();
    for _ in 0..5 {
        let a = ec2.allocate_address().send().await.unwrap();
        assert!(ips.insert(a.public_ip().unwrap().to_string()));
    }
    assert_eq!(
        code(ec2.allocate_address().send().await),
        "InsufficientAddressCapacity"
    );
    let left = ec2.describe_addresses().send().await.unwrap();
    assert_eq!(
        left.addresses().len(),
        5,
        "the refused allocation left nothing behind: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_pool_wins_and_tenancy() {
    let s = start().await;
    seed_project(&s.store, "default").await;
    create_network(&s.store, "default", "public", "198.51.100.0/29").await;
    let mut ext = network("default", "ext", "203.0.113.0/28");
    ext.metadata
        .labels
        .insert("corral.dev/address-pool".into(), "true".into());
    s.store.create(&ext).await.unwrap();
    let ec2 = client(&s, &s.admin);
    let a = ec2.allocate_address().send().await.unwrap();
    assert!(a.public_ip().unwrap().starts_with("203.0.113."));

    // Another project sees nothing of it.
    let other_keys = corral_ec2_api::testing::add_user(&s.store, "bob", Some("other")).await;
    let other = client(&s, &other_keys);
    assert!(other
        .describe_addresses()
        .send()
        .await
        .unwrap()
        .addresses()
        .is_empty());
    assert_eq!(
        code(
            other
                .release_address()
                .allocation_id(a.allocation_id().unwrap())
                .send()
                .await
        ),
        "InvalidAllocationID.NotFound"
    );
}

/// A project with no pool of its own takes from the operator's (a Network
/// in `corral-pools`, which `corral up` makes): the IP comes from it, and
/// ReleaseAddress gives it back there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_pool_serves_projects_without_one() {
    use corral_api_types::kinds::address::POOL_PROJECT;
    let s = start().await;
    let _stop = controllers(&s).await;
    seed_project(&s.store, "default").await;
    let ec2 = client(&s, &s.admin);
    create_network(&s.store, POOL_PROJECT, "public", "172.24.4.0/29").await;

    let a = ec2.allocate_address().send().await.unwrap();
    let ip = a.public_ip().unwrap().to_string();
    assert!(ip.starts_with("172.24.4."), "{ip}");
    let id = a.allocation_id().unwrap().to_string();
    let pool: Network = s.store.get(POOL_PROJECT, "public").await.unwrap().unwrap();
    assert_eq!(
        pool.status
            .unwrap()
            .allocations
            .get(&ip)
            .map(String::as_str),
        Some(format!("Address/default/{id}").as_str())
    );
    let listed = ec2.describe_addresses().send().await.unwrap();
    assert_eq!(listed.addresses()[0].public_ip(), Some(ip.as_str()));

    ec2.release_address()
        .allocation_id(&id)
        .send()
        .await
        .unwrap();
    for _ in 0..200 {
        let n: Network = s.store.get(POOL_PROJECT, "public").await.unwrap().unwrap();
        if n.status.is_none_or(|st| st.allocations.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the operator's pool never got {ip} back");
}
