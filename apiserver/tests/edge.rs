//! Limits at the edge of the native API (issue 17): nothing is read for a
//! client whose credentials do not authenticate, failing clients are
//! slowed per address, metric labels never come from request text, error
//! bodies are bounded, and an object too large for the backend is a 413
//! naming the limit.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::Api;

fn addr(api: &Api) -> String {
    api.base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_read_for_an_unauthenticated_client() {
    let api = support::embedded().await;
    let a = addr(&api);
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A gigabyte announced, none sent: the answer must not wait for it.
        write!(
            s,
            "PUT /v1/projects/default/instances/x/console HTTP/1.1\r\nHost: {a}\r\n\
             Authorization: Bearer crl_wrong\r\nContent-Length: 1073741824\r\n\r\n"
        )
        .unwrap();
        let t = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..n]).to_string(), t.elapsed())
    })
    .await
    .unwrap();
    assert!(answer.0.starts_with("HTTP/1.1 401"), "{answer:?}");
    assert!(answer.1 < Duration::from_secs(5), "{answer:?}");

    // Failing again and again from one address: 429 before credentials
    // are even looked at.
    let mut codes = Vec::new();
    for _ in 0..80 {
        let (code, _) = api
            .call(
                "crl_wrong",
                Method::GET,
                "/v1/projects/default/networks",
                None,
            )
            .await;
        codes.push(code);
    }
    assert_eq!(codes[0], StatusCode::UNAUTHORIZED);
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_never_come_from_the_request() {
    let api = support::embedded().await;
    for i in 0..200 {
        let path = format!("/v1/junk-{i}/x");
        api.get(&path).await;
        api.get(&format!("/v1/projects/default/junk-{i}")).await;
        api.call("bad", Method::GET, &format!("/nothing-{i}"), None)
            .await;
    }
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("junk"), "request text became a label");
    assert!(text.len() < 200_000, "{} bytes of metrics", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_are_bounded() {
    let api = support::embedded().await;
    // 60 labels, each with a bad key and a bad value: 120 errors.
    let labels: serde_json::Map<String, Value> = (0..60)
        .map(|i| (format!("bad key {i}!"), json!("-bad value-")))
        .collect();
    let (code, body) = api
        .post(
            "/v1/projects/default/networks",
            json!({"kind": "Network", "metadata": {"name": "lan", "labels": labels},
                   "spec": {"cidr": "10.9.0.0/24"}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let text = body.to_string();
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
    let causes = body["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 21, "{body}");
    assert!(
        causes[20]["message"]
            .as_str()
            .unwrap()
            .contains("100 more errors"),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("(and 119 more)"), "{message}");

    // Far more labels than allowed is one error, not one per label.
    let labels: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("bad key {i}!"), json!("v")))
        .collect();
    let (code, body) = api
        .post(
            "/v1/projects/default/networks",
            json!({"kind": "Network", "metadata": {"name": "lan", "labels": labels},
                   "spec": {"cidr": "10.9.0.0/24"}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let causes = body["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{body}");
    assert_eq!(causes[0]["field"], "metadata.labels", "{body}");
    assert_eq!(
        causes[0]["message"], "must have at most 64 entries (has 20000)",
        "{body}"
    );
}

/// A valid SecurityGroup of about `bytes` bytes (at most ~250 KB: the
/// rest of the object is small), carried in an annotation.
fn big_group(bytes: usize) -> Value {
    json!({"kind": "SecurityGroup",
           "metadata": {"name": "big", "annotations": {"note": "x".repeat(bytes.min(250_000))}},
           "spec": {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22,
                                 "cidr": "10.0.0.0/8"}]}})
}

/// Raises the `default` project's security group quota to `n`.
async fn allow_groups(api: &Api, n: u32) {
    let (code, mut p) = api.get("/v1/projects/default").await;
    assert_eq!(code, StatusCode::OK, "{p}");
    p["spec"]["quotas"]["securityGroups"] = json!(n);
    let (code, body) = api.put("/v1/projects/default", p).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// What one object may carry is bounded by kind, far below any store's
/// object limit: a security group of 2 MB of rules is refused for its rule
/// count, naming the field, before any store sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_per_group_are_bounded() {
    let api = support::etcd().await;
    let rule = json!({"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidr": "10.0.0.0/8",
                      "description": "d".repeat(250)});
    let rules = vec![rule; 2_000_000 / 330];
    let (code, body) = api
        .post(
            "/v1/projects/default/securitygroups",
            json!({"kind": "SecurityGroup", "metadata": {"name": "big"},
                   "spec": {"ingress": rules.clone()}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let causes = body["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{body}");
    assert_eq!(causes[0]["field"], "spec.ingress");
    assert!(
        causes[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("must have at most 100 rules"),
        "{body}"
    );
    let (code, body) = api
        .post(
            "/v1/projects/default/securitygroups",
            json!({"kind": "SecurityGroup", "metadata": {"name": "big"},
                   "spec": {"ingress": rules[..100].to_vec(), "egress": rules[..100].to_vec()}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

async fn metrics(api: &Api) -> String {
    api.http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn readyz(api: &Api) -> (StatusCode, String) {
    let r = api
        .http
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// etcd out of space: writes answer 507 naming it and readiness says so;
/// deletes still work, and once space is freed the server's repair
/// (compact, defragment, disarm) lets writes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_out_of_space_is_507_reported_and_healed() {
    let api = support::etcd_with_quota(6 << 20).await;
    assert_eq!(readyz(&api).await.0, StatusCode::OK);
    let mut made = Vec::new();
    let mut full = None;
    for i in 0..100 {
        let mut g = big_group(1_000_000);
        g["metadata"]["name"] = json!(format!("big-{i}"));
        let (code, body) = api.post("/v1/projects/default/securitygroups", g).await;
        if code == StatusCode::CREATED {
            made.push(format!("big-{i}"));
            continue;
        }
        full = Some((code, body));
        break;
    }
    let (code, body) = full.expect("etcd never ran out of space");
    assert_eq!(code, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("out of space"),
        "{body}"
    );
    let (code, text) = readyz(&api).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("NOSPACE"), "{text}");
    assert!(
        metrics(&api).await.contains("corral_api_store_healthy 0"),
        "the store's health in /metrics"
    );

    for name in &made {
        let (code, body) = api
            .delete(&format!("/v1/projects/default/securitygroups/{name}"))
            .await;
        assert!(code.is_success(), "{name}: {code} {body}");
    }
    // Space is free, but the alarm holds until repaired.
    let (code, _) = api
        .post("/v1/projects/default/securitygroups", big_group(1000))
        .await;
    assert_eq!(code, StatusCode::INSUFFICIENT_STORAGE);
    assert!(
        api.store.raw().heal().await.unwrap(),
        "nothing was repaired"
    );
    assert_eq!(readyz(&api).await.0, StatusCode::OK);
    assert!(metrics(&api).await.contains("corral_api_store_healthy 1"));
    let (code, body) = api
        .post("/v1/projects/default/securitygroups", big_group(1000))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(
        !api.store.raw().heal().await.unwrap(),
        "healthy: nothing to repair"
    );
}

/// A list is bounded in bytes as well as items: 42 MB of objects come in
/// pages of about 16 MiB, each with a continue token, and all of them
/// come exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_bounded_in_bytes() {
    let api = support::embedded().await;
    allow_groups(&api, 200).await;
    for i in 0..170 {
        let mut g = big_group(1_000_000);
        g["metadata"]["name"] = json!(format!("big-{i:03}"));
        let (code, body) = api.post("/v1/projects/default/securitygroups", g).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut next = String::new();
    loop {
        let path = if next.is_empty() {
            "/v1/projects/default/securitygroups".to_string()
        } else {
            format!("/v1/projects/default/securitygroups?continue={next}")
        };
        let r = api
            .http
            .get(format!("{}{path}", api.base))
            .bearer_auth(&api.admin)
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        assert!(text.len() < 20 << 20, "a page of {} bytes", text.len());
        let page: Value = serde_json::from_str(&text).unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            names.push(item["metadata"]["name"].as_str().unwrap().to_string());
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => next = t.to_string(),
            _ => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    let expected: Vec<String> = (0..170).map(|i| format!("big-{i:03}")).collect();
    assert_eq!(names, expected);
}
