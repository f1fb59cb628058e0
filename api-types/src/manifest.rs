//! Manifest files: multi-document YAML, or JSON (one object, a list of
//! objects, or `{"kind": "List", "items": [...]}`). Parsing only — the
//! caller reads the files.

use std::fmt;

use serde::Deserialize;

use crate::any::{deserialize_as, resolve_kind, tidy_path};
use crate::{AnyObject, ParseError};

/// What went wrong, and where, while parsing a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The name the caller gave for the text (usually the file path).
    pub source_name: String,
    /// 1-based position of the document in a YAML stream; `None` for JSON.
    pub document: Option<usize>,
    /// 0-based index in a list's `items` (or a top-level JSON array).
    pub item: Option<usize>,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// 1-based column of the problem, when known.
    pub column: Option<usize>,
    pub kind: ManifestErrorKind,
}

/// The two families of manifest errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestErrorKind {
    /// The text is not valid YAML/JSON (the message includes the location).
    Syntax(String),
    /// The text is valid but an object is not: missing or unknown kind, or
    /// an unknown, missing or mistyped field (with its path).
    Object(Box<ParseError>),
}

impl ManifestError {
    /// The object-level error, if this is not a syntax error.
    pub fn parse_error(&self) -> Option<&ParseError> {
        match &self.kind {
            ManifestErrorKind::Object(e) => Some(e),
            ManifestErrorKind::Syntax(_) => None,
        }
    }

    /// The field path (`spec.nics[0].netwrok`) of a field error.
    pub fn field_path(&self) -> Option<&str> {
        match self.parse_error()? {
            ParseError::Field { path, .. } => Some(path),
            _ => None,
        }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source_name)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(i) = self.item {
            write!(f, ": items[{i}]")?;
        }
        match &self.kind {
            ManifestErrorKind::Syntax(msg) => write!(f, ": {msg}"),
            ManifestErrorKind::Object(e) => {
                if let (Some(l), Some(c)) = (self.line, self.column) {
                    write!(f, " (line {l}, column {c})")?;
                }
                write!(f, ": {e}")
            }
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses every object in a manifest file. YAML streams may hold several
/// `---`-separated documents (empty ones are skipped); JSON is used when
/// `source_name` ends in `.json`, or when the text looks like JSON and
/// parses as JSON. A document may also be a `kind: List` with `items`.
///
/// Objects are returned as written: callers apply defaults and validate.
pub fn parse_manifests(source_name: &str, text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let is_json_name = source_name.to_ascii_lowercase().ends_with(".json");
    let looks_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
    if is_json_name {
        return parse_json(source_name, text);
    }
    if looks_json {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            return objects_from_value(source_name, None, v, Some(text));
        }
    }
    parse_yaml(source_name, text)
}

fn error(source_name: &str, document: Option<usize>, kind: ManifestErrorKind) -> ManifestError {
    ManifestError {
        source_name: source_name.to_string(),
        document,
        item: None,
        line: None,
        column: None,
        kind,
    }
}

fn parse_json(source_name: &str, text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ManifestError {
        line: Some(e.line()),
        column: Some(e.column()),
        ..error(source_name, None, ManifestErrorKind::Syntax(e.to_string()))
    })?;
    objects_from_value(source_name, None, value, Some(text))
}

fn parse_yaml(source_name: &str, text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document = Some(i + 1);
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let loc = e.location();
                // A failed stream keeps yielding the same error: stop here.
                return Err(ManifestError {
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.as_ref().map(|l| l.column()),
                    ..error(
                        source_name,
                        document,
                        ManifestErrorKind::Syntax(e.to_string()),
                    )
                });
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = resolve_kind(&value).ok().map(|k| k.kind);
        let objs = objects_from_value(source_name, document, value, None).map_err(|mut err| {
            if err.item.is_none() && err.line.is_none() {
                if let (Some(path), Some(kind)) = (err.field_path(), kind) {
                    if let Some((l, c)) = locate_in_yaml(text, i, kind, path) {
                        err.line = Some(l);
                        err.column = Some(c);
                    }
                }
            }
            err
        })?;
        out.extend(objs);
    }
    Ok(out)
}

/// Re-reads YAML document `index` straight into its typed struct to learn
/// where the field error at `path` is. Only trusted when the typed parse
/// fails at the same path.
fn locate_in_yaml(text: &str, index: usize, kind: &str, path: &str) -> Option<(usize, usize)> {
    let doc = yaml_serde::Deserializer::from_str(text).nth(index)?;
    let err = deserialize_as(kind, doc).err()?;
    if tidy_path(err.path()) != path {
        return None;
    }
    let loc = err.inner().location()?;
    Some((loc.line(), loc.column()))
}

/// Locates a field error in JSON text (single-object files only).
fn locate_in_json(text: &str, kind: &str, path: &str) -> Option<(usize, usize)> {
    let mut de = serde_json::Deserializer::from_str(text);
    let err = deserialize_as(kind, &mut de).err()?;
    if tidy_path(err.path()) != path {
        return None;
    }
    let inner = err.inner();
    Some((inner.line(), inner.column()))
}

fn objects_from_value(
    source_name: &str,
    document: Option<usize>,
    value: serde_json::Value,
    json_text: Option<&str>,
) -> Result<Vec<AnyObject>, ManifestError> {
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref m)
            if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
        {
            let serde_json::Value::Object(mut m) = value else {
                unreachable!()
            };
            match m.remove("items") {
                Some(serde_json::Value::Array(items)) => items,
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(error(
                        source_name,
                        document,
                        ManifestErrorKind::Object(Box::new(ParseError::Field {
                            object: "List".into(),
                            path: "items".into(),
                            message: "must be a list of objects".into(),
                        })),
                    ))
                }
            }
        }
        single => {
            let kind = resolve_kind(&single).ok().map(|k| k.kind);
            return match AnyObject::from_json_value(single) {
                Ok(o) => Ok(vec![o]),
                Err(e) => {
                    let loc = match (&e, json_text, kind) {
                        (ParseError::Field { path, .. }, Some(text), Some(kind)) => {
                            locate_in_json(text, kind, path)
                        }
                        _ => None,
                    };
                    Err(ManifestError {
                        line: loc.map(|l| l.0),
                        column: loc.map(|l| l.1),
                        ..error(
                            source_name,
                            document,
                            ManifestErrorKind::Object(Box::new(e)),
                        )
                    })
                }
            };
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            AnyObject::from_json_value(item).map_err(|e| ManifestError {
                item: Some(i),
                ..error(
                    source_name,
                    document,
                    ManifestErrorKind::Object(Box::new(e)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
