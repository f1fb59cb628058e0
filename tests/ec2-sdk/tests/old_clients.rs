//! Reported by users of older and other clients, replayed with the AWS
//! SDK for Rust: DescribeInstances keeps every reservation whole however
//! its instances' ids sort, and a volume keeps the device name it was
//! attached with (terraform's aws_volume_attachment waits on the
//! `attachment.device` filter).

mod common;

use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use common::{code, filter, run_one, start_seeded};
use corral_api_types::ec2::instance_id;
use corral_api_types::{Instance, Resource, Volume, VolumePhase, VolumeStatus};
use corral_ec2_api::objects::new_uid;
use corral_ec2_api::testing::set_status;

/// The instance ids RunInstances makes in project `default` for `count`
/// instances with ClientToken `token`.
fn ids_for(token: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| instance_id(&new_uid("default", Instance::KIND, Some(token), n)))
        .collect()
}

/// How many runs of one reservation the id order makes (what the
/// reservationSet had when only neighbours were grouped).
fn runs(a: &[String], b: &[String]) -> usize {
    let mut all: Vec<(&String, bool)> = a
        .iter()
        .map(|i| (i, true))
        .chain(b.iter().map(|i| (i, false)))
        .collect();
    all.sort();
    1 + all.windows(2).filter(|w| w[0].1 != w[1].1).count()
}

/// (reservation id, instance ids) of each reservationSet item.
fn reservations(out: &DescribeInstancesOutput) -> Vec<(String, Vec<String>)> {
    out.reservations()
        .iter()
        .map(|r| {
            let mut ids: Vec<String> = r
                .instances()
                .iter()
                .map(|i| i.instance_id().unwrap().to_string())
                .collect();
            ids.sort();
            (r.reservation_id().unwrap().to_string(), ids)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_instances_keeps_each_reservation_whole() {
    let (_s, ec2, image) = start_seeded().await;
    // Two launches of three whose ids interleave (ids are hashes: choose
    // client tokens that make them interleave, so the split shows).
    let (ta, tb) = (0..200)
        .map(|t| (format!("old-a-{t}"), format!("old-b-{t}")))
        .find(|(a, b)| runs(&ids_for(a, 3), &ids_for(b, 3)) >= 4)
        .expect("interleaving tokens");
    let mut launched = Vec::new();
    for token in [&ta, &tb] {
        let out = ec2
            .run_instances()
            .image_id(&image)
            .min_count(3)
            .max_count(3)
            .client_token(token)
            .send()
            .await
            .unwrap();
        let mut ids: Vec<String> = out
            .instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_string())
            .collect();
        ids.sort();
        let mut expected = ids_for(token, 3);
        expected.sort();
        assert_eq!(ids, expected);
        launched.push((out.reservation_id().unwrap().to_string(), ids));
    }
    assert_ne!(launched[0].0, launched[1].0);

    let all = ec2.describe_instances().send().await.unwrap();
    let mut got = reservations(&all);
    assert_eq!(got.len(), 2, "{got:?}");
    // Reservations in the order of their first instance (by id).
    let first_id = |r: &(String, Vec<String>)| r.1[0].clone();
    let (a_first, b_first) = (first_id(&launched[0]), first_id(&launched[1]));
    let expected_order: Vec<&String> = if a_first < b_first {
        vec![&launched[0].0, &launched[1].0]
    } else {
        vec![&launched[1].0, &launched[0].0]
    };
    assert_eq!(got.iter().map(|r| &r.0).collect::<Vec<_>>(), expected_order);
    got.sort();
    let mut want = launched.clone();
    want.sort();
    assert_eq!(got, want);

    // Pages count instances (5 then 1) and hold whole instances, each
    // reservation at most once per page.
    let p1 = ec2
        .describe_instances()
        .max_results(5)
        .send()
        .await
        .unwrap();
    let r1 = reservations(&p1);
    assert_eq!(r1.iter().map(|r| r.1.len()).sum::<usize>(), 5);
    let mut page_reservations: Vec<&String> = r1.iter().map(|r| &r.0).collect();
    page_reservations.dedup();
    assert_eq!(page_reservations.len(), r1.len(), "{r1:?}");
    assert!(r1.len() <= 2, "{r1:?}");
    let p2 = ec2
        .describe_instances()
        .max_results(5)
        .next_token(p1.next_token().expect("a second page"))
        .send()
        .await
        .unwrap();
    let r2 = reservations(&p2);
    assert_eq!(r2.iter().map(|r| r.1.len()).sum::<usize>(), 1);
    assert!(p2.next_token().is_none());
    let mut seen: Vec<String> = r1.iter().chain(&r2).flat_map(|r| r.1.clone()).collect();
    seen.sort();
    let mut every: Vec<String> = launched.iter().flat_map(|r| r.1.clone()).collect();
    every.sort();
    assert_eq!(seen, every);

    // The reservation-id filter finds one whole reservation.
    let one = ec2
        .describe_instances()
        .filters(filter("reservation-id", &[&launched[1].0]))
        .send()
        .await
        .unwrap();
    assert_eq!(reservations(&one), vec![launched[1].clone()]);
}

fn millis(t: Option<&aws_sdk_ec2::primitives::DateTime>) -> i64 {
    t.expect("a time").to_millis().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_device_names_round_trip() {
    let (s, ec2, image) = start_seeded().await;
    let instance = run_one(&ec2, &image).await;
    // The volume is made after the instance: its attachment must not
    // claim a time before it existed.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let zones = ec2.describe_availability_zones().send().await.unwrap();
    let zone = zones.availability_zones()[0]
        .zone_name()
        .unwrap()
        .to_string();
    let new_volume = || async {
        let v = ec2
            .create_volume()
            .availability_zone(&zone)
            .size(1)
            .send()
            .await
            .unwrap();
        let id = v.volume_id().unwrap().to_string();
        // Play the volume controller: the volume is ready.
        set_status::<Volume>(
            &s.store,
            "default",
            &id,
            VolumeStatus {
                phase: VolumePhase::Available,
                ..Default::default()
            },
        )
        .await;
        id
    };
    let vol = new_volume().await;

    let att = ec2
        .attach_volume()
        .volume_id(&vol)
        .instance_id(&instance)
        .device("/dev/sdf")
        .send()
        .await
        .unwrap();
    assert_eq!(att.device(), Some("/dev/sdf"));
    let attached_at = millis(att.attach_time());

    // The guest keeps its virtio name.
    let stored: Instance = s.store.get("default", &instance).await.unwrap().unwrap();
    assert_eq!(stored.spec.volumes.len(), 1);
    assert_eq!(stored.spec.volumes[0].device.as_deref(), Some("vdf"));

    // DescribeVolumes shows the name given, attached after it was made.
    let d = ec2
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap();
    let v = &d.volumes()[0];
    let a = &v.attachments()[0];
    assert_eq!(a.device(), Some("/dev/sdf"));
    assert_eq!(a.instance_id(), Some(instance.as_str()));
    let created = millis(v.create_time());
    let attach_time = millis(a.attach_time());
    assert!(attach_time >= created, "{attach_time} < {created}");
    assert_eq!(attach_time, attached_at);

    // terraform's aws_volume_attachment waits on this filter.
    let found = ec2
        .describe_volumes()
        .filters(filter("attachment.device", &["/dev/sdf"]))
        .filters(filter("attachment.instance-id", &[&instance]))
        .filters(filter("volume-id", &[&vol]))
        .send()
        .await
        .unwrap();
    assert_eq!(found.volumes().len(), 1);
    assert_eq!(found.volumes()[0].volume_id(), Some(vol.as_str()));
    let by_guest_name = ec2
        .describe_volumes()
        .filters(filter("attachment.device", &["/dev/vdf"]))
        .send()
        .await
        .unwrap();
    assert!(by_guest_name.volumes().is_empty());

    // DescribeInstances' blockDeviceMapping names it the same.
    let di = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let bdm = di.reservations()[0].instances()[0].block_device_mappings();
    let m = bdm
        .iter()
        .find(|m| m.ebs().and_then(|e| e.volume_id()) == Some(vol.as_str()))
        .expect("the volume's mapping");
    assert_eq!(m.device_name(), Some("/dev/sdf"));
    assert!(millis(m.ebs().unwrap().attach_time()) >= created);

    // DescribeInstanceAttribute says the same, and ModifyInstanceAttribute
    // takes the name it showed.
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::BlockDeviceMapping)
        .send()
        .await
        .unwrap();
    assert!(attr
        .block_device_mappings()
        .iter()
        .any(|m| m.device_name() == Some("/dev/sdf")));
    ec2.modify_instance_attribute()
        .instance_id(&instance)
        .block_device_mappings(
            aws_sdk_ec2::types::InstanceBlockDeviceMappingSpecification::builder()
                .device_name("/dev/sdf")
                .ebs(
                    aws_sdk_ec2::types::EbsInstanceBlockDeviceSpecification::builder()
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();

    // /dev/xvdf is the same guest device: taken.
    let other = new_volume().await;
    assert_eq!(
        code(
            ec2.attach_volume()
                .volume_id(&other)
                .instance_id(&instance)
                .device("/dev/xvdf")
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            ec2.attach_volume()
                .volume_id(&other)
                .instance_id(&instance)
                .device("/dev/sda1")
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    // Another name keeps its own spelling.
    let att = ec2
        .attach_volume()
        .volume_id(&other)
        .instance_id(&instance)
        .device("xvdg")
        .send()
        .await
        .unwrap();
    assert_eq!(att.device(), Some("xvdg"));
    let d = ec2
        .describe_volumes()
        .volume_ids(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(d.volumes()[0].attachments()[0].device(), Some("xvdg"));

    // DetachVolume as terraform sends it (with the device) answers the
    // name too, and forgets it.
    let det = ec2
        .detach_volume()
        .volume_id(&vol)
        .instance_id(&instance)
        .device("/dev/sdf")
        .send()
        .await
        .unwrap();
    assert_eq!(det.device(), Some("/dev/sdf"));
    assert_eq!(millis(det.attach_time()), attached_at);
    let stored: Instance = s.store.get("default", &instance).await.unwrap().unwrap();
    assert_eq!(stored.spec.volumes.len(), 1);
    assert!(!stored
        .metadata
        .annotations
        .keys()
        .any(|k| k.ends_with("attachment.vdf")));
    let d = ec2
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap();
    assert!(d.volumes()[0].attachments().is_empty());
}
