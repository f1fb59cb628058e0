//! Test harness: a real `corral up` on free ports with its own data
//! directory, HOME and CORRAL_CONFIG (nothing touches the real home), and
//! a runner for the real `corral` binary against it.
//!
//! The server runs under a tiny `sh` guard that kills it and removes its
//! directory as soon as the guard's stdin closes — when the [`Server`] is
//! dropped, or when the test process exits (a server shared through a
//! `static` is never dropped).

#![allow(dead_code)]

pub mod guests;
pub mod proxy;
pub mod seeded;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Kills the server once stdin closes, then removes the directory.
const GUARD: &str = r#"
bin=$0 dir=$1 addr=$2 ec2=$3
shift 3
"$bin" up --data-dir "$dir/data" --listen "$addr" --ec2-listen "$ec2" "$@" >"$dir/up.log" 2>&1 &
pid=$!
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

/// A running `corral up`.
pub struct Server {
    /// `127.0.0.1:PORT` of the native API.
    pub addr: String,
    /// `https://127.0.0.1:PORT` (`http://` with `--insecure-http`).
    pub url: String,
    /// The CA the server made (None with `--insecure-http`).
    pub ca: Option<PathBuf>,
    pub dir: PathBuf,
    pub home: PathBuf,
    pub config: PathBuf,
    guard: Option<Child>,
    stdin: Option<ChildStdin>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    /// Starts a server with a simulated host and waits until `/healthz`
    /// answers.
    pub fn start() -> Server {
        Server::start_with(&["--libvirt", "test:///default"])
    }

    /// Starts a server with these extra `corral up` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1", extra)
    }

    /// [`Server::start_with`], the native API listening on `ip` (`addr` and
    /// `url` still say 127.0.0.1 when `ip` is `0.0.0.0`).
    pub fn start_on(ip: &str, extra: &[&str]) -> Server {
        let tls = !extra.contains(&"--insecure-http");
        let mut extra = extra.to_vec();
        if tls && ip == "0.0.0.0" {
            // The loopback alias host_faults cuts one path to the API by.
            extra.extend(["--tls-san", "127.0.0.2"]);
        }
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("corral-cli-test-")
                .tempdir()
                .expect("temp dir")
                .keep();
            let home = dir.join("home");
            std::fs::create_dir_all(&home).unwrap();
            let config = home.join(".config/corral/config.yaml");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let ec2 = format!("127.0.0.1:{}", free_port());
            let mut guard = Command::new("sh")
                .arg("-c")
                .arg(GUARD)
                .arg(BIN)
                .arg(&dir)
                .arg(format!("{ip}:{port}"))
                .arg(&ec2)
                .args(&extra)
                .env("HOME", &home)
                .env("CORRAL_CONFIG", &config)
                .env_remove("CORRAL_SERVER")
                .env_remove("CORRAL_TOKEN")
                .env_remove("CORRAL_PROJECT")
                .env_remove("CORRAL_DATA_DIR")
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("XDG_DATA_HOME")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning corral up");
            let stdin = guard.stdin.take();
            let mut server = Server {
                url: format!("{}://{addr}", if tls { "https" } else { "http" }),
                ca: tls.then(|| dir.join("data/tls/ca.crt")),
                addr,
                dir,
                home,
                config,
                guard: Some(guard),
                stdin,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if server.healthy() && server.config.exists() {
                    return server;
                }
                if let Some(Ok(Some(_))) = server.guard.as_mut().map(|g| g.try_wait()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            last_log = std::fs::read_to_string(server.dir.join("up.log")).unwrap_or_default();
            server.stop();
        }
        panic!("corral up did not become healthy:\n{last_log}");
    }

    fn healthy(&self) -> bool {
        matches!(self.http("GET", "/healthz", None, None), Ok((200, _)))
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut g) = self.guard.take() {
            let _ = g.wait();
        }
    }

    /// The admin's bearer token (from the config `corral up` wrote).
    pub fn admin_token(&self) -> String {
        let text = std::fs::read_to_string(&self.config).expect("config written by corral up");
        text.lines()
            .find_map(|l| l.strip_prefix("token: "))
            .map(|t| t.trim().trim_matches('\'').trim_matches('"').to_string())
            .expect("a token in the config")
    }

    /// A TLS client trusting only this server's CA.
    pub fn tls_config(&self) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
        let ca = self.ca.as_ref().expect("a TLS server");
        let pem = std::fs::read(ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in corral_tls::pki::certs_from_pem(&pem, ca).map_err(std::io::Error::other)? {
            roots.add(cert).map_err(std::io::Error::other)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(corral_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }

    /// A minimal HTTP/1.0 request (over TLS unless the server is plain);
    /// answers (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let tcp = TcpStream::connect(&self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s: Box<dyn ReadWrite> = match &self.ca {
            Some(_) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let conn = rustls::ClientConnection::new(self.tls_config()?, name)
                    .map_err(std::io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
            None => Box::new(tcp),
        };
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        s.flush()?;
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw) {
            Ok(_) => {}
            // A peer that closes without close_notify after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        let answer = String::from_utf8_lossy(&raw).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// An admin request to the API that must succeed; answers the JSON.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let token = self.admin_token();
        let body = body.map(|b| b.to_string());
        let (status, text) = self
            .http(method, path, Some(&token), body.as_deref())
            .expect("API request");
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {text}"
        );
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// The `corral` binary, set up to talk to this server as its admin.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("HOME", &self.home)
            .env("CORRAL_CONFIG", &self.config)
            .env_remove("CORRAL_SERVER")
            .env_remove("CORRAL_TOKEN")
            .env_remove("CORRAL_PROJECT")
            .env_remove("XDG_CONFIG_HOME")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        c
    }

    /// Runs `corral ARGS`.
    pub fn corral(&self, args: &[&str]) -> Out {
        Out::from(self.cmd().args(args).output().expect("running corral"))
    }

    /// Runs `corral ARGS` with extra environment variables.
    pub fn corral_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd();
        for (k, v) in env {
            c.env(k, v);
        }
        Out::from(c.args(args).output().expect("running corral"))
    }

    /// Runs `corral ARGS` with `stdin` as standard input.
    pub fn corral_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running corral");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        Out::from(child.wait_with_output().expect("running corral"))
    }

    /// A scratch directory for a test's manifests.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server per test binary, started on first use.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

/// A byte stream, plain or TLS.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// What a `corral` run did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    /// Asserts exit code 0; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit code; returns stderr.
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        &self.stderr
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// Non-empty stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Names of a `List`'s items.
pub fn names(list: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

/// What apply owns of each item of a list — identity, generation, labels,
/// annotations and spec — to compare states while controllers may be
/// writing status.
pub fn owned(list: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut items: Vec<serde_json::Value> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    serde_json::json!([
                        i["kind"],
                        i["metadata"]["name"],
                        i["metadata"]["uid"],
                        i["metadata"]["generation"],
                        i["metadata"]["labels"],
                        i["metadata"]["annotations"],
                        i["spec"]
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort_by_key(|i| i.to_string());
    items
}

/// Environment of the test run that must not reach an AWS client started
/// by a test (credentials, profiles, endpoints, CA, region, proxies): it
/// gets everything from the files Corral wrote.
pub const AWS_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CA_BUNDLE",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
];
