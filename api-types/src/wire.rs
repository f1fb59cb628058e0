//! The API's envelopes on the wire (docs/API.md), in one place for the
//! server that writes them and every client that reads them: the
//! `Status` of a failed request with its details and causes, a list's
//! `metadata`, and one line of a watch stream.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One field problem of a 422 (or a refusal naming a field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// `details` of a `Status`: the object concerned and its field problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// The body of every non-2xx answer (Kubernetes' `Status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    /// `Failure`.
    #[serde(default)]
    pub status: String,
    /// The HTTP status code.
    #[serde(default)]
    pub code: u16,
    /// `NotFound`, `Invalid`, `Forbidden`, ...
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

impl Status {
    /// A failure answered with `code`.
    pub fn failure(
        code: u16,
        reason: &str,
        message: &str,
        details: Option<StatusDetails>,
    ) -> Status {
        Status {
            api_version: crate::API_VERSION.to_string(),
            kind: "Status".to_string(),
            status: "Failure".to_string(),
            code,
            reason: reason.to_string(),
            message: message.to_string(),
            details,
        }
    }
}

/// `metadata` of a list: the revision it was read at, and where the next
/// page starts when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub resource_version: String,
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// A list answer: `items` of any kind, and its [`ListMeta`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct List<T = Value> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<T>,
}

/// One line of a watch stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchLine {
    /// `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or `ERROR` (whose
    /// object is a [`Status`]).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub object: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_as_documented() {
        let s = Status::failure(
            422,
            "Invalid",
            "Network \"x\" is invalid: spec.cidr: bad",
            Some(StatusDetails {
                kind: "Network".into(),
                name: "x".into(),
                causes: vec![StatusCause {
                    field: "spec.cidr".into(),
                    message: "bad".into(),
                }],
            }),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["apiVersion"], "corral/v1");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["details"]["causes"][0]["field"], "spec.cidr");
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
        let meta = ListMeta {
            resource_version: "7".into(),
            continue_token: Some("abc".into()),
        };
        let v = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"resourceVersion": "7", "continue": "abc"})
        );
        let line: WatchLine =
            serde_json::from_str(r#"{"type":"ADDED","object":{"metadata":{"name":"a"}}}"#).unwrap();
        assert_eq!(line.kind, "ADDED");
    }
}
