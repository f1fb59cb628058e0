//! TLS on every link of a real `corral up`: the client files carry the CA
//! so the CLI, awscli and agents need nothing more; a client holding
//! another CA fails closed with a message saying so; plain HTTP is only
//! for loopback, and only when asked for.

mod common;

use std::process::Command;

use common::{shared, Server, BIN};

/// A CA that is not the server's.
fn stranger_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let id = corral_tls::load_or_create(dir, &corral_tls::SubjectNames::default()).unwrap();
    id.ca_file
}

#[test]
fn the_client_files_carry_the_ca_and_every_client_uses_it() {
    let s = shared();
    assert!(
        s.url.starts_with("https://"),
        "TLS is the default: {}",
        s.url
    );
    let dir = s.config.parent().unwrap();
    let config = std::fs::read_to_string(&s.config).unwrap();
    let ca = dir.join("ca.crt");
    assert!(
        config.contains(&format!("caFile: {}", ca.display())),
        "{config}"
    );
    assert!(config.contains("server: https://127.0.0.1:"), "{config}");
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(s.ca.as_ref().unwrap()).unwrap()
    );
    let aws = std::fs::read_to_string(dir.join("aws-config")).unwrap();
    assert!(
        aws.contains(&format!("ca_bundle = {}", ca.display())),
        "{aws}"
    );
    assert!(aws.contains("endpoint_url = https://127.0.0.1:"), "{aws}");
    let rc = std::fs::read_to_string(dir.join("admin.rc")).unwrap();
    assert!(
        rc.contains(&format!("export AWS_CA_BUNDLE='{}'", ca.display())),
        "{rc}"
    );
    assert!(
        rc.contains(&format!("export CORRAL_CA_FILE='{}'", ca.display())),
        "{rc}"
    );

    // The CLI talks TLS with nothing but the files.
    s.corral(&["get", "projects"]).ok();
}

#[test]
fn a_client_trusting_another_ca_fails_closed_and_says_why() {
    let s = shared();
    let tmp = tempfile::tempdir().unwrap();
    let wrong = stranger_ca(tmp.path());
    let out = s.corral_env(
        &["get", "projects"],
        &[("CORRAL_CA_FILE", wrong.to_str().unwrap())],
    );
    let err = out.fails_with(1);
    assert!(
        err.contains("TLS with the Corral API at https://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("CORRAL_CA_FILE"), "{err}");

    // No CA at all: the system's roots do not know Corral's CA either.
    let out = s.corral_env(&["get", "projects"], &[("CORRAL_CA_FILE", "")]);
    assert!(
        out.fails_with(1).contains("TLS with the Corral API"),
        "{out:#?}"
    );

    // awscli with the wrong bundle refuses too.
    let dir = s.config.parent().unwrap();
    let aws = Command::new("aws")
        .args(["ec2", "describe-instances", "--output", "json"])
        .env("HOME", &s.home)
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("AWS_PROFILE", "corral")
        .env("AWS_CA_BUNDLE", &wrong)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("aws (scripts/install-deps installs awscli)");
    let text = String::from_utf8_lossy(&aws.stderr);
    assert!(!aws.status.success(), "{text}");
    assert!(text.contains("SSL validation failed"), "{text}");
}

#[test]
fn plain_http_to_the_tls_port_is_told_to_use_https() {
    use std::io::{Read, Write};
    let s = shared();
    let mut tcp = std::net::TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {}\r\n\r\n", s.addr);
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 400 "), "{answer}");
    assert!(answer.contains("This port speaks HTTPS"), "{answer}");
}

#[test]
fn insecure_http_is_loopback_only_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "up",
            "--insecure-http",
            "--listen",
            "0.0.0.0:1",
            "--no-agent",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .env("HOME", tmp.path())
        .env("CORRAL_CONFIG", tmp.path().join("config.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--insecure-http serves only on loopback addresses"),
        "{err}"
    );
    assert!(err.contains("--insecure-http-anywhere"), "{err}");
    assert!(
        !tmp.path().join("data/store.redb").exists(),
        "refused before opening the store"
    );

    let s = Server::start_with(&["--insecure-http", "--no-agent"]);
    assert!(s.url.starts_with("http://"));
    s.corral(&["get", "projects"]).ok();
    let config = std::fs::read_to_string(&s.config).unwrap();
    assert!(!config.contains("caFile"), "{config}");
}

#[test]
fn an_agent_pinning_another_ca_refuses_the_server() {
    let s = shared();
    let out = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &s.url,
            "--token",
            "crl_not_sent",
            "--node",
            "pinned",
        ])
        .args(["--libvirt", "test:///default", "--server-ca-hash"])
        .arg(format!("sha256:{}", "ab".repeat(32)))
        .arg("--agent-dir")
        .arg(s.dir.join("pinned-agent"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("pinned hash"), "{err}");
    let nodes = s.api("GET", "/v1/nodes", None);
    assert!(!nodes.to_string().contains("pinned"), "{nodes}");
}
