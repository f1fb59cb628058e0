//! Secrets at rest against a real `corral up`: EC2 secret keys are sealed
//! in the store file with a key file kept apart, still verify awscli's
//! signatures, rotate to a new key, and are never printed again.

mod common;

use std::process::Command;

use common::Server;

/// The admin's EC2 secret, from the credentials file `corral up` wrote.
fn admin_secret(s: &Server) -> String {
    let creds =
        std::fs::read_to_string(s.config.parent().unwrap().join("aws-credentials")).unwrap();
    creds
        .lines()
        .find_map(|l| l.strip_prefix("aws_secret_access_key = "))
        .expect("a secret in aws-credentials")
        .trim()
        .to_string()
}

fn store_bytes(s: &Server) -> Vec<u8> {
    std::fs::read(s.dir.join("data/store.redb")).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// awscli with the profile `corral up` wrote: answers whether it succeeded.
fn aws_works(s: &Server) -> (bool, String) {
    let dir = s.config.parent().unwrap();
    let out = Command::new("aws")
        .args(["ec2", "describe-regions", "--output", "json"])
        .env("HOME", &s.home)
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("AWS_PROFILE", "corral")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("aws (scripts/install-deps installs awscli)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn ec2_secrets_are_sealed_at_rest_and_rotate() {
    let s = Server::start_with(&["--libvirt", "test:///default", "--no-agent"]);
    let secret = admin_secret(&s);
    let key_file = s.dir.join("data/secrets.keys");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is private");

    // The store file alone holds no secret: only sealed values.
    let bytes = store_bytes(&s);
    assert!(
        !contains(&bytes, secret.as_bytes()),
        "the secret is in the store file in clear"
    );
    assert!(
        contains(&bytes, b"enc:v1:k1:"),
        "no sealed secret in the store file"
    );

    // Signatures still verify with the opened secret.
    let (ok, text) = aws_works(&s);
    assert!(ok, "{text}");

    // A member issues a key: sealed too, and listing never shows it.
    s.corral(&["project", "create", "sealed"]).ok();
    s.corral(&["user", "create", "sam", "--project", "sealed"])
        .ok();
    let made = s.corral(&["keys", "create", "--user", "sam"]);
    let sam_secret = made
        .ok()
        .lines()
        .find_map(|l| l.trim().strip_prefix("EC2 secret access key:"))
        .expect("the new secret is shown once")
        .trim()
        .to_string();
    assert!(!contains(&store_bytes(&s), sam_secret.as_bytes()));
    for format in ["yaml", "json"] {
        let listed = s.corral(&["keys", "list", "--user", "sam", "-o", format]);
        let out = listed.ok();
        assert!(!out.contains(&sam_secret), "{out}");
        assert!(!out.to_ascii_lowercase().contains("secret"), "{out}");
    }

    // Rotation: a new key seals everything; the old one can go.
    let rotated = s.corral(&["admin", "rotate-secrets-key", "--retire-old"]);
    let text = rotated.ok();
    assert!(text.contains("Secrets key k2:"), "{text}");
    assert!(text.contains("1 older key(s) retired"), "{text}");
    let keys = std::fs::read_to_string(&key_file).unwrap();
    let ids: Vec<&str> = keys
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["k2"], "{keys}");
    let (ok, text) = aws_works(&s);
    assert!(ok, "signatures verify after rotation: {text}");

    // Only an admin rotates.
    let rc = s.dir.join("sam.rc");
    s.corral(&["credentials", "--user", "sam", "-o", rc.to_str().unwrap()])
        .ok();
    let sam_token = std::fs::read_to_string(&rc)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("export CORRAL_TOKEN="))
        .unwrap()
        .trim_matches('\'')
        .to_string();
    let (code, body) = s
        .http("POST", "/v1/secrets/rotate", Some(&sam_token), Some("{}"))
        .unwrap();
    assert_eq!(code, 403, "{body}");
    let (code, body) = s
        .http(
            "POST",
            "/v1/secrets/rotate",
            Some(&s.admin_token()),
            Some(r#"{"retireOld":"yes"}"#),
        )
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("retireOld"), "{body}");
}
