//! A hostile tenant against a real `corral up`: every way a member's input
//! can name something on the server's host (image paths and URLs, bridged
//! networks, credential minting) is tried with escapes and must be
//! refused with a clear 4xx naming the field, while the server stays
//! healthy and nothing of the host comes back. The imports that are
//! allowed really happen (bytes imported, downloaded back equal).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

/// An HTTPS server on an allowed address presenting `id`'s certificate:
/// every request is answered with `IMAGE`.
fn tls_outside_server(id: &corral_tls::ServerIdentity) -> String {
    use std::io::Read;
    let mut config = (*id.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = std::sync::Arc::new(config);
    let listener = TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback");
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(server) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(server, tcp);
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    // A client that refuses the certificate ends here.
                    if tls.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    request.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{IMAGE}",
                    IMAGE.len()
                );
                let _ = tls.write_all(answer.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

/// One bad path or URL and what the refusal must say.
struct Try {
    source: Value,
    code: u16,
    says: &'static str,
}

fn try_(source: Value, code: u16, says: &'static str) -> Try {
    Try { source, code, says }
}

/// A tiny HTTP server on an allowed address: `/image.raw` serves
/// `IMAGE`, `/big` announces more than the server's cap, `/to-api`
/// redirects to the API on loopback, `/to-image` redirects to
/// `/image.raw`. Serves until the test process ends.
fn outside_server(api: &str) -> String {
    let listener = TcpListener::bind("127.0.0.2:0").expect("127.0.0.2 is loopback");
    let addr = listener.local_addr().unwrap().to_string();
    let api = api.to_string();
    let me = addr.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let answer = match path.as_str() {
                "/image.raw" => {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{IMAGE}", IMAGE.len())
                }
                "/big" => "HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n".to_string(),
                "/to-api" => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://{api}/v1/users\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                "/to-image" => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://{me}/image.raw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let _ = conn.write_all(answer.as_bytes());
            if path == "/big" {
                // More than the cap, then hang up.
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..32 {
                    if conn.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        }
    });
    addr
}

const IMAGE: &str = "corral test image bytes\n";

fn post_image(s: &Server, token: &str, name: &str, source: &Value) -> (u16, Value) {
    let body = json!({"metadata": {"name": name}, "spec": {"source": source, "format": "raw"}});
    let (code, text) = s
        .http(
            "POST",
            "/v1/projects/evil/images",
            Some(token),
            Some(&body.to_string()),
        )
        .expect("API request");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits until the image's import ended; answers its status.
fn settled(s: &Server, token: &str, name: &str) -> Value {
    settled_generation(s, token, name, 1)
}

/// [`settled`] for the import of `generation` or later.
fn settled_generation(s: &Server, token: &str, name: &str, generation: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, text) = s
            .http(
                "GET",
                &format!("/v1/projects/evil/images/{name}"),
                Some(token),
                None,
            )
            .unwrap();
        assert_eq!(code, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let phase = v["status"]["phase"].as_str().unwrap_or("").to_string();
        let observed = v["status"]["observedGeneration"].as_i64().unwrap_or(0);
        if (phase == "available" || phase == "failed") && observed >= generation {
            return v["status"].clone();
        }
        assert!(Instant::now() < deadline, "image {name} never settled: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn content(s: &Server, token: &str, name: &str) -> (u16, String) {
    s.http(
        "GET",
        &format!("/v1/projects/evil/images/{name}/content"),
        Some(token),
        None,
    )
    .unwrap()
}

fn plant(import: &Path, secret: &Path) {
    std::fs::create_dir_all(import.join("sub")).unwrap();
    std::fs::write(import.join("good.raw"), IMAGE).unwrap();
    symlink(secret, import.join("to-secret")).unwrap();
    symlink("/etc/shadow", import.join("to-shadow")).unwrap();
    symlink("../secret.txt", import.join("up-and-out")).unwrap();
    symlink("good.raw", import.join("inside")).unwrap();
    symlink("/dev/zero", import.join("to-zero")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(import.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
}

#[test]
fn a_member_never_reaches_the_host() {
    let root = tempfile::tempdir().unwrap();
    let import = root.path().join("import");
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, "the admin's secret\n").unwrap();
    plant(&import, &secret);
    let import_arg = import.to_str().unwrap().to_string();
    // An HTTPS image server whose CA the operator trusts, and one whose CA
    // no one does.
    let names = corral_tls::SubjectNames::for_host(&["127.0.0.2".parse().unwrap()], &[]);
    let trusted = corral_tls::load_or_create(&root.path().join("tls-ok"), &names).unwrap();
    let stranger = corral_tls::load_or_create(&root.path().join("tls-no"), &names).unwrap();
    let ca_bundle = trusted.ca_file.to_str().unwrap().to_string();
    let s = Server::start_with(&[
        "--image-ca-bundle",
        &ca_bundle,
        "--libvirt",
        "test:///default",
        "--no-agent",
        "--image-import-dir",
        &import_arg,
        "--image-url-allow",
        "127.0.0.2/32",
        "--image-max-bytes",
        "1048576",
    ]);
    s.api(
        "POST",
        "/v1/projects",
        Some(json!({"metadata": {"name": "evil"}})),
    );
    let issued = s.api(
        "POST",
        "/v1/users",
        Some(json!({"name": "mallory", "role": "member", "project": "evil"})),
    );
    let token = issued["token"].as_str().unwrap().to_string();
    let outside = outside_server(&s.addr);
    let https_ok = tls_outside_server(&trusted);
    let https_unknown = tls_outside_server(&stranger);

    // The machine's own name resolves to this host (DNS names that point
    // at 127.0.0.1 are the classic way around literal-address checks).
    let host = std::process::Command::new("hostname").output().unwrap();
    let host = String::from_utf8(host.stdout).unwrap().trim().to_string();
    let resolved: Vec<_> = (host.as_str(), 80).to_socket_addrs().unwrap().collect();
    assert!(
        resolved
            .iter()
            .all(|a| a.ip().is_loopback() || std::net::UdpSocket::bind((a.ip(), 0)).is_ok()),
        "{host} should resolve to this host: {resolved:?}"
    );

    let config = s.config.to_str().unwrap().to_string();
    let at = |rel: &str| format!("{}/{rel}", import.display());
    let api_port = s.addr.rsplit(':').next().unwrap().to_string();
    let refused = [
        // Paths outside the import directory.
        try_(
            json!({"path": "/etc/shadow"}),
            403,
            "outside the image import directories",
        ),
        try_(
            json!({"path": config}),
            403,
            "outside the image import directories",
        ),
        try_(json!({"path": secret.to_str().unwrap()}), 403, "outside"),
        try_(json!({"path": at("../secret.txt")}), 403, "'..'"),
        try_(json!({"path": at("sub/../../secret.txt")}), 403, "'..'"),
        try_(json!({"path": "relative.raw"}), 422, "absolute"),
        // Links planted in the import directory that point out of it.
        try_(
            json!({"path": at("to-secret")}),
            403,
            "leaves the import directory",
        ),
        try_(
            json!({"path": at("to-shadow")}),
            403,
            "leaves the import directory",
        ),
        try_(
            json!({"path": at("up-and-out")}),
            403,
            "leaves the import directory",
        ),
        try_(
            json!({"path": at("to-zero")}),
            403,
            "leaves the import directory",
        ),
        // Not regular files.
        try_(json!({"path": at("fifo")}), 403, "a FIFO"),
        try_(json!({"path": at("sub")}), 403, "a directory"),
        try_(json!({"path": import_arg.clone()}), 403, "outside"),
        // URLs into the host and its networks.
        try_(
            json!({"url": format!("http://127.0.0.1:{api_port}/v1/users")}),
            403,
            "loopback",
        ),
        try_(
            json!({"url": format!("http://[::ffff:127.0.0.1]:{api_port}/")}),
            403,
            "loopback",
        ),
        try_(json!({"url": "http://2130706433/"}), 403, "loopback"),
        try_(
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
            403,
            "metadata",
        ),
        try_(json!({"url": "http://10.0.0.1/x.img"}), 403, "private"),
        try_(
            json!({"url": "http://[fd00::1]/x.img"}),
            403,
            "unique-local",
        ),
        try_(
            json!({"url": format!("http://localhost:{api_port}/")}),
            403,
            "loopback",
        ),
        try_(json!({"url": "file:///etc/shadow"}), 422, "http"),
        try_(json!({"url": "gopher://127.0.0.1/"}), 422, "http"),
    ];
    for (n, t) in refused.iter().enumerate() {
        let (code, body) = post_image(&s, &token, &format!("bad-{n}"), &t.source);
        let text = body.to_string();
        assert_eq!(code, t.code, "{}: {text}", t.source);
        assert!(text.contains(t.says), "{}: {text}", t.source);
        let field = body["details"]["causes"][0]["field"].as_str().unwrap_or("");
        assert!(
            field.starts_with("spec.source."),
            "{}: the refusal names the field: {text}",
            t.source
        );
    }

    // What the operator allows is really imported, and comes back equal.
    for (name, source) in [
        ("good", json!({"path": at("good.raw")})),
        ("inside", json!({"path": at("inside")})),
        (
            "fetched",
            json!({"url": format!("http://{outside}/image.raw")}),
        ),
        (
            "redirected",
            json!({"url": format!("http://{outside}/to-image")}),
        ),
        (
            "over-https",
            json!({"url": format!("https://{https_ok}/image.raw")}),
        ),
    ] {
        let (code, body) = post_image(&s, &token, name, &source);
        assert_eq!(code, 201, "{source}: {body}");
        let status = settled(&s, &token, name);
        assert_eq!(status["phase"], "available", "{name}: {status}");
        assert_eq!(
            content(&s, &token, name),
            (200, IMAGE.to_string()),
            "{name}"
        );
    }

    // Admitted, then refused where the bytes are read: a name resolving to
    // this host, a redirect back into it, an image over the size cap.
    for (name, source, says) in [
        (
            "by-name",
            json!({"url": format!("http://{host}:{api_port}/v1/users")}),
            "does not fetch from",
        ),
        (
            "bounce",
            json!({"url": format!("http://{outside}/to-api")}),
            "loopback",
        ),
        (
            "big",
            json!({"url": format!("http://{outside}/big")}),
            "larger than",
        ),
        (
            "untrusted-https",
            json!({"url": format!("https://{https_unknown}/image.raw")}),
            "certificate",
        ),
    ] {
        let (code, body) = post_image(&s, &token, name, &source);
        assert_eq!(code, 201, "{source}: {body}");
        let status = settled(&s, &token, name);
        assert_eq!(status["phase"], "failed", "{name}: {status}");
        let message = status["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{name}: {status}");
        let (code, text) = content(&s, &token, name);
        assert_eq!(code, 409, "{name}: {text}");
    }

    // A file swapped for a link out after admission: the import itself
    // refuses it (admission is not the only check).
    std::fs::write(import.join("late.raw"), IMAGE).unwrap();
    let (code, body) = post_image(&s, &token, "swapped", &json!({"path": at("late.raw")}));
    assert_eq!(code, 201, "{body}");
    assert_eq!(settled(&s, &token, "swapped")["phase"], "available");
    std::fs::remove_file(import.join("late.raw")).unwrap();
    symlink(&secret, import.join("late.raw")).unwrap();
    let (code, text) = s
        .http(
            "GET",
            "/v1/projects/evil/images/swapped",
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{text}");
    let mut img: Value = serde_json::from_str(&text).unwrap();
    img["spec"]["description"] = json!("import it again");
    let (code, text) = s
        .http(
            "PUT",
            "/v1/projects/evil/images/swapped",
            Some(&token),
            Some(&img.to_string()),
        )
        .unwrap();
    assert_eq!(code, 200, "{text}");
    let status = settled_generation(&s, &token, "swapped", 2);
    assert_eq!(status["phase"], "failed", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("leaves the import directory"),
        "{status}"
    );
    let (code, text) = content(&s, &token, "swapped");
    assert_ne!(code, 200, "{text}");
    assert!(!text.contains("secret"), "{text}");

    // Host bridges are the operator's: no member may bridge guests onto
    // one (another tenant's crb… bridge least of all), and not even an
    // admin onto a bridge Corral made.
    let bridged = |name: &str, bridge: &str| {
        json!({"metadata": {"name": name}, "spec": {"cidr": "10.9.0.0/24", "mode": "bridged", "hostBridge": bridge}})
            .to_string()
    };
    for bridge in ["crb0123456789ab", "br0", "virbr0"] {
        let (code, text) = s
            .http(
                "POST",
                "/v1/projects/evil/networks",
                Some(&token),
                Some(&bridged("lan", bridge)),
            )
            .unwrap();
        assert_eq!(code, 403, "{bridge}: {text}");
        assert!(text.contains("spec.hostBridge"), "{text}");
    }
    let admin = s.admin_token();
    let (code, text) = s
        .http(
            "POST",
            "/v1/projects/evil/networks",
            Some(&admin),
            Some(&bridged("lan", "crb0123456789ab")),
        )
        .unwrap();
    assert_eq!(code, 403, "{text}");
    let (code, text) = s
        .http(
            "POST",
            "/v1/projects/evil/networks",
            Some(&admin),
            Some(&bridged("provider", "br-provider")),
        )
        .unwrap();
    assert_eq!(code, 201, "{text}");
    // The member may still relabel what the admin made in its project.
    let mut net: Value = serde_json::from_str(&text).unwrap();
    net["metadata"]["labels"] = json!({"team": "blue"});
    // (a controller may have written its status meanwhile)
    net["metadata"]["resourceVersion"] = json!("");
    let (code, text) = s
        .http(
            "PUT",
            "/v1/projects/evil/networks/provider",
            Some(&token),
            Some(&net.to_string()),
        )
        .unwrap();
    assert_eq!(code, 200, "{text}");
    // ... but not move it to another bridge.
    net["spec"]["hostBridge"] = json!("br-other");
    let (code, text) = s
        .http(
            "PUT",
            "/v1/projects/evil/networks/provider",
            Some(&token),
            Some(&net.to_string()),
        )
        .unwrap();
    assert_eq!(code, 403, "{text}");

    // Credentials: a member issues itself a bounded number.
    let mut tokens = 1; // from its creation
    loop {
        let (code, text) = s
            .http("POST", "/v1/users/mallory/tokens", Some(&token), None)
            .unwrap();
        if code != 201 {
            assert_eq!(code, 403, "{text}");
            assert!(text.contains("LimitExceeded"), "{text}");
            break;
        }
        tokens += 1;
        assert!(tokens <= 10, "more than 10 tokens issued");
    }
    assert_eq!(tokens, 10);
    let (code, text) = s
        .http("POST", "/v1/users/mallory/accesskeys", Some(&token), None)
        .unwrap();
    assert_eq!(code, 201, "{text}");
    let (code, text) = s
        .http("POST", "/v1/users/mallory/accesskeys", Some(&token), None)
        .unwrap();
    assert_eq!(code, 403, "{text}");
    // The admin is not held to it.
    let (code, text) = s
        .http("POST", "/v1/users/mallory/accesskeys", Some(&admin), None)
        .unwrap();
    assert_eq!(code, 201, "{text}");

    let (code, _) = s.http("GET", "/healthz", None, None).unwrap();
    assert_eq!(code, 200);
}
