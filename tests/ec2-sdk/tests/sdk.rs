//! The façade driven by the official AWS SDK for Rust (aws-sdk-ec2) with a
//! custom endpoint and static credentials: flows, errors, pagination,
//! filters, idempotency, DryRun, the terraform call sequences and tenancy.

use aws_sdk_ec2::types::Tag;
mod common;

use common::{
    client, code, create_group, create_volume, filter, launch, objects, run_one, set_phase,
    start_seeded,
};
use corral_api_types::{Instance, InstancePhase};
use corral_ec2_api::testing::{add_user, seed_project, start, Keys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_pagination_filters_idempotency_dry_run() {
    let (s, ec2, image) = start_seeded().await;

    assert_eq!(
        code(launch(&ec2, &image).dry_run(true).send().await),
        "DryRunOperation"
    );
    assert!(objects::<Instance>(&s.store, "default").await.is_empty());

    let run = || {
        ec2.run_instances()
            .image_id(&image)
            .min_count(6)
            .max_count(6)
            .instance_type("m1.tiny".into())
            .client_token("tok-1")
    };
    let first = run().send().await.unwrap();
    let ids: Vec<String> = first
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(first.reservation_id().unwrap().starts_with("r-"));
    let again = run().send().await.unwrap();
    assert_eq!(
        again
            .instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_string())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        code(launch(&ec2, &image).client_token("tok-1").send().await),
        "IdempotentParameterMismatch"
    );

    // Pages of 5: a token after the first, none after the last.
    let p1 = ec2
        .describe_instances()
        .max_results(5)
        .send()
        .await
        .unwrap();
    let n1: usize = p1.reservations().iter().map(|r| r.instances().len()).sum();
    assert_eq!(n1, 5);
    let token = p1.next_token().expect("a next token").to_string();
    let p2 = ec2
        .describe_instances()
        .max_results(5)
        .next_token(token)
        .send()
        .await
        .unwrap();
    let n2: usize = p2.reservations().iter().map(|r| r.instances().len()).sum();
    assert_eq!(n2, 1);
    assert!(p2.next_token().is_none());
    assert_eq!(
        code(
            ec2.describe_instances()
                .max_results(5)
                .instance_ids(&ids[0])
                .send()
                .await
        ),
        "InvalidParameterCombination"
    );
    assert_eq!(
        code(ec2.describe_instances().max_results(4).send().await),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            ec2.describe_instances()
                .filters(filter("no-such-filter", &["x"]))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );

    // Filters: state from the observed phase, AND across, OR within.
    set_phase(&s, "default", &ids[0], InstancePhase::Running).await;
    let running = ec2
        .describe_instances()
        .filters(filter("instance-state-name", &["running"]))
        .send()
        .await
        .unwrap();
    let got: Vec<_> = running
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert_eq!(got, [ids[0].clone()]);
    let both = ec2
        .describe_instances()
        .filters(filter("instance-state-name", &["running", "pending"]))
        .filters(filter("instance-id", &[&ids[1], &ids[0]]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        both.reservations()
            .iter()
            .map(|r| r.instances().len())
            .sum::<usize>(),
        2
    );

    assert_eq!(
        code(ec2.stop_instances().instance_ids(&ids[1]).send().await),
        "IncorrectInstanceState"
    );
    let stop = ec2
        .stop_instances()
        .instance_ids(&ids[0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        stop.stopping_instances()[0].current_state().unwrap().code(),
        Some(64)
    );
    assert_eq!(
        code(
            ec2.terminate_instances()
                .instance_ids("i-0123456789abcdef0")
                .send()
                .await
        ),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(
            ec2.terminate_instances()
                .instance_ids("i-nothex")
                .send()
                .await
        ),
        "InvalidInstanceID.Malformed"
    );
    ec2.terminate_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    let after = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    assert!(after
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .all(|i| i.state().unwrap().code() == Some(48)));
}

/// EC2's instance metadata options: launched IMDSv2-only, shown by
/// DescribeInstances, changed back by ModifyInstanceMetadataOptions; and
/// the reads that tools make around a launch, GetPasswordData and
/// DescribeInstanceTypeOfferings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_options_password_data_and_type_offerings() {
    use aws_sdk_ec2::types::{
        HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
        InstanceMetadataOptionsState, InstanceMetadataTagsState, LocationType,
    };
    use corral_api_types::{Node, Resource};
    let (s, ec2, image) = start_seeded().await;
    let run = launch(&ec2, &image)
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(HttpTokensState::Required)
                .http_put_response_hop_limit(2)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_string();
    let stored: Instance = s.store.get("default", &id).await.unwrap().unwrap();
    let o = stored.spec.metadata_options;
    assert_eq!(o.http_tokens, corral_api_types::HttpTokens::Required);
    assert_eq!(o.http_put_response_hop_limit, 2);
    assert!(o.http_endpoint.is_enabled());

    let described = |ec2: aws_sdk_ec2::Client, id: String| async move {
        let out = ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        out.reservations()[0].instances()[0]
            .metadata_options()
            .unwrap()
            .clone()
    };
    let m = described(ec2.clone(), id.clone()).await;
    assert_eq!(m.state(), Some(&InstanceMetadataOptionsState::Applied));
    assert_eq!(m.http_tokens(), Some(&HttpTokensState::Required));
    assert_eq!(m.http_put_response_hop_limit(), Some(2));
    assert_eq!(
        m.http_endpoint(),
        Some(&InstanceMetadataEndpointState::Enabled)
    );
    assert_eq!(
        m.instance_metadata_tags(),
        Some(&InstanceMetadataTagsState::Disabled)
    );

    // Back to optional, tags allowed; the hop limit is kept.
    let modified = ec2
        .modify_instance_metadata_options()
        .instance_id(&id)
        .http_tokens(HttpTokensState::Optional)
        .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(modified.instance_id(), Some(id.as_str()));
    let now = modified.instance_metadata_options().unwrap();
    assert_eq!(now.state(), Some(&InstanceMetadataOptionsState::Pending));
    assert_eq!(now.http_tokens(), Some(&HttpTokensState::Optional));
    assert_eq!(now.http_put_response_hop_limit(), Some(2));
    assert_eq!(
        now.instance_metadata_tags(),
        Some(&InstanceMetadataTagsState::Enabled)
    );
    let m = described(ec2.clone(), id.clone()).await;
    assert_eq!(m.http_tokens(), Some(&HttpTokensState::Optional));
    assert_eq!(
        m.instance_metadata_tags(),
        Some(&InstanceMetadataTagsState::Enabled)
    );
    // A tag key that cannot be a metadata path is refused while tags are
    // allowed, naming it; the same call again changes nothing.
    assert_eq!(
        code(
            ec2.create_tags()
                .resources(&id)
                .tags(Tag::builder().key("has space").value("x").build())
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    let again = ec2
        .modify_instance_metadata_options()
        .instance_id(&id)
        .http_tokens(HttpTokensState::Optional)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.instance_metadata_options().unwrap().state(),
        Some(&InstanceMetadataOptionsState::Applied)
    );
    for bad in [
        ec2.modify_instance_metadata_options()
            .instance_id(&id)
            .http_put_response_hop_limit(65),
        ec2.modify_instance_metadata_options()
            .instance_id(&id)
            .http_tokens(HttpTokensState::from("sometimes")),
    ] {
        assert_eq!(code(bad.send().await), "InvalidParameterValue");
    }
    assert_eq!(
        code(
            ec2.modify_instance_metadata_options()
                .instance_id("i-0123456789abcdef0")
                .http_tokens(HttpTokensState::Required)
                .send()
                .await
        ),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(
            ec2.modify_instance_metadata_options()
                .instance_id(&id)
                .http_tokens(HttpTokensState::Required)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperation"
    );

    // A Linux guest has no password data.
    let pw = ec2
        .get_password_data()
        .instance_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(pw.instance_id(), Some(id.as_str()));
    assert!(pw.timestamp().is_some());
    assert_eq!(pw.password_data().unwrap_or_default(), "");
    assert_eq!(
        code(
            ec2.get_password_data()
                .instance_id("i-0123456789abcdef0")
                .send()
                .await
        ),
        "InvalidInstanceID.NotFound"
    );

    // Every type in every location; the location filter narrows.
    let offered = |t: LocationType, loc: Option<&str>| {
        let mut r = ec2.describe_instance_type_offerings().location_type(t);
        if let Some(l) = loc {
            r = r.filters(filter("location", &[l]));
        }
        async move {
            let out = r.send().await.unwrap();
            out.instance_type_offerings()
                .iter()
                .map(|o| {
                    (
                        o.instance_type().unwrap().as_str().to_string(),
                        o.location().unwrap().to_string(),
                        o.location_type().unwrap().as_str().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let in_region = offered(LocationType::Region, None).await;
    assert_eq!(in_region.len(), 5, "{in_region:?}");
    assert!(in_region
        .iter()
        .all(|(_, l, t)| l == "corral-1" && t == "region"));
    // The zones are the nodes' (no node: the default zone alone).
    let default_zone = offered(LocationType::AvailabilityZone, None).await;
    assert_eq!(default_zone.len(), 5, "{default_zone:?}");
    assert!(default_zone.iter().all(|(_, l, _)| l == "corral-1a"));
    for (name, zone) in [("n1", "corral-1b"), ("n2", "corral-1c")] {
        let mut node = Node::new("", name, Default::default());
        node.spec.zone = Some(zone.into());
        s.store.create(&node).await.unwrap();
    }
    let zones = offered(LocationType::AvailabilityZone, None).await;
    assert_eq!(zones.len(), 10, "{zones:?}");
    let in_1b = offered(LocationType::AvailabilityZone, Some("corral-1b")).await;
    assert_eq!(in_1b.len(), 5, "{in_1b:?}");
    assert!(in_1b
        .iter()
        .all(|(_, l, t)| l == "corral-1b" && t == "availability-zone"));
    assert!(in_1b.iter().any(|(t, _, _)| t == "m1.tiny"));
    assert!(offered(LocationType::AvailabilityZone, Some("corral-1a"))
        .await
        .is_empty());
    let by_id = offered(LocationType::AvailabilityZoneId, Some("corral-1-az2")).await;
    assert_eq!(by_id.len(), 5, "{by_id:?}");
    assert!(by_id
        .iter()
        .all(|(_, l, t)| l == "corral-1-az2" && t == "availability-zone-id"));
    // Pages of 5 add up to the whole, each offering once.
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let out = ec2
            .describe_instance_type_offerings()
            .max_results(5)
            .set_next_token(token)
            .location_type(LocationType::AvailabilityZone)
            .send()
            .await
            .unwrap();
        pages += 1;
        seen.extend(out.instance_type_offerings().iter().map(|o| {
            (
                o.instance_type().unwrap().as_str().to_string(),
                o.location().unwrap().to_string(),
            )
        }));
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 2);
    let whole: Vec<(String, String)> = zones.into_iter().map(|(t, l, _)| (t, l)).collect();
    assert_eq!(seen, whole);
    assert_eq!(
        code(
            ec2.describe_instance_type_offerings()
                .filters(filter("zone", &["corral-1b"]))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
}

/// One project's keys cannot see or touch another project's resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy() {
    let s = start().await;
    let ka = add_user(&s.store, "alice", Some("a")).await;
    let kb = add_user(&s.store, "bob", Some("b")).await;
    let image_a = seed_project(&s.store, "a").await;
    seed_project(&s.store, "b").await;
    let (a, b) = (client(&s, &ka), client(&s, &kb));
    let inst = run_one(&a, &image_a).await;
    let sg = create_group(&a, "secret", "a's", None).await;
    a.import_key_pair()
        .key_name("a-key")
        .public_key_material(aws_sdk_ec2::primitives::Blob::new(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb a",
        ))
        .send()
        .await
        .unwrap();
    let vol = create_volume(&a).await;

    assert!(b
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .is_empty());
    // Only b's own default group: none of a's.
    let b_groups = b.describe_security_groups().send().await.unwrap();
    let names: Vec<_> = b_groups
        .security_groups()
        .iter()
        .map(|g| g.group_name().unwrap_or_default())
        .collect();
    assert_eq!(names, ["default"]);
    assert!(b
        .describe_key_pairs()
        .send()
        .await
        .unwrap()
        .key_pairs()
        .is_empty());
    assert!(b
        .describe_volumes()
        .send()
        .await
        .unwrap()
        .volumes()
        .is_empty());
    assert!(b.describe_tags().send().await.unwrap().tags().is_empty());
    assert_eq!(
        code(b.describe_images().image_ids(&image_a).send().await),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        code(launch(&b, &image_a).send().await),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        code(b.describe_instances().instance_ids(&inst).send().await),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(b.terminate_instances().instance_ids(&inst).send().await),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(b.stop_instances().instance_ids(&inst).send().await),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(b.delete_security_group().group_id(&sg).send().await),
        "InvalidGroup.NotFound"
    );
    assert_eq!(
        code(b.delete_volume().volume_id(&vol).send().await),
        "InvalidVolume.NotFound"
    );
    assert_eq!(
        code(
            b.create_tags()
                .resources(&inst)
                .tags(Tag::builder().key("x").value("y").build())
                .send()
                .await
        ),
        "InvalidInstanceID.NotFound"
    );
    assert_eq!(
        code(
            b.attach_volume()
                .volume_id(&vol)
                .instance_id(&inst)
                .device("/dev/vdb")
                .send()
                .await
        ),
        "InvalidVolume.NotFound"
    );
    // Deleting "a-key" from b succeeds as in EC2, but a's key stays.
    b.delete_key_pair().key_name("a-key").send().await.unwrap();
    assert_eq!(
        a.describe_key_pairs()
            .send()
            .await
            .unwrap()
            .key_pairs()
            .len(),
        1
    );
    assert_eq!(
        a.describe_instances()
            .send()
            .await
            .unwrap()
            .reservations()
            .len(),
        1
    );
    // A wrong secret is AuthFailure.
    let bad = client(
        &s,
        &Keys {
            id: ka.id.clone(),
            secret: "nope".into(),
        },
    );
    assert_eq!(code(bad.describe_instances().send().await), "AuthFailure");
}
