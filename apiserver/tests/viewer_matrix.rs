//! The viewer role and roles in several projects, through the native API:
//! `vera` is a viewer of `b` (her home project), a member of `a`, and has
//! no role in `c`. For every project kind and verb, a viewer reads what an
//! admin reads and is refused (403) every write, content writes included,
//! and `b` is unchanged afterwards; in `a` she works as a member; `c` stays
//! closed until an admin grants her a role there, and closes again when
//! it is taken back.

mod support;

use corral_api_types::{Scope, KINDS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{objects, Api};

const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;

async fn snapshot(api: &Api, project: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for info in KINDS.iter().filter(|k| k.scope == Scope::Project) {
        let (_, list) = api
            .get(&format!("/v1/projects/{project}/{}", info.plural))
            .await;
        out.push(list["items"].clone());
    }
    out
}

async fn status_of(
    api: &Api,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> StatusCode {
    let mut req = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/octet-stream")
            .body(b);
    }
    // Headers only: a watch's body never ends.
    req.send().await.unwrap().status()
}

async fn a_viewer_reads_and_writes_nothing(api: Api) {
    for p in ["a", "b", "c"] {
        api.project(p, json!({})).await;
    }
    let (code, made) = api
        .post(
            "/v1/users",
            json!({"name": "vera", "role": "viewer", "project": "b",
                   "memberships": [{"project": "a", "role": "member"}]}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{made}");
    let vera = made["token"].as_str().unwrap().to_string();
    let objs = objects();
    assert_eq!(
        objs.len(),
        KINDS.iter().filter(|k| k.scope == Scope::Project).count(),
        "a kind is missing from objects()"
    );
    for (plural, body) in &objs {
        let (code, created) = api
            .post(&format!("/v1/projects/b/{plural}"), body.clone())
            .await;
        assert_eq!(code, StatusCode::CREATED, "{plural}: {created}");
    }
    let before = snapshot(&api, "b").await;

    let mut failures = Vec::new();
    for (plural, body) in &objs {
        let name = body["metadata"]["name"].as_str().unwrap();
        let item = format!("/v1/projects/b/{plural}/{name}");
        let reads = [
            item.clone(),
            format!("/v1/projects/b/{plural}"),
            format!("/v1/projects/b/{plural}?watch=true"),
            format!("/v1/projects/b/{plural}/no-such-{name}"),
        ];
        for path in &reads {
            let admin = status_of(&api, &api.admin, Method::GET, path, None).await;
            let got = status_of(&api, &vera, Method::GET, path, None).await;
            if got != admin {
                failures.push(format!("read {path}: admin {admin}, viewer {got}"));
            }
        }
        let mut renamed = body.clone();
        renamed["metadata"]["name"] = json!(format!("{name}-new"));
        let mut moved = body.clone();
        moved["metadata"]["project"] = json!("b");
        let writes: Vec<(&str, Method, String, Option<Value>)> = vec![
            (
                "create",
                Method::POST,
                format!("/v1/projects/b/{plural}"),
                Some(renamed.clone()),
            ),
            ("replace", Method::PUT, item.clone(), Some(body.clone())),
            (
                "status",
                Method::PUT,
                format!("{item}/status"),
                Some(json!({"status": {}})),
            ),
            ("delete", Method::DELETE, item.clone(), None),
            (
                "dry-run delete",
                Method::DELETE,
                format!("{item}?dryRun=All"),
                None,
            ),
            ("apply", Method::POST, "/v1/apply".into(), Some(moved)),
            (
                "apply ?project=",
                Method::POST,
                "/v1/apply?project=b".into(),
                Some(renamed.clone()),
            ),
        ];
        for (verb, method, path, req) in writes {
            let (code, got) = api.call(&vera, method, &path, req).await;
            if code != FORBIDDEN || got["reason"] != "Forbidden" {
                failures.push(format!("{verb} {path}: want 403, got {code} {got}"));
            }
        }
    }
    for (method, path) in [
        (Method::PUT, "/v1/projects/b/images/tiny/content"),
        (Method::PUT, "/v1/projects/b/instances/web/console"),
        (Method::DELETE, "/v1/projects/b/instances/web/console"),
        (Method::PUT, "/v1/projects/b"),
        (Method::DELETE, "/v1/projects/b"),
    ] {
        let got = status_of(&api, &vera, method.clone(), path, Some(vec![0u8; 16])).await;
        if got != FORBIDDEN {
            failures.push(format!("{method} {path}: want 403, got {got}"));
        }
    }
    for path in [
        "/v1/projects/b/images/tiny/content",
        "/v1/projects/b/instances/web/console",
        "/v1/projects/b",
    ] {
        let admin = status_of(&api, &api.admin, Method::GET, path, None).await;
        let got = status_of(&api, &vera, Method::GET, path, None).await;
        if got != admin {
            failures.push(format!("read {path}: admin {admin}, viewer {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        before,
        snapshot(&api, "b").await,
        "a viewer changed project b"
    );

    // A member of `a`: writes there.
    let (code, got) = api
        .call(
            &vera,
            Method::POST,
            "/v1/projects/a/networks",
            Some(objs[0].1.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{got}");
    // Her projects, and only hers.
    let (_, me) = api.call(&vera, Method::GET, "/v1/whoami", None).await;
    assert_eq!(me["role"], "viewer", "{me}");
    assert_eq!(me["project"], "b", "{me}");
    assert_eq!(
        me["projects"],
        json!([{"project": "b", "role": "viewer"}, {"project": "a", "role": "member"}]),
        "{me}"
    );
    let (_, list) = api.call(&vera, Method::GET, "/v1/projects", None).await;
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "{list}");

    // `c`: closed, granted, taken back; each change holds at once.
    let c_networks = "/v1/projects/c/networks";
    assert_eq!(
        status_of(&api, &vera, Method::GET, c_networks, None).await,
        FORBIDDEN
    );
    let (code, got) = api
        .put("/v1/users/vera/projects/c", json!({"role": "viewer"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{got}");
    assert_eq!(
        status_of(&api, &vera, Method::GET, c_networks, None).await,
        StatusCode::OK
    );
    let (code, _) = api
        .call(&vera, Method::POST, c_networks, Some(objs[0].1.clone()))
        .await;
    assert_eq!(code, FORBIDDEN);
    let (code, got) = api.delete("/v1/users/vera/projects/c").await;
    assert_eq!(code, StatusCode::OK, "{got}");
    assert_eq!(
        status_of(&api, &vera, Method::GET, c_networks, None).await,
        FORBIDDEN
    );

    // Grants are the admin's, and only project roles exist.
    let (code, _) = api
        .call(
            &vera,
            Method::PUT,
            "/v1/users/vera/projects/c",
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(code, FORBIDDEN);
    let (code, got) = api
        .put("/v1/users/vera/projects/c", json!({"role": "admin"}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{got}");
    assert!(
        got["message"]
            .as_str()
            .unwrap()
            .contains("member or viewer"),
        "{got}"
    );
    let (code, _) = api
        .put("/v1/users/vera/projects/nope", json!({"role": "viewer"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, got) = api.delete("/v1/users/vera/projects/b").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{got}");
    let (code, got) = api
        .post(
            "/v1/users",
            json!({"name": "vic", "role": "viewer", "project": "b",
                   "memberships": [{"project": "b", "role": "member"}]}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
}

on_both_backends!(a_viewer_reads_and_writes_nothing);
