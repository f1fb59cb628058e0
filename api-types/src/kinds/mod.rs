//! One module per kind. Each declares its spec and status types with
//! [`resource!`](crate::resource), and implements [`Validate`](crate::Validate)
//! and [`Defaults`](crate::Defaults).

pub mod address;
pub mod event;
pub mod image;
pub mod instance;
pub mod instance_type;
pub mod keypair;
pub mod network;
pub mod node;
pub mod project;
pub mod security_group;
pub mod snapshot;
pub mod volume;

pub use address::*;
pub use event::*;
pub use image::*;
pub use instance::*;
pub use instance_type::*;
pub use keypair::*;
pub use network::*;
pub use node::*;
pub use project::*;
pub use security_group::*;
pub use snapshot::*;
pub use volume::*;

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

pub(crate) fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn default_true() -> bool {
    true
}

/// Round-trip and wire-name helpers shared by the kinds' tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// YAML -> T -> YAML -> T and T -> JSON -> T must all agree, and the
    /// re-serialised YAML must be stable.
    #[track_caller]
    pub fn round_trip<T>(yaml: &str) -> T
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let first: T = yaml_serde::from_str(yaml).expect("parse YAML");
        let out = yaml_serde::to_string(&first).expect("write YAML");
        let second: T = yaml_serde::from_str(&out).expect("re-parse YAML");
        assert_eq!(first, second, "YAML round trip changed the object:\n{out}");
        assert_eq!(
            out,
            yaml_serde::to_string(&second).unwrap(),
            "YAML output unstable"
        );
        let json = serde_json::to_string(&first).expect("write JSON");
        let third: T = serde_json::from_str(&json).expect("re-parse JSON");
        assert_eq!(first, third, "JSON round trip changed the object: {json}");
        first
    }

    /// [`round_trip`] of an `R` written without the `apiVersion` and `kind`
    /// lines, which its type implies: `rest` is its metadata, spec and status.
    #[track_caller]
    pub fn round_trip_kind<R: crate::Resource + PartialEq>(rest: &str) -> R {
        round_trip(&format!(
            "apiVersion: {}\nkind: {}\n{rest}",
            crate::API_VERSION,
            R::KIND
        ))
    }

    /// Each value is written as its name, and read back from it.
    #[track_caller]
    pub fn assert_wire_names<T>(names: &[(&str, T)])
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        for (name, value) in names {
            assert_eq!(serde_json::to_value(value).unwrap(), *name);
            assert_eq!(&serde_json::from_value::<T>((*name).into()).unwrap(), value);
        }
    }
}

#[cfg(test)]
mod update_tests;
