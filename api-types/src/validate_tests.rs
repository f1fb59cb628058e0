//! Tests of the shared syntax and metadata rules in `validate.rs`.

use super::*;

#[test]
fn dns_label_rules() {
    for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64), "é"] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}

#[test]
fn dns_subdomain_rules() {
    assert!(is_dns_subdomain("m1.tiny"));
    assert!(is_dns_subdomain("a.b-c.d"));
    assert!(!is_dns_subdomain("m1..tiny"));
    assert!(!is_dns_subdomain(".a"));
    assert!(!is_dns_subdomain("M1.tiny"));
    let long = vec!["a".repeat(63); 4].join("."); // 255 chars
    assert!(!is_dns_subdomain(&long));
}

#[test]
fn qualified_names_and_values() {
    for ok in ["app", "corral.dev/zone", "a.b_c-D", "example.com/X1"] {
        assert!(is_qualified_name(ok), "{ok}");
    }
    for bad in [
        "",
        "/a",
        "a/",
        "Example.com/a",
        "a b",
        "-a",
        "a/b/c",
        &"a".repeat(64),
    ] {
        assert!(!is_qualified_name(bad), "{bad}");
    }
    assert!(is_label_value(""));
    assert!(is_label_value("Zone_A.1"));
    assert!(!is_label_value("-x"));
    assert!(!is_label_value(&"v".repeat(64)));
}

fn meta(name: &str, project: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        project: project.into(),
        ..Default::default()
    }
}

#[test]
fn header_and_metadata_report_every_problem() {
    let mut m = meta("", "");
    m.labels.insert("bad key".into(), "-bad".into());
    m.labels.insert("ok".into(), String::new());
    m.annotations
        .insert("a".into(), "x".repeat(MAX_ANNOTATIONS_BYTES - 4));
    m.annotations.insert("/bad".into(), String::new());
    m.generation = -1;
    m.finalizers = vec![
        "corral.dev/x".into(),
        "corral.dev/x".into(),
        "no good".into(),
    ];
    m.owner_references = vec![crate::OwnerReference {
        kind: "Instance".into(),
        name: String::new(),
        uid: String::new(),
        controller: true,
    }];
    m.owner_references.push(crate::OwnerReference {
        kind: "Volume".into(),
        name: "v".into(),
        uid: "u".into(),
        controller: true,
    });
    let mut errs = FieldErrors::default();
    check_header(
        &mut errs,
        "v1",
        "Instanse",
        "Instance",
        Scope::Project,
        NameRule::DnsLabel,
        &m,
    );
    testing::assert_errors(
        &errs,
        &[
            "apiVersion: must be \"corral/v1\"",
            "kind: must be \"Instance\"",
            "metadata.name: required",
            "metadata.project: required",
            &format!("metadata.labels[\"bad key\"]: {QUALIFIED_NAME_MSG}"),
            &format!("metadata.labels[\"bad key\"]: {LABEL_VALUE_MSG}"),
            &format!("metadata.annotations[\"/bad\"]: {QUALIFIED_NAME_MSG}"),
            "metadata.annotations: total size must be at most 262144 bytes (is 262145)",
            "metadata.generation: must not be negative",
            "metadata.finalizers[1]: duplicate \"corral.dev/x\"",
            "metadata.finalizers[2]: must be a qualified name like corral.dev/volume-protection",
            "metadata.ownerReferences[0].name: required",
            "metadata.ownerReferences[0].uid: required",
            "metadata.ownerReferences: at most one owner reference may have controller: true",
        ],
    );
}

#[test]
fn name_rules_and_scope() {
    let check = |name: &str, project: &str, scope: Scope, name_rule: NameRule| {
        let mut errs = FieldErrors::default();
        let m = meta(name, project);
        check_header(&mut errs, API_VERSION, "X", "X", scope, name_rule, &m);
        errs
    };
    testing::assert_errors(
        &check("Web_1", "Demo", Scope::Project, NameRule::DnsLabel),
        &[
            &format!("metadata.name: {DNS_LABEL_MSG}"),
            &format!("metadata.project: {DNS_LABEL_MSG}"),
        ],
    );
    testing::assert_errors(
        &check("m1.tiny", "demo", Scope::Cluster, NameRule::DnsSubdomain),
        &["metadata.project: must be empty: X is cluster-scoped"],
    );
    testing::assert_errors(
        &check("m1.tiny", "", Scope::Cluster, NameRule::DnsLabel),
        &[&format!("metadata.name: {DNS_LABEL_MSG}")],
    );
}

#[test]
fn tag_rules() {
    let mut tags = BTreeMap::new();
    tags.insert("Name".to_string(), "web".to_string());
    tags.insert("aws:cloudformation".to_string(), "x".to_string());
    tags.insert("k".repeat(129), "v".repeat(257));
    tags.insert(String::new(), String::new());
    let mut errs = FieldErrors::default();
    check_tags(&mut errs, "spec.tags", &tags);
    let long = "k".repeat(129);
    testing::assert_errors(
        &errs,
        &[
            "spec.tags[\"aws:cloudformation\"]: key must not start with \"aws:\" (reserved)",
            &format!("spec.tags[{long:?}]: key must be at most 128 characters (is 129)"),
            &format!("spec.tags[{long:?}]: value must be at most 256 characters (is 257)"),
            "spec.tags[\"\"]: key must not be empty",
        ],
    );

    let many: BTreeMap<String, String> =
        (0..51).map(|i| (format!("k{i}"), String::new())).collect();
    let mut errs = FieldErrors::default();
    check_tags(&mut errs, "spec.tags", &many);
    testing::assert_errors(&errs, &["spec.tags: at most 50 tags are allowed (has 51)"]);
}
