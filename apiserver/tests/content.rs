//! Image bytes and console text over real HTTP: uploads verified and
//! recorded in the Image's status, downloads for nodes, console writes by
//! the instance's node only, bounded to the newest 64 KiB.

use corral_api_types::auth::Role;
use corral_api_types::{Instance, InstanceSpec, InstanceStatus, Resource};
use corral_store::blobs::BlobStore;
use corral_test_support::ApiServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(with_blobs: bool) -> ApiServer {
    start_with(with_blobs, None).await
}

/// A server with a blob store under the test's directory and, with
/// `upload_limit`, that image upload limit.
async fn start_with(with_blobs: bool, upload_limit: Option<u64>) -> ApiServer {
    let api = ApiServer::embedded().await;
    if with_blobs {
        let dir = api.dir().expect("embedded store's directory");
        api.state
            .set_blobs(BlobStore::open(&dir.join("blobs")).unwrap());
    }
    if let Some(limit) = upload_limit {
        api.state.set_image_upload_limit(limit);
    }
    api
}

trait AdminJson {
    /// The admin's JSON request; the status and body (null when not JSON).
    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value);
}

impl AdminJson for ApiServer {
    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let (code, v) = self.call(&self.admin, method, path, Some(body)).await;
        (code, if v.is_string() { Value::Null } else { v })
    }
}

fn text(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

#[tokio::test]
async fn image_bytes_are_uploaded_verified_and_served() {
    let api = start(true).await;
    let (c, _) = api
        .json(
            reqwest::Method::POST,
            "/v1/projects",
            json!({"metadata": {"name": "p"}}),
        )
        .await;
    assert_eq!(c, StatusCode::CREATED);
    for (name, source) in [
        ("up", json!({"upload": true})),
        (
            "file",
            json!({"url": "https://images.example.com/disk.qcow2"}),
        ),
    ] {
        let (c, b) = api
            .json(
                reqwest::Method::POST,
                "/v1/projects/p/images",
                json!({"metadata": {"name": name}, "spec": {"source": source, "format": "qcow2"}}),
            )
            .await;
        assert_eq!(c, StatusCode::CREATED, "{b}");
    }
    let put = reqwest::Method::PUT;
    let path = "/v1/projects/p/images/up/content";

    // Not a qcow2: refused, naming the field.
    let (c, b) = api
        .send(&api.admin, put.clone(), path, b"not an image".to_vec())
        .await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(text(&b)["details"]["causes"][0]["field"], "spec.format");

    // A checksum that does not match: refused.
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.extend(std::iter::repeat_n(7u8, 3 << 20));
    let wrong = format!("{path}?sha256={}", "0".repeat(64));
    let (c, b) = api
        .send(&api.admin, put.clone(), &wrong, bytes.clone())
        .await;
    assert_eq!(
        c,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(String::from_utf8_lossy(&b).contains("checksum mismatch"));
    let (c, _) = api
        .send(
            &api.admin,
            put.clone(),
            &format!("{path}?sha256=xyz"),
            bytes.clone(),
        )
        .await;
    assert_eq!(c, StatusCode::BAD_REQUEST);

    // The real thing (larger than the 4 MiB JSON body limit is fine too).
    bytes.extend(std::iter::repeat_n(9u8, 2 << 20));
    let (c, b) = api.send(&api.admin, put.clone(), path, bytes.clone()).await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let answer = text(&b);
    let sha = answer["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);
    assert_eq!(answer["sizeBytes"], bytes.len());
    let (_, img) = api
        .json(
            reqwest::Method::GET,
            "/v1/projects/p/images/up",
            Value::Null,
        )
        .await;
    assert_eq!(img["status"]["phase"], "available");
    assert_eq!(img["status"]["sha256"], sha.as_str());
    assert_eq!(img["status"]["sizeBytes"], bytes.len());

    // A node downloads it for an instance bound to it that boots from it,
    // and for nothing else; members of the project download it; others
    // do not.
    let node = api.user("node-n1", Role::Node, "", "n1").await;
    let (c, _) = api
        .send(&node, reqwest::Method::GET, path, Vec::new())
        .await;
    assert_eq!(c, StatusCode::FORBIDDEN, "a node names what it reads for");
    for (name, image, node_name) in [
        ("uses", "up", "n1"),
        ("other", "tiny", "n1"),
        ("n2s", "up", "n2"),
    ] {
        let mut i = Instance::new(
            "p",
            name,
            InstanceSpec {
                image: Some(image.into()),
                ..Default::default()
            },
        );
        i.status = Some(InstanceStatus {
            node_name: Some(node_name.into()),
            ..Default::default()
        });
        api.store.create(&i).await.unwrap();
    }
    let for_path = |f: &str| format!("{path}?for={f}");
    let (c, got) = api
        .send(
            &node,
            reqwest::Method::GET,
            &for_path("instances/uses"),
            Vec::new(),
        )
        .await;
    assert_eq!(c, StatusCode::OK);
    assert!(got == bytes, "downloaded bytes differ");
    for (f, want) in [
        ("instances/other", StatusCode::FORBIDDEN),
        ("instances/n2s", StatusCode::NOT_FOUND),
        ("instances/none", StatusCode::NOT_FOUND),
        ("volumes/none", StatusCode::NOT_FOUND),
        ("nodes/n1", StatusCode::BAD_REQUEST),
    ] {
        let (c, _) = api
            .send(&node, reqwest::Method::GET, &for_path(f), Vec::new())
            .await;
        assert_eq!(c, want, "for={f}");
    }
    let member = api.user("m", Role::Member, "p", "").await;
    let (c, _) = api
        .send(&member, reqwest::Method::GET, path, Vec::new())
        .await;
    assert_eq!(c, StatusCode::OK);
    let (c, _) = api.send(&node, put.clone(), path, bytes.clone()).await;
    assert_eq!(c, StatusCode::FORBIDDEN);
    let (c, _) = api
        .json(
            reqwest::Method::POST,
            "/v1/projects",
            json!({"metadata": {"name": "q"}}),
        )
        .await;
    assert_eq!(c, StatusCode::CREATED);
    let stranger = api.user("s", Role::Member, "q", "").await;
    let (c, _) = api
        .send(&stranger, reqwest::Method::GET, path, Vec::new())
        .await;
    assert!(
        c == StatusCode::FORBIDDEN || c == StatusCode::NOT_FOUND,
        "{c}"
    );

    // An image whose bytes come from a URL takes no upload.
    let (c, b) = api
        .send(
            &api.admin,
            put.clone(),
            "/v1/projects/p/images/file/content",
            bytes.clone(),
        )
        .await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        text(&b)["details"]["causes"][0]["field"],
        "spec.source.upload"
    );
    // And is not downloadable before it is available.
    let (c, _) = api
        .send(
            &api.admin,
            reqwest::Method::GET,
            "/v1/projects/p/images/file/content",
            Vec::new(),
        )
        .await;
    assert_eq!(c, StatusCode::CONFLICT);
    let (c, _) = api
        .send(&api.admin, put, "/v1/projects/p/images/none/content", bytes)
        .await;
    assert_eq!(c, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_server_without_a_blob_store_says_so() {
    let api = start(false).await;
    api.json(
        reqwest::Method::POST,
        "/v1/projects",
        json!({"metadata": {"name": "p"}}),
    )
    .await;
    api.json(
        reqwest::Method::POST,
        "/v1/projects/p/images",
        json!({"metadata": {"name": "up"}, "spec": {"source": {"upload": true}}}),
    )
    .await;
    let (c, b) = api
        .send(
            &api.admin,
            reqwest::Method::PUT,
            "/v1/projects/p/images/up/content",
            b"QFI\xfb".to_vec(),
        )
        .await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&b).contains("blob"));
}

#[tokio::test]
async fn consoles_are_written_by_their_node_and_bounded() {
    let api = start(false).await;
    api.json(
        reqwest::Method::POST,
        "/v1/projects",
        json!({"metadata": {"name": "p"}}),
    )
    .await;
    let mut i = Instance::new("p", "vm", InstanceSpec::default());
    i.status = Some(InstanceStatus {
        node_name: Some("n1".into()),
        ..Default::default()
    });
    api.store.create(&i).await.unwrap();
    let n1 = api.user("node-n1", Role::Node, "", "n1").await;
    let n2 = api.user("node-n2", Role::Node, "", "n2").await;
    let member = api.user("m", Role::Member, "p", "").await;
    let path = "/v1/projects/p/instances/vm/console";
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;

    let (c, b) = api.send(&api.admin, get.clone(), path, Vec::new()).await;
    assert_eq!((c, b.len()), (StatusCode::OK, 0));
    let (c, _) = api
        .send(&n1, put.clone(), path, b"corral-guest: boot\n".to_vec())
        .await;
    assert_eq!(c, StatusCode::NO_CONTENT);
    let (_, b) = api.send(&member, get.clone(), path, Vec::new()).await;
    assert_eq!(b, b"corral-guest: boot\n");
    let (_, b) = api
        .send(&member, get.clone(), &format!("{path}?tail=5"), Vec::new())
        .await;
    assert_eq!(b, b"boot\n");
    let (c, _) = api
        .send(&member, get.clone(), &format!("{path}?tail=x"), Vec::new())
        .await;
    assert_eq!(c, StatusCode::BAD_REQUEST);

    // Only the instance's own node writes it.
    let (c, _) = api.send(&member, put.clone(), path, b"x".to_vec()).await;
    assert_eq!(c, StatusCode::FORBIDDEN);
    let (c, _) = api.send(&n2, put.clone(), path, b"x".to_vec()).await;
    assert_eq!(c, StatusCode::NOT_FOUND);
    let (c, _) = api.send(&n2, get.clone(), path, Vec::new()).await;
    assert_eq!(c, StatusCode::NOT_FOUND);

    // The newest 64 KiB are kept.
    let mut big = vec![b'a'; 70 * 1024];
    big.extend_from_slice(b"END");
    let (c, _) = api.send(&n1, put.clone(), path, big.clone()).await;
    assert_eq!(c, StatusCode::NO_CONTENT);
    let (_, b) = api.send(&api.admin, get.clone(), path, Vec::new()).await;
    assert_eq!(b.len(), 64 * 1024);
    assert!(b.ends_with(b"END"));

    let (c, _) = api
        .send(&n1, reqwest::Method::DELETE, path, Vec::new())
        .await;
    assert_eq!(c, StatusCode::NO_CONTENT);
    let (_, b) = api.send(&api.admin, get, path, Vec::new()).await;
    assert!(b.is_empty());
}

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An upload past the server's limit is 413 naming it — at once when the
/// length is declared, as soon as the limit is passed when it is streamed
/// — and leaves no file behind; one within it is taken.
#[tokio::test]
async fn uploads_past_the_limit_are_refused_and_leave_nothing() {
    let api = start_with(true, Some(1 << 20)).await;
    let (c, _) = api
        .json(
            reqwest::Method::POST,
            "/v1/projects",
            json!({"metadata": {"name": "p"}}),
        )
        .await;
    assert_eq!(c, StatusCode::CREATED);
    let (c, b) = api
        .json(
            reqwest::Method::POST,
            "/v1/projects/p/images",
            json!({"metadata": {"name": "up"}, "spec": {"source": {"upload": true}, "format": "raw"}}),
        )
        .await;
    assert_eq!(c, StatusCode::CREATED, "{b}");
    let url = format!("{}/v1/projects/p/images/up/content", api.base);
    let blobs = api.dir().unwrap().join("blobs");

    // Declared: refused before a byte is read.
    let (c, b) = api
        .send(
            &api.admin,
            reqwest::Method::PUT,
            "/v1/projects/p/images/up/content",
            vec![0u8; (1 << 20) + 1],
        )
        .await;
    assert_eq!(c, StatusCode::PAYLOAD_TOO_LARGE);
    let message = text(&b)["message"].as_str().unwrap().to_string();
    assert!(message.contains("the limit is 1048576 bytes"), "{message}");

    // Streamed without a length: cut off past the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![1u8; 64 << 10])).collect();
    let r = api
        .http
        .put(&url)
        .bearer_auth(&api.admin)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Nothing kept: no blob, no partial file; the image has no bytes.
    assert_eq!(files(&blobs), Vec::<std::path::PathBuf>::new());
    let img: corral_api_types::Image = api.store.get("p", "up").await.unwrap().unwrap();
    assert!(img.status.and_then(|s| s.sha256).is_none());

    // Within the limit: taken.
    let (c, b) = api
        .send(
            &api.admin,
            reqwest::Method::PUT,
            "/v1/projects/p/images/up/content",
            vec![0u8; 512 << 10],
        )
        .await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(files(&blobs).len(), 1, "{:?}", files(&blobs));
}
