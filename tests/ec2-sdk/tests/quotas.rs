//! Project quotas and request limits as the AWS SDK sees them: the error
//! codes AWS uses for its own limits, and user data capped at 16 KiB
//! before base64 like EC2.

mod common;

use common::{
    client, code, create_group, create_network, launch, objects, permission, start_seeded,
};
use corral_api_types::{Instance, Project, ProjectResources, SecurityGroup, Volume};
use corral_ec2_api::testing::{start, TestServer};

/// Changes project `default`'s quotas in the store.
async fn set_quotas(s: &TestServer, set: impl FnOnce(&mut ProjectResources)) {
    let mut p: Project = s.store.get("", "default").await.unwrap().unwrap();
    set(&mut p.spec.quotas);
    s.store.update(&p).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_instances_over_quota_gets_the_aws_codes() {
    let (s, ec2, image) = start_seeded().await;
    set_quotas(&s, |q| {
        *q = ProjectResources {
            instances: Some(3),
            vcpus: Some(4),
            volumes: Some(1),
            volume_gib: Some(5),
            ..Default::default()
        }
    })
    .await;
    let run = |itype: &'static str, min: i32, max: i32| {
        ec2.run_instances()
            .image_id(&image)
            .instance_type(itype.into())
            .min_count(min)
            .max_count(max)
    };

    // 2 vCPUs, then 2 more: the vCPU limit is reached first.
    run("m1.medium", 1, 1).send().await.unwrap();
    let err = run("m1.large", 1, 1).send().await.unwrap_err();
    let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
    assert_eq!(meta.code(), Some("VcpuLimitExceeded"), "{err:?}");
    assert!(
        meta.message()
            .unwrap()
            .contains("vcpus quota of project default: requested 4, used 2, limit 4"),
        "{meta:?}"
    );
    // MinCount 3 where two fit: all or nothing, as EC2 (nothing is left
    // behind by the refused launch).
    assert_eq!(
        code(run("m1.tiny", 3, 3).send().await),
        "InstanceLimitExceeded"
    );
    let left = objects::<Instance>(&s.store, "default").await;
    let live: Vec<_> = left
        .iter()
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 1, "{left:?}");
    // MinCount 1, MaxCount 5: as many as fit (two more instances).
    let r = run("m1.tiny", 1, 5).send().await.unwrap();
    assert_eq!(r.instances().len(), 2);
    assert_eq!(
        code(run("m1.tiny", 1, 1).send().await),
        "InstanceLimitExceeded"
    );
    let all = objects::<Instance>(&s.store, "default").await;
    assert_eq!(all.len(), 3);

    // Volumes: size, then count.
    let zones = ec2.describe_availability_zones().send().await.unwrap();
    let zone = zones.availability_zones()[0]
        .zone_name()
        .unwrap()
        .to_string();
    assert_eq!(
        code(
            ec2.create_volume()
                .availability_zone(&zone)
                .size(6)
                .send()
                .await
        ),
        "VolumeLimitExceeded"
    );
    // A kind of volume Corral does not have is refused, not made standard.
    for create in [
        ec2.create_volume()
            .volume_type(aws_sdk_ec2::types::VolumeType::Gp3),
        ec2.create_volume()
            .volume_type(aws_sdk_ec2::types::VolumeType::Io2)
            .iops(3000),
        ec2.create_volume().throughput(125),
    ] {
        assert_eq!(
            code(create.availability_zone(&zone).size(1).send().await),
            "UnsupportedOperation"
        );
    }
    let v = ec2
        .create_volume()
        .availability_zone(&zone)
        .size(5)
        .volume_type(aws_sdk_ec2::types::VolumeType::Standard)
        .send()
        .await
        .unwrap();
    assert_eq!(
        v.volume_type(),
        Some(&aws_sdk_ec2::types::VolumeType::Standard)
    );
    assert_eq!(
        code(
            ec2.create_volume()
                .availability_zone(&zone)
                .size(1)
                .send()
                .await
        ),
        "VolumeLimitExceeded"
    );
    let vols = objects::<Volume>(&s.store, "default").await;
    assert_eq!(vols.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_is_limited_to_16_kib_before_base64() {
    let (_s, ec2, image) = start_seeded().await;
    let run = |bytes: usize| {
        // The SDK base64-encodes user data as EC2 expects it.
        let text = "#!/bin/sh\n".to_string() + &"x".repeat(bytes - 10);
        launch(&ec2, &image).user_data(base64(text.as_bytes()))
    };
    let err = run(16 * 1024 + 1).send().await.unwrap_err();
    let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
    assert_eq!(meta.code(), Some("InvalidParameterValue"), "{err:?}");
    assert!(meta.message().unwrap().contains("16384"), "{meta:?}");
    run(16 * 1024).send().await.unwrap();
}

/// Standard base64 with padding (the SDK leaves encoding to the caller).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_address_over_quota_is_address_limit_exceeded() {
    let s = start().await;
    set_quotas(&s, |q| q.addresses = Some(1)).await;
    create_network(&s.store, "default", "public", "203.0.113.0/28").await;
    let ec2 = client(&s, &s.admin);
    ec2.allocate_address().send().await.unwrap();
    let err = ec2.allocate_address().send().await.unwrap_err();
    let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
    assert_eq!(meta.code(), Some("AddressLimitExceeded"), "{err:?}");
    assert!(
        meta.message().unwrap().contains("addresses quota"),
        "{meta:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigger_instance_type_over_quota_is_refused() {
    let (s, ec2, image) = start_seeded().await;
    set_quotas(&s, |q| q.vcpus = Some(1)).await;
    let r = launch(&ec2, &image)
        .instance_type("m1.small".into())
        .send()
        .await
        .unwrap();
    let id = r.instances()[0].instance_id().unwrap().to_string();
    common::set_phase(&s, "default", &id, corral_api_types::InstancePhase::Running).await;
    ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    common::set_phase(&s, "default", &id, corral_api_types::InstancePhase::Stopped).await;
    let resize = |t: &'static str| {
        ec2.modify_instance_attribute()
            .instance_id(&id)
            .instance_type(
                aws_sdk_ec2::types::AttributeValue::builder()
                    .value(t)
                    .build(),
            )
    };
    assert_eq!(code(resize("m1.medium").send().await), "VcpuLimitExceeded");
    let i: Instance = s.store.get("default", &id).await.unwrap().unwrap();
    assert_eq!(i.spec.instance_type.as_deref(), Some("m1.small"));
    // Same vCPUs, more memory: no vCPU growth, no memory quota.
    resize("m1.tiny").send().await.unwrap();
}

/// Count quotas and rule limits in AWS's words: a project's security
/// groups past its quota are `SecurityGroupLimitExceeded`, key pairs
/// `ResourceLimitExceeded`, and a group's rules past 100 per direction
/// `RulesPerSecurityGroupLimitExceeded` — nothing half-added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_quotas_and_rule_limits_get_the_aws_codes() {
    let (s, ec2, _) = start_seeded().await;
    set_quotas(&s, |q| {
        *q = ProjectResources {
            security_groups: Some(2),
            key_pairs: Some(1),
            ..Default::default()
        }
    })
    .await;
    corral_registry::quota::settle(&s.store, "default")
        .await
        .unwrap();
    // The default VPC's group counts too (as on AWS): made by the first
    // look at the groups.
    ec2.describe_security_groups().send().await.unwrap();
    let have = objects::<SecurityGroup>(&s.store, "default").await.len();
    assert_eq!(have, 1, "the default group");
    let mut made = Vec::new();
    for n in have..2 {
        made.push(create_group(&ec2, &format!("g{n}"), "d", None).await);
    }
    let err = ec2
        .create_security_group()
        .group_name("one-too-many")
        .description("d")
        .send()
        .await
        .unwrap_err();
    let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
    assert_eq!(meta.code(), Some("SecurityGroupLimitExceeded"), "{err:?}");
    assert!(
        meta.message()
            .unwrap()
            .contains("securityGroups quota of project default: requested 1, used 2, limit 2"),
        "{meta:?}"
    );

    ec2.create_key_pair().key_name("k1").send().await.unwrap();
    assert_eq!(
        code(ec2.create_key_pair().key_name("k2").send().await),
        "ResourceLimitExceeded"
    );

    // 100 inbound rules fit; the 101st is refused and not stored.
    assert!(!made.is_empty(), "the seed already holds {have} groups");
    let group = made[0].clone();
    let rule = |port: i32| permission("tcp", port, port, "10.0.0.0/8");
    let mut batch = ec2.authorize_security_group_ingress().group_id(&group);
    for port in 1..=100 {
        batch = batch.ip_permissions(rule(port));
    }
    batch.send().await.unwrap();
    let err = ec2
        .authorize_security_group_ingress()
        .group_id(&group)
        .ip_permissions(rule(101))
        .send()
        .await
        .unwrap_err();
    let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
    assert_eq!(
        meta.code(),
        Some("RulesPerSecurityGroupLimitExceeded"),
        "{err:?}"
    );
    let d = ec2
        .describe_security_groups()
        .group_ids(&group)
        .send()
        .await
        .unwrap();
    let perms = d.security_groups()[0].ip_permissions();
    let ranges: usize = perms.iter().map(|p| p.ip_ranges().len()).sum();
    assert_eq!(ranges, 100, "{perms:?}");
}
