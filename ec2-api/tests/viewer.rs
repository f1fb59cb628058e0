//! The viewer role through the EC2 façade: every action that is not a read
//! answers UnauthorizedOperation to a viewer (with DryRun too, as IAM
//! decides before DryRun), every read is served, and nothing in the
//! project changes; a member's identical calls are not refused for their
//! role.

use chrono::Utc;
use corral_api_types::auth::Role;
use corral_api_types::{Instance, Network};
use corral_ec2_api::auth::sigv4::sign_form_post;
use corral_ec2_api::testing::{add_user_as, seed_project, start, Keys, TestServer};
use corral_ec2_api::{reads_only, ACTIONS};

async fn call(s: &TestServer, keys: &Keys, action: &str, dry_run: bool) -> (u16, String) {
    let mut body = format!("Action={action}&Version=2016-11-15");
    if dry_run {
        body.push_str("&DryRun=true");
    }
    let host = s.addr.to_string();
    let (auth, date) = sign_form_post(&keys.id, &keys.secret, "corral-1", &host, &body, Utc::now());
    let ca = reqwest::Certificate::from_pem_bundle(s.ca_pem.as_bytes()).unwrap();
    let r = reqwest::Client::builder()
        .tls_certs_only(ca)
        .build()
        .unwrap()
        .post(format!("{}/", s.url))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header("authorization", auth)
        .header("x-amz-date", date)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn code(text: &str) -> &str {
    text.split("<Code>")
        .nth(1)
        .and_then(|t| t.split("</Code>").next())
        .unwrap_or("")
}

async fn state(s: &TestServer) -> (Vec<Instance>, Vec<Network>) {
    let opts = corral_store::ListOptions::default;
    (
        s.store
            .list::<Instance>(Some("demo"), opts())
            .await
            .unwrap()
            .items,
        s.store
            .list::<Network>(Some("demo"), opts())
            .await
            .unwrap()
            .items,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_and_is_refused_every_write() {
    let s = start().await;
    seed_project(&s.store, "demo").await;
    let viewer = add_user_as(&s.store, "vera", Role::Viewer, "demo").await;
    let member = add_user_as(&s.store, "mona", Role::Member, "demo").await;
    let before = state(&s).await;

    let mut failures = Vec::new();
    let writes: Vec<&str> = ACTIONS.iter().copied().filter(|a| !reads_only(a)).collect();
    assert!(writes.len() >= 30, "{writes:?}");
    for action in ACTIONS {
        if reads_only(action) {
            let (status, text) = call(&s, &viewer, action, false).await;
            if code(&text) == "UnauthorizedOperation" || status == 401 {
                failures.push(format!("read {action}: {status} {text}"));
            }
            continue;
        }
        for dry_run in [false, true] {
            let (status, text) = call(&s, &viewer, action, dry_run).await;
            if status != 403 || code(&text) != "UnauthorizedOperation" {
                failures.push(format!("{action} (DryRun={dry_run}): {status} {text}"));
            }
        }
        // The refusal is the role's: a member is never refused so.
        let (_, text) = call(&s, &member, action, true).await;
        if code(&text) == "UnauthorizedOperation" {
            failures.push(format!("member {action}: {text}"));
        }
    }
    // An unknown action is still InvalidAction for a viewer.
    let (_, text) = call(&s, &viewer, "LaunchTheRockets", false).await;
    assert_eq!(code(&text), "InvalidAction", "{text}");
    let (_, text) = call(&s, &viewer, "RunInstances", false).await;
    assert!(text.contains("vera is a viewer of project demo"), "{text}");

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(before, state(&s).await, "a viewer changed the project");
}
