//! Handling objects whose kind is only known at run time: the kind registry
//! ([`KINDS`], [`kind_info`]) and [`AnyObject`].
//!
//! Slightly over 600 lines: the kind registry and `AnyObject` are one
//! concern (kinds known at run time) with their tests beside them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::kinds::*;
use crate::{Defaults, FieldErrors, ObjectMeta, Resource, Scope, Validate, ValidateUpdate};

/// Static facts about one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// `Instance`
    pub kind: &'static str,
    /// `instances` — used in store keys and URLs.
    pub plural: &'static str,
    /// `instance` — the lower-case kind; also the schema file's stem.
    pub singular: &'static str,
    pub scope: Scope,
    /// Abbreviations the CLI accepts: `inst`, `vol`, ...
    pub short_names: &'static [&'static str],
}

impl KindInfo {
    /// Name of this kind's JSON Schema file: `instance.json`.
    pub fn schema_file_name(&self) -> String {
        format!("{}.json", self.singular)
    }

    /// Whether `name` names this kind: its kind, plural, singular or a short
    /// name, ignoring case.
    pub fn matches(&self, name: &str) -> bool {
        self.kind.eq_ignore_ascii_case(name)
            || self.plural.eq_ignore_ascii_case(name)
            || self.singular.eq_ignore_ascii_case(name)
            || self
                .short_names
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
    }
}

/// Looks a kind up by kind (`Instance`), plural (`instances`), singular
/// (`instance`) or short name (`inst`), case-insensitively.
pub fn kind_info(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.matches(name))
}

/// Why a JSON value could not be turned into an [`AnyObject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The value is not a JSON object.
    NotAnObject { found: &'static str },
    /// No `kind` field (or an empty one).
    MissingKind,
    /// `kind` names no known kind. `suggestion` is the right spelling when
    /// only the case (or plural) was wrong.
    UnknownKind {
        kind: String,
        suggestion: Option<&'static str>,
    },
    /// A field is unknown, missing or has the wrong type.
    Field {
        /// `Instance demo/web`
        object: String,
        /// Full path from the object root: `spec.nics[0].netwrok`; empty for
        /// the root itself.
        path: String,
        message: String,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotAnObject { found } => write!(
                f,
                "expected an object with apiVersion, kind, metadata and spec, found {found}"
            ),
            ParseError::MissingKind => {
                write!(f, "missing \"kind\" (one of {})", known_kinds())
            }
            ParseError::UnknownKind { kind, suggestion } => {
                write!(f, "unknown kind {kind:?}")?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean {s:?}?)"),
                    None => write!(f, " (one of {})", known_kinds()),
                }
            }
            ParseError::Field {
                object,
                path,
                message,
            } => {
                if path.is_empty() {
                    write!(f, "{object}: {message}")
                } else {
                    write!(f, "{object}: {path}: {message}")
                }
            }
        }
    }
}

impl std::error::Error for ParseError {}

fn known_kinds() -> String {
    KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
}

fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `Instance demo/web`, `InstanceType m1.tiny`, `Instance <unnamed>`.
pub(crate) fn describe(kind: &str, project: &str, name: &str) -> String {
    let name = if name.is_empty() { "<unnamed>" } else { name };
    if project.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {project}/{name}")
    }
}

/// Serde says `` `x` ``; we say `"x"`.
pub(crate) fn tidy_serde_message(msg: &str) -> String {
    msg.replace('`', "\"")
}

/// serde_path_to_error writes `.` for the root; we use the empty string.
pub(crate) fn tidy_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        p
    }
}

/// The kind, project and name a raw object claims, for error messages.
pub(crate) fn claimed_identity(v: &serde_json::Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/project"), s("/metadata/name"))
}

/// Resolves the `kind` field to a known kind name, or the error to report.
pub(crate) fn resolve_kind(value: &serde_json::Value) -> Result<&'static KindInfo, ParseError> {
    let obj = value.as_object().ok_or(ParseError::NotAnObject {
        found: json_type_name(value),
    })?;
    let kind = match obj.get("kind") {
        None | Some(serde_json::Value::Null) => return Err(ParseError::MissingKind),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Err(ParseError::MissingKind),
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ParseError::UnknownKind {
                kind: other.to_string(),
                suggestion: None,
            })
        }
    };
    match KINDS.iter().find(|k| k.kind == kind) {
        Some(info) => Ok(info),
        None => Err(ParseError::UnknownKind {
            kind: kind.to_string(),
            suggestion: kind_info(kind).map(|k| k.kind),
        }),
    }
}

macro_rules! kinds {
    ($($kind:ident: $singular:literal, [$($short:literal),*];)*) => {
        /// Every kind, in a sensible apply order: kinds that others refer to
        /// come before the kinds that refer to them (projects and instance
        /// types first, instances after their networks, images and volumes).
        pub const KINDS: &[KindInfo] = &[$(
            KindInfo {
                kind: <$kind as Resource>::KIND,
                plural: <$kind as Resource>::PLURAL,
                singular: $singular,
                scope: <$kind as Resource>::SCOPE,
                short_names: &[$($short),*],
            },
        )*];

        /// An object of any kind. Serialises exactly like the inner object.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyObject {
            $($kind($kind),)*
        }

        impl AnyObject {
            /// `Instance`, `Network`, ...
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AnyObject::$kind(_) => <$kind as Resource>::KIND,)*
                }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(AnyObject::$kind(o) => &o.metadata,)*
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(AnyObject::$kind(o) => &mut o.metadata,)*
                }
            }

            /// The object's `apiVersion` field as written.
            pub fn api_version(&self) -> &str {
                match self {
                    $(AnyObject::$kind(o) => &o.api_version,)*
                }
            }

            /// Every problem with the object; see [`Validate`].
            pub fn validate(&self) -> FieldErrors {
                match self {
                    $(AnyObject::$kind(o) => o.validate(),)*
                }
            }

            /// Problems with changing `old` (the stored object) into `self`:
            /// immutable fields, a different kind; see [`ValidateUpdate`].
            /// Run [`AnyObject::validate`] as well.
            pub fn validate_update(&self, old: &AnyObject) -> FieldErrors {
                match (self, old) {
                    $((AnyObject::$kind(new), AnyObject::$kind(old)) => new.validate_update(old),)*
                    _ => {
                        let mut errs = FieldErrors::default();
                        errs.push(
                            "kind",
                            format!("cannot change from {:?} to {:?}", old.kind(), self.kind()),
                        );
                        errs
                    }
                }
            }

            /// See [`Defaults`].
            pub fn apply_defaults(&mut self) {
                match self {
                    $(AnyObject::$kind(o) => o.apply_defaults(),)*
                }
            }

            /// The object as JSON (what the store keeps).
            pub fn to_json_value(&self) -> serde_json::Value {
                let r = match self {
                    $(AnyObject::$kind(o) => serde_json::to_value(o),)*
                };
                r.expect("resource types always serialise to JSON")
            }

            /// The spec as JSON (for diffs and generation bumps).
            pub fn spec_json_value(&self) -> serde_json::Value {
                let r = match self {
                    $(AnyObject::$kind(o) => serde_json::to_value(&o.spec),)*
                };
                r.expect("resource types always serialise to JSON")
            }

            /// The status as JSON, `null` when absent.
            pub fn status_json_value(&self) -> serde_json::Value {
                let r = match self {
                    $(AnyObject::$kind(o) => serde_json::to_value(&o.status),)*
                };
                r.expect("resource types always serialise to JSON")
            }

            /// Drops the status (what a user-side write carries).
            pub fn clear_status(&mut self) {
                match self {
                    $(AnyObject::$kind(o) => o.status = None,)*
                }
            }
        }

        $(
            impl From<$kind> for AnyObject {
                fn from(o: $kind) -> Self {
                    AnyObject::$kind(o)
                }
            }

            impl TryFrom<AnyObject> for $kind {
                type Error = AnyObject;
                /// The inner object, or the original back if it is another kind.
                fn try_from(o: AnyObject) -> Result<Self, AnyObject> {
                    match o {
                        AnyObject::$kind(x) => Ok(x),
                        other => Err(other),
                    }
                }
            }
        )*

        /// The JSON Schema of the kind named `kind` (one of [`KINDS`]).
        pub(crate) fn schema_of(kind: &str) -> schemars::Schema {
            match kind {
                $(k if k == <$kind as Resource>::KIND => schemars::schema_for!($kind),)*
                other => unreachable!("schema_of called with unknown kind {other:?}"),
            }
        }

        /// Deserialises `d` as the kind named `kind` (which must be one of
        /// [`KINDS`]), tracking the path of any error.
        pub(crate) fn deserialize_as<'de, D: Deserializer<'de>>(
            kind: &str,
            d: D,
        ) -> Result<AnyObject, serde_path_to_error::Error<D::Error>> {
            match kind {
                $(k if k == <$kind as Resource>::KIND => {
                    serde_path_to_error::deserialize::<D, $kind>(d).map(AnyObject::$kind)
                })*
                other => unreachable!("deserialize_as called with unknown kind {other:?}"),
            }
        }
    };
}

kinds! {
    Project: "project", ["proj"];
    InstanceType: "instancetype", ["it", "flavor"];
    Node: "node", ["no"];
    Network: "network", ["net"];
    SecurityGroup: "securitygroup", ["sg"];
    KeyPair: "keypair", ["kp", "key"];
    Image: "image", ["img"];
    Volume: "volume", ["vol"];
    Snapshot: "snapshot", ["snap"];
    Instance: "instance", ["inst", "vm"];
    Address: "address", ["addr", "eip"];
    Event: "event", ["ev"];
}

impl AnyObject {
    /// This kind's registry entry.
    pub fn info(&self) -> &'static KindInfo {
        let kind = self.kind();
        KINDS
            .iter()
            .find(|k| k.kind == kind)
            .expect("every AnyObject variant is in KINDS")
    }

    /// `instances`, `networks`, ...
    pub fn plural(&self) -> &'static str {
        self.info().plural
    }

    pub fn scope(&self) -> Scope {
        self.info().scope
    }

    pub fn name(&self) -> &str {
        &self.meta().name
    }

    /// The project; empty for cluster-scoped kinds.
    pub fn project(&self) -> &str {
        &self.meta().project
    }

    /// `Instance demo/web` or `InstanceType m1.tiny`, for messages.
    pub fn display_name(&self) -> String {
        describe(self.kind(), self.project(), self.name())
    }

    /// Parses an object of any kind, dispatching on its `kind` field. Errors
    /// name the field's full path: `spec.nics[0].netwrok: unknown field
    /// "netwrok", expected one of "network", ...`.
    pub fn from_json_value(value: serde_json::Value) -> Result<AnyObject, ParseError> {
        let info = resolve_kind(&value)?;
        let (project, name) = claimed_identity(&value);
        deserialize_as(info.kind, value).map_err(|e| ParseError::Field {
            object: describe(info.kind, &project, &name),
            path: tidy_path(e.path()),
            message: tidy_serde_message(&e.inner().to_string()),
        })
    }

    /// Parses JSON text (one object).
    pub fn from_json_str(text: &str) -> Result<AnyObject, ParseError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ParseError::Field {
                object: "object".to_string(),
                path: String::new(),
                message: e.to_string(),
            })?;
        AnyObject::from_json_value(value)
    }
}

impl Serialize for AnyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        AnyObject::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registry_is_complete_and_consistent() {
        let kinds: Vec<_> = KINDS.iter().map(|k| k.kind).collect();
        assert_eq!(
            kinds,
            [
                "Project",
                "InstanceType",
                "Node",
                "Network",
                "SecurityGroup",
                "KeyPair",
                "Image",
                "Volume",
                "Snapshot",
                "Instance",
                "Address",
                "Event"
            ]
        );
        for k in KINDS {
            assert_eq!(k.singular, k.kind.to_ascii_lowercase());
            let expected_scope = match k.kind {
                "InstanceType" | "Node" | "Project" => Scope::Cluster,
                _ => Scope::Project,
            };
            assert_eq!(k.scope, expected_scope, "{}", k.kind);
        }
        // No name resolves to two kinds.
        for a in KINDS {
            for name in [a.kind, a.plural, a.singular]
                .into_iter()
                .chain(a.short_names.iter().copied())
            {
                let hits = KINDS.iter().filter(|k| k.matches(name)).count();
                assert_eq!(hits, 1, "{name} is ambiguous");
            }
        }
    }

    #[test]
    fn kind_lookup() {
        for (name, kind) in [
            ("Instance", "Instance"),
            ("instances", "Instance"),
            ("INSTANCE", "Instance"),
            ("inst", "Instance"),
            ("vol", "Volume"),
            ("net", "Network"),
            ("sg", "SecurityGroup"),
            ("securitygroups", "SecurityGroup"),
            ("kp", "KeyPair"),
            ("keypair", "KeyPair"),
            ("addresses", "Address"),
            ("flavor", "InstanceType"),
            ("InstanceTypes", "InstanceType"),
            ("nodes", "Node"),
            ("events", "Event"),
        ] {
            assert_eq!(kind_info(name).map(|k| k.kind), Some(kind), "{name}");
        }
        assert_eq!(kind_info("pods"), None);
        assert_eq!(kind_info(""), None);
        let inst = kind_info("instance").unwrap();
        assert_eq!(inst.plural, "instances");
        assert_eq!(inst.scope, Scope::Project);
        assert_eq!(inst.schema_file_name(), "instance.json");
        assert_eq!(kind_info("it").unwrap().scope, Scope::Cluster);
    }

    fn instance_json() -> serde_json::Value {
        json!({
            "apiVersion": "corral/v1",
            "kind": "Instance",
            "metadata": {"name": "web", "project": "demo"},
            "spec": {"image": "tiny", "nics": [{"network": "lan"}]}
        })
    }

    /// The error parsing [`instance_json`] after `edit` made it invalid.
    fn instance_json_error(edit: impl FnOnce(&mut serde_json::Value)) -> ParseError {
        let mut v = instance_json();
        edit(&mut v);
        AnyObject::from_json_value(v).unwrap_err()
    }

    #[test]
    fn dispatches_on_kind_and_round_trips() {
        let mut obj = AnyObject::from_json_value(instance_json()).unwrap();
        assert_eq!(obj.kind(), "Instance");
        assert_eq!(obj.plural(), "instances");
        assert_eq!(obj.scope(), Scope::Project);
        assert_eq!(obj.display_name(), "Instance demo/web");
        assert_eq!(obj.api_version(), "corral/v1");
        obj.apply_defaults();
        assert!(obj.validate().is_empty());
        let v = obj.to_json_value();
        assert_eq!(v["spec"]["instanceType"], "m1.tiny");
        assert_eq!(AnyObject::from_json_value(v.clone()).unwrap(), obj);
        // serde impls agree with the methods.
        assert_eq!(serde_json::to_value(&obj).unwrap(), v);
        let back: AnyObject = serde_json::from_value(v).unwrap();
        assert_eq!(back, obj);
        obj.meta_mut().name = "other".into();
        assert_eq!(obj.name(), "other");
        let inst: Instance = obj.clone().try_into().unwrap();
        assert_eq!(inst.metadata.name, "other");
        let not_net: Result<Network, AnyObject> = obj.try_into();
        assert!(not_net.is_err());

        let it = AnyObject::from(seeded_instance_types().remove(0));
        assert_eq!(it.display_name(), "InstanceType m1.tiny");
        assert_eq!(it.scope(), Scope::Cluster);
        assert_eq!(it.status_json_value(), serde_json::Value::Null);
    }

    #[test]
    fn unknown_field_at_depth_names_its_path() {
        let err = instance_json_error(|v| v["spec"]["nics"][0] = json!({"netwrok": "lan"}));
        let ParseError::Field {
            object,
            path,
            message,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(object, "Instance demo/web");
        assert_eq!(path, "spec.nics[0].netwrok");
        assert!(
            message
                .starts_with("unknown field \"netwrok\", expected one of \"network\", \"fixedIp\""),
            "{message}"
        );
        assert!(err
            .to_string()
            .starts_with("Instance demo/web: spec.nics[0].netwrok: unknown field \"netwrok\""));
    }

    #[test]
    fn type_errors_and_missing_fields_name_their_path() {
        let err = instance_json_error(|v| v["spec"]["cpus"] = json!("two"));
        assert_eq!(
            err.to_string(),
            "Instance demo/web: spec.cpus: invalid type: string \"two\", expected u32"
        );

        let err = instance_json_error(|v| v["spec"]["nics"][0] = json!({"fixedIp": "10.0.0.1"}));
        assert_eq!(
            err.to_string(),
            "Instance demo/web: spec.nics[0]: missing field \"network\""
        );

        let err = instance_json_error(|v| v["spec"]["powerState"] = json!("running"));
        assert_eq!(
            err.to_string(),
            "Instance demo/web: spec.powerState: unknown variant \"running\", expected one of \"Running\", \"Stopped\", \"Paused\", \"Suspended\""
        );

        let err = instance_json_error(|v| {
            v.as_object_mut().unwrap().remove("metadata");
            v["bogus"] = json!(1);
        });
        assert!(
            matches!(&err, ParseError::Field { object, path, .. } if object == "Instance <unnamed>" && path == "bogus"),
            "{err:?}"
        );
    }

    #[test]
    fn kind_errors() {
        let err = AnyObject::from_json_value(json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(err, ParseError::MissingKind);
        assert!(err
            .to_string()
            .starts_with("missing \"kind\" (one of Project, InstanceType,"));

        let err = AnyObject::from_json_value(json!({"kind": "Pod"})).unwrap_err();
        assert_eq!(
            err,
            ParseError::UnknownKind {
                kind: "Pod".into(),
                suggestion: None
            }
        );
        assert!(err
            .to_string()
            .starts_with("unknown kind \"Pod\" (one of Project,"));

        let err = AnyObject::from_json_value(json!({"kind": "instances"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown kind \"instances\" (did you mean \"Instance\"?)"
        );

        let err = AnyObject::from_json_value(json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an object with apiVersion, kind, metadata and spec, found a list"
        );
    }
}
