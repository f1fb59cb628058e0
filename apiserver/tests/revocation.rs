//! Revocation is immediate: a deleted token or user stops working on the
//! server that deleted it at once, and on every other server of the same
//! etcd as soon as its watch delivers the deletion — well inside the 3 s
//! an expiring cache used to keep it alive (a token used a moment before
//! on the other server was exactly what that cache kept).

mod support;

use std::time::{Duration, Instant};

use corral_apiserver::ApiState;
use reqwest::{Method, StatusCode};

/// A second API server on the same store.
async fn second_server(api: &support::Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(corral_apiserver::serve(
        ApiState::new(api.store.clone()),
        listener,
        std::future::pending(),
    ));
    base
}

async fn whoami(http: &reqwest::Client, base: &str, token: &str) -> StatusCode {
    http.get(format!("{base}/v1/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `base` until `token` is refused; answers how long that took.
async fn refused_within(http: &reqwest::Client, base: &str, token: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let code = whoami(http, base, token).await;
        if code == StatusCode::UNAUTHORIZED {
            return t0.elapsed();
        }
        assert_eq!(code, StatusCode::OK);
        assert!(t0.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deleted_tokens_and_users_stop_at_once_on_every_server() {
    let a = support::etcd().await;
    let b = second_server(&a).await;
    let http = reqwest::Client::new();
    a.project("p", serde_json::json!({})).await;
    let token = a.member("mia", "p").await;
    let (code, second) = a
        .call(&token, Method::POST, "/v1/users/mia/tokens", None)
        .await;
    assert_eq!(code, StatusCode::CREATED, "{second}");
    let second = second["token"].as_str().unwrap().to_string();

    // Both servers know the token (and would have cached it).
    assert_eq!(whoami(&http, &b, &token).await, StatusCode::OK);
    assert_eq!(whoami(&http, &a.base, &token).await, StatusCode::OK);

    let (code, list) = a
        .call(&token, Method::GET, "/v1/users/mia/tokens", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let hash = corral_apiserver::auth::token_hash(&token);
    let id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .find(|id| hash.starts_with(id.as_str()))
        .expect("the token is listed");
    let (code, body) = a
        .call(
            &token,
            Method::DELETE,
            &format!("/v1/users/mia/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // The server that revoked it: the very next request.
    assert_eq!(
        whoami(&http, &a.base, &token).await,
        StatusCode::UNAUTHORIZED
    );
    // The other: as soon as its watch has the deletion.
    let took = refused_within(&http, &b, &token).await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // The user's other token is untouched.
    assert_eq!(whoami(&http, &b, &second).await, StatusCode::OK);

    // Deleting the user ends all of its tokens, everywhere.
    let (code, body) = a.delete("/v1/users/mia").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        whoami(&http, &a.base, &second).await,
        StatusCode::UNAUTHORIZED
    );
    let took = refused_within(&http, &b, &second).await;
    assert!(took < Duration::from_millis(1500), "{took:?}");
}
