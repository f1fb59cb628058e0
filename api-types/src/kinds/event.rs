//! Event: something that happened to an object, for humans
//! (`corral describe`). Repeats of the same event bump `count`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{
    check_max_chars, check_required, header, impl_validate_update, is_dns_subdomain, NameRule,
};
use crate::{Defaults, FieldErrors, Validate};

crate::resource!(
    /// A record of something that happened to an object.
    Event,
    EventSpec,
    EventStatus,
    "events",
    Project
);

/// Longest event message, characters.
pub const MAX_EVENT_MESSAGE: usize = 1024;

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[default]
    Normal,
    Warning,
}

/// The object an event is about (in the event's project, or cluster-scoped).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    pub involved_object: ObjectReference,
    /// Short UpperCamelCase reason, e.g. `Scheduled`, `FailedAttach`.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `Normal` (default) or `Warning`.
    #[serde(rename = "type", default)]
    pub type_: EventType,
    /// How many times this happened (at least 1).
    #[serde(default)]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<DateTime<Utc>>,
    /// The component that reported it, e.g. `scheduler` or `agent/host-1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// Events have no observed state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventStatus {}

fn is_reason(s: &str) -> bool {
    s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Validate for Event {
    fn validate(&self) -> FieldErrors {
        let mut errs = header(self, NameRule::DnsLabel);
        let s = &self.spec;
        let o = &s.involved_object;
        check_required(
            &mut errs,
            "spec.involvedObject.kind",
            &o.kind,
            |k| crate::KINDS.iter().any(|info| info.kind == k),
            format!("unknown kind {:?}", o.kind),
        );
        check_required(
            &mut errs,
            "spec.involvedObject.name",
            &o.name,
            is_dns_subdomain,
            "must be an object name (lowercase letters, digits, '-' and '.')",
        );
        check_required(
            &mut errs,
            "spec.reason",
            &s.reason,
            is_reason,
            "must be UpperCamelCase letters and digits, at most 128 characters",
        );
        check_max_chars(&mut errs, "spec.message", &s.message, MAX_EVENT_MESSAGE);
        if s.count == 0 {
            errs.push("spec.count", "must be at least 1");
        }
        if let (Some(first), Some(last)) = (s.first_timestamp, s.last_timestamp) {
            if last < first {
                errs.push(
                    "spec.lastTimestamp",
                    "must not be before spec.firstTimestamp",
                );
            }
        }
        errs
    }
}

impl crate::HostRefs for Event {}

impl Defaults for Event {
    /// `count` 1 when unset; `lastTimestamp` = `firstTimestamp` when unset.
    fn apply_defaults(&mut self) {
        if self.spec.count == 0 {
            self.spec.count = 1;
        }
        if self.spec.last_timestamp.is_none() {
            self.spec.last_timestamp = self.spec.first_timestamp;
        }
    }
}

// The involved object is fixed.
impl_validate_update!(Event, "spec.involvedObject" => involved_object);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::testing::round_trip_kind;
    use crate::validate::testing::{assert_errors, assert_valid};
    use crate::Resource;

    #[test]
    fn round_trip_defaults_and_rules() {
        let mut e: Event = round_trip_kind(
            r#"
metadata: {name: web-1-scheduled, project: demo}
spec:
  involvedObject: {kind: Instance, name: web-1, uid: 0a1b}
  reason: Scheduled
  message: bound to host-1
  type: Normal
  firstTimestamp: 2024-05-01T10:00:00Z
  source: scheduler
status: {}
"#,
        );
        assert_errors(&e.validate(), &["spec.count: must be at least 1"]);
        e.apply_defaults();
        assert_eq!(e.spec.count, 1);
        assert_eq!(e.spec.last_timestamp, e.spec.first_timestamp);
        assert_valid(&e);

        let mut bad = Event::new("demo", "ev", EventSpec::default());
        bad.spec.count = 2;
        bad.spec.involved_object.kind = "Pod".into();
        bad.spec.reason = "not camel".into();
        bad.spec.message = "m".repeat(MAX_EVENT_MESSAGE + 1);
        bad.spec.first_timestamp = Some("2024-05-01T10:00:00Z".parse().unwrap());
        bad.spec.last_timestamp = Some("2024-05-01T09:00:00Z".parse().unwrap());
        assert_errors(
            &bad.validate(),
            &[
                "spec.involvedObject.kind: unknown kind \"Pod\"",
                "spec.involvedObject.name: required",
                "spec.reason: must be UpperCamelCase letters and digits, at most 128 characters",
                "spec.message: must be at most 1024 characters (is 1025)",
                "spec.lastTimestamp: must not be before spec.firstTimestamp",
            ],
        );
        bad.spec.involved_object = ObjectReference {
            kind: String::new(),
            name: "Web".into(),
            uid: String::new(),
        };
        bad.spec.reason = String::new();
        bad.spec.message.clear();
        bad.spec.last_timestamp = None;
        assert_errors(
            &bad.validate(),
            &[
                "spec.involvedObject.kind: required",
                "spec.involvedObject.name: must be an object name (lowercase letters, digits, '-' and '.')",
                "spec.reason: required",
            ],
        );
    }
}
