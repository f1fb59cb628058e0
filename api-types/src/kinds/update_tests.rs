//! `ValidateUpdate` for every kind: what may not change.

use super::*;
use crate::validate::testing::assert_errors;
use crate::{AnyObject, Resource, ValidateUpdate};

#[test]
fn metadata_rules() {
    let mut old = Network::new(
        "demo",
        "lan",
        NetworkSpec {
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        },
    );
    old.metadata.uid = "u1".into();
    old.metadata.creation_timestamp = Some("2024-05-01T10:00:00Z".parse().unwrap());
    old.metadata.finalizers = vec!["corral.dev/ipam".into()];
    let mut new = old.clone();
    assert!(new.validate_update(&old).is_empty());
    new.metadata.name = "lan2".into();
    new.metadata.project = "other".into();
    new.metadata.uid = "u2".into();
    new.metadata.creation_timestamp = Some("2024-05-02T10:00:00Z".parse().unwrap());
    assert_errors(
        &new.validate_update(&old),
        &[
            "metadata.name: field is immutable",
            "metadata.project: field is immutable",
            "metadata.uid: field is immutable",
            "metadata.creationTimestamp: field is immutable",
        ],
    );

    // Labels, annotations and finalizers may change freely before deletion.
    let mut new = old.clone();
    new.metadata.labels.insert("a".into(), "b".into());
    new.metadata.finalizers.push("corral.dev/other".into());
    assert!(new.validate_update(&old).is_empty());

    // Once deleting: no new finalizers, no undoing the deletion.
    old.metadata.deletion_timestamp = Some("2024-05-03T10:00:00Z".parse().unwrap());
    let mut new = old.clone();
    new.metadata.finalizers.clear();
    assert!(
        new.validate_update(&old).is_empty(),
        "removing finalizers is fine"
    );
    new.metadata.finalizers = vec!["corral.dev/ipam".into(), "corral.dev/new".into()];
    new.metadata.deletion_timestamp = None;
    assert_errors(
        &new.validate_update(&old),
        &[
            "metadata.deletionTimestamp: cannot change once deletion has started",
            "metadata.finalizers[1]: cannot add a finalizer once deletion has started",
        ],
    );
}

/// Updating `old` by `allowed` is accepted; by `allowed` then `forbidden`,
/// refused with exactly `errors`.
#[track_caller]
fn check_update<R: ValidateUpdate + Clone>(
    old: &R,
    allowed: impl FnOnce(&mut R),
    forbidden: impl FnOnce(&mut R),
    errors: &[&str],
) {
    let mut new = old.clone();
    allowed(&mut new);
    assert_errors(&new.validate_update(old), &[]);
    forbidden(&mut new);
    assert_errors(&new.validate_update(old), errors);
}

#[test]
fn instance_boot_source_and_zone_are_fixed() {
    let spec = InstanceSpec {
        image: Some("tiny".into()),
        availability_zone: Some("a".into()),
        ..Default::default()
    };
    check_update(
        &Instance::new("demo", "web", spec),
        |new| {
            new.spec.power_state = PowerState::Stopped;
            new.spec.instance_type = Some("m1.small".into());
            new.spec.tags.insert("k".into(), "v".into());
        },
        |new| {
            new.spec.image = None;
            new.spec.boot_volume = Some("root".into());
            new.spec.availability_zone = None;
        },
        &[
            "spec.image: field is immutable",
            "spec.bootVolume: field is immutable",
            "spec.availabilityZone: field is immutable",
        ],
    );
}

#[test]
fn network_volume_snapshot_image_rules() {
    let mut lan = Network::new("demo", "lan", NetworkSpec::default());
    lan.spec.cidr = "10.0.0.0/24".into();
    check_update(
        &lan,
        |new| new.spec.dns_servers.push("1.1.1.1".into()),
        |new| {
            new.spec.cidr = "10.0.1.0/24".into();
            new.spec.mode = NetworkMode::Bridged;
            new.spec.host_bridge = Some("br0".into());
        },
        &[
            "spec.cidr: field is immutable",
            "spec.mode: field is immutable",
            "spec.hostBridge: field is immutable",
        ],
    );

    let mut data = Volume::new("demo", "data", VolumeSpec::default());
    data.spec.size_gib = Some(10);
    check_update(
        &data,
        |grown| grown.spec.size_gib = Some(20),
        |new| {
            new.spec.size_gib = Some(5);
            new.spec.source.image = Some("tiny".into());
            new.spec.availability_zone = Some("b".into());
        },
        &[
            "spec.sizeGiB: may only grow (was 10)",
            "spec.source: field is immutable",
            "spec.availabilityZone: field is immutable",
        ],
    );

    let mut snap = Snapshot::new("demo", "s", SnapshotSpec::default());
    snap.spec.volume = "data".into();
    check_update(
        &snap,
        |new| new.spec.description = Some("x".into()),
        |new| new.spec.volume = "other".into(),
        &["spec.volume: field is immutable"],
    );

    check_update(
        &Image::new("demo", "tiny", ImageSpec::default()),
        |new| new.spec.visibility = Visibility::Public,
        |new| {
            new.spec.source.upload = true;
            new.spec.format = ImageFormat::Raw;
            new.spec.image_type = ImageType::Kernel;
            new.spec.architecture = Architecture::Aarch64;
        },
        &[
            "spec.source: field is immutable",
            "spec.format: field is immutable",
            "spec.imageType: field is immutable",
            "spec.architecture: field is immutable",
        ],
    );
}

#[test]
fn other_kinds_rules() {
    let mut key = KeyPair::new("demo", "k", KeyPairSpec::default());
    key.spec.public_key = "ssh-ed25519 AAAA".into();
    check_update(
        &key,
        // Whitespace is not a change.
        |new| new.spec.public_key = "ssh-ed25519 AAAA\n".into(),
        |new| new.spec.public_key = "ssh-ed25519 BBBB".into(),
        &["spec.publicKey: field is immutable"],
    );

    let mut ip = Address::new("demo", "ip", AddressSpec::default());
    ip.spec.network = "pub".into();
    check_update(
        &ip,
        |new| new.spec.instance = Some("web".into()),
        |new| new.spec.network = "other".into(),
        &["spec.network: field is immutable"],
    );

    check_update(
        &seeded_instance_types().remove(0),
        |new| new.spec.description = Some("smallest".into()),
        |new| {
            new.spec.vcpus = 2;
            new.spec.memory_mib = 1024;
            new.spec.root_disk_gib = 2;
            new.spec.ephemeral_gib = 1;
        },
        &[
            "spec.vcpus: field is immutable",
            "spec.memoryMiB: field is immutable",
            "spec.rootDiskGiB: field is immutable",
            "spec.ephemeralGiB: field is immutable",
        ],
    );

    check_update(
        &Event::new("demo", "e", EventSpec::default()),
        |new| new.spec.count = 5,
        |new| new.spec.involved_object.name = "x".into(),
        &["spec.involvedObject: field is immutable"],
    );

    // Free-form kinds: any spec change is accepted.
    check_update(
        &SecurityGroup::new("demo", "sg", SecurityGroupSpec::default()),
        |new| new.spec.description = "changed".into(),
        |_| {},
        &[],
    );
    check_update(
        &Node::new("", "n", NodeSpec::default()),
        |new| new.spec.unschedulable = true,
        |_| {},
        &[],
    );
    check_update(
        &Project::new("", "p", ProjectSpec::default()),
        |new| new.spec.quotas.instances = Some(1),
        |_| {},
        &[],
    );
}

#[test]
fn any_object_dispatch() {
    let net = AnyObject::from(Network::new("demo", "x", NetworkSpec::default()));
    let vol = AnyObject::from(Volume::new("demo", "x", VolumeSpec::default()));
    assert_errors(
        &vol.validate_update(&net),
        &["kind: cannot change from \"Network\" to \"Volume\""],
    );
    let mut net2 = net.clone();
    if let AnyObject::Network(n) = &mut net2 {
        n.spec.cidr = "10.0.0.0/8".into();
    }
    assert_errors(
        &net2.validate_update(&net),
        &["spec.cidr: field is immutable"],
    );
}
