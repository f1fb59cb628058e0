//! Who is calling: the request's signature (SigV4 or SigV2) is checked
//! against the secret of the `AccessKey` it names; the key's `User` gives
//! the role and project. A member acts in its project, an admin in
//! `default`; node agents' keys are refused.
//!
//! Keys and users are read from watched copies
//! ([`corral_runtime::credentials`]), like the native API's tokens: a
//! deleted or disabled key or user stops working as soon as this server's
//! watch delivers the change. Secrets are never logged.

pub mod sigv2;
pub mod sigv4;

use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use corral_api_types::auth::Role;
use corral_api_types::ec2::access_key_name;
use corral_runtime::credentials::Credentials;
use corral_store::ResourceStore;

use crate::error::{Ec2Error, Result};
use crate::query::Params;

/// Largest accepted clock difference between client and server.
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
/// The project an admin's EC2 calls act in.
pub const ADMIN_PROJECT: &str = "default";

/// The parts of an HTTP request a signature covers.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// Path as sent on the wire (still percent-encoded).
    pub raw_path: &'a str,
    /// Query string as sent on the wire.
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Query and form parameters, merged.
    pub params: &'a Params,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub project: String,
    pub role: Role,
    pub access_key_id: String,
}

#[derive(Clone)]
struct KeyInfo {
    secret: String,
    user: String,
    role: Role,
    project: String,
}

/// RFC 3986 unreserved characters stay, everything else is `%XX`.
pub fn aws_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn credentials_failure() -> Ec2Error {
    Ec2Error::auth_failure("AWS was not able to validate the provided access credentials")
}

fn check_skew(time: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if (now - time).num_seconds().abs() > MAX_SKEW_SECONDS {
        return Err(Ec2Error::auth_failure(format!(
            "Request has expired: its time {} differs from the server's {} by more than 15 minutes",
            time.format("%Y-%m-%dT%H:%M:%SZ"),
            now.format("%Y-%m-%dT%H:%M:%SZ")
        )));
    }
    Ok(())
}

enum Claim {
    V4(sigv4::V4Claim),
    V2(sigv2::V2Claim),
}

/// Which scheme the request uses, and what it claims.
fn claim_of(req: &RequestParts<'_>) -> Result<Claim> {
    if let Some(h) = req.headers.get("authorization") {
        let h = h.to_str().map_err(|_| credentials_failure())?;
        let date = req.headers.get("x-amz-date").and_then(|d| d.to_str().ok());
        return sigv4::claim_from_header(h, date).map(Claim::V4);
    }
    if req.params.get("X-Amz-Algorithm").is_some() {
        // Presigned: only the query string counts (a body would be unsigned).
        let q = Params::parse(req.raw_query.as_bytes());
        if !req.body.is_empty() {
            return Err(Ec2Error::auth_failure(
                "a presigned request must not carry a body",
            ));
        }
        return sigv4::claim_from_query(|n| q.get(n).map(str::to_string)).map(Claim::V4);
    }
    if req.params.get("Signature").is_some() || req.params.get("AWSAccessKeyId").is_some() {
        return sigv2::claim(req.params).map(Claim::V2);
    }
    Err(Ec2Error::auth_failure(
        "The request is not signed: send a SigV4 Authorization header, a presigned URL or a SigV2 signature",
    ))
}

/// Verifies signatures against access keys in the store.
pub struct Authenticator {
    credentials: Arc<Credentials>,
}

impl Authenticator {
    pub fn new(store: ResourceStore) -> Authenticator {
        Authenticator {
            credentials: Credentials::spawn(store),
        }
    }

    /// The caller of `req`, or AuthFailure; nothing is written either way.
    pub async fn authenticate(&self, req: &RequestParts<'_>, now: DateTime<Utc>) -> Result<Caller> {
        let claim = claim_of(req)?;
        let key_id = match &claim {
            Claim::V4(c) => c.access_key_id.clone(),
            Claim::V2(c) => c.access_key_id.clone(),
        };
        if !(16..=128).contains(&key_id.len()) || !key_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(credentials_failure());
        }
        match &claim {
            Claim::V4(c) => {
                check_skew(c.time, now)?;
                if let Some(exp) = c.expires {
                    if (now - c.time).num_seconds() > exp {
                        return Err(Ec2Error::auth_failure("Request has expired"));
                    }
                }
            }
            Claim::V2(c) => {
                if let Some(t) = c.timestamp {
                    check_skew(t, now)?;
                }
                if let Some(e) = c.expires {
                    if e < now {
                        return Err(Ec2Error::auth_failure("Request has expired"));
                    }
                    // A signature good until 2099 is a password: Expires
                    // gets the window a Timestamp has (a SigV4 request's
                    // date is held to the same one).
                    if (e - now).num_seconds() > MAX_SKEW_SECONDS {
                        return Err(Ec2Error::auth_failure(format!(
                            "Expires is more than {} minutes in the future",
                            MAX_SKEW_SECONDS / 60
                        )));
                    }
                }
            }
        }
        let info = self.key(&key_id).await?.ok_or_else(credentials_failure)?;
        match &claim {
            Claim::V4(c) => sigv4::verify(c, req, &info.secret)?,
            Claim::V2(c) => sigv2::verify(c, req, &info.secret)?,
        }
        let project = match info.role {
            Role::Admin => ADMIN_PROJECT.to_string(),
            r if r.is_project_role() && !info.project.is_empty() => info.project.clone(),
            _ => {
                return Err(Ec2Error::auth_failure(
                    "these credentials may not use the EC2 API",
                ))
            }
        };
        Ok(Caller {
            user: info.user,
            project,
            role: info.role,
            access_key_id: key_id,
        })
    }

    async fn key(&self, id: &str) -> Result<Option<KeyInfo>> {
        let found = self
            .credentials
            .access_key(&access_key_name(id))
            .await
            .map_err(Ec2Error::from)?;
        Ok(found.map(|(key, user)| KeyInfo {
            secret: key.spec.secret_access_key.clone(),
            user: user.metadata.name.clone(),
            role: user.spec.role,
            project: user.spec.project.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_comparison() {
        assert_eq!(aws_encode("a b+c/~_.-é"), "a%20b%2Bc%2F~_.-%C3%A9");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn skew() {
        let now = Utc::now();
        assert!(check_skew(now - chrono::Duration::minutes(14), now).is_ok());
        assert!(check_skew(now + chrono::Duration::minutes(16), now).is_err());
        assert!(check_skew(now - chrono::Duration::minutes(16), now).is_err());
    }
}
