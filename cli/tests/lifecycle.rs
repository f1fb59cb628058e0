//! libvirt lifecycle events, end to end: a real guest on `qemu:///system`
//! under `corral up --no-agent` and a separate `corral agent` whose periodic
//! scan and resync are an hour apart, so what the agent does about a domain
//! changed by hand (`virsh suspend`, `virsh destroy`) comes from libvirt's
//! events (node-agent/src/events.rs). The agent's log shows the event and
//! the convergence it caused, and the domain is repaired. Needs root, libvirtd (scripts/start-libvirt) and the
//! guest image (tests/images/build-guest); it fails, never skips, without
//! them.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::guests::{
    domid, domstate, guest_project, guest_server, node_user, one_at_a_time, virsh, wait_until,
    wait_until_or,
};
use common::{write, Server, BIN};

fn manifest() -> String {
    guest_project("life", "10.71.0.0/24", "nat")
        + "---
apiVersion: corral/v1
kind: Instance
metadata: {name: ev, project: life}
spec:
  instanceType: m1.tiny
  image: tiny
  nics: [{network: lan}]
"
}

fn ca_hash(s: &Server) -> String {
    let pem = std::fs::read_to_string(s.ca.as_ref().expect("a TLS server")).unwrap();
    corral_tls::ca_hash(&pem).unwrap()
}

/// A `corral agent` whose scan and resync never come during the test.
struct SlowScanAgent(Child);

impl SlowScanAgent {
    fn start(s: &Server, token: &str, node: &str, log: &Path) -> SlowScanAgent {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args([
                "agent", "--server", &s.url, "--token", token, "--node", node,
            ])
            .args(["--libvirt", "qemu:///system", "--agent-dir"])
            .arg(s.dir.join("agent"))
            .args(["--scan-interval", "3600", "--resync-interval", "3600"])
            // Joined as `corral up` tells agents to: by the CA's hash.
            .args(["--server-ca-hash", &ca_hash(s)])
            .env("RUST_LOG", "corral_node_agent=info,warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting corral agent");
        SlowScanAgent(child)
    }
}

impl Drop for SlowScanAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn instance(s: &Server) -> serde_json::Value {
    s.corral(&["get", "instance", "ev", "-p", "life", "-o", "json"])
        .json()
}

fn ready(s: &Server) -> bool {
    instance(s)["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The agent's log lines, without colour codes.
fn log_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.lines().map(str::to_string).collect()
}

/// Whether the agent logged a convergence of the instance caused by a
/// libvirt lifecycle event with one of `details`. (The line also says the
/// state that convergence found: usually the changed one, unless the
/// every-3-s console pass of a booted guest got there first.)
fn converged_after(log: &Path, details: &[&str]) -> bool {
    log_lines(log).iter().any(|l| {
        l.contains("converging after a libvirt event")
            && l.contains("instance=life/ev")
            && details
                .iter()
                .any(|d| l.contains(&format!("lifecycle {d}")))
    })
}

#[test]
fn domain_changes_by_hand_reach_the_agent_as_libvirt_events() {
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node, token) = node_user(&s);
    let log = s.dir.join("agent-events.log");
    let _agent = SlowScanAgent::start(&s, &token, &node, &log);
    let dir = s.scratch("life");
    let manifest = write(&dir, "life.yaml", &manifest());
    s.corral(&["apply", "-f", manifest.to_str().unwrap()]).ok();
    let diagnose = || {
        format!(
            "instance: {}\nagent log:\n{}",
            instance(&s)["status"],
            log_lines(&log).join("\n")
        )
    };
    wait_until_or("ev Running and Ready", || ready(&s), diagnose);
    let uid = instance(&s)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let domain = format!("corral-{uid}");
    assert_eq!(instance(&s)["status"]["phase"], "Running");
    // The domain has no USB controller (nothing uses one; the guest would
    // probe it at boot), as libvirt reads the definition back.
    let xml = virsh(&["dumpxml", &domain]);
    assert!(xml.contains("type='usb'"), "{xml}");
    assert!(
        xml.lines()
            .filter(|l| l.contains("<controller type='usb'"))
            .all(|l| l.contains("model='none'")),
        "{xml}"
    );

    // Paused by hand: the event wakes the agent, which finds it paused and
    // resumes it (the Instance wants it running).
    virsh(&["suspend", &domain]);
    wait_until_or(
        "the agent to converge ev after the Suspended event",
        || converged_after(&log, &["Suspended Paused"]),
        diagnose,
    );
    wait_until("ev resumed", || domstate(&domain) == "running");

    // Destroyed by hand: the event wakes the agent, which finds it shut
    // off and starts it again; the new boot is reported Ready.
    let before = domid(&domain);
    virsh(&["destroy", &domain]);
    wait_until_or(
        "the agent to converge ev after the Destroyed event",
        || // `virsh destroy` sends "Shutdown Finished after host request",
        // then "Stopped Destroyed".
        converged_after(&log, &["Shutdown Finished", "Stopped Destroyed"]),
        diagnose,
    );
    wait_until("ev started again", || {
        domstate(&domain) == "running" && domid(&domain) != before
    });
    wait_until_or("ev Ready after its new boot", || ready(&s), diagnose);
    assert_eq!(instance(&s)["status"]["phase"], "Running");
    s.corral(&[
        "delete",
        "-f",
        manifest.to_str().unwrap(),
        "--ignore-not-found",
        "--wait",
        "--timeout",
        "120s",
    ])
    .ok();
    wait_until("ev's domain removed", || {
        !common::guests::virsh_ok(&["domstate", &domain])
    });
}
