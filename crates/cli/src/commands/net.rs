//! `spinup net set ID --mode M [--allow X]... [--add-host NAME=IP]...` and
//! `spinup net show ID`: a running sandbox's network policy, printed as
//! JSON (it applies at once).

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::client::enc;
use crate::ctx::Ctx;
use crate::flags;
use crate::output::print_json;

#[derive(Subcommand)]
pub enum Command {
    /// Replace the policy; no --mode means none, or allow with --allow.
    Set {
        id: String,
        #[arg(long, value_name = "none|allow|open")]
        mode: Option<String>,
        #[arg(long = "allow", value_name = "DOMAIN|CIDR")]
        allow: Vec<String>,
        #[arg(long = "add-host", value_name = "NAME=IP")]
        hosts: Vec<String>,
    },
    /// The policy and the sandbox's address.
    Show { id: String },
}

pub async fn run(cmd: Command, ctx: &Ctx) -> Result<()> {
    match cmd {
        Command::Set { id, mode, allow, hosts } => {
            let mode = mode.as_deref().unwrap_or(if allow.is_empty() { "none" } else { "allow" });
            let policy = flags::policy(Some(mode), &allow, &hosts)?;
            let v = ctx.client.put(&format!("/v1/sandboxes/{}/network", enc(&id)), &policy).await?;
            print_json(&v["network"]);
        }
        Command::Show { id } => {
            let v = ctx.client.get(&format!("/v1/sandboxes/{}", enc(&id))).await?;
            print_json(&json!({"network": v["network"], "address": v["net"]["address"]}));
        }
    }
    Ok(())
}
