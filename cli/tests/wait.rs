//! `corral wait` and `delete --wait` over the watch API: they return as
//! soon as the awaited change happens, and time out with exit 1 and the
//! object's last known state otherwise.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{shared, Out, Server};
use serde_json::json;

fn setup(s: &Server, project: &str) {
    s.corral(&["project", "create", project]).ok();
    s.api(
        "POST",
        &format!("/v1/projects/{project}/instances"),
        Some(json!({
            "apiVersion": "corral/v1", "kind": "Instance",
            "metadata": {"name": "vm"},
            "spec": {"image": "tiny", "nics": [{"network": "lan"}]}
        })),
    );
}

/// Starts `corral ARGS` in the background.
fn spawn(s: &Server, args: &[&str]) -> std::process::Child {
    s.cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running corral")
}

/// Waits for a background run to end (at most `limit`).
fn finish(child: std::process::Child, limit: Duration) -> Out {
    let start = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Out::from(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "corral did not finish in {limit:?}: {:#?}",
                Out::from(child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn wait_for_phase_and_condition_return_when_the_status_changes() {
    let s = shared();
    setup(s, "waitphase");
    let phase = spawn(
        s,
        &[
            "wait",
            "instance/vm",
            "-p",
            "waitphase",
            "--for=phase=Running",
            "--timeout",
            "30s",
        ],
    );
    let ready = spawn(
        s,
        &[
            "wait",
            "inst/vm",
            "-p",
            "waitphase",
            "--for=condition=Ready",
            "--timeout",
            "30s",
        ],
    );
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    s.api(
        "PUT",
        "/v1/projects/waitphase/instances/vm/status",
        Some(
            json!({"metadata": {"name": "vm"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}}),
        ),
    );
    let out = finish(phase, Duration::from_secs(10));
    assert_eq!(out.ok().trim(), "instance/vm condition met");
    let out = finish(ready, Duration::from_secs(10));
    assert_eq!(out.ok().trim(), "instance/vm condition met");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn wait_times_out_on_an_object_without_status() {
    let s = shared();
    setup(s, "waitnostatus");
    let started = Instant::now();
    let out = s.corral(&[
        "wait",
        "instance/vm",
        "-p",
        "waitnostatus",
        "--for=phase=Running",
        "--timeout",
        "1s",
    ]);
    let err = out.fails_with(1);
    // Its image and network do not exist, so it never runs; once
    // controllers run in `corral up` it may have a phase, never Running.
    let state = err
        .strip_prefix("error: timed out waiting for instance/vm (")
        .and_then(|rest| rest.trim_end().strip_suffix(')'))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        state == "no status yet" || (state.starts_with("phase is ") && !state.ends_with("Running")),
        "{err}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let out = s.corral(&[
        "wait",
        "instance/nope",
        "-p",
        "waitnostatus",
        "--for=phase=Running",
    ]);
    assert!(out.fails_with(1).contains("not found"));
    let out = s.corral(&["wait", "vm", "--for=delete"]);
    out.fails_with(2);
    let out = s.corral(&["wait", "instance/vm", "--for=ready"]);
    out.fails_with(2);
}

#[test]
fn wait_for_delete_returns_once_deleted() {
    let s = shared();
    setup(s, "waitdelete");
    let child = spawn(
        s,
        &[
            "wait",
            "instance/vm",
            "-p",
            "waitdelete",
            "--for=delete",
            "--timeout",
            "30s",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    s.corral(&["delete", "instance", "vm", "-p", "waitdelete"])
        .ok();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.ok().trim(), "instance/vm deleted");
    // Already gone: immediate.
    let out = s.corral(&["wait", "instance/vm", "-p", "waitdelete", "--for=delete"]);
    out.ok();
}

#[test]
fn delete_wait_follows_finalizers() {
    let s = shared();
    s.corral(&["project", "create", "finalizers"]).ok();
    s.api(
        "POST",
        "/v1/projects/finalizers/securitygroups",
        Some(json!({
            "apiVersion": "corral/v1", "kind": "SecurityGroup",
            "metadata": {"name": "held", "finalizers": ["test/hold"]},
            "spec": {"description": "held by a finalizer"}
        })),
    );
    // It lingers: the wait times out.
    let out = s.corral(&[
        "delete",
        "securitygroup",
        "held",
        "-p",
        "finalizers",
        "--wait",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(out.stdout.trim(), "securitygroup/held deleted");
    assert!(
        out.fails_with(1)
            .contains("timed out waiting for securitygroup/held (it still exists)"),
        "{out:#?}"
    );
    // Releasing the finalizer ends a waiting `wait --for=delete`.
    let child = spawn(
        s,
        &[
            "wait",
            "sg/held",
            "-p",
            "finalizers",
            "--for=delete",
            "--timeout",
            "30s",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let path = "/v1/projects/finalizers/securitygroups/held";
    let token = s.admin_token();
    // Drop the finalizers (again if something else wrote in between).
    let mut released = false;
    for _ in 0..10 {
        let mut obj = s.api("GET", path, None);
        assert!(obj["metadata"]["deletionTimestamp"].is_string(), "{obj}");
        obj["metadata"]["finalizers"] = json!([]);
        let (status, body) = s
            .http("PUT", path, Some(&token), Some(&obj.to_string()))
            .unwrap();
        match status {
            200 => {
                released = true;
                break;
            }
            409 => continue,
            _ => panic!("PUT {path}: {status} {body}"),
        }
    }
    assert!(released);
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.ok().trim(), "securitygroup/held deleted");
}

#[test]
fn get_watch_streams_changes() {
    let s = shared();
    setup(s, "watching");
    let child = spawn(
        s,
        &[
            "get",
            "instances",
            "-p",
            "watching",
            "-w",
            "-o",
            "name",
            "--output-watch-events",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    s.corral(&["delete", "instance", "vm", "-p", "watching"])
        .ok();
    std::thread::sleep(Duration::from_millis(300));
    let mut child = child;
    let _ = child.kill();
    let out = Out::from(child.wait_with_output().unwrap());
    // The initial ADDED, then (after any MODIFIED) the DELETED.
    let lines = out.lines();
    assert_eq!(lines.first(), Some(&"ADDED instance/vm"), "{out:#?}");
    assert!(lines.contains(&"DELETED instance/vm"), "{out:#?}");
}
