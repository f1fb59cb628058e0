//! `corral delete`: by kind and names, or every object of manifests (in
//! reverse apply order), optionally waiting until they are really gone
//! (objects with finalizers linger until their controllers let go). A
//! Project deleted together with objects in it waits for them first: only
//! an empty project can be deleted.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use corral_api_types::{KindInfo, Scope};

use super::manifests;
use super::wait::{wait_all, Until};
use super::{item_path, parse_duration, parse_targets, ref_name, reported, resolve_kind, usage};
use super::{ConnArgs, Ctx};
use crate::client::ClientError;

#[derive(Args)]
pub struct DeleteArgs {
    /// Kind (`instance`, `net`, ...), or KIND/NAME.
    #[arg(value_name = "KIND", required_unless_present = "files")]
    pub kind: Option<String>,
    /// Names (or more KIND/NAME).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Delete the objects of these manifests (file, directory or `-`).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Wait until the objects are gone.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (`60s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Objects that do not exist are not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: DeleteArgs) -> Result<i32> {
    // (kind, project or "" for cluster kinds, name)
    let mut targets: Vec<(&'static KindInfo, Option<String>, String)> = Vec::new();
    if !args.files.is_empty() {
        if args.kind.is_some() {
            return Err(usage("give either KIND NAME... or -f, not both"));
        }
        let mut ms = manifests::read(&args.files)?;
        manifests::sort_for_apply(&mut ms);
        ms.reverse();
        for m in ms {
            let project = (!m.object.project().is_empty()).then(|| m.object.project().to_string());
            targets.push((m.object.info(), project, m.object.name().to_string()));
        }
    } else {
        let kind = args.kind.clone().unwrap_or_default();
        let parsed = if kind.contains('/') {
            let mut all = vec![kind];
            all.extend(args.names.iter().cloned());
            parse_targets(None, &all)?
        } else {
            let info = resolve_kind(&kind)?;
            if args.names.is_empty() {
                return Err(usage(format!(
                    "name the {} to delete: corral delete {} NAME",
                    info.plural, info.singular
                )));
            }
            parse_targets(Some(info), &args.names)?
        };
        targets.extend(parsed.into_iter().map(|(i, n)| (i, None, n)));
    }
    // Projects last, whatever order the manifests list them in: a project
    // is deleted only once what was deleted in it is gone.
    targets.sort_by_key(|(i, _, _)| i.kind == "Project");
    let ctx = Ctx::from_conn(&args.conn)?;
    let default_project = if targets
        .iter()
        .any(|(i, p, _)| i.scope == Scope::Project && p.is_none())
    {
        ctx.project().await?
    } else {
        String::new()
    };
    let mut failed = false;
    let mut deleted: Vec<(&'static KindInfo, String, String)> = Vec::new();
    for (info, project, name) in targets {
        let project = match info.scope {
            Scope::Project => project.unwrap_or_else(|| default_project.clone()),
            Scope::Cluster => String::new(),
        };
        // A project is deleted only when empty: what was just deleted in
        // it (instances finishing their termination) goes first.
        if info.kind == "Project" {
            let group: Vec<(&'static KindInfo, String)> = deleted
                .iter()
                .filter(|d| d.1 == name)
                .map(|d| (d.0, d.2.clone()))
                .collect();
            if !group.is_empty()
                && !wait_all(&ctx, &group, &name, &Until::Delete, args.timeout, "").await
            {
                failed = true;
            }
        }
        match ctx
            .client
            .delete(&item_path(info, &project, &name), &[])
            .await
        {
            Ok(_) => {
                println!("{} deleted", ref_name(info, &name));
                deleted.push((info, project, name));
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
    }
    if args.wait && !deleted.is_empty() {
        // One deadline for all; each project waited for in turn.
        let deadline = tokio::time::Instant::now() + args.timeout;
        let mut projects: Vec<String> = deleted.iter().map(|d| d.1.clone()).collect();
        projects.sort();
        projects.dedup();
        for project in projects {
            let group: Vec<(&'static KindInfo, String)> = deleted
                .iter()
                .filter(|d| d.1 == project)
                .map(|d| (d.0, d.2.clone()))
                .collect();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !wait_all(&ctx, &group, &project, &Until::Delete, left, "").await {
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
