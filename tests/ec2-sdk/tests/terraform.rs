//! The terraform aws provider's call sequences for aws_instance and
//! aws_security_group, replayed with the AWS SDK for Rust.

use aws_sdk_ec2::types::{
    AttributeBooleanValue, InstanceAttributeName, IpPermission, Ipv6Range, ResourceType, Tag,
    TagSpecification,
};
mod common;

use common::{
    code, create_group, default_vpc, filter, launch, permission, set_phase, start_seeded,
};
use corral_api_types::InstancePhase;

/// terraform-provider-aws's aws_instance: create, read, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_aws_instance_sequence() {
    let (s, ec2, image) = start_seeded().await;
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("Name").value("tf-web").build())
        .build();
    let run = launch(&ec2, &image)
        .instance_type("m1.small".into())
        .client_token("terraform-20240101000000000000000001")
        .tag_specifications(tags)
        .disable_api_termination(true)
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_string();
    // Poll until running: the test plays the controllers.
    let state = |r: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput| {
        r.reservations()[0].instances()[0]
            .state()
            .unwrap()
            .name()
            .unwrap()
            .as_str()
            .to_string()
    };
    let describe = || ec2.describe_instances().instance_ids(&id).send();
    assert_eq!(state(&describe().await.unwrap()), "pending");
    set_phase(&s, "default", &id, InstancePhase::Running).await;
    let d = describe().await.unwrap();
    assert_eq!(state(&d), "running");
    let inst = &d.reservations()[0].instances()[0];
    assert_eq!(inst.tags()[0].value(), Some("tf-web"));
    assert!(
        inst.subnet_id().unwrap().starts_with("subnet-")
            && inst.vpc_id().unwrap().starts_with("vpc-")
    );
    // Read.
    let t = ec2
        .describe_instance_types()
        .instance_types("m1.small".into())
        .send()
        .await
        .unwrap();
    let info = &t.instance_types()[0];
    assert_eq!(info.v_cpu_info().unwrap().default_v_cpus(), Some(1));
    assert_eq!(info.memory_info().unwrap().size_in_mib(), Some(2048));
    assert!(info
        .network_info()
        .unwrap()
        .maximum_network_interfaces()
        .is_some());
    let tg = ec2
        .describe_tags()
        .filters(filter("resource-id", &[&id]))
        .send()
        .await
        .unwrap();
    assert_eq!(tg.tags().len(), 1);
    let vpcs = ec2
        .describe_vpcs()
        .vpc_ids(inst.vpc_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs()[0].is_default(), Some(true));
    for attr in [
        InstanceAttributeName::DisableApiTermination,
        InstanceAttributeName::InstanceInitiatedShutdownBehavior,
        InstanceAttributeName::DisableApiStop,
        InstanceAttributeName::UserData,
    ] {
        let a = ec2
            .describe_instance_attribute()
            .instance_id(&id)
            .attribute(attr.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(a.instance_id(), Some(id.as_str()));
        if attr == InstanceAttributeName::DisableApiTermination {
            assert_eq!(a.disable_api_termination().unwrap().value(), Some(true));
        }
        if attr == InstanceAttributeName::InstanceInitiatedShutdownBehavior {
            assert_eq!(
                a.instance_initiated_shutdown_behavior().unwrap().value(),
                Some("stop")
            );
        }
    }
    let vols = ec2
        .describe_volumes()
        .filters(filter("attachment.instance-id", &[&id]))
        .send()
        .await
        .unwrap();
    assert!(vols.volumes().is_empty());
    // Delete.
    assert_eq!(
        code(ec2.terminate_instances().instance_ids(&id).send().await),
        "OperationNotPermitted"
    );
    ec2.modify_instance_attribute()
        .instance_id(&id)
        .disable_api_termination(AttributeBooleanValue::builder().value(false).build())
        .send()
        .await
        .unwrap();
    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(state(&describe().await.unwrap()), "terminated");
}

/// terraform-provider-aws's aws_security_group: create, replace the default
/// egress rule, delete and wait for InvalidGroup.NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_aws_security_group_sequence() {
    let (_s, ec2, _) = start_seeded().await;
    let vpc = default_vpc(&ec2).await;
    let id = create_group(&ec2, "tf-sg", "Managed by Terraform", Some(&vpc)).await;
    let describe = || ec2.describe_security_groups().group_ids(&id).send();
    let g = describe().await.unwrap();
    assert_eq!(g.security_groups()[0].vpc_id(), Some(vpc.as_str()));
    assert_eq!(g.security_groups()[0].ip_permissions_egress().len(), 1);
    let all_out = permission("-1", 0, 0, "0.0.0.0/0");
    ec2.revoke_security_group_egress()
        .group_id(&id)
        .ip_permissions(all_out)
        .send()
        .await
        .unwrap();
    let ssh = permission("tcp", 22, 22, "10.0.0.0/8");
    ec2.authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(ssh)
        .send()
        .await
        .unwrap();
    let https = permission("tcp", 443, 443, "0.0.0.0/0");
    ec2.authorize_security_group_egress()
        .group_id(&id)
        .ip_permissions(https)
        .send()
        .await
        .unwrap();
    let g = describe().await.unwrap();
    let g = &g.security_groups()[0];
    assert_eq!(g.ip_permissions()[0].from_port(), Some(22));
    assert_eq!(g.ip_permissions_egress()[0].to_port(), Some(443));
    let enis = ec2
        .describe_network_interfaces()
        .filters(filter("group-id", &[&id]))
        .send()
        .await
        .unwrap();
    assert!(enis.network_interfaces().is_empty());
    assert_eq!(
        code(
            ec2.delete_security_group()
                .group_id(&id)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperation"
    );
    ec2.delete_security_group()
        .group_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(code(describe().await), "InvalidGroup.NotFound");
}

/// One rule: `protocol` ports `from`..=`to` for the IPv6 block `cidr`.
fn permission_v6(
    protocol: &str,
    from: i32,
    to: i32,
    cidr: &str,
    note: Option<&str>,
) -> IpPermission {
    IpPermission::builder()
        .ip_protocol(protocol)
        .from_port(from)
        .to_port(to)
        .ipv6_ranges(
            Ipv6Range::builder()
                .cidr_ipv6(cidr)
                .set_description(note.map(str::to_string))
                .build(),
        )
        .build()
}

/// aws_security_group with `ipv6_cidr_blocks` (issue 20): the default
/// egress replaced by `::/0`, ssh from an IPv6 block, each stored and
/// described exactly as sent, revoked, and a second revoke refused as
/// AWS refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_aws_security_group_with_ipv6_rules() {
    let (s, ec2, _) = start_seeded().await;
    let vpc = default_vpc(&ec2).await;
    let id = create_group(&ec2, "tf-sg6", "Managed by Terraform", Some(&vpc)).await;
    let describe = || ec2.describe_security_groups().group_ids(&id).send();

    // A new group's egress is IPv4 only (Corral's VPCs carry no IPv6
    // block); terraform revokes it and writes its own.
    let g = describe().await.unwrap();
    let egress = g.security_groups()[0].ip_permissions_egress();
    assert_eq!(egress.len(), 1);
    assert!(egress[0].ipv6_ranges().is_empty());
    ec2.revoke_security_group_egress()
        .group_id(&id)
        .ip_permissions(permission("-1", 0, 0, "0.0.0.0/0"))
        .send()
        .await
        .unwrap();
    let all_out = permission_v6("-1", 0, 0, "::/0", None);
    ec2.authorize_security_group_egress()
        .group_id(&id)
        .ip_permissions(all_out.clone())
        .send()
        .await
        .unwrap();
    // Written as sent (not canonicalised): what terraform reads back.
    let ssh = permission_v6(
        "tcp",
        22,
        22,
        "2001:DB8:0:0::/64",
        Some("ssh from the office"),
    );
    let added = ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(ssh.clone())
        .send()
        .await
        .unwrap();
    let rule = &added.security_group_rules()[0];
    assert_eq!(rule.cidr_ipv6(), Some("2001:DB8:0:0::/64"));
    assert_eq!(rule.cidr_ipv4(), None);
    assert_eq!(rule.description(), Some("ssh from the office"));
    // The same rule again (however spelled) is a duplicate, as for IPv4.
    assert_eq!(
        code(
            ec2.authorize_security_group_ingress()
                .group_id(&id)
                .ip_permissions(permission_v6("tcp", 22, 22, "2001:db8::/64", None))
                .send()
                .await
        ),
        "InvalidPermission.Duplicate"
    );
    // Host bits set, or an IPv4 block among the IPv6 ones: refused,
    // naming the block.
    for (bad, why) in [("2001:db8::1/64", "host bits"), ("10.0.0.0/8", "IPv6")] {
        let err = ec2
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(permission_v6("tcp", 80, 80, bad, None))
            .send()
            .await
            .unwrap_err();
        let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
        assert_eq!(meta.code(), Some("InvalidParameterValue"), "{meta:?}");
        assert!(meta.message().unwrap_or_default().contains(why), "{meta:?}");
    }

    let g = describe().await.unwrap();
    let g = &g.security_groups()[0];
    let ingress = g.ip_permissions();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(ingress[0].ip_protocol(), Some("tcp"));
    assert_eq!(ingress[0].from_port(), Some(22));
    assert!(ingress[0].ip_ranges().is_empty());
    let v6 = &ingress[0].ipv6_ranges()[0];
    assert_eq!(v6.cidr_ipv6(), Some("2001:DB8:0:0::/64"));
    assert_eq!(v6.description(), Some("ssh from the office"));
    let egress = g.ip_permissions_egress();
    assert_eq!(egress.len(), 1, "{egress:?}");
    assert_eq!(egress[0].ip_protocol(), Some("-1"));
    assert!(egress[0].ip_ranges().is_empty());
    assert_eq!(egress[0].ipv6_ranges()[0].cidr_ipv6(), Some("::/0"));

    // The filters on IPv6 blocks, each direction its own.
    for (name, value, found) in [
        ("ip-permission.ipv6-cidr", "2001:DB8:0:0::/64", true),
        ("egress.ip-permission.ipv6-cidr", "::/0", true),
        ("ip-permission.ipv6-cidr", "::/0", false),
        ("ip-permission.cidr", "2001:DB8:0:0::/64", false),
    ] {
        let got = ec2
            .describe_security_groups()
            .filters(filter(name, &[value]))
            .send()
            .await
            .unwrap();
        let ids: Vec<_> = got
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(ids.contains(&id.as_str()), found, "{name}={value}: {ids:?}");
    }

    // The stored group says the same, in Corral's own terms.
    let stored: corral_api_types::SecurityGroup = s
        .store
        .get("default", "tf-sg6")
        .await
        .unwrap()
        .expect("the group is stored by its name");
    assert_eq!(stored.spec.egress.len(), 1);
    assert_eq!(stored.spec.egress[0].cidr.as_deref(), Some("::/0"));
    assert_eq!(
        stored.spec.ingress[0].cidr.as_deref(),
        Some("2001:DB8:0:0::/64")
    );

    // Revoked once; a second time there is nothing to revoke.
    ec2.revoke_security_group_egress()
        .group_id(&id)
        .ip_permissions(all_out.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            ec2.revoke_security_group_egress()
                .group_id(&id)
                .ip_permissions(all_out)
                .send()
                .await
        ),
        "InvalidPermission.NotFound"
    );
    // A differently written block names the same rule.
    ec2.revoke_security_group_ingress()
        .group_id(&id)
        .ip_permissions(permission_v6("tcp", 22, 22, "2001:db8::/64", None))
        .send()
        .await
        .unwrap();
    let g = describe().await.unwrap();
    let g = &g.security_groups()[0];
    assert!(
        g.ip_permissions().is_empty() && g.ip_permissions_egress().is_empty(),
        "{g:?}"
    );
    ec2.delete_security_group()
        .group_id(&id)
        .send()
        .await
        .unwrap();
}
