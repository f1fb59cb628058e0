//! Tenancy through the CLI: a member of project a can work in a and
//! nowhere else; administration is for admins. Also `credentials`, access
//! keys and tokens.

mod common;

use common::{shared, write, Server};

fn member_token(s: &Server, user: &str, project: &str) -> String {
    let issued = s
        .corral(&["user", "create", user, "--project", project, "-o", "json"])
        .json();
    assert_eq!(issued["role"], "member");
    issued["token"].as_str().expect("a token").to_string()
}

#[test]
fn a_member_works_in_its_project_only() {
    let s = shared();
    s.corral(&["project", "create", "ta", "--description", "tenant a"])
        .ok();
    s.corral(&["project", "create", "tb"]).ok();
    let list = s.corral(&["project", "list"]);
    assert!(list.ok().contains("tenant a"), "{list:#?}");
    let token = member_token(s, "alice", "ta");
    let as_alice = [("CORRAL_TOKEN", token.as_str())];

    let me = s.corral_env(&["whoami"], &as_alice);
    assert!(me.ok().contains("User:     alice"), "{me:#?}");
    assert!(me.ok().contains("Project:  ta"), "{me:#?}");

    // Something of the admin's in b.
    let dir = s.scratch("tenancy");
    let b_net = write(
        &dir,
        "b.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: lan, project: tb}\nspec: {cidr: 10.50.0.0/24}\n",
    );
    let b_net = b_net.to_str().unwrap();
    s.corral(&["apply", "-f", b_net]).ok();

    // In b: forbidden, exit 1.
    let out = s.corral_env(&["get", "networks", "-p", "tb"], &as_alice);
    assert!(
        out.fails_with(1).contains("may not list networks"),
        "{out:#?}"
    );
    let out = s.corral_env(&["apply", "-f", b_net], &as_alice);
    assert!(
        out.fails_with(1).contains("may not create networks"),
        "{out:#?}"
    );
    let out = s.corral_env(&["delete", "network", "lan", "-p", "tb"], &as_alice);
    assert!(
        out.fails_with(1).contains("may not delete networks"),
        "{out:#?}"
    );
    s.corral(&["get", "network", "lan", "-p", "tb"]).ok();

    // In a: fine.
    let a_net = write(
        &dir,
        "a.yaml",
        "apiVersion: corral/v1\nkind: Network\nmetadata: {name: lan}\nspec: {cidr: 10.60.0.0/24}\n",
    );
    let a_net = a_net.to_str().unwrap();
    let out = s.corral_env(&["apply", "-f", a_net, "-p", "ta"], &as_alice);
    assert_eq!(out.ok().trim(), "network/lan created");
    let out = s.corral_env(&["get", "networks", "-p", "ta", "-o", "name"], &as_alice);
    assert_eq!(out.ok().trim(), "network/lan");
    let out = s.corral_env(&["delete", "network", "lan", "-p", "ta"], &as_alice);
    assert_eq!(out.ok().trim(), "network/lan deleted");

    // Administration is the admin's.
    let out = s.corral_env(&["user", "list"], &as_alice);
    assert!(out.fails_with(1).contains("not an admin"), "{out:#?}");
    let out = s.corral_env(&["project", "create", "tc"], &as_alice);
    out.fails_with(1);

    // A deleted user's token stops working.
    let out = s.corral(&["user", "delete", "alice"]);
    assert_eq!(out.ok().trim(), "user/alice deleted");
    let out = s.corral_env(&["whoami"], &as_alice);
    out.fails_with(1);
}

#[test]
fn credentials_keys_and_tokens() {
    let s = shared();
    s.corral(&["project", "create", "creds"]).ok();
    member_token(s, "carol", "creds");

    // An rc file, private, with fresh keys and the EC2 endpoint.
    let rc = s.dir.join("carol.rc");
    let out = s.corral(&["credentials", "--user", "carol", "-o", rc.to_str().unwrap()]);
    out.ok();
    let text = std::fs::read_to_string(&rc).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rc).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(text.contains("export AWS_ENDPOINT_URL_EC2="), "{text}");
    assert!(text.contains("export CORRAL_PROJECT='creds'"), "{text}");
    assert!(
        text.contains("export AWS_DEFAULT_REGION='corral-1'"),
        "{text}"
    );
    let key_id = text
        .lines()
        .find_map(|l| l.strip_prefix("export EC2_ACCESS_KEY='"))
        .map(|k| k.trim_end_matches('\'').to_string())
        .expect("EC2_ACCESS_KEY in the rc file");
    assert!(key_id.starts_with("AKIA"), "{key_id}");
    assert!(text.contains(&format!("export AWS_ACCESS_KEY_ID='{key_id}'")));
    assert!(text.contains("export EC2_SECRET_KEY='"), "{text}");
    // The token in it works.
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("export CORRAL_TOKEN='"))
        .map(|k| k.trim_end_matches('\'').to_string())
        .unwrap();
    let me = s.corral_env(&["whoami"], &[("CORRAL_TOKEN", &token)]);
    assert!(me.ok().contains("carol"));

    // Without -o: the rc file on stdout.
    let out = s.corral(&["credentials", "--user", "carol"]);
    assert!(out.ok().contains("export EC2_URL="), "{out:#?}");

    // Keys: listed, revoked, gone.
    let keys = s.corral(&["keys", "list", "--user", "carol"]);
    assert!(keys.ok().contains(&key_id), "{keys:#?}");
    let out = s.corral(&["keys", "revoke", "--user", "carol", &key_id]);
    assert_eq!(out.ok().trim(), format!("accesskey/{key_id} revoked"));
    let keys = s.corral(&["keys", "list", "--user", "carol"]);
    assert!(!keys.ok().contains(&key_id), "{keys:#?}");
    let out = s.corral(&["keys", "revoke", "--user", "carol", &key_id]);
    out.fails_with(1);
    let out = s.corral(&["keys", "create", "--user", "carol"]);
    assert!(out.ok().contains("EC2 secret access key: "), "{out:#?}");

    // Tokens: a new one works until revoked.
    let out = s.corral(&["token", "create", "--user", "carol"]);
    let new_token = out.ok().trim().to_string();
    assert!(new_token.starts_with("crl_"), "{out:#?}");
    s.corral_env(&["whoami"], &[("CORRAL_TOKEN", &new_token)])
        .ok();
    let list = s
        .corral(&["token", "list", "--user", "carol", "-o", "json"])
        .json();
    let ids: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    // Issued with the user, by the two `credentials` and by `token create`.
    assert_eq!(ids.len(), 4, "{list}");
    for id in &ids {
        s.corral(&["token", "revoke", "--user", "carol", id]).ok();
    }
    let out = s.corral_env(&["whoami"], &[("CORRAL_TOKEN", &new_token)]);
    out.fails_with(1);
    let out = s.corral(&["token", "list", "--user", "carol"]);
    assert!(out.ok().is_empty(), "{out:#?}");
}

#[test]
fn a_viewer_reads_and_roles_span_projects() {
    let s = shared();
    s.corral(&["project", "create", "va"]).ok();
    s.corral(&["project", "create", "vb"]).ok();
    let issued = s
        .corral(&[
            "user",
            "create",
            "vic",
            "--role",
            "viewer",
            "--project",
            "va",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(issued["role"], "viewer");
    let token = issued["token"].as_str().unwrap().to_string();
    let as_vic = [("CORRAL_TOKEN", token.as_str())];
    let dir = s.scratch("viewer");
    let net = |project: &str| {
        write(
            &dir,
            &format!("{project}.yaml"),
            &format!(
                "apiVersion: corral/v1\nkind: Network\nmetadata: {{name: lan, project: {project}}}\nspec: {{cidr: 10.51.0.0/24}}\n"
            ),
        )
    };
    let va = net("va");
    let vb = net("vb");
    s.corral(&["apply", "-f", va.to_str().unwrap()]).ok();

    // Reads, not writes.
    let got = s.corral_env(&["get", "networks", "-p", "va"], &as_vic);
    assert!(got.ok().contains("lan"), "{got:#?}");
    let out = s.corral_env(&["delete", "network", "lan", "-p", "va"], &as_vic);
    assert!(
        out.fails_with(1).contains("may not delete networks"),
        "{out:#?}"
    );

    // A member of vb besides: works there; whoami lists both.
    let granted = s.corral(&[
        "user",
        "grant",
        "vic",
        "--project",
        "vb",
        "--role",
        "member",
    ]);
    assert!(
        granted.ok().contains("Projects: va (viewer), vb (member)"),
        "{granted:#?}"
    );
    s.corral_env(&["apply", "-f", vb.to_str().unwrap()], &as_vic)
        .ok();
    let me = s.corral_env(&["whoami"], &as_vic);
    assert!(me.ok().contains("Role:     viewer"), "{me:#?}");
    assert!(
        me.ok().contains("Projects: va (viewer), vb (member)"),
        "{me:#?}"
    );

    // Taken back: closed again at once.
    s.corral(&["user", "ungrant", "vic", "--project", "vb"])
        .ok();
    let out = s.corral_env(&["get", "networks", "-p", "vb"], &as_vic);
    assert!(
        out.fails_with(1).contains("may not list networks"),
        "{out:#?}"
    );
}
