use super::*;
use crate::kinds::node::TolerationOperator;
use crate::kinds::testing::{assert_wire_names, round_trip};
use crate::validate::testing::{assert_errors, assert_paths, assert_valid};
use crate::validate::{DNS_LABEL_MSG, LABEL_VALUE_MSG, QUALIFIED_NAME_MSG};
use crate::Resource;

const FULL: &str = r#"
apiVersion: corral/v1
kind: Instance
metadata:
  name: web-1
  project: demo
  labels:
    app: web
spec:
  instanceType: m1.small
  image: tiny
  volumes:
    - volume: data
      device: vdb
      deleteOnTermination: true
  nics:
    - network: lan
      fixedIp: 10.42.0.10
      securityGroups: [web, ssh]
      mac: "52:54:00:12:34:56"
    - network: lan
  keyName: admin
  userData: |
    #cloud-config
    hostname: web-1
  availabilityZone: zone-a
  powerState: Paused
  disableApiTermination: true
  tags:
    Name: web server
  nodeSelector:
    corral.dev/zone: zone-a
  tolerations:
    - key: corral.dev/maintenance
      operator: Exists
      effect: NoSchedule
status:
  phase: Running
  nodeName: host-1
  addresses:
    - network: lan
      ip: 10.42.0.10
      mac: "52:54:00:12:34:56"
      floatingIp: 192.0.2.5
  ec2Id: i-0123456789abcdef0
  launchTime: 2024-05-01T10:00:00Z
  conditions:
    - type: Ready
      status: "True"
      reason: Running
  observedGeneration: 3
  message: all good
"#;

fn minimal() -> Instance {
    let mut i = Instance::new(
        "demo",
        "web-1",
        InstanceSpec {
            image: Some("tiny".into()),
            ..Default::default()
        },
    );
    i.apply_defaults();
    i
}

#[test]
fn full_round_trip() {
    let i: Instance = round_trip(FULL);
    assert_eq!(i.spec.power_state, PowerState::Paused);
    assert_eq!(i.spec.nics.len(), 2);
    assert_eq!(i.spec.nics[0].security_groups, ["web", "ssh"]);
    assert_eq!(
        i.spec.user_data.as_deref(),
        Some("#cloud-config\nhostname: web-1\n")
    );
    assert_eq!(i.spec.tolerations[0].operator, TolerationOperator::Exists);
    let st = i.status.as_ref().unwrap();
    assert_eq!(st.phase, InstancePhase::Running);
    assert_eq!(st.addresses[0].floating_ip.as_deref(), Some("192.0.2.5"));
    assert_eq!(st.observed_generation, 3);
    assert_valid(&i);
}

#[test]
fn minimal_json_round_trip_and_power_state_default() {
    let i: Instance = round_trip(
        r#"{"apiVersion":"corral/v1","kind":"Instance","metadata":{"name":"a","project":"p"},"spec":{"image":"x"}}"#,
    );
    assert_eq!(i.spec.power_state, PowerState::Running);
    assert!(i.status.is_none());
    // Nothing empty is written back out.
    let v = serde_json::to_value(&i).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"apiVersion":"corral/v1","kind":"Instance",
            "metadata":{"name":"a","project":"p"},
            "spec":{"image":"x","powerState":"Running"}})
    );
}

#[test]
fn phase_names_are_as_written() {
    assert_wire_names(&[
        ("Pending", InstancePhase::Pending),
        ("Scheduled", InstancePhase::Scheduled),
        ("Provisioning", InstancePhase::Provisioning),
        ("Running", InstancePhase::Running),
        ("Stopping", InstancePhase::Stopping),
        ("Stopped", InstancePhase::Stopped),
        ("Paused", InstancePhase::Paused),
        ("Suspended", InstancePhase::Suspended),
        ("Terminating", InstancePhase::Terminating),
        ("Failed", InstancePhase::Failed),
        ("Unknown", InstancePhase::Unknown),
    ]);
    assert_wire_names(&[
        ("Running", PowerState::Running),
        ("Stopped", PowerState::Stopped),
        ("Paused", PowerState::Paused),
        ("Suspended", PowerState::Suspended),
    ]);
    assert!(serde_json::from_value::<PowerState>("running".into()).is_err());
}

#[test]
fn defaults_fill_instance_type_devices_and_macs() {
    let mut i = Instance::new("demo", "a", InstanceSpec::default());
    i.spec.image = Some("tiny".into());
    i.spec.volumes = vec![
        VolumeAttachment {
            volume: "a".into(),
            ..Default::default()
        },
        VolumeAttachment {
            volume: "b".into(),
            device: Some("vdb".into()),
            ..Default::default()
        },
        VolumeAttachment {
            volume: "c".into(),
            ..Default::default()
        },
    ];
    i.spec.nics = vec![Nic {
        network: "lan".into(),
        mac: Some("52:54:00:AB:CD:EF".into()),
        ..Default::default()
    }];
    i.apply_defaults();
    assert_eq!(i.spec.instance_type.as_deref(), Some("m1.tiny"));
    let devices: Vec<_> = i
        .spec
        .volumes
        .iter()
        .map(|v| v.device.as_deref().unwrap())
        .collect();
    assert_eq!(devices, ["vdc", "vdb", "vdd"]);
    assert_eq!(i.spec.nics[0].mac.as_deref(), Some("52:54:00:ab:cd:ef"));
    assert_valid(&i);

    // Idempotent.
    let before = i.clone();
    i.apply_defaults();
    assert_eq!(i, before);

    // An explicit size is left alone.
    let mut j = Instance::new("demo", "b", InstanceSpec::default());
    j.spec.cpus = Some(2);
    j.apply_defaults();
    assert_eq!(j.spec.instance_type, None);
}

#[test]
fn size_rules() {
    let mut i = minimal();
    i.spec.cpus = Some(2);
    i.spec.memory_mib = Some(1024);
    assert_errors(
        &i.validate(),
        &[
            "spec.cpus: must not be set together with spec.instanceType",
            "spec.memoryMiB: must not be set together with spec.instanceType",
        ],
    );

    i.spec.instance_type = None;
    i.spec.cpus = Some(0);
    i.spec.memory_mib = Some(32);
    assert_errors(
        &i.validate(),
        &[
            "spec.cpus: must be between 1 and 256 (is 0)",
            "spec.memoryMiB: must be between 64 and 4194304 (is 32)",
        ],
    );

    i.spec.cpus = Some(257);
    i.spec.memory_mib = None;
    assert_errors(
        &i.validate(),
        &[
            "spec.memoryMiB: required when spec.cpus is set",
            "spec.cpus: must be between 1 and 256 (is 257)",
        ],
    );

    i.spec.cpus = None;
    i.spec.memory_mib = Some(4_194_304);
    assert_errors(
        &i.validate(),
        &["spec.cpus: required when spec.memoryMiB is set"],
    );

    i.spec.memory_mib = None;
    assert_errors(
        &i.validate(),
        &["spec.instanceType: required: set spec.instanceType, or both spec.cpus and spec.memoryMiB"],
    );

    i.spec.instance_type = Some("M1.Tiny".into());
    assert_errors(
        &i.validate(),
        &["spec.instanceType: must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"],
    );
}

#[test]
fn boot_source_rules() {
    let mut i = minimal();
    i.spec.image = None;
    assert_errors(
        &i.validate(),
        &["spec.image: required: set spec.image or spec.bootVolume"],
    );
    i.spec.image = Some("Tiny".into());
    i.spec.boot_volume = Some("root_vol".into());
    assert_errors(
        &i.validate(),
        &[
            "spec.bootVolume: must not be set together with spec.image",
            &format!("spec.image: {DNS_LABEL_MSG}"),
            &format!("spec.bootVolume: {DNS_LABEL_MSG}"),
        ],
    );
    i.spec.image = None;
    i.spec.boot_volume = Some("root".into());
    assert_valid(&i);
}

#[test]
fn volume_rules() {
    let mut i = minimal();
    i.spec.image = None;
    i.spec.boot_volume = Some("root".into());
    let att = |v: &str, d: Option<&str>| VolumeAttachment {
        volume: v.into(),
        device: d.map(String::from),
        delete_on_termination: false,
    };
    i.spec.volumes = vec![
        att("data", Some("vdb")),
        att("logs", Some("vdb")),
        att("data", Some("vdc")),
        att("root", None),
        att("", Some("vda")),
        att("x", Some("sdb")),
    ];
    assert_errors(
        &i.validate(),
        &[
            "spec.volumes[1].device: duplicate \"vdb\"",
            "spec.volumes[2].volume: duplicate \"data\"",
            "spec.volumes[3].volume: \"root\" is already the boot volume",
            "spec.volumes[4].volume: required",
            "spec.volumes[4].device: must be a virtio disk name from vdb to vdz (vda is the boot disk)",
            "spec.volumes[5].device: must be a virtio disk name from vdb to vdz (vda is the boot disk)",
        ],
    );
    assert!(is_data_device("vdz"));
    assert!(!is_data_device("vda"));
    assert!(!is_data_device("vdaa"));
}

#[test]
fn nic_rules() {
    let mut i = minimal();
    let nic = |net: &str, ip: Option<&str>, mac: Option<&str>, sgs: &[&str]| Nic {
        network: net.into(),
        fixed_ip: ip.map(String::from),
        mac: mac.map(String::from),
        security_groups: sgs.iter().map(|s| s.to_string()).collect(),
    };
    i.spec.nics = vec![
        nic(
            "lan",
            Some("10.42.0.300"),
            Some("52:54:00:00:00:01"),
            &["web", "web"],
        ),
        nic(
            "lan",
            Some("10.42.0.5"),
            Some("52:54:00:00:00:01"),
            &["Web"],
        ),
        nic("", None, Some("01:00:5e:00:00:01"), &[]),
        nic("db_net", None, Some("52-54-00-00-00-02"), &[""]),
    ];
    assert_errors(
        &i.validate(),
        &[
            "spec.nics[0].fixedIp: must be an IPv4 address like 10.0.0.5",
            "spec.nics[0].securityGroups[1]: duplicate \"web\"",
            "spec.nics[1].mac: duplicate \"52:54:00:00:00:01\"",
            &format!("spec.nics[1].securityGroups[0]: {DNS_LABEL_MSG}"),
            "spec.nics[2].network: required",
            "spec.nics[2].mac: must be a unicast MAC address (lowest bit of the first octet clear, not all zeros)",
            &format!("spec.nics[3].network: {DNS_LABEL_MSG}"),
            "spec.nics[3].mac: must be a MAC address like 52:54:00:12:34:56",
            "spec.nics[3].securityGroups[0]: required",
        ],
    );
}

#[test]
fn other_field_rules() {
    let mut i = minimal();
    i.spec.key_name = Some("Admin Key".into());
    i.spec.user_data = Some("x".repeat(MAX_USER_DATA_BYTES + 1));
    i.spec.availability_zone = Some("zone_a".into());
    i.spec.tags.insert("aws:x".into(), "y".into());
    i.spec.node_selector.insert("bad key".into(), "ok".into());
    i.spec.tolerations.push(Toleration {
        key: "k".into(),
        value: "bad value".into(),
        ..Default::default()
    });
    assert_errors(
        &i.validate(),
        &[
            &format!("spec.keyName: {DNS_LABEL_MSG}"),
            "spec.userData: must be at most 16384 bytes (is 16385)",
            &format!("spec.availabilityZone: {DNS_LABEL_MSG}"),
            "spec.tags[\"aws:x\"]: key must not start with \"aws:\" (reserved)",
            &format!("spec.nodeSelector[\"bad key\"]: {QUALIFIED_NAME_MSG}"),
            &format!("spec.tolerations[0].value: {LABEL_VALUE_MSG}"),
        ],
    );
    // Exactly at the limit is fine.
    let mut j = minimal();
    j.spec.user_data = Some("x".repeat(MAX_USER_DATA_BYTES));
    assert_valid(&j);
}

#[test]
fn header_and_spec_problems_are_reported_together() {
    let mut i = minimal();
    i.api_version = "v1".into();
    i.kind = "Instances".into();
    i.metadata.name = "Web 1".into();
    i.metadata.project = String::new();
    i.spec.image = None;
    i.spec.nics.push(Nic::default());
    assert_paths(
        &i.validate(),
        &[
            "apiVersion",
            "kind",
            "metadata.name",
            "metadata.project",
            "spec.image",
            "spec.nics[0].network",
        ],
    );
    assert_eq!(
        i.validate().0[0].to_string(),
        "apiVersion: must be \"corral/v1\""
    );
    assert_eq!(i.validate().0[1].to_string(), "kind: must be \"Instance\"");
}

#[test]
fn nics_are_limited_to_what_tap_names_can_tell_apart() {
    let mut i = Instance::new("demo", "many", InstanceSpec::default());
    i.spec.image = Some("tiny".into());
    i.spec.instance_type = Some("m1.tiny".into());
    i.spec.nics = (0..MAX_NICS)
        .map(|_| Nic {
            network: "lan".into(),
            ..Default::default()
        })
        .collect();
    assert_valid(&i);
    i.spec.nics.push(Nic {
        network: "lan".into(),
        ..Default::default()
    });
    assert_errors(
        &i.validate(),
        &["spec.nics: must have at most 10 entries (has 11)"],
    );
}

#[test]
fn metadata_options_default_to_ec2s_and_are_checked() {
    // Absent: EC2's defaults, and nothing written back out.
    let i = minimal();
    assert_eq!(
        i.spec.metadata_options,
        MetadataOptions {
            http_tokens: HttpTokens::Optional,
            http_endpoint: MetadataSwitch::Enabled,
            http_put_response_hop_limit: 1,
            instance_metadata_tags: MetadataSwitch::Disabled,
        }
    );
    assert!(serde_json::to_value(&i).unwrap()["spec"]
        .get("metadataOptions")
        .is_none());

    // Naming one field keeps the others' defaults.
    let j: Instance = round_trip(
        r#"{"apiVersion":"corral/v1","kind":"Instance","metadata":{"name":"a","project":"p"},
            "spec":{"image":"x","metadataOptions":{"httpTokens":"required"}}}"#,
    );
    assert_eq!(j.spec.metadata_options.http_tokens, HttpTokens::Required);
    assert_eq!(j.spec.metadata_options.http_put_response_hop_limit, 1);
    assert_eq!(
        j.spec.metadata_options.http_endpoint,
        MetadataSwitch::Enabled
    );
    assert_wire_names(&[
        ("optional", HttpTokens::Optional),
        ("required", HttpTokens::Required),
    ]);
    assert_wire_names(&[
        ("enabled", MetadataSwitch::Enabled),
        ("disabled", MetadataSwitch::Disabled),
    ]);
    for bad in [
        r#"{"httpTokens":"sometimes"}"#,
        r#"{"httpEndpoint":"on"}"#,
        r#"{"hopLimit":2}"#,
    ] {
        assert!(
            serde_json::from_str::<MetadataOptions>(bad).is_err(),
            "{bad}"
        );
    }

    let mut k = minimal();
    k.spec.metadata_options.http_put_response_hop_limit = 0;
    assert_errors(
        &k.validate(),
        &["spec.metadataOptions.httpPutResponseHopLimit: must be between 1 and 64 (is 0)"],
    );
    k.spec.metadata_options.http_put_response_hop_limit = 64;
    assert_valid(&k);
    k.spec.metadata_options.http_put_response_hop_limit = 65;
    assert_paths(
        &k.validate(),
        &["spec.metadataOptions.httpPutResponseHopLimit"],
    );

    // Tags in the metadata: their keys become paths.
    let mut t = minimal();
    for key in [
        "Name",
        "team:web",
        "a+b=c,d_e@f.g",
        "..",
        "has space",
        "a/b",
    ] {
        t.spec.tags.insert(key.into(), "v".into());
    }
    assert_valid(&t);
    t.spec.metadata_options.instance_metadata_tags = MetadataSwitch::Enabled;
    assert_paths(
        &t.validate(),
        &[
            "spec.tags[\"..\"]",
            "spec.tags[\"a/b\"]",
            "spec.tags[\"has space\"]",
        ],
    );
    let errs = t.validate().to_string();
    assert!(
        errs.contains("spec.tags[\"a/b\"]: key must hold only letters, digits and + - = . , _ : @ while spec.metadataOptions.instanceMetadataTags is enabled"),
        "{errs}"
    );
    assert!(metadata_tag_key_refusal("_index").is_some());
    assert_eq!(metadata_tag_key_refusal("Name"), None);
}
