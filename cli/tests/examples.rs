//! The repository's example manifests through the real binary: apply,
//! re-apply, get in every output format, describe, delete; the two-node
//! example is admitted whole.

mod common;

use common::{names, owned, shared};

fn examples() -> String {
    format!("{}/../manifests/examples", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn examples_apply_get_describe_delete() {
    let s = shared();
    let dir = examples();

    let out = s.corral(&["apply", "-f", &dir]);
    let lines = out.lines();
    assert_eq!(
        lines,
        [
            "project/demo created",
            "network/lan created",
            "securitygroup/web created",
            "keypair/admin created",
            "image/tiny created",
            "volume/data created",
            "instance/web-1 created",
            "instance/web-2 created",
        ],
        "{out:#?}"
    );
    out.ok();

    // Again: nothing to do, nothing written (what apply owns is as it was;
    // controllers may be writing status meanwhile).
    let get_all = || {
        owned(
            &s.corral(&["get", "instances", "-p", "demo", "-o", "json"])
                .json(),
        )
    };
    let before = get_all();
    let out = s.corral(&["apply", "-f", &dir]);
    out.ok();
    assert_eq!(out.lines().len(), 8, "{out:#?}");
    assert!(
        out.lines().iter().all(|l| l.ends_with(" unchanged")),
        "{out:#?}"
    );
    assert_eq!(before, get_all(), "a no-op apply changed something");

    // Tables.
    let out = s.corral(&["get", "instances", "-p", "demo"]);
    let table = out.ok();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "NODE", "ADDRESS", "AGE"]);
    assert!(table.lines().any(|l| l.starts_with("web-1 ")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("web-2 ")), "{table}");
    let wide = s.corral(&["get", "inst", "-p", "demo", "-o", "wide"]);
    assert!(
        wide.ok().lines().next().unwrap().contains("TYPE"),
        "{wide:#?}"
    );
    assert!(wide.ok().contains("m1.tiny"), "{wide:#?}");
    // Every instance has its EC2 id, derived like the EC2 façade does.
    let ids: Vec<&str> = wide
        .ok()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(ids.len(), 2, "{wide:#?}");
    assert!(
        ids.iter().all(|id| id.starts_with("i-") && id.len() == 19),
        "{ids:?}"
    );
    let nets = s.corral(&["get", "net", "-p", "demo"]);
    assert!(nets.ok().contains("10.42.0.0/24"), "{nets:#?}");
    let types = s.corral(&["get", "instancetypes"]);
    assert!(types.ok().contains("m1.tiny"), "{types:#?}");
    let all = s.corral(&["get", "instances", "-A"]);
    assert!(all.ok().starts_with("PROJECT"), "{all:#?}");
    assert!(all.ok().lines().any(|l| l.starts_with("demo ")), "{all:#?}");

    // One object as JSON, YAML and name.
    let web1 = s
        .corral(&["get", "instance", "web-1", "-p", "demo", "-o", "json"])
        .json();
    assert_eq!(web1["kind"], "Instance");
    assert_eq!(web1["metadata"]["name"], "web-1");
    assert_eq!(web1["spec"]["instanceType"], "m1.tiny");
    assert_eq!(web1["spec"]["nics"][0]["network"], "lan");
    let yaml = s.corral(&["get", "instance/web-1", "-p", "demo", "-o", "yaml"]);
    assert!(yaml.ok().contains("name: web-1"), "{yaml:#?}");
    let name = s.corral(&["get", "instances", "-p", "demo", "-o", "name"]);
    assert_eq!(name.lines(), ["instance/web-1", "instance/web-2"]);
    let labelled = s
        .corral(&[
            "get",
            "instances",
            "-p",
            "demo",
            "-l",
            "app=web",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(names(&labelled), ["web-1", "web-2"]);
    assert_eq!(labelled["kind"], "List");

    // describe
    let d = s.corral(&["describe", "instance", "web-1", "-p", "demo"]);
    let text = d.ok();
    assert!(text.contains("Name:          web-1"), "{text}");
    assert!(text.contains("Project:       demo"), "{text}");
    assert!(text.contains("Labels:        app=web"), "{text}");
    assert!(text.contains("instanceType: m1.tiny"), "{text}");
    assert!(text.contains("Events:"), "{text}");

    // delete (waiting: a controller may hold it with a finalizer), then it
    // is gone.
    let out = s.corral(&["delete", "instance", "web-2", "-p", "demo", "--wait"]);
    assert_eq!(out.ok().trim(), "instance/web-2 deleted");
    let gone = s.corral(&["get", "instance", "web-2", "-p", "demo"]);
    let err = gone.fails_with(1);
    assert!(err.contains("instances \"web-2\" not found"), "{err}");
    let again = s.corral(&["delete", "instance", "web-2", "-p", "demo"]);
    assert!(again.fails_with(1).contains("not found"));
    s.corral(&[
        "delete",
        "instance",
        "web-2",
        "-p",
        "demo",
        "--ignore-not-found",
    ])
    .ok();

    // A missing object among found ones: the found are printed, exit 1.
    let mixed = s.corral(&[
        "get", "instance", "web-1", "web-2", "-p", "demo", "-o", "name",
    ]);
    assert_eq!(mixed.code, 1, "{mixed:#?}");
    assert_eq!(mixed.stdout.trim(), "instance/web-1");

    // Empty lists say so on stderr.
    let none = s.corral(&["get", "snapshots", "-p", "demo"]);
    assert!(none.ok().is_empty());
    assert!(
        none.stderr.contains("No resources found in project demo."),
        "{none:#?}"
    );

    // delete -f removes everything the manifests name (dependents first).
    let out = s.corral(&["delete", "-f", &dir, "--ignore-not-found"]);
    let lines = out.lines();
    assert_eq!(lines.first(), Some(&"instance/web-1 deleted"), "{out:#?}");
    assert_eq!(lines.last(), Some(&"project/demo deleted"), "{out:#?}");
}

/// manifests/two-nodes (what `./scripts/up --nodes 2` applies; rig.rs
/// boots it on the two-node rig) is admitted whole, re-applies to no
/// change, and places its guests in two zones of one overlay Network.
#[test]
fn two_nodes_example_applies() {
    let s = shared();
    let dir = format!("{}/../manifests/two-nodes", env!("CARGO_MANIFEST_DIR"));
    let out = s.corral(&["apply", "-f", &dir]);
    assert_eq!(
        out.lines(),
        [
            "project/two-nodes created",
            "network/lan created",
            "securitygroup/mesh created",
            "image/tiny created",
            "instance/a created",
            "instance/b created",
            "address/a-public created",
        ],
        "{out:#?}"
    );
    out.ok();
    let out = s.corral(&["apply", "-f", &dir]);
    out.ok();
    assert!(
        out.lines().len() == 7 && out.lines().iter().all(|l| l.ends_with(" unchanged")),
        "{out:#?}"
    );
    let get = |kind: &str, name: &str| {
        s.corral(&["get", kind, name, "-p", "two-nodes", "-o", "json"])
            .json()
    };
    assert_eq!(get("network", "lan")["spec"]["mode"], "overlay");
    assert_eq!(
        get("instance", "a")["spec"]["availabilityZone"],
        "corral-1a"
    );
    assert_eq!(
        get("instance", "b")["spec"]["availabilityZone"],
        "corral-1b"
    );
    assert_eq!(get("address", "a-public")["spec"]["pool"], "public");
    s.corral(&["delete", "-f", &dir, "--ignore-not-found"]).ok();
}

#[test]
fn unknown_kinds_and_usage_errors_exit_2() {
    let s = shared();
    let out = s.corral(&["get", "pods"]);
    assert!(out.fails_with(2).contains("unknown resource type \"pods\""));
    let out = s.corral(&["describe", "instance"]);
    out.fails_with(2);
    let out = s.corral(&["get", "--output", "toml", "instances"]);
    out.fails_with(2);
}

#[test]
fn completion_and_whoami() {
    let s = shared();
    let out = s.corral(&["completion", "bash"]);
    assert!(out.ok().contains("corral"), "{out:#?}");
    let out = s.corral(&["whoami"]);
    assert!(out.ok().contains("User:     admin"), "{out:#?}");
    assert!(out.ok().contains("Role:     admin"), "{out:#?}");
}

#[test]
fn unreachable_server_is_named() {
    let s = shared();
    let out = s.corral(&["get", "instances", "--server", "http://127.0.0.1:1"]);
    let err = out.fails_with(1);
    assert!(
        err.contains("cannot reach the Corral API at http://127.0.0.1:1 (is `corral up` running?)"),
        "{err}"
    );
}

#[test]
fn lists_follow_continue_tokens() {
    let s = shared();
    s.corral(&["project", "create", "paging"]).ok();
    let mut manifest = String::new();
    for i in 0..7 {
        manifest.push_str(&format!(
            "apiVersion: corral/v1\nkind: SecurityGroup\nmetadata: {{name: sg-{i}}}\nspec: {{description: group {i}}}\n---\n"
        ));
    }
    s.corral_stdin(&["apply", "-f", "-", "-p", "paging"], &manifest)
        .ok();
    let all = s
        .corral(&[
            "get",
            "sg",
            "-p",
            "paging",
            "--chunk-size",
            "2",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(
        names(&all),
        ["sg-0", "sg-1", "sg-2", "sg-3", "sg-4", "sg-5", "sg-6"]
    );
    let table = s.corral(&["get", "sg", "-p", "paging", "--chunk-size", "3"]);
    assert_eq!(table.lines().len(), 8, "{table:#?}");
}

#[test]
fn describe_shows_conditions_and_events() {
    let s = shared();
    s.corral(&["project", "create", "described"]).ok();
    s.api(
        "POST",
        "/v1/projects/described/volumes",
        Some(serde_json::json!({
            "apiVersion": "corral/v1", "kind": "Volume",
            "metadata": {"name": "data"},
            "spec": {"sizeGiB": 1}
        })),
    );
    let out = s.corral(&["describe", "volume", "data", "-p", "described"]);
    let text = out.ok();
    assert!(text.contains("Kind:          Volume"), "{text}");
    assert!(text.contains("Events:        <none>"), "{text}");
    assert!(text.contains("Conditions:    <none>"), "{text}");
    s.api(
        "PUT",
        "/v1/projects/described/volumes/data/status",
        Some(serde_json::json!({"metadata": {"name": "data"}, "status": {
            "phase": "available", "nodeName": "node-1",
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Bound",
                            "message": "on node-1"}]}})),
    );
    // Only the first is about this volume.
    for (name, kind, object, reason) in [
        ("data-scheduled", "Volume", "data", "Scheduled"),
        ("other", "Volume", "someone-else", "Pulled"),
        ("same-name", "Instance", "data", "Pulled"),
    ] {
        s.api(
            "POST",
            "/v1/projects/described/events",
            Some(serde_json::json!({
                "apiVersion": "corral/v1", "kind": "Event",
                "metadata": {"name": name},
                "spec": {"involvedObject": {"kind": kind, "name": object},
                         "reason": reason, "message": format!("{object} {reason}"),
                         "type": "Normal", "count": 3}
            })),
        );
    }
    let out = s.corral(&["describe", "vol/data", "-p", "described"]);
    let text = out.ok();
    // (The volume controller owns the phase; the node written stays.)
    assert!(
        text.contains("Status:\n") && text.contains("\n  nodeName: node-1\n"),
        "{text}"
    );
    let conditions = text.split("Conditions:\n").nth(1).unwrap_or("");
    assert!(
        conditions.contains("TYPE        STATUS   REASON   MESSAGE     AGE"),
        "{text}"
    );
    assert!(
        conditions.contains("Scheduled   True     Bound    on node-1"),
        "{text}"
    );
    let events = text.split("Events:\n").nth(1).unwrap_or("");
    assert!(events.contains("TYPE     REASON      AGE"), "{text}");
    assert!(events.contains("Normal   Scheduled"), "{text}");
    assert!(events.contains("(x3 over "), "{text}");
    assert!(events.contains("data Scheduled"), "{text}");
    assert!(!events.contains("Pulled"), "another object's event: {text}");
}
