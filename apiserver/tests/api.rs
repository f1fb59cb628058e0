//! The native API over real HTTP, against both store backends (a real etcd
//! and the embedded file): semantics, admission, selectors, pagination,
//! watches, auth and tenancy.
//!
//! Over 600 lines on purpose: every case runs on both backends through one
//! `suite!` list at the end; the cases are independent functions, and the
//! list is the index.

mod support;

use std::time::Duration;

use corral_api_types::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{embedded, etcd, Api};

fn network(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "corral/v1", "kind": "Network", "metadata": {"name": name}, "spec": {"cidr": cidr, "mode": "nat"}})
}

fn instance(name: &str, labels: Value) -> Value {
    json!({
        "kind": "Instance",
        "metadata": {"name": name, "labels": labels},
        "spec": {"image": "tiny", "nics": [{"network": "lan"}]}
    })
}

fn causes(body: &Value) -> Vec<String> {
    body["details"]["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn crud_semantics(api: Api) {
    api.project("demo", json!({})).await;
    let base = "/v1/projects/demo/networks";
    let (code, created) = api.post(base, network("lan", "10.1.0.0/24")).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["project"], "demo");
    assert!(created["metadata"]["uid"].as_str().unwrap().len() > 10);
    // Defaulting ran on the server.
    assert_eq!(created["spec"]["gateway"], "10.1.0.1");
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, dup) = api.post(base, network("lan", "10.1.0.0/24")).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(dup["reason"], "AlreadyExists");

    let (code, got) = api.get(&format!("{base}/lan")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    // Labels change: no generation bump. Same body again: nothing written.
    let mut labelled = got.clone();
    labelled["metadata"]["labels"] = json!({"tier": "core"});
    let (code, l) = api.put(&format!("{base}/lan"), labelled.clone()).await;
    assert_eq!(code, StatusCode::OK, "{l}");
    assert_eq!(l["metadata"]["generation"], 1);
    let rv2 = l["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rv2, rv1);
    let (_, again) = api.put(&format!("{base}/lan"), l.clone()).await;
    assert_eq!(again["metadata"]["resourceVersion"], rv2.as_str());

    // Spec change bumps generation.
    let mut changed = l.clone();
    changed["spec"]["dnsServers"] = json!(["10.1.0.1"]);
    let (code, c) = api.put(&format!("{base}/lan"), changed).await;
    assert_eq!(code, StatusCode::OK, "{c}");
    assert_eq!(c["metadata"]["generation"], 2);

    // The stale version loses with 409 and a message that says so.
    let mut stale = l.clone();
    stale["spec"]["dnsServers"] = json!(["10.1.0.2"]);
    let (code, conflict) = api.put(&format!("{base}/lan"), stale).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("resourceVersion"),
        "{conflict}"
    );

    // A resourceVersion that is not one is 400 wherever it is sent, and
    // changes nothing.
    for junk in ["abc", "0", "-1"] {
        let mut bad = c.clone();
        bad["metadata"]["resourceVersion"] = json!(junk);
        bad["spec"]["dnsServers"] = json!(["10.1.0.3"]);
        let (code, body) = api.put(&format!("{base}/lan"), bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{junk}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("invalid resourceVersion"),
            "{body}"
        );
        let (code, body) = api
            .delete(&format!("{base}/lan?resourceVersion={junk}"))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "delete {junk}: {body}");
    }
    let (_, still) = api.get(&format!("{base}/lan")).await;
    assert_eq!(
        still["metadata"]["resourceVersion"],
        c["metadata"]["resourceVersion"]
    );

    // Immutable fields are refused with their path.
    let mut cidr = c.clone();
    cidr["spec"]["cidr"] = json!("10.9.0.0/24");
    cidr["spec"]["gateway"] = json!("10.9.0.1");
    let (code, imm) = api.put(&format!("{base}/lan"), cidr).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{imm}");
    assert!(causes(&imm).contains(&"spec.cidr".to_string()), "{imm}");

    // Status: ignored on the main resource, written on /status only.
    let mut with_status = c.clone();
    with_status["status"] = json!({"allocations": {"10.1.0.5": "x"}});
    let (_, ignored) = api.put(&format!("{base}/lan"), with_status.clone()).await;
    assert!(ignored.get("status").is_none(), "{ignored}");
    let (code, st) = api.put(&format!("{base}/lan/status"), with_status).await;
    assert_eq!(code, StatusCode::OK, "{st}");
    assert_eq!(st["status"]["allocations"]["10.1.0.5"], "x");
    assert_eq!(
        st["metadata"]["generation"], 2,
        "status does not bump generation"
    );
    let (_, st_get) = api.get(&format!("{base}/lan/status")).await;
    assert_eq!(st_get["status"]["allocations"]["10.1.0.5"], "x");

    // Delete, then it is gone.
    let (code, _) = api.delete(&format!("{base}/lan")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, nf) = api.get(&format!("{base}/lan")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(nf["reason"], "NotFound");
    // A project with objects in it cannot be deleted; an empty one can.
    api.post(base, network("keep", "10.11.0.0/24")).await;
    let (code, body) = api.delete("/v1/projects/demo").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("networks (keep)"),
        "{body}"
    );
    api.delete(&format!("{base}/keep")).await;
    let (code, body) = api.delete("/v1/projects/demo").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    api.project("demo", json!({})).await;
    // Cluster kinds have no project.
    let (code, body) = api
        .post(
            "/v1/apply",
            json!({"kind": "InstanceType", "metadata": {"name": "x1", "project": "demo"},
            "spec": {"vcpus": 1, "memoryMiB": 512, "rootDiskGiB": 1}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cluster-scoped"),
        "{body}"
    );
    let (code, _) = api.get("/v1/users/nobody/tokens").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api.get("/v1/users/nobody/accesskeys").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // A project that does not exist is a clear 404.
    let (code, np) = api
        .post("/v1/projects/nope/networks", network("x", "10.2.0.0/24"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        np["message"].as_str().unwrap().contains("project \"nope\""),
        "{np}"
    );
}

async fn admission_lists_every_problem(api: Api) {
    api.project("demo", json!({})).await;
    let bad = json!({
        "kind": "Instance",
        "metadata": {"name": "Bad_Name"},
        "spec": {"image": "tiny", "cpus": 0, "memoryMiB": 64, "nics": [{"network": "Not A Label"}]}
    });
    let (code, body) = api.post("/v1/projects/demo/instances", bad).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields = causes(&body);
    for want in ["metadata.name", "spec.cpus", "spec.nics[0].network"] {
        assert!(
            fields.iter().any(|f| f == want),
            "{want} missing in {fields:?}"
        );
    }
    // Unknown field at depth names its path.
    let unknown = json!({"kind": "Instance", "metadata": {"name": "a"},
        "spec": {"image": "tiny", "nics": [{"netwrok": "lan"}]}});
    let (code, body) = api.post("/v1/projects/demo/instances", unknown).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        causes(&body),
        vec!["spec.nics[0].netwrok".to_string()],
        "{body}"
    );
    // Wrong kind for the path.
    let (code, body) = api
        .post("/v1/projects/demo/volumes", network("n", "10.0.0.0/24"))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(causes(&body), vec!["kind".to_string()]);
    // Project in body must agree with the URL.
    let mut other = network("n", "10.0.0.0/24");
    other["metadata"]["project"] = json!("elsewhere");
    let (code, body) = api.post("/v1/projects/demo/networks", other).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(causes(&body), vec!["metadata.project".to_string()]);
    // References to objects that do not exist yet are accepted.
    let (code, body) = api
        .post("/v1/projects/demo/instances", instance("early", json!({})))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // Malformed JSON is a 400, a YAML body works.
    let resp = api
        .http
        .post(format!("{}/v1/projects/demo/networks", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api
        .http
        .post(format!("{}/v1/projects/demo/networks", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/yaml")
        .body("kind: Network\nmetadata:\n  name: y\nspec:\n  cidr: 10.3.0.0/16\n  mode: isolated\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Over the body limit: 413, not a crash.
    let huge = "x".repeat(5 * 1024 * 1024);
    let resp = api
        .http
        .post(format!("{}/v1/projects/demo/networks", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

async fn finalizers_hold_deletion(api: Api) {
    api.project("demo", json!({})).await;
    let mut n = network("held", "10.4.0.0/24");
    n["metadata"]["finalizers"] = json!(["corral/test"]);
    let (code, _) = api.post("/v1/projects/demo/networks", n).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, marked) = api.delete("/v1/projects/demo/networks/held").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    let (code, still) = api.get("/v1/projects/demo/networks/held").await;
    assert_eq!(code, StatusCode::OK);
    // No new finalizer once deleting.
    let mut add = still.clone();
    add["metadata"]["finalizers"] = json!(["corral/test", "corral/other"]);
    let (code, _) = api.put("/v1/projects/demo/networks/held", add).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    // Removing the last finalizer completes the deletion.
    let mut release = still.clone();
    release["metadata"]["finalizers"] = json!([]);
    let (code, body) = api.put("/v1/projects/demo/networks/held", release).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = api.get("/v1/projects/demo/networks/held").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

async fn list_selectors_and_pages(api: Api) {
    api.project("demo", json!({})).await;
    for i in 0..25 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let (code, b) = api
            .post(
                "/v1/projects/demo/instances",
                instance(
                    &format!("vm-{i:02}"),
                    json!({"tier": tier, "n": i.to_string()}),
                ),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{b}");
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = api.get("/v1/projects/demo/instances").await;
    assert_eq!(all["kind"], "InstanceList");
    assert_eq!(names(&all).len(), 25);
    let (_, web) = api
        .get("/v1/projects/demo/instances?labelSelector=tier%3Dweb")
        .await;
    assert_eq!(names(&web).len(), 13);
    let (_, notweb) = api
        .get("/v1/projects/demo/instances?labelSelector=tier!%3Dweb")
        .await;
    assert_eq!(names(&notweb).len(), 12);
    let (_, set) = api
        .get("/v1/projects/demo/instances?labelSelector=n%20in%20(1,2,3),tier%3Ddb")
        .await;
    assert_eq!(names(&set), vec!["vm-01", "vm-03"]);
    let (_, exists) = api
        .get("/v1/projects/demo/instances?labelSelector=!tier")
        .await;
    assert_eq!(names(&exists).len(), 0);
    let (_, by_name) = api
        .get("/v1/projects/demo/instances?fieldSelector=metadata.name%3Dvm-07")
        .await;
    assert_eq!(names(&by_name), vec!["vm-07"]);
    let (code, bad) = api
        .get("/v1/projects/demo/instances?labelSelector=a%20in%20b")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
    let (code, _) = api
        .get("/v1/projects/demo/instances?fieldSelector=spec.cpus%3D1")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // status.phase after a status write.
    let (_, vm3) = api.get("/v1/projects/demo/instances/vm-03").await;
    let mut vm3 = vm3;
    vm3["status"] = json!({"phase": "Running", "nodeName": "n1"});
    let (code, b) = api
        .put("/v1/projects/demo/instances/vm-03/status", vm3)
        .await;
    assert_eq!(code, StatusCode::OK, "{b}");
    let (_, running) = api
        .get("/v1/projects/demo/instances?fieldSelector=status.phase%3DRunning")
        .await;
    assert_eq!(names(&running), vec!["vm-03"]);
    let (_, on_n1) = api
        .get("/v1/projects/demo/instances?fieldSelector=status.nodeName%3Dn1")
        .await;
    assert_eq!(names(&on_n1), vec!["vm-03"]);

    // Pages of 10 with a filter: every match once, in order, last page
    // without a token.
    let mut seen = Vec::new();
    let mut path = "/v1/projects/demo/instances?limit=4&labelSelector=tier%3Dweb".to_string();
    let mut pages = 0;
    loop {
        let (code, page) = api.get(&path).await;
        assert_eq!(code, StatusCode::OK, "{page}");
        pages += 1;
        let got = names(&page);
        assert!(got.len() <= 4);
        seen.extend(got);
        match page["metadata"]["continue"].as_str() {
            Some(c) => {
                path = format!(
                    "/v1/projects/demo/instances?limit=4&labelSelector=tier%3Dweb&continue={c}"
                )
            }
            None => break,
        }
    }
    let want: Vec<String> = (0..25).step_by(2).map(|i| format!("vm-{i:02}")).collect();
    assert_eq!(seen, want);
    assert!(pages >= 4);
    let (code, _) = api.get("/v1/projects/demo/instances?limit=99999").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = api
        .get("/v1/projects/demo/instances?continue=garbage")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

/// Reads NDJSON watch events from a streaming response.
struct WatchReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchReader {
    async fn open(api: &Api, token: &str, path: &str) -> Result<WatchReader, (StatusCode, String)> {
        let resp = api
            .http
            .get(format!("{}{}", api.base, path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            let code = resp.status();
            return Err((code, resp.text().await.unwrap()));
        }
        Ok(WatchReader {
            resp,
            buf: Vec::new(),
        })
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("watch event within 10s")
                .unwrap()
                .expect("stream open");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Next event that is not a bookmark.
    async fn next_change(&mut self) -> Value {
        loop {
            let e = self.next().await;
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

async fn watch_streams(api: Api) {
    api.project("demo", json!({})).await;
    let base = "/v1/projects/demo/networks";
    api.post(base, network("pre", "10.5.0.0/24")).await;
    // Without a version: current objects as ADDED first.
    let mut w = WatchReader::open(
        &api,
        &api.admin,
        &format!("{base}?watch=true&heartbeatSeconds=1"),
    )
    .await
    .unwrap();
    let first = w.next_change().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["metadata"]["name"], "pre");
    let (_, a) = api.post(base, network("a", "10.6.0.0/24")).await;
    let mut a2 = a.clone();
    a2["metadata"]["labels"] = json!({"x": "y"});
    api.put(&format!("{base}/a"), a2).await;
    api.delete(&format!("{base}/a")).await;
    let e = w.next_change().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
    let e = w.next_change().await;
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(e["object"]["metadata"]["labels"]["x"], "y");
    let e = w.next_change().await;
    assert_eq!(e["type"], "DELETED");
    // Idle: a bookmark arrives within the heartbeat.
    let b = w.next().await;
    assert_eq!(b["type"], "BOOKMARK", "{b}");
    assert!(
        b["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );

    // From a version, with a label selector: leaving the selector is a
    // DELETED, entering it an ADDED.
    let rv = a["metadata"]["resourceVersion"].as_str().unwrap();
    let (_, c) = api.post(base, network("c", "10.7.0.0/24")).await;
    let rv_c = c["metadata"]["resourceVersion"].as_str().unwrap();
    let mut sel = WatchReader::open(
        &api,
        &api.admin,
        &format!("{base}?watch=true&resourceVersion={rv_c}&labelSelector=team%3Dblue"),
    )
    .await
    .unwrap();
    let mut blue = c.clone();
    blue["metadata"]["labels"] = json!({"team": "blue"});
    let (_, blue) = api.put(&format!("{base}/c"), blue).await;
    let mut red = blue.clone();
    red["metadata"]["labels"] = json!({"team": "red"});
    api.put(&format!("{base}/c"), red).await;
    let e = sel.next_change().await;
    assert_eq!(e["type"], "ADDED", "{e}");
    let e = sel.next_change().await;
    assert_eq!(e["type"], "DELETED", "{e}");
    let _ = rv;

    // A compacted version is 410 Gone.
    let current = api.store.raw().current_revision().await.unwrap();
    api.store.raw().compact(current).await.unwrap();
    let err = WatchReader::open(
        &api,
        &api.admin,
        &format!("{base}?watch=true&resourceVersion=2"),
    )
    .await
    .err()
    .expect("a compacted version cannot be watched");
    assert_eq!(err.0, StatusCode::GONE, "{}", err.1);
}

async fn tenancy_and_auth(api: Api) {
    api.project("a", json!({})).await;
    api.project("b", json!({})).await;
    let alice = api.member("alice", "a").await;
    let bob = api.member("bob", "b").await;
    let (code, _) = api
        .call(
            &bob,
            Method::POST,
            "/v1/projects/b/networks",
            Some(network("bnet", "10.8.0.0/24")),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);

    // Alice can work in a...
    let (code, body) = api
        .call(
            &alice,
            Method::POST,
            "/v1/projects/a/networks",
            Some(network("anet", "10.8.0.0/24")),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // ...and nothing in b, by any verb.
    let attempts: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/projects/b/networks", None),
        (Method::GET, "/v1/projects/b/networks?watch=true", None),
        (Method::GET, "/v1/projects/b/networks/bnet", None),
        (Method::GET, "/v1/projects/b/networks/bnet/status", None),
        (
            Method::POST,
            "/v1/projects/b/networks",
            Some(network("x", "10.9.0.0/24")),
        ),
        (
            Method::PUT,
            "/v1/projects/b/networks/bnet",
            Some(network("bnet", "10.8.0.0/24")),
        ),
        (
            Method::PUT,
            "/v1/projects/b/networks/bnet/status",
            Some(network("bnet", "10.8.0.0/24")),
        ),
        (Method::DELETE, "/v1/projects/b/networks/bnet", None),
        (Method::GET, "/v1/projects/b", None),
        (Method::GET, "/v1/networks", None),
        (Method::GET, "/v1/networks?watch=true", None),
        (
            Method::POST,
            "/v1/projects",
            Some(json!({"metadata": {"name": "c"}})),
        ),
        (Method::GET, "/v1/users", None),
        (Method::POST, "/v1/users/bob/tokens", None),
    ];
    for (method, path, body) in attempts {
        let (code, resp) = api.call(&alice, method.clone(), path, body).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {resp}");
    }
    // Apply into another project, named in the body.
    let mut sneaky = network("sneaky", "10.9.0.0/24");
    sneaky["metadata"]["project"] = json!("b");
    let (code, _) = api
        .call(&alice, Method::POST, "/v1/apply", Some(sneaky))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // Nothing of b changed.
    let (_, bnet) = api.get("/v1/projects/b/networks/bnet").await;
    assert_eq!(bnet["metadata"]["generation"], 1);
    let (_, list) = api.get("/v1/projects/b/networks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Members may read cluster catalogue kinds, and only their project.
    let (code, _) = api
        .call(&alice, Method::GET, "/v1/instancetypes", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (_, projects) = api.call(&alice, Method::GET, "/v1/projects", None).await;
    let names: Vec<&str> = projects["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a"]);

    // Authentication.
    let (code, _) = api
        .call("", Method::GET, "/v1/projects/a/networks", None)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = api
        .call("crl_bogus", Method::GET, "/v1/projects/a/networks", None)
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let resp = api
        .http
        .get(format!("{}/v1/projects/a/networks", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Token revocation takes effect.
    let (code, t) = api.post("/v1/users/alice/tokens", json!({})).await;
    assert_eq!(code, StatusCode::CREATED, "{t}");
    let second = t["token"].as_str().unwrap().to_string();
    let (code, _) = api.call(&second, Method::GET, "/v1/whoami", None).await;
    assert_eq!(code, StatusCode::OK);
    let (_, tokens) = api.get("/v1/users/alice/tokens").await;
    let ids: Vec<String> = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let hash = corral_apiserver::auth::token_hash(&second);
    let id = ids.iter().find(|i| hash.starts_with(i.as_str())).unwrap();
    let (code, _) = api.delete(&format!("/v1/users/alice/tokens/{id}")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api.call(&second, Method::GET, "/v1/whoami", None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = api.call(&alice, Method::GET, "/v1/whoami", None).await;
    assert_eq!(code, StatusCode::OK, "the other token still works");

    // Node agents see what is bound to them, and write only its status.
    let node = api.user("agent-n1", Role::Node, "", "n1").await;
    for (name, bound) in [("mine", "n1"), ("theirs", "n2")] {
        let (_, obj) = api
            .post("/v1/projects/a/instances", instance(name, json!({})))
            .await;
        let mut obj = obj;
        obj["status"] = json!({"nodeName": bound, "phase": "Scheduled"});
        api.put(&format!("/v1/projects/a/instances/{name}/status"), obj)
            .await;
    }
    let (code, list) = api.call(&node, Method::GET, "/v1/instances", None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mine"]);
    let (code, _) = api
        .call(&node, Method::GET, "/v1/projects/a/instances/theirs", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, mine) = api
        .call(&node, Method::GET, "/v1/projects/a/instances/mine", None)
        .await;
    let mut report = mine.clone();
    report["status"]["phase"] = json!("Running");
    let (code, b) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/mine/status",
            Some(report),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{b}");
    let (code, _) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/mine",
            Some(mine),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (_, theirs) = api.get("/v1/projects/a/instances/theirs").await;
    let (code, _) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/theirs/status",
            Some(theirs),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// A node agent's watch (`status.nodeName=<node>`) is sent only what is,
/// or was, on its node; its status writes may start from the shared
/// watch's copy of the object, and are then still checked like any other:
/// the node's reach, the revision, and nothing but status written.
async fn node_watches_and_status_writes(api: Api) {
    api.project("a", json!({})).await;
    let node = api.user("agent-n1", Role::Node, "", "n1").await;
    let mut made = Vec::new();
    for name in ["mine", "other"] {
        let (code, obj) = api
            .post("/v1/projects/a/instances", instance(name, json!({})))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{obj}");
        made.push(obj);
    }
    let mut w = WatchReader::open(
        &api,
        &node,
        "/v1/instances?watch=true&heartbeatSeconds=1&fieldSelector=status.nodeName%3Dn1",
    )
    .await
    .unwrap();
    let bind = |mut obj: Value, node: &str| {
        obj["status"] = json!({"nodeName": node, "phase": "Scheduled"});
        obj
    };
    // Bound elsewhere first: the n1 watch must not see it.
    let (code, other) = api
        .put(
            "/v1/projects/a/instances/other/status",
            bind(made[1].clone(), "n2"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{other}");
    let (code, mine) = api
        .put(
            "/v1/projects/a/instances/mine/status",
            bind(made[0].clone(), "n1"),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{mine}");
    let e = w.next_change().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("mine")),
        "{e}"
    );
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        mine["metadata"]["resourceVersion"]
    );

    // The shared watch now holds `mine` at its revision. A report with a
    // changed spec writes the status only.
    let mut report = mine.clone();
    report["status"]["phase"] = json!("Running");
    report["spec"]["cpus"] = json!(64);
    report["metadata"]["labels"] = json!({"taken": "over"});
    let (code, written) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/mine/status",
            Some(report.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{written}");
    let (_, stored) = api.get("/v1/projects/a/instances/mine").await;
    assert_eq!(stored["status"]["phase"], "Running");
    assert_eq!(stored["spec"], mine["spec"], "the spec is not the node's");
    assert_eq!(stored["metadata"]["labels"], mine["metadata"]["labels"]);
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        written["metadata"]["resourceVersion"]
    );
    // The same report again names a revision that is gone: a conflict.
    let (code, b) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/mine/status",
            Some(report),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{b}");
    // Another node's instance, at its current revision, is not there for n1.
    let mut theirs = other.clone();
    theirs["status"]["phase"] = json!("Failed");
    let (code, b) = api
        .call(
            &node,
            Method::PUT,
            "/v1/projects/a/instances/other/status",
            Some(theirs),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{b}");
    let (_, other_now) = api.get("/v1/projects/a/instances/other").await;
    assert_eq!(other_now["status"]["phase"], "Scheduled");

    // n1 sees its own write; moved to n2, `mine` leaves n1's watch.
    let e = w.next_change().await;
    assert_eq!(e["type"], "MODIFIED", "{e}");
    assert_eq!(e["object"]["status"]["phase"], "Running");
    let (code, moved) = api
        .put("/v1/projects/a/instances/mine/status", bind(stored, "n2"))
        .await;
    assert_eq!(code, StatusCode::OK, "{moved}");
    let e = w.next_change().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("mine")),
        "{e}"
    );
}

async fn apply_creates_configures_and_leaves_unchanged(api: Api) {
    api.project("demo", json!({})).await;
    let mut n = network("lan", "10.10.0.0/24");
    n["metadata"]["project"] = json!("demo");
    let (code, r) = api.post("/v1/apply", n.clone()).await;
    assert_eq!(code, StatusCode::CREATED, "{r}");
    assert_eq!(r["result"], "created");
    let rv = r["object"]["metadata"]["resourceVersion"].clone();
    let (_, r) = api.post("/v1/apply", n.clone()).await;
    assert_eq!(r["result"], "unchanged");
    assert_eq!(r["object"]["metadata"]["resourceVersion"], rv);
    n["spec"]["dnsServers"] = json!(["1.1.1.1"]);
    let (_, r) = api.post("/v1/apply", n.clone()).await;
    assert_eq!(r["result"], "configured");
    assert_eq!(r["object"]["metadata"]["generation"], 2);
    assert_eq!(
        r["object"]["metadata"]["annotations"]["corral/applied"],
        "true"
    );
    // Dry run writes nothing.
    n["spec"]["dnsServers"] = json!(["8.8.8.8"]);
    let (_, r) = api.post("/v1/apply?dryRun=All", n.clone()).await;
    assert_eq!(r["result"], "configured");
    let (_, live) = api.get("/v1/projects/demo/networks/lan").await;
    assert_eq!(live["spec"]["dnsServers"], json!(["1.1.1.1"]));
    // Invalid manifests are 422 with the path.
    n["spec"]["cidr"] = json!("300.1.1.0/24");
    let (code, r) = api.post("/v1/apply", n).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(causes(&r).contains(&"spec.cidr".to_string()), "{r}");
}

async fn service_endpoints(api: Api) {
    let http = &api.http;
    for path in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let doc: Value = http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/projects/{project}/instances"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Instance"].is_object());
    // Every $ref resolves inside the document.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
    api.get("/v1/instancetypes").await;
    let metrics = http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "corral_api_requests_total{verb=\"list\",kind=\"instancetypes\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("corral_api_request_duration_seconds_bucket"));
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(super::$backend().await).await;
                    }
                };
            }
            case!(crud_semantics);
            case!(admission_lists_every_problem);
            case!(finalizers_hold_deletion);
            case!(list_selectors_and_pages);
            case!(watch_streams);
            case!(tenancy_and_auth);
            case!(node_watches_and_status_writes);
            case!(apply_creates_configures_and_leaves_unchanged);
            case!(service_endpoints);
        }
    };
}

suite!(etcd);
suite!(embedded);
