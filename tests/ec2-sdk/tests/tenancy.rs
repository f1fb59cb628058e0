//! The EC2 tenancy matrix: two users in projects `a` and `b`; `b` makes
//! one of everything; every action that takes an id or a name answers
//! `a` with the code EC2 uses for an id that does not exist, unfiltered
//! Describe* never show `b`'s objects to `a`, and `b`'s objects are
//! unchanged in the store afterwards. Adding an action is one line of
//! `cases`.
//!
//! Over 600 lines on purpose: the `cases` table is the matrix, one line per
//! action; it reads as one list.

mod common;

use std::future::Future;
use std::pin::Pin;

use aws_sdk_ec2::types::{IpPermission, Tag};
use aws_sdk_ec2::Client;
use common::{
    client, code, create_group, create_image, create_network, create_subnet, create_volume,
    create_vpc, filter, launch, objects, permission, run_one,
};
use corral_api_types::{
    Address, Image, Instance, KeyPair, Network, Resource, SecurityGroup, Snapshot, Volume,
};
use corral_ec2_api::testing::{add_user, seed_project, start, TestServer};

/// Every object of project `p`, as stored.
async fn stored(s: &TestServer, p: &str) -> Vec<String> {
    async fn all<K: Resource>(s: &TestServer, p: &str, out: &mut Vec<String>) {
        for item in objects::<K>(&s.store, p).await {
            out.push(format!("{}: {item:?}", K::KIND));
        }
    }
    let mut out = Vec::new();
    all::<Instance>(s, p, &mut out).await;
    all::<Volume>(s, p, &mut out).await;
    all::<Snapshot>(s, p, &mut out).await;
    all::<KeyPair>(s, p, &mut out).await;
    all::<SecurityGroup>(s, p, &mut out).await;
    all::<Address>(s, p, &mut out).await;
    all::<Image>(s, p, &mut out).await;
    all::<Network>(s, p, &mut out).await;
    out
}

/// B's ids.
struct B {
    image: String,
    instance: String,
    volume: String,
    snapshot: String,
    key: String,
    key_id: String,
    group: String,
    group_name: String,
    alloc: String,
    ip: String,
    vpc: String,
    subnet: String,
}

async fn b_makes_one_of_everything(s: &TestServer, eb: &Client) -> B {
    let image = seed_project(&s.store, "b").await;
    create_network(&s.store, "b", "public", "198.51.100.0/28").await;
    let key = eb.create_key_pair().key_name("bkey").send().await.unwrap();
    let group = create_group(eb, "bsg", "b's", None).await;
    let volume = create_volume(eb).await;
    let snapshot = eb
        .create_snapshot()
        .volume_id(&volume)
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let instance = launch(eb, &image)
        .key_name("bkey")
        .security_group_ids(&group)
        .client_token("shared-token")
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let addr = eb.allocate_address().send().await.unwrap();
    let vpc = create_vpc(eb, "10.9.0.0/16").await;
    let subnet = create_subnet(eb, &vpc, "10.9.1.0/24")
        .await
        .subnet_id()
        .unwrap()
        .to_string();
    eb.create_tags()
        .resources(&instance)
        .resources(&volume)
        .resources(&group)
        .tags(Tag::builder().key("owner").value("b").build())
        .send()
        .await
        .unwrap();
    B {
        image,
        instance,
        volume,
        snapshot,
        key: "bkey".into(),
        key_id: key.key_pair_id().unwrap().to_string(),
        group,
        group_name: "bsg".into(),
        alloc: addr.allocation_id().unwrap().to_string(),
        ip: addr.public_ip().unwrap().to_string(),
        vpc,
        subnet,
    }
}

type Case<'a> = (
    &'static str,
    &'static str,
    Pin<Box<dyn Future<Output = String> + Send + 'a>>,
);

macro_rules! case {
    ($name:expr, $want:expr, $call:expr) => {
        (
            $name,
            $want,
            Box::pin(async move { code($call.send().await) }) as Pin<Box<_>>,
        )
    };
}

fn ssh() -> IpPermission {
    permission("tcp", 22, 22, "0.0.0.0/0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cannot_see_or_touch_b() {
    let s = start().await;
    let ka = add_user(&s.store, "alice", Some("a")).await;
    let kb = add_user(&s.store, "bob", Some("b")).await;
    let (ea, eb) = (client(&s, &ka), client(&s, &kb));
    let b = b_makes_one_of_everything(&s, &eb).await;
    // A's own things, to aim at B's.
    let a_image = seed_project(&s.store, "a").await;
    create_network(&s.store, "a", "public", "203.0.113.0/28").await;
    let a_instance = run_one(&ea, &a_image).await;
    let a_volume = create_volume(&ea).await;
    let a_alloc = ea
        .allocate_address()
        .send()
        .await
        .unwrap()
        .allocation_id()
        .unwrap()
        .to_string();

    let before = stored(&s, "b").await;
    let (ea, b) = (&ea, &b);
    let (a_instance, a_volume, a_alloc, a_image) = (&a_instance, &a_volume, &a_alloc, &a_image);
    const INSTANCE: &str = "InvalidInstanceID.NotFound";
    const VOLUME: &str = "InvalidVolume.NotFound";
    const SNAPSHOT: &str = "InvalidSnapshot.NotFound";
    const KEY: &str = "InvalidKeyPair.NotFound";
    const GROUP: &str = "InvalidGroup.NotFound";
    const AMI: &str = "InvalidAMIID.NotFound";
    const ALLOC: &str = "InvalidAllocationID.NotFound";
    const VPC: &str = "InvalidVpcID.NotFound";
    const SUBNET: &str = "InvalidSubnetID.NotFound";
    let tag = || Tag::builder().key("owner").value("a").build();
    let cases: Vec<Case> = vec![
        // Instances.
        case!(
            "DescribeInstances",
            INSTANCE,
            ea.describe_instances().instance_ids(&b.instance)
        ),
        case!(
            "DescribeInstanceStatus",
            INSTANCE,
            ea.describe_instance_status().instance_ids(&b.instance)
        ),
        case!(
            "TerminateInstances",
            INSTANCE,
            ea.terminate_instances().instance_ids(&b.instance)
        ),
        case!(
            "StopInstances",
            INSTANCE,
            ea.stop_instances().instance_ids(&b.instance)
        ),
        case!(
            "StartInstances",
            INSTANCE,
            ea.start_instances().instance_ids(&b.instance)
        ),
        case!(
            "RebootInstances",
            INSTANCE,
            ea.reboot_instances().instance_ids(&b.instance)
        ),
        case!(
            "GetConsoleOutput",
            INSTANCE,
            ea.get_console_output().instance_id(&b.instance)
        ),
        case!(
            "DescribeInstanceAttribute",
            INSTANCE,
            ea.describe_instance_attribute()
                .instance_id(&b.instance)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceType)
        ),
        case!(
            "ModifyInstanceAttribute",
            INSTANCE,
            ea.modify_instance_attribute()
                .instance_id(&b.instance)
                .disable_api_termination(
                    aws_sdk_ec2::types::AttributeBooleanValue::builder()
                        .value(true)
                        .build()
                )
        ),
        // Volumes and snapshots.
        case!(
            "DescribeVolumes",
            VOLUME,
            ea.describe_volumes().volume_ids(&b.volume)
        ),
        case!(
            "DeleteVolume",
            VOLUME,
            ea.delete_volume().volume_id(&b.volume)
        ),
        case!(
            "AttachVolume (b's volume)",
            VOLUME,
            ea.attach_volume()
                .volume_id(&b.volume)
                .instance_id(a_instance)
                .device("/dev/vdb")
        ),
        case!(
            "AttachVolume (to b's instance)",
            INSTANCE,
            ea.attach_volume()
                .volume_id(a_volume)
                .instance_id(&b.instance)
                .device("/dev/vdb")
        ),
        case!(
            "DetachVolume",
            VOLUME,
            ea.detach_volume().volume_id(&b.volume)
        ),
        case!(
            "CreateSnapshot (b's volume)",
            VOLUME,
            ea.create_snapshot().volume_id(&b.volume)
        ),
        case!(
            "DescribeSnapshots",
            SNAPSHOT,
            ea.describe_snapshots().snapshot_ids(&b.snapshot)
        ),
        case!(
            "DeleteSnapshot",
            SNAPSHOT,
            ea.delete_snapshot().snapshot_id(&b.snapshot)
        ),
        case!(
            "CreateVolume (b's snapshot)",
            SNAPSHOT,
            ea.create_volume()
                .availability_zone("corral-1a")
                .snapshot_id(&b.snapshot)
        ),
        // Key pairs.
        case!(
            "DescribeKeyPairs (name)",
            KEY,
            ea.describe_key_pairs().key_names(&b.key)
        ),
        case!(
            "DescribeKeyPairs (id)",
            KEY,
            ea.describe_key_pairs().key_pair_ids(&b.key_id)
        ),
        // Security groups.
        case!(
            "DescribeSecurityGroups (id)",
            GROUP,
            ea.describe_security_groups().group_ids(&b.group)
        ),
        case!(
            "DescribeSecurityGroups (name)",
            GROUP,
            ea.describe_security_groups().group_names(&b.group_name)
        ),
        case!(
            "DeleteSecurityGroup (id)",
            GROUP,
            ea.delete_security_group().group_id(&b.group)
        ),
        case!(
            "DeleteSecurityGroup (name)",
            GROUP,
            ea.delete_security_group().group_name(&b.group_name)
        ),
        case!(
            "AuthorizeSecurityGroupIngress",
            GROUP,
            ea.authorize_security_group_ingress()
                .group_id(&b.group)
                .ip_permissions(ssh())
        ),
        case!(
            "AuthorizeSecurityGroupEgress",
            GROUP,
            ea.authorize_security_group_egress()
                .group_id(&b.group)
                .ip_permissions(ssh())
        ),
        case!(
            "RevokeSecurityGroupIngress",
            GROUP,
            ea.revoke_security_group_ingress()
                .group_id(&b.group)
                .ip_permissions(ssh())
        ),
        case!(
            "RevokeSecurityGroupEgress",
            GROUP,
            ea.revoke_security_group_egress()
                .group_id(&b.group)
                .ip_permissions(ssh())
        ),
        // RunInstances with b's things.
        case!("RunInstances (b's image)", AMI, launch(ea, &b.image)),
        case!(
            "RunInstances (b's key)",
            KEY,
            launch(ea, a_image).key_name(&b.key)
        ),
        case!(
            "RunInstances (b's group id)",
            GROUP,
            launch(ea, a_image).security_group_ids(&b.group)
        ),
        case!(
            "RunInstances (b's group name)",
            GROUP,
            launch(ea, a_image).security_groups(&b.group_name)
        ),
        case!(
            "RunInstances (b's subnet)",
            SUBNET,
            launch(ea, a_image).subnet_id(&b.subnet)
        ),
        // Addresses.
        case!(
            "DescribeAddresses (id)",
            ALLOC,
            ea.describe_addresses().allocation_ids(&b.alloc)
        ),
        case!(
            "DescribeAddresses (ip)",
            "InvalidAddress.NotFound",
            ea.describe_addresses().public_ips(&b.ip)
        ),
        case!(
            "AssociateAddress (b's address)",
            ALLOC,
            ea.associate_address()
                .allocation_id(&b.alloc)
                .instance_id(a_instance)
        ),
        case!(
            "AssociateAddress (to b's instance)",
            INSTANCE,
            ea.associate_address()
                .allocation_id(a_alloc)
                .instance_id(&b.instance)
        ),
        case!(
            "DisassociateAddress (b's ip)",
            "InvalidAddress.NotFound",
            ea.disassociate_address().public_ip(&b.ip)
        ),
        case!(
            "ReleaseAddress (ip)",
            "InvalidAddress.NotFound",
            ea.release_address().public_ip(&b.ip)
        ),
        case!(
            "ReleaseAddress",
            ALLOC,
            ea.release_address().allocation_id(&b.alloc)
        ),
        // Tags.
        case!(
            "CreateTags (instance)",
            INSTANCE,
            ea.create_tags().resources(&b.instance).tags(tag())
        ),
        case!(
            "CreateTags (volume)",
            VOLUME,
            ea.create_tags().resources(&b.volume).tags(tag())
        ),
        case!(
            "CreateTags (group)",
            GROUP,
            ea.create_tags().resources(&b.group).tags(tag())
        ),
        case!(
            "DeleteTags (instance)",
            INSTANCE,
            ea.delete_tags()
                .resources(&b.instance)
                .tags(Tag::builder().key("owner").build())
        ),
        case!(
            "DeleteTags (volume)",
            VOLUME,
            ea.delete_tags()
                .resources(&b.volume)
                .tags(Tag::builder().key("owner").build())
        ),
        // Images.
        case!(
            "DescribeImages",
            AMI,
            ea.describe_images().image_ids(&b.image)
        ),
        case!(
            "DescribeImageAttribute",
            AMI,
            ea.describe_image_attribute()
                .image_id(&b.image)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::Description)
        ),
        case!(
            "ModifyImageAttribute",
            AMI,
            ea.modify_image_attribute().image_id(&b.image).description(
                aws_sdk_ec2::types::AttributeValue::builder()
                    .value("a's")
                    .build()
            )
        ),
        case!(
            "DeregisterImage",
            AMI,
            ea.deregister_image().image_id(&b.image)
        ),
        // VPCs.
        case!("DescribeVpcs", VPC, ea.describe_vpcs().vpc_ids(&b.vpc)),
        case!(
            "DescribeSubnets",
            SUBNET,
            ea.describe_subnets().subnet_ids(&b.subnet)
        ),
        case!(
            "CreateSubnet (b's vpc)",
            VPC,
            ea.create_subnet().vpc_id(&b.vpc).cidr_block("10.9.2.0/24")
        ),
        case!("DeleteVpc", VPC, ea.delete_vpc().vpc_id(&b.vpc)),
    ];
    let total = cases.len();
    let mut failures = Vec::new();
    for (name, want, call) in cases {
        let got = call.await;
        if got != want {
            failures.push(format!("{name}: want {want}, got {got}"));
        }
    }
    // Deleting a key pair that does not exist succeeds in EC2: b's stays.
    ea.delete_key_pair().key_name(&b.key).send().await.unwrap();
    ea.delete_key_pair()
        .key_pair_id(&b.key_id)
        .send()
        .await
        .unwrap();

    // b's idempotency token is not a's: a's run makes a's own instance.
    let mine = launch(ea, a_image)
        .client_token("shared-token")
        .send()
        .await
        .unwrap();
    let mine = mine.instances()[0].instance_id().unwrap();
    assert_ne!(mine, b.instance, "a's ClientToken returned b's instance");
    // b's names do not block a's.
    ea.create_key_pair().key_name(&b.key).send().await.unwrap();
    ea.create_security_group()
        .group_name(&b.group_name)
        .description("a's")
        .send()
        .await
        .unwrap();

    // Unfiltered Describe*: nothing of b's.
    // By id: a now has a key pair and a group with b's names, its own.
    let b_ids = [
        &b.instance,
        &b.volume,
        &b.snapshot,
        &b.key_id,
        &b.group,
        &b.alloc,
        &b.ip,
        &b.image,
        &b.vpc,
        &b.subnet,
    ];
    let lists = [
        (
            "DescribeInstances",
            format!(
                "{:?}",
                ea.describe_instances().send().await.unwrap().reservations()
            ),
        ),
        (
            "DescribeInstanceStatus",
            format!(
                "{:?}",
                ea.describe_instance_status()
                    .include_all_instances(true)
                    .send()
                    .await
                    .unwrap()
                    .instance_statuses()
            ),
        ),
        (
            "DescribeVolumes",
            format!(
                "{:?}",
                ea.describe_volumes().send().await.unwrap().volumes()
            ),
        ),
        (
            "DescribeSnapshots",
            format!(
                "{:?}",
                ea.describe_snapshots().send().await.unwrap().snapshots()
            ),
        ),
        (
            "DescribeKeyPairs",
            format!(
                "{:?}",
                ea.describe_key_pairs().send().await.unwrap().key_pairs()
            ),
        ),
        (
            "DescribeSecurityGroups",
            format!(
                "{:?}",
                ea.describe_security_groups()
                    .send()
                    .await
                    .unwrap()
                    .security_groups()
            ),
        ),
        (
            "DescribeAddresses",
            format!(
                "{:?}",
                ea.describe_addresses().send().await.unwrap().addresses()
            ),
        ),
        (
            "DescribeImages",
            format!("{:?}", ea.describe_images().send().await.unwrap().images()),
        ),
        (
            "DescribeTags",
            format!("{:?}", ea.describe_tags().send().await.unwrap().tags()),
        ),
        (
            "DescribeVpcs",
            format!("{:?}", ea.describe_vpcs().send().await.unwrap().vpcs()),
        ),
        (
            "DescribeSubnets",
            format!(
                "{:?}",
                ea.describe_subnets().send().await.unwrap().subnets()
            ),
        ),
        (
            "DescribeInstances (instance-id filter)",
            format!(
                "{:?}",
                ea.describe_instances()
                    .filters(filter("instance-id", &[&b.instance]))
                    .send()
                    .await
                    .unwrap()
                    .reservations()
            ),
        ),
        (
            "DescribeVolumes (volume-id filter)",
            format!(
                "{:?}",
                ea.describe_volumes()
                    .filters(filter("volume-id", &[&b.volume]))
                    .send()
                    .await
                    .unwrap()
                    .volumes()
            ),
        ),
        (
            "DescribeTags (resource-id filter)",
            format!(
                "{:?}",
                ea.describe_tags()
                    .filters(filter("resource-id", &[&b.instance, &b.volume, &b.group]))
                    .send()
                    .await
                    .unwrap()
                    .tags()
            ),
        ),
        (
            "DescribeImages (all)",
            format!(
                "{:?}",
                ea.describe_images()
                    .executable_users("all")
                    .send()
                    .await
                    .unwrap()
                    .images()
            ),
        ),
        (
            "DescribeNetworkInterfaces",
            format!(
                "{:?}",
                ea.describe_network_interfaces()
                    .send()
                    .await
                    .unwrap()
                    .network_interfaces()
            ),
        ),
    ];
    for (action, text) in &lists {
        for id in b_ids {
            if text.contains(&format!("\"{id}\"")) {
                failures.push(format!("{action} shows b's {id}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A's own instance is visible to a, so the lists above were not empty
    // for want of permission.
    assert!(lists[0].1.contains(a_instance.as_str()), "{}", lists[0].1);
    assert_eq!(stored(&s, "b").await, before, "b's objects changed");
}

/// The references of an Instance resolve within its own project only:
/// with the controllers running, a's instance naming b's network, security
/// group, key pair, image and volume stays `ReferencesResolved=False`
/// naming each of them, and b's objects are untouched (no address taken
/// from b's network, b's volume not attached). The same names made in a
/// then resolve, so the condition is about the project, not the names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_resolve_in_the_instance_own_project() {
    use corral_api_types::{ConditionStatus, InstanceSpec, Nic, VolumeAttachment};
    use corral_controllers::{ControllerManager, ControllerOptions};
    use std::sync::Arc;
    use std::time::Duration;

    let s = start().await;
    let store = &s.store;
    let make = |project: &'static str| async move {
        create_network(store, project, "lan", "10.0.5.0/24").await;
        let mut group = SecurityGroup::new(project, "web", Default::default());
        group.spec.description = "web".into();
        store.create(&group).await.unwrap();
        let mut key = KeyPair::new(project, "admin", Default::default());
        key.spec.public_key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb x@y"
                .into();
        store.create(&key).await.unwrap();
        create_image(store, project, "tiny").await;
        let mut data = Volume::new(project, "data", Default::default());
        data.spec.size_gib = Some(1);
        store.create(&data).await.unwrap();
    };
    for p in ["a", "b"] {
        add_user(store, &format!("user-{p}"), Some(p)).await;
    }
    make("b").await;
    store
        .create(&Instance::new(
            "a",
            "vm",
            InstanceSpec {
                instance_type: Some("m1.tiny".into()),
                image: Some("tiny".into()),
                key_name: Some("admin".into()),
                nics: vec![Nic {
                    network: "lan".into(),
                    security_groups: vec!["web".into()],
                    ..Default::default()
                }],
                volumes: vec![VolumeAttachment {
                    volume: "data".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let manager = Arc::new(ControllerManager::new(
        store.clone(),
        ControllerOptions::default(),
    ));
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(manager.run(rx));

    let refs = || async {
        let i: Instance = store.get("a", "vm").await.unwrap().unwrap();
        i.status.and_then(|st| {
            st.conditions
                .into_iter()
                .find(|c| c.type_ == "ReferencesResolved")
                .map(|c| (c.status, c.message))
        })
    };
    let mut seen = None;
    for _ in 0..200 {
        seen = refs().await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, message) = seen.expect("ReferencesResolved reported");
    assert_eq!(status, ConditionStatus::False, "{message}");
    for what in [
        "network \"lan\"",
        "security group \"web\"",
        "key pair \"admin\"",
        "image \"tiny\"",
        "volume \"data\"",
    ] {
        assert!(message.contains(what), "{what} not in {message}");
    }
    // Give the controllers a moment more: still unresolved, b untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refs().await.unwrap().0, ConditionStatus::False);
    let net: Network = store.get("b", "lan").await.unwrap().unwrap();
    assert!(
        net.status
            .as_ref()
            .is_none_or(|st| st.allocations.is_empty()),
        "a's instance took an address in b's network: {net:?}"
    );
    let vol: Volume = store.get("b", "data").await.unwrap().unwrap();
    assert!(
        !format!("{:?}", vol.status).contains("\"vm\""),
        "b's volume attached to a's instance: {vol:?}"
    );

    // The same names in a: resolved.
    make("a").await;
    let mut resolved = false;
    for _ in 0..200 {
        if refs()
            .await
            .is_some_and(|(st, _)| st == ConditionStatus::True)
        {
            resolved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resolved, "{:?}", refs().await);
}
