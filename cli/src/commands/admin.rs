//! Administration verbs — what `nova-manage project`/`user` did: projects,
//! users, their API tokens and EC2 access keys, rc files with fresh
//! credentials (`corral credentials`), and `whoami`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::get::{OutputFormat, Printer};
use super::output::{age_at, render_table, str_at, text_at, to_json, to_yaml};
use super::{resolve_kind, seg, usage, ConnArgs, Ctx, ServerArgs};
use crate::config::{write_private, Credentials};

/// `-o` of the administration lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

fn print_value(v: &Value, format: Format) {
    match format {
        Format::Json => print!("{}", to_json(v)),
        Format::Yaml => print!("{}", to_yaml(v)),
    }
}

// ---- projects ------------------------------------------------------------------

#[derive(Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    pub command: ProjectCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project (a tenant).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List projects.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputFormat>,
    },
    /// Delete a project.
    #[command(alias = "rm")]
    Delete { name: String },
}

pub async fn project(args: ProjectArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    match args.command {
        ProjectCommand::Create { name, description } => {
            let mut spec = json!({});
            if let Some(d) = description {
                spec["description"] = Value::String(d);
            }
            let body = json!({
                "apiVersion": corral_api_types::API_VERSION,
                "kind": "Project",
                "metadata": {"name": name},
                "spec": spec,
            });
            ctx.client.post("/v1/projects", &[], &body).await?;
            println!("project/{name} created");
        }
        ProjectCommand::List { output } => {
            let list = ctx.client.list_all("/v1/projects", &[]).await?;
            if list.items.is_empty() && matches!(output, None | Some(OutputFormat::Wide)) {
                eprintln!("No projects found.");
                return Ok(0);
            }
            let printer = Printer {
                info: resolve_kind("projects")?,
                format: output,
                with_project: false,
                no_headers: false,
            };
            print!("{}", printer.print_all(&list.items, false));
        }
        ProjectCommand::Delete { name } => {
            ctx.client
                .delete(&format!("/v1/projects/{}", seg(&name)), &[])
                .await?;
            println!("project/{name} deleted");
        }
    }
    Ok(0)
}

// ---- users ---------------------------------------------------------------------

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything inside its projects.
    Member,
    /// Reads inside its projects, nothing else.
    Viewer,
    /// Everything, every project.
    Admin,
    /// A node agent.
    Node,
}

impl RoleArg {
    pub fn name(self) -> &'static str {
        match self {
            RoleArg::Member => "member",
            RoleArg::Viewer => "viewer",
            RoleArg::Admin => "admin",
            RoleArg::Node => "node",
        }
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; prints its API token and EC2 keys once.
    Create {
        name: String,
        /// The member's project.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
        /// The node a `node` user acts for.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Print the issued credentials as JSON or YAML instead.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// List users.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// Delete a user and revoke its tokens and keys.
    #[command(alias = "rm")]
    Delete { name: String },
    /// Give a user a role in a further project (or change it).
    Grant {
        name: String,
        #[arg(long)]
        project: String,
        /// `member` or `viewer`.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Take a user's role in a further project away.
    Ungrant {
        name: String,
        #[arg(long)]
        project: String,
    },
}

pub async fn user(args: UserArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    match args.command {
        UserCommand::Create {
            name,
            project,
            role,
            node,
            output,
        } => {
            let role_name = role.name();
            match role {
                RoleArg::Member | RoleArg::Viewer if project.is_none() => {
                    return Err(usage(format!("a {role_name} needs --project")))
                }
                RoleArg::Node if node.is_none() => return Err(usage("a node user needs --node")),
                _ => {}
            }
            let body = json!({
                "name": name,
                "role": role_name,
                "project": project.clone().unwrap_or_default(),
                "nodeName": node.clone().unwrap_or_default(),
            });
            let issued = ctx.client.post("/v1/users", &[], &body).await?;
            if let Some(f) = output {
                print_value(&issued, f);
                return Ok(0);
            }
            let mut what = format!("role {role_name}");
            if let Some(p) = &project {
                what.push_str(&format!(", project {p}"));
            }
            if let Some(n) = &node {
                what.push_str(&format!(", node {n}"));
            }
            println!("user/{name} created ({what})");
            println!();
            println!("Credentials (shown only this once; store them safely):");
            println!("  API token:             {}", text_at(&issued, "/token"));
            println!(
                "  EC2 access key id:     {}",
                text_at(&issued, "/accessKeyId")
            );
            println!(
                "  EC2 secret access key: {}",
                text_at(&issued, "/secretAccessKey")
            );
            println!();
            println!(
                "An rc file with fresh credentials: corral credentials --user {name} -o {name}.rc"
            );
        }
        UserCommand::List { output } => {
            let users = ctx.client.get("/v1/users", &[]).await?;
            if let Some(f) = output {
                print_value(&users, f);
                return Ok(0);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = items(&users)
                .iter()
                .map(|u| {
                    vec![
                        text_at(u, "/name"),
                        text_at(u, "/role"),
                        text_at(u, "/project"),
                        text_at(u, "/nodeName"),
                        if u.get("disabled").and_then(Value::as_bool) == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        age_at(u, "/creationTimestamp", now),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "ROLE", "PROJECT", "NODE", "DISABLED", "AGE"],
                &rows,
            );
        }
        UserCommand::Grant {
            name,
            project,
            role,
        } => {
            super::roles::grant(&ctx, &name, &project, role.name()).await?;
        }
        UserCommand::Ungrant { name, project } => {
            super::roles::ungrant(&ctx, &name, &project).await?;
        }
        UserCommand::Delete { name } => {
            ctx.client
                .delete(&format!("/v1/users/{}", seg(&name)), &[])
                .await?;
            println!("user/{name} deleted");
        }
    }
    Ok(0)
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    print!("{}", render_table(&headers, rows));
}

/// The user named by `--user`, else the caller.
async fn user_or_me(ctx: &Ctx, user: Option<String>) -> Result<String> {
    if let Some(u) = user {
        return Ok(u);
    }
    let me = ctx.client.get("/v1/whoami", &[]).await?;
    str_at(&me, "/user")
        .map(str::to_string)
        .ok_or_else(|| usage("name the user with --user"))
}

// ---- credentials -----------------------------------------------------------------

#[derive(Args)]
pub struct CredentialsArgs {
    /// The user (default: yourself).
    #[arg(long)]
    pub user: Option<String>,
    /// Write the rc file here (mode 0600) instead of printing it.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// The EC2 endpoint: the config's, else the API server's host on 8773.
fn ec2_endpoint(ctx: &Ctx) -> String {
    if !ctx.config.ec2_endpoint.is_empty() {
        return ctx.config.ec2_endpoint.clone();
    }
    let mut url = ctx.client.base_url().clone();
    let _ = url.set_port(Some(8773));
    url.set_path("");
    url.set_query(None);
    url.as_str().trim_end_matches('/').to_string()
}

pub async fn credentials(args: CredentialsArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.conn.server, None)?;
    let user = user_or_me(&ctx, args.user).await?;
    let issued = ctx
        .client
        .post(
            &format!("/v1/users/{}/credentials", seg(&user)),
            &[],
            &json!({}),
        )
        .await?;
    let project = args
        .conn
        .project
        .clone()
        .or_else(|| str_at(&issued, "/project").map(str::to_string))
        .unwrap_or_else(|| ctx.config.project.clone());
    let server = ctx.config.server.clone();
    let ec2 = ec2_endpoint(&ctx);
    let token = text_at(&issued, "/token");
    let access_key_id = text_at(&issued, "/accessKeyId");
    let secret = text_at(&issued, "/secretAccessKey");
    // The CA goes with the credentials: beside the rc file when one is
    // written (for another machine), else the path this client uses.
    let ca_file = match (&args.output, ctx.config.ca_pem()?) {
        (Some(path), Some(pem)) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".ca.crt");
            let ca = std::path::PathBuf::from(name);
            write_private(&ca, &pem)?;
            std::path::absolute(&ca).unwrap_or(ca).display().to_string()
        }
        _ => ctx.config.ca_file.clone(),
    };
    let rc = Credentials {
        server: &server,
        ec2_endpoint: &ec2,
        region: crate::up::REGION,
        user: &user,
        project: &project,
        token: &token,
        access_key_id: &access_key_id,
        secret_access_key: &secret,
        ca_file: &ca_file,
    }
    .rc_file();
    match args.output {
        Some(path) => {
            write_private(&path, &rc)?;
            eprintln!(
                "Wrote credentials for user {user} to {} (use: source {})",
                path.display(),
                path.display()
            );
        }
        None => print!("{rc}"),
    }
    Ok(0)
}

// ---- access keys -------------------------------------------------------------------

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    /// The user (default: yourself).
    #[arg(long, global = true)]
    pub user: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// List the user's EC2 access keys.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// Issue a new access key pair (the secret is shown once).
    Create,
    /// Revoke one access key.
    Revoke {
        #[arg(value_name = "ACCESS_KEY_ID")]
        id: String,
    },
    /// Issue a new key pair, then revoke every other key of the user.
    Rotate,
}

fn print_new_key(user: &str, key: &Value) {
    println!(
        "accesskey/{} created for user {user}",
        text_at(key, "/accessKeyId")
    );
    println!("  EC2 access key id:     {}", text_at(key, "/accessKeyId"));
    println!(
        "  EC2 secret access key: {}",
        text_at(key, "/secretAccessKey")
    );
    println!("The secret is shown only this once.");
}

pub async fn keys(args: KeysArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    let user = user_or_me(&ctx, args.user).await?;
    let base = format!("/v1/users/{}/accesskeys", seg(&user));
    match args.command {
        KeysCommand::List { output } => {
            let keys = ctx.client.get(&base, &[]).await?;
            if let Some(f) = output {
                print_value(&keys, f);
                return Ok(0);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = items(&keys)
                .iter()
                .map(|k| {
                    vec![
                        text_at(k, "/accessKeyId"),
                        text_at(k, "/status"),
                        age_at(k, "/creationTimestamp", now),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("User {user} has no access keys.");
            } else {
                print_table(&["ACCESS-KEY-ID", "STATUS", "AGE"], &rows);
            }
        }
        KeysCommand::Create => {
            let key = ctx.client.post(&base, &[], &json!({})).await?;
            print_new_key(&user, &key);
        }
        KeysCommand::Revoke { id } => {
            ctx.client
                .delete(&format!("{base}/{}", seg(&id)), &[])
                .await?;
            println!("accesskey/{id} revoked");
        }
        KeysCommand::Rotate => {
            let old = items(&ctx.client.get(&base, &[]).await?);
            let key = ctx.client.post(&base, &[], &json!({})).await?;
            let new_id = text_at(&key, "/accessKeyId");
            print_new_key(&user, &key);
            for k in old {
                let id = text_at(&k, "/accessKeyId");
                if id == new_id {
                    continue;
                }
                ctx.client
                    .delete(&format!("{base}/{}", seg(&id)), &[])
                    .await
                    .with_context(|| format!("revoking {id} (the new key works)"))?;
                println!("accesskey/{id} revoked");
            }
        }
    }
    Ok(0)
}

// ---- API tokens --------------------------------------------------------------------

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    /// The user (default: yourself).
    #[arg(long, global = true)]
    pub user: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a new API token; prints it alone on stdout (shown once).
    Create,
    /// List the user's tokens (by id: the first 12 hex digits of the hash).
    #[command(alias = "ls")]
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

pub async fn token(args: TokenArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    let user = user_or_me(&ctx, args.user).await?;
    let base = format!("/v1/users/{}/tokens", seg(&user));
    match args.command {
        TokenCommand::Create => {
            let t = ctx.client.post(&base, &[], &json!({})).await?;
            eprintln!("New API token for user {user} (shown only this once):");
            println!("{}", text_at(&t, "/token"));
        }
        TokenCommand::List { output } => {
            let tokens = ctx.client.get(&base, &[]).await?;
            if let Some(f) = output {
                print_value(&tokens, f);
                return Ok(0);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = items(&tokens)
                .iter()
                .map(|t| {
                    vec![
                        text_at(t, "/id"),
                        text_at(t, "/description"),
                        age_at(t, "/creationTimestamp", now),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("User {user} has no API tokens.");
            } else {
                print_table(&["ID", "DESCRIPTION", "AGE"], &rows);
            }
        }
        TokenCommand::Revoke { id } => {
            ctx.client
                .delete(&format!("{base}/{}", seg(&id)), &[])
                .await?;
            println!("token/{id} revoked");
        }
    }
    Ok(0)
}

// ---- whoami ------------------------------------------------------------------------

#[derive(Args)]
pub struct WhoamiArgs {
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn whoami(args: WhoamiArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    let me = ctx.client.get("/v1/whoami", &[]).await?;
    if let Some(f) = args.output {
        print_value(&me, f);
        return Ok(0);
    }
    println!("User:     {}", text_at(&me, "/user"));
    println!("Role:     {}", text_at(&me, "/role"));
    println!("Project:  {}", text_at(&me, "/project"));
    super::roles::print_projects(&me);
    if let Some(n) = str_at(&me, "/node") {
        println!("Node:     {n}");
    }
    println!("Server:   {}", ctx.config.server);
    Ok(0)
}
