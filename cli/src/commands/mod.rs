//! The client verbs of `corral` (`apply`, `get`, `describe`, `delete`,
//! `diff`, `wait`, the administration commands, `whoami`, `completion`):
//! their arguments, the shared context (config, API client, project) and
//! the exit-code convention.
//!
//! Exit codes: 0 success; 1 the operation failed (the server refused it,
//! an object was not found, a wait timed out; for `diff`: differences
//! found); 2 usage or validation error found before anything was sent
//! (bad flags, unreadable or invalid manifests, `--dry-run=client`
//! validation errors; for `diff`: any error).

mod admin;
mod apply;
mod content;
mod delete;
mod describe;
mod diff;
mod get;
mod manifests;
mod output;
mod roles;
mod secrets;
mod wait;

use std::fmt;
use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use corral_api_types::{kind_info, KindInfo, Scope, KINDS};

use crate::client::Client;
use crate::config::ClientConfig;

/// The client verbs, flattened into the top-level command.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create or update objects from manifests (files, directories, `-`).
    #[command(after_help = apply::AFTER_HELP)]
    Apply(apply::ApplyArgs),
    /// List objects, or show some by name, as a table, YAML, JSON or names.
    #[command(after_help = EXIT_CODES)]
    Get(get::GetArgs),
    /// Show objects in detail, with their conditions and events.
    #[command(after_help = EXIT_CODES)]
    Describe(describe::DescribeArgs),
    /// Delete objects by kind and name, or those in manifests.
    #[command(after_help = EXIT_CODES)]
    Delete(delete::DeleteArgs),
    /// Show how live objects differ from manifests (unified diff).
    #[command(after_help = diff::AFTER_HELP)]
    Diff(diff::DiffArgs),
    /// Wait until objects meet a condition, reach a phase or are deleted.
    #[command(after_help = EXIT_CODES)]
    Wait(wait::WaitArgs),
    /// Print an instance's serial console (`-f` follows it).
    Console(content::ConsoleArgs),
    /// Image bytes: `corral image upload NAME FILE`.
    Image(content::ImageArgs),
    /// Manage projects (admin).
    Project(admin::ProjectArgs),
    /// Manage users (admin).
    User(admin::UserArgs),
    /// Issue a user fresh credentials and write them as an rc file.
    Credentials(admin::CredentialsArgs),
    /// Manage a user's EC2 access keys.
    Keys(admin::KeysArgs),
    /// Manage a user's API tokens.
    Token(admin::TokenArgs),
    /// Show who the configured credentials belong to.
    Whoami(admin::WhoamiArgs),
    /// Operate the server itself (admin): `rotate-secrets-key`.
    Admin(secrets::AdminArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

pub(crate) const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure (refused by the server, \
not found, timed out), 2 usage or validation error (nothing was sent).";

/// Where the server is and who we are, overriding the config file.
#[derive(Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Server URL (default: from the config file or CORRAL_SERVER).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token (default: from the config file or CORRAL_TOKEN).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// [`ServerArgs`] plus the project to work in.
#[derive(Args, Clone, Debug, Default)]
pub struct ConnArgs {
    /// Project to work in (default: from the config file or CORRAL_PROJECT).
    #[arg(short = 'p', long, global = true, value_name = "PROJECT")]
    pub project: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// An error that decides the exit code. An empty message means the
/// problems were already printed.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A usage or validation error: exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: 2,
        message: message.into(),
    }
    .into()
}

/// Problems already reported on stderr: just the exit code.
pub fn reported(code: i32) -> anyhow::Error {
    Exit {
        code,
        message: String::new(),
    }
    .into()
}

/// Prints an error as `error: ...` on stderr.
pub fn print_error(e: &anyhow::Error) {
    if let Some(exit) = e.downcast_ref::<Exit>() {
        if !exit.message.is_empty() {
            eprintln!("error: {}", exit.message);
        }
        return;
    }
    eprintln!("error: {e:#}");
}

/// The exit code an error stands for.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<Exit>().map_or(1, |x| x.code)
}

/// Runs a client verb; exits the process with its exit code.
pub async fn run(command: ClientCommand) -> Result<()> {
    let code = match dispatch(command).await {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            exit_code(&e)
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

async fn dispatch(command: ClientCommand) -> Result<i32> {
    match command {
        ClientCommand::Apply(a) => apply::run(a).await,
        ClientCommand::Get(a) => get::run(a).await,
        ClientCommand::Describe(a) => describe::run(a).await,
        ClientCommand::Delete(a) => delete::run(a).await,
        ClientCommand::Diff(a) => diff::run(a).await,
        ClientCommand::Wait(a) => wait::run(a).await,
        ClientCommand::Console(a) => content::console(a).await,
        ClientCommand::Image(a) => content::image(a).await,
        ClientCommand::Project(a) => admin::project(a).await,
        ClientCommand::User(a) => admin::user(a).await,
        ClientCommand::Credentials(a) => admin::credentials(a).await,
        ClientCommand::Keys(a) => admin::keys(a).await,
        ClientCommand::Token(a) => admin::token(a).await,
        ClientCommand::Whoami(a) => admin::whoami(a).await,
        ClientCommand::Admin(a) => secrets::admin(a).await,
        ClientCommand::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = crate::Cli::command();
            clap_complete::generate(shell, &mut cmd, "corral", &mut std::io::stdout());
            Ok(0)
        }
    }
}

/// What every client verb works with.
pub struct Ctx {
    pub client: Client,
    pub config: ClientConfig,
    project_flag: Option<String>,
}

/// Reads the config file without insisting on a token (one is given on
/// the command line).
fn config_without_token() -> Result<ClientConfig> {
    let path = crate::config::config_path();
    let mut config = match std::fs::read_to_string(&path) {
        Ok(text) => yaml_serde::from_str::<ClientConfig>(&text)
            .with_context(|| format!("reading {}", path.display()))?,
        Err(_) => ClientConfig::default(),
    };
    if let Ok(v) = std::env::var("CORRAL_SERVER") {
        config.server = v;
    }
    if let Ok(v) = std::env::var("CORRAL_PROJECT") {
        config.project = v;
    }
    config.env_ca_file();
    if config.server.is_empty() {
        config.server = "https://127.0.0.1:8774".into();
    }
    Ok(config)
}

impl Ctx {
    /// Loads the config and applies the command line's overrides.
    pub fn new(server: &ServerArgs, project: Option<&str>) -> Result<Ctx> {
        let mut config = match &server.token {
            Some(_) => config_without_token()?,
            None => ClientConfig::load()?,
        };
        if let Some(s) = &server.server {
            config.server = s.clone();
        }
        if let Some(t) = &server.token {
            config.token = t.clone();
        }
        let client = Client::with_ca(&config.server, &config.token, config.ca_pem()?.as_deref())?;
        Ok(Ctx {
            client,
            config,
            project_flag: project.filter(|p| !p.is_empty()).map(str::to_string),
        })
    }

    pub fn from_conn(conn: &ConnArgs) -> Result<Ctx> {
        Ctx::new(&conn.server, conn.project.as_deref())
    }

    /// Whether `-p` was given.
    pub fn project_flag(&self) -> Option<&str> {
        self.project_flag.as_deref()
    }

    /// The project to work in: `-p`, else the config's, else the caller's
    /// own (a member's), else `default`.
    pub async fn project(&self) -> Result<String> {
        if let Some(p) = &self.project_flag {
            return Ok(p.clone());
        }
        if !self.config.project.is_empty() {
            return Ok(self.config.project.clone());
        }
        let me = self.client.get("/v1/whoami", &[]).await?;
        Ok(me
            .get("project")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("default")
            .to_string())
    }
}

/// Resolves a kind name (`instances`, `instance`, `inst`, `Instance`).
pub fn resolve_kind(name: &str) -> Result<&'static KindInfo> {
    kind_info(name).ok_or_else(|| {
        let known: Vec<&str> = KINDS.iter().map(|k| k.plural).collect();
        usage(format!(
            "unknown resource type {name:?} (known: {})",
            known.join(", ")
        ))
    })
}

/// Splits `kind/name` targets; plain names use `default_kind`.
pub fn parse_targets(
    default_kind: Option<&'static KindInfo>,
    args: &[String],
) -> Result<Vec<(&'static KindInfo, String)>> {
    let mut out = Vec::new();
    for a in args {
        match a.split_once('/') {
            Some((k, n)) if !n.is_empty() => out.push((resolve_kind(k)?, n.to_string())),
            Some(_) => return Err(usage(format!("{a:?}: expected KIND/NAME"))),
            None => match default_kind {
                Some(k) => out.push((k, a.clone())),
                None => {
                    return Err(usage(format!(
                        "{a:?}: expected KIND/NAME (e.g. instance/{a})"
                    )))
                }
            },
        }
    }
    Ok(out)
}

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The list path of a kind: `/v1/projects/P/instances`, or `/v1/nodes`
/// for cluster kinds and for project kinds across all projects (`None`).
pub fn collection_path(info: &KindInfo, project: Option<&str>) -> String {
    match (info.scope, project) {
        (Scope::Project, Some(p)) => format!("/v1/projects/{}/{}", seg(p), info.plural),
        _ => format!("/v1/{}", info.plural),
    }
}

/// The path of one object.
pub fn item_path(info: &KindInfo, project: &str, name: &str) -> String {
    match info.scope {
        Scope::Project => format!(
            "/v1/projects/{}/{}/{}",
            seg(project),
            info.plural,
            seg(name)
        ),
        Scope::Cluster => format!("/v1/{}/{}", info.plural, seg(name)),
    }
}

/// `instance/web`
pub fn ref_name(info: &KindInfo, name: &str) -> String {
    format!("{}/{}", info.singular, name)
}

/// Longest duration accepted (a year).
const MAX_DURATION_SECS: f64 = 365.0 * 86400.0;

/// Parses `60s`, `5m`, `1h30m`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let total = match s.parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => {
            if s.is_empty() {
                return Err("empty duration".into());
            }
            let mut total = 0f64;
            let mut rest = s;
            while !rest.is_empty() {
                let digits = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(|| format!("invalid duration {s:?}: missing unit (s, m, h, ms)"))?;
                if digits == 0 {
                    return Err(format!("invalid duration {s:?}"));
                }
                let n: f64 = rest[..digits]
                    .parse()
                    .map_err(|_| format!("invalid duration {s:?}"))?;
                rest = &rest[digits..];
                let unit_len = rest
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(rest.len());
                let factor = match &rest[..unit_len] {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    u => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
                };
                total += n * factor;
                rest = &rest[unit_len..];
            }
            total
        }
    };
    if !(0.0..=MAX_DURATION_SECS).contains(&total) {
        return Err(format!(
            "invalid duration {s:?}: must be from 0 to 365 days"
        ));
    }
    std::time::Duration::try_from_secs_f64(total)
        .map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn targets_and_paths() {
        let inst = resolve_kind("inst").unwrap();
        let t = parse_targets(Some(inst), &["web".into(), "net/lan".into()]).unwrap();
        assert_eq!(t[0].0.kind, "Instance");
        assert_eq!(t[1].0.kind, "Network");
        assert_eq!(t[1].1, "lan");
        assert!(parse_targets(None, &["web".into()]).is_err());
        assert!(resolve_kind("pods").is_err());
        assert_eq!(
            item_path(inst, "demo", "a b"),
            "/v1/projects/demo/instances/a%20b"
        );
        let node = resolve_kind("nodes").unwrap();
        assert_eq!(item_path(node, "", "n1"), "/v1/nodes/n1");
        assert_eq!(collection_path(inst, None), "/v1/instances");
        assert_eq!(ref_name(inst, "web"), "instance/web");
    }
}
