//! Property tests (bounded fuzzing) of the EC2 façade's hostile-input
//! surface: the Query parameter parser, the SigV2/SigV4 claim parsers and
//! verifiers, and whole signed requests with arbitrary parameters over
//! HTTP, which must never produce a 5xx.
//!
//! Case counts are fixed (see each `ProptestConfig`) so the suite stays
//! within seconds in CI; `PROPTEST_CASES` raises them for a longer run.

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::Utc;
use corral_ec2_api::auth::{sigv2, sigv4, RequestParts};
use corral_ec2_api::query::Params;
use corral_ec2_api::testing::{add_user, seed_project, start, Keys};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(n),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Parameter names shaped like the Query protocol's (`X.N.Field`) and
/// plain noise.
fn param_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z]{1,12}",
        "(Filter|InstanceId|Tag|TagSpecification|BlockDeviceMapping|IpPermissions)\\.[0-9]{1,6}(\\.(Name|Value|Key|Ebs)(\\.[0-9]{0,3})?)?",
        ".{0,20}",
    ]
}

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[0-9-]{0,25}",
        Just("true".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("'<$(reboot)>\n".to_string()),
    ]
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((param_name(), param_value()), 0..12)
}

/// SigV2 sorts parameters by (encoded) name, not by the `name=value`
/// text: `a` comes before `a.b` although `a=` sorts after `a.b=`.
fn by_name(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

/// RFC 3986 encoding as AWS signers do it (independent of the server's).
fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fn form(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Any bytes parse, and every accessor answers (value or 4xx).
    #[test]
    fn query_parser_takes_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..300),
                                    name in param_name()) {
        let p = Params::parse(&raw);
        let _ = p.get(&name);
        for r in [p.bool(&name).err(), p.int(&name).err(), p.int_in(&name, 1, 10).err(),
                  p.list(&name).err(), p.structs(&name).err()].into_iter().flatten() {
            prop_assert!(r.status.is_client_error(), "{r:?}");
        }
        let _ = p.sub(&name);
        let _ = p.canonical_for_idempotency();
    }

    /// Structured parameters survive encoding: what a client sends is what
    /// the parser reads (first value of a repeated name wins).
    #[test]
    fn query_parser_reads_what_was_encoded(pairs in params()) {
        let p = Params::parse(form(&pairs).as_bytes());
        for (k, v) in &pairs {
            let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v);
            prop_assert_eq!(p.get(k), first.map(String::as_str), "{} {}", k, v);
        }
        for prefix in ["Filter", "InstanceId", "Tag", "TagSpecification"] {
            if let Ok(list) = p.structs(prefix) {
                prop_assert!(list.len() <= pairs.len());
            }
        }
    }

    /// Claim parsers never panic; malformed claims are AuthFailure.
    #[test]
    fn signature_claims_take_any_text(header in ".{0,200}", date in ".{0,20}",
                                      pairs in params()) {
        let h = format!("AWS4-HMAC-SHA256 {header}");
        for r in [sigv4::claim_from_header(&header, Some(&date)),
                  sigv4::claim_from_header(&h, Some(&date)),
                  sigv4::claim_from_header(&h, None)] {
            if let Err(e) = r {
                prop_assert_eq!(e.code, "AuthFailure");
            }
        }
        let p = Params::from_pairs(pairs.clone());
        if let Err(e) = sigv4::claim_from_query(|n| p.get(n).map(str::to_string)) {
            prop_assert_eq!(e.code, "AuthFailure");
        }
        if let Err(e) = sigv2::claim(&p) {
            prop_assert_eq!(e.code, "AuthFailure");
        }
        let _ = sigv2::parse_time(&date);
    }

    /// SigV2: a request signed as euca2ools signs verifies; changing any
    /// parameter's value after signing does not.
    #[test]
    fn sigv2_verifies_exactly_what_was_signed(pairs in params(), secret in "[A-Za-z0-9/+]{8,40}",
                                              flip in any::<prop::sample::Index>()) {
        let mut all: Vec<(String, String)> = pairs.into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "Signature" | "SignatureVersion" | "SignatureMethod" | "AWSAccessKeyId" | "Timestamp" | "Expires"))
            .collect();
        all.push(("AWSAccessKeyId".into(), "AKIAFUZZFUZZFUZZFUZZ".into()));
        all.push(("SignatureVersion".into(), "2".into()));
        all.push(("SignatureMethod".into(), "HmacSHA256".into()));
        all.push(("Timestamp".into(), "2024-01-01T00:00:00Z".into()));
        let mut dedup: Vec<(String, String)> = Vec::new();
        for (k, v) in all {
            if !dedup.iter().any(|(k2, _)| *k2 == k) {
                dedup.push((k, v));
            }
        }
        let mut encoded: Vec<String> = dedup.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
        encoded.sort_by(|a, b| by_name(a).cmp(&by_name(b)));
        let sts = format!("POST\nec2.example:8773\n/\n{}", encoded.join("&"));
        let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(sts.as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
        let mut signed = dedup.clone();
        signed.push(("Signature".into(), sig));
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("ec2.example:8773"));
        let check = |pairs: &[(String, String)]| {
            let params = Params::from_pairs(pairs.to_vec());
            let claim = sigv2::claim(&params)?;
            let req = RequestParts { method: "POST", raw_path: "/", raw_query: "", headers: &headers, body: b"", params: &params };
            sigv2::verify(&claim, &req, &secret)
        };
        prop_assert!(check(&signed).is_ok());
        let i = flip.index(dedup.len());
        let mut tampered = signed.clone();
        tampered[i].1.push('x');
        prop_assert!(check(&tampered).is_err());
        prop_assert!(check(&signed).is_ok());
    }

    /// SigV4 (header form, as the AWS SDKs sign): the body signed verifies,
    /// any other body or path does not.
    #[test]
    fn sigv4_verifies_exactly_what_was_signed(pairs in params(), secret in "[A-Za-z0-9/+]{8,40}",
                                              path in "(/[A-Za-z0-9._~-]{1,8}){0,3}",
                                              extra in "[a-z]{1,5}") {
        let body = form(&pairs);
        let amz_date = "20240101T000000Z";
        let scope = "20240101/corral-1/ec2/aws4_request";
        let body_hash = hex::encode(Sha256::digest(body.as_bytes()));
        let canonical_path = if path.is_empty() { "/".to_string() } else {
            // Dot segments and empty segments are resolved (as botocore
            // does before signing); keep to paths without them.
            path.clone()
        };
        prop_assume!(!path.split('/').any(|s| s == "." || s == ".."));
        prop_assume!(!path.ends_with('/') || path.len() <= 1);
        let canonical = format!(
            "POST\n{canonical_path}\n\nhost:ec2.example\nx-amz-date:{amz_date}\n\nhost;x-amz-date\n{body_hash}"
        );
        let sts = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
        let key = sigv4::signing_key(&secret, "20240101", "corral-1", "ec2");
        let mut m = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        m.update(sts.as_bytes());
        let sig = hex::encode(m.finalize().into_bytes());
        let auth = format!("AWS4-HMAC-SHA256 Credential=AKIAFUZZFUZZFUZZFUZZ/{scope}, SignedHeaders=host;x-amz-date, Signature={sig}");
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("ec2.example"));
        headers.insert("x-amz-date", HeaderValue::from_static("20240101T000000Z"));
        let claim = sigv4::claim_from_header(&auth, Some(amz_date)).unwrap();
        let params = Params::parse(body.as_bytes());
        let check = |path: &str, body: &[u8]| {
            let req = RequestParts { method: "POST", raw_path: path, raw_query: "", headers: &headers, body, params: &params };
            sigv4::verify(&claim, &req, &secret)
        };
        prop_assert!(check(&canonical_path, body.as_bytes()).is_ok(), "{canonical}");
        let mut other = body.clone().into_bytes();
        other.extend_from_slice(extra.as_bytes());
        prop_assert!(check(&canonical_path, &other).is_err());
        let longer = format!("{canonical_path}/{extra}");
        prop_assert!(check(&longer, body.as_bytes()).is_err());
        let wrong_secret = format!("{secret}x");
        let req = RequestParts {
            method: "POST",
            raw_path: &canonical_path,
            raw_query: "",
            headers: &headers,
            body: body.as_bytes(),
            params: &params,
        };
        prop_assert!(sigv4::verify(&claim, &req, &wrong_secret).is_err());
    }
}

/// A form body signed with SigV2 for `keys`, now.
fn signed_body(keys: &Keys, host: &str, pairs: &[(String, String)]) -> String {
    let mut all: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if !all.iter().any(|(k2, _)| k2 == k) {
            all.push((k.clone(), v.clone()));
        }
    }
    all.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "AWSAccessKeyId"
                | "SignatureVersion"
                | "SignatureMethod"
                | "Timestamp"
                | "Version"
                | "Signature"
                | "Expires"
                | "X-Amz-Algorithm"
        )
    });
    all.push(("AWSAccessKeyId".into(), keys.id.clone()));
    all.push(("SignatureVersion".into(), "2".into()));
    all.push(("SignatureMethod".into(), "HmacSHA256".into()));
    all.push((
        "Timestamp".into(),
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ));
    all.push(("Version".into(), "2016-11-15".into()));
    let mut encoded: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    encoded.sort_by(|a, b| by_name(a).cmp(&by_name(b)));
    let query = encoded.join("&");
    let sts = format!("POST\n{}\n/\n{query}", host.to_lowercase());
    let mut m = Hmac::<Sha256>::new_from_slice(keys.secret.as_bytes()).unwrap();
    m.update(sts.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    format!("{query}&Signature={}", enc(&sig))
}

const ACTIONS: &[&str] = &[
    "DescribeInstances",
    "RunInstances",
    "TerminateInstances",
    "StopInstances",
    "StartInstances",
    "RebootInstances",
    "GetConsoleOutput",
    "DescribeInstanceStatus",
    "DescribeInstanceAttribute",
    "ModifyInstanceAttribute",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "CreateVolume",
    "DescribeVolumes",
    "DeleteVolume",
    "AttachVolume",
    "DetachVolume",
    "CreateSnapshot",
    "DescribeSnapshots",
    "DescribeImages",
    "RegisterImage",
    "ModifyImageAttribute",
    "CreateKeyPair",
    "ImportKeyPair",
    "DescribeKeyPairs",
    "CreateSecurityGroup",
    "AuthorizeSecurityGroupIngress",
    "DescribeSecurityGroups",
    "AllocateAddress",
    "AssociateAddress",
    "DescribeAddresses",
    "CreateVpc",
    "CreateSubnet",
    "DescribeSubnets",
    "DescribeInstanceTypes",
    "NoSuchAction",
];

/// Whole signed requests with arbitrary parameters, over HTTP: a 4xx or a
/// 2xx, never a 5xx, whatever the action is given.
#[test]
fn signed_requests_with_arbitrary_parameters_never_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, keys) = rt.block_on(async {
        let s = start().await;
        seed_project(&s.store, "demo").await;
        let keys = add_user(&s.store, "fuzz", Some("demo")).await;
        (s, keys)
    });
    let ca = reqwest::Certificate::from_pem_bundle(server.ca_pem.as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only(ca)
        .build()
        .unwrap();
    let host = server.addr.to_string();
    let url = format!("{}/", server.url);
    let strategy = (
        proptest::sample::select(ACTIONS),
        proptest::collection::vec(
            (
                prop_oneof![
                    param_name(),
                    proptest::sample::select(
                        &[
                            "ImageId",
                            "MinCount",
                            "MaxCount",
                            "InstanceId.1",
                            "InstanceType",
                            "UserData",
                            "KeyName",
                            "GroupName",
                            "GroupDescription",
                            "Size",
                            "VolumeId",
                            "Device",
                            "ResourceId.1",
                            "Tag.1.Key",
                            "Tag.1.Value",
                            "Filter.1.Name",
                            "Filter.1.Value.1",
                            "MaxResults",
                            "NextToken",
                            "PublicKeyMaterial",
                            "CidrBlock",
                            "AllocationId",
                            "Attribute",
                            "BlockDeviceMapping.1.DeviceName",
                            "BlockDeviceMapping.1.Ebs.VolumeSize",
                            "ClientToken",
                            "DryRun",
                            "Description",
                            "Name",
                        ][..]
                    )
                    .prop_map(str::to_string),
                ],
                param_value(),
            ),
            0..8,
        ),
    );
    let mut runner = proptest::test_runner::TestRunner::new(cases(512));
    runner
        .run(&strategy, |(action, mut pairs)| {
            pairs.insert(0, ("Action".to_string(), action.to_string()));
            let body = signed_body(&keys, &host, &pairs);
            let (code, text) = rt.block_on(async {
                let r = http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.text().await.unwrap())
            });
            prop_assert!(!code.is_server_error(), "{action} {pairs:?}: {code} {text}");
            prop_assert!(
                code != reqwest::StatusCode::UNAUTHORIZED,
                "{pairs:?}: {text}"
            );
            Ok(())
        })
        .unwrap();
}
