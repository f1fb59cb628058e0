//! Property tests (bounded fuzzing) of the native API's JSON and YAML
//! bodies: arbitrary values, mutated valid objects and raw bytes sent to
//! create, replace, status and apply must be answered 2xx or 4xx — never
//! 5xx — and a rejected request (or a dry run) must leave every stored
//! byte as it was.
//!
//! One server on the embedded store (the body handling above the store is
//! the same on etcd); `PROPTEST_CASES` raises the case count.

mod support;

use corral_api_types::{parse_manifests, KINDS};
use corral_store::ListOptions;
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};
use support::Api;

const EXAMPLES: &[&str] = &[
    include_str!("../../manifests/examples/00-network.yaml"),
    include_str!("../../manifests/examples/10-keypair.yaml"),
    include_str!("../../manifests/examples/20-securitygroup.yaml"),
    include_str!("../../manifests/examples/30-image.yaml"),
    include_str!("../../manifests/examples/40-volume.yaml"),
    include_str!("../../manifests/examples/50-instances.yaml"),
];

const HOSTILE: &[&str] = &[
    "../../etc/passwd",
    "a'b",
    "<domain>",
    "$(reboot)",
    "line\nbreak",
    "\u{0}",
    "\u{202e}",
];

fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(n)
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(|f| {
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }),
        ".{0,20}".prop_map(Value::String),
        "[a-z0-9.-]{0,70}".prop_map(Value::String),
        proptest::sample::select(HOSTILE).prop_map(|s| Value::String(s.to_string())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-zA-Z]{0,10}",
                    proptest::sample::select(
                        &[
                            "apiVersion",
                            "kind",
                            "metadata",
                            "spec",
                            "status",
                            "name",
                            "project",
                            "labels",
                            "annotations",
                            "finalizers",
                            "resourceVersion",
                            "uid",
                            "generation",
                            "deletionTimestamp",
                            "ownerReferences",
                            "tags",
                            "sizeGiB",
                            "instanceType",
                            "cpus",
                            "memoryMiB",
                            "userData",
                            "nics",
                            "quotas",
                            "cidr",
                        ][..]
                    )
                    .prop_map(str::to_string),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn example_objects() -> Vec<Value> {
    EXAMPLES
        .iter()
        .flat_map(|t| parse_manifests("e.yaml", t).unwrap())
        .map(|o| o.to_json_value())
        .collect()
}

fn node_paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(k.clone());
                node_paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(i.to_string());
                node_paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], new: Value) {
    let mut at = v;
    for p in path {
        at = match at {
            Value::Object(m) => m.get_mut(p).expect("path exists"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => unreachable!(),
        };
    }
    *at = new;
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    /// An example object with one node replaced.
    Mutated(usize, prop::sample::Index, Value),
    Bytes(Vec<u8>, &'static str),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => json_value().prop_map(Body::Json),
        3 => (0usize..64, any::<prop::sample::Index>(), json_value())
            .prop_map(|(i, at, v)| Body::Mutated(i, at, v)),
        1 => (
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::sample::select(&["application/json", "application/yaml", "text/plain"][..])
        )
            .prop_map(|(b, ct)| Body::Bytes(b, ct)),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Create,
    Replace,
    Status,
    Apply,
}

/// Every stored byte (keys and values).
async fn snapshot(api: &Api) -> Vec<(String, Vec<u8>)> {
    let page = api
        .store
        .raw()
        .list("/corral/", ListOptions::default())
        .await
        .unwrap();
    page.items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

#[test]
fn arbitrary_bodies_get_4xx_and_change_nothing_when_rejected() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let examples = example_objects();
    let api = rt.block_on(async {
        let api = support::embedded().await;
        api.project(
            "demo",
            json!({"instances": 5, "volumes": 5, "volumeGiB": 100}),
        )
        .await;
        for o in &examples {
            let plural = corral_api_types::kind_info(o["kind"].as_str().unwrap())
                .unwrap()
                .plural;
            let (code, body) = api
                .post(&format!("/v1/projects/demo/{plural}"), o.clone())
                .await;
            assert!(code.is_success(), "{body}");
        }
        api
    });
    let plurals: Vec<&'static str> = KINDS.iter().map(|k| k.plural).collect();
    let strategy = (
        proptest::sample::select(plurals),
        proptest::sample::select(&[Verb::Create, Verb::Replace, Verb::Status, Verb::Apply][..]),
        body(),
        any::<bool>(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let n = std::sync::atomic::AtomicU64::new(0);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&strategy, |(plural, verb, body, dry_run)| {
            let (content_type, bytes, name) = match &body {
                Body::Json(v) => ("application/json", serde_json::to_vec(v).unwrap(), None),
                Body::Mutated(i, at, new) => {
                    let mut v = examples[i % examples.len()].clone();
                    let name = v["metadata"]["name"].as_str().map(str::to_string);
                    if matches!(verb, Verb::Create) {
                        // A new object, so creates get past "already exists".
                        let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        v["metadata"]["name"] = json!(format!("fuzz-{k}"));
                    }
                    let mut ps = Vec::new();
                    node_paths(&v, &mut Vec::new(), &mut ps);
                    let path = ps[at.index(ps.len())].clone();
                    replace_at(&mut v, &path, new.clone());
                    ("application/json", serde_json::to_vec(&v).unwrap(), name)
                }
                Body::Bytes(b, ct) => (*ct, b.clone(), None),
            };
            // A mutated object goes to its own kind's paths.
            let plural = match &body {
                Body::Mutated(i, ..) => {
                    let kind = examples[i % examples.len()]["kind"].as_str().unwrap_or("");
                    corral_api_types::kind_info(kind).map_or(plural, |k| k.plural)
                }
                _ => plural,
            };
            let info = corral_api_types::kind_info(plural).unwrap();
            let collection = match info.scope {
                corral_api_types::Scope::Project => format!("/v1/projects/demo/{plural}"),
                corral_api_types::Scope::Cluster => format!("/v1/{plural}"),
            };
            let name = name.unwrap_or_else(|| "web-1".to_string());
            let dry = if dry_run { "?dryRun=All" } else { "" };
            let (method, path) = match verb {
                Verb::Create => (Method::POST, format!("{collection}{dry}")),
                Verb::Replace => (Method::PUT, format!("{collection}/{name}{dry}")),
                Verb::Status => (Method::PUT, format!("{collection}/{name}/status")),
                Verb::Apply => (
                    Method::POST,
                    format!(
                        "/v1/apply?project=demo{}",
                        if dry_run { "&dryRun=All" } else { "" }
                    ),
                ),
            };
            let dry_run = dry_run && !matches!(verb, Verb::Status);
            let (before, (code, answer), after) = rt.block_on(async {
                let before = snapshot(&api).await;
                let r = api
                    .raw(method.clone(), &path, content_type, bytes.clone())
                    .await;
                let after = snapshot(&api).await;
                (before, r, after)
            });
            *seen.lock().unwrap().entry(code.as_u16()).or_default() += 1;
            prop_assert!(
                !code.is_server_error(),
                "{method} {path} {}: {code} {answer}",
                String::from_utf8_lossy(&bytes)
            );
            if code.is_client_error() || dry_run {
                prop_assert!(
                    before == after,
                    "{method} {path} answered {code} but changed the store: {answer}"
                );
            }
            if code.is_client_error() {
                prop_assert_eq!(&answer["kind"], "Status", "{}", answer);
            }
            Ok(())
        })
        .unwrap();
    // What the cases got, for whoever reads the test output.
    eprintln!("answers by status: {:?}", seen.lock().unwrap());
}

/// Found by the fuzzer: a method a path does not take (PUT on
/// `/v1/projects/{name}/status`) was answered 405 with an empty body, not
/// a Status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_method_not_allowed_is_a_status() {
    let api = support::embedded().await;
    api.project("demo", json!({})).await;
    let (code, body) = api
        .raw(
            Method::PUT,
            "/v1/projects/demo/status",
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(code, reqwest::StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["reason"], "MethodNotAllowed");
}
