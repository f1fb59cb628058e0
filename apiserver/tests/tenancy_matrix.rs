//! The tenancy matrix of the native API (ARCHITECTURE invariants 8 and 11):
//! for every kind and every verb, a member of project `a` touching project
//! `b` is refused, and `b`'s objects are byte-for-byte unchanged afterwards.
//!
//! Expected codes, as the server answers today:
//! - a project-scoped URL naming another project (`/v1/projects/b/...`),
//!   `/v1/apply` into it and the cross-project collections (`/v1/{plural}`):
//!   403, decided by `Principal::authorize` before any store access, so the
//!   answer is the same whether or not the object exists (no existence
//!   leak: asserted by asking for a name that does not exist too);
//! - the same name in the member's own project: 404 (`b`'s object is not
//!   there), and lists of `a` never show `b`'s objects;
//! - cluster kinds: members may read instance types, nodes and their own
//!   project only; every write is 403; another project is 403;
//! - node tokens: another node's Node, and instances/volumes/snapshots not
//!   bound to the node, answer 404 (as if absent); verbs a node never has
//!   (deleting, writing specs) answer 403.
//!
//! Over 600 lines on purpose: the matrix is one table (every kind × every
//! verb) read top to bottom; split, a missing row would be harder to see.

mod support;

use corral_api_types::auth::{Role, UserSpec};
use corral_api_types::{Scope, KINDS};
use corral_apiserver::auth::create_user;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{instance, objects, Api};

const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

/// Everything the admin sees of `b` (and of the cluster), object by object.
async fn snapshot(api: &Api) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for info in KINDS {
        let path = match info.scope {
            Scope::Project => format!("/v1/projects/b/{}", info.plural),
            Scope::Cluster => format!("/v1/{}", info.plural),
        };
        let (code, list) = api.get(&path).await;
        assert_eq!(code, StatusCode::OK, "{path}: {list}");
        for item in list["items"].as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap();
            out.push((format!("{path}/{name}"), item.clone()));
        }
    }
    out
}

async fn seed(api: &Api) -> (String, Vec<(&'static str, Value)>) {
    api.project("a", json!({})).await;
    api.project("b", json!({})).await;
    let alice = api.member("alice", "a").await;
    api.member("bob", "b").await;
    let objs = objects();
    for (plural, body) in &objs {
        let (code, created) = api
            .post(&format!("/v1/projects/b/{plural}"), body.clone())
            .await;
        assert_eq!(code, StatusCode::CREATED, "{plural}: {created}");
    }
    (alice, objs)
}

fn name_of(body: &Value) -> &str {
    body["metadata"]["name"].as_str().unwrap()
}

async fn a_member_cannot_touch_another_project(api: Api) {
    let (alice, objs) = seed(&api).await;
    let before = snapshot(&api).await;
    assert!(before.len() >= objs.len(), "{before:?}");

    let project_kinds: Vec<_> = KINDS.iter().filter(|k| k.scope == Scope::Project).collect();
    // Every project kind is in the table: a new kind must join the matrix.
    assert_eq!(
        project_kinds.len(),
        objs.len(),
        "a kind is missing from objects()"
    );

    let mut failures = Vec::new();
    let mut cases = 0;
    for (plural, body) in &objs {
        assert!(
            project_kinds.iter().any(|k| k.plural == *plural),
            "{plural}"
        );
        let name = name_of(body);
        let item = format!("/v1/projects/b/{plural}/{name}");
        let missing = format!("/v1/projects/b/{plural}/no-such-{name}");
        let mut moved = body.clone();
        moved["metadata"]["project"] = json!("b");
        let mut apply_q = body.clone();
        apply_q["metadata"]["name"] = json!(format!("{name}-new"));
        let mut with_status = body.clone();
        with_status["status"] = json!({});
        // (verb, method, path, body, expected)
        let table: Vec<(&str, Method, String, Option<Value>, StatusCode)> = vec![
            ("get", Method::GET, item.clone(), None, FORBIDDEN),
            (
                "get (absent name)",
                Method::GET,
                missing.clone(),
                None,
                FORBIDDEN,
            ),
            (
                "list",
                Method::GET,
                format!("/v1/projects/b/{plural}"),
                None,
                FORBIDDEN,
            ),
            (
                "list (all projects)",
                Method::GET,
                format!("/v1/{plural}"),
                None,
                FORBIDDEN,
            ),
            (
                "watch",
                Method::GET,
                format!("/v1/projects/b/{plural}?watch=true"),
                None,
                FORBIDDEN,
            ),
            (
                "watch (all projects)",
                Method::GET,
                format!("/v1/{plural}?watch=true"),
                None,
                FORBIDDEN,
            ),
            (
                "create into b",
                Method::POST,
                format!("/v1/projects/b/{plural}"),
                Some(apply_q.clone()),
                FORBIDDEN,
            ),
            (
                "replace",
                Method::PUT,
                item.clone(),
                Some(body.clone()),
                FORBIDDEN,
            ),
            (
                "replace (absent name)",
                Method::PUT,
                missing.clone(),
                Some(body.clone()),
                FORBIDDEN,
            ),
            (
                "status",
                Method::PUT,
                format!("{item}/status"),
                Some(with_status),
                FORBIDDEN,
            ),
            ("delete", Method::DELETE, item.clone(), None, FORBIDDEN),
            (
                "delete (absent name)",
                Method::DELETE,
                missing.clone(),
                None,
                FORBIDDEN,
            ),
            (
                "apply (metadata.project)",
                Method::POST,
                "/v1/apply".into(),
                Some(moved),
                FORBIDDEN,
            ),
            (
                "apply (?project=)",
                Method::POST,
                "/v1/apply?project=b".into(),
                Some(body.clone()),
                FORBIDDEN,
            ),
            (
                "dry-run delete",
                Method::DELETE,
                format!("{item}?dryRun=All"),
                None,
                FORBIDDEN,
            ),
            // In a's own project, b's object is simply not there.
            (
                "get in own project",
                Method::GET,
                format!("/v1/projects/a/{plural}/{name}"),
                None,
                NOT_FOUND,
            ),
            (
                "delete in own project",
                Method::DELETE,
                format!("/v1/projects/a/{plural}/{name}"),
                None,
                // Members never delete events (the system's record).
                if *plural == "events" {
                    FORBIDDEN
                } else {
                    NOT_FOUND
                },
            ),
        ];
        for (verb, method, path, req, want) in table {
            cases += 1;
            let (code, got) = api.call(&alice, method, &path, req).await;
            if code != want {
                failures.push(format!("{verb} {path}: want {want}, got {code} {got}"));
            } else if want == FORBIDDEN && got["reason"] != "Forbidden" {
                failures.push(format!("{verb} {path}: reason {got}"));
            }
        }
        // a's list never shows b's objects.
        let (code, list) = api
            .call(
                &alice,
                Method::GET,
                &format!("/v1/projects/a/{plural}"),
                None,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{list}");
        assert_eq!(list["items"], json!([]), "{plural}: {list}");
    }

    // Content endpoints.
    let content: Vec<(&str, Method, &str)> = vec![
        (
            "image content get",
            Method::GET,
            "/v1/projects/b/images/tiny/content",
        ),
        (
            "image content put",
            Method::PUT,
            "/v1/projects/b/images/tiny/content",
        ),
        (
            "console get",
            Method::GET,
            "/v1/projects/b/instances/web/console",
        ),
        (
            "console put",
            Method::PUT,
            "/v1/projects/b/instances/web/console",
        ),
        (
            "console delete",
            Method::DELETE,
            "/v1/projects/b/instances/web/console",
        ),
    ];
    for (verb, method, path) in content {
        cases += 1;
        let resp = api
            .http
            .request(method, format!("{}{path}", api.base))
            .bearer_auth(&alice)
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 16])
            .send()
            .await
            .unwrap();
        let code = resp.status();
        if code != FORBIDDEN {
            failures.push(format!("{verb} {path}: want 403, got {code}"));
        }
    }

    // Cluster kinds: the other project itself, and writes.
    let project_b = json!({"kind": "Project", "metadata": {"name": "b"}, "spec": {"quotas": {}}});
    let cluster: Vec<(&str, Method, &str, Option<Value>, StatusCode)> = vec![
        (
            "get project",
            Method::GET,
            "/v1/projects/b",
            None,
            FORBIDDEN,
        ),
        (
            "project status",
            Method::GET,
            "/v1/projects/b/status",
            None,
            FORBIDDEN,
        ),
        (
            "replace project",
            Method::PUT,
            "/v1/projects/b",
            Some(project_b.clone()),
            FORBIDDEN,
        ),
        (
            "delete project",
            Method::DELETE,
            "/v1/projects/b",
            None,
            FORBIDDEN,
        ),
        (
            "apply project",
            Method::POST,
            "/v1/apply",
            Some(project_b),
            FORBIDDEN,
        ),
        (
            "create project",
            Method::POST,
            "/v1/projects",
            Some(json!({"metadata": {"name": "c"}, "spec": {"quotas": {}}})),
            FORBIDDEN,
        ),
        (
            "create node",
            Method::POST,
            "/v1/nodes",
            Some(json!({"kind": "Node", "metadata": {"name": "evil"}, "spec": {}})),
            FORBIDDEN,
        ),
        (
            "create instance type",
            Method::POST,
            "/v1/instancetypes",
            Some(
                json!({"kind": "InstanceType", "metadata": {"name": "huge"}, "spec": {"vcpus": 1, "memoryMiB": 512, "diskGiB": 1}}),
            ),
            FORBIDDEN,
        ),
        (
            "delete instance type",
            Method::DELETE,
            "/v1/instancetypes/m1.tiny",
            None,
            FORBIDDEN,
        ),
        ("users", Method::GET, "/v1/users", None, FORBIDDEN),
        ("b's user", Method::GET, "/v1/users/bob", None, FORBIDDEN),
        (
            "b's user's token",
            Method::POST,
            "/v1/users/bob/tokens",
            Some(json!({})),
            FORBIDDEN,
        ),
        (
            "b's user's keys",
            Method::POST,
            "/v1/users/bob/accesskeys",
            Some(json!({})),
            FORBIDDEN,
        ),
        (
            "b's user's credentials",
            Method::POST,
            "/v1/users/bob/credentials",
            Some(json!({})),
            FORBIDDEN,
        ),
    ];
    for (verb, method, path, req, want) in cluster {
        cases += 1;
        let (code, got) = api.call(&alice, method, path, req).await;
        if code != want {
            failures.push(format!("{verb} {path}: want {want}, got {code} {got}"));
        }
    }
    // The projects list shows a's own project only.
    let (code, list) = api.call(&alice, Method::GET, "/v1/projects", None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(name_of)
        .collect();
    assert_eq!(names, ["a"], "{list}");

    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = snapshot(&api).await;
    assert_eq!(before, after, "b's objects changed");
}

async fn node_user(api: &Api, user: &str, node: &str) -> String {
    create_user(
        &api.store,
        user,
        UserSpec {
            role: Role::Node,
            node_name: node.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .token
}

/// Binds `plural/name` in `b` to `node` (status.nodeName), as the admin.
async fn bind(api: &Api, plural: &str, name: &str, node: &str) {
    let path = format!("/v1/projects/b/{plural}/{name}");
    let (_, mut obj) = api.get(&path).await;
    obj["status"]["nodeName"] = json!(node);
    let (code, body) = api.put(&format!("{path}/status"), obj).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

async fn a_node_touches_only_its_own(api: Api) {
    api.project("b", json!({})).await;
    for n in ["n1", "n2"] {
        let (code, body) = api
            .post(
                "/v1/nodes",
                json!({"kind": "Node", "metadata": {"name": n}, "spec": {}}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    for (plural, body) in objects() {
        if [
            "networks",
            "securitygroups",
            "keypairs",
            "images",
            "volumes",
            "instances",
            "snapshots",
        ]
        .contains(&plural)
        {
            let (code, created) = api.post(&format!("/v1/projects/b/{plural}"), body).await;
            assert_eq!(code, StatusCode::CREATED, "{created}");
        }
    }
    for plural in ["volumes", "instances", "snapshots"] {
        let (_, mut obj) = api.get(&format!("/v1/projects/b/{plural}")).await;
        let name = obj["items"][0]["metadata"]["name"].take();
        bind(&api, plural, name.as_str().unwrap(), "n2").await;
    }
    let n1 = node_user(&api, "node-n1", "n1").await;
    let before = snapshot(&api).await;

    let (_, node2) = api.get("/v1/nodes/n2").await;
    let (_, web) = api.get("/v1/projects/b/instances/web").await;
    let mut failures = Vec::new();
    let table: Vec<(&str, Method, String, Option<Value>, StatusCode)> = vec![
        // Agents write no events: none may be forged about others' objects.
        (
            "create an event",
            Method::POST,
            "/v1/projects/b/events".into(),
            Some(
                json!({"metadata": {"name": "forged"}, "involvedObject": {"kind": "Instance", "name": "web"}, "reason": "Forged", "message": "x"}),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "list events",
            Method::GET,
            "/v1/projects/b/events".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "get other node",
            Method::GET,
            "/v1/nodes/n2".into(),
            None,
            NOT_FOUND,
        ),
        (
            "replace other node",
            Method::PUT,
            "/v1/nodes/n2".into(),
            Some(node2.clone()),
            NOT_FOUND,
        ),
        (
            "other node's status",
            Method::PUT,
            "/v1/nodes/n2/status".into(),
            Some(node2.clone()),
            NOT_FOUND,
        ),
        (
            "delete other node",
            Method::DELETE,
            "/v1/nodes/n2".into(),
            None,
            FORBIDDEN,
        ),
        (
            "delete own node",
            Method::DELETE,
            "/v1/nodes/n1".into(),
            None,
            FORBIDDEN,
        ),
        (
            "create another node",
            Method::POST,
            "/v1/nodes".into(),
            Some(json!({"kind": "Node", "metadata": {"name": "n3"}, "spec": {}})),
            NOT_FOUND,
        ),
        (
            "get unbound instance",
            Method::GET,
            "/v1/projects/b/instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "status of unbound instance",
            Method::PUT,
            "/v1/projects/b/instances/web/status".into(),
            Some(web.clone()),
            NOT_FOUND,
        ),
        (
            "replace instance spec",
            Method::PUT,
            "/v1/projects/b/instances/web".into(),
            Some(web.clone()),
            FORBIDDEN,
        ),
        (
            "delete instance",
            Method::DELETE,
            "/v1/projects/b/instances/web".into(),
            None,
            FORBIDDEN,
        ),
        (
            "create instance",
            Method::POST,
            "/v1/projects/b/instances".into(),
            Some(instance("x", "m1.tiny")),
            FORBIDDEN,
        ),
        (
            "get unbound volume",
            Method::GET,
            "/v1/projects/b/volumes/data".into(),
            None,
            NOT_FOUND,
        ),
        (
            "get unbound snapshot",
            Method::GET,
            "/v1/projects/b/snapshots/snap".into(),
            None,
            NOT_FOUND,
        ),
        (
            "console of unbound instance",
            Method::PUT,
            "/v1/projects/b/instances/web/console".into(),
            Some(json!("x")),
            NOT_FOUND,
        ),
        (
            "delete console of unbound instance",
            Method::DELETE,
            "/v1/projects/b/instances/web/console".into(),
            None,
            NOT_FOUND,
        ),
        (
            "write a network",
            Method::PUT,
            "/v1/projects/b/networks/lan".into(),
            Some(objects()[0].1.clone()),
            FORBIDDEN,
        ),
        (
            "apply a network",
            Method::POST,
            "/v1/apply?project=b".into(),
            Some(objects()[0].1.clone()),
            FORBIDDEN,
        ),
        (
            "upload an image",
            Method::PUT,
            "/v1/projects/b/images/tiny/content".into(),
            Some(json!("x")),
            FORBIDDEN,
        ),
        (
            "get a network, naming no reason",
            Method::GET,
            "/v1/projects/b/networks/lan".into(),
            None,
            FORBIDDEN,
        ),
        (
            "get a network for another node's instance",
            Method::GET,
            "/v1/projects/b/networks/lan?for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "get a group for another node's instance",
            Method::GET,
            "/v1/projects/b/securitygroups/web?for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "get a key pair for another node's instance",
            Method::GET,
            "/v1/projects/b/keypairs/admin?for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "get an image for another node's instance",
            Method::GET,
            "/v1/projects/b/images/tiny?for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "image bytes for another node's instance",
            Method::GET,
            "/v1/projects/b/images/tiny/content?for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "get an image for another node's volume",
            Method::GET,
            "/v1/projects/b/images/tiny?for=volumes/data".into(),
            None,
            NOT_FOUND,
        ),
        (
            "list networks",
            Method::GET,
            "/v1/projects/b/networks".into(),
            None,
            FORBIDDEN,
        ),
        (
            "list one network for another node's instance",
            Method::GET,
            "/v1/projects/b/networks?fieldSelector=metadata.name=lan&for=instances/web".into(),
            None,
            NOT_FOUND,
        ),
        (
            "watch one network for another node's instance",
            Method::GET,
            "/v1/projects/b/networks?watch=true&fieldSelector=metadata.name=lan&for=instances/web"
                .into(),
            None,
            NOT_FOUND,
        ),
        (
            "list security groups",
            Method::GET,
            "/v1/projects/b/securitygroups".into(),
            None,
            FORBIDDEN,
        ),
        (
            "list key pairs",
            Method::GET,
            "/v1/projects/b/keypairs".into(),
            None,
            FORBIDDEN,
        ),
        (
            "list images",
            Method::GET,
            "/v1/projects/b/images".into(),
            None,
            FORBIDDEN,
        ),
        (
            "list networks everywhere",
            Method::GET,
            "/v1/networks".into(),
            None,
            FORBIDDEN,
        ),
        (
            "get an address",
            Method::GET,
            "/v1/projects/b/addresses/eip".into(),
            None,
            FORBIDDEN,
        ),
        (
            "list addresses",
            Method::GET,
            "/v1/projects/b/addresses".into(),
            None,
            FORBIDDEN,
        ),
        ("users", Method::GET, "/v1/users".into(), None, FORBIDDEN),
        (
            "projects",
            Method::GET,
            "/v1/projects/b".into(),
            None,
            FORBIDDEN,
        ),
    ];
    let cases = table.len();
    for (verb, method, path, req, want) in table {
        let (code, got) = api.call(&n1, method, &path, req).await;
        if code != want {
            failures.push(format!("{verb} {path}: want {want}, got {code} {got}"));
        }
    }
    // Lists are narrowed to the node: nothing of n2's.
    for path in [
        "/v1/instances",
        "/v1/volumes",
        "/v1/snapshots",
        "/v1/projects/b/instances",
        "/v1/projects/b/volumes",
    ] {
        let (code, list) = api.call(&n1, Method::GET, path, None).await;
        if code != StatusCode::OK || list["items"] != json!([]) {
            failures.push(format!("list {path}: {code} {list}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = snapshot(&api).await;
    assert_eq!(before, after, "objects changed");

    // Its own: allowed (so the refusals above are about ownership).
    let (_, mut node1) = api.get("/v1/nodes/n1").await;
    node1["status"]["conditions"] = json!([]);
    let (code, body) = api
        .call(&n1, Method::PUT, "/v1/nodes/n1/status", Some(node1))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    bind(&api, "instances", "web", "n1").await;
    let (code, mut web) = api
        .call(&n1, Method::GET, "/v1/projects/b/instances/web", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{web}");
    // What its instance uses, for that instance: readable; what it does
    // not use, not, even in the same project.
    let (code, body) = api
        .post(
            "/v1/projects/b/networks",
            json!({"kind": "Network", "metadata": {"name": "unused"}, "spec": {"cidr": "10.71.0.0/24"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    for (path, want) in [
        ("networks/lan", StatusCode::OK),
        ("securitygroups/web", StatusCode::OK),
        ("keypairs/admin", StatusCode::OK),
        ("images/tiny", StatusCode::OK),
        ("networks/unused", StatusCode::FORBIDDEN),
        ("networks/nonexistent", StatusCode::FORBIDDEN),
    ] {
        let full = format!("/v1/projects/b/{path}?for=instances/web");
        let (code, body) = api.call(&n1, Method::GET, &full, None).await;
        assert_eq!(code, want, "{full}: {body}");
    }
    // One network at a time, for its instance, as a list (and so a
    // watch): exactly that object; a wider selector, or a network the
    // instance does not use, is refused.
    let one = "/v1/projects/b/networks?fieldSelector=metadata.name=lan&for=instances/web";
    let (code, body) = api.call(&n1, Method::GET, one, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let items = body["items"].as_array().expect("a list");
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["metadata"]["name"], "lan");
    for (path, want) in [
        (
            "networks?fieldSelector=metadata.name=unused&for=instances/web",
            StatusCode::FORBIDDEN,
        ),
        (
            "networks?fieldSelector=metadata.name=lan,metadata.name!=x&for=instances/web",
            StatusCode::FORBIDDEN,
        ),
        (
            "networks?fieldSelector=metadata.name=lan",
            StatusCode::FORBIDDEN,
        ),
        ("networks?for=instances/web", StatusCode::FORBIDDEN),
    ] {
        let full = format!("/v1/projects/b/{path}");
        let (code, body) = api.call(&n1, Method::GET, &full, None).await;
        assert_eq!(code, want, "{full}: {body}");
    }
    // A group one of its groups names as a rule's source: its members are
    // the rule's peers, so the agent reads it too; before the rule, not.
    let (code, body) = api
        .post(
            "/v1/projects/b/securitygroups",
            json!({"kind": "SecurityGroup", "metadata": {"name": "peers"}, "spec": {"description": "x"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let peers = "/v1/projects/b/securitygroups/peers?for=instances/web";
    let (code, _) = api.call(&n1, Method::GET, peers, None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (_, mut sg) = api.get("/v1/projects/b/securitygroups/web").await;
    sg["spec"]["ingress"] =
        json!([{"protocol": "tcp", "fromPort": 22, "toPort": 22, "sourceGroup": "peers"}]);
    let (code, body) = api.put("/v1/projects/b/securitygroups/web", sg).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = api.call(&n1, Method::GET, peers, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    web["status"]["message"] = json!("from n1");
    let (code, body) = api
        .call(
            &n1,
            Method::PUT,
            "/v1/projects/b/instances/web/status",
            Some(web),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // Rebinding it elsewhere through status would be writing n2's object.
    let (_, list) = api.call(&n1, Method::GET, "/v1/instances", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

/// Names in the watch events on `path` (bookmarks aside), read until
/// `until` shows up.
async fn watch_until(api: &Api, token: &str, path: &str, until: &str) -> Vec<String> {
    let mut resp = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let mut names = Vec::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("{until} never seen on {path}: {names:?}"))
            .unwrap()
            .expect("the watch stays open");
        buf.extend_from_slice(&chunk);
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            let Ok(e) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if e["type"] == "BOOKMARK" {
                continue;
            }
            let name = e["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let done = name == until;
            names.push(name);
            if done {
                return names;
            }
        }
    }
}

/// Watches carry nothing across the line: a member's watch of its own
/// project sees no event of another's, and a node's watch of instances
/// sees none bound elsewhere (or unbound).
async fn watches_stay_within_their_tenant(api: Api) {
    api.project("a", json!({})).await;
    api.project("b", json!({})).await;
    let alice = api.member("alice", "a").await;
    let watcher = watch_until(&api, &alice, "/v1/projects/a/networks?watch=true", "anet");
    let writer = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut n = objects()[0].1.clone();
        n["metadata"]["name"] = json!("bnet");
        let (code, _) = api.post("/v1/projects/b/networks", n.clone()).await;
        assert_eq!(code, StatusCode::CREATED);
        n["metadata"]["name"] = json!("anet");
        let (code, _) = api.post("/v1/projects/a/networks", n).await;
        assert_eq!(code, StatusCode::CREATED);
    };
    let (names, ()) = tokio::join!(watcher, writer);
    assert_eq!(names, ["anet"], "a's watch saw {names:?}");

    for n in ["n1", "n2"] {
        let (code, body) = api
            .post(
                "/v1/nodes",
                json!({"kind": "Node", "metadata": {"name": n}, "spec": {}}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let n1 = node_user(&api, "node-n1", "n1").await;
    let watcher = watch_until(&api, &n1, "/v1/instances?watch=true", "mine");
    let writer = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for (name, node) in [
            ("unbound", None),
            ("other", Some("n2")),
            ("mine", Some("n1")),
        ] {
            let (code, body) = api
                .post("/v1/projects/b/instances", instance(name, "m1.tiny"))
                .await;
            assert_eq!(code, StatusCode::CREATED, "{body}");
            if let Some(node) = node {
                bind(&api, "instances", name, node).await;
            }
        }
    };
    let (names, ()) = tokio::join!(watcher, writer);
    assert_eq!(names, ["mine"], "n1's watch saw {names:?}");
}

/// Events are the system's record: a member reads its project's but may
/// neither forge nor erase them (nor fill the store with them).
async fn a_member_reads_events_but_does_not_write_them(api: Api) {
    api.project("ev", json!({})).await;
    let mia = api.member("mia", "ev").await;
    let event = json!({"kind": "Event", "metadata": {"name": "e1"},
        "spec": {"involvedObject": {"kind": "Instance", "name": "web"}, "reason": "Forged",
                 "message": "x", "type": "Normal"}});
    let (code, body) = api.post("/v1/projects/ev/events", event.clone()).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "admins (and controllers) write: {body}"
    );
    let path = "/v1/projects/ev/events";
    let (code, body) = api.call(&mia, Method::GET, path, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["metadata"]["name"], "e1");
    let mut forged = event.clone();
    forged["metadata"]["name"] = json!("e2");
    for (method, path, body) in [
        (Method::POST, path.to_string(), Some(forged)),
        (Method::PUT, format!("{path}/e1"), Some(event.clone())),
        (Method::DELETE, format!("{path}/e1"), None),
    ] {
        let (code, answer) = api.call(&mia, method.clone(), &path, body).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("may not"),
            "{answer}"
        );
    }
    let (_, list) = api.get(path).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

on_both_backends!(
    a_member_reads_events_but_does_not_write_them,
    a_member_cannot_touch_another_project,
    a_node_touches_only_its_own,
    watches_stay_within_their_tenant
);
