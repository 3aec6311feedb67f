//! `spinup secret set|ls|rm|attach|detach`: the daemon's secret store, and
//! the secrets attached to a sandbox.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use spinup_api::{AttachRequest, SecretInfo};
use spinup_protocol::client::full_body;

use crate::client::enc;
use crate::ctx::{quiet, Ctx};
use crate::flags;
use crate::output::{ago, table};

#[derive(Subcommand)]
pub enum Command {
    /// Set a secret's value, from stdin or --file.
    Set {
        name: String,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List secrets (names and times; values never come out).
    Ls,
    /// Remove secrets.
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Attach secrets to a sandbox: NAME (file), NAME:env, NAME:proxy=HOST[,HOST].
    Attach {
        id: String,
        #[arg(required = true, value_name = "NAME[:MODE]")]
        specs: Vec<String>,
    },
    /// Detach secrets from a sandbox.
    Detach {
        id: String,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

pub async fn run(cmd: Command, ctx: &Ctx) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        Command::Set { name, file } => {
            let value = read_value(&name, file)?;
            let v = c.json_body(http::Method::PUT, &format!("/v1/secrets/{}", enc(&name)), full_body(value)).await?;
            ctx.emit(&v, quiet)?;
        }
        Command::Ls => {
            let v = c.get("/v1/secrets").await?;
            ctx.emit(&v, |secrets: Vec<SecretInfo>| {
                // The admin sees every tenant's (each tenant has its own names).
                if secrets.iter().any(|s| s.tenant.is_some()) {
                    let rows = secrets
                        .iter()
                        .map(|s| {
                            vec![s.name.clone(), s.tenant.clone().unwrap_or_else(|| "-".into()), ago(s.updated_at)]
                        })
                        .collect();
                    table(&["NAME", "TENANT", "UPDATED"], rows);
                } else {
                    let rows = secrets.iter().map(|s| vec![s.name.clone(), ago(s.updated_at)]).collect();
                    table(&["NAME", "UPDATED"], rows);
                }
            })?;
        }
        Command::Rm { names } => {
            for n in names {
                c.delete(&format!("/v1/secrets/{}", enc(&n))).await?;
            }
        }
        Command::Attach { id, specs } => {
            let req = AttachRequest { attach: flags::secret_mounts(&specs)?, detach: vec![] };
            c.post(&format!("/v1/sandboxes/{}/secrets", enc(&id)), &req).await?;
        }
        Command::Detach { id, names } => {
            let req = AttachRequest { attach: vec![], detach: names };
            c.post(&format!("/v1/sandboxes/{}/secrets", enc(&id)), &req).await?;
        }
    }
    Ok(())
}

/// The value from `file` or stdin, less one trailing newline (from echo or
/// an editor), which is not part of it.
fn read_value(name: &str, file: Option<PathBuf>) -> Result<Vec<u8>> {
    let mut value = match file {
        Some(f) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("value for {name} (end with Ctrl-D):");
            }
            let mut b = vec![];
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
    };
    if value.ends_with(b"\n") {
        value.pop();
        if value.ends_with(b"\r") {
            value.pop();
        }
    }
    Ok(value)
}
