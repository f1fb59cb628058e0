//! The `aws` CLI (awscli from PyPI) against a real `corral up`: its EC2
//! façade, its controllers and its node agent (a simulated host on
//! libvirt's `test:///default`; real guests are proven in guests.rs).
//!
//! Credentials come the way a user gets them: `corral credentials` writes
//! an rc file, which is sourced by `sh` before `aws` runs (so the endpoint
//! is the rc file's `AWS_ENDPOINT_URL_EC2`), and the admin's profile is the
//! aws-config/aws-credentials pair `corral up` wrote. The path is run →
//! describe → stop → start → terminate, with `aws ec2 wait` between the
//! steps, and an instance made by `corral apply` must show through EC2
//! while the EC2-made one shows in `corral get`.
//!
//! `aws` is required: a missing one fails the test with what to install
//! (`scripts/install-deps` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{write, Out, Server};
use serde_json::Value;

fn need_aws() {
    let out = Command::new("aws").arg("--version").output();
    let ok = out.as_ref().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "`aws --version` failed ({out:?}): install awscli with `pip install awscli` (scripts/install-deps does)"
    );
}

/// A clean `aws ec2 --output json` command for this server's home.
fn aws_base(s: &Server) -> Command {
    let mut c = Command::new("sh");
    c.env("HOME", &s.home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .stdin(std::process::Stdio::null());
    // Nothing of the test run's AWS environment reaches `aws`.
    for v in common::AWS_ENV {
        c.env_remove(v);
    }
    c
}

/// `aws ec2 ARGS --output json` after sourcing the rc file.
fn aws_rc(s: &Server, rc: &Path, args: &[&str]) -> Out {
    let mut c = aws_base(s);
    c.arg("-c")
        .arg(r#"rc=$1; shift; . "$rc" && exec aws ec2 --output json "$@""#)
        .arg("aws-rc")
        .arg(rc)
        .args(args);
    Out::from(c.output().expect("running sh and aws"))
}

/// `aws ec2 ARGS --output json` with the profile `corral up` wrote.
fn aws_profile(s: &Server, args: &[&str]) -> Out {
    let dir = s.config.parent().expect("config dir");
    let mut c = aws_base(s);
    c.arg("-c")
        .arg(r#"exec aws ec2 --output json "$@""#)
        .arg("aws-profile")
        .args(args)
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("AWS_PROFILE", "corral");
    Out::from(c.output().expect("running sh and aws"))
}

#[track_caller]
fn json(out: &Out) -> Value {
    out.json()
}

/// Every instance of a DescribeInstances answer, by id.
fn instances(v: &Value) -> Vec<Value> {
    v["Reservations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["Instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|i| i["InstanceId"] == id)
}

/// The state name of one instance, as `aws ec2 describe-instances` shows it.
fn state_of(s: &Server, rc: &Path, id: &str) -> String {
    let v = json(&aws_rc(
        s,
        rc,
        &["describe-instances", "--instance-ids", id],
    ));
    let all = instances(&v);
    assert_eq!(all.len(), 1, "{v}");
    all[0]["State"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `aws ec2 wait WAITER --instance-ids ID` must succeed.
#[track_caller]
fn wait_for(s: &Server, rc: &Path, waiter: &str, id: &str) {
    let out = aws_rc(s, rc, &["wait", waiter, "--instance-ids", id]);
    assert_eq!(
        out.code,
        0,
        "aws ec2 wait {waiter} {id} failed (state now {}): {out:#?}",
        state_of(s, rc, id)
    );
}

fn change(v: &Value, list: &str, id: &str) -> (String, i64, String, i64) {
    let c = &v[list][0];
    assert_eq!(c["InstanceId"], id, "{v}");
    (
        c["CurrentState"]["Name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        c["CurrentState"]["Code"].as_i64().unwrap_or(-1),
        c["PreviousState"]["Name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        c["PreviousState"]["Code"].as_i64().unwrap_or(-1),
    )
}

fn setup_project(s: &Server, dir: &Path) -> PathBuf {
    s.corral(&["project", "create", "awscli"]).ok();
    s.corral(&["user", "create", "dora", "--project", "awscli"])
        .ok();
    let rc = dir.join("dora.rc");
    s.corral(&["credentials", "--user", "dora", "-o", rc.to_str().unwrap()])
        .ok();
    let text = std::fs::read_to_string(&rc).unwrap();
    // Over TLS, the CA beside the rc file: nothing for the user to add.
    assert!(
        text.contains("export AWS_ENDPOINT_URL_EC2='https://127.0.0.1:"),
        "{text}"
    );
    let ca = format!("{}.ca.crt", rc.display());
    assert!(
        text.contains(&format!("export AWS_CA_BUNDLE='{ca}'")),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(s.ca.as_ref().unwrap()).unwrap(),
        "the rc file's CA is the server's"
    );
    let manifests = write(
        dir,
        "awscli.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: default, project: awscli}\n\
         spec: {cidr: 172.31.0.0/16}\n---\n\
         apiVersion: corral/v1\nkind: Image\nmetadata: {name: tiny, project: awscli}\n\
         spec: {source: {upload: true}, format: raw}\n---\n\
         apiVersion: corral/v1\nkind: Instance\nmetadata: {name: web, project: awscli}\n\
         spec: {instanceType: m1.tiny, image: tiny, nics: [{network: default}]}\n",
    );
    s.corral(&["apply", "-f", manifests.to_str().unwrap()]).ok();
    rc
}

#[test]
fn aws_cli_runs_stops_starts_and_terminates_through_corral_up() {
    need_aws();
    let s = Server::start();
    let dir = s.scratch("awscli");
    let rc = setup_project(&s, &dir);

    // The image through EC2, then RunInstances.
    let images = json(&aws_rc(&s, &rc, &["describe-images"]));
    let ami = images["Images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["Name"] == "tiny"))
        .and_then(|i| i["ImageId"].as_str())
        .unwrap_or_else(|| panic!("no image tiny: {images}"))
        .to_string();
    assert!(ami.starts_with("ami-"), "{ami}");
    let run = json(&aws_rc(
        &s,
        &rc,
        &[
            "run-instances",
            "--image-id",
            &ami,
            "--instance-type",
            "m1.tiny",
            "--count",
            "1",
            "--tag-specifications",
            "ResourceType=instance,Tags=[{Key=Name,Value=from-aws}]",
        ],
    ));
    let made = &run["Instances"][0];
    let id = made["InstanceId"]
        .as_str()
        .expect("an instance id")
        .to_string();
    assert!(
        id.len() == 19 && id.starts_with("i-"),
        "an i- id with 17 hex digits: {id}"
    );
    assert_eq!(made["State"]["Name"], "pending", "{run}");
    assert_eq!(made["State"]["Code"], 0, "{run}");
    assert_eq!(made["ImageId"], ami.as_str(), "{run}");
    assert_eq!(made["InstanceType"], "m1.tiny", "{run}");
    assert!(
        run["ReservationId"]
            .as_str()
            .is_some_and(|r| r.starts_with("r-")),
        "{run}"
    );

    // The EC2-made instance is an Instance to the native CLI, and the
    // one `corral apply` made is an instance to EC2.
    let listed = s
        .corral(&["get", "instances", "-p", "awscli", "-o", "json"])
        .json();
    assert!(
        common::names(&listed).contains(&id),
        "corral get instances lacks {id}: {listed}"
    );
    let web = s
        .corral(&["get", "instance", "web", "-p", "awscli", "-o", "json"])
        .json();
    let web_id = corral_api_types::ec2::instance_id(web["metadata"]["uid"].as_str().unwrap());
    wait_for(&s, &rc, "instance-running", &id);
    wait_for(&s, &rc, "instance-running", &web_id);
    let all = json(&aws_rc(&s, &rc, &["describe-instances"]));
    let listed = instances(&all);
    assert_eq!(listed.len(), 2, "{all}");
    let ours = find(&listed, &id).unwrap_or_else(|| panic!("{id} missing: {all}"));
    assert_eq!(ours["State"]["Name"], "running", "{all}");
    assert_eq!(ours["State"]["Code"], 16, "{all}");
    assert_eq!(ours["Tags"][0]["Key"], "Name", "{all}");
    assert_eq!(ours["Tags"][0]["Value"], "from-aws", "{all}");
    let theirs = find(&listed, &web_id).unwrap_or_else(|| panic!("{web_id} missing: {all}"));
    assert_eq!(theirs["State"]["Name"], "running", "{all}");
    assert_eq!(theirs["ImageId"], ami.as_str(), "{all}");
    assert_eq!(theirs["InstanceType"], "m1.tiny", "{all}");
    let filtered = json(&aws_rc(
        &s,
        &rc,
        &[
            "describe-instances",
            "--filters",
            "Name=tag:Name,Values=from-aws",
        ],
    ));
    let only: Vec<_> = instances(&filtered)
        .iter()
        .map(|i| i["InstanceId"].clone())
        .collect();
    assert_eq!(only, vec![Value::from(id.clone())], "{filtered}");

    // Stop, start.
    let stopped = json(&aws_rc(&s, &rc, &["stop-instances", "--instance-ids", &id]));
    assert_eq!(
        change(&stopped, "StoppingInstances", &id),
        ("stopping".into(), 64, "running".into(), 16)
    );
    wait_for(&s, &rc, "instance-stopped", &id);
    assert_eq!(state_of(&s, &rc, &id), "stopped");
    let native = s
        .corral(&["get", "instance", &id, "-p", "awscli", "-o", "json"])
        .json();
    assert_eq!(native["spec"]["powerState"], "Stopped", "{native}");
    assert_eq!(native["status"]["phase"], "Stopped", "{native}");
    let started = json(&aws_rc(
        &s,
        &rc,
        &["start-instances", "--instance-ids", &id],
    ));
    assert_eq!(
        change(&started, "StartingInstances", &id),
        ("pending".into(), 0, "stopped".into(), 80)
    );
    wait_for(&s, &rc, "instance-running", &id);

    // Terminate: shutting-down, then terminated, still listed, and the
    // native object goes once the façade's hour is over (not waited for).
    let ended = json(&aws_rc(
        &s,
        &rc,
        &["terminate-instances", "--instance-ids", &id],
    ));
    assert_eq!(
        change(&ended, "TerminatingInstances", &id),
        ("shutting-down".into(), 32, "running".into(), 16)
    );
    wait_for(&s, &rc, "instance-terminated", &id);
    assert_eq!(state_of(&s, &rc, &id), "terminated");
    let out = aws_rc(&s, &rc, &["stop-instances", "--instance-ids", &id]);
    assert!(
        out.code != 0 && out.stderr.contains("IncorrectInstanceState"),
        "{out:#?}"
    );
    // The apply-made instance is untouched.
    assert_eq!(state_of(&s, &rc, &web_id), "running");
    // Only the terminated record remains: it holds nothing, and the native
    // CLI says so.
    let record = s
        .corral(&["get", "instance", &id, "-p", "awscli", "-o", "json"])
        .json();
    assert_eq!(record["status"]["phase"], "Terminated", "{record}");

    // What every EC2 user assumes is there: the default group and elastic
    // IPs from the pool `corral up` made.
    let groups = json(&aws_rc(
        &s,
        &rc,
        &["describe-security-groups", "--group-names", "default"],
    ));
    assert_eq!(
        groups["SecurityGroups"][0]["GroupName"], "default",
        "{groups}"
    );
    let eip = json(&aws_rc(&s, &rc, &["allocate-address"]));
    let public = eip["PublicIp"].as_str().unwrap_or_default();
    assert!(public.starts_with("172.24.4."), "{eip}");
    let alloc = eip["AllocationId"].as_str().unwrap_or_default().to_string();
    let released = aws_rc(&s, &rc, &["release-address", "--allocation-id", &alloc]);
    assert_eq!(released.code, 0, "{released:#?}");

    // A well-formed id that does not exist: NotFound, as tools expect.
    let out = aws_rc(
        &s,
        &rc,
        &[
            "describe-instances",
            "--instance-ids",
            "i-0123456789abcdef0",
        ],
    );
    assert!(
        out.code != 0 && out.stderr.contains("InvalidInstanceID.NotFound"),
        "{out:#?}"
    );

    // The admin's profile from `corral up` reaches the same endpoint,
    // for the admin's project: none of these instances are there.
    let admin = aws_profile(&s, &["describe-instances"]);
    assert_eq!(instances(&json(&admin)).len(), 0, "{admin:#?}");
    let regions = json(&aws_profile(&s, &["describe-regions"]));
    assert_eq!(regions["Regions"][0]["RegionName"], "corral-1", "{regions}");
}
