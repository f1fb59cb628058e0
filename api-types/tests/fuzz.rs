//! Property tests (bounded fuzzing) of the manifest parser and the
//! validators: any text parses to objects or an error (never a panic);
//! mutated example manifests validate without panicking and round-trip;
//! hostile characters are refused in names and kept verbatim where free
//! text is legal (tags, descriptions, user data).
//!
//! Case counts are fixed per property; `PROPTEST_CASES` raises them.

use corral_api_types::{parse_manifests, AnyObject, KINDS};
use proptest::prelude::*;
use serde_json::Value;

const EXAMPLES: &[(&str, &str)] = &[
    (
        "00-network.yaml",
        include_str!("../../manifests/examples/00-network.yaml"),
    ),
    (
        "00-project.yaml",
        include_str!("../../manifests/examples/00-project.yaml"),
    ),
    (
        "10-keypair.yaml",
        include_str!("../../manifests/examples/10-keypair.yaml"),
    ),
    (
        "20-securitygroup.yaml",
        include_str!("../../manifests/examples/20-securitygroup.yaml"),
    ),
    (
        "30-image.yaml",
        include_str!("../../manifests/examples/30-image.yaml"),
    ),
    (
        "40-volume.yaml",
        include_str!("../../manifests/examples/40-volume.yaml"),
    ),
    (
        "50-instances.yaml",
        include_str!("../../manifests/examples/50-instances.yaml"),
    ),
];

/// The strings injection tests use: path traversal, quotes, markup, shell.
pub const HOSTILE: &[&str] = &[
    "../../etc/passwd",
    "a'b",
    "<domain>",
    "$(reboot)",
    "line\nbreak",
    "`id`",
    "a;rm -rf /",
    "x\"y",
    "&amp;",
    "\u{0}nul",
];

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(n),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn examples() -> Vec<AnyObject> {
    EXAMPLES
        .iter()
        .flat_map(|(name, text)| parse_manifests(name, text).expect("examples parse"))
        .collect()
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,30}".prop_map(Value::String),
        proptest::sample::select(HOSTILE).prop_map(|s| Value::String(s.to_string())),
        "[a-z0-9-]{0,70}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (as keys/indices) to a node of `v`.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(k.clone());
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(i.to_string());
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn set(v: &mut Value, path: &[String], new: Value) {
    let mut at = v;
    for p in path {
        at = match at {
            Value::Object(m) => m.get_mut(p).expect("path exists"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => unreachable!("paths only go through containers"),
        };
    }
    *at = new;
}

/// Everything a caller may do with parsed objects, none of which may panic.
fn exercise(objects: &mut [AnyObject]) {
    for o in objects.iter_mut() {
        o.apply_defaults();
        let _ = o.validate();
        let _ = o.validate_update(&o.clone());
        let _ = o.to_json_value();
        let _ = o.spec_json_value();
    }
}

proptest! {
    #![proptest_config(cases(2048))]

    /// Arbitrary text, as YAML and as JSON.
    #[test]
    fn any_text_parses_or_errs(text in ".{0,400}") {
        for name in ["x.yaml", "x.json", "-"] {
            if let Ok(mut objs) = parse_manifests(name, &text) {
                exercise(&mut objs);
            }
        }
    }

    /// Text that looks like a manifest (documents, kinds, nesting).
    #[test]
    fn manifest_shaped_text_parses_or_errs(kind in proptest::sample::select(KINDS.iter().map(|k| k.kind).collect::<Vec<_>>()),
                                           body in json_value(), docs in 1usize..4) {
        let doc = serde_json::json!({"apiVersion": "corral/v1", "kind": kind, "metadata": {"name": "x"}, "spec": body});
        let yaml = yaml_serde::to_string(&doc).unwrap();
        let text = vec![yaml; docs].join("---\n");
        if let Ok(mut objs) = parse_manifests("x.yaml", &text) {
            prop_assert_eq!(objs.len(), docs);
            exercise(&mut objs);
        }
        if let Ok(mut objs) = parse_manifests("x.json", &doc.to_string()) {
            exercise(&mut objs);
        }
    }

    /// One node of an example replaced by anything: a clean error or an
    /// object that validates without panicking; valid objects round-trip.
    #[test]
    fn mutated_examples_validate_and_round_trip(which in any::<prop::sample::Index>(),
                                                at in any::<prop::sample::Index>(),
                                                new in json_value()) {
        let all = examples();
        let original = &all[which.index(all.len())];
        let mut v = original.to_json_value();
        let mut ps = Vec::new();
        paths(&v, &mut Vec::new(), &mut ps);
        let path = &ps[at.index(ps.len())];
        set(&mut v, path, new);
        let text = yaml_serde::to_string(&v).unwrap();
        match parse_manifests("m.yaml", &text) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(mut objs) => {
                exercise(&mut objs);
                for o in &objs {
                    if o.validate().is_empty() {
                        let again = parse_manifests("r.json", &o.to_json_value().to_string()).unwrap();
                        prop_assert_eq!(again[0].to_json_value(), o.to_json_value());
                    }
                }
            }
        }
    }

    /// Names with path, quote, markup or shell characters are refused for
    /// every kind; the same characters in tags and descriptions are kept
    /// as they are (they are escaped where they are used, never trusted).
    #[test]
    fn hostile_names_are_refused_and_free_text_kept(hostile in proptest::sample::select(HOSTILE),
                                                    prefix in "[a-z]{0,5}") {
        let name = format!("{prefix}{hostile}");
        for info in KINDS.iter() {
            let doc = serde_json::json!({"apiVersion": "corral/v1", "kind": info.kind, "metadata": {"name": name}, "spec": {}});
            if let Ok(objs) = parse_manifests("n.json", &doc.to_string()) {
                let errs = objs[0].validate();
                prop_assert!(errs.0.iter().any(|e| e.path == "metadata.name"), "{} {:?}: {}", info.kind, name, errs);
            }
        }
        let text = format!(
            "apiVersion: corral/v1\nkind: Volume\nmetadata: {{name: v, project: p}}\nspec:\n  sizeGiB: 1\n  tags: {{t: {}}}\n",
            serde_json::to_string(&name).unwrap()
        );
        let objs = parse_manifests("t.yaml", &text);
        // A NUL is not valid YAML text; everything else parses and is kept.
        if !name.contains('\u{0}') {
            let objs = objs.unwrap();
            let spec = objs[0].spec_json_value();
            prop_assert_eq!(spec["tags"]["t"].as_str(), Some(name.as_str()));
        }
    }
}
