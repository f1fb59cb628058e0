use super::*;
use crate::{Defaults, Validate};

const TWO_DOCS: &str = "\
# leading comment, then an empty document
---
---
apiVersion: corral/v1
kind: Network
metadata: {name: lan, project: demo}
spec: {cidr: 10.42.0.0/24}
---
# only a comment
---
apiVersion: corral/v1
kind: Instance
metadata:
  name: web
  project: demo
spec:
  image: tiny
  nics:
    - network: lan
";

#[test]
fn yaml_stream_skips_empty_documents() {
    let objs = parse_manifests("demo.yaml", TWO_DOCS).unwrap();
    let names: Vec<_> = objs.iter().map(|o| o.display_name()).collect();
    assert_eq!(names, ["Network demo/lan", "Instance demo/web"]);
    assert!(parse_manifests("empty.yaml", "").unwrap().is_empty());
    assert!(parse_manifests("empty.yaml", "---\n# nothing\n")
        .unwrap()
        .is_empty());
}

#[test]
fn yaml_syntax_error_has_document_line_and_column() {
    let text = "apiVersion: corral/v1\nkind: Project\nmetadata: {name: demo}\n---\nkind: Network\nmetadata: {name: x\nspec: {}\n";
    let err = parse_manifests("bad.yaml", text).unwrap_err();
    assert_eq!(err.source_name, "bad.yaml");
    assert_eq!(err.document, Some(2));
    assert!(matches!(err.kind, ManifestErrorKind::Syntax(_)), "{err:?}");
    assert_eq!(err.line, Some(7), "{err}");
    assert!(err.column.is_some());
    let shown = err.to_string();
    assert!(shown.starts_with("bad.yaml: document 2: "), "{shown}");
    assert!(shown.contains("line 7"), "{shown}");

    let err = parse_manifests("tab.yaml", "kind: Network\nspec:\n\tcidr: x\n").unwrap_err();
    assert_eq!((err.document, err.line), (Some(1), Some(3)), "{err}");
}

#[test]
fn unknown_field_names_object_path_and_location() {
    let text = TWO_DOCS.replace("    - network: lan", "    - netwrok: lan");
    let err = parse_manifests("demo.yaml", &text).unwrap_err();
    // The leading `---` opens document 1 (empty); the Instance is the 4th.
    assert_eq!(err.document, Some(4));
    let Some(ParseError::Field {
        object,
        path,
        message,
    }) = err.parse_error()
    else {
        panic!("{err:?}")
    };
    assert_eq!(object, "Instance demo/web");
    assert_eq!(path, "spec.nics[0].netwrok");
    assert_eq!(err.field_path(), Some("spec.nics[0].netwrok"));
    assert!(
        message.starts_with("unknown field \"netwrok\", expected one of"),
        "{message}"
    );
    // The line of `- netwrok: lan` in the file.
    let line = text.lines().position(|l| l.contains("netwrok")).unwrap() + 1;
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(err.column, Some(7), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "demo.yaml: document 4 (line {line}, column 7): Instance demo/web: spec.nics[0].netwrok: {message}"
        )
    );
}

#[test]
fn wrong_types_are_strict_like_json() {
    let text = "apiVersion: corral/v1\nkind: Instance\nmetadata: {name: a, project: p}\nspec:\n  image: x\n  tags: {Env: 2024}\n";
    let err = parse_manifests("t.yaml", text).unwrap_err();
    let Some(ParseError::Field { path, message, .. }) = err.parse_error() else {
        panic!("{err:?}")
    };
    assert_eq!(path, "spec.tags.Env");
    assert_eq!(message, "invalid type: integer \"2024\", expected a string");
}

#[test]
fn missing_and_unknown_kind() {
    let err =
        parse_manifests("k.yaml", "apiVersion: corral/v1\nmetadata: {name: a}\n").unwrap_err();
    assert_eq!(err.parse_error(), Some(&ParseError::MissingKind));
    assert_eq!(err.field_path(), None);
    assert_eq!(err.document, Some(1));
    assert!(
        err.to_string()
            .starts_with("k.yaml: document 1: missing \"kind\""),
        "{err}"
    );

    let err = parse_manifests("k.yaml", "---\nkind: Netwrok\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("k.yaml: document 1: unknown kind \"Netwrok\" (one of Project,"),
        "{err}"
    );
    let err = parse_manifests("k.yaml", "kind: network\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "k.yaml: document 1: unknown kind \"network\" (did you mean \"Network\"?)"
    );
    let err = parse_manifests("k.yaml", "- a\n- b\n").unwrap_err();
    assert_eq!(err.item, Some(0));
    assert!(err.to_string().contains("found a string"), "{err}");
}

#[test]
fn yaml_list_kind() {
    let text = "\
apiVersion: v1
kind: List
items:
  - {apiVersion: corral/v1, kind: Network, metadata: {name: a, project: p}, spec: {cidr: 10.0.0.0/24}}
  - {apiVersion: corral/v1, kind: Network, metadata: {name: b, project: p}, spec: {cidr: 10.0.1.0/24, bogus: 1}}
";
    let err = parse_manifests("list.yaml", text).unwrap_err();
    assert_eq!((err.document, err.item), (Some(1), Some(1)));
    assert_eq!(
        err.to_string(),
        "list.yaml: document 1: items[1]: Network p/b: spec.bogus: unknown field \"bogus\", expected one of \"cidr\", \"gateway\", \"mode\", \"hostBridge\", \"dhcp\", \"dnsServers\", \"tags\""
    );
    let ok = parse_manifests("list.yaml", &text.replace(", bogus: 1", "")).unwrap();
    assert_eq!(ok.len(), 2);
}

const NET_JSON: &str = r#"{
  "apiVersion": "corral/v1",
  "kind": "Network",
  "metadata": {"name": "lan", "project": "demo"},
  "spec": {"cidr": "10.42.0.0/24"}
}"#;

#[test]
fn json_object_list_and_array() {
    let one = parse_manifests("net.json", NET_JSON).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].display_name(), "Network demo/lan");

    let list = format!(r#"{{"kind": "List", "items": [{NET_JSON}, {NET_JSON}]}}"#);
    assert_eq!(parse_manifests("list.json", &list).unwrap().len(), 2);
    let array = format!("[{NET_JSON}]");
    assert_eq!(parse_manifests("array.json", &array).unwrap().len(), 1);
    // JSON content in a file without a .json name is detected.
    assert_eq!(parse_manifests("net.yaml", NET_JSON).unwrap(), one);
    assert!(
        parse_manifests("empty.json", r#"{"kind":"List","items":[]}"#)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn json_errors_have_locations() {
    let err = parse_manifests("net.json", "{\n  \"kind\": \"Network\",\n  oops\n}").unwrap_err();
    assert!(matches!(err.kind, ManifestErrorKind::Syntax(_)));
    assert_eq!(
        (err.document, err.line, err.column),
        (None, Some(3), Some(3))
    );
    assert!(
        err.to_string()
            .starts_with("net.json: key must be a string at line 3"),
        "{err}"
    );

    let text = NET_JSON.replace("\"cidr\"", "\"cdir\"");
    let err = parse_manifests("net.json", &text).unwrap_err();
    assert_eq!(err.line, Some(5), "{err}");
    assert!(
        err.to_string().starts_with(
            "net.json (line 5, column 17): Network demo/lan: spec.cdir: unknown field \"cdir\""
        ),
        "{err}"
    );
}

/// Every example manifest parses, defaults and validates cleanly.
#[test]
fn examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    let mut kinds = std::collections::BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let objs =
            parse_manifests(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!objs.is_empty(), "{}: no objects", path.display());
        for mut o in objs {
            o.apply_defaults();
            let errs = o.validate();
            assert!(
                errs.is_empty(),
                "{}: {}: {errs}",
                path.display(),
                o.display_name()
            );
            if o.scope() == crate::Scope::Project {
                assert_eq!(o.project(), "demo", "{}", o.display_name());
            } else {
                assert_eq!(
                    o.name(),
                    "demo",
                    "the example's only cluster object is its Project"
                );
            }
            kinds.insert(o.kind());
        }
    }
    for k in [
        "Network",
        "KeyPair",
        "SecurityGroup",
        "Image",
        "Instance",
        "Volume",
    ] {
        assert!(kinds.contains(k), "examples lack a {k}");
    }
}

/// Keep the `Defaults`/`Validate` imports honest for typed objects too.
#[test]
fn typed_objects_from_manifests() {
    let objs = parse_manifests("demo.yaml", TWO_DOCS).unwrap();
    let mut inst: crate::Instance = objs[1].clone().try_into().unwrap();
    inst.apply_defaults();
    assert!(inst.validate().is_empty());
    assert_eq!(inst.spec.instance_type.as_deref(), Some("m1.tiny"));
}
