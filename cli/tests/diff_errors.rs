//! `corral diff` exit codes, and how manifest, validation and server
//! errors are reported (file, line, column, field path; exit 2 before
//! anything is sent, 1 when the server refuses).

mod common;

use common::{names, shared, write};

fn network(project: &str, name: &str, app: &str, cidr: &str) -> String {
    format!(
        "apiVersion: corral/v1\nkind: Network\nmetadata:\n  name: {name}\n  project: {project}\n  labels: {{app: {app}}}\nspec:\n  cidr: {cidr}\n"
    )
}

#[test]
fn diff_exit_codes() {
    let s = shared();
    s.corral(&["project", "create", "diffs"]).ok();
    let dir = s.scratch("diff");
    let file = write(
        &dir,
        "n.yaml",
        &network("diffs", "n", "one", "10.20.0.0/24"),
    );
    let file = file.to_str().unwrap();

    // Not there yet: everything is new.
    let out = s.corral(&["diff", "-f", file]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stdout
            .starts_with("--- live/network/n\n+++ manifest/network/n\n"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("\n+kind: Network\n"), "{out:#?}");

    s.corral(&["apply", "-f", file]).ok();
    let out = s.corral(&["diff", "-f", file]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.stdout, "");

    // A changed field: one `-` and one `+` line for it.
    write(
        &dir,
        "n.yaml",
        &network("diffs", "n", "two", "10.20.0.0/24"),
    );
    let out = s.corral(&["diff", "-f", file]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stdout.contains("\n-    app: one\n+    app: two\n"),
        "{out:#?}"
    );
    // Defaults are not differences (gateway, dhcp, mode were defaulted).
    assert!(!out.stdout.contains("gateway"), "{out:#?}");

    // A broken file: > 1.
    write(&dir, "broken.yaml", "kind: Network\nmetadata: [unclosed\n");
    let out = s.corral(&["diff", "-f", dir.join("broken.yaml").to_str().unwrap()]);
    assert!(out.code > 1, "{out:#?}");
    assert!(out.stderr.contains("broken.yaml"), "{out:#?}");
    // An unreachable server is an error too, not "differences".
    let out = s.corral(&["diff", "-f", file, "--server", "http://127.0.0.1:1"]);
    assert!(out.code > 1, "{out:#?}");
}

#[test]
fn syntax_errors_name_file_line_and_column_and_nothing_is_sent() {
    let s = shared();
    s.corral(&["project", "create", "errs"]).ok();
    let dir = s.scratch("syntax");
    // A good file first in order: still not applied.
    write(
        &dir,
        "a-good.yaml",
        &network("errs", "good", "x", "10.30.0.0/24"),
    );
    write(
        &dir,
        "b-bad.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata:\n  name: bad\n   project: errs\n",
    );
    let out = s.corral(&["apply", "-f", dir.to_str().unwrap()]);
    let err = out.fails_with(2);
    assert!(err.contains("b-bad.yaml"), "{err}");
    assert!(err.contains("line 5 column 11"), "{err}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    let get = s.corral(&["get", "network", "good", "-p", "errs"]);
    assert!(get.fails_with(1).contains("not found"));
}

#[test]
fn unknown_fields_name_their_path() {
    let s = shared();
    let dir = s.scratch("unknown");
    let file = write(
        &dir,
        "i.yaml",
        "apiVersion: corral/v1\nkind: Instance\nmetadata: {name: web, project: errs}\nspec:\n  image: tiny\n  nics:\n    - netwrok: lan\n",
    );
    let out = s.corral(&["apply", "-f", file.to_str().unwrap()]);
    let err = out.fails_with(2);
    assert!(err.contains("i.yaml"), "{err}");
    assert!(
        err.contains("spec.nics[0].netwrok: unknown field \"netwrok\""),
        "{err}"
    );
    assert!(err.contains("line 7"), "{err}");
}

#[test]
fn validation_errors_client_side_and_server_side() {
    let s = shared();
    s.corral(&["project", "create", "valid"]).ok();
    let dir = s.scratch("cidr");
    let file = write(
        &dir,
        "bad.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: bad, project: valid}\nspec:\n  cidr: 10.0.0.300/24\n  gateway: nope\n",
    );
    let file = file.to_str().unwrap();

    // --dry-run=client: exit 2, no network needed at all.
    let out = s.corral(&[
        "apply",
        "-f",
        file,
        "--dry-run=client",
        "--server",
        "http://127.0.0.1:1",
    ]);
    let err = out.fails_with(2);
    assert!(
        err.contains("bad.yaml: Network valid/bad: spec.cidr: "),
        "{err}"
    );

    // Sent: the server's 422, one line per field, exit 1.
    let out = s.corral(&["apply", "-f", file]);
    let err = out.fails_with(1);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("Network valid/bad: spec.cidr: ")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("spec.gateway: ")), "{err}");
    // --dry-run=server reports the same, writes nothing.
    let out = s.corral(&["apply", "-f", file, "--dry-run=server"]);
    assert!(out.fails_with(1).contains("spec.cidr"));
    s.corral(&["get", "network", "bad", "-p", "valid"])
        .fails_with(1);

    // A valid object: client dry run says so and sends nothing.
    let good = write(
        &dir,
        "good.yaml",
        &network("valid", "ok", "a", "10.40.0.0/24"),
    );
    let out = s.corral(&["apply", "-f", good.to_str().unwrap(), "--dry-run=client"]);
    assert_eq!(out.ok().trim(), "network/ok valid (dry run)");
    s.corral(&["get", "network", "ok", "-p", "valid"])
        .fails_with(1);
}

#[test]
fn missing_paths_and_empty_directories_are_usage_errors() {
    let s = shared();
    let out = s.corral(&["apply", "-f", "/nonexistent/manifests"]);
    assert!(out.fails_with(2).contains("does not exist"));
    let empty = s.scratch("empty");
    let out = s.corral(&["apply", "-f", empty.to_str().unwrap()]);
    assert!(out.fails_with(2).contains("no objects found"));
}

#[test]
fn oversized_manifests_are_refused_before_anything_is_sent() {
    let s = shared();
    s.corral(&["project", "create", "big"]).ok();
    let dir = s.scratch("big");
    // One file over 8 MiB (a huge description).
    let mut huge = network("big", "n1", "one", "10.31.0.0/24");
    huge.push_str(&format!("# {}\n", "x".repeat(9 << 20)));
    let f = write(&dir, "huge.yaml", &huge);
    let out = s.corral(&["apply", "-f", f.to_str().unwrap()]);
    let err = out.fails_with(2);
    assert!(err.contains("larger than 8 MiB"), "{err}");
    // More objects than one apply handles.
    let many: String = (0..10_001)
        .map(|i| format!("apiVersion: corral/v1\nkind: KeyPair\nmetadata: {{name: k{i}, project: big}}\nspec: {{publicKey: x}}\n---\n"))
        .collect();
    let f = write(&dir, "many.yaml", &many);
    let err = s
        .corral(&["apply", "-f", f.to_str().unwrap()])
        .fails_with(2)
        .to_string();
    assert!(err.contains("at most 10000"), "{err}");
    for kind in ["networks", "keypairs"] {
        let listed = s.corral(&["get", kind, "-p", "big", "-o", "json"]);
        assert!(
            names(&listed.json()).is_empty(),
            "nothing was applied: {}",
            listed.stdout
        );
    }
}
