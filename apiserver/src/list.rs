//! Query parameters of list and watch requests.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use corral_api_types::selector::{FieldRequirement, FieldSelector, LabelSelector};
use serde_json::Value;

use crate::error::ApiError;

/// Largest page a client may ask for.
pub const MAX_LIMIT: usize = 5000;

#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<i64>,
    pub watch: bool,
    pub heartbeat: Duration,
    /// Only objects with one of these names (empty: any). Set by the
    /// server, never from the query: the projects a tenant may see.
    pub names: Vec<String>,
}

fn flag(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true" | "1" | "yes" | ""))
}

impl ListParams {
    pub fn from_query(q: &HashMap<String, String>) -> Result<ListParams, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let limit = match q.get("limit") {
            None => None,
            Some(l) => match l.parse::<usize>() {
                Ok(0) => None,
                Ok(n) if n <= MAX_LIMIT => Some(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be a number from 0 to {MAX_LIMIT}, got {l:?}"
                    )))
                }
            },
        };
        let resource_version = match q.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(rv) => corral_api_types::ResourceVersion::parse(rv)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
                .map(corral_api_types::ResourceVersion::get),
        };
        let heartbeat = match q.get("heartbeatSeconds") {
            None => Duration::from_secs(10),
            Some(s) => match s.parse::<u64>() {
                Ok(n) if (1..=300).contains(&n) => Duration::from_secs(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "heartbeatSeconds must be 1..300, got {s:?}"
                    )))
                }
            },
        };
        Ok(ListParams {
            labels,
            fields,
            limit,
            continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
            resource_version,
            watch: flag(q.get("watch")),
            heartbeat,
            names: Vec::new(),
        })
    }

    /// Restricts to objects bound to `node` (node agents' lists).
    pub fn restrict_to_node(&mut self, node: &str) {
        self.fields
            .requirements
            .retain(|r| r.path != "status.nodeName");
        self.fields.requirements.push(FieldRequirement {
            path: "status.nodeName".into(),
            value: node.to_string(),
            equal: true,
        });
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>, object: &Value) -> bool {
        self.labels.matches(labels)
            && self.fields.matches(object)
            && (self.names.is_empty()
                || object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| self.names.iter().any(|x| x == n)))
    }

    /// Whether any selector narrows the list.
    pub fn is_filtered(&self) -> bool {
        !self.labels.is_empty() || !self.fields.requirements.is_empty() || !self.names.is_empty()
    }

    /// Same as [`ListParams::matches`] for an object in JSON form only.
    pub fn matches_value(&self, object: &Value) -> bool {
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        self.matches(&labels, object)
    }
}
