//! The metadata service over real TCP: two listeners (127.0.0.1 and
//! 127.0.0.2 stand in for two networks' gateways) share one table, and
//! clients bound to 127.0.0.3 / 127.0.0.4 stand in for two guests — the
//! loopback /8 is all local, so each request's (local, peer) pair is real.
//! Then botocore, unmodified, reads the region through IMDSv2.
//!
//! python3 with boto3 is required for the last test; a missing one fails it
//! with what to install (`scripts/install-deps` installs it).
//!
//! Over 600 lines on purpose: every case runs on the one two-listener
//! harness below, and each checks one of the service's promises end to end.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use corral_node_agent::metadata::{serve, InstanceMetadata, MetadataTable, SHUTDOWN_GRACE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const GW_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const GW_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const GUEST_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const GUEST_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

const ID_A: &str = "i-0a1b2c3d4e5f60718";
const ID_B: &str = "i-0b1b2c3d4e5f60719";
const KEY_ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@example";
const KEY_BOB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBob bob@example";
/// Not UTF-8 on purpose: user-data is bytes.
const USER_DATA_A: &[u8] = b"#!/bin/sh\necho hi\n\xff\x00end";

fn instance_a() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: ID_A.into(),
        account_id: "123456789012".into(),
        ami_id: Some("ami-00000000000000001".into()),
        instance_type: "m1.small".into(),
        architecture: "x86_64".into(),
        hostname: "web-1".into(),
        local_ipv4: "10.0.0.5".into(),
        public_ipv4: Some("203.0.113.7".into()),
        mac: "52:54:00:12:34:56".into(),
        availability_zone: "corral-1a".into(),
        region: "corral-1".into(),
        public_keys: vec![
            ("alice".into(), KEY_ALICE.into()),
            ("bob".into(), KEY_BOB.into()),
        ],
        user_data: Some(USER_DATA_A.to_vec()),
        security_groups: vec!["default".into(), "web".into()],
        reservation_id: Some("r-00000000000000001".into()),
        launch_time: Some(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 1).unwrap()),
        ..Default::default()
    }
}

/// Requires IMDSv2; no keys, user-data or public address.
fn instance_b() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: ID_B.into(),
        account_id: "123456789012".into(),
        ami_id: Some("ami-00000000000000002".into()),
        instance_type: "m1.tiny".into(),
        architecture: "x86_64".into(),
        hostname: "db-1".into(),
        local_ipv4: "10.0.1.9".into(),
        mac: "52:54:00:AB:CD:EF".into(),
        availability_zone: "corral-1b".into(),
        region: "corral-1".into(),
        security_groups: vec!["default".into()],
        http_tokens_required: true,
        ..Default::default()
    }
}

/// One service on two gateway addresses, sharing a table.
struct Imds {
    table: MetadataTable,
    a: SocketAddr,
    b: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Imds {
    async fn start() -> Self {
        let table = MetadataTable::new();
        table.set([
            ((GW_A, GUEST_A), instance_a()),
            ((GW_B, GUEST_B), instance_b()),
        ]);
        let mut imds = Imds {
            table: table.clone(),
            a: SocketAddr::from((GW_A, 0)),
            b: SocketAddr::from((GW_B, 0)),
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        imds.a = imds.listen(GW_A).await;
        imds.b = imds.listen(GW_B).await;
        imds
    }

    async fn listen(&mut self, ip: Ipv4Addr) -> SocketAddr {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        self.tasks
            .push(tokio::spawn(serve(listener, self.table.clone(), shutdown)));
        self.stops.push(stop);
        addr
    }

    /// Guest A asks on its own network's gateway.
    fn url_a(&self, path: &str) -> String {
        format!("http://{}{path}", self.a)
    }

    fn url_b(&self, path: &str) -> String {
        format!("http://{}{path}", self.b)
    }

    async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            let served = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
            served.expect("serve ends cleanly");
        }
    }
}

/// An HTTP client whose connections come from `from`.
fn guest(from: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(from))
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Reply {
    status: StatusCode,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let r = req.send().await.expect("HTTP round trip");
    let status = r.status();
    let headers = r.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = r.bytes().await.expect("body").to_vec();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

async fn get(c: &reqwest::Client, url: &str) -> Reply {
    send(c.get(url)).await
}

/// The value at `url`, asserting a 200 `text/plain` answer.
async fn text(c: &reqwest::Client, url: &str) -> String {
    let r = get(c, url).await;
    assert_eq!(r.status, StatusCode::OK, "GET {url}: {}", r.text());
    assert_eq!(r.content_type, "text/plain", "GET {url}");
    r.text()
}

async fn token(c: &reqwest::Client, url: &str, ttl: &str) -> Reply {
    send(
        c.put(url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", ttl),
    )
    .await
}

async fn good_token(c: &reqwest::Client, url: &str) -> String {
    let r = token(c, url, "21600").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.text()
}

fn assert_ec2_error(r: &Reply, status: StatusCode, title: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.content_type, "text/html");
    assert!(
        r.text().contains(&format!("<title>{title}</title>")),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guest_sees_only_its_own_instance() {
    let s = Imds::start().await;
    let (a, b, stranger) = (guest(GUEST_A), guest(GUEST_B), guest(STRANGER));

    let id = "/latest/meta-data/instance-id";
    assert_eq!(text(&a, &s.url_a(id)).await, ID_A);
    let tb = good_token(&b, &s.url_b("/latest/api/token")).await;
    let rb = send(b.get(s.url_b(id)).header("X-aws-ec2-metadata-token", &tb)).await;
    assert_eq!((rb.status, rb.text().as_str()), (StatusCode::OK, ID_B));

    // The right guest on the wrong network, an unknown guest: nobody's
    // data, whatever the request claims.
    for (c, url) in [
        (&a, s.url_b(id)),
        (&b, s.url_a(id)),
        (&stranger, s.url_a(id)),
        (&stranger, s.url_b("/")),
    ] {
        let r = send(
            c.get(&url)
                .header("X-Forwarded-For", GUEST_A.to_string())
                .header("Host", "169.254.169.254"),
        )
        .await;
        assert_ec2_error(&r, StatusCode::NOT_FOUND, "404 - Not Found");
    }
    let r = token(&stranger, &s.url_a("/latest/api/token"), "60").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A new set replaces the old one whole.
    let mut moved = instance_a();
    moved.instance_id = "i-0c1b2c3d4e5f6071a".into();
    s.table.set([((GW_B, GUEST_A), moved)]);
    assert_eq!(s.table.len(), 1);
    assert_eq!(get(&a, &s.url_a(id)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&b, &s.url_b(id)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(text(&a, &s.url_b(id)).await, "i-0c1b2c3d4e5f6071a");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_values_are_formatted_as_ec2_does() {
    let s = Imds::start().await;
    let a = guest(GUEST_A);
    let t = |p: &str| s.url_a(p);

    let versions = text(&a, &t("/")).await;
    assert!(
        versions.starts_with("1.0\n2007-01-19\n2007-03-01\n"),
        "{versions}"
    );
    assert!(versions.contains("\n2009-04-04\n"), "{versions}");
    assert!(versions.ends_with("\n2021-07-15\nlatest"), "{versions}");

    assert_eq!(
        text(&a, &t("/latest/")).await,
        "dynamic\nmeta-data\nuser-data"
    );
    assert_eq!(
        text(&a, &t("/latest")).await,
        "dynamic\nmeta-data\nuser-data"
    );
    let categories = "ami-id\nami-launch-index\nhostname\ninstance-id\ninstance-type\n\
                      local-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\npublic-ipv4\n\
                      public-keys/\nreservation-id\nsecurity-groups";
    assert_eq!(text(&a, &t("/latest/meta-data/")).await, categories);
    assert_eq!(text(&a, &t("/latest/meta-data")).await, categories);

    for (path, want) in [
        ("ami-id", "ami-00000000000000001"),
        ("ami-launch-index", "0"),
        ("instance-type", "m1.small"),
        ("hostname", "web-1"),
        ("local-hostname", "web-1"),
        ("local-ipv4", "10.0.0.5"),
        ("public-ipv4", "203.0.113.7"),
        ("mac", "52:54:00:12:34:56"),
        ("reservation-id", "r-00000000000000001"),
        ("security-groups", "default\nweb"),
        ("placement/", "availability-zone\nregion"),
        ("placement/availability-zone", "corral-1a"),
        ("placement/availability-zone/", "corral-1a"),
        ("placement/region", "corral-1"),
        ("public-keys/", "0=alice\n1=bob"),
        ("public-keys/0/", "openssh-key"),
        ("public-keys/0", "openssh-key"),
        ("public-keys/0/openssh-key", KEY_ALICE),
        ("public-keys/1/openssh-key", KEY_BOB),
        ("network/", "interfaces/"),
        ("network/interfaces/", "macs/"),
        ("network/interfaces/macs/", "52:54:00:12:34:56/"),
        (
            "network/interfaces/macs/52:54:00:12:34:56/",
            "device-number\nipv4-associations/\nlocal-hostname\nlocal-ipv4s\nmac\n\
             public-ipv4s\nsecurity-groups",
        ),
        (
            "network/interfaces/macs/52:54:00:12:34:56/local-ipv4s",
            "10.0.0.5",
        ),
        (
            "network/interfaces/macs/52:54:00:12:34:56/public-ipv4s",
            "203.0.113.7",
        ),
        (
            "network/interfaces/macs/52:54:00:12:34:56/mac",
            "52:54:00:12:34:56",
        ),
        (
            "network/interfaces/macs/52:54:00:12:34:56/ipv4-associations/203.0.113.7",
            "10.0.0.5",
        ),
    ] {
        assert_eq!(
            text(&a, &t(&format!("/latest/meta-data/{path}"))).await,
            want,
            "{path}"
        );
    }

    // user-data: the bytes as given, not text.
    let r = get(&a, &t("/latest/user-data")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/octet-stream");
    assert_eq!(r.body, USER_DATA_A);

    assert_eq!(text(&a, &t("/latest/dynamic/")).await, "instance-identity/");
    assert_eq!(
        text(&a, &t("/latest/dynamic/instance-identity/")).await,
        "document"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&text(&a, &t("/latest/dynamic/instance-identity/document")).await)
            .expect("identity document is JSON");
    for (k, v) in [
        ("accountId", "123456789012"),
        ("architecture", "x86_64"),
        ("availabilityZone", "corral-1a"),
        ("imageId", "ami-00000000000000001"),
        ("instanceId", ID_A),
        ("instanceType", "m1.small"),
        ("pendingTime", "2026-11-25T12:00:01Z"),
        ("privateIp", "10.0.0.5"),
        ("region", "corral-1"),
        ("version", "2017-09-30"),
    ] {
        assert_eq!(doc[k], v, "{k} in {doc}");
    }

    // Dated versions show what existed then.
    assert_eq!(text(&a, &t("/1.0/")).await, "meta-data\nuser-data");
    assert_eq!(
        text(&a, &t("/1.0/meta-data/")).await,
        "ami-id\nami-launch-index\nhostname\ninstance-id\nlocal-ipv4\npublic-keys/\n\
         reservation-id\nsecurity-groups"
    );
    assert_eq!(
        text(&a, &t("/2007-01-19/meta-data/")).await,
        "ami-id\nami-launch-index\nhostname\ninstance-id\nlocal-hostname\nlocal-ipv4\n\
         public-ipv4\npublic-keys/\nreservation-id\nsecurity-groups"
    );
    assert_eq!(
        text(&a, &t("/2009-04-04/")).await,
        "dynamic\nmeta-data\nuser-data"
    );
    assert_eq!(
        text(&a, &t("/2009-04-04/meta-data/placement/")).await,
        "availability-zone"
    );
    assert_eq!(
        text(&a, &t("/2009-04-04/meta-data/instance-id")).await,
        ID_A
    );
    assert_eq!(
        text(&a, &t("/2021-07-15/meta-data/placement/region")).await,
        "corral-1"
    );
    assert_eq!(get(&a, &t("/2009-04-04/user-data")).await.body, USER_DATA_A);

    for missing in [
        "/2099-01-01/",
        "/2009-04-04/meta-data/placement/region",
        "/2008-09-01/dynamic/instance-identity/document",
        "/2007-01-19/meta-data/instance-type",
        "/latest/meta-data/nope",
        "/latest/meta-data/instance-id/x",
        "/latest/meta-data/public-keys/2/openssh-key",
        "/latest/meta-data/public-keys/0=alice",
        "/latest/meta-data/public-hostname",
        "/latest//meta-data/",
        "/latest/meta-data//",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/api/",
        "/favicon.ico",
    ] {
        assert_ec2_error(
            &get(&a, &t(missing)).await,
            StatusCode::NOT_FOUND,
            "404 - Not Found",
        );
    }
    // The query is not part of the path.
    assert_eq!(
        text(&a, &t("/latest/meta-data/instance-id?x=1")).await,
        ID_A
    );

    // B has no user-data, keys or public address: not listed, not served.
    let b = guest(GUEST_B);
    let tb = good_token(&b, &s.url_b("/latest/api/token")).await;
    let with = |p: &str| b.get(s.url_b(p)).header("X-aws-ec2-metadata-token", &tb);
    assert_eq!(send(with("/latest/")).await.text(), "dynamic\nmeta-data");
    assert_eq!(
        send(with("/latest/meta-data/")).await.text(),
        "ami-id\nami-launch-index\nhostname\ninstance-id\ninstance-type\nlocal-hostname\n\
         local-ipv4\nmac\nnetwork/\nplacement/\nsecurity-groups"
    );
    assert_eq!(
        send(with("/latest/meta-data/mac")).await.text(),
        "52:54:00:ab:cd:ef"
    );
    for missing in [
        "/latest/user-data",
        "/latest/meta-data/public-keys/",
        "/latest/meta-data/public-ipv4",
        "/latest/meta-data/network/interfaces/macs/52:54:00:ab:cd:ef/public-ipv4s",
    ] {
        assert_eq!(
            send(with(missing)).await.status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imdsv2_tokens() {
    let s = Imds::start().await;
    let (a, b) = (guest(GUEST_A), guest(GUEST_B));
    let id = s.url_a("/latest/meta-data/instance-id");

    let r = token(&a, &s.url_a("/latest/api/token"), "60").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "text/plain");
    assert_eq!(r.headers["x-aws-ec2-metadata-token-ttl-seconds"], "60");
    let ta = r.text();
    assert!(!ta.is_empty() && ta.is_ascii(), "{ta}");
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", &ta)).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, ID_A));
    // IMDSv1 still works for A (tokens optional) …
    assert_eq!(text(&a, &id).await, ID_A);
    // … but a token that is sent must be good.
    for bad in [
        "",
        "garbage",
        &ta[1..],
        &format!("{ta}A"),
        &"A".repeat(5000),
    ] {
        let r = send(a.get(&id).header("X-aws-ec2-metadata-token", bad)).await;
        assert_ec2_error(&r, StatusCode::UNAUTHORIZED, "401 - Unauthorized");
    }
    let not_utf8 = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", not_utf8)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // B requires tokens; A's token is not B's.
    let id_b = s.url_b("/latest/meta-data/instance-id");
    assert_ec2_error(
        &get(&b, &id_b).await,
        StatusCode::UNAUTHORIZED,
        "401 - Unauthorized",
    );
    assert_eq!(
        get(&b, &s.url_b("/")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = send(b.get(&id_b).header("X-aws-ec2-metadata-token", &ta)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let tb = good_token(&b, &s.url_b("/latest/api/token")).await;
    let r = send(b.get(&id_b).header("X-aws-ec2-metadata-token", &tb)).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, ID_B));
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", &tb)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A token dies with a new instance behind the same address.
    let mut replaced = instance_a();
    replaced.instance_id = "i-0d1b2c3d4e5f6071b".into();
    s.table
        .set([((GW_A, GUEST_A), replaced), ((GW_B, GUEST_B), instance_b())]);
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", &ta)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // TTLs: 1..=21600 decimal seconds, exactly one header.
    let url = s.url_a("/latest/api/token");
    for ttl in ["1", "21600", "00060"] {
        assert_eq!(
            token(&a, &url, ttl).await.status,
            StatusCode::OK,
            "ttl {ttl}"
        );
    }
    for ttl in [
        "0",
        "21601",
        "-1",
        "+5",
        "abc",
        "",
        "1.5",
        "99999999999999999999",
    ] {
        let r = token(&a, &url, ttl).await;
        assert_ec2_error(
            &r,
            StatusCode::BAD_REQUEST,
            "400 - Missing or Invalid Parameters",
        );
    }
    assert_eq!(send(a.put(&url)).await.status, StatusCode::BAD_REQUEST);
    let r = send(
        a.put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Never through a proxy.
    let r = send(
        a.put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .header("X-Forwarded-For", "198.51.100.1"),
    )
    .await;
    assert_ec2_error(&r, StatusCode::FORBIDDEN, "403 - Forbidden");

    // Methods.
    let r = get(&a, &url).await;
    assert_ec2_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "405 - Method Not Allowed",
    );
    assert_eq!(r.headers["allow"], "PUT");
    for m in [
        Method::POST,
        Method::DELETE,
        Method::PATCH,
        Method::PUT,
        Method::OPTIONS,
    ] {
        let r = send(a.request(m.clone(), &id)).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(r.headers["allow"], "GET, HEAD", "{m}");
    }
    let head = send(a.head(&id)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        ID_A.len().to_string().as_str()
    );

    // Expiry.
    let short = token(&a, &url, "1").await.text();
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", &short)).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(a.get(&id).header("X-aws-ec2-metadata-token", &short)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// EC2's instance metadata options: a turned-off endpoint answers 403 to
/// everything, token requests included; tags are served under
/// `tags/instance/` only while allowed; a token answer leaves with the
/// hop limit as its IP TTL (loopback never decrements a TTL, so here a
/// limit of 1 still arrives; the listener's unit tests check the socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_options_turn_the_endpoint_off_and_serve_tags() {
    let s = Imds::start().await;
    let (a, b) = (guest(GUEST_A), guest(GUEST_B));
    let mut off = instance_a();
    off.http_endpoint_enabled = false;
    let mut tagged = instance_b();
    tagged.tags = Some(
        [("Name", "db-1"), ("team:data", "core"), ("empty", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
    );
    tagged.http_put_response_hop_limit = 1;
    s.table
        .set([((GW_A, GUEST_A), off), ((GW_B, GUEST_B), tagged)]);

    // Off: nothing is served, not even a token.
    for path in ["/", "/latest/meta-data/instance-id", "/latest/user-data"] {
        assert_ec2_error(
            &get(&a, &s.url_a(path)).await,
            StatusCode::FORBIDDEN,
            "403 - Forbidden",
        );
    }
    let r = token(&a, &s.url_a("/latest/api/token"), "60").await;
    assert_ec2_error(&r, StatusCode::FORBIDDEN, "403 - Forbidden");

    // Tags, for the instance that allows them (with its hop limit of 1).
    let tb = good_token(&b, &s.url_b("/latest/api/token")).await;
    let read = |path: &str| send(b.get(s.url_b(path)).header("X-aws-ec2-metadata-token", &tb));
    let listing = read("/latest/meta-data/").await.text();
    assert!(listing.ends_with("\nsecurity-groups\ntags/"), "{listing}");
    for (path, want) in [
        ("/latest/meta-data/tags", "instance/"),
        ("/latest/meta-data/tags/instance", "Name\nempty\nteam:data"),
        ("/latest/meta-data/tags/instance/", "Name\nempty\nteam:data"),
        ("/latest/meta-data/tags/instance/Name", "db-1"),
        ("/latest/meta-data/tags/instance/team:data", "core"),
        ("/latest/meta-data/tags/instance/empty", ""),
    ] {
        let r = read(path).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, want),
            "{path}"
        );
    }
    for missing in [
        "/latest/meta-data/tags/instance/name",
        "/latest/meta-data/tags/instance/Name/x",
        "/2021-07-15/meta-data/tags/instance/Name",
    ] {
        assert_eq!(
            read(missing).await.status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }

    // Options changed back: the endpoint answers, the tags are gone.
    s.table.set([
        ((GW_A, GUEST_A), instance_a()),
        ((GW_B, GUEST_B), instance_b()),
    ]);
    assert_eq!(
        text(&a, &s.url_a("/latest/meta-data/instance-id")).await,
        ID_A
    );
    assert_eq!(
        read("/latest/meta-data/tags/instance/Name").await.status,
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_the_service_stays_up() {
    let s = Imds::start().await;
    let a = guest(GUEST_A);

    let long = format!("/latest/meta-data/{}", "a".repeat(4000));
    assert_eq!(
        get(&a, &s.url_a(&long)).await.status,
        StatusCode::URI_TOO_LONG
    );
    let r = send(
        a.get(s.url_a("/latest/meta-data/instance-id"))
            .header("X-Junk", "j".repeat(16 * 1024)),
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A body on a token request is ignored, not read. (Small enough to
    // sit in the socket's buffer: with a megabyte, the server's answer
    // and close could come while the client was still writing, which the
    // client reports as a broken pipe instead of the answer.)
    let r = send(
        a.put(s.url_a("/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .body(vec![b'x'; 32 * 1024]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Raw bytes that are not HTTP, from the guest's own address.
    for junk in [
        &b"\x00\xff\xfe garbage\r\n\r\n"[..],
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET http://169.254.169.254/latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw(s.a, junk).await;
        assert!(!reply.contains(" 500 "), "{reply}");
    }
    // Dot segments are names like any other (reqwest would fold them).
    for target in [
        "/latest/meta-data/../user-data",
        "/latest/meta-data/%2e%2e/user-data",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw(s.a, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 404 "), "{target}: {reply}");
    }
    assert_eq!(
        text(&a, &s.url_a("/latest/meta-data/instance-id")).await,
        ID_A
    );
    s.stop().await;
}

/// Sends `bytes` from guest A's address and reads until the server closes.
async fn raw(to: SocketAddr, bytes: &[u8]) -> String {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((GUEST_A, 0))).unwrap();
    let mut conn = sock.connect(to).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the server keeps a finished connection open");
    String::from_utf8_lossy(&reply).into_owned()
}

/// The test guest's client (tests/images/guest-imds) speaks HTTP/1.0 by
/// hand through nc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_by_hand() {
    let s = Imds::start().await;
    let put = "PUT /latest/api/token HTTP/1.0\r\nHost: 169.254.169.254\r\n\
               X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\
               Connection: close\r\n\r\n";
    let reply = raw(s.a, put.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    let token = reply.split("\r\n\r\n").nth(1).expect("a body");
    let get = format!(
        "GET /latest/meta-data/instance-id HTTP/1.0\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
    );
    let reply = raw(s.a, get.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with(&format!("\r\n\r\n{ID_A}")), "{reply}");
    s.stop().await;
}

/// Connections from guests are bounded in number and in idle time, and a
/// guest trickling bytes cannot hold up shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_connections_are_bounded() {
    let s = Imds::start().await;
    let (a, b) = (guest(GUEST_A), guest(GUEST_B));
    let id = s.url_a("/latest/meta-data/instance-id");
    let open_from_a = || async {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((GUEST_A, 0))).unwrap();
        sock.connect(s.a).await.unwrap()
    };

    // A stalled request is dropped once idle.
    let mut stalled = open_from_a().await;
    stalled
        .write_all(b"GET /latest/meta-data/ HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a stalled connection stays open");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // At most 16 open connections per guest; others are closed at once.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(open_from_a().await);
    }
    let closed = futures_util::future::join_all(held.iter_mut().map(|c| async move {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    }))
    .await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 4, "{closed:?}");
    // Other guests are not affected.
    let tb = good_token(&b, &s.url_b("/latest/api/token")).await;
    let r = send(
        b.get(s.url_b("/latest/meta-data/instance-id"))
            .header("X-aws-ec2-metadata-token", tb),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        // Until the server has seen them close, a new one is still refused.
        if a.get(&id).send().await.map(|r| r.status()).ok() == Some(StatusCode::OK) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "guest A is not served again after closing its connections"
    );

    // Shutdown with a guest trickling a request byte by byte.
    let mut trickle = open_from_a().await;
    let trickler = tokio::spawn(async move {
        for byte in b"GET /latest/meta-data/instance-id HTTP/1.1\r\nX-Slow: "
            .iter()
            .cycle()
            .take(60)
        {
            if trickle.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    trickler.abort();
}

/// Walks every listing the way cloud-init's crawler does: an entry ending
/// in `/` is a directory, `N=name` is entered as `N/`, anything else is a
/// value; every listed entry must answer 200 with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_entry_resolves() {
    let s = Imds::start().await;
    let a = guest(GUEST_A);
    for version in ["1.0", "2007-01-19", "2009-04-04", "2021-03-23", "latest"] {
        let mut dirs = vec![format!("/{version}/")];
        let mut values = 0;
        while let Some(d) = dirs.pop() {
            for entry in text(&a, &s.url_a(&d)).await.lines() {
                assert!(!entry.is_empty(), "empty entry in {d}");
                if let Some((n, _)) = entry.split_once('=') {
                    dirs.push(format!("{d}{n}/"));
                } else if entry.ends_with('/') || d.matches('/').count() == 2 {
                    // `/latest/` lists its directories without a slash.
                    match entry {
                        "user-data" => values += 1,
                        e => dirs.push(format!("{d}{}/", e.trim_end_matches('/'))),
                    }
                } else {
                    let r = get(&a, &s.url_a(&format!("{d}{entry}"))).await;
                    assert_eq!(r.status, StatusCode::OK, "{d}{entry}");
                    assert!(!r.body.is_empty(), "{d}{entry}");
                    values += 1;
                }
            }
        }
        assert!(values >= 8, "{version}: only {values} values");
    }
    s.stop().await;
}

fn need(tool: &str, check: &[&str]) {
    let ok = std::process::Command::new(tool)
        .args(check)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} {check:?} failed: install boto3 with `pip install boto3` (scripts/install-deps does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_reads_the_region_with_an_imdsv2_token() {
    need("python3", &["-c", "import botocore.utils"]);
    // Python connects from 127.0.0.1 whatever loopback address it dials, so
    // that is the guest address registered here.
    let listener = TcpListener::bind((GW_A, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let table = MetadataTable::new();
    let mut md = instance_b();
    md.instance_id = ID_A.into();
    md.availability_zone = "corral-9c".into();
    md.region = "corral-9".into();
    table.set([((GW_A, Ipv4Addr::LOCALHOST), md)]);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, table, async move {
        let _ = stopped.await;
    }));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/imds_botocore.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{addr}/"),
        )
        .env("EXPECT_REGION", "corral-9")
        .env("EXPECT_AZ", "corral-9c")
        .env("EXPECT_INSTANCE_ID", ID_A)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for var in [
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_EC2_METADATA_V1_DISABLED",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("botocore finishes")
        .expect("run python3");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "botocore script failed:\n{said}");
    assert!(
        said.contains("imds botocore: ok region=corral-9 az=corral-9c"),
        "{said}"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
