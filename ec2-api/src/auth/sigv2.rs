//! AWS Signature Version 2 (`SignatureVersion=2`, HmacSHA256 or HmacSHA1),
//! as euca2ools and boto2 sign: the string to sign is
//! `METHOD\nhost\npath\n<sorted, encoded parameters without Signature>`.

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};

use super::{aws_encode, constant_time_eq, RequestParts};
use crate::error::{Ec2Error, Result};
use crate::query::Params;

fn bad(msg: &str) -> Ec2Error {
    Ec2Error::auth_failure(format!(
        "AWS was not able to validate the provided access credentials: {msg}"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    HmacSha256,
    HmacSha1,
}

/// What a SigV2 request claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Claim {
    pub access_key_id: String,
    pub method: Method,
    pub signature: String,
    /// `Timestamp` (checked for skew) or `Expires` (must not have passed).
    pub timestamp: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
}

/// ISO 8601 as the tools write it: with or without fraction and zone.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.fZ",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%SZ",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Some(n.and_utc());
        }
    }
    None
}

pub fn claim(params: &Params) -> Result<V2Claim> {
    if params.get("SignatureVersion") != Some("2") {
        return Err(bad("only SignatureVersion 2 and 4 are supported"));
    }
    let method = match params.get("SignatureMethod") {
        Some("HmacSHA256") => Method::HmacSha256,
        Some("HmacSHA1") => Method::HmacSha1,
        _ => return Err(bad("SignatureMethod must be HmacSHA256 or HmacSHA1")),
    };
    let access_key_id = params
        .get_nonempty("AWSAccessKeyId")
        .ok_or_else(|| bad("missing AWSAccessKeyId"))?
        .to_string();
    let signature = params
        .get_nonempty("Signature")
        .ok_or_else(|| bad("missing Signature"))?
        .to_string();
    let timestamp = params.get("Timestamp").map(parse_time);
    let expires = params.get("Expires").map(parse_time);
    let (timestamp, expires) = match (timestamp, expires) {
        (Some(Some(t)), None) => (Some(t), None),
        (None, Some(Some(e))) => (None, Some(e)),
        (Some(_), Some(_)) => return Err(bad("give Timestamp or Expires, not both")),
        _ => return Err(bad("a valid Timestamp or Expires is required")),
    };
    Ok(V2Claim {
        access_key_id,
        method,
        signature,
        timestamp,
        expires,
    })
}

/// The string a SigV2 signature covers.
pub fn string_to_sign(method: &str, host: &str, path: &str, params: &Params) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| (aws_encode(k), aws_encode(v)))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = if path.is_empty() { "/" } else { path };
    format!("{method}\n{}\n{path}\n{query}", host.to_ascii_lowercase())
}

pub fn sign(method: Method, secret: &str, sts: &str) -> String {
    let bytes = match method {
        Method::HmacSha256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
            m.update(sts.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Method::HmacSha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key");
            m.update(sts.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn verify(claim: &V2Claim, req: &RequestParts<'_>, secret: &str) -> Result<()> {
    let host = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| bad("missing Host header"))?;
    let sts = string_to_sign(req.method, host, req.raw_path, req.params);
    let expected = sign(claim.method, secret, &sts);
    if constant_time_eq(expected.as_bytes(), claim.signature.as_bytes()) {
        Ok(())
    } else {
        Err(bad("the request signature does not match"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of AWS's SigV2 documentation (SimpleDB), which
    /// fixes the encoding and ordering rules.
    #[test]
    fn matches_aws_documentation_example() {
        let params = Params::parse(
            b"Action=DescribeJobFlows&Version=2009-03-31&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&SignatureVersion=2&SignatureMethod=HmacSHA256&Timestamp=2011-10-03T15%3A19%3A30",
        );
        let sts = string_to_sign("GET", "elasticmapreduce.amazonaws.com", "/", &params);
        assert_eq!(
            sts,
            "GET\nelasticmapreduce.amazonaws.com\n/\nAWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Action=DescribeJobFlows&SignatureMethod=HmacSHA256&SignatureVersion=2&Timestamp=2011-10-03T15%3A19%3A30&Version=2009-03-31"
        );
        assert_eq!(
            sign(
                Method::HmacSha256,
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                &sts
            ),
            "i91nKc4PWAt0JJIdXwz9HxZCJDdiy6cf/Mj6vPxyYIs="
        );
    }

    #[test]
    fn claims() {
        let ok = Params::parse(b"SignatureVersion=2&SignatureMethod=HmacSHA1&AWSAccessKeyId=A&Signature=s&Timestamp=2024-01-01T00:00:00Z");
        assert_eq!(claim(&ok).unwrap().method, Method::HmacSha1);
        for bad in [
            "SignatureVersion=1&SignatureMethod=HmacSHA1&AWSAccessKeyId=A&Signature=s&Timestamp=2024-01-01T00:00:00Z",
            "SignatureVersion=2&SignatureMethod=HmacMD5&AWSAccessKeyId=A&Signature=s&Timestamp=2024-01-01T00:00:00Z",
            "SignatureVersion=2&SignatureMethod=HmacSHA1&Signature=s&Timestamp=2024-01-01T00:00:00Z",
            "SignatureVersion=2&SignatureMethod=HmacSHA1&AWSAccessKeyId=A&Timestamp=2024-01-01T00:00:00Z",
            "SignatureVersion=2&SignatureMethod=HmacSHA1&AWSAccessKeyId=A&Signature=s&Timestamp=yesterday",
            "SignatureVersion=2&SignatureMethod=HmacSHA1&AWSAccessKeyId=A&Signature=s",
        ] {
            assert_eq!(claim(&Params::parse(bad.as_bytes())).unwrap_err().code, "AuthFailure", "{bad}");
        }
        assert!(parse_time("2024-01-01T00:00:00.123Z").is_some());
        assert!(parse_time("2024-01-01T00:00:00").is_some());
    }
}
