//! DescribeInstances reuses each instance's rendered XML while nothing it
//! depends on has changed: these are the changes that must show at once
//! anyway — the instance itself, and the other objects its XML names
//! (key pair, image, security group, zone), each made after an answer
//! that had the old value.

mod common;

use aws_sdk_ec2::types::Instance as Ec2Instance;
use common::{client, set_phase};
use corral_api_types::{Image, InstancePhase, KeyPair, Node, NodeSpec, Resource};
use corral_ec2_api::testing::{seed_project, start};

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
    let s = start().await;
    let image = seed_project(&s.store, "default").await;
    let ec2 = client(&s, &s.admin);
    ec2.create_key_pair()
        .key_name("My Key")
        .send()
        .await
        .unwrap();
    let sg = ec2
        .create_security_group()
        .group_name("Web Servers")
        .description("web")
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let run = ec2
        .run_instances()
        .image_id(&image)
        .min_count(1)
        .max_count(1)
        .key_name("My Key")
        .security_group_ids(&sg)
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_string();
    // Another instance, so the project's answer holds more than one.
    ec2.run_instances()
        .image_id(&image)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();

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
    assert!(s
        .store
        .list::<KeyPair>(Some("default"), Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let i = one(&ec2, &id).await;
    assert_ne!(i.key_name(), Some("My Key"));

    // The security group goes (behind the façade's back): no id for it.
    let group = s
        .store
        .list::<corral_api_types::SecurityGroup>(Some("default"), Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap();
    s.store
        .delete::<corral_api_types::SecurityGroup>("default", &group.metadata.name, None)
        .await
        .unwrap();
    let i = one(&ec2, &id).await;
    assert_ne!(i.security_groups()[0].group_id(), Some(sg.as_str()));

    // The image goes: no imageId.
    let img: Image = s
        .store
        .list::<Image>(Some("default"), Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap();
    s.store
        .delete::<Image>("default", &img.meta().name, None)
        .await
        .unwrap();
    let i = one(&ec2, &id).await;
    assert_eq!(i.image_id(), None);
}
