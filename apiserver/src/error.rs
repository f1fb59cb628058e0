//! API errors, answered as a Kubernetes-style `Status` object.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_api_types::FieldErrors;
use corral_registry::quota::QuotaError;
use corral_registry::RegistryError;
use corral_runtime::error_chain;
use corral_store::StoreError;

/// One field problem in a 422 answer (the wire type).
pub use corral_api_types::wire::StatusCause as Cause;
/// `details` of a Status answer (the wire type).
pub use corral_api_types::wire::StatusDetails as Details;

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Details>>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// Field problems listed in one answer; more are counted, not listed.
pub const MAX_CAUSES: usize = 20;
/// Longest field path or reason echoed back.
const MAX_CAUSE_TEXT: usize = 1024;

fn clip(text: &str) -> String {
    if text.len() <= MAX_CAUSE_TEXT {
        return text.to_string();
    }
    let mut end = MAX_CAUSE_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// 422 listing every field problem.
    pub fn invalid(kind: &str, name: &str, errors: &FieldErrors) -> ApiError {
        let all = &errors.0;
        let mut causes: Vec<Cause> = all
            .iter()
            .take(MAX_CAUSES)
            .map(|e| Cause {
                field: clip(&e.path),
                message: clip(&e.reason),
            })
            .collect();
        if all.len() > MAX_CAUSES {
            causes.push(Cause {
                field: String::new(),
                message: format!("{} more errors not listed", all.len() - MAX_CAUSES),
            });
        }
        let name = clip(name);
        let what = if name.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} {name:?}")
        };
        // The message names the first problem; details.causes list them
        // (at most MAX_CAUSES), each once.
        let first = all
            .first()
            .map(|e| {
                if e.path.is_empty() {
                    clip(&e.reason)
                } else {
                    format!("{}: {}", clip(&e.path), clip(&e.reason))
                }
            })
            .unwrap_or_default();
        let message = match all.len() {
            0 | 1 => format!("{what} is invalid: {first}"),
            n => format!("{what} is invalid: {first} (and {} more)", n - 1),
        };
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message,
            details: Some(Box::new(Details {
                kind: kind.to_string(),
                name: name.to_string(),
                causes,
            })),
            retry_after: None,
        }
    }

    /// 422 for one field.
    pub fn invalid_field(kind: &str, name: &str, field: &str, message: &str) -> ApiError {
        let mut errors = FieldErrors::default();
        errors.push(field, message);
        Self::invalid(kind, name, &errors)
    }

    /// 403 for one field whose value this caller may not use.
    pub fn forbidden_field(kind: &str, name: &str, field: &str, message: &str) -> ApiError {
        let mut e = Self::invalid_field(kind, name, field, message);
        e.code = StatusCode::FORBIDDEN;
        e.reason = "Forbidden";
        let what = if name.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} {name:?}")
        };
        e.message = format!("{what} is refused: {field}: {message}");
        e
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::AlreadyExists { key } => ApiError::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} already exists", display_key(key)),
            ),
            StoreError::NotFound { key } => {
                ApiError::not_found(format!("{} not found", display_key(key)))
            }
            StoreError::Conflict { key, .. } => ApiError::conflict(format!(
                "{} was modified since resourceVersion you sent: {e}; read it again and retry",
                display_key(key)
            )),
            StoreError::Expired { .. } => ApiError::gone(e.to_string()),
            StoreError::NoSpace(why) => {
                tracing::error!(%why, "store out of space");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "InsufficientStorage",
                    format!("the store is out of space; writes resume once space is freed ({why})"),
                )
            }
            StoreError::TooLarge { size, limit, .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!(
                    "the object would be {size} bytes stored; this server's store keeps objects up to {limit} bytes"
                ),
            ),
            StoreError::InvalidContinueToken | StoreError::InvalidArgument(_) => {
                ApiError::bad_request(e.to_string())
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %error_chain(&e), "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the store is unavailable; retry later",
                )
            }
            StoreError::Backend(_)
            | StoreError::Corrupt { .. }
            | StoreError::Encode(_)
            | StoreError::Secret { .. } => {
                tracing::error!(error = %error_chain(&e), "store error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    /// A registry refusal in Kubernetes' words: 422 listing the fields,
    /// 404, 409 for a stale or contended write, 400 for a malformed
    /// resourceVersion, 403 over quota, and the store's own answers.
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::Invalid { kind, name, errors } => {
                ApiError::invalid(kind, &name, &errors)
            }
            e @ RegistryError::NotFound { .. } => ApiError::not_found(e.to_string()),
            e @ (RegistryError::Stale { .. } | RegistryError::Contended { .. }) => {
                ApiError::conflict(e.to_string())
            }
            RegistryError::BadResourceVersion(e) => ApiError::bad_request(e.to_string()),
            RegistryError::Quota(e) => e.into(),
            RegistryError::Store(e) => e.into(),
        }
    }
}

impl From<QuotaError> for ApiError {
    /// Over quota is 403 Forbidden, as Kubernetes answers an exceeded
    /// ResourceQuota; the cause names the quota.
    fn from(e: QuotaError) -> ApiError {
        match e {
            QuotaError::Exceeded {
                ref plural,
                ref name,
                ref exceeded,
                ..
            } => ApiError {
                code: StatusCode::FORBIDDEN,
                reason: "Forbidden",
                message: e.to_string(),
                details: Some(Box::new(Details {
                    kind: plural.to_string(),
                    name: name.clone(),
                    causes: vec![Cause {
                        field: format!("quota.{}", exceeded.resource),
                        message: format!(
                            "QuotaExceeded: requested {}, used {}, limit {}",
                            exceeded.requested, exceeded.used, exceeded.limit
                        ),
                    }],
                })),
                retry_after: None,
            },
            QuotaError::Store(e) => e.into(),
        }
    }
}

/// `/corral/instances/demo/web` -> `instances "demo/web"`.
fn display_key(key: &str) -> String {
    let rest = key.strip_prefix(corral_store::ROOT).unwrap_or(key);
    match rest.split_once('/') {
        Some((plural, name)) => {
            let name = name.strip_prefix("_/").unwrap_or(name);
            format!("{plural} {name:?}")
        }
        None => rest.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = corral_api_types::wire::Status::failure(
            self.code.as_u16(),
            self.reason,
            &self.message,
            self.details.map(|d| *d),
        );
        let mut resp = (self.code, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object past the store's own limit (no valid object of a built-in
    /// kind reaches it: their fields are bounded far below) is 413 naming
    /// the limit, never a 500.
    #[test]
    fn an_object_too_large_for_the_store_is_413_naming_the_limit() {
        let e = ApiError::from(StoreError::TooLarge {
            key: "/corral/securitygroups/p/big".into(),
            size: 2_000_123,
            limit: 1_500_000,
        });
        assert_eq!(e.code, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.reason, "RequestEntityTooLarge");
        assert!(
            e.message.contains(
                "2000123 bytes stored; this server's store keeps objects up to 1500000 bytes"
            ),
            "{}",
            e.message
        );
    }
}
