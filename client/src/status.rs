//! What a failed request says: [`ApiStatus`], the API's `Status` error
//! body in typed form (with the rendering of a 422's field problems),
//! and [`ClientError`], every way a request can fail, in words that say
//! what to check (unreachable server, untrusted CA, ...).
//!
//! It must not send anything: [`crate::Client`] sends, this only names
//! what came back.

use std::fmt;

use reqwest::StatusCode;

use corral_api_types::wire::Status as StatusBody;
pub use corral_api_types::wire::{StatusCause as Cause, StatusDetails};

/// A non-2xx answer of the API, from its `Status` body.
#[derive(Debug, Clone)]
pub struct ApiStatus {
    /// The HTTP status code.
    pub code: u16,
    /// `NotFound`, `Invalid`, `Forbidden`, ...
    pub reason: String,
    pub message: String,
    pub details: Option<StatusDetails>,
}

impl ApiStatus {
    /// Builds the error from an answer's status and body; a body that is not
    /// a `Status` object becomes the message as it is.
    pub fn from_body(status: StatusCode, body: &[u8]) -> ApiStatus {
        let canonical = status
            .canonical_reason()
            .unwrap_or("Error")
            .replace(' ', "");
        match serde_json::from_slice::<StatusBody>(body) {
            Ok(b) if !b.message.is_empty() || !b.reason.is_empty() => ApiStatus {
                code: if b.code == 0 { status.as_u16() } else { b.code },
                reason: if b.reason.is_empty() {
                    canonical
                } else {
                    b.reason
                },
                message: b.message,
                details: b.details,
            },
            _ => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                ApiStatus {
                    code: status.as_u16(),
                    message: if text.is_empty() {
                        format!("the server answered {status}")
                    } else {
                        format!("the server answered {status}: {text}")
                    },
                    reason: canonical,
                    details: None,
                }
            }
        }
    }

    /// The field problems of a 422 answer (empty otherwise).
    pub fn causes(&self) -> &[Cause] {
        self.details
            .as_ref()
            .map(|d| d.causes.as_slice())
            .unwrap_or_default()
    }

    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    /// 410: the resourceVersion was compacted; relist.
    pub fn is_expired(&self) -> bool {
        self.code == 410 || self.reason == "Expired"
    }
}

impl fmt::Display for ApiStatus {
    /// `Instance "web" is invalid:` followed by one indented line per field
    /// problem for 422 answers; the server's message otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.details {
            Some(d) if !d.causes.is_empty() => {
                let what = match (d.kind.as_str(), d.name.as_str()) {
                    ("", "") => "the object".to_string(),
                    (kind, "") => kind.to_string(),
                    ("", name) => format!("{name:?}"),
                    (kind, name) => format!("{kind} {name:?}"),
                };
                write!(f, "{what} is invalid:")?;
                for c in &d.causes {
                    if c.field.is_empty() {
                        write!(f, "\n  {}", c.message)?;
                    } else {
                        write!(f, "\n  {}: {}", c.field, c.message)?;
                    }
                }
                Ok(())
            }
            _ => f.write_str(&self.message),
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status (boxed: it is the big
    /// one, and errors travel by value).
    Api(Box<ApiStatus>),
    /// Nothing listens at the server's address.
    Unreachable { url: String },
    /// The TLS handshake failed: most often a certificate this client
    /// does not trust (wrong CA) or a plain-HTTP server.
    Tls { url: String, reason: String },
    /// Any other transport problem.
    Transport(String),
    /// The client could not be set up (a bad URL or CA).
    Config(String),
    /// The answer was not the JSON we expected.
    Decode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Api(s) => s.fmt(f),
            ClientError::Unreachable { url } => write!(
                f,
                "cannot reach the Corral API at {url} (is `corral up` running?)"
            ),
            ClientError::Tls { url, reason } => write!(
                f,
                "TLS with the Corral API at {url} failed, nothing was sent: {reason} \
                 (the client trusts the CA in caFile of its config, or CORRAL_CA_FILE; \
                 `corral up` writes its CA beside the config)"
            ),
            ClientError::Transport(m) => write!(f, "talking to the Corral API: {m}"),
            ClientError::Config(m) => f.write_str(m),
            ClientError::Decode(m) => write!(f, "unexpected answer from the Corral API: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The error for a non-2xx answer with `body`.
    pub(crate) fn answered(status: StatusCode, body: &[u8]) -> ClientError {
        ClientError::Api(Box::new(ApiStatus::from_body(status, body)))
    }

    /// The API status, when the server answered with an error.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            ClientError::Api(s) => Some(&**s),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(ApiStatus::is_not_found)
    }

    /// The HTTP status code, when the server answered with an error.
    pub fn code(&self) -> Option<u16> {
        self.status().map(|s| s.code)
    }
}

/// The rustls error under a failed request, if TLS is what failed.
pub(crate) fn tls_problem(e: &reqwest::Error) -> Option<String> {
    // The connector nests it in io::Errors, whose source() skips the
    // error they wrap: look inside them too.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// A failure reading an answer's body.
pub(crate) fn transport(e: reqwest::Error) -> ClientError {
    ClientError::Transport(root_cause(&e))
}

/// The innermost cause of a reqwest error, for messages.
pub(crate) fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_renders_one_cause_per_line() {
        let body = br#"{"kind":"Status","status":"Failure","code":422,"reason":"Invalid","message":"Instance \"web\" is invalid: a; b","details":{"kind":"Instance","name":"web","causes":[{"field":"spec.nics[0].network","message":"must be a DNS label"},{"field":"spec.cpus","message":"too many"}]}}"#;
        let s = ApiStatus::from_body(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(s.code, 422);
        assert_eq!(s.reason, "Invalid");
        assert_eq!(
            s.to_string(),
            "Instance \"web\" is invalid:\n  spec.nics[0].network: must be a DNS label\n  spec.cpus: too many"
        );
    }

    #[test]
    fn other_statuses_render_their_message() {
        let body = br#"{"kind":"Status","code":404,"reason":"NotFound","message":"instances \"x\" not found"}"#;
        let s = ApiStatus::from_body(StatusCode::NOT_FOUND, body);
        assert!(s.is_not_found());
        assert_eq!(s.to_string(), "instances \"x\" not found");
        let s = ApiStatus::from_body(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(s.code, 502);
        assert_eq!(s.reason, "BadGateway");
        assert!(s.to_string().contains("upstream down"));
    }
}
