//! The validation and defaulting contracts, and the syntax rules shared by
//! every kind (names, labels, tags, metadata).
//!
//! Validation checks syntax and internal consistency only: it never looks up
//! other objects (a referenced network may be applied later; that is a
//! controller's concern). It reports every problem, each with its full field
//! path from the object root.

use std::collections::{BTreeMap, BTreeSet};

use crate::{FieldErrors, ObjectMeta, Scope, API_VERSION};

/// Checks an object and reports every problem found, each with its field
/// path (`spec.nics[0].network: ...`). An empty result means valid.
pub trait Validate {
    fn validate(&self) -> FieldErrors;
}

/// Fills in the values the user may leave out. Runs before validation on the
/// server path (and in `corral apply --dry-run=client`); idempotent. Most
/// kinds have nothing to fill beyond their serde defaults.
pub trait Defaults {
    fn apply_defaults(&mut self) {}
}

/// Checks a change: what may not change between the stored object `old`
/// and `self` (immutable fields, sizes that may only grow). Reports only
/// the transition's problems — run [`Validate`] on the new object too.
pub trait ValidateUpdate {
    fn validate_update(&self, old: &Self) -> FieldErrors;
}

/// A field whose value names something on a server's or node's host
/// rather than an object: the API server checks each against the
/// operator's rules (import directories, address ranges, who may attach
/// guests to host interfaces) before anything is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRef<'a> {
    /// A file the server would read (an image's `source.path`).
    File { field: &'static str, path: &'a str },
    /// A URL the server would fetch (an image's `source.url`).
    Url { field: &'static str, url: &'a str },
    /// A host network interface guests would be attached to (a bridged
    /// Network's `hostBridge`): the operator's to choose.
    HostInterface { field: &'static str, name: &'a str },
}

/// The fields of an object that name things on a host ([`HostRef`]).
/// Most kinds have none.
pub trait HostRefs {
    fn host_refs(&self) -> Vec<HostRef<'_>> {
        Vec::new()
    }
}

/// Reason used for fields that cannot change after creation.
pub const IMMUTABLE_MSG: &str = "field is immutable";

/// Reason used for names and references that must be DNS labels.
pub const DNS_LABEL_MSG: &str =
    "must be a DNS label (lowercase letters, digits and '-', at most 63 characters)";
/// Reason used for names that must be DNS subdomains.
pub const DNS_SUBDOMAIN_MSG: &str =
    "must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)";
/// Reason used for label and annotation keys.
pub const QUALIFIED_NAME_MSG: &str = "key must be an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
/// Reason used for label values.
pub const LABEL_VALUE_MSG: &str = "value must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// Maximum total size of `metadata.annotations` (keys plus values), bytes.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Maximum number of tags on an object (EC2's limit).
pub const MAX_TAGS: usize = 50;
/// Maximum length of a tag key, characters.
pub const MAX_TAG_KEY: usize = 128;
/// Maximum length of a tag value, characters.
pub const MAX_TAG_VALUE: usize = 256;
/// Maximum length of free-text descriptions, characters.
pub const MAX_DESCRIPTION: usize = 255;

/// RFC 1123 label: 1..=63 of `[a-z0-9-]`, starting and ending with a letter
/// or digit.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated DNS labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label/annotation key: `[prefix/]name` where prefix is a DNS subdomain
/// and name is 1..=63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// A label value: empty, or 1..=63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

// ---- helpers used by the kinds' validators --------------------------------

/// `base.field`
pub(crate) fn join(base: &str, field: &str) -> String {
    format!("{base}.{field}")
}

/// `base[i]`
pub(crate) fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// `base["key"]`
pub(crate) fn key(base: &str, k: &str) -> String {
    format!("{base}[{k:?}]")
}

/// A required string: `required` when empty, else `reason` unless `valid`.
pub(crate) fn check_required(
    errs: &mut FieldErrors,
    path: &str,
    value: &str,
    valid: impl FnOnce(&str) -> bool,
    reason: impl Into<String>,
) {
    if value.is_empty() {
        errs.push(path, "required");
    } else if !valid(value) {
        errs.push(path, reason);
    }
}

/// A required reference to another object by name: non-empty DNS label.
pub(crate) fn check_ref(errs: &mut FieldErrors, path: &str, value: &str) {
    check_required(errs, path, value, is_dns_label, DNS_LABEL_MSG);
}

/// An optional reference: when present it must be a DNS label.
pub(crate) fn check_opt_ref(errs: &mut FieldErrors, path: &str, value: Option<&String>) {
    if let Some(v) = value {
        if !is_dns_label(v) {
            errs.push(path, DNS_LABEL_MSG);
        }
    }
}

/// At most `max` characters.
pub(crate) fn check_max_chars(errs: &mut FieldErrors, path: &str, value: &str, max: usize) {
    let n = value.chars().count();
    if n > max {
        errs.push(path, format!("must be at most {max} characters (is {n})"));
    }
}

/// A free-text description, when present: at most [`MAX_DESCRIPTION`]
/// characters.
pub(crate) fn check_description(errs: &mut FieldErrors, path: &str, value: Option<&str>) {
    if let Some(d) = value {
        check_max_chars(errs, path, d, MAX_DESCRIPTION);
    }
}

/// An inclusive numeric range.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    errs: &mut FieldErrors,
    path: &str,
    value: T,
    min: T,
    max: T,
) {
    if value < min || value > max {
        errs.push(
            path,
            format!("must be between {min} and {max} (is {value})"),
        );
    }
}

/// EC2-style tags: at most 50, keys 1..=128 characters not starting with
/// `aws:`, values at most 256 characters.
pub(crate) fn check_tags(errs: &mut FieldErrors, path: &str, tags: &BTreeMap<String, String>) {
    if tags.len() > MAX_TAGS {
        errs.push(
            path,
            format!("at most {MAX_TAGS} tags are allowed (has {})", tags.len()),
        );
    }
    for (k, v) in tags {
        let p = key(path, k);
        let klen = k.chars().count();
        if klen == 0 {
            errs.push(&p, "key must not be empty");
        } else if klen > MAX_TAG_KEY {
            errs.push(
                &p,
                format!("key must be at most {MAX_TAG_KEY} characters (is {klen})"),
            );
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            errs.push(&p, "key must not start with \"aws:\" (reserved)");
        }
        let vlen = v.chars().count();
        if vlen > MAX_TAG_VALUE {
            errs.push(
                &p,
                format!("value must be at most {MAX_TAG_VALUE} characters (is {vlen})"),
            );
        }
    }
}

/// Labels one map may hold: far more than selection needs, and a bound
/// on what one object may make every list and watch carry.
pub const MAX_LABELS: usize = 64;

/// Kubernetes-style labels (also node selectors): qualified-name keys and
/// label values, at most [`MAX_LABELS`] of them (checked first: a map far
/// over it is answered with that alone, not one error per entry).
pub(crate) fn check_labels(errs: &mut FieldErrors, path: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        errs.push(
            path,
            format!(
                "must have at most {MAX_LABELS} entries (has {})",
                labels.len()
            ),
        );
        return;
    }
    for (k, v) in labels {
        let p = key(path, k);
        if !is_qualified_name(k) {
            errs.push(&p, QUALIFIED_NAME_MSG);
        }
        if !is_label_value(v) {
            errs.push(&p, LABEL_VALUE_MSG);
        }
    }
}

/// Reports duplicates in a list of names: `path[i]: duplicate "x"`.
pub(crate) fn check_unique<'a>(
    errs: &mut FieldErrors,
    path: &str,
    items: impl IntoIterator<Item = &'a String>,
) {
    let mut seen = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        if !seen.insert(item.as_str()) {
            errs.push(index(path, i), format!("duplicate {item:?}"));
        }
    }
}

/// How `metadata.name` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    DnsLabel,
    DnsSubdomain,
}

/// `apiVersion`, `kind` and every `metadata` rule.
pub(crate) fn check_header(
    errs: &mut FieldErrors,
    api_version: &str,
    kind: &str,
    expected_kind: &str,
    scope: Scope,
    name_rule: NameRule,
    meta: &ObjectMeta,
) {
    if api_version != API_VERSION {
        errs.push("apiVersion", format!("must be {API_VERSION:?}"));
    }
    if kind != expected_kind {
        errs.push("kind", format!("must be {expected_kind:?}"));
    }
    check_meta(errs, expected_kind, scope, name_rule, meta);
}

fn check_meta(
    errs: &mut FieldErrors,
    kind: &str,
    scope: Scope,
    name_rule: NameRule,
    meta: &ObjectMeta,
) {
    if meta.name.is_empty() {
        errs.push("metadata.name", "required");
    } else {
        match name_rule {
            NameRule::DnsLabel if !is_dns_label(&meta.name) => {
                errs.push("metadata.name", DNS_LABEL_MSG)
            }
            NameRule::DnsSubdomain if !is_dns_subdomain(&meta.name) => {
                errs.push("metadata.name", DNS_SUBDOMAIN_MSG)
            }
            _ => {}
        }
    }
    match scope {
        Scope::Project => check_ref(errs, "metadata.project", &meta.project),
        Scope::Cluster => {
            if !meta.project.is_empty() {
                errs.push(
                    "metadata.project",
                    format!("must be empty: {kind} is cluster-scoped"),
                );
            }
        }
    }
    check_labels(errs, "metadata.labels", &meta.labels);
    let mut total = 0;
    for (k, v) in &meta.annotations {
        if !is_qualified_name(k) {
            errs.push(key("metadata.annotations", k), QUALIFIED_NAME_MSG);
        }
        total += k.len() + v.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        errs.push(
            "metadata.annotations",
            format!("total size must be at most {MAX_ANNOTATIONS_BYTES} bytes (is {total})"),
        );
    }
    if meta.generation < 0 {
        errs.push("metadata.generation", "must not be negative");
    }
    for (i, f) in meta.finalizers.iter().enumerate() {
        if !is_qualified_name(f) {
            errs.push(
                index("metadata.finalizers", i),
                "must be a qualified name like corral.dev/volume-protection",
            );
        }
    }
    check_unique(errs, "metadata.finalizers", &meta.finalizers);
    for (i, o) in meta.owner_references.iter().enumerate() {
        let p = index("metadata.ownerReferences", i);
        for (field, value) in [("kind", &o.kind), ("name", &o.name), ("uid", &o.uid)] {
            if value.is_empty() {
                errs.push(join(&p, field), "required");
            }
        }
    }
    let controllers = meta
        .owner_references
        .iter()
        .filter(|o| o.controller)
        .count();
    if controllers > 1 {
        errs.push(
            "metadata.ownerReferences",
            "at most one owner reference may have controller: true",
        );
    }
}

/// `path: field is immutable` when `old != new`.
pub(crate) fn check_immutable<T: PartialEq>(errs: &mut FieldErrors, path: &str, old: &T, new: &T) {
    if old != new {
        errs.push(path, IMMUTABLE_MSG);
    }
}

/// Metadata rules for updates: name, project, uid and creation time never
/// change; a deletion, once started, cannot be undone or gain finalizers.
pub(crate) fn check_meta_update(old: &ObjectMeta, new: &ObjectMeta) -> FieldErrors {
    let mut errs = FieldErrors::default();
    check_immutable(&mut errs, "metadata.name", &old.name, &new.name);
    check_immutable(&mut errs, "metadata.project", &old.project, &new.project);
    if !old.uid.is_empty() && !new.uid.is_empty() {
        check_immutable(&mut errs, "metadata.uid", &old.uid, &new.uid);
    }
    if old.creation_timestamp.is_some() && new.creation_timestamp.is_some() {
        check_immutable(
            &mut errs,
            "metadata.creationTimestamp",
            &old.creation_timestamp,
            &new.creation_timestamp,
        );
    }
    if old.deletion_timestamp.is_some() {
        if new.deletion_timestamp != old.deletion_timestamp {
            errs.push(
                "metadata.deletionTimestamp",
                "cannot change once deletion has started",
            );
        }
        for (i, f) in new.finalizers.iter().enumerate() {
            if !old.finalizers.contains(f) {
                errs.push(
                    index("metadata.finalizers", i),
                    "cannot add a finalizer once deletion has started",
                );
            }
        }
    }
    errs
}

/// Starts validating `obj`: the header and metadata checks for its kind.
pub(crate) fn header<R: crate::Resource>(obj: &R, name_rule: NameRule) -> FieldErrors {
    let (api_version, kind) = obj.type_meta();
    let mut errs = FieldErrors::default();
    check_header(
        &mut errs,
        api_version,
        kind,
        R::KIND,
        R::SCOPE,
        name_rule,
        obj.meta(),
    );
    errs
}

/// The usual [`ValidateUpdate`] body: [`check_meta_update`], then
/// [`check_immutable`] on each listed spec field, with its path:
/// `check_spec_update!(old, self, "spec.volume" => volume)`.
macro_rules! check_spec_update {
    ($old:expr, $new:expr $(,)?) => {
        $crate::validate::check_meta_update(&$old.metadata, &$new.metadata)
    };
    ($old:expr, $new:expr $(, $path:literal => $field:ident)+ $(,)?) => {{
        let mut errs = $crate::validate::check_meta_update(&$old.metadata, &$new.metadata);
        $($crate::validate::check_immutable(&mut errs, $path, &$old.spec.$field, &$new.spec.$field);)+
        errs
    }};
}
pub(crate) use check_spec_update;

/// Implements [`ValidateUpdate`] for a kind whose update rules are just
/// [`check_spec_update!`]'s: `impl_validate_update!(Snapshot, "spec.volume" => volume);`
/// (no fields: only the metadata rules, everything in the spec may change).
macro_rules! impl_validate_update {
    ($kind:ty $(, $path:literal => $field:ident)* $(,)?) => {
        impl $crate::ValidateUpdate for $kind {
            fn validate_update(&self, old: &Self) -> $crate::FieldErrors {
                $crate::validate::check_spec_update!(old, self $(, $path => $field)*)
            }
        }
    };
}
pub(crate) use impl_validate_update;

/// Test helpers: the paths of the errors, and a lookup by path.
#[cfg(test)]
pub(crate) mod testing {
    use crate::FieldErrors;

    pub fn paths(errs: &FieldErrors) -> Vec<&str> {
        errs.0.iter().map(|e| e.path.as_str()).collect()
    }

    /// Asserts that exactly the given `path: reason` lines were reported, in
    /// any order.
    #[track_caller]
    pub fn assert_errors(errs: &FieldErrors, expected: &[&str]) {
        let mut got: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "validation errors differ");
    }

    /// Asserts that `obj` validates without a single error.
    #[track_caller]
    pub fn assert_valid(obj: &impl crate::Validate) {
        assert_errors(&obj.validate(), &[]);
    }

    /// Asserts that exactly the given paths were reported, in any order.
    #[track_caller]
    pub fn assert_paths(errs: &FieldErrors, expected: &[&str]) {
        let mut got = paths(errs);
        let mut want = expected.to_vec();
        got.sort();
        want.sort();
        assert_eq!(got, want, "validation error paths differ; errors: {errs}");
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
