//! Project quotas at admission, over real HTTP on both store backends:
//! over-quota creates and growths get 403 naming the quota, parallel
//! creates never both take the last unit, and usage recomputed from what
//! exists releases deletions and expired charges.

mod support;

use corral_api_types::Project;
use corral_registry::quota::settle;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{instance, volume, Api};

async fn usage(api: &Api, project: &str) -> Value {
    let p: Project = api.store.get("", project).await.unwrap().unwrap();
    serde_json::to_value(p.status.unwrap_or_default().usage).unwrap()
}

async fn over_quota_is_forbidden_and_names_the_quota(api: Api) {
    api.project("q", json!({"instances": 2, "vcpus": 3, "volumeGiB": 10}))
        .await;
    let base = "/v1/projects/q/instances";
    let (code, body) = api.post(base, instance("a", "m1.medium")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // 2 + 2 vCPUs > 3.
    let (code, body) = api.post(base, instance("b", "m1.medium")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "instances \"b\" is forbidden: exceeded quota vcpus: requested 2, used 2, limit 3 in project \"q\""
    );
    assert_eq!(body["details"]["causes"][0]["field"], "quota.vcpus");
    // Dry run checks too, and writes nothing.
    let (code, _) = api
        .post(&format!("{base}?dryRun=All"), instance("b", "m1.medium"))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // One more vCPU fits; then the instance count is the limit.
    let (code, body) = api.post(base, instance("b", "m1.tiny")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = api.post(base, instance("c", "m1.tiny")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota instances: requested 1, used 2, limit 2"),
        "{body}"
    );
    // Explicit cpus count instead of the type's.
    let (code, _) = api.delete(&format!("{base}/b")).await;
    assert_eq!(code, StatusCode::OK);
    settle(&api.store, "q").await.unwrap();
    let mut big = instance("c", "m1.tiny");
    big["spec"].as_object_mut().unwrap().remove("instanceType");
    big["spec"]["cpus"] = json!(2);
    big["spec"]["memoryMiB"] = json!(256);
    let (code, body) = api.post(base, big).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    // Growth on update: a bigger type is refused, the same is fine.
    let (_, mut a) = api.get(&format!("{base}/a")).await;
    a["spec"]["instanceType"] = json!("m1.large");
    let (code, body) = api.put(&format!("{base}/a"), a.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    a["spec"]["instanceType"] = json!("m1.small");
    let (code, body) = api.put(&format!("{base}/a"), a).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Volumes: GiB, and a resize past the limit.
    let vols = "/v1/projects/q/volumes";
    let (code, body) = api.post(vols, volume("v", 8)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = api.post(vols, volume("w", 3)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "quota.volumeGiB");
    let (_, mut v) = api.get(&format!("{vols}/v")).await;
    v["spec"]["sizeGiB"] = json!(11);
    let (code, body) = api.put(&format!("{vols}/v"), v.clone()).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    v["spec"]["sizeGiB"] = json!(10);
    let (code, body) = api.put(&format!("{vols}/v"), v).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // apply is admitted the same way.
    let mut applied = volume("x", 1);
    applied["metadata"]["project"] = json!("q");
    let (code, body) = api.post("/v1/apply", applied).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    // Usage recomputed from what exists: one m1.small, one 10 GiB volume.
    settle(&api.store, "q").await.unwrap();
    let u = usage(&api, "q").await;
    assert_eq!(u["instances"], 1, "{u}");
    assert_eq!(u["vcpus"], 1, "{u}");
    assert_eq!(u["memoryMiB"], 2048, "{u}");
    assert_eq!(u["volumeGiB"], 10, "{u}");
    assert_eq!(u["volumes"], 1, "{u}");
    let p: Project = api.store.get("", "q").await.unwrap().unwrap();
    assert!(p.status.unwrap().pending_charges.is_empty());

    // A member sees the same answer (and the project's usage).
    let member = api.member("mia", "q").await;
    let (code, body) = api
        .call(&member, Method::POST, vols, Some(volume("y", 1)))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap().contains("volumeGiB"));

    // Deleting releases; a project without quotas is never refused.
    let (code, _) = api.delete(&format!("{vols}/v")).await;
    assert_eq!(code, StatusCode::OK);
    settle(&api.store, "q").await.unwrap();
    let (code, body) = api.post(vols, volume("y", 10)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    api.project("free", json!({})).await;
    let (code, _) = api
        .post("/v1/projects/free/volumes", volume("huge", 1000))
        .await;
    assert_eq!(code, StatusCode::CREATED);
}

/// Many clients race for the last units: exactly the limit get in.
async fn parallel_creates_never_exceed_the_limit(api: Api) {
    api.project("race", json!({"instances": 3})).await;
    let mut tasks = Vec::new();
    for n in 0..12 {
        let http = api.http.clone();
        let url = format!("{}/v1/projects/race/instances", api.base);
        let token = api.admin.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&instance(&format!("i{n}"), "m1.tiny"))
                .send()
                .await
                .unwrap();
            let code = resp.status();
            (code, resp.text().await.unwrap())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (code, text) = t.await.unwrap();
        match code {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => assert!(text.contains("exceeded quota instances"), "{text}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!(created, 3);
    let list = api
        .store
        .list::<corral_api_types::Instance>(Some("race"), Default::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
    settle(&api.store, "race").await.unwrap();
    assert_eq!(usage(&api, "race").await["instances"], 3);
}

/// A charge whose object never appeared (a crash between charge and
/// write) counts until it expires, then is dropped.
async fn charges_without_objects_expire(api: Api) {
    api.project("leak", json!({"volumes": 1})).await;
    let mut p: Project = api.store.get("", "leak").await.unwrap().unwrap();
    let status = p.status.get_or_insert_with(Default::default);
    status.usage.volumes = Some(1);
    status
        .pending_charges
        .push(corral_api_types::kinds::project::QuotaCharge {
            object: "volumes/ghost".into(),
            amounts: corral_api_types::ProjectResources {
                volumes: Some(1),
                ..Default::default()
            },
            expires: chrono::Utc::now() + chrono::Duration::seconds(1),
        });
    api.store.update(&p).await.unwrap();
    // Still young: counted, and the answer says why.
    let next = settle(&api.store, "leak").await.unwrap();
    assert!(next.is_some());
    let (code, body) = api.post("/v1/projects/leak/volumes", volume("v", 1)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(settle(&api.store, "leak").await.unwrap(), None);
    assert_eq!(
        usage(&api, "leak").await["volumes"],
        serde_json::Value::Null
    );
    let (code, body) = api.post("/v1/projects/leak/volumes", volume("v", 1)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

/// Quotas are checked against the API server's cache of Projects; a quota
/// set on a live project holds from the very next request (the server
/// answers the Project write only once its cache has it).
async fn a_quota_set_holds_for_the_next_request(api: Api) {
    for round in 0..10 {
        let name = format!("late{round}");
        api.project(&name, json!({})).await;
        let base = format!("/v1/projects/{name}/instances");
        let (code, body) = api.post(&base, instance("free", "m1.tiny")).await;
        assert_eq!(code, StatusCode::CREATED, "no quota yet: {body}");
        let (_, mut project) = api.get(&format!("/v1/projects/{name}")).await;
        project["spec"]["quotas"] = json!({"instances": 1});
        let (code, body) = api.put(&format!("/v1/projects/{name}"), project).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        // Usage counts from the quota on (the quota controller would
        // add `free` when it settles): one more fits, the next does not.
        let (code, body) = api.post(&base, instance("a", "m1.tiny")).await;
        assert_eq!(code, StatusCode::CREATED, "round {round}: {body}");
        let (code, body) = api.post(&base, instance("b", "m1.tiny")).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "round {round}: {body}");
    }
}

/// Every project kind without a quota of its own has a count quota, with
/// defaults on every project; past it a create is 403 naming the quota,
/// and a deletion gives the unit back.
async fn count_quotas_default_and_bound_every_kind(api: Api) {
    api.project("d", json!({})).await;
    let (_, p) = api.get("/v1/projects/d").await;
    assert_eq!(
        p["spec"]["quotas"],
        json!({"securityGroups": 100, "keyPairs": 100, "networks": 100, "images": 100,
               "snapshots": 1000}),
        "{p}"
    );
    let limits = json!({"securityGroups": 1, "keyPairs": 1, "networks": 1, "images": 1,
                        "snapshots": 1});
    api.project("c", limits).await;
    let (code, body) = api.post("/v1/projects/c/volumes", volume("data", 1)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let counted = [
        ("networks", "networks"),
        ("securitygroups", "securityGroups"),
        ("keypairs", "keyPairs"),
        ("images", "images"),
        ("snapshots", "snapshots"),
    ];
    for (plural, quota) in counted {
        let (_, object) = support::objects()
            .into_iter()
            .find(|(p, _)| *p == plural)
            .unwrap();
        let path = format!("/v1/projects/c/{plural}");
        let (code, body) = api.post(&path, object.clone()).await;
        assert_eq!(code, StatusCode::CREATED, "{plural}: {body}");
        let mut second = object.clone();
        second["metadata"]["name"] = json!("second");
        if plural == "networks" {
            second["spec"]["cidr"] = json!("10.99.0.0/24");
        }
        let (code, body) = api.post(&path, second.clone()).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{plural}: {body}");
        assert_eq!(
            body["message"],
            format!(
                "{plural} \"second\" is forbidden: exceeded quota {quota}: requested 1, used 1, \
                 limit 1 in project \"c\""
            )
        );
        assert_eq!(
            body["details"]["causes"][0]["field"],
            format!("quota.{quota}")
        );
        // Deleting gives the unit back (once the usage is recomputed, as
        // the quota controller does on every deletion).
        let name = object["metadata"]["name"].as_str().unwrap();
        let (code, body) = api.delete(&format!("{path}/{name}")).await;
        assert!(code.is_success(), "{plural}: {body}");
        settle(&api.store, "c").await.unwrap();
        let (code, body) = api.post(&path, second).await;
        assert_eq!(code, StatusCode::CREATED, "{plural}: {body}");
    }
    settle(&api.store, "c").await.unwrap();
    let u = usage(&api, "c").await;
    assert_eq!(u, limits_used(), "{u}");

    // Raising a count quota takes at once.
    let (_, mut p) = api.get("/v1/projects/c").await;
    p["spec"]["quotas"]["securityGroups"] = json!(3);
    let (code, body) = api.put("/v1/projects/c", p).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let mut g = support::objects()
        .into_iter()
        .find(|(p, _)| *p == "securitygroups")
        .unwrap()
        .1;
    g["metadata"]["name"] = json!("third");
    let (code, body) = api.post("/v1/projects/c/securitygroups", g).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

fn limits_used() -> Value {
    json!({"securityGroups": 1, "keyPairs": 1, "networks": 1, "images": 1, "snapshots": 1})
}

on_both_backends!(
    count_quotas_default_and_bound_every_kind,
    a_quota_set_holds_for_the_next_request,
    over_quota_is_forbidden_and_names_the_quota,
    parallel_creates_never_exceed_the_limit,
    charges_without_objects_expire,
);
