//! `corral get`: lists (following `continue` tokens) or named objects as
//! kubectl-style tables, YAML, JSON or `kind/name`; `-w` streams a watch.

use anyhow::Result;
use chrono::Utc;
use clap::{Args, ValueEnum};
use corral_api_types::selector::{FieldSelector, LabelSelector};
use corral_api_types::{KindInfo, Scope, API_VERSION};
use serde_json::{json, Value};

use super::output::{self, columns, name_of, project_of, render_table};
use super::{
    collection_path, item_path, parse_targets, ref_name, reported, resolve_kind, usage, ConnArgs,
    Ctx,
};
use crate::client::{ClientError, WatcherEvent};

/// `-o`: how objects are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The table with more columns.
    Wide,
    Yaml,
    Json,
    /// `kind/name`, one a line.
    Name,
}

#[derive(Args)]
pub struct GetArgs {
    /// Kind (`instances`, `instance`, `inst`, ...), several as
    /// `instances,networks`, or KIND/NAME.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Names (or more KIND/NAME); all objects when none.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Label selector (`app=web`, `tier in (a,b)`, `!legacy`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Field selector (`status.phase=Running`, `metadata.name!=x`).
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    /// List across every project (admin).
    #[arg(short = 'A', long)]
    pub all_projects: bool,
    /// After listing, print changes as they happen (until Ctrl-C).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With --watch: show each event's type (ADDED, MODIFIED, DELETED).
    #[arg(long, requires = "watch")]
    pub output_watch_events: bool,
    /// Omit the table header.
    #[arg(long)]
    pub no_headers: bool,
    /// List in pages of this many objects (0: all in one answer).
    #[arg(long, default_value_t = crate::client::PAGE_SIZE, value_name = "N")]
    pub chunk_size: usize,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Prints objects of one kind in the chosen format.
pub struct Printer {
    pub info: &'static KindInfo,
    pub format: Option<OutputFormat>,
    /// Adds a PROJECT column.
    pub with_project: bool,
    pub no_headers: bool,
}

impl Printer {
    fn headers(&self) -> Vec<String> {
        let wide = self.format == Some(OutputFormat::Wide);
        let mut h: Vec<String> = Vec::new();
        if self.with_project {
            h.push("PROJECT".into());
        }
        h.extend(
            columns(self.info, wide)
                .iter()
                .map(|c| c.header.to_string()),
        );
        h
    }

    fn row(&self, obj: &Value) -> Vec<String> {
        let wide = self.format == Some(OutputFormat::Wide);
        let now = Utc::now();
        let mut r = Vec::new();
        if self.with_project {
            r.push(project_of(obj).to_string());
        }
        r.extend(columns(self.info, wide).iter().map(|c| (c.cell)(obj, now)));
        r
    }

    /// A whole set at once; `single` prints a lone object bare in
    /// YAML/JSON rather than in a `List`.
    pub fn print_all(&self, items: &[Value], single: bool) -> String {
        match self.format {
            None | Some(OutputFormat::Wide) => {
                let rows: Vec<Vec<String>> = items.iter().map(|o| self.row(o)).collect();
                if self.no_headers {
                    let t = render_table(&self.headers(), &rows);
                    t.split_once('\n')
                        .map(|x| x.1.to_string())
                        .unwrap_or_default()
                } else {
                    render_table(&self.headers(), &rows)
                }
            }
            Some(OutputFormat::Name) => items
                .iter()
                .map(|o| format!("{}\n", ref_name(self.info, name_of(o))))
                .collect(),
            Some(OutputFormat::Json) | Some(OutputFormat::Yaml) => {
                let v = if single && items.len() == 1 {
                    items[0].clone()
                } else {
                    json!({"apiVersion": API_VERSION, "kind": "List", "items": items})
                };
                if self.format == Some(OutputFormat::Json) {
                    output::to_json(&v)
                } else {
                    output::to_yaml(&v)
                }
            }
        }
    }
}

pub async fn run(args: GetArgs) -> Result<i32> {
    if let Some(s) = &args.selector {
        LabelSelector::parse(s).map_err(|e| usage(e.to_string()))?;
    }
    if let Some(s) = &args.field_selector {
        FieldSelector::parse(s).map_err(|e| usage(e.to_string()))?;
    }
    // `get instance/web network/lan`, or `get instances web db`.
    let targets = if args.kind.contains('/') {
        let mut all = vec![args.kind.clone()];
        all.extend(args.names.iter().cloned());
        Some(parse_targets(None, &all)?)
    } else if args.kind.contains(',') {
        if !args.names.is_empty() || args.watch {
            return Err(usage(
                "several kinds (KIND,KIND) can only be listed, without names or --watch",
            ));
        }
        None
    } else {
        let info = resolve_kind(&args.kind)?;
        if args.names.is_empty() {
            None
        } else {
            Some(parse_targets(Some(info), &args.names)?)
        }
    };
    let ctx = Ctx::from_conn(&args.conn)?;
    if args.watch {
        let (info, name) = match &targets {
            None => (resolve_kind(&args.kind)?, None),
            Some(t) if t.len() == 1 => (t[0].0, Some(t[0].1.clone())),
            Some(_) => return Err(usage("--watch takes at most one name")),
        };
        return watch(&ctx, &args, info, name).await;
    }
    match targets {
        None => {
            let kinds = args
                .kind
                .split(',')
                .filter(|k| !k.is_empty())
                .map(resolve_kind)
                .collect::<Result<Vec<_>>>()?;
            if kinds.is_empty() {
                return Err(usage("name a kind"));
            }
            list(&ctx, &args, &kinds).await
        }
        Some(targets) => {
            if args.all_projects {
                return Err(usage("-A/--all-projects cannot be used with names"));
            }
            named(&ctx, &args, &targets).await
        }
    }
}

/// Lists one or more kinds (`instances,networks`).
async fn list(ctx: &Ctx, args: &GetArgs, kinds: &[&'static KindInfo]) -> Result<i32> {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &args.selector {
        query.push(("labelSelector", s));
    }
    if let Some(s) = &args.field_selector {
        query.push(("fieldSelector", s));
    }
    let table = matches!(args.output, None | Some(OutputFormat::Wide));
    let mut all_items: Vec<Value> = Vec::new();
    let mut printed_table = false;
    let mut empty_in: Option<Option<String>> = None;
    for info in kinds {
        let project = match info.scope {
            Scope::Project if !args.all_projects => Some(ctx.project().await?),
            _ => None,
        };
        let path = collection_path(info, project.as_deref());
        let list = ctx
            .client
            .list_paged(&path, &query, args.chunk_size)
            .await?;
        if list.items.is_empty() {
            empty_in.get_or_insert(project);
            continue;
        }
        let printer = Printer {
            info,
            format: args.output,
            with_project: args.all_projects && info.scope == Scope::Project,
            no_headers: args.no_headers,
        };
        match args.output {
            Some(OutputFormat::Json | OutputFormat::Yaml) => all_items.extend(list.items),
            _ => {
                if printed_table && table {
                    println!();
                }
                print!("{}", printer.print_all(&list.items, false));
                printed_table = true;
            }
        }
    }
    if matches!(args.output, Some(OutputFormat::Json | OutputFormat::Yaml)) {
        let printer = Printer {
            info: kinds[0],
            format: args.output,
            with_project: false,
            no_headers: args.no_headers,
        };
        print!("{}", printer.print_all(&all_items, false));
    } else if !printed_table && table {
        match empty_in.flatten() {
            Some(p) => eprintln!("No resources found in project {p}."),
            None => eprintln!("No resources found."),
        }
    }
    Ok(0)
}

async fn named(ctx: &Ctx, args: &GetArgs, targets: &[(&'static KindInfo, String)]) -> Result<i32> {
    let needs_project = targets.iter().any(|(i, _)| i.scope == Scope::Project);
    let project = if needs_project {
        ctx.project().await?
    } else {
        String::new()
    };
    let mut failed = false;
    // Objects grouped by kind, in the order asked.
    let mut groups: Vec<(&'static KindInfo, Vec<Value>)> = Vec::new();
    for (info, name) in targets {
        match ctx.client.get(&item_path(info, &project, name), &[]).await {
            Ok(obj) => match groups.iter_mut().find(|(i, _)| i.kind == info.kind) {
                Some((_, objs)) => objs.push(obj),
                None => groups.push((info, vec![obj])),
            },
            Err(e @ ClientError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
    }
    let single = targets.len() == 1;
    let structured = matches!(args.output, Some(OutputFormat::Json | OutputFormat::Yaml));
    if structured && groups.len() > 1 {
        // One List of every kind asked.
        let items: Vec<Value> = groups.into_iter().flat_map(|(_, o)| o).collect();
        let printer = Printer {
            info: targets[0].0,
            format: args.output,
            with_project: false,
            no_headers: args.no_headers,
        };
        print!("{}", printer.print_all(&items, false));
    } else {
        for (i, (info, objs)) in groups.iter().enumerate() {
            if i > 0 && !structured && args.output != Some(OutputFormat::Name) {
                println!();
            }
            let printer = Printer {
                info,
                format: args.output,
                with_project: false,
                no_headers: args.no_headers,
            };
            print!("{}", printer.print_all(objs, single));
        }
    }
    if failed {
        Err(reported(1))
    } else {
        Ok(0)
    }
}

/// Column-aligned rows printed one at a time, widths growing as needed.
struct StreamTable {
    widths: Vec<usize>,
}

impl StreamTable {
    fn line(&mut self, cells: &[String]) -> String {
        if self.widths.len() < cells.len() {
            self.widths.resize(cells.len(), 0);
        }
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let n = c.chars().count();
            self.widths[i] = self.widths[i].max(n);
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(self.widths[i] - n + 3));
            }
        }
        out.trim_end().to_string()
    }
}

async fn watch(
    ctx: &Ctx,
    args: &GetArgs,
    info: &'static KindInfo,
    name: Option<String>,
) -> Result<i32> {
    let project = match info.scope {
        Scope::Project if !args.all_projects => Some(ctx.project().await?),
        _ => None,
    };
    let path = collection_path(info, project.as_deref());
    let mut field_selector = args.field_selector.clone().unwrap_or_default();
    if let Some(n) = &name {
        if !field_selector.is_empty() {
            field_selector.push(',');
        }
        field_selector.push_str(&format!("metadata.name={n}"));
    }
    let printer = Printer {
        info,
        format: args.output,
        with_project: args.all_projects && info.scope == Scope::Project,
        no_headers: args.no_headers,
    };
    let table = matches!(args.output, None | Some(OutputFormat::Wide));
    let mut stream_table = StreamTable { widths: Vec::new() };
    let events = args.output_watch_events;
    if table && !args.no_headers {
        let mut headers = printer.headers();
        if events {
            headers.insert(0, "EVENT".into());
        }
        println!("{}", stream_table.line(&headers));
    }
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &args.selector {
        query.push(("labelSelector", s));
    }
    if !field_selector.is_empty() {
        query.push(("fieldSelector", &field_selector));
    }
    // The one list → watch → relist loop: what exists first (as ADDED,
    // again after a relist), then each change.
    let mut watcher = ctx.client.watcher(&path, &query);
    let mut failures = 0u32;
    loop {
        let (kind, objects) = match watcher.next().await {
            Ok(WatcherEvent::Restarted(items)) => ("ADDED", items),
            Ok(WatcherEvent::Added(o)) => ("ADDED", vec![o]),
            Ok(WatcherEvent::Modified(o)) => ("MODIFIED", vec![o]),
            Ok(WatcherEvent::Deleted(o)) => ("DELETED", vec![o]),
            Err(e @ ClientError::Api(_)) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(e.into());
                }
                continue;
            }
        };
        failures = 0;
        for obj in &objects {
            let text = match args.output {
                None | Some(OutputFormat::Wide) => {
                    let mut row = printer.row(obj);
                    if events {
                        row.insert(0, kind.to_string());
                    }
                    format!("{}\n", stream_table.line(&row))
                }
                Some(OutputFormat::Name) if events => {
                    format!("{kind} {}\n", ref_name(info, name_of(obj)))
                }
                Some(OutputFormat::Name) => format!("{}\n", ref_name(info, name_of(obj))),
                Some(OutputFormat::Json) if events => {
                    output::to_json(&json!({"type": kind, "object": obj}))
                }
                Some(OutputFormat::Json) => output::to_json(obj),
                Some(OutputFormat::Yaml) if events => format!(
                    "---\n{}",
                    output::to_yaml(&json!({"type": kind, "object": obj}))
                ),
                Some(OutputFormat::Yaml) => format!("---\n{}", output::to_yaml(obj)),
            };
            print!("{text}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}
