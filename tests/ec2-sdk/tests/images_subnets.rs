//! RegisterImage (disk images and the kernel + ramdisk + machine trio),
//! Describe/ModifyImageAttribute (launch permissions, description),
//! CreateSubnet and DeleteSubnet on Networks (a subnet's tags are its own),
//! and the default VPC made on demand by
//! RunInstances — all through aws-sdk-ec2.

mod common;

use aws_sdk_ec2::types::{
    ArchitectureValues, AttributeValue, ImageAttributeName, LaunchPermission,
    LaunchPermissionModifications, OperationType, PermissionGroup, ResourceType, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;
use common::{
    client, code, create_image, create_subnet, create_vpc, default_vpc, filter, launch, objects,
    start_seeded,
};
use corral_api_types::{Image, Network};
use corral_ec2_api::testing::{add_user, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_images_and_launch_permissions() {
    let (s, ec2, _) = start_seeded().await;
    let reg = |name: &str, location: &str| ec2.register_image().name(name).image_location(location);

    assert_eq!(
        code(
            reg("dry", "https://example.com/disk.qcow2")
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperation"
    );
    // The trio, as uec-publish-tarball registers it.
    let aki = reg(
        "trio-kernel",
        "https://example.com/trio/vmlinuz-6.1-virtual",
    )
    .send()
    .await
    .unwrap()
    .image_id()
    .unwrap()
    .to_string();
    let ari = reg("trio-ramdisk", "https://example.com/trio/initrd.img-6.1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    assert!(
        aki.starts_with("aki-") && ari.starts_with("ari-"),
        "{aki} {ari}"
    );
    let ami = reg("trio", "https://example.com/trio/disk.img")
        .kernel_id(&aki)
        .ramdisk_id(&ari)
        .architecture(ArchitectureValues::X8664)
        .description("the machine of the trio")
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    assert!(ami.starts_with("ami-"));
    let d = ec2.describe_images().image_ids(&ami).send().await.unwrap();
    let img = &d.images()[0];
    assert_eq!(img.kernel_id(), Some(aki.as_str()));
    assert_eq!(img.ramdisk_id(), Some(ari.as_str()));
    assert_eq!(img.name(), Some("trio"));
    assert_eq!(img.description(), Some("the machine of the trio"));
    // The root device name given is the one shown (the guest's disk is
    // vda, as a Nitro guest's /dev/sda1 is nvme0n1), and filters.
    assert_eq!(img.root_device_name(), Some("/dev/sda1"));
    let by_root = ec2
        .describe_images()
        .filters(filter("root-device-name", &["/dev/sda1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(by_root.images().len(), 1);
    assert_eq!(
        code(
            reg("bad-root", "https://example.com/x.img")
                .root_device_name("/etc/passwd")
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        img.image_location(),
        Some("https://example.com/trio/disk.img")
    );
    let images_where = |f| ec2.describe_images().filters(f).send();
    let kernels = images_where(filter("image-type", &["kernel"]))
        .await
        .unwrap();
    assert_eq!(kernels.images().len(), 1);
    // Stored as a Corral Image naming its kernel and ramdisk.
    let stored: Image = s.store.get("default", "trio").await.unwrap().unwrap();
    assert_eq!(stored.spec.kernel.as_deref(), Some("trio-kernel"));
    assert_eq!(stored.spec.ramdisk.as_deref(), Some("trio-ramdisk"));

    // Registering an existing image again by its id: same source.
    let again = reg("trio-copy", &ami)
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let copy: Image = s.store.get("default", "trio-copy").await.unwrap().unwrap();
    assert_eq!(copy.spec.source, stored.spec.source);
    assert_ne!(again, ami);

    // Errors.
    assert_eq!(
        code(reg("trio", "https://example.com/x.img").send().await),
        "InvalidAMIName.Duplicate"
    );
    assert_eq!(
        code(ec2.register_image().name("nowhere").send().await),
        "MissingParameter"
    );
    assert_eq!(
        code(reg("ftp", "ftp://example.com/x.img").send().await),
        "InvalidParameterValue"
    );
    // The server's host is not the tenant's: no path outside the import
    // directories (this server has none), no URL into the host or its
    // networks, refused even on a DryRun.
    for location in [
        "/etc/shadow",
        "/var/lib/corral/import/../../../etc/shadow",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8774/v1/users",
        "http://[::1]/x.img",
        "http://10.1.2.3/x.img",
    ] {
        use aws_sdk_ec2::error::ProvideErrorMetadata;
        let err = reg("host", location)
            .dry_run(true)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("InvalidParameterValue"), "{location}");
        assert!(
            err.message().unwrap_or("").starts_with("ImageLocation: "),
            "{location}: {:?}",
            err.message()
        );
    }
    assert_eq!(
        code(
            reg("bad-kernel-1", "https://example.com/d.img")
                .kernel_id(&ami)
                .send()
                .await
        ),
        "InvalidAMIID.Malformed"
    );
    assert_eq!(
        code(
            reg("bad-kernel-2", "https://example.com/d.img")
                .kernel_id("aki-00000000000000000")
                .send()
                .await
        ),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        code(
            reg("bad-arch", "https://example.com/d.img")
                .architecture(ArchitectureValues::from("sparc"))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );

    // Attributes.
    let attr = |a: ImageAttributeName| {
        ec2.describe_image_attribute()
            .image_id(&ami)
            .attribute(a)
            .send()
    };
    let a = attr(ImageAttributeName::Kernel).await.unwrap();
    assert_eq!(a.kernel_id().unwrap().value(), Some(aki.as_str()));
    let a = attr(ImageAttributeName::Ramdisk).await.unwrap();
    assert_eq!(a.ramdisk_id().unwrap().value(), Some(ari.as_str()));
    let a = attr(ImageAttributeName::Description).await.unwrap();
    assert_eq!(
        a.description().unwrap().value(),
        Some("the machine of the trio")
    );
    let a = attr(ImageAttributeName::LaunchPermission).await.unwrap();
    assert!(a.launch_permissions().is_empty());
    assert_eq!(
        code(attr(ImageAttributeName::from("colour")).await),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            ec2.describe_image_attribute()
                .image_id("ami-00000000000000000")
                .attribute(ImageAttributeName::Description)
                .send()
                .await
        ),
        "InvalidAMIID.NotFound"
    );

    // Launch permissions: the group `all`, then one account.
    let bob_keys = add_user(&s.store, "bob", Some("other")).await;
    let bob = client(&s, &bob_keys);
    let bob_sees = || async {
        bob.describe_images()
            .filters(filter("image-id", &[&ami]))
            .send()
            .await
            .unwrap()
            .images()
            .len()
    };
    assert_eq!(bob_sees().await, 0);
    let perm = |group: bool, user: Option<&str>| {
        let mut p = LaunchPermission::builder();
        if group {
            p = p.group(PermissionGroup::All);
        }
        if let Some(u) = user {
            p = p.user_id(u);
        }
        p.build()
    };
    let add = |p| LaunchPermissionModifications::builder().add(p).build();
    let remove = |p| LaunchPermissionModifications::builder().remove(p).build();
    let permit = |by: &Client, m| {
        by.modify_image_attribute()
            .image_id(&ami)
            .launch_permission(m)
    };
    permit(&ec2, add(perm(true, None))).send().await.unwrap();
    let a = attr(ImageAttributeName::LaunchPermission).await.unwrap();
    assert_eq!(
        a.launch_permissions()[0].group(),
        Some(&PermissionGroup::All)
    );
    assert_eq!(bob_sees().await, 1);
    let public = images_where(filter("is-public", &["true"])).await.unwrap();
    assert_eq!(public.images().len(), 1);
    // The flat form takes it back.
    ec2.modify_image_attribute()
        .image_id(&ami)
        .attribute("launchPermission")
        .operation_type(OperationType::Remove)
        .user_groups("all")
        .send()
        .await
        .unwrap();
    assert_eq!(bob_sees().await, 0);
    let bob_account = corral_api_types::ec2::account_id("other");
    permit(&ec2, add(perm(false, Some(&bob_account))))
        .send()
        .await
        .unwrap();
    assert_eq!(bob_sees().await, 1, "shared with bob's account");
    let a = attr(ImageAttributeName::LaunchPermission).await.unwrap();
    assert_eq!(
        a.launch_permissions()[0].user_id(),
        Some(bob_account.as_str())
    );
    // Bob cannot change it: not his.
    assert_eq!(
        code(permit(&bob, add(perm(true, None))).send().await),
        "InvalidAMIID.NotFound"
    );
    permit(&ec2, remove(perm(false, Some(&bob_account))))
        .send()
        .await
        .unwrap();
    assert_eq!(bob_sees().await, 0);
    assert_eq!(
        code(permit(&ec2, add(perm(false, Some("12345")))).send().await),
        "InvalidUserID.Malformed"
    );
    assert_eq!(
        code(ec2.modify_image_attribute().image_id(&ami).send().await),
        "MissingParameter"
    );
    // Description.
    ec2.modify_image_attribute()
        .image_id(&ami)
        .description(AttributeValue::builder().value("renamed").build())
        .send()
        .await
        .unwrap();
    let a = attr(ImageAttributeName::Description).await.unwrap();
    assert_eq!(a.description().unwrap().value(), Some("renamed"));
    assert_eq!(
        code(
            ec2.modify_image_attribute()
                .image_id(&ami)
                .description(AttributeValue::builder().value("x").build())
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_subnet_maps_onto_networks() {
    let (_s, ec2, _) = start_seeded().await;
    let vpc = create_vpc(&ec2, "10.1.0.0/16").await;
    let subnets_of = |vpc: String| {
        let ec2 = ec2.clone();
        async move {
            ec2.describe_subnets()
                .filters(filter("vpc-id", &[&vpc]))
                .send()
                .await
                .unwrap()
                .subnets()
                .to_vec()
        }
    };
    assert!(subnets_of(vpc.clone()).await.is_empty(), "no subnet yet");
    let sub = |cidr: &str| ec2.create_subnet().vpc_id(&vpc).cidr_block(cidr);
    assert_eq!(code(sub("10.2.0.0/24").send().await), "InvalidSubnet.Range");
    assert_eq!(
        code(sub("10.1.0.0/99").send().await),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(sub("10.1.1.0/24").dry_run(true).send().await),
        "DryRunOperation"
    );
    let subnet = create_subnet(&ec2, &vpc, "10.1.1.0/24").await;
    assert_eq!(subnet.vpc_id(), Some(vpc.as_str()));
    assert_eq!(subnet.cidr_block(), Some("10.1.1.0/24"));
    let subnet_id = subnet.subnet_id().unwrap().to_string();
    assert!(subnet_id.starts_with("subnet-"));
    let listed = subnets_of(vpc.clone()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].subnet_id(), Some(subnet_id.as_str()));
    // The VPC keeps its id and its own CIDR.
    let v = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
    assert_eq!(v.vpcs()[0].cidr_block(), Some("10.1.0.0/16"));
    // One subnet per VPC.
    assert_eq!(
        code(sub("10.1.2.0/24").send().await),
        "InvalidSubnet.Conflict"
    );
    assert_eq!(
        code(
            ec2.create_subnet()
                .vpc_id("vpc-00000000000000000")
                .cidr_block("10.9.0.0/24")
                .send()
                .await
        ),
        "InvalidVpcID.NotFound"
    );
    // The subnet takes instances.
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let run = launch(&ec2, &image)
        .subnet_id(&subnet_id)
        .send()
        .await
        .unwrap();
    assert_eq!(run.instances()[0].subnet_id(), Some(subnet_id.as_str()));
    // A subnet with an instance in it stays.
    assert_eq!(
        code(ec2.delete_subnet().subnet_id(&subnet_id).send().await),
        "DependencyViolation"
    );
    assert_eq!(subnets_of(vpc.clone()).await.len(), 1);

    // A subnet with the VPC's whole CIDR.
    let vpc2 = create_vpc(&ec2, "10.3.0.0/24").await;
    let made = create_subnet(&ec2, &vpc2, "10.3.0.0/24").await;
    assert_eq!(made.cidr_block(), Some("10.3.0.0/24"));
    // The default VPC (and any manifest-made Network) has its subnet.
    let default_vpc = default_vpc(&ec2).await;
    assert_eq!(
        code(
            ec2.create_subnet()
                .vpc_id(&default_vpc)
                .cidr_block("10.0.0.0/24")
                .send()
                .await
        ),
        "InvalidSubnet.Conflict"
    );
}

fn name_tag(rt: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

fn name_of(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
}

/// terraform's order: the VPC tagged at CreateVpc, its subnet tagged at
/// CreateSubnet and later by CreateTags; each keeps its own tags. Then
/// DeleteSubnet leaves the VPC with its CIDR and no subnet (a new one can
/// be made), and DeleteVpc removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_tags_are_its_own_and_delete_subnet_gives_the_vpc_back() {
    let (_s, ec2, _) = start_seeded().await;
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.20.0.0/16")
        .tag_specifications(name_tag(ResourceType::Vpc, "the-vpc"))
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.20.1.0/24")
        .tag_specifications(name_tag(ResourceType::Subnet, "the-subnet"))
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .clone();
    assert_eq!(name_of(subnet.tags()), Some("the-subnet"));
    let subnet_id = subnet.subnet_id().unwrap().to_string();
    let vpc_name = || async {
        let v = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
        name_of(v.vpcs()[0].tags()).map(str::to_string)
    };
    let subnet_tags = || async {
        let s = ec2
            .describe_subnets()
            .subnet_ids(&subnet_id)
            .send()
            .await
            .unwrap();
        s.subnets()[0].tags().to_vec()
    };
    assert_eq!(vpc_name().await.as_deref(), Some("the-vpc"));
    assert_eq!(name_of(&subnet_tags().await), Some("the-subnet"));
    ec2.create_tags()
        .resources(&subnet_id)
        .tags(Tag::builder().key("tier").value("web").build())
        .send()
        .await
        .unwrap();
    assert_eq!(subnet_tags().await.len(), 2);
    assert_eq!(vpc_name().await.as_deref(), Some("the-vpc"));
    let by_tag = ec2
        .describe_subnets()
        .filters(filter("tag:tier", &["web"]))
        .send()
        .await
        .unwrap();
    assert_eq!(by_tag.subnets().len(), 1);
    let described = ec2
        .describe_tags()
        .filters(filter("resource-id", &[&vpc, &subnet_id]))
        .send()
        .await
        .unwrap();
    let mut rows: Vec<(String, String, String)> = described
        .tags()
        .iter()
        .map(|t| {
            (
                t.resource_id().unwrap_or_default().to_string(),
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rows.sort();
    let mut want = vec![
        (vpc.clone(), "Name".to_string(), "the-vpc".to_string()),
        (subnet_id.clone(), "Name".into(), "the-subnet".into()),
        (subnet_id.clone(), "tier".into(), "web".into()),
    ];
    want.sort();
    assert_eq!(rows, want);
    ec2.delete_tags()
        .resources(&subnet_id)
        .tags(Tag::builder().key("tier").build())
        .send()
        .await
        .unwrap();
    assert_eq!(subnet_tags().await.len(), 1);

    // DeleteSubnet: gone, the VPC keeps its CIDR and tags.
    assert_eq!(
        code(
            ec2.delete_subnet()
                .subnet_id("subnet-00000000000000000")
                .send()
                .await
        ),
        "InvalidSubnetID.NotFound"
    );
    ec2.delete_subnet()
        .subnet_id(&subnet_id)
        .send()
        .await
        .unwrap();
    let left = ec2
        .describe_subnets()
        .filters(filter("vpc-id", &[&vpc]))
        .send()
        .await
        .unwrap();
    assert!(left.subnets().is_empty(), "{left:?}");
    assert_eq!(
        code(ec2.delete_subnet().subnet_id(&subnet_id).send().await),
        "InvalidSubnetID.NotFound"
    );
    let v = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
    assert_eq!(v.vpcs()[0].cidr_block(), Some("10.20.0.0/16"));
    assert_eq!(name_of(v.vpcs()[0].tags()), Some("the-vpc"));
    // A new subnet anywhere in the VPC, without the old one's tags.
    let again = create_subnet(&ec2, &vpc, "10.20.7.0/24").await;
    assert_eq!(again.cidr_block(), Some("10.20.7.0/24"));
    assert!(again.tags().is_empty(), "{again:?}");
    ec2.delete_subnet()
        .subnet_id(again.subnet_id().unwrap())
        .send()
        .await
        .unwrap();
    ec2.delete_vpc().vpc_id(&vpc).send().await.unwrap();
    assert_eq!(
        code(ec2.describe_vpcs().vpc_ids(&vpc).send().await),
        "InvalidVpcID.NotFound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_instances_makes_the_default_vpc() {
    let s = start().await;
    // An image and no Network at all.
    let image = create_image(&s.store, "default", "cirros").await;
    let ec2 = client(&s, &s.admin);
    let run = || launch(&ec2, &image);
    assert_eq!(code(run().dry_run(true).send().await), "DryRunOperation");
    let nets = || objects::<Network>(&s.store, "default");
    assert!(nets().await.is_empty(), "DryRun makes nothing");
    // Several at once: one default VPC.
    let mut calls = Vec::new();
    for _ in 0..4 {
        calls.push(run().send());
    }
    for r in futures_join(calls).await {
        r.unwrap();
    }
    let all = nets().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].metadata.name, "default");
    assert_eq!(all[0].spec.cidr, "172.31.0.0/16");
    let v = ec2
        .describe_vpcs()
        .filters(filter("is-default", &["true"]))
        .send()
        .await
        .unwrap();
    assert_eq!(v.vpcs().len(), 1);
    let sn = ec2
        .describe_subnets()
        .filters(filter("default-for-az", &["true"]))
        .send()
        .await
        .unwrap();
    assert_eq!(sn.subnets().len(), 1);
    let d = ec2.describe_instances().send().await.unwrap();
    let subnet = sn.subnets()[0].subnet_id().unwrap();
    assert!(d
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .all(|i| i.subnet_id() == Some(subnet)));
    assert_eq!(
        code(ec2.create_default_vpc().send().await),
        "DefaultVpcAlreadyExists"
    );
}

/// Awaits every future concurrently.
async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
