//! DescribeInstances reuses each instance's rendered XML while nothing it
//! depends on has changed: these are the changes that must show at once
//! anyway — the instance itself, and the other objects its XML names
//! (key pair, image, security group, zone), each made after an answer
//! that had the old value.

mod common;

use aws_sdk_ec2::types::Instance as Ec2Instance;
use common::{create_group, launch, objects, run_one, set_phase, start_seeded};
use corral_api_types::{Image, InstancePhase, KeyPair, Node, NodeSpec, Resource, SecurityGroup};

async fn one(ec2: &aws_sdk_ec2::Client, id: &str) -> Ec2Instance {
    // Twice: the second answer comes from the reused XML when nothing
    // changed, and must equal the first.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let out = ec2.describe_instances().send().await.unwrap();
        let all: Vec<Ec2Instance> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances().to_vec())
            .collect();
        let found = all
            .into_iter()
            .find(|i| i.instance_id() == Some(id))
            .unwrap_or_else(|| panic!("{id} missing"));
        answers.push(found);
    }
    assert_eq!(answers[0], answers[1]);
    answers.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_instances_shows_every_change_its_xml_depends_on() {
    let (s, ec2, image) = start_seeded().await;
    ec2.create_key_pair()
        .key_name("My Key")
        .send()
        .await
        .unwrap();
    let sg = create_group(&ec2, "Web Servers", "web", None).await;
    let run = launch(&ec2, &image)
        .key_name("My Key")
        .security_group_ids(&sg)
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_string();
    // Another instance, so the project's answer holds more than one.
    run_one(&ec2, &image).await;

    let i = one(&ec2, &id).await;
    assert_eq!(i.key_name(), Some("My Key"));
    assert_eq!(i.image_id(), Some(image.as_str()));
    assert_eq!(i.security_groups()[0].group_id(), Some(sg.as_str()));
    assert_eq!(i.security_groups()[0].group_name(), Some("Web Servers"));
    assert_eq!(i.state().unwrap().name().unwrap().as_str(), "pending");
    assert_eq!(
        i.placement().unwrap().availability_zone(),
        Some("corral-1a")
    );

    // The instance itself.
    set_phase(&s, "default", &id, InstancePhase::Running).await;
    let i = one(&ec2, &id).await;
    assert_eq!(i.state().unwrap().name().unwrap().as_str(), "running");

    // A zone appears: the instance (no zone of its own) is in it.
    let mut node = Node::new("", "n1", NodeSpec::default());
    node.spec.zone = Some("corral-1b".into());
    s.store.create(&node).await.unwrap();
    let i = one(&ec2, &id).await;
    assert_eq!(
        i.placement().unwrap().availability_zone(),
        Some("corral-1b")
    );

    // The key pair goes: its EC2 name with it.
    ec2.delete_key_pair()
        .key_name("My Key")
        .send()
        .await
        .unwrap();
    assert!(objects::<KeyPair>(&s.store, "default").await.is_empty());
    let i = one(&ec2, &id).await;
    assert_ne!(i.key_name(), Some("My Key"));

    // The security group goes (behind the façade's back): no id for it.
    let group = objects::<SecurityGroup>(&s.store, "default")
        .await
        .into_iter()
        .find(|g| g.metadata.name != "default")
        .unwrap();
    s.store
        .delete::<SecurityGroup>("default", &group.metadata.name, None)
        .await
        .unwrap();
    let i = one(&ec2, &id).await;
    assert_ne!(i.security_groups()[0].group_id(), Some(sg.as_str()));

    // The image goes: no imageId.
    let img = objects::<Image>(&s.store, "default").await.remove(0);
    s.store
        .delete::<Image>("default", &img.meta().name, None)
        .await
        .unwrap();
    let i = one(&ec2, &id).await;
    assert_eq!(i.image_id(), None);
}
