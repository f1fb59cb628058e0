//! `corral admin …`: operations on the server itself.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{Ctx, ServerArgs};

#[derive(Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Seal every EC2 secret with a new key: the server puts a new key
    /// first in its secrets key file and rewrites every sealed secret.
    RotateSecretsKey {
        /// Then drop the older keys from the file (once every secret was
        /// rewritten). With several servers, copy the file to the others
        /// first.
        #[arg(long)]
        retire_old: bool,
    },
}

pub async fn admin(args: AdminArgs) -> Result<i32> {
    let ctx = Ctx::new(&args.server, None)?;
    match args.command {
        AdminCommand::RotateSecretsKey { retire_old } => {
            let done = ctx
                .client
                .post(
                    "/v1/secrets/rotate",
                    &[],
                    &json!({ "retireOld": retire_old }),
                )
                .await?;
            let failed: Vec<&str> = done["failed"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            println!(
                "Secrets key {}: {} access key(s) resealed, {} older key(s) retired",
                done["keyId"].as_str().unwrap_or("?"),
                done["resealed"].as_u64().unwrap_or(0),
                done["retiredKeys"].as_u64().unwrap_or(0),
            );
            if !failed.is_empty() {
                eprintln!(
                    "Not resealed (see the server's log; older keys kept): {}",
                    failed.join(", ")
                );
                return Ok(1);
            }
            Ok(0)
        }
    }
}
