//! `corral apply`: makes the live state match manifests, one
//! `POST /v1/apply` per object in kind order, with client- or server-side
//! dry runs and `--prune` of applied objects that left the manifests.

use std::collections::{BTreeSet, HashSet};

use anyhow::Result;
use clap::{Args, ValueEnum};
use corral_api_types::selector::LabelSelector;
use corral_api_types::{Scope, KINDS};
use serde_json::Value;

use super::manifests::{self, Manifest};
use super::output::{name_of, str_at};
use super::{collection_path, item_path, reported, usage, ConnArgs, Ctx};
use crate::client::ClientError;

pub const AFTER_HELP: &str = "\
Objects are applied in dependency order (projects first, instances after \
their networks, volumes and images). Each prints `KIND/NAME created`, \
`configured` or `unchanged`.

--prune -l SELECTOR then deletes, in every project the manifests touched, \
objects matching SELECTOR that were created by apply (annotation \
corral/applied=true) and are no longer in the manifests.

Exit codes: 0 everything applied; 1 the server refused at least one object \
(e.g. 422 validation errors, printed one field per line) or the server is \
unreachable; 2 usage error, unreadable or unparsable manifests, or \
--dry-run=client validation errors (nothing is sent in these cases).";

/// Where a dry run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum DryRun {
    /// Really apply.
    #[default]
    None,
    /// Default and validate locally; nothing is sent.
    Client,
    /// The server validates and answers without writing.
    Server,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest file, directory (recursive) or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<String>,
    /// Delete applied objects matching -l that are not in the manifests.
    #[arg(long)]
    pub prune: bool,
    /// Apply only the manifests' objects matching this label selector
    /// (`app=web`, `tier in (a,b)`); with --prune, also what is pruned.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// `client`: validate locally only; `server`: validated by the server,
    /// nothing written.
    #[arg(long, value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Prints one line per field problem of a 422 answer, or the error.
pub fn print_object_error(source: &str, what: &str, e: &anyhow::Error) {
    if let Some(status) = e.downcast_ref::<ClientError>().and_then(|c| c.status()) {
        if !status.causes().is_empty() {
            for c in status.causes() {
                if c.field.is_empty() {
                    eprintln!("error: {source}: {what}: {}", c.message);
                } else {
                    eprintln!("error: {source}: {what}: {}: {}", c.field, c.message);
                }
            }
            return;
        }
        eprintln!("error: {source}: {what}: {status}");
        return;
    }
    eprintln!("error: {source}: {what}: {e:#}");
}

/// Client-side dry run: defaults and validation, no network.
fn validate_locally(manifests: &mut [Manifest], default_project: &str) -> Result<i32> {
    let mut failed = false;
    for m in manifests.iter_mut() {
        if let Some(p) = m.project(default_project) {
            m.object.meta_mut().project = p;
        }
        m.object.apply_defaults();
        let errors = m.object.validate();
        let what = m.object.display_name();
        if errors.is_empty() {
            println!(
                "{}/{} valid (dry run)",
                m.object.info().singular,
                m.object.name()
            );
        } else {
            failed = true;
            for e in &errors.0 {
                eprintln!("error: {}: {what}: {}: {}", m.source, e.path, e.reason);
            }
        }
    }
    if failed {
        Err(reported(2))
    } else {
        Ok(0)
    }
}

pub async fn run(args: ApplyArgs) -> Result<i32> {
    if args.prune && args.selector.is_none() {
        return Err(usage("--prune needs a label selector (-l)"));
    }
    let selector = match &args.selector {
        Some(s) => Some((
            s.clone(),
            LabelSelector::parse(s).map_err(|e| usage(e.to_string()))?,
        )),
        None => None,
    };
    let mut manifests = manifests::read(&args.files)?;
    if let Some((_, sel)) = &selector {
        // Like kubectl: only the manifests' objects that match are applied.
        manifests.retain(|m| sel.matches(&m.object.meta().labels));
    }
    manifests::sort_for_apply(&mut manifests);
    if args.dry_run == DryRun::Client {
        // No network: the project is the flag's or the config's.
        let default_project = match args.conn.project.clone() {
            Some(p) => p,
            None => crate::config::ClientConfig::load()
                .map(|c| c.project)
                .unwrap_or_default(),
        };
        let default_project = if default_project.is_empty() {
            "default".to_string()
        } else {
            default_project
        };
        return validate_locally(&mut manifests, &default_project);
    }
    let ctx = Ctx::from_conn(&args.conn)?;
    let needs_default = manifests
        .iter()
        .any(|m| m.object.scope() == Scope::Project && m.object.project().is_empty());
    let default_project = if needs_default {
        ctx.project().await?
    } else {
        ctx.project_flag().unwrap_or_default().to_string()
    };
    let dry = args.dry_run == DryRun::Server;
    let suffix = if dry { " (dry run)" } else { "" };

    let mut failed = false;
    // (kind, project, name) of everything applied, and the projects touched.
    let mut applied: HashSet<(&'static str, String, String)> = HashSet::new();
    let mut projects: BTreeSet<String> = BTreeSet::new();
    for m in &manifests {
        let info = m.object.info();
        let project = m.project(&default_project);
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(p) = &project {
            if m.object.project().is_empty() {
                query.push(("project", p));
            }
        }
        if dry {
            query.push(("dryRun", "All"));
        }
        let what = match &project {
            Some(p) => format!("{} {p}/{}", info.kind, m.object.name()),
            None => format!("{} {}", info.kind, m.object.name()),
        };
        let body = m.object.to_json_value();
        match ctx.client.post("/v1/apply", &query, &body).await {
            Ok(answer) => {
                let result = answer
                    .get("result")
                    .and_then(Value::as_str)
                    .unwrap_or("configured");
                println!("{}/{} {result}{suffix}", info.singular, m.object.name());
            }
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                failed = true;
                print_object_error(&m.source, &what, &e.into());
                continue;
            }
        }
        if let Some(p) = project {
            applied.insert((info.kind, p.clone(), m.object.name().to_string()));
            projects.insert(p);
        }
    }
    if let (true, Some((selector, _))) = (args.prune, selector) {
        if failed {
            eprintln!("warning: not pruning: some objects failed to apply");
        } else {
            if let Some(p) = ctx.project_flag() {
                projects.insert(p.to_string());
            }
            if prune(&ctx, &selector, &projects, &applied, dry).await? {
                failed = true;
            }
        }
    }
    if failed {
        Err(reported(1))
    } else {
        Ok(0)
    }
}

/// Deletes what apply created earlier and the manifests no longer have.
/// Returns whether some deletion failed.
async fn prune(
    ctx: &Ctx,
    selector: &str,
    projects: &BTreeSet<String>,
    applied: &HashSet<(&'static str, String, String)>,
    dry: bool,
) -> Result<bool> {
    let suffix = if dry { " (dry run)" } else { "" };
    let mut failed = false;
    // Reverse apply order: dependents before what they depend on.
    let kinds = KINDS
        .iter()
        .rev()
        .filter(|k| k.scope == Scope::Project && k.kind != "Event");
    for info in kinds {
        for project in projects {
            let path = collection_path(info, Some(project));
            let list = ctx
                .client
                .list_all(&path, &[("labelSelector", selector)])
                .await?;
            for obj in &list.items {
                let name = name_of(obj);
                if str_at(obj, "/metadata/annotations/corral~1applied") != Some("true")
                    || str_at(obj, "/metadata/deletionTimestamp").is_some()
                    || applied.contains(&(info.kind, project.clone(), name.to_string()))
                {
                    continue;
                }
                let query: &[(&str, &str)] = if dry { &[("dryRun", "All")] } else { &[] };
                match ctx
                    .client
                    .delete(&item_path(info, project, name), query)
                    .await
                {
                    Ok(_) => println!("{}/{name} pruned{suffix}", info.singular),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        failed = true;
                        eprintln!("error: pruning {} {project}/{name}: {e}", info.kind);
                    }
                }
            }
        }
    }
    Ok(failed)
}
