//! boto 2 (PyPI `boto`, the library euca2ools 2 was built on) walking the
//! euca2ools tutorial against a real `corral up` — its EC2 façade, its
//! controllers and its node agent on a simulated host: add-keypair,
//! authorize tcp/22 in the default group, run-instances -t m1.tiny -k,
//! describe until running, get-console-output, terminate, revoke,
//! delete-keypair. It signs with SigV2 (as earlier boto 2 releases and
//! euca2ools 2 signed EC2) and then with SigV4 (boto 2.49's default), both
//! with boto 2's API version 2014-10-01; the steps and their checks are
//! tests/python/boto2_tutorial.py.
//!
//! The user's credentials are the rc file `corral credentials` writes,
//! sourced by `sh` before Python runs (its EC2_URL, EC2_ACCESS_KEY,
//! EC2_SECRET_KEY and AWS_CA_BUNDLE). boto 2 and openssl are required: a
//! missing one fails the test with what to install (`scripts/install-deps`
//! installs both).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{write, Out, Server};

/// Environment of the test run that must not reach boto, beyond
/// `common::AWS_ENV`: euca2ools-era endpoints and keys, and boto's own
/// config files (HOME is the server's, so `~/.boto` is empty).
const LEAKS: &[&str] = &[
    "EC2_URL",
    "EC2_ACCESS_KEY",
    "EC2_SECRET_KEY",
    "EC2_USE_SIGV4",
    "BOTO_CONFIG",
    "BOTO_PATH",
];

fn need(tool: &str, args: &[&str], install: &str) {
    let out = Command::new(tool).args(args).output();
    let ok = out.as_ref().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "`{tool} {}` failed ({out:?}): install {install} (scripts/install-deps does)",
        args.join(" ")
    );
}

/// Project `tutorial` with a network and the image `tiny`, and user
/// `eve`'s rc file.
fn setup(s: &Server, dir: &Path) -> std::path::PathBuf {
    s.corral(&["project", "create", "tutorial"]).ok();
    s.corral(&["user", "create", "eve", "--project", "tutorial"])
        .ok();
    let rc = dir.join("eve.rc");
    s.corral(&["credentials", "--user", "eve", "-o", rc.to_str().unwrap()])
        .ok();
    let manifests = write(
        dir,
        "tutorial.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: default, project: tutorial}\n\
         spec: {cidr: 172.31.0.0/16}\n---\n\
         apiVersion: corral/v1\nkind: Image\nmetadata: {name: tiny, project: tutorial}\n\
         spec: {source: {upload: true}, format: raw}\n",
    );
    s.corral(&["apply", "-f", manifests.to_str().unwrap()]).ok();
    rc
}

#[test]
fn boto2_walks_the_euca2ools_tutorial_through_corral_up() {
    need(
        "python3",
        &["-c", "import boto.ec2"],
        "boto 2 with `pip install boto==2.49.0`",
    );
    need("openssl", &["version"], "openssl");
    let s = Server::start();
    let dir = s.scratch("boto2");
    let rc = setup(&s, &dir);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/boto2_tutorial.py"
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#". "$1" && exec python3 "$2""#)
        .arg("boto2")
        .arg(&rc)
        .arg(script)
        .env("HOME", &s.home)
        .env("IMAGE_NAME", "tiny")
        // The simulated host prints no console: GetConsoleOutput answers
        // the instance and a time, and no output.
        .env("CONSOLE", "none")
        .stdin(Stdio::null());
    for v in common::AWS_ENV.iter().chain(LEAKS) {
        cmd.env_remove(v);
    }
    let out = Out::from(cmd.output().expect("running sh and python3"));
    assert_eq!(out.code, 0, "the boto 2 tutorial failed: {out:#?}");
    for line in [
        "boto 2 tutorial (SigV2): ok",
        "boto 2 tutorial (SigV4): ok",
        "boto 2.49.0: euca2ools tutorial: ok",
    ] {
        assert!(out.stdout.contains(line), "{out:#?}");
    }
}
