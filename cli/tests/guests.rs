//! Real guests, end to end over real processes: `corral up` (API and
//! controllers), a separate `corral agent` on `qemu:///system`, libvirtd,
//! virtlogd and QEMU (TCG here), booting the project's test guest
//! (tests/images). Needs root, libvirtd running (scripts/start-libvirt)
//! and the guest image (tests/images/build-guest); it fails, never skips,
//! when they are missing.
//!
//! Over 600 lines on purpose: its cases boot TCG guests one at a time under
//! this binary's `one_at_a_time` lock and share its helpers; as several
//! test binaries each would link the whole harness again, which costs build
//! minutes on two cores and buys no parallelism (cargo runs test binaries
//! one after another).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::guests::{
    domid, domstate, guest_project, guest_server, node_agent, one_at_a_time, repo, virsh, virsh_ok,
    wait_until, wait_until_or, Agent,
};
use common::{write, Out, Server};

fn get(s: &Server, name: &str) -> serde_json::Value {
    s.corral(&["get", "instance", name, "-p", "demo", "-o", "json"])
        .json()
}

fn phase(s: &Server, name: &str) -> String {
    get(s, name)["status"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn ready(s: &Server, name: &str) -> bool {
    get(s, name)["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn console(s: &Server, name: &str) -> String {
    s.corral(&["console", name, "-p", "demo"]).ok().to_string()
}

/// [`common::guests::boots`] of an instance of project `demo`, by name.
fn boots(s: &Server, name: &str) -> usize {
    boots_in(s, "demo", name)
}

/// [`boots`] of an instance in `project`.
fn boots_in(s: &Server, project: &str, name: &str) -> usize {
    let uid = s
        .corral(&["get", "instance", name, "-p", project, "-o", "json"])
        .json()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    common::guests::boots(s, &uid)
}

/// The value of the first console line `corral-guest: KEY VALUE`.
fn guest_lines(console: &str, key: &str) -> Vec<String> {
    let prefix = format!("corral-guest: {key} ");
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(&prefix).map(|x| x.1))
        .map(|rest| without_kernel_message(rest).to_string())
        .collect()
}

/// `rest` without a kernel message the serial console interleaved into the
/// line (`…c078c[    3.827025] IPv6: …`): the guest's text ends where a
/// printk timestamp begins.
fn without_kernel_message(rest: &str) -> &str {
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('[') {
        let after = &bytes[i + 1..];
        let digits = after
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| b.is_ascii_digit())
            .count();
        let spaces = after.iter().take_while(|b| **b == b' ').count();
        if digits > 0 && after.get(spaces + digits) == Some(&b'.') {
            return &rest[..i];
        }
    }
    rest
}

/// The examples' instance manifest with web-2 changed.
fn instances_with(web2_spec: &str, web2_meta: &str) -> String {
    let text =
        std::fs::read_to_string(repo().join("manifests/examples/50-instances.yaml")).unwrap();
    let (first, second) = text.split_once("\n---\n").expect("two documents");
    let mut second = second.replacen("spec:\n", &format!("spec:\n{web2_spec}"), 1);
    if !web2_meta.is_empty() {
        second = second.replacen("metadata:\n", &format!("metadata:\n{web2_meta}"), 1);
    }
    format!("{first}\n---\n{second}")
}

fn apply_web2(s: &Server, dir: &Path, spec: &str, meta: &str) -> Out {
    let p = write(dir, "instances.yaml", &instances_with(spec, meta));
    s.corral(&["apply", "-f", p.to_str().unwrap()])
}

fn apply(s: &Server, dir: &Path, name: &str, yaml: &str) {
    let p = write(dir, name, yaml);
    s.corral(&["apply", "-f", p.to_str().unwrap()]).ok();
}

fn get_in(s: &Server, kind: &str, name: &str) -> serde_json::Value {
    s.corral(&["get", kind, name, "-p", "vols", "-o", "json"])
        .json()
}

fn console_in(s: &Server, name: &str) -> String {
    s.corral(&["console", name, "-p", "vols"]).ok().to_string()
}

fn ready_in(s: &Server, name: &str) -> bool {
    get_in(s, "instance", name)["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn vols_base() -> String {
    guest_project("vols", "10.43.0.0/24", "nat")
}

fn instance_yaml(name: &str, volumes: &[(&str, &str)], user_data: &str) -> String {
    let mut vols = String::new();
    for (v, d) in volumes {
        vols.push_str(&format!("    - {{volume: {v}, device: {d}}}\n"));
    }
    let vols = if vols.is_empty() {
        String::new()
    } else {
        format!("  volumes:\n{vols}")
    };
    let ud: String = user_data.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: corral/v1\nkind: Instance\nmetadata: {{name: {name}, project: vols}}\nspec:\n  instanceType: m1.tiny\n  image: tiny\n  nics: [{{network: lan}}]\n{vols}  userData: |\n{ud}"
    )
}

const WRITER: &str = "#!/bin/sh
( while [ ! -b /dev/vdb ]; do sleep 1; done
  printf corral-volume-data-42 | dd of=/dev/vdb conv=fsync 2>/dev/null
  echo corral-test: wrote > /dev/console ) </dev/null >/dev/null 2>&1 &
";

const READER: &str = "#!/bin/sh
echo vdb=$(head -c 21 /dev/vdb)
echo vdc=$(head -c 21 /dev/vdc)
";

#[test]
fn volumes_hot_plug_snapshot_clone_boot_and_outlive_instances() {
    let _one = one_at_a_time();
    let (s, _cleanup, guest) = guest_server();
    let (_node, _token, agent) = node_agent(&s);
    let dir = s.scratch("vols");
    let files = s.dir.join("agent");

    // A running guest gets a volume hot-plugged and writes to it.
    apply(&s, &dir, "base.yaml", &vols_base());
    apply(
        &s,
        &dir,
        "writer.yaml",
        &instance_yaml("writer", &[], WRITER),
    );
    wait_until("writer Ready", || ready_in(&s, "writer"));
    apply(&s, &dir, "v1.yaml", "apiVersion: corral/v1\nkind: Volume\nmetadata: {name: v1, project: vols}\nspec: {sizeGiB: 1}\n");
    apply(
        &s,
        &dir,
        "writer.yaml",
        &instance_yaml("writer", &[("v1", "vdb")], WRITER),
    );
    wait_until_or(
        "the volume hot-plugged and written",
        || {
            let c = console_in(&s, "writer");
            c.contains("corral-guest: hotplug vdb 1073741824") && c.contains("corral-test: wrote")
        },
        || {
            let uid = get_in(&s, "instance", "writer")["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            format!(
                "{}\n{}",
                console_in(&s, "writer"),
                virsh(&["domblklist", &format!("corral-{uid}")])
            )
        },
    );
    let v1 = get_in(&s, "volume", "v1");
    assert_eq!(v1["status"]["phase"], "in-use", "{v1}");
    assert_eq!(v1["status"]["attachedTo"]["instance"], "writer", "{v1}");

    // Snapshot it; then the instance goes and the volume stays.
    apply(&s, &dir, "s1.yaml", "apiVersion: corral/v1\nkind: Snapshot\nmetadata: {name: s1, project: vols}\nspec: {volume: v1}\n");
    s.corral(&[
        "wait",
        "snapshot/s1",
        "-p",
        "vols",
        "--for",
        "phase=completed",
        "--timeout",
        "120s",
    ])
    .ok();
    s.corral(&[
        "delete",
        "instance",
        "writer",
        "-p",
        "vols",
        "--wait",
        "--timeout",
        "120s",
    ])
    .ok();
    wait_until("v1 available again", || {
        get_in(&s, "volume", "v1")["status"]["phase"] == "available"
    });
    let v1_uid = get_in(&s, "volume", "v1")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(files
        .join("volumes")
        .join(format!("{v1_uid}.qcow2"))
        .is_file());

    // A clone of the snapshot and the original, on a new instance: both
    // hold what the first guest wrote. A third boots from a volume.
    apply(&s, &dir, "v2.yaml", "apiVersion: corral/v1\nkind: Volume\nmetadata: {name: v2, project: vols}\nspec: {source: {snapshot: s1}}\n---\napiVersion: corral/v1\nkind: Volume\nmetadata: {name: v3, project: vols}\nspec: {source: {image: tiny}, sizeGiB: 1}\n");
    apply(
        &s,
        &dir,
        "reader.yaml",
        &instance_yaml("reader", &[("v1", "vdb"), ("v2", "vdc")], READER),
    );
    apply(&s, &dir, "vboot.yaml", "apiVersion: corral/v1\nkind: Instance\nmetadata: {name: vboot, project: vols}\nspec:\n  instanceType: m1.tiny\n  bootVolume: v3\n  nics: [{network: lan}]\n");
    wait_until("reader Ready", || ready_in(&s, "reader"));
    let c = console_in(&s, "reader");
    assert!(
        c.contains("corral-guest: user-data-out vdb=corral-volume-data-42"),
        "{c}"
    );
    assert!(
        c.contains("corral-guest: user-data-out vdc=corral-volume-data-42"),
        "{c}"
    );
    wait_until("vboot Ready", || ready_in(&s, "vboot"));

    // AKI/ARI-style: a kernel uploaded with the CLI, a ramdisk imported,
    // and a machine image that boots them directly.
    apply(
        &s,
        &dir,
        "kernel.yaml",
        &format!(
            "apiVersion: corral/v1\nkind: Image\nmetadata: {{name: kernel, project: vols}}\nspec: {{source: {{upload: true}}, format: raw, imageType: kernel}}\n---\napiVersion: corral/v1\nkind: Image\nmetadata: {{name: ramdisk, project: vols}}\nspec: {{source: {{path: {}}}, format: raw, imageType: ramdisk}}\n---\napiVersion: corral/v1\nkind: Image\nmetadata: {{name: direct, project: vols}}\nspec:\n  source: {{path: /var/lib/corral/import/tiny.qcow2}}\n  kernel: kernel\n  ramdisk: ramdisk\n  kernelArgs: console=ttyS0 corral.direct=1\n",
            "/var/lib/corral/import/initrd.img"
        ),
    );
    let up = s.corral(&[
        "image",
        "upload",
        "kernel",
        guest.join("vmlinuz").to_str().unwrap(),
        "-p",
        "vols",
    ]);
    assert!(up.ok().starts_with("image/kernel uploaded: "), "{up:#?}");
    s.corral(&[
        "wait",
        "image/kernel",
        "image/ramdisk",
        "image/direct",
        "-p",
        "vols",
        "--for",
        "phase=available",
        "--timeout",
        "120s",
    ])
    .ok();
    apply(
        &s,
        &dir,
        "kboot.yaml",
        "apiVersion: corral/v1\nkind: Instance\nmetadata: {name: kboot, project: vols}\nspec:\n  instanceType: m1.tiny\n  image: direct\n  nics: [{network: lan}]\n",
    );
    wait_until_or(
        "kboot Ready",
        || ready_in(&s, "kboot"),
        || {
            let d = s
                .corral(&["describe", "instance", "kboot", "-p", "vols"])
                .stdout;
            let c = console_in(&s, "kboot");
            format!("{d}\n{}", &c[c.len().saturating_sub(3000)..])
        },
    );
    let c = console_in(&s, "kboot");
    assert!(
        c.contains("Command line: console=ttyS0 corral.direct=1"),
        "{c}"
    );
    s.corral(&[
        "delete",
        "instance",
        "kboot",
        "-p",
        "vols",
        "--wait",
        "--timeout",
        "120s",
    ])
    .ok();
    assert!(console_in(&s, "vboot").contains("corral-guest: blockdev vda 1073741824"));

    // Unplugged from a running guest.
    apply(
        &s,
        &dir,
        "reader.yaml",
        &instance_yaml("reader", &[("v2", "vdc")], READER),
    );
    wait_until("vdb unplugged", || {
        console_in(&s, "reader").contains("corral-guest: unplug vdb")
    });
    wait_until("v1 available", || {
        get_in(&s, "volume", "v1")["status"]["phase"] == "available"
    });

    // A volume in use is not deleted until it is free.
    s.corral(&["delete", "volume", "v2", "-p", "vols"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    let v2 = get_in(&s, "volume", "v2");
    assert_eq!(v2["status"]["phase"], "deleting", "{v2}");
    assert!(
        v2["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("in use by instance \"reader\""),
        "{v2}"
    );
    let v2_uid = v2["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(files
        .join("volumes")
        .join(format!("{v2_uid}.qcow2"))
        .is_file());
    s.corral(&[
        "delete",
        "instance",
        "reader",
        "-p",
        "vols",
        "--wait",
        "--timeout",
        "120s",
    ])
    .ok();
    wait_until("v2 gone", || {
        s.corral(&["get", "volume", "v2", "-p", "vols"]).code != 0
    });
    assert!(!files
        .join("volumes")
        .join(format!("{v2_uid}.qcow2"))
        .exists());

    // Everything deleted: no file, no domain left.
    for f in ["vboot.yaml", "s1.yaml", "v1.yaml", "v2.yaml"] {
        s.corral(&[
            "delete",
            "-f",
            dir.join(f).to_str().unwrap(),
            "--ignore-not-found",
            "--wait",
            "--timeout",
            "120s",
        ])
        .ok();
    }
    let left = |sub: &str| {
        std::fs::read_dir(files.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_until("no volume or snapshot files", || {
        left("volumes") == 0 && left("snapshots") == 0 && left("instances") == 0
    });
    drop(agent);
}

#[test]
fn examples_boot_real_guests_that_obey_power_and_survive_drift() {
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (node, token, mut agent) = node_agent(&s);

    let examples = repo().join("manifests/examples");
    s.corral(&["apply", "-f", examples.to_str().unwrap()]).ok();
    let out = s.corral(&[
        "wait",
        "image/tiny",
        "-p",
        "demo",
        "--for",
        "phase=available",
        "--timeout",
        "120s",
    ]);
    assert_eq!(
        out.code,
        0,
        "{out:#?}\n{}",
        s.corral(&["get", "image", "tiny", "-p", "demo", "-o", "yaml"])
            .stdout
    );

    // Both example instances boot and say what they were given.
    for name in ["web-1", "web-2"] {
        wait_until(&format!("{name} Ready"), || ready(&s, name));
        assert_eq!(phase(&s, name), "Running");
        let i = get(&s, name);
        let uid = i["metadata"]["uid"].as_str().unwrap().to_string();
        let domain = format!("corral-{uid}");
        assert_eq!(domstate(&domain), "running");
        let text = console(&s, name);
        let keys = guest_lines(&text, "public-key");
        assert_eq!(
            keys,
            ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb admin@demo"],
            "{text}"
        );
        let b64 = guest_lines(&text, "user-data-b64");
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(b64.first().expect("a user-data line"))
            .unwrap();
        assert_eq!(
            String::from_utf8(user_data).unwrap(),
            i["spec"]["userData"].as_str().unwrap(),
            "{text}"
        );
        assert_eq!(guest_lines(&text, "hostname"), [name]);
        // The instance id is the EC2 id (`i-` and 17 hex digits).
        let id = guest_lines(&text, "instance-id");
        assert!(
            id.len() == 1 && id[0].starts_with("i-") && id[0].len() == 19,
            "{text}"
        );
    }

    // The same console through the EC2 façade, with the aws CLI.
    let web1_id = s
        .corral(&["get", "instance", "web-1", "-p", "demo", "-o", "wide"])
        .ok()
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .expect("web-1's EC2 id")
        .to_string();
    // A member of the project (an admin's EC2 calls act in `default`).
    let created = s.corral(&[
        "user",
        "create",
        "demo-dev",
        "--role",
        "member",
        "--project",
        "demo",
    ]);
    let field = |name: &str| {
        created
            .ok()
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} in {created:#?}"))
    };
    let (key_id, secret) = (field("EC2 access key id:"), field("EC2 secret access key:"));
    let cfg = s.home.join(".config/corral");
    let out = Command::new("aws")
        .args(["ec2", "get-console-output", "--instance-id", &web1_id])
        .args(["--output", "text", "--query", "Output"])
        .env("AWS_CONFIG_FILE", cfg.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_PROFILE", "corral")
        .env("AWS_ACCESS_KEY_ID", &key_id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .env_remove("AWS_SESSION_TOKEN")
        // The profile's ca_bundle (Corral's CA) must decide, not a bundle
        // of the machine's environment.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("running aws (pip install awscli)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("corral-guest: hostname web-1"),
        "aws ec2 get-console-output: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let web2 = get(&s, "web-2");
    let domain = format!("corral-{}", web2["metadata"]["uid"].as_str().unwrap());
    let scratch = s.scratch("guests");

    // Stop: a clean ACPI power-off, then shut off in libvirt.
    apply_web2(&s, &scratch, "  powerState: Stopped\n", "").ok();
    wait_until("web-2 Stopped", || phase(&s, "web-2") == "Stopped");
    assert_eq!(domstate(&domain), "shut off");
    assert!(console(&s, "web-2").contains("corral-guest: poweroff"));

    // Start again: a second boot.
    apply_web2(&s, &scratch, "", "").ok();
    wait_until("web-2 Ready again", || ready(&s, "web-2"));
    assert_eq!(boots(&s, "web-2"), 2);

    // Pause and resume: no new boot.
    apply_web2(&s, &scratch, "  powerState: Paused\n", "").ok();
    wait_until("web-2 Paused", || phase(&s, "web-2") == "Paused");
    assert_eq!(domstate(&domain), "paused");
    apply_web2(&s, &scratch, "", "").ok();
    wait_until("web-2 Running after pause", || {
        phase(&s, "web-2") == "Running" && domstate(&domain) == "running"
    });

    // Suspend (managed save) and resume: memory comes back, no new boot.
    apply_web2(&s, &scratch, "  powerState: Suspended\n", "").ok();
    wait_until("web-2 Suspended", || phase(&s, "web-2") == "Suspended");
    assert_eq!(domstate(&domain), "shut off");
    assert!(virsh(&["dominfo", &domain]).contains("Managed save:   yes"));
    apply_web2(&s, &scratch, "", "").ok();
    wait_until("web-2 Running after suspend", || {
        phase(&s, "web-2") == "Running" && domstate(&domain) == "running"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(boots(&s, "web-2"), 2, "resume must not reboot");

    // Reboot on request: a third boot.
    apply_web2(
        &s,
        &scratch,
        "",
        "  annotations:\n    corral/reboot-requested-at: \"2026-11-25T12:00:00Z\"\n",
    )
    .ok();
    wait_until("web-2 rebooted", || {
        boots(&s, "web-2") == 3 && ready(&s, "web-2")
    });

    // Destroyed by hand: back within seconds.
    let before = domid(&domain);
    virsh(&["destroy", &domain]);
    wait_until("web-2 restarted after virsh destroy", || {
        domstate(&domain) == "running" && domid(&domain) != before
    });
    // Undefined by hand: defined again on the same disk.
    virsh(&["destroy", &domain]);
    virsh(&["undefine", &domain]);
    wait_until("web-2 redefined", || {
        virsh_ok(&["domstate", &domain]) && domstate(&domain) == "running"
    });
    wait_until("web-2 Ready after redefinition", || ready(&s, "web-2"));

    // The agent killed and restarted: guests untouched.
    let web1 = format!(
        "corral-{}",
        get(&s, "web-1")["metadata"]["uid"].as_str().unwrap()
    );
    let ids = (domid(&web1), domid(&domain));
    let boots_before = (boots(&s, "web-1"), boots(&s, "web-2"));
    agent.kill();
    agent = Agent::start(&s, &token, &node, &s.dir);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!((domid(&web1), domid(&domain)), ids);
    assert_eq!((boots(&s, "web-1"), boots(&s, "web-2")), boots_before);
    assert!(ready(&s, "web-1") && ready(&s, "web-2"));

    // A root disk deleted by hand is reported (the guest keeps running on
    // the open file; nothing is recreated under it).
    let web1_uid = get(&s, "web-1")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let disk = s
        .dir
        .join("agent/instances")
        .join(&web1_uid)
        .join("disk.qcow2");
    std::fs::remove_file(&disk).unwrap();
    wait_until_or(
        "web-1 Drifted",
        || {
            get(&s, "web-1")["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"] == "Drifted"
                            && c["status"] == "True"
                            && c["reason"] == "DiskMissing"
                            && c["message"].as_str().unwrap_or("").contains("disk.qcow2")
                    })
                })
        },
        || {
            s.corral(&["describe", "instance", "web-1", "-p", "demo"])
                .stdout
        },
    );
    assert!(!disk.exists(), "the agent must not recreate a deleted disk");
    assert_eq!(domstate(&web1), "running");

    // Deleting everything leaves no domain and no file behind.
    let uids: BTreeSet<String> = ["web-1", "web-2"]
        .iter()
        .map(|n| get(&s, n)["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    s.corral(&["delete", "-f", examples.to_str().unwrap()]).ok();
    wait_until("instances gone", || {
        s.corral(&["get", "instances", "-p", "demo", "-o", "name"])
            .stdout
            .trim()
            .is_empty()
    });
    let all = virsh(&["list", "--all", "--name"]);
    for uid in &uids {
        assert!(
            !all.contains(uid.as_str()),
            "domain of {uid} left behind: {all}"
        );
        let dir = s.dir.join("agent/instances").join(uid);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    agent.kill();
}

fn nets() -> String {
    guest_project("nets", "10.61.0.0/24", "nat")
        + "---
apiVersion: corral/v1
kind: Network
metadata: {name: iso, project: nets}
spec: {cidr: 10.62.0.0/24, mode: isolated}
---
apiVersion: corral/v1
kind: Network
metadata: {name: public, project: nets}
spec: {cidr: 203.0.113.0/24, mode: nat}
---
apiVersion: corral/v1
kind: Instance
metadata: {name: a, project: nets}
spec:
  instanceType: m1.tiny
  image: tiny
  nics: [{network: lan, fixedIp: 10.61.0.10, securityGroups: [web]}]
---
apiVersion: corral/v1
kind: Instance
metadata: {name: b, project: nets}
spec:
  instanceType: m1.tiny
  image: tiny
  nics:
    - {network: lan, fixedIp: 10.61.0.11, securityGroups: [client]}
    - {network: iso, fixedIp: 10.62.0.11}
  userData: |
    #!/bin/sh
    corral-fetch http://10.61.0.10/ &
    corral-fetch http://198.51.100.2/ &
---
apiVersion: corral/v1
kind: Instance
metadata: {name: c, project: nets}
spec:
  instanceType: m1.tiny
  image: tiny
  nics: [{network: iso, fixedIp: 10.62.0.10}]
  userData: |
    #!/bin/sh
    corral-fetch http://10.61.0.10/ &
    corral-fetch http://198.51.100.2/ &
"
}

/// Security group `web`: HTTP from the host's address and, when
/// `from_clients`, from the members of group `client`.
fn web_group(host: &str, from_clients: bool) -> String {
    let clients = if from_clients {
        "    - {protocol: tcp, fromPort: 80, toPort: 80, sourceGroup: client}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: corral/v1\nkind: SecurityGroup\nmetadata: {{name: web, project: nets}}\nspec:\n  ingress:\n    - {{protocol: tcp, fromPort: 80, toPort: 80, cidr: {host}/32}}\n{clients}"
    )
}

fn address(instance: Option<&str>) -> String {
    let inst = instance
        .map(|i| format!(", instance: {i}"))
        .unwrap_or_default();
    format!("apiVersion: corral/v1\nkind: Address\nmetadata: {{name: a-ip, project: nets}}\nspec: {{network: public{inst}}}\n")
}

/// The body of `GET /` from `ip`:80, if it answers within a few seconds.
fn http_get(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().ok()?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.trim().to_string())
}

/// The address this host sends from towards `ip`.
fn source_address_towards(ip: &str) -> String {
    let out = Command::new("ip")
        .args(["route", "get", ip])
        .output()
        .expect("running ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next().unwrap_or_default().to_string();
        }
    }
    panic!("no source address towards {ip}: {text}")
}

/// "The outside world" for NAT: a network namespace behind a veth pair
/// (198.51.100.1 on the host, .2 inside) whose web server logs who asked.
struct Uplink {
    server: Child,
    log: PathBuf,
}

const UPLINK_NS: &str = "corral-test-uplink";

impl Uplink {
    fn start(dir: &Path) -> Uplink {
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["netns", "del", UPLINK_NS])
            .status();
        let _ = Command::new("ip").args(["link", "del", "cupl0"]).status();
        sh(&format!(
            "ip netns add {UPLINK_NS} && ip link add cupl0 type veth peer name cupl1 \
             && ip link set cupl1 netns {UPLINK_NS} && ip addr add 198.51.100.1/24 dev cupl0 \
             && ip link set cupl0 up && ip netns exec {UPLINK_NS} ip addr add 198.51.100.2/24 dev cupl1 \
             && ip netns exec {UPLINK_NS} ip link set cupl1 up && ip netns exec {UPLINK_NS} ip link set lo up"
        ));
        let root = dir.join("uplink");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), "outside\n").unwrap();
        let log = dir.join("uplink.log");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                UPLINK_NS,
                "python3",
                "-m",
                "http.server",
                "80",
                "--bind",
                "198.51.100.2",
            ])
            .current_dir(&root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 -m http.server");
        Uplink { server, log }
    }

    /// The client addresses the outside server saw.
    fn clients(&self) -> BTreeSet<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", UPLINK_NS])
            .status();
        let _ = Command::new("ip").args(["link", "del", "cupl0"]).status();
    }
}

/// What of Corral's host networking is left: bridges, libvirt networks,
/// dnsmasq processes, iptables chains and lease files.
fn host_networking_left() -> Vec<String> {
    let mut left = Vec::new();
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(dev) = l.split(": ").nth(1) {
            if dev.starts_with("crb") || dev.starts_with("crt") {
                left.push(format!("link {dev}"));
            }
        }
    }
    for n in virsh(&["net-list", "--all", "--name"]).lines() {
        if n.trim().starts_with("corral-") {
            left.push(format!("network {}", n.trim()));
        }
    }
    let save = Command::new("iptables-save").output().unwrap();
    for l in String::from_utf8_lossy(&save.stdout).lines() {
        if l.contains("CORRAL-") {
            left.push(format!("iptables {l}"));
        }
    }
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    for l in String::from_utf8_lossy(&ps.stdout).lines() {
        if l.contains("dnsmasq") && l.contains("corral-") {
            left.push(format!("process {l}"));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/var/lib/libvirt/dnsmasq") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("crb") || name.starts_with("corral-") {
                left.push(format!("file {name}"));
            }
        }
    }
    left
}

#[test]
fn guests_get_their_addresses_metadata_groups_and_floating_ips() {
    let _one = one_at_a_time();
    let (s, _cleanup, _guest) = guest_server();
    let (_node, _token, agent) = node_agent(&s);
    let dir = s.scratch("nets");
    let host = source_address_towards("203.0.113.10");
    let uplink = Uplink::start(&s.scratch("uplink"));
    apply(&s, &dir, "nets.yaml", &nets());
    apply(&s, &dir, "web.yaml", &web_group(&host, true));
    apply(
        &s,
        &dir,
        "client.yaml",
        "apiVersion: corral/v1\nkind: SecurityGroup\nmetadata: {name: client, project: nets}\nspec: {description: fetches from web}\n",
    );
    apply(&s, &dir, "address.yaml", &address(Some("a")));

    let get = |kind: &str, name: &str| {
        s.corral(&["get", kind, name, "-p", "nets", "-o", "json"])
            .json()
    };
    let console = |name: &str| s.corral(&["console", name, "-p", "nets"]).ok().to_string();
    let condition = |name: &str, t: &str| -> (String, String) {
        get("instance", name)["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    let diagnose = |name: &str| {
        format!(
            "{name}: {}\nconsole:\n{}\nagent log tail:\n{}",
            get("instance", name),
            console(name),
            std::fs::read_to_string("/tmp/corral-guests-agent.log")
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // Each guest gets by DHCP exactly the address its status shows, and
    // the metadata service tells it its own id and address (v1 and v2).
    for (name, ip) in [
        ("a", "10.61.0.10"),
        ("b", "10.61.0.11"),
        ("c", "10.62.0.10"),
    ] {
        wait_until_or(
            &format!("{name} to say who it is"),
            || !guest_lines(&console(name), "imds-v2").is_empty(),
            || diagnose(name),
        );
        let i = get("instance", name);
        assert_eq!(i["status"]["addresses"][0]["ip"], ip, "{i}");
        let con = console(name);
        // The id the seed gave it (what EC2 calls the instance).
        let id = guest_lines(&con, "instance-id")[0].clone();
        assert!(id.starts_with("i-") && id.len() == 19, "{id}");
        let net = guest_lines(&con, "net");
        assert!(
            net.iter()
                .any(|l| l.starts_with("eth0 ") && l.contains(&format!(" ip {ip}/24 "))),
            "{name} leased {ip}: {net:?}\n{con}"
        );
        assert_eq!(
            guest_lines(&con, "imds-v1 instance-id"),
            std::slice::from_ref(&id),
            "{con}"
        );
        assert_eq!(guest_lines(&con, "imds-v1 local-ipv4"), [ip], "{con}");
        assert_eq!(guest_lines(&con, "imds-v2 instance-id"), [id], "{con}");
        wait_until_or(
            &format!("{name}'s lease to be reported"),
            || condition(name, "AddressLeased") == ("True".into(), "Leased".into()),
            || diagnose(name),
        );
    }
    // b's second NIC, on the isolated network, got its address too.
    let b_net = guest_lines(&console("b"), "net");
    assert!(
        b_net
            .iter()
            .any(|l| l.starts_with("eth1 ") && l.contains(" ip 10.62.0.11/24 gw -")),
        "{b_net:?}"
    );
    // The isolated network's default route is absent; its guest can't
    // reach the NAT network's guests.
    let c_net = guest_lines(&console("c"), "net");
    assert!(c_net[0].ends_with(" gw -"), "{c_net:?}");

    // b reaches a's web server while a's group admits b's group.
    let a_id = guest_lines(&console("a"), "instance-id")[0].clone();
    let fetches = |name: &str| guest_lines(&console(name), "fetch http://10.61.0.10/");
    wait_until_or(
        "b to fetch a's page",
        || fetches("b").iter().any(|l| l.starts_with("ok ")),
        || diagnose("b"),
    );
    assert_eq!(
        fetches("b").last(),
        Some(&format!("ok {} corral-guest a {a_id}", fetches("b").len())),
        "b got a's page"
    );
    // The host reaches a through its floating address.
    wait_until("the floating address", || {
        get("address", "a-ip")["status"]["ip"].is_string()
            && get("instance", "a")["status"]["addresses"][0]["floatingIp"].is_string()
    });
    let fip = get("address", "a-ip")["status"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fip.starts_with("203.0.113."), "{fip}");
    wait_until_or(
        "a's page through its floating address",
        || http_get(&fip) == Some(format!("corral-guest a {a_id}")),
        || diagnose("a"),
    );
    assert!(
        fetches("c").iter().all(|l| l.starts_with("fail")),
        "the isolated guest reached a: {:?}",
        fetches("c")
    );
    assert!(!fetches("c").is_empty(), "c tried: {}", console("c"));

    // NAT: b reaches the outside, which sees the host's address, never
    // the guest's; the isolated c does not get there.
    let outside = |name: &str| guest_lines(&console(name), "fetch http://198.51.100.2/");
    wait_until_or(
        "b to reach the outside",
        || outside("b").iter().any(|l| l.starts_with("ok ")),
        || diagnose("b"),
    );
    assert_eq!(
        uplink.clients(),
        BTreeSet::from(["198.51.100.1".to_string()])
    );
    assert!(
        !outside("c").is_empty() && outside("c").iter().all(|l| l.starts_with("fail")),
        "{:?}",
        outside("c")
    );

    // Removing the rule cuts b off within seconds, without a restart.
    let boots_before: Vec<usize> = ["a", "b"].iter().map(|n| boots_in(&s, "nets", n)).collect();
    apply(&s, &dir, "web.yaml", &web_group(&host, false));
    // corral-fetch numbers its lines by change: a refusal after the page
    // is a "fail" line after the last "ok" (b may have been refused once
    // before the rule arrived, so the numbers are not fixed).
    let refused_after_ok = |lines: Vec<String>| {
        lines.last().is_some_and(|l| l.starts_with("fail"))
            && lines.iter().any(|l| l.starts_with("ok "))
    };
    wait_until_or(
        "b to be refused",
        || refused_after_ok(fetches("b")),
        || diagnose("b"),
    );
    // An egress rule on b's group confines it to its own network: the
    // outside no longer answers it.
    apply(
        &s,
        &dir,
        "client.yaml",
        "apiVersion: corral/v1\nkind: SecurityGroup\nmetadata: {name: client, project: nets}\nspec:\n  egress:\n    - {protocol: tcp, fromPort: 80, toPort: 80, cidr: 10.61.0.0/24}\n",
    );
    wait_until_or(
        "b's egress to be confined",
        || refused_after_ok(outside("b")),
        || diagnose("b"),
    );
    // Disassociating the address takes the host's way in away.
    apply(&s, &dir, "address.yaml", &address(None));
    // (Whatever else the host's routing reaches may answer; a does not.)
    wait_until("a's floating address to stop reaching a", || {
        http_get(&fip) != Some(format!("corral-guest a {a_id}"))
    });
    assert!(get("instance", "a")["status"]["addresses"][0]["floatingIp"].is_null());
    let boots_after: Vec<usize> = ["a", "b"].iter().map(|n| boots_in(&s, "nets", n)).collect();
    assert_eq!(boots_before, boots_after, "no guest restarted");

    // Deleting everything leaves nothing of the host networking behind.
    s.corral(&["delete", "-f", dir.to_str().unwrap()]).ok();
    wait_until_or(
        "host networking to be gone",
        || host_networking_left().is_empty(),
        || format!("{:#?}", host_networking_left()),
    );
    drop(agent);
}

#[test]
fn kernel_messages_interleaved_on_the_console_are_cut_off() {
    let console = "corral-guest: instance-id i-f0d9e2feae6ac078c[    3.827025] IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready\r\n\
                   corral-guest: hostname web-2\n";
    assert_eq!(guest_lines(console, "instance-id"), ["i-f0d9e2feae6ac078c"]);
    assert_eq!(guest_lines(console, "hostname"), ["web-2"]);
    assert_eq!(without_kernel_message("a [b] c"), "a [b] c");
}
