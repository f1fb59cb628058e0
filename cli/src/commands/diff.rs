//! `corral diff`: what `apply` would change. Each manifest object (after
//! defaulting) is compared with the live object's spec, labels and
//! annotations — server-owned metadata, status and the `corral/applied`
//! annotation are ignored — and printed as a unified diff of their YAML.

use anyhow::Result;
use clap::Args;
use corral_api_types::{AnyObject, Scope};
use serde_json::{json, Map, Value};

use super::manifests;
use super::output::to_yaml;
use super::{exit_code, item_path, print_error, ref_name, reported, ConnArgs, Ctx};
use crate::client::ClientError;

pub const AFTER_HELP: &str = "\
Headers are `--- live/KIND/NAME` and `+++ manifest/KIND/NAME`; an object \
that does not exist yet is diffed against nothing.

Exit codes (as kubectl diff): 0 no differences; 1 differences found; \
2 (or more) an error (unreadable or invalid manifests, server errors).";

#[derive(Args)]
pub struct DiffArgs {
    /// Manifest file, directory (recursive) or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// The part of an object that apply owns: apiVersion, kind, name,
/// project, labels, annotations (without `corral/applied`) and spec.
pub fn comparable(v: &Value) -> Value {
    let mut meta = Map::new();
    for key in ["name", "project"] {
        if let Some(x) = v.pointer(&format!("/metadata/{key}")) {
            if x.as_str().is_some_and(|s| !s.is_empty()) {
                meta.insert(key.into(), x.clone());
            }
        }
    }
    if let Some(Value::Object(l)) = v.pointer("/metadata/labels") {
        if !l.is_empty() {
            meta.insert("labels".into(), Value::Object(l.clone()));
        }
    }
    if let Some(Value::Object(a)) = v.pointer("/metadata/annotations") {
        let mut a = a.clone();
        a.remove("corral/applied");
        if !a.is_empty() {
            meta.insert("annotations".into(), Value::Object(a));
        }
    }
    json!({
        "apiVersion": v.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": v.get("kind").cloned().unwrap_or(Value::Null),
        "metadata": meta,
        "spec": v.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// The live object re-encoded through the typed model, so both sides are
/// serialised the same way (falls back to the raw JSON).
fn normalise(live: Value) -> Value {
    match AnyObject::from_json_value(live.clone()) {
        Ok(o) => o.to_json_value(),
        Err(_) => live,
    }
}

/// A unified diff of two texts, empty when they are equal.
pub fn unified(live: &str, manifest: &str, what: &str) -> String {
    if live == manifest {
        return String::new();
    }
    similar::TextDiff::from_lines(live, manifest)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{what}"), &format!("manifest/{what}"))
        .to_string()
}

pub async fn run(args: DiffArgs) -> Result<i32> {
    match diff(args).await {
        // Any error is > 1, so scripts can tell it from "differences".
        Err(e) if exit_code(&e) < 2 => {
            print_error(&e);
            Err(reported(2))
        }
        other => other,
    }
}

async fn diff(args: DiffArgs) -> Result<i32> {
    let mut ms = manifests::read(&args.files)?;
    manifests::sort_for_apply(&mut ms);
    let ctx = Ctx::from_conn(&args.conn)?;
    let default_project = if ms
        .iter()
        .any(|m| m.object.scope() == Scope::Project && m.object.project().is_empty())
    {
        ctx.project().await?
    } else {
        String::new()
    };
    let mut differs = false;
    let mut errors = false;
    for mut m in ms {
        let info = m.object.info();
        let project = m.project(&default_project);
        if let Some(p) = &project {
            m.object.meta_mut().project = p.clone();
        }
        m.object.apply_defaults();
        let desired = to_yaml(&comparable(&m.object.to_json_value()));
        let path = item_path(info, project.as_deref().unwrap_or(""), m.object.name());
        let live = match ctx.client.get_opt(&path).await {
            Ok(Some(live)) => to_yaml(&comparable(&normalise(live))),
            Ok(None) => String::new(),
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                errors = true;
                eprintln!("error: {}: {}: {e}", m.source, m.object.display_name());
                continue;
            }
        };
        let text = unified(&live, &desired, &ref_name(info, m.object.name()));
        if !text.is_empty() {
            differs = true;
            print!("{text}");
        }
    }
    if errors {
        Err(reported(2))
    } else if differs {
        Ok(1)
    } else {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_server_owned_fields() {
        let live = json!({
            "apiVersion": "corral/v1", "kind": "Network",
            "metadata": {"name": "lan", "project": "demo", "uid": "u", "resourceVersion": "7",
                         "generation": 2, "creationTimestamp": "2024-01-01T00:00:00Z",
                         "annotations": {"corral/applied": "true"}},
            "spec": {"cidr": "10.0.0.0/24"},
            "status": {"allocations": {}}
        });
        let manifest = json!({
            "apiVersion": "corral/v1", "kind": "Network",
            "metadata": {"name": "lan", "project": "demo"},
            "spec": {"cidr": "10.0.0.0/24"}
        });
        assert_eq!(comparable(&live), comparable(&manifest));
    }

    #[test]
    fn unified_diff_has_headers() {
        let d = unified("a: 1\nb: 2\n", "a: 1\nb: 3\n", "network/lan");
        assert!(
            d.starts_with("--- live/network/lan\n+++ manifest/network/lan\n"),
            "{d}"
        );
        assert!(d.contains("-b: 2\n+b: 3\n"), "{d}");
        assert_eq!(unified("x\n", "x\n", "n/x"), "");
    }
}
