//! `corral describe`: one object for humans — identity, labels and
//! annotations, spec and status as YAML, a conditions table and the
//! object's events.

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use corral_api_types::{KindInfo, Scope};
use serde_json::Value;

use super::output::{
    age_at, human_duration, indent, render_table, str_at, text_at, time_at, to_yaml, NONE,
};
use super::{collection_path, item_path, parse_targets, reported, resolve_kind, ConnArgs, Ctx};
use crate::client::ClientError;

#[derive(Args)]
pub struct DescribeArgs {
    /// Kind (`instance`, `net`, ...), or KIND/NAME.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Names (or more KIND/NAME).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: DescribeArgs) -> Result<i32> {
    let targets = if args.kind.contains('/') {
        let mut all = vec![args.kind.clone()];
        all.extend(args.names.iter().cloned());
        parse_targets(None, &all)?
    } else {
        let info = resolve_kind(&args.kind)?;
        if args.names.is_empty() {
            return Err(super::usage(format!(
                "name the {} to describe: corral describe {} NAME",
                info.singular, info.singular
            )));
        }
        parse_targets(Some(info), &args.names)?
    };
    let ctx = Ctx::from_conn(&args.conn)?;
    let project = if targets.iter().any(|(i, _)| i.scope == Scope::Project) {
        ctx.project().await?
    } else {
        String::new()
    };
    let mut failed = false;
    for (i, (info, name)) in targets.iter().enumerate() {
        let obj = match ctx.client.get(&item_path(info, &project, name), &[]).await {
            Ok(o) => o,
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
                continue;
            }
        };
        let events = events_for(&ctx, info, &obj).await;
        if i > 0 {
            println!();
        }
        print!("{}", render(info, &obj, events.as_deref(), Utc::now()));
    }
    if failed {
        Err(reported(1))
    } else {
        Ok(0)
    }
}

/// The object's events, oldest first; `None` when they cannot be listed.
async fn events_for(ctx: &Ctx, info: &KindInfo, obj: &Value) -> Option<Vec<Value>> {
    let events_kind = corral_api_types::kind_info("events")?;
    let path = match info.scope {
        Scope::Project => collection_path(events_kind, Some(str_at(obj, "/metadata/project")?)),
        Scope::Cluster => collection_path(events_kind, None),
    };
    let list = ctx.client.list_all(&path, &[]).await.ok()?;
    let name = str_at(obj, "/metadata/name")?;
    let uid = str_at(obj, "/metadata/uid");
    let mut events: Vec<Value> = list
        .items
        .into_iter()
        .filter(|e| {
            str_at(e, "/spec/involvedObject/kind") == Some(info.kind)
                && str_at(e, "/spec/involvedObject/name") == Some(name)
                && match (uid, str_at(e, "/spec/involvedObject/uid")) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        })
        .collect();
    events.sort_by_key(last_seen);
    Some(events)
}

fn last_seen(e: &Value) -> Option<DateTime<Utc>> {
    time_at(e, "/spec/lastTimestamp").or_else(|| time_at(e, "/metadata/creationTimestamp"))
}

fn map_lines(v: Option<&Value>) -> String {
    let Some(Value::Object(m)) = v else {
        return NONE.to_string();
    };
    if m.is_empty() {
        return NONE.to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n               ")
}

/// The description of one object.
pub fn render(
    info: &KindInfo,
    obj: &Value,
    events: Option<&[Value]>,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        out.push_str(&format!("{:<15}{value}\n", format!("{label}:")));
    };
    field("Name", text_at(obj, "/metadata/name"));
    field("Kind", info.kind.to_string());
    if info.scope == Scope::Project {
        field("Project", text_at(obj, "/metadata/project"));
    }
    field("Labels", map_lines(obj.pointer("/metadata/labels")));
    field(
        "Annotations",
        map_lines(obj.pointer("/metadata/annotations")),
    );
    if let Some(t) = str_at(obj, "/metadata/creationTimestamp") {
        field(
            "Created",
            format!(
                "{t} ({} ago)",
                age_at(obj, "/metadata/creationTimestamp", now)
            ),
        );
    }
    if let Some(t) = str_at(obj, "/metadata/deletionTimestamp") {
        field("Deleting since", t.to_string());
    }
    if let Some(f) = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
    {
        let f: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
        field("Finalizers", f.join(", "));
    }
    if let Some(owners) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    {
        let o: Vec<String> = owners
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    text_at(o, "/kind").to_ascii_lowercase(),
                    text_at(o, "/name")
                )
            })
            .collect();
        field("Owners", o.join(", "));
    }
    field("Generation", text_at(obj, "/metadata/generation"));
    field("Resource Ver", text_at(obj, "/metadata/resourceVersion"));

    match obj.get("spec") {
        Some(spec) if spec.as_object().is_some_and(|m| !m.is_empty()) => {
            out.push_str("Spec:\n");
            out.push_str(&indent(&to_yaml(spec), 2));
            out.push('\n');
        }
        _ => out.push_str("Spec:          <none>\n"),
    }

    let mut status = obj.get("status").cloned().unwrap_or(Value::Null);
    let conditions = status
        .as_object_mut()
        .and_then(|m| m.remove("conditions"))
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default();
    match &status {
        Value::Object(m) if !m.is_empty() => {
            out.push_str("Status:\n");
            out.push_str(&indent(&to_yaml(&status), 2));
            out.push('\n');
        }
        _ => out.push_str("Status:        <none>\n"),
    }

    if conditions.is_empty() {
        out.push_str("Conditions:    <none>\n");
    } else {
        out.push_str("Conditions:\n");
        let headers: Vec<String> = ["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows: Vec<Vec<String>> = conditions
            .iter()
            .map(|c| {
                vec![
                    text_at(c, "/type"),
                    text_at(c, "/status"),
                    text_at(c, "/reason"),
                    text_at(c, "/message"),
                    if time_at(c, "/lastTransitionTime").is_some() {
                        age_at(c, "/lastTransitionTime", now)
                    } else {
                        NONE.to_string()
                    },
                ]
            })
            .collect();
        out.push_str(&indent(&render_table(&headers, &rows), 2));
        out.push('\n');
    }

    match events {
        None => out.push_str("Events:        <unavailable>\n"),
        Some([]) => out.push_str("Events:        <none>\n"),
        Some(events) => {
            out.push_str("Events:\n");
            let headers: Vec<String> = ["TYPE", "REASON", "AGE", "MESSAGE"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    let mut age = last_seen(e)
                        .map(|t| human_duration(now - t))
                        .unwrap_or_else(|| NONE.to_string());
                    let count = e
                        .pointer("/spec/count")
                        .and_then(Value::as_u64)
                        .unwrap_or(1);
                    if count > 1 {
                        let first = time_at(e, "/spec/firstTimestamp")
                            .or_else(|| time_at(e, "/metadata/creationTimestamp"));
                        age = match first {
                            Some(f) => format!("{age} (x{count} over {})", human_duration(now - f)),
                            None => format!("{age} (x{count})"),
                        };
                    }
                    vec![
                        text_at(e, "/spec/type"),
                        text_at(e, "/spec/reason"),
                        age,
                        text_at(e, "/spec/message"),
                    ]
                })
                .collect();
            out.push_str(&indent(&render_table(&headers, &rows), 2));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_section() {
        let info = corral_api_types::kind_info("instance").unwrap();
        let now = Utc::now();
        let obj = json!({
            "metadata": {"name": "web", "project": "demo", "labels": {"app": "web"},
                         "creationTimestamp": now.to_rfc3339(), "generation": 2},
            "spec": {"image": "tiny"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "reason": "Booted", "message": "up",
                 "lastTransitionTime": now.to_rfc3339()}]}
        });
        let events = vec![json!({"spec": {"type": "Normal", "reason": "Scheduled",
            "message": "bound to node n1", "count": 1, "lastTimestamp": now.to_rfc3339(),
            "involvedObject": {"kind": "Instance", "name": "web"}}})];
        let text = render(info, &obj, Some(&events), now);
        assert!(text.contains("Name:          web\n"), "{text}");
        assert!(text.contains("Project:       demo\n"), "{text}");
        assert!(text.contains("Labels:        app=web\n"), "{text}");
        assert!(text.contains("Spec:\n  image: tiny\n"), "{text}");
        assert!(text.contains("Status:\n  phase: Running\n"), "{text}");
        assert!(
            text.contains("TYPE    STATUS   REASON   MESSAGE   AGE"),
            "{text}"
        );
        assert!(
            text.contains("Ready   True     Booted   up        0s"),
            "{text}"
        );
        assert!(
            text.contains("Normal   Scheduled   0s    bound to node n1"),
            "{text}"
        );
        let text = render(info, &json!({"metadata": {"name": "x"}}), Some(&[]), now);
        assert!(text.contains("Events:        <none>"), "{text}");
        assert!(text.contains("Conditions:    <none>"), "{text}");
    }
}
