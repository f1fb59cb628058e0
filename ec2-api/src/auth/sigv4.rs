//! AWS Signature Version 4, as awscli, boto3, the AWS SDKs and terraform
//! sign: the `Authorization: AWS4-HMAC-SHA256 ...` header form and the
//! presigned query-string form (`X-Amz-Algorithm=...`).

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::{aws_encode, constant_time_eq, RequestParts};
use crate::error::{Ec2Error, Result};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

type HmacSha256 = Hmac<Sha256>;

/// What a SigV4 request claims, before it is checked against a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Claim {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `X-Amz-Date`: `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    pub time: DateTime<Utc>,
    /// Presigned: the query string carries the signature.
    pub presigned: bool,
    /// Presigned: seconds the signature stays valid.
    pub expires: Option<i64>,
}

fn bad(msg: &str) -> Ec2Error {
    Ec2Error::auth_failure(format!(
        "AWS was not able to validate the provided access credentials: {msg}"
    ))
}

fn parse_amz_date(s: &str) -> Result<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .map(|n| n.and_utc())
        .map_err(|_| bad("X-Amz-Date must look like 20240101T000000Z"))
}

fn parse_credential(cred: &str) -> Result<(String, String, String, String)> {
    let parts: Vec<&str> = cred.split('/').collect();
    match parts.as_slice() {
        [id, date, region, service, "aws4_request"]
            if !id.is_empty() && date.len() == 8 && !region.is_empty() && !service.is_empty() =>
        {
            Ok((
                id.to_string(),
                date.to_string(),
                region.to_string(),
                service.to_string(),
            ))
        }
        _ => Err(bad(
            "malformed Credential (want <key>/<date>/<region>/<service>/aws4_request)",
        )),
    }
}

/// Reads the claim from the Authorization header.
pub fn claim_from_header(header: &str, amz_date: Option<&str>) -> Result<V4Claim> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("unsupported Authorization scheme"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let (cred, signed, sig) = match (cred, signed, sig) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => {
            return Err(bad(
                "Authorization needs Credential, SignedHeaders and Signature",
            ))
        }
    };
    let amz_date = amz_date.ok_or_else(|| bad("missing X-Amz-Date header"))?;
    let (access_key_id, date, region, service) = parse_credential(cred)?;
    let time = parse_amz_date(amz_date)?;
    Ok(V4Claim {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
        signature: sig.to_string(),
        amz_date: amz_date.to_string(),
        time,
        presigned: false,
        expires: None,
    })
}

/// Reads the claim from a presigned query string's parameters.
pub fn claim_from_query(get: impl Fn(&str) -> Option<String>) -> Result<V4Claim> {
    if get("X-Amz-Algorithm").as_deref() != Some(ALGORITHM) {
        return Err(bad("unsupported X-Amz-Algorithm"));
    }
    let need = |n: &str| get(n).ok_or_else(|| bad(&format!("missing {n}")));
    let cred = need("X-Amz-Credential")?;
    let amz_date = need("X-Amz-Date")?;
    let (access_key_id, date, region, service) = parse_credential(&cred)?;
    let expires = need("X-Amz-Expires")?
        .parse::<i64>()
        .ok()
        .filter(|e| (1..=604_800).contains(e))
        .ok_or_else(|| bad("X-Amz-Expires must be 1 to 604800 seconds"))?;
    Ok(V4Claim {
        access_key_id,
        date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?
            .split(';')
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        signature: need("X-Amz-Signature")?,
        time: parse_amz_date(&amz_date)?,
        amz_date,
        presigned: true,
        expires: Some(expires),
    })
}

/// The path as SigV4 canonicalises it for non-S3 services: dot segments
/// resolved, then each segment URI-encoded once more.
fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in raw_path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| aws_encode(s))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if raw_path.len() > 1 && raw_path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn canonical_query(raw_query: &str, skip_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .map(|(k, v)| (aws_encode(&k), aws_encode(&v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_header_value(values: &[&[u8]]) -> String {
    values
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The SigV4 signing key for a secret and scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn signature_for(claim: &V4Claim, secret: &str, canonical_request: &str) -> String {
    let scope = format!(
        "{}/{}/{}/aws4_request",
        claim.date, claim.region, claim.service
    );
    let sts = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        claim.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(secret, &claim.date, &claim.region, &claim.service);
    hex::encode(hmac(&key, sts.as_bytes()))
}

/// Signs a form POST to `/` the way awscli does (headers `host` and
/// `x-amz-date`, the body's hash): returns the `Authorization` and
/// `X-Amz-Date` header values. For clients such as `corral bench ec2`.
pub fn sign_form_post(
    access_key_id: &str,
    secret: &str,
    region: &str,
    host: &str,
    body: &str,
    now: DateTime<Utc>,
) -> (String, String) {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let claim = V4Claim {
        access_key_id: access_key_id.to_string(),
        date: amz_date[..8].to_string(),
        region: region.to_string(),
        service: "ec2".to_string(),
        signed_headers: vec!["host".into(), "x-amz-date".into()],
        signature: String::new(),
        amz_date: amz_date.clone(),
        time: now,
        presigned: false,
        expires: None,
    };
    let canonical = format!(
        "POST\n/\n\nhost:{host}\nx-amz-date:{amz_date}\n\nhost;x-amz-date\n{}",
        hex::encode(Sha256::digest(body.as_bytes()))
    );
    let signature = signature_for(&claim, secret, &canonical);
    (
        format!(
            "{ALGORITHM} Credential={access_key_id}/{}/{region}/ec2/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={signature}",
            claim.date
        ),
        amz_date,
    )
}

/// Checks the claim's signature over `req` with `secret`.
pub fn verify(claim: &V4Claim, req: &RequestParts<'_>, secret: &str) -> Result<()> {
    if !claim.amz_date.starts_with(&claim.date) {
        return Err(bad("the Credential date does not match X-Amz-Date"));
    }
    if !claim.signed_headers.iter().any(|h| h == "host") {
        return Err(bad("the Host header must be signed"));
    }
    let mut headers = String::new();
    for name in &claim.signed_headers {
        let values: Vec<&[u8]> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if values.is_empty() {
            return Err(bad(&format!("signed header {name:?} is missing")));
        }
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&canonical_header_value(&values));
        headers.push('\n');
    }
    let body_hash = hex::encode(Sha256::digest(req.body));
    // The header form signs the body's hash. A presigned URL carries no
    // body worth signing: accept UNSIGNED-PAYLOAD only when it is empty.
    let mut payloads = vec![body_hash];
    if claim.presigned && req.body.is_empty() {
        payloads.push(UNSIGNED_PAYLOAD.to_string());
    }
    if let Some(declared) = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        if declared != payloads[0] && !(declared == UNSIGNED_PAYLOAD && req.body.is_empty()) {
            return Err(bad("x-amz-content-sha256 does not match the body"));
        }
    }
    let prefix = format!(
        "{}\n{}\n{}\n{headers}\n{}\n",
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query, claim.presigned),
        claim.signed_headers.join(";"),
    );
    for payload in payloads {
        let expected = signature_for(claim, secret, &format!("{prefix}{payload}"));
        if constant_time_eq(expected.as_bytes(), claim.signature.as_bytes()) {
            return Ok(());
        }
    }
    Err(bad("the request signature does not match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_forms() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/services/Cloud/"), "/services/Cloud/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/a%20b"), "/a%2520b");
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(
            canonical_query("b=2&a=x y&X-Amz-Signature=s&a=%2B", true),
            "a=%2B&a=x%20y&b=2"
        );
    }

    #[test]
    fn form_posts_signed_here_verify() {
        let now = Utc::now();
        let body = "Action=DescribeInstances&Version=2016-11-15";
        let (auth, date) = sign_form_post("AKIDEXAMPLE", "s3cret", "corral-1", "h:8773", body, now);
        let claim = claim_from_header(&auth, Some(&date)).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("host", "h:8773".parse().unwrap());
        headers.insert("x-amz-date", date.parse().unwrap());
        let params = crate::query::Params::parse(body.as_bytes());
        let req = RequestParts {
            method: "POST",
            raw_path: "/",
            raw_query: "",
            headers: &headers,
            body: body.as_bytes(),
            params: &params,
        };
        verify(&claim, &req, "s3cret").unwrap();
        assert!(verify(&claim, &req, "other").is_err());
    }

    /// The signing-key example from AWS's SigV4 documentation.
    #[test]
    fn signing_key_matches_aws_documentation() {
        let k = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn malformed_claims_are_auth_failures() {
        for h in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=x",
            "Basic abc",
        ] {
            let e = claim_from_header(h, Some("20240101T000000Z")).unwrap_err();
            assert_eq!(e.code, "AuthFailure", "{h}");
        }
        let ok = "AWS4-HMAC-SHA256 Credential=AKIA/20240101/r/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab";
        assert!(claim_from_header(ok, Some("2024-01-01")).is_err());
        assert!(claim_from_header(ok, None).is_err());
        let c = claim_from_header(ok, Some("20240101T000000Z")).unwrap();
        assert_eq!(c.signed_headers, ["host", "x-amz-date"]);
    }
}
