//! Injection at the API: names carrying path, quote, markup or shell
//! characters are refused; the same characters in free text (tags,
//! descriptions, user data) are stored verbatim (they are escaped where
//! used: see node-agent/tests/injection.rs); a client's `uid` — the only
//! thing host paths are built from — is always replaced by the server's.

mod support;

use corral_api_types::parse_manifests;
use reqwest::StatusCode;
use serde_json::json;
use support::{instance, Api};

const EXAMPLES: &[&str] = &[
    include_str!("../../manifests/examples/00-network.yaml"),
    include_str!("../../manifests/examples/00-project.yaml"),
    include_str!("../../manifests/examples/10-keypair.yaml"),
    include_str!("../../manifests/examples/20-securitygroup.yaml"),
    include_str!("../../manifests/examples/30-image.yaml"),
    include_str!("../../manifests/examples/40-volume.yaml"),
    include_str!("../../manifests/examples/50-instances.yaml"),
];

const HOSTILE: &[&str] = &[
    "../../etc/passwd",
    "a'b",
    "<x>",
    "$(reboot)",
    "line\nbreak",
    "a/b",
    "..",
];

async fn hostile_names_refused_free_text_kept(api: Api) {
    api.project("p", json!({})).await;
    for s in HOSTILE {
        // Every example object, valid but for its name.
        for text in EXAMPLES {
            for o in parse_manifests("e.yaml", text).unwrap() {
                let mut body = o.to_json_value();
                body["metadata"]["name"] = json!(s);
                let info = corral_api_types::kind_info(o.kind()).unwrap();
                let path = match info.scope {
                    corral_api_types::Scope::Project => {
                        body["metadata"]["project"] = json!("p");
                        format!("/v1/projects/p/{}", info.plural)
                    }
                    corral_api_types::Scope::Cluster => format!("/v1/{}", info.plural),
                };
                let (code, answer) = api.post(&path, body).await;
                assert_eq!(
                    code,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{} {s:?}: {answer}",
                    info.plural
                );
                let causes = answer["details"]["causes"].as_array().unwrap();
                assert!(
                    causes.iter().any(|c| c["field"] == "metadata.name"),
                    "{answer}"
                );
            }
        }
        let mut labelled = instance("l", "m1.tiny");
        labelled["metadata"]["labels"] = json!({"k": s});
        let (code, _) = api.post("/v1/projects/p/instances", labelled).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "label value {s:?}");
    }
    // Free text: kept byte for byte.
    for (i, s) in HOSTILE.iter().enumerate() {
        let mut body = instance(&format!("web-{i}"), "m1.tiny");
        body["spec"]["tags"] = json!({"Name": s, "note": format!("{s}{s}")});
        body["spec"]["userData"] = json!(format!("#!/bin/sh\necho {s}\n"));
        body["metadata"]["uid"] = json!("../../../../etc");
        let (code, created) = api.post("/v1/projects/p/instances", body).await;
        assert_eq!(code, StatusCode::CREATED, "{s:?}: {created}");
        assert_eq!(created["spec"]["tags"]["Name"], *s);
        assert_eq!(
            created["spec"]["userData"],
            format!("#!/bin/sh\necho {s}\n")
        );
        let uid = created["metadata"]["uid"].as_str().unwrap();
        assert!(
            uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "a client's uid was kept: {uid}"
        );
        let (_, got) = api.get(&format!("/v1/projects/p/instances/web-{i}")).await;
        assert_eq!(got["spec"]["tags"]["note"], format!("{s}{s}"));
    }
    // The same through apply.
    let (code, applied) = api
        .post(
            "/v1/apply",
            json!({"kind": "Volume", "metadata": {"name": "v", "project": "p", "uid": "../x"},
                   "spec": {"sizeGiB": 1, "tags": {"d": "'; DROP TABLE --"}}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{applied}");
    assert_ne!(applied["object"]["metadata"]["uid"], "../x");
    let (code, _) = api
        .post(
            "/v1/projects",
            json!({"metadata": {"name": "q"}, "spec": {"description": "<b>'$(x)'</b>\n../"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
}

on_both_backends!(hostile_names_refused_free_text_kept);
