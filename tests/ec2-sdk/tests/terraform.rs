//! The terraform aws provider's call sequences for aws_instance and
//! aws_security_group, replayed with the AWS SDK for Rust.

use aws_sdk_ec2::types::{
    AttributeBooleanValue, InstanceAttributeName, ResourceType, Tag, TagSpecification,
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
