//! Requests as old clients send them: boto 2 and euca2ools sign with
//! SigV2 (HmacSHA256, `Timestamp`), name an old API `Version`, and pass
//! single ids in the list form (`InstanceId.1`, boto 2's
//! `build_list_params`).

use base64::Engine;
use chrono::Utc;
use corral_ec2_api::testing::{add_user, seed_project, start, Keys, TestServer};
use hmac::{Hmac, KeyInit, Mac};

fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A form body signed as boto 2's QuerySignatureV2AuthHandler signs it:
/// HmacSHA256 over "POST\n<host:port>\n/\n<sorted, encoded parameters>",
/// with the API `version` the client was written for.
fn boto2_body(keys: &Keys, host: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.push(("AWSAccessKeyId".into(), keys.id.clone()));
    all.push(("SignatureVersion".into(), "2".into()));
    all.push(("SignatureMethod".into(), "HmacSHA256".into()));
    all.push((
        "Timestamp".into(),
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ));
    all.push(("Version".into(), version.into()));
    // boto 2: `sorted(params.keys())`, by name (so `InstanceId` comes
    // before `InstanceId.1`), then each pair encoded.
    all.sort();
    let encoded: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let query = encoded.join("&");
    let to_sign = format!("POST\n{}\n/\n{query}", host.to_lowercase());
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(keys.secret.as_bytes()).unwrap();
    m.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    format!("{query}&Signature={}", enc(&sig))
}

/// POSTs over TLS, trusting only the test server's CA.
async fn post(s: &TestServer, body: String) -> (u16, String) {
    let ca = reqwest::Certificate::from_pem_bundle(s.ca_pem.as_bytes()).unwrap();
    let r = reqwest::Client::builder()
        .tls_certs_only(ca)
        .build()
        .unwrap()
        .post(format!("{}/", s.url))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The text of the first `<name>` element.
fn leaf(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{name}>"))?;
    Some(text[start..end].to_string())
}

fn error_code(text: &str) -> String {
    assert!(
        text.contains("<Response><Errors><Error><Code>"),
        "not an EC2 error: {text}"
    );
    leaf(text, "Code").unwrap()
}

#[tokio::test]
async fn get_console_output_takes_instance_id_1_from_boto2_and_euca2ools() {
    let s = start().await;
    let keys = add_user(&s.store, "eve", Some("demo")).await;
    let image = seed_project(&s.store, "demo").await;
    let host = s.addr.to_string();

    // boto 2's run_instances.
    let body = boto2_body(
        &keys,
        &host,
        "2014-06-15",
        &[
            ("Action", "RunInstances"),
            ("ImageId", &image),
            ("MinCount", "2"),
            ("MaxCount", "2"),
            ("InstanceType", "m1.small"),
        ],
    );
    let (status, text) = post(&s, body).await;
    assert_eq!(status, 200, "{text}");
    let ids: Vec<String> = text
        .split("<instanceId>")
        .skip(1)
        .map(|t| t[..t.find('<').unwrap()].to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let (id, other) = (&ids[0], &ids[1]);

    // What the serial console said (the node agent's part).
    let instances: Vec<corral_api_types::Instance> = s
        .store
        .list(Some("demo"), Default::default())
        .await
        .unwrap()
        .items;
    let name = instances
        .iter()
        .find(|i| corral_api_types::ec2::instance_id(&i.metadata.uid) == *id)
        .unwrap()
        .metadata
        .name
        .clone();
    s.store
        .raw()
        .create(
            &corral_store::console_key("demo", &name),
            b"cloud-init: ready\n".to_vec(),
        )
        .await
        .unwrap();

    for version in ["2010-08-31", "2014-06-15", "2014-10-01"] {
        // boto 2's get_console_output: build_list_params(params,
        // [instance_id], 'InstanceId').
        let body = boto2_body(
            &keys,
            &host,
            version,
            &[("Action", "GetConsoleOutput"), ("InstanceId.1", id)],
        );
        let (status, text) = post(&s, body).await;
        assert_eq!(status, 200, "{version}: {text}");
        assert!(
            text.contains(&format!(
                "<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/{version}/\">"
            )),
            "{text}"
        );
        assert_eq!(leaf(&text, "instanceId").as_deref(), Some(id.as_str()));
        let output = leaf(&text, "output").expect("output");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(output)
            .unwrap();
        assert_eq!(bytes, b"cloud-init: ready\n");
        assert!(leaf(&text, "timestamp").is_some(), "{text}");
    }

    // Today's form still works, and the instance with nothing on its
    // console answers without output.
    let body = boto2_body(
        &keys,
        &host,
        "2016-11-15",
        &[("Action", "GetConsoleOutput"), ("InstanceId", other)],
    );
    let (status, text) = post(&s, body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(leaf(&text, "instanceId").as_deref(), Some(other.as_str()));
    assert!(leaf(&text, "output").is_none(), "{text}");

    // More than one instance is an error that says so, never a 500.
    for (params, code, says) in [
        (
            vec![
                ("Action", "GetConsoleOutput"),
                ("InstanceId.1", id.as_str()),
                ("InstanceId.2", other.as_str()),
            ],
            "InvalidParameterValue",
            "GetConsoleOutput takes one instance ID",
        ),
        (
            vec![
                ("Action", "GetConsoleOutput"),
                ("InstanceId", id.as_str()),
                ("InstanceId.1", other.as_str()),
            ],
            "InvalidParameterCombination",
            "name different instances",
        ),
        (
            vec![("Action", "GetConsoleOutput")],
            "MissingParameter",
            "InstanceId",
        ),
        (
            vec![("Action", "GetConsoleOutput"), ("InstanceId.1", "i-<>")],
            "InvalidInstanceID.Malformed",
            "instance id",
        ),
        (
            vec![
                ("Action", "GetConsoleOutput"),
                ("InstanceId.1", "i-0123456789abcdef0"),
            ],
            "InvalidInstanceID.NotFound",
            "i-0123456789abcdef0",
        ),
    ] {
        let body = boto2_body(&keys, &host, "2014-06-15", &params);
        let (status, text) = post(&s, body).await;
        assert_eq!(status, 400, "{params:?}: {text}");
        assert_eq!(error_code(&text), code, "{params:?}: {text}");
        assert!(
            leaf(&text, "Message").unwrap().contains(says),
            "{params:?}: {text}"
        );
    }
}
