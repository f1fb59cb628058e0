//! The wire protocol over real HTTP: SigV2 signed the way euca2ools signs,
//! authentication failures, XML envelopes, and hostile input that must
//! never produce a 500.

use base64::Engine;
use chrono::Utc;
use corral_ec2_api::testing::{add_user, start, Keys, TestServer};
use hmac::{Hmac, KeyInit, Mac};

fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A form body signed as euca2ools (requestbuilder's HmacV2Auth) signs:
/// sorted, RFC 3986-encoded parameters under "POST\nhost:port\npath\n".
fn sigv2_body(
    keys: &Keys,
    host: &str,
    path: &str,
    params: &[(&str, &str)],
    sha1: bool,
    time: chrono::DateTime<Utc>,
) -> String {
    sigv2_signed(keys, host, path, params, sha1, ("Timestamp", time))
}

/// [`sigv2_body`] with the time as `Timestamp` or as `Expires`.
fn sigv2_signed(
    keys: &Keys,
    host: &str,
    path: &str,
    params: &[(&str, &str)],
    sha1: bool,
    (time_param, time): (&str, chrono::DateTime<Utc>),
) -> String {
    let ts = time.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let method = if sha1 { "HmacSHA1" } else { "HmacSHA256" };
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.push(("AWSAccessKeyId".into(), keys.id.clone()));
    all.push(("SignatureVersion".into(), "2".into()));
    all.push(("SignatureMethod".into(), method.into()));
    all.push((time_param.into(), ts));
    all.push(("Version".into(), "2014-10-01".into()));
    let mut encoded: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    encoded.sort();
    let query = encoded.join("&");
    let to_sign = format!("POST\n{}\n{path}\n{query}", host.to_lowercase());
    let sig = if sha1 {
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(keys.secret.as_bytes()).unwrap();
        m.update(to_sign.as_bytes());
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(keys.secret.as_bytes()).unwrap();
        m.update(to_sign.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    let sig = base64::engine::general_purpose::STANDARD.encode(sig);
    format!("{query}&Signature={}", enc(&sig))
}

/// POSTs over TLS, trusting only the test server's CA.
async fn post(s: &TestServer, url: &str, body: String) -> (u16, String) {
    let ca = reqwest::Certificate::from_pem_bundle(s.ca_pem.as_bytes()).unwrap();
    let r = reqwest::Client::builder()
        .tls_certs_only(ca)
        .build()
        .unwrap()
        .post(url)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn sigv2_as_euca2ools_signs_it() {
    let s = start().await;
    let keys = add_user(&s.store, "eve", Some("demo")).await;
    let host = s.addr.to_string();
    let url = format!("{}/services/Cloud/", s.url);
    for sha1 in [false, true] {
        let body = sigv2_body(
            &keys,
            &host,
            "/services/Cloud/",
            &[("Action", "DescribeAvailabilityZones")],
            sha1,
            Utc::now(),
        );
        let (status, text) = post(&s, &url, body).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeAvailabilityZonesResponse xmlns=\"http://ec2.amazonaws.com/doc/2014-10-01/\"><requestId>"), "{text}");
        assert!(text.contains("<availabilityZoneInfo><item><zoneName>corral-1a</zoneName><zoneState>available</zoneState>"), "{text}");
    }
    // A euca-authorize style call: flat classic parameters, by group name.
    let body = sigv2_body(
        &keys,
        &host,
        "/services/Cloud/",
        &[
            ("Action", "CreateSecurityGroup"),
            ("GroupName", "web"),
            ("GroupDescription", "web servers"),
        ],
        false,
        Utc::now(),
    );
    let (status, text) = post(&s, &url, body).await;
    assert_eq!(status, 200, "{text}");
    let body = sigv2_body(
        &keys,
        &host,
        "/services/Cloud/",
        &[
            ("Action", "AuthorizeSecurityGroupIngress"),
            ("GroupName", "web"),
            ("IpProtocol", "tcp"),
            ("FromPort", "22"),
            ("ToPort", "22"),
            ("CidrIp", "0.0.0.0/0"),
        ],
        true,
        Utc::now(),
    );
    let (status, text) = post(&s, &url, body).await;
    assert_eq!(status, 200, "{text}");
    let sg: corral_api_types::SecurityGroup = s.store.get("demo", "web").await.unwrap().unwrap();
    assert_eq!(sg.spec.ingress.len(), 1);
    assert_eq!(sg.spec.ingress[0].from_port, Some(22));
}

fn error_code(text: &str) -> String {
    let start = text.find("<Code>").map(|i| i + 6).unwrap_or(0);
    let end = text.find("</Code>").unwrap_or(start);
    assert!(
        text.contains("<Response><Errors><Error><Code>")
            && text.contains("</Error></Errors><RequestID>"),
        "{text}"
    );
    text[start..end].to_string()
}

#[tokio::test]
async fn authentication_failures_change_nothing() {
    let s = start().await;
    let keys = add_user(&s.store, "eve", Some("demo")).await;
    let host = s.addr.to_string();
    let url = format!("{}/", s.url);
    let create = [
        ("Action", "CreateSecurityGroup"),
        ("GroupName", "x"),
        ("GroupDescription", "d"),
    ];
    let wrong = Keys {
        id: keys.id.clone(),
        secret: "wrong".into(),
    };
    let unknown = Keys {
        id: "AKIAUNKNOWNUNKNOWN00".into(),
        secret: keys.secret.clone(),
    };
    let stale = Utc::now() - chrono::Duration::minutes(20);
    let future = Utc::now() + chrono::Duration::minutes(20);
    for body in [
        sigv2_body(&wrong, &host, "/", &create, false, Utc::now()),
        sigv2_body(&unknown, &host, "/", &create, false, Utc::now()),
        sigv2_body(&keys, &host, "/", &create, false, stale),
        sigv2_body(&keys, &host, "/", &create, false, future),
        sigv2_body(&keys, "evil.example:80", "/", &create, false, Utc::now()),
        sigv2_body(&keys, &host, "/other", &create, false, Utc::now()),
        "Action=CreateSecurityGroup&GroupName=x&GroupDescription=d".to_string(),
    ] {
        let (status, text) = post(&s, &url, body).await;
        assert_eq!(
            (status, error_code(&text).as_str()),
            (401, "AuthFailure"),
            "{text}"
        );
    }
    // Expires: in the past, or further ahead than a Timestamp's window
    // (a signature good until 2099 would be a password).
    let far = Utc::now() + chrono::Duration::days(365 * 70);
    let past = Utc::now() - chrono::Duration::minutes(1);
    for expires in [far, past] {
        let body = sigv2_signed(&keys, &host, "/", &create, false, ("Expires", expires));
        let (status, text) = post(&s, &url, body).await;
        assert_eq!(
            (status, error_code(&text).as_str()),
            (401, "AuthFailure"),
            "{text}"
        );
    }
    // Within the window, Expires signs as well as Timestamp does.
    let soon = Utc::now() + chrono::Duration::minutes(5);
    let describe = [("Action", "DescribeSecurityGroups")];
    let body = sigv2_signed(&keys, &host, "/", &describe, true, ("Expires", soon));
    let (status, text) = post(&s, &url, body).await;
    assert_eq!(status, 200, "{text}");
    // A signature over other parameters does not cover an added one.
    let mut tampered = sigv2_body(&keys, &host, "/", &create, false, Utc::now());
    tampered.push_str("&TagSpecification.1.ResourceType=security-group");
    let (status, _) = post(&s, &url, tampered).await;
    assert_eq!(status, 401);
    let groups = s
        .store
        .list::<corral_api_types::SecurityGroup>(Some("demo"), Default::default())
        .await
        .unwrap();
    // The one group is the default VPC's, made by the DescribeSecurityGroups
    // that succeeded.
    assert!(
        groups.items.iter().all(|g| g.metadata.name == "default"),
        "nothing may be written by failed requests: {:?}",
        groups
            .items
            .iter()
            .map(|g| &g.metadata.name)
            .collect::<Vec<_>>()
    );
    let (status, text) = post(
        &s,
        &url,
        sigv2_body(
            &keys,
            &host,
            "/",
            &[("Action", "FlyToTheMoon")],
            false,
            Utc::now(),
        ),
    )
    .await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (400, "InvalidAction"),
        "{text}"
    );
}

#[tokio::test]
async fn hostile_input_never_produces_a_500() {
    let s = start().await;
    let keys = add_user(&s.store, "eve", Some("demo")).await;
    let host = s.addr.to_string();
    let url = format!("{}/", s.url);
    let long = "x".repeat(100_000);
    let nasty: Vec<Vec<(&str, &str)>> = vec![
        vec![("Action", "DescribeInstances"), ("InstanceId.0", "i-1")],
        vec![
            ("Action", "DescribeInstances"),
            ("InstanceId.99999999999999999999", "i-1"),
        ],
        vec![
            ("Action", "DescribeInstances"),
            ("Filter.1.Name", "tag:"),
            ("Filter.1.Value.1", "x"),
        ],
        vec![
            ("Action", "DescribeInstances"),
            ("Filter.1.Name", "instance-id"),
        ],
        vec![("Action", "DescribeInstances"), ("MaxResults", "-1")],
        vec![
            ("Action", "DescribeInstances"),
            ("NextToken", "\u{0}\u{1}<>&"),
        ],
        vec![
            ("Action", "DescribeInstances"),
            ("Filter.1.Name", "tag:Name"),
            ("Filter.1.Value.1", "*********************************a"),
        ],
        vec![
            ("Action", "RunInstances"),
            ("ImageId", "ami-<script>"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ],
        vec![
            ("Action", "RunInstances"),
            ("ImageId", "ami-0123abcd"),
            ("MinCount", "5"),
            ("MaxCount", "1"),
        ],
        vec![
            ("Action", "RunInstances"),
            ("ImageId", "ami-0123abcd"),
            ("MinCount", "1"),
            ("MaxCount", "99999999999999999999999"),
        ],
        vec![
            ("Action", "RunInstances"),
            ("ImageId", "ami-0123abcd"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("UserData", "%%%not base64"),
        ],
        vec![("Action", "CreateKeyPair"), ("KeyName", &long)],
        vec![("Action", "GetConsoleOutput")],
        vec![("Action", "GetConsoleOutput"), ("InstanceId", "i-<>")],
        vec![
            ("Action", "GetConsoleOutput"),
            ("InstanceId", "i-0123456789abcdef0"),
            ("Latest", "maybe"),
        ],
        vec![
            ("Action", "GetConsoleOutput"),
            ("InstanceId", "i-0123456789abcdef0"),
        ],
        vec![
            ("Action", "ImportKeyPair"),
            ("KeyName", "k"),
            ("PublicKeyMaterial", "c3NoLWVkMjU1MTkgQUFBQQ=="),
        ],
        vec![
            ("Action", "CreateSecurityGroup"),
            ("GroupName", "a\u{0}b"),
            ("GroupDescription", "\u{7}"),
        ],
        vec![
            ("Action", "AuthorizeSecurityGroupIngress"),
            ("GroupId", "sg-zz"),
            ("IpProtocol", "tcp"),
        ],
        vec![
            ("Action", "CreateTags"),
            ("ResourceId.1", "../../etc"),
            ("Tag.1.Key", "k"),
        ],
        vec![
            ("Action", "DescribeTags"),
            ("Filter.1.Name", "key"),
            ("Filter.1.Value.1", &long),
        ],
        vec![
            ("Action", "ModifyInstanceAttribute"),
            ("InstanceId", "i-0123abcd"),
            ("Attribute", "kernel"),
        ],
        vec![
            ("Action", "CreateVolume"),
            ("Size", "0"),
            ("AvailabilityZone", "corral-1a"),
        ],
        vec![("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/99")],
        vec![("Action", "DescribeRegions"), ("DryRun", "maybe")],
        vec![("Action", &long)],
    ];
    for params in &nasty {
        let (status, text) = post(
            &s,
            &url,
            sigv2_body(&keys, &host, "/", params, false, Utc::now()),
        )
        .await;
        let names: Vec<_> = params.iter().map(|p| &p.0[..p.0.len().min(40)]).collect();
        assert!(status < 500, "{names:?} gave {status}: {text}");
        if status != 200 {
            assert!(!error_code(&text).is_empty(), "{text}");
        }
    }
    // Garbage that is not even a signed request.
    for body in [
        "%%%",
        "Action",
        "=&=&==",
        "AWSAccessKeyId=%FF%FE&Signature=x&SignatureVersion=2&SignatureMethod=HmacSHA1&Timestamp=x",
    ] {
        let (status, _) = post(&s, &url, body.to_string()).await;
        assert_eq!(status, 401, "{body}");
    }
    let big = "a".repeat(2 * 1024 * 1024);
    let (status, _) = post(&s, &url, big).await;
    assert_eq!(status, 413);
}

/// A peer whose signatures keep failing is refused with
/// RequestLimitExceeded before its body is read; valid callers from
/// elsewhere are unaffected (the limit is per address).
#[tokio::test]
async fn failing_signatures_from_one_address_are_refused_early() {
    let s = start().await;
    let keys = add_user(&s.store, "mallet", Some("demo")).await;
    let wrong = Keys {
        id: keys.id.clone(),
        secret: "not-the-secret".into(),
    };
    let host = s.addr.to_string();
    let url = format!("{}/", s.url);
    let mut codes = Vec::new();
    for _ in 0..70 {
        let body = sigv2_body(
            &wrong,
            &host,
            "/",
            &[("Action", "DescribeRegions")],
            false,
            Utc::now(),
        );
        let (_, text) = post(&s, &url, body).await;
        codes.push(error_code(&text));
    }
    assert_eq!(codes[0], "AuthFailure");
    assert!(
        codes.iter().any(|c| c == "RequestLimitExceeded"),
        "{codes:?}"
    );
    // Even a correct signature from this address waits its turn now.
    let body = sigv2_body(
        &keys,
        &host,
        "/",
        &[("Action", "DescribeRegions")],
        false,
        Utc::now(),
    );
    let (status, text) = post(&s, &url, body).await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (503, "RequestLimitExceeded"),
        "{text}"
    );
}
