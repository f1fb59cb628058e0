//! Label and field selectors, as Kubernetes spells them, parsed once and
//! matched anywhere (API server lists and watches, the CLI's `-l`,
//! controllers).
//!
//! Label selector: comma-separated requirements, all of which must hold:
//! `key=value` (or `==`), `key!=value`, `key in (a,b)`, `key notin (a,b)`,
//! `key` (exists), `!key` (does not exist).
//!
//! Field selector: `path=value`, `path==value`, `path!=value`, comma = AND,
//! over a fixed set of paths ([`FIELD_SELECTOR_PATHS`]).

use std::collections::BTreeMap;
use std::fmt;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} selector {input:?}: {reason}")]
pub struct SelectorError {
    pub what: &'static str,
    pub input: String,
    pub reason: String,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

/// Parses the comma-separated requirements (`parts`) of a `what` selector
/// `input`, each with `one`; a blank selector has none. The first
/// requirement `one` refuses (with the reason) refuses the whole selector.
fn parse_requirements<'a, R>(
    what: &'static str,
    input: &str,
    parts: impl IntoIterator<Item = &'a str>,
    one: impl Fn(&'a str) -> Result<R, String>,
) -> Result<Vec<R>, SelectorError> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    parts
        .into_iter()
        .map(|part| {
            one(part).map_err(|reason| SelectorError {
                what,
                input: input.to_string(),
                reason,
            })
        })
        .collect()
}

/// `a!=b` -> ("a", "b", false); `a==b` or `a=b` -> ("a", "b", true).
fn split_equality(part: &str) -> Option<(&str, &str, bool)> {
    if let Some((a, b)) = part.split_once("!=") {
        Some((a, b, false))
    } else if let Some((a, b)) = part.split_once("==") {
        Some((a, b, true))
    } else {
        part.split_once('=').map(|(a, b)| (a, b, true))
    }
}

fn parse_label_requirement(part: &str) -> Result<LabelRequirement, String> {
    let part = part.trim();
    if part.is_empty() {
        return Err("empty requirement".into());
    }
    let req = if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        if !valid_key(key) {
            return Err(format!("invalid key {key:?}"));
        }
        LabelRequirement::DoesNotExist(key.to_string())
    } else if let Some((key, value, equal)) = split_equality(part) {
        let (key, value) = (key.trim().to_string(), value.trim().to_string());
        if equal {
            LabelRequirement::Equals(key, value)
        } else {
            LabelRequirement::NotEquals(key, value)
        }
    } else if let Some((key, rest)) = split_set_op(part, "notin") {
        LabelRequirement::NotIn(key, parse_set(rest)?)
    } else if let Some((key, rest)) = split_set_op(part, "in") {
        LabelRequirement::In(key, parse_set(rest)?)
    } else {
        LabelRequirement::Exists(part.to_string())
    };
    let (key, values): (&str, Vec<&str>) = match &req {
        LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => (k, vec![v.as_str()]),
        LabelRequirement::In(k, vs) | LabelRequirement::NotIn(k, vs) => {
            (k, vs.iter().map(String::as_str).collect())
        }
        LabelRequirement::Exists(k) | LabelRequirement::DoesNotExist(k) => (k, vec![]),
    };
    if !valid_key(key) {
        return Err(format!("invalid key {key:?}"));
    }
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid value {bad:?}"));
    }
    Ok(req)
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<LabelSelector, SelectorError> {
        let requirements = parse_requirements(
            "label",
            input,
            split_top_level(input),
            parse_label_requirement,
        )?;
        Ok(LabelSelector { requirements })
    }

    /// Selector requiring every pair in `labels` (what `-l a=b,c=d` means).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> LabelSelector {
        LabelSelector {
            requirements: labels
                .iter()
                .map(|(k, v)| LabelRequirement::Equals(k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// `key in (a,b)` -> ("key", "(a,b)") when `op` is a separate word.
fn split_set_op<'a>(part: &'a str, op: &str) -> Option<(String, &'a str)> {
    let open = part.find('(')?;
    let head = part[..open].trim_end();
    let key = head.strip_suffix(op)?;
    if !key.ends_with(char::is_whitespace) {
        return None;
    }
    Some((key.trim().to_string(), &part[open..]))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| "a set must be written (a,b,...)".to_string())?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err("empty set".into());
    }
    Ok(values)
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                LabelRequirement::Equals(k, v) => write!(f, "{k}={v}")?,
                LabelRequirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                LabelRequirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                LabelRequirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                LabelRequirement::Exists(k) => write!(f, "{k}")?,
                LabelRequirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// Paths a field selector may use.
pub const FIELD_SELECTOR_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.project",
    "status.nodeName",
    "status.phase",
    "spec.nodeName",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub path: String,
    pub value: String,
    pub equal: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<FieldSelector, SelectorError> {
        let parts = input.split(',');
        let requirements = parse_requirements("field", input, parts, |part| {
            let (path, value, equal) = split_equality(part)
                .ok_or_else(|| format!("{part:?} is not path=value or path!=value"))?;
            let path = path.trim();
            if !FIELD_SELECTOR_PATHS.contains(&path) {
                return Err(format!(
                    "field {path:?} is not supported; use one of {}",
                    FIELD_SELECTOR_PATHS.join(", ")
                ));
            }
            Ok(FieldRequirement {
                path: path.to_string(),
                value: value.trim().to_string(),
                equal,
            })
        })?;
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required for `path` with `=`, if any (lets callers narrow
    /// a scan, and lets the API server check a node's selector).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equal && r.path == path)
            .map(|r| r.value.as_str())
    }

    /// Matches against an object in its JSON form. A missing field counts
    /// as the empty string, as in Kubernetes.
    ///
    /// Runs for every watch event and every watcher (each node agent
    /// watches Instances by `status.nodeName`), so it walks the path in
    /// place and allocates nothing for string fields.
    pub fn matches(&self, object: &serde_json::Value) -> bool {
        use serde_json::Value;
        self.requirements.iter().all(|r| {
            let field = r
                .path
                .split('.')
                .try_fold(object, |v, segment| v.get(segment));
            let same = match field {
                Some(Value::String(s)) => *s == r.value,
                Some(Value::Null) | None => r.value.is_empty(),
                // A number or boolean compares as its JSON text ("2").
                Some(other) => {
                    let text = other.to_string();
                    text == r.value
                }
            };
            same == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_forms() {
        let s =
            LabelSelector::parse("app=web, tier!=db,env in (prod, staging),!legacy,team").unwrap();
        assert_eq!(s.requirements.len(), 5);
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "1")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "db"),
            ("env", "prod"),
            ("team", "a")
        ])));
        let notin = LabelSelector::parse("env notin (prod)").unwrap();
        assert!(notin.matches(&labels(&[])));
        assert!(notin.matches(&labels(&[("env", "dev")])));
        assert!(!notin.matches(&labels(&[("env", "prod")])));
        assert_eq!(
            LabelSelector::parse("a==b").unwrap().requirements,
            vec![LabelRequirement::Equals("a".into(), "b".into())]
        );
        assert!(LabelSelector::parse("")
            .unwrap()
            .matches(&labels(&[("x", "y")])));
        // "in" inside a key is not the operator.
        assert_eq!(
            LabelSelector::parse("domain").unwrap().requirements,
            vec![LabelRequirement::Exists("domain".into())]
        );
    }

    #[test]
    fn label_selector_errors_say_why() {
        for bad in ["a=b,,c", "env in ()", "env in prod", "a=b c", "=x", "a=(x"] {
            let e = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(e.what, "label", "{bad}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn label_selector_round_trips_through_display() {
        let s = LabelSelector::parse("a=b,c!=d,e in (f,g),h notin (i),j,!k").unwrap();
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn field_selector_matches_json() {
        let obj = serde_json::json!({
            "metadata": {"name": "web", "project": "demo"},
            "status": {"nodeName": "n1", "phase": "Running"}
        });
        let s = FieldSelector::parse("status.nodeName=n1,metadata.name!=db").unwrap();
        assert!(s.matches(&obj));
        assert_eq!(s.required("status.nodeName"), Some("n1"));
        assert!(!FieldSelector::parse("status.phase==Pending")
            .unwrap()
            .matches(&obj));
        // Missing field is "".
        let pending = serde_json::json!({"metadata": {"name": "x"}});
        assert!(FieldSelector::parse("status.nodeName=")
            .unwrap()
            .matches(&pending));
        let e = FieldSelector::parse("spec.cpus=2").unwrap_err();
        assert!(e.reason.contains("not supported"), "{e}");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
