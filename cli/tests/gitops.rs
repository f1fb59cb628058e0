//! GitOps with `apply --prune -l`: a directory evolves, the live state
//! follows it exactly, re-applying is a no-op, and objects that were not
//! applied are never pruned.

mod common;

use common::{names, owned, shared, write};
use serde_json::json;

const NETWORK: &str = "\
apiVersion: corral/v1
kind: Network
metadata:
  name: net
  project: gitops
  labels: {app: gitops}
spec:
  cidr: 10.10.0.0/24
";

fn group(name: &str, description: &str) -> String {
    format!(
        "apiVersion: corral/v1\nkind: SecurityGroup\nmetadata:\n  name: {name}\n  project: gitops\n  labels: {{app: gitops}}\nspec:\n  description: {description}\n  ingress:\n    - {{protocol: tcp, fromPort: 22, toPort: 22, cidr: 0.0.0.0/0}}\n"
    )
}

fn live(s: &common::Server) -> serde_json::Value {
    s.corral(&[
        "get",
        "securitygroups,networks",
        "-p",
        "gitops",
        "-l",
        "app=gitops",
        "-o",
        "json",
    ])
    .json()
}

fn description(list: &serde_json::Value, name: &str) -> String {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == name)
        .map(|i| i["spec"]["description"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn prune_follows_the_directory() {
    let s = shared();
    s.corral(&["project", "create", "gitops"]).ok();

    // Made by hand (POST), with the same label: never pruned.
    s.api(
        "POST",
        "/v1/projects/gitops/securitygroups",
        Some(json!({
            "apiVersion": "corral/v1", "kind": "SecurityGroup",
            "metadata": {"name": "manual", "labels": {"app": "gitops"}},
            "spec": {"description": "made by hand"}
        })),
    );

    // v1: a network and two groups.
    let v1 = s.scratch("v1");
    write(&v1, "00-network.yaml", NETWORK);
    write(
        &v1,
        "groups/10-groups.yaml",
        &format!("{}---\n{}", group("sg-a", "first"), group("sg-b", "second")),
    );
    let v1 = v1.to_str().unwrap();
    let out = s.corral(&["apply", "-f", v1, "--prune", "-l", "app=gitops"]);
    assert_eq!(
        out.lines(),
        [
            "network/net created",
            "securitygroup/sg-a created",
            "securitygroup/sg-b created"
        ],
        "{out:#?}"
    );
    out.ok();

    // v2: sg-a edited, sg-b removed, sg-c added.
    let v2 = s.scratch("v2");
    write(&v2, "00-network.yaml", NETWORK);
    write(
        &v2,
        "groups/10-groups.yaml",
        &format!(
            "{}---\n{}",
            group("sg-a", "first, edited"),
            group("sg-c", "third")
        ),
    );
    let v2 = v2.to_str().unwrap();
    let out = s.corral(&["apply", "-f", v2, "--prune", "-l", "app=gitops"]);
    assert_eq!(
        out.lines(),
        [
            "network/net unchanged",
            "securitygroup/sg-a configured",
            "securitygroup/sg-c created",
            "securitygroup/sg-b pruned"
        ],
        "{out:#?}"
    );
    out.ok();

    // Live state is v2 exactly (plus the hand-made object).
    let state = live(s);
    assert_eq!(names(&state), ["manual", "net", "sg-a", "sg-c"]);
    assert_eq!(description(&state, "sg-a"), "first, edited");
    assert_eq!(description(&state, "sg-c"), "third");
    assert_eq!(description(&state, "manual"), "made by hand");
    for item in state["items"].as_array().unwrap() {
        let applied = item["metadata"]["annotations"]["corral/applied"] == "true";
        assert_eq!(applied, item["metadata"]["name"] != "manual", "{item}");
    }

    // Third time: all unchanged, nothing pruned, nothing written.
    let out = s.corral(&["apply", "-f", v2, "--prune", "-l", "app=gitops"]);
    assert_eq!(
        out.lines(),
        [
            "network/net unchanged",
            "securitygroup/sg-a unchanged",
            "securitygroup/sg-c unchanged"
        ],
        "{out:#?}"
    );
    out.ok();
    assert_eq!(
        owned(&live(s)),
        owned(&state),
        "a no-op apply wrote something"
    );

    // diff agrees there is nothing to do.
    s.corral(&["diff", "-f", v2]).ok();

    // A server-side dry run of v1 would bring sg-b back and prune sg-c,
    // but writes nothing.
    let out = s.corral(&[
        "apply",
        "-f",
        v1,
        "--prune",
        "-l",
        "app=gitops",
        "--dry-run=server",
    ]);
    let text = out.ok();
    assert!(
        text.contains("securitygroup/sg-b created (dry run)"),
        "{text}"
    );
    assert!(
        text.contains("securitygroup/sg-c pruned (dry run)"),
        "{text}"
    );
    assert_eq!(owned(&live(s)), owned(&state), "a dry run wrote something");
}

#[test]
fn prune_needs_a_selector() {
    let s = shared();
    let dir = s.scratch("noselector");
    write(&dir, "n.yaml", NETWORK);
    let out = s.corral(&["apply", "-f", dir.to_str().unwrap(), "--prune"]);
    assert!(out.fails_with(2).contains("--prune needs a label selector"));
}

#[test]
fn apply_reads_stdin_and_fills_in_the_project() {
    let s = shared();
    s.corral(&["project", "create", "stdin"]).ok();
    let manifest = "apiVersion: corral/v1\nkind: KeyPair\nmetadata: {name: k}\nspec:\n  publicKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb t@x\n";
    let out = s.corral_stdin(&["apply", "-f", "-", "-p", "stdin"], manifest);
    assert_eq!(out.ok().trim(), "keypair/k created");
    let k = s
        .corral(&["get", "keypair", "k", "-p", "stdin", "-o", "json"])
        .json();
    assert_eq!(k["metadata"]["project"], "stdin");
    let out = s.corral_env(&["apply", "-f", "-"], &[("CORRAL_PROJECT", "stdin")]);
    // No stdin given (null): no objects is a usage error.
    out.fails_with(2);
}
