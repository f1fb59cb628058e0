//! The façade driven by boto3 and the `aws` CLI from PyPI. These tools
//! are required: a missing one fails the test with what to install
//! (`scripts/install-deps` installs them).

use std::process::Command;

use corral_api_types::{Instance, InstancePhase, InstanceStatus};
use corral_ec2_api::testing::{add_user, seed_project, set_status, start, Keys, TestServer};

fn need(tool: &str, check: &[&str]) {
    let ok = Command::new(tool)
        .args(check)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} {check:?} failed: install boto3 and awscli with `pip install boto3 awscli` (scripts/install-deps does)");
}

/// The environment a user's rc file gives: endpoint over TLS, the
/// server's CA as `AWS_CA_BUNDLE`, keys and region.
fn aws_env(cmd: &mut Command, s: &TestServer, keys: &Keys) {
    cmd.env("AWS_CA_BUNDLE", &s.ca_file)
        .env("AWS_ENDPOINT_URL_EC2", &s.url)
        .env("AWS_ACCESS_KEY_ID", &keys.id)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret)
        .env("AWS_DEFAULT_REGION", "corral-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_the_facade() {
    need("python3", &["-c", "import boto3"]);
    let s = start().await;
    let keys = add_user(&s.store, "alice", Some("demo")).await;
    let image = seed_project(&s.store, "demo").await;
    public_pool(&s.store, "demo").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/boto3_smoke.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).env("IMAGE_ID", &image);
    aws_env(&mut cmd, &s, &keys);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "boto3 script failed:\n{text}");
    assert!(text.contains("boto3 smoke: ok"), "{text}");
}

async fn aws(s: &TestServer, keys: &Keys, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("aws");
    cmd.args(["ec2", "--output", "json"]).args(args);
    aws_env(&mut cmd, s, keys);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run aws");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn state_of(v: &serde_json::Value) -> String {
    v["Reservations"][0]["Instances"][0]["State"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The CI path: run → describe → stop → start → terminate with the aws
/// CLI, the test writing status where controllers will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_run_stop_start_terminate() {
    need("aws", &["--version"]);
    let s = start().await;
    let image = seed_project(&s.store, "default").await;
    let k = &s.admin;
    let (ok, out) = aws(
        &s,
        k,
        &[
            "run-instances",
            "--image-id",
            &image,
            "--count",
            "1",
            "--instance-type",
            "m1.tiny",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let id = json(&out)["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, out) = aws(&s, k, &["describe-instances", "--instance-ids", &id]).await;
    assert!(ok, "{out}");
    assert_eq!(state_of(&json(&out)), "pending");
    let (ok, out) = aws(&s, k, &["stop-instances", "--instance-ids", &id]).await;
    assert!(!ok && out.contains("IncorrectInstanceState"), "{out}");

    let running = InstanceStatus {
        phase: InstancePhase::Running,
        ..Default::default()
    };
    set_status::<Instance>(&s.store, "default", &id, running).await;
    let (_, out) = aws(&s, k, &["describe-instances", "--instance-ids", &id]).await;
    assert_eq!(state_of(&json(&out)), "running");
    let (ok, out) = aws(&s, k, &["stop-instances", "--instance-ids", &id]).await;
    assert!(ok, "{out}");
    assert_eq!(
        json(&out)["StoppingInstances"][0]["CurrentState"]["Name"],
        "stopping"
    );
    let stopped = InstanceStatus {
        phase: InstancePhase::Stopped,
        ..Default::default()
    };
    set_status::<Instance>(&s.store, "default", &id, stopped).await;
    let (_, out) = aws(&s, k, &["describe-instances", "--instance-ids", &id]).await;
    assert_eq!(state_of(&json(&out)), "stopped");
    let (ok, out) = aws(&s, k, &["start-instances", "--instance-ids", &id]).await;
    assert!(ok, "{out}");
    assert_eq!(
        json(&out)["StartingInstances"][0]["CurrentState"]["Name"],
        "pending"
    );
    let (ok, out) = aws(&s, k, &["terminate-instances", "--instance-ids", &id]).await;
    assert!(ok, "{out}");
    let (ok, out) = aws(
        &s,
        k,
        &["wait", "instance-terminated", "--instance-ids", &id],
    )
    .await;
    assert!(ok, "{out}");
    let (_, out) = aws(&s, k, &["describe-instances", "--instance-ids", &id]).await;
    assert_eq!(state_of(&json(&out)), "terminated");
}

/// Elastic IPs with the aws CLI: allocate → associate → describe →
/// disassociate → release, and the errors in between. (The façade alone:
/// association is what the Address says; the controllers' part, the
/// instance's public IP, is proven in tests/ec2-sdk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_elastic_ips() {
    need("aws", &["--version"]);
    let s = start().await;
    let image = seed_project(&s.store, "default").await;
    let k = &s.admin;
    let (ok, out) = aws(&s, k, &["allocate-address", "--domain", "vpc"]).await;
    assert!(!ok && out.contains("InsufficientAddressCapacity"), "{out}");
    public_pool(&s.store, "default").await;

    let (ok, out) = aws(&s, k, &["allocate-address", "--domain", "vpc"]).await;
    assert!(ok, "{out}");
    let v = json(&out);
    let (alloc, ip) = (
        v["AllocationId"].as_str().unwrap().to_string(),
        v["PublicIp"].as_str().unwrap().to_string(),
    );
    assert!(
        alloc.starts_with("eipalloc-") && ip.starts_with("198.51.100."),
        "{v}"
    );
    assert_eq!(v["Domain"], "vpc");

    let (ok, out) = aws(
        &s,
        k,
        &["run-instances", "--image-id", &image, "--count", "1"],
    )
    .await;
    assert!(ok, "{out}");
    let id = json(&out)["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();

    let (ok, out) = aws(
        &s,
        k,
        &[
            "associate-address",
            "--allocation-id",
            &alloc,
            "--instance-id",
            &id,
        ],
    )
    .await;
    assert!(ok, "{out}");
    let assoc = json(&out)["AssociationId"].as_str().unwrap().to_string();
    assert!(assoc.starts_with("eipassoc-"), "{assoc}");

    let (ok, out) = aws(&s, k, &["describe-addresses", "--public-ips", &ip]).await;
    assert!(ok, "{out}");
    let a = &json(&out)["Addresses"][0];
    assert_eq!(a["AllocationId"], alloc.as_str());
    assert_eq!(a["InstanceId"], id.as_str());
    assert_eq!(a["AssociationId"], assoc.as_str());
    let (ok, out) = aws(
        &s,
        k,
        &[
            "describe-addresses",
            "--filters",
            &format!("Name=instance-id,Values={id}"),
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(json(&out)["Addresses"].as_array().unwrap().len(), 1);

    let (ok, out) = aws(&s, k, &["release-address", "--allocation-id", &alloc]).await;
    assert!(!ok && out.contains("InvalidIPAddress.InUse"), "{out}");
    let (ok, out) = aws(&s, k, &["disassociate-address", "--association-id", &assoc]).await;
    assert!(ok, "{out}");
    let (_, out) = aws(&s, k, &["describe-addresses", "--allocation-ids", &alloc]).await;
    assert!(
        json(&out)["Addresses"][0].get("AssociationId").is_none(),
        "{out}"
    );

    let (ok, out) = aws(&s, k, &["release-address", "--allocation-id", &alloc]).await;
    assert!(ok, "{out}");
    let (ok, out) = aws(&s, k, &["describe-addresses", "--allocation-ids", &alloc]).await;
    assert!(!ok && out.contains("InvalidAllocationID.NotFound"), "{out}");
    let (ok, out) = aws(&s, k, &["describe-addresses"]).await;
    assert!(
        ok && json(&out)["Addresses"].as_array().unwrap().is_empty(),
        "{out}"
    );
}

/// The Network `public` (198.51.100.0/28) in `project`: its address pool.
async fn public_pool(store: &corral_store::ResourceStore, project: &str) {
    use corral_api_types::{Network, NetworkSpec, Resource};
    store
        .create(&Network::new(
            project,
            "public",
            NetworkSpec {
                cidr: "198.51.100.0/28".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}
