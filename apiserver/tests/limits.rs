//! Every limit of the native API answered with a 4xx Status naming it
//! (see `corral_apiserver::limits`), on a real server and store.

mod support;

use std::time::Duration;

use corral_apiserver::limits::BODY_LIMIT;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{instance, Api};

async fn body_size_is_limited(api: Api) {
    api.project("p", json!({})).await;
    // Declared length over the limit: refused before it is read.
    let big = vec![b' '; BODY_LIMIT + 1];
    let (code, body) = api
        .raw(
            Method::POST,
            "/v1/projects/p/networks",
            "application/json",
            big,
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["reason"], "RequestEntityTooLarge");
    assert!(
        body["message"].as_str().unwrap().contains("4194304 bytes"),
        "{body}"
    );
    // Chunked (no declared length): cut off while reading.
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    chunks.push(Ok(vec![b' '; 16]));
    let resp = api
        .http
        .post(format!("{}/v1/apply", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("limit is 4194304"));
}

async fn names_labels_and_user_data_are_bounded(api: Api) {
    api.project("p", json!({})).await;
    let base = "/v1/projects/p/instances";
    let (code, body) = api.post(base, instance(&"a".repeat(64), "m1.tiny")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");
    let (code, _) = api.post(base, instance(&"a".repeat(63), "m1.tiny")).await;
    assert_eq!(code, StatusCode::CREATED);

    let mut labelled = instance("l", "m1.tiny");
    labelled["metadata"]["labels"] = json!({"k": "v".repeat(64)});
    let (code, body) = api.post(base, labelled).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let mut annotated = instance("l", "m1.tiny");
    annotated["metadata"]["annotations"] = json!({"k": "v".repeat(256 * 1024)});
    let (code, body) = api.post(base, annotated).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("262144"),
        "{body}"
    );

    // User data: 16 KiB raw, as EC2.
    let mut ud = instance("u", "m1.tiny");
    ud["spec"]["userData"] = json!("x".repeat(16 * 1024 + 1));
    let (code, body) = api.post(base, ud.clone()).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.userData");
    assert!(
        body["message"].as_str().unwrap().contains("16384"),
        "{body}"
    );
    ud["spec"]["userData"] = json!("x".repeat(16 * 1024));
    let (code, body) = api.post(base, ud).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

async fn list_page_size_is_bounded(api: Api) {
    api.project("p", json!({})).await;
    let (code, body) = api.get("/v1/projects/p/instances?limit=5001").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("5000"), "{body}");
    let (code, _) = api.get("/v1/projects/p/instances?limit=5000").await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .get("/v1/projects/p/instances?limit=99999999999999999999999")
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

async fn watches_per_client_are_bounded(api: Api) {
    api.project("p", json!({})).await;
    api.state.watch_slots.set_limit(2);
    let url = format!("{}/v1/projects/p/instances?watch=true", api.base);
    let open = || api.http.get(&url).bearer_auth(&api.admin).send();
    let first = open().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = open().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let third = open().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests");
    assert!(body["message"].as_str().unwrap().contains("(2)"), "{body}");
    // Another client is not affected.
    let member = api.member("m", "p").await;
    let theirs = api
        .http
        .get(&url)
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::OK);
    // Closing one gives its slot back.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let r = open().await.unwrap();
        if r.status() == StatusCode::OK {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the closed watch's slot never came back");
    drop(second);
}

async fn hostile_bodies_are_bad_requests(api: Api) {
    api.project("p", json!({})).await;
    // Nesting past serde_json's recursion limit.
    let deep = "[".repeat(100_000);
    let (code, body) = api
        .raw(
            Method::POST,
            "/v1/projects/p/networks",
            "application/json",
            deep.into_bytes(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    // A YAML alias bomb ("billion laughs").
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let mut prev = 'a';
    for c in 'b'..='i' {
        bomb.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    let started = std::time::Instant::now();
    let (code, body) = api
        .raw(
            Method::POST,
            "/v1/apply",
            "application/yaml",
            bomb.into_bytes(),
        )
        .await;
    assert!(code.is_client_error(), "{code} {body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Several objects in one apply: one per request.
    let (code, body) = api
        .raw(
            Method::POST,
            "/v1/apply",
            "application/json",
            serde_json::to_vec(&json!([instance("a", "m1.tiny"), instance("b", "m1.tiny")]))
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("one object per request"));
}

async fn members_request_rate_is_bounded(api: Api) {
    api.project("p", json!({})).await;
    api.state.rate.set_limit(corral_api_types::rate::RateLimit {
        burst: 3,
        per_second: 0.5,
    });
    let m1 = api.member("m1", "p").await;
    let m2 = api.member("m2", "p").await;
    let path = "/v1/projects/p/instances";
    for _ in 0..3 {
        let (code, body) = api.call(&m1, Method::GET, path, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let resp = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(&m1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    // Another member, and the admin, go on.
    let (code, _) = api.call(&m2, Method::GET, path, None).await;
    assert_eq!(code, StatusCode::OK);
    for _ in 0..10 {
        let (code, _) = api.get(path).await;
        assert_eq!(code, StatusCode::OK);
    }
    // After waiting what it was told, the first member goes on too.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (code, body) = api.call(&m1, Method::GET, path, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

on_both_backends!(
    members_request_rate_is_bounded,
    body_size_is_limited,
    names_labels_and_user_data_are_bounded,
    list_page_size_is_bounded,
    watches_per_client_are_bounded,
    hostile_bodies_are_bad_requests,
);
