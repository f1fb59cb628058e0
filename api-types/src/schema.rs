//! JSON Schemas for editors (checked in under `manifests/schemas/`).

use crate::any::schema_of;
use crate::{KindInfo, API_VERSION, KINDS};

fn render(info: &KindInfo) -> String {
    let mut value = schema_of(info.kind).to_value();
    // Editors tell kinds apart by these: pin them.
    value["properties"]["apiVersion"]["const"] = API_VERSION.into();
    value["properties"]["kind"]["const"] = info.kind.into();
    // Stable key order whatever serde_json features are enabled.
    value.sort_all_objects();
    let mut text = serde_json::to_string_pretty(&value).expect("schemas serialise");
    text.push('\n');
    text
}

/// One JSON Schema per kind: `(file name, pretty JSON)`, e.g.
/// `("instance.json", "{ ... }")`, in [`KINDS`] order.
pub fn json_schemas() -> Vec<(String, String)> {
    KINDS
        .iter()
        .map(|k| (k.schema_file_name(), render(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGENERATE: &str =
        "run `cargo run -p corral-api-types --bin gen-schemas` and commit the result";

    /// The schemas checked in under manifests/schemas/ are exactly the
    /// generated ones: none missing, none stale, none extra.
    #[test]
    fn checked_in_schemas_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/schemas");
        let generated = json_schemas();
        for (name, text) in &generated {
            let path = dir.join(name);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}): {REGENERATE}", path.display()));
            assert!(
                on_disk == *text,
                "{} is out of date: {REGENERATE}",
                path.display()
            );
        }
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}: {REGENERATE}", dir.display()));
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                generated.iter().any(|(n, _)| *n == name),
                "{} is not a generated schema: {REGENERATE} (it removes stale files)",
                dir.join(&name).display()
            );
        }
    }

    #[test]
    fn schemas_pin_kind_and_reject_unknown_fields() {
        let schemas = json_schemas();
        assert_eq!(schemas.len(), KINDS.len());
        for ((name, text), info) in schemas.iter().zip(KINDS) {
            assert_eq!(*name, info.schema_file_name());
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["title"], info.kind, "{name}");
            assert_eq!(v["properties"]["kind"]["const"], info.kind, "{name}");
            assert_eq!(v["properties"]["apiVersion"]["const"], API_VERSION);
            assert_eq!(v["additionalProperties"], false, "{name}");
            let spec_def = format!("{}Spec", info.kind);
            assert_eq!(
                v["$defs"][&spec_def]["additionalProperties"], false,
                "{name}"
            );
        }
        let (_, inst) = schemas.iter().find(|(n, _)| n == "instance.json").unwrap();
        let inst: serde_json::Value = serde_json::from_str(inst).unwrap();
        assert_eq!(
            inst["$defs"]["InstanceSpec"]["properties"]["image"]["description"],
            "Name of the Image to boot from. Exactly one of `image` and\n`bootVolume`."
        );
    }
}
