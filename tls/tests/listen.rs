//! A TLS listener served by axum, reached by reqwest trusting only the CA,
//! by pinned discovery, by the wrong CA and by plain HTTP.

use std::net::IpAddr;

use corral_tls::{fetch_pinned_ca, load_or_create, Listen, SubjectNames, TlsListener};

async fn serve(dir: &std::path::Path) -> (String, corral_tls::ServerIdentity) {
    let id = load_or_create(
        dir,
        &SubjectNames::for_host(&[IpAddr::from([127, 0, 0, 1])], &[]),
    )
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listen = Listen::Tls(TlsListener::new(tcp, id.config.clone()).unwrap());
    let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(listen, app).await });
    (format!("https://127.0.0.1:{port}"), id)
}

fn client(ca_pem: &str) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .unwrap()
}

#[tokio::test]
async fn clients_trusting_the_ca_get_through_and_others_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (url, id) = serve(dir.path()).await;

    let body = client(&id.ca_pem)
        .get(format!("{url}/hello"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello");
    let by_name = url.replace("127.0.0.1", "localhost");
    assert_eq!(
        client(&id.ca_pem)
            .get(format!("{by_name}/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Another server's CA: refused, and the error says it is the certificate.
    let other = tempfile::tempdir().unwrap();
    let (_, stranger) = serve(other.path()).await;
    let err = client(&stranger.ca_pem)
        .get(format!("{url}/hello"))
        .send()
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("certificate") || text.contains("Certificate"),
        "{text}"
    );

    // Plain HTTP to the TLS port gets a readable answer, not garbage.
    let plain = reqwest::Client::new()
        .get(format!("{}/hello", url.replace("https", "http")))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("HTTPS"));
}

#[tokio::test]
async fn pinned_discovery_takes_only_the_pinned_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (url, id) = serve(dir.path()).await;
    let pem = fetch_pinned_ca(&url, &id.ca_hash).await.unwrap();
    assert_eq!(corral_tls::ca_hash(&pem).unwrap(), id.ca_hash);
    assert_eq!(
        client(&pem)
            .get(format!("{url}/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = fetch_pinned_ca(&url, &wrong).await.unwrap_err().to_string();
    assert!(err.contains("pinned hash"), "{err}");
    let err = fetch_pinned_ca(&url, "md5:abc")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a CA hash"), "{err}");
    let err = fetch_pinned_ca(&url.replace("https", "http"), &id.ca_hash)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("https://"), "{err}");
}
