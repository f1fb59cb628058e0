//! What every EC2 user assumes exists, through aws-sdk-ec2: the default
//! VPC (terraform's `data "aws_vpc" { default = true }`), its `default`
//! security group (euca-authorize default …), a default group per VPC,
//! group names unique per VPC, the IPv6 egress revoke terraform makes on
//! every group (there is no IPv6 default egress, as in an AWS VPC without
//! an IPv6 block), and the VPC and PrivateIpAddress checks AWS does.

mod common;

use aws_sdk_ec2::types::{IpPermission, Ipv6Range};
use common::{code, create_group, create_vpc, filter, launch, objects, permission, start_seeded};
use corral_api_types::{Instance, SecurityGroup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_vpc_and_group_exist_and_behave_as_on_aws() {
    let (s, ec2, image) = start_seeded().await;

    // A fresh project: the default VPC is there before anything ran.
    let vpcs = ec2
        .describe_vpcs()
        .filters(filter("isDefault", &["true"]))
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs().len(), 1, "{vpcs:?}");
    let default_vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    assert_eq!(vpcs.vpcs()[0].is_default(), Some(true));

    // …and so is its group: members reach each other, all may go out.
    let groups = ec2
        .describe_security_groups()
        .group_names("default")
        .send()
        .await
        .unwrap();
    let g = &groups.security_groups()[0];
    let default_id = g.group_id().unwrap().to_string();
    assert_eq!(g.vpc_id(), Some(default_vpc.as_str()));
    let ingress = &g.ip_permissions()[0];
    assert_eq!(ingress.ip_protocol(), Some("-1"));
    assert_eq!(
        ingress.user_id_group_pairs()[0].group_id(),
        Some(default_id.as_str())
    );
    let egress = &g.ip_permissions_egress()[0];
    assert_eq!(egress.ip_ranges()[0].cidr_ip(), Some("0.0.0.0/0"));

    // The classic first step of every euca2ools tutorial.
    ec2.authorize_security_group_ingress()
        .group_name("default")
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .cidr_ip("0.0.0.0/0")
        .send()
        .await
        .unwrap();
    let stored: SecurityGroup = s.store.get("default", "default").await.unwrap().unwrap();
    assert!(stored
        .spec
        .ingress
        .iter()
        .any(|r| r.from_port == Some(22) && r.cidr.as_deref() == Some("0.0.0.0/0")));

    // Not deletable; its name is taken.
    assert_eq!(
        code(
            ec2.delete_security_group()
                .group_id(&default_id)
                .send()
                .await
        ),
        "CannotDelete"
    );
    assert_eq!(
        code(
            ec2.create_security_group()
                .group_name("default")
                .description("mine")
                .send()
                .await
        ),
        "InvalidGroup.Duplicate"
    );

    // RunInstances naming no group gets the default one.
    let run = launch(&ec2, &image).send().await.unwrap();
    let i = &run.instances()[0];
    assert_eq!(i.security_groups()[0].group_id(), Some(default_id.as_str()));
    let stored = objects::<Instance>(&s.store, "default").await.remove(0);
    assert_eq!(stored.spec.nics[0].security_groups, ["default"]);

    // PrivateIpAddress outside the subnet is refused, not left waiting.
    assert_eq!(
        code(
            launch(&ec2, &image)
                .private_ip_address("10.9.9.9")
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(objects::<Instance>(&s.store, "default").await.len(), 1);

    // The default egress is IPv4 only, as in an AWS VPC without an IPv6
    // block: revoking `::/0` finds nothing, and AWS says so with this code.
    assert!(egress.ipv6_ranges().is_empty(), "{egress:?}");
    let v6 = IpPermission::builder()
        .ip_protocol("-1")
        .from_port(0)
        .to_port(0)
        .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
        .build();
    assert_eq!(
        code(
            ec2.revoke_security_group_egress()
                .group_id(&default_id)
                .ip_permissions(v6.clone())
                .send()
                .await
        ),
        "InvalidPermission.NotFound"
    );
    // Once authorized, it is there to revoke.
    ec2.authorize_security_group_egress()
        .group_id(&default_id)
        .ip_permissions(v6.clone())
        .send()
        .await
        .unwrap();
    ec2.revoke_security_group_egress()
        .group_id(&default_id)
        .ip_permissions(v6)
        .send()
        .await
        .unwrap();
    // The IPv4 default egress revoke works.
    ec2.revoke_security_group_egress()
        .group_id(&default_id)
        .ip_permissions(permission("-1", 0, 0, "0.0.0.0/0"))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vpc_has_its_default_group_and_names_are_per_vpc() {
    let (_s, ec2, _) = start_seeded().await;
    assert_eq!(
        code(ec2.create_vpc().cidr_block("10.0.0.0/8").send().await),
        "InvalidVpc.Range"
    );
    assert_eq!(
        code(ec2.create_vpc().cidr_block("10.0.0.0/29").send().await),
        "InvalidVpc.Range"
    );
    let vpc = create_vpc(&ec2, "10.1.0.0/16").await;
    let in_vpc = ec2
        .describe_security_groups()
        .filters(filter("vpc-id", &[&vpc]))
        .send()
        .await
        .unwrap();
    let names: Vec<_> = in_vpc
        .security_groups()
        .iter()
        .map(|g| g.group_name().unwrap())
        .collect();
    assert_eq!(names, ["default"]);
    let vpc_default = in_vpc.security_groups()[0].group_id().unwrap().to_string();

    // `web` in the default VPC and in this one: two groups.
    let web_default = create_group(&ec2, "web", "d", None).await;
    let web_vpc = create_group(&ec2, "web", "d", Some(&vpc)).await;
    assert_ne!(web_default, web_vpc);
    assert_eq!(
        code(
            ec2.create_security_group()
                .group_name("web")
                .description("d")
                .vpc_id(&vpc)
                .send()
                .await
        ),
        "InvalidGroup.Duplicate"
    );
    // A name means the default VPC's group.
    let by_name = ec2
        .describe_security_groups()
        .group_names("web")
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.security_groups().len(), 1);
    assert_eq!(
        by_name.security_groups()[0].group_id(),
        Some(web_default.as_str())
    );

    // The VPC goes only once its own groups are gone; its default group
    // goes with it.
    assert_eq!(
        code(ec2.delete_vpc().vpc_id(&vpc).send().await),
        "DependencyViolation"
    );
    ec2.delete_security_group()
        .group_id(&web_vpc)
        .send()
        .await
        .unwrap();
    ec2.delete_vpc().vpc_id(&vpc).send().await.unwrap();
    assert_eq!(
        code(
            ec2.describe_security_groups()
                .group_ids(&vpc_default)
                .send()
                .await
        ),
        "InvalidGroup.NotFound"
    );
}

/// RunInstances refuses what it would not do, naming it, and launches
/// nothing; what terraform sends on every plain aws_instance passes, and
/// its NetworkInterface.1 form of a subnet lands in that subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_instances_refuses_what_it_would_drop() {
    use aws_sdk_ec2::types::{
        HibernationOptionsRequest, IamInstanceProfileSpecification, InstanceMetadataOptionsRequest,
        InstanceMetadataProtocolState, InstanceNetworkInterfaceSpecification,
        LaunchTemplateSpecification, Placement, RunInstancesMonitoringEnabled,
    };
    let (s, ec2, image) = start_seeded().await;
    let refused = [
        // The metadata service is reached over IPv4 only.
        launch(&ec2, &image).metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_protocol_ipv6(InstanceMetadataProtocolState::Enabled)
                .build(),
        ),
        launch(&ec2, &image).iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .name("web")
                .build(),
        ),
        launch(&ec2, &image).launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id("lt-0123456789abcdef0")
                .build(),
        ),
        launch(&ec2, &image).network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .network_interface_id("eni-0123456789abcdef0")
                .build(),
        ),
    ];
    for r in refused {
        let err = r.send().await.unwrap_err();
        let meta = aws_sdk_ec2::error::ProvideErrorMetadata::meta(&err);
        assert_eq!(meta.code(), Some("UnsupportedOperation"), "{meta:?}");
    }
    assert!(objects::<Instance>(&s.store, "default").await.is_empty());

    // terraform's defaults ask for nothing different.
    launch(&ec2, &image)
        .ebs_optimized(false)
        .monitoring(
            RunInstancesMonitoringEnabled::builder()
                .enabled(false)
                .build(),
        )
        .hibernation_options(
            HibernationOptionsRequest::builder()
                .configured(false)
                .build(),
        )
        .placement(Placement::builder().availability_zone("").build())
        .disable_api_termination(false)
        .send()
        .await
        .unwrap();

    // The subnet and groups named in NetworkInterface.1, as terraform does.
    let vpc = create_vpc(&ec2, "10.7.0.0/16").await;
    let subnet = common::create_subnet(&ec2, &vpc, "10.7.0.0/24").await;
    let sg = create_group(&ec2, "in-vpc", "d", Some(&vpc)).await;
    let run = launch(&ec2, &image)
        .network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(subnet.subnet_id().unwrap())
                .groups(&sg)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let i = &run.instances()[0];
    assert_eq!(i.subnet_id(), subnet.subnet_id());
    assert_eq!(i.security_groups()[0].group_id(), Some(sg.as_str()));
}
