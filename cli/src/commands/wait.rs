//! `corral wait`: blocks until objects have a condition, reach a phase or
//! are gone. Uses the watch API (`fieldSelector=metadata.name=NAME` from the
//! object's resourceVersion), re-reading the object whenever the stream
//! breaks, so nothing is missed and nothing is polled.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use corral_api_types::{KindInfo, Scope};
use serde_json::Value;
use tokio::time::Instant;

use super::output::{condition_status, str_at};
use super::{
    collection_path, parse_duration, parse_targets, ref_name, reported, usage, ConnArgs, Ctx,
};
use crate::client::{Client, ClientError, WatcherEvent};

#[derive(Args)]
pub struct WaitArgs {
    /// Objects as KIND/NAME (`instance/web`, `vol/data`).
    #[arg(value_name = "KIND/NAME", required = true)]
    pub targets: Vec<String>,
    /// `condition=Ready`, `condition=Ready=False`, `phase=Running` or `delete`.
    #[arg(long = "for", value_name = "CONDITION")]
    pub for_: String,
    /// Give up after this long (`30s`, `5m`, `1h`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// `status.conditions[type]` has this status.
    Condition { type_: String, status: String },
    /// `status.phase` equals this.
    Phase(String),
    /// GET answers 404.
    Delete,
}

impl Until {
    pub fn parse(s: &str) -> Result<Until, String> {
        if s == "delete" {
            return Ok(Until::Delete);
        }
        if let Some(rest) = s.strip_prefix("condition=") {
            let (type_, status) = match rest.split_once('=') {
                Some((t, st)) => (t, st),
                None => (rest, "True"),
            };
            let status = match status.to_ascii_lowercase().as_str() {
                "true" => "True",
                "false" => "False",
                "unknown" => "Unknown",
                _ => return Err(format!("{s:?}: the status must be True, False or Unknown")),
            };
            if type_.is_empty() {
                return Err(format!("{s:?}: name the condition (condition=Ready)"));
            }
            return Ok(Until::Condition {
                type_: type_.to_string(),
                status: status.to_string(),
            });
        }
        if let Some(phase) = s.strip_prefix("phase=") {
            if phase.is_empty() {
                return Err(format!("{s:?}: name the phase (phase=Running)"));
            }
            return Ok(Until::Phase(phase.to_string()));
        }
        Err(format!(
            "--for={s}: expected condition=TYPE[=STATUS], phase=PHASE or delete"
        ))
    }

    fn met(&self, obj: Option<&Value>) -> bool {
        match (self, obj) {
            (Until::Delete, None) => true,
            (Until::Delete, Some(_)) | (_, None) => false,
            (Until::Phase(p), Some(o)) => str_at(o, "/status/phase") == Some(p.as_str()),
            (Until::Condition { type_, status }, Some(o)) => {
                condition_status(o, type_) == Some(status.as_str())
            }
        }
    }

    /// Where the object is, for the timeout message.
    fn describe(&self, obj: Option<&Value>) -> String {
        match (self, obj) {
            (Until::Delete, _) => "it still exists".into(),
            (_, None) => "it does not exist".into(),
            (Until::Phase(_), Some(o)) => match str_at(o, "/status/phase") {
                Some(p) => format!("phase is {p}"),
                None => "no status yet".into(),
            },
            (Until::Condition { type_, .. }, Some(o)) => match condition_status(o, type_) {
                Some(s) => format!("condition {type_} is {s}"),
                None => format!("condition {type_} not reported yet"),
            },
        }
    }
}

/// Why a wait ended without success.
enum WaitError {
    Timeout(String),
    Failed(anyhow::Error),
}

async fn wait_loop(
    client: &Client,
    info: &KindInfo,
    project: &str,
    name: &str,
    until: &Until,
    last: &mut Option<Value>,
) -> Result<()> {
    let list_path = collection_path(info, (info.scope == Scope::Project).then_some(project));
    let selector = format!("metadata.name={name}");
    // The one list → watch → relist loop, narrowed to the object.
    let mut watcher = client.watcher(&list_path, &[("fieldSelector", selector.as_str())]);
    let mut transport_failures = 0u32;
    loop {
        let event = match watcher.next().await {
            Ok(e) => e,
            Err(e @ ClientError::Api(_)) => return Err(e.into()),
            Err(e) => {
                transport_failures += 1;
                if transport_failures > 10 {
                    return Err(e.into());
                }
                continue;
            }
        };
        transport_failures = 0;
        let deleted = match event {
            WatcherEvent::Restarted(items) => {
                *last = items
                    .into_iter()
                    .find(|o| str_at(o, "/metadata/name") == Some(name));
                if last.is_none() {
                    if until.met(None) {
                        return Ok(());
                    }
                    return Err(anyhow::anyhow!("{} {name:?} not found", info.plural));
                }
                false
            }
            WatcherEvent::Added(o) | WatcherEvent::Modified(o) => {
                if str_at(&o, "/metadata/name") != Some(name) {
                    continue;
                }
                *last = Some(o);
                false
            }
            WatcherEvent::Deleted(o) => str_at(&o, "/metadata/name") == Some(name),
        };
        if deleted {
            *last = None;
            if until.met(None) {
                return Ok(());
            }
            return Err(anyhow::anyhow!(
                "{} was deleted while waiting",
                ref_name(info, name)
            ));
        }
        if until.met(last.as_ref()) {
            return Ok(());
        }
    }
}

async fn wait_one(
    client: &Client,
    info: &KindInfo,
    project: &str,
    name: &str,
    until: &Until,
    deadline: Instant,
) -> Result<(), WaitError> {
    let mut last = None;
    let outcome = tokio::time::timeout_at(
        deadline,
        wait_loop(client, info, project, name, until, &mut last),
    )
    .await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WaitError::Failed(e)),
        Err(_) => Err(WaitError::Timeout(format!(
            "timed out waiting for {} ({})",
            ref_name(info, name),
            until.describe(last.as_ref())
        ))),
    }
}

/// Waits for every target, sharing one deadline. Prints `KIND/NAME
/// <done>` for each success and an error line for each failure; returns
/// whether all succeeded.
pub async fn wait_all(
    ctx: &Ctx,
    targets: &[(&'static KindInfo, String)],
    project: &str,
    until: &Until,
    timeout: Duration,
    done: &str,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut ok = true;
    for (info, name) in targets {
        match wait_one(&ctx.client, info, project, name, until, deadline).await {
            Ok(()) => {
                if !done.is_empty() {
                    println!("{} {done}", ref_name(info, name));
                }
            }
            Err(WaitError::Timeout(m)) => {
                ok = false;
                eprintln!("error: {m}");
            }
            Err(WaitError::Failed(e)) => {
                ok = false;
                eprintln!("error: {e:#}");
            }
        }
    }
    ok
}

pub async fn run(args: WaitArgs) -> Result<i32> {
    let until = Until::parse(&args.for_).map_err(usage)?;
    let targets = parse_targets(None, &args.targets)?;
    let ctx = Ctx::from_conn(&args.conn)?;
    let project = if targets.iter().any(|(i, _)| i.scope == Scope::Project) {
        ctx.project().await?
    } else {
        String::new()
    };
    let done = if until == Until::Delete {
        "deleted"
    } else {
        "condition met"
    };
    if wait_all(&ctx, &targets, &project, &until, args.timeout, done).await {
        Ok(0)
    } else {
        Err(reported(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_conditions() {
        assert_eq!(Until::parse("delete"), Ok(Until::Delete));
        assert_eq!(
            Until::parse("condition=Ready"),
            Ok(Until::Condition {
                type_: "Ready".into(),
                status: "True".into()
            })
        );
        assert_eq!(
            Until::parse("condition=Ready=false"),
            Ok(Until::Condition {
                type_: "Ready".into(),
                status: "False".into()
            })
        );
        assert_eq!(
            Until::parse("phase=Running"),
            Ok(Until::Phase("Running".into()))
        );
        assert!(Until::parse("ready").is_err());
        assert!(Until::parse("condition=").is_err());
        assert!(Until::parse("condition=Ready=maybe").is_err());
        assert!(Until::parse("phase=").is_err());
    }

    #[test]
    fn matches_and_describes() {
        let o = json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}});
        let phase = Until::Phase("Running".into());
        assert!(!phase.met(Some(&o)));
        assert_eq!(phase.describe(Some(&o)), "phase is Pending");
        assert_eq!(phase.describe(Some(&json!({}))), "no status yet");
        let ready = Until::parse("condition=Ready").unwrap();
        assert!(!ready.met(Some(&o)));
        assert_eq!(ready.describe(Some(&o)), "condition Ready is False");
        assert!(Until::parse("condition=Ready=False").unwrap().met(Some(&o)));
        assert!(Until::Delete.met(None));
        assert!(!Until::Delete.met(Some(&o)));
    }
}
