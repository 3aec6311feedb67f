//! `spinup key create|ls|rm`: API keys for TCP listeners (the native API,
//! MCP and E2B), each a tenant's or the admin's. The admin's tools: over
//! the unix socket, or with an admin key.

use anyhow::Result;
use clap::Subcommand;
use spinup_api::{KeyInfo, KeyRequest, NewKey, Quota};

use crate::client::enc;
use crate::ctx::Ctx;
use crate::output::{ago, table};

#[derive(Subcommand)]
pub enum Command {
    /// Make a key and print it (shown this once; only its hash is kept).
    /// With --tenant, the key sees and makes only that tenant's sandboxes,
    /// snapshots, secrets and ports; the quotas given are set on the tenant.
    Create {
        /// Lowercase letters, digits and '-'.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        tenant: Option<String>,
        /// A key that sees everything, as the unix socket does.
        #[arg(long)]
        admin: bool,
        #[arg(long, value_name = "N")]
        max_sandboxes: Option<u32>,
        #[arg(long, value_name = "N")]
        max_vcpus: Option<f64>,
        #[arg(long, value_name = "MIB")]
        max_memory_mib: Option<u64>,
    },
    /// List keys: ids, tenants, quotas (never the keys themselves).
    Ls,
    /// Revoke keys at once.
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

fn limit<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn quota(q: &Quota) -> [String; 3] {
    [limit(q.max_sandboxes), limit(q.max_vcpus), limit(q.max_memory_mib)]
}

pub async fn run(cmd: Command, ctx: &Ctx) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        Command::Create { tenant, admin, max_sandboxes, max_vcpus, max_memory_mib } => {
            let req = KeyRequest { tenant, admin, max_sandboxes, max_vcpus, max_memory_mib };
            let v = c.post("/v1/keys", &req).await?;
            ctx.emit(&v, |k: NewKey| {
                println!("{}", k.key);
                eprintln!(
                    "key {} for {}: shown this once; send it as Authorization: Bearer (or E2B_API_KEY)",
                    k.info.id,
                    k.info.tenant.as_deref().map_or_else(|| "the admin".to_string(), |t| format!("tenant {t}"))
                );
            })?;
        }
        Command::Ls => {
            let v = c.get("/v1/keys").await?;
            ctx.emit(&v, |keys: Vec<KeyInfo>| {
                let rows = keys
                    .iter()
                    .map(|k| {
                        let [s, cpu, mem] = quota(&k.quota);
                        vec![
                            k.id.clone(),
                            k.tenant.clone().unwrap_or_else(|| "(admin)".into()),
                            s,
                            cpu,
                            mem,
                            ago(k.created_at),
                        ]
                    })
                    .collect();
                table(&["ID", "TENANT", "MAX SANDBOXES", "MAX VCPUS", "MAX MEMORY MIB", "CREATED"], rows);
            })?;
        }
        Command::Rm { ids } => {
            for id in ids {
                c.delete(&format!("/v1/keys/{}", enc(&id))).await?;
            }
        }
    }
    Ok(())
}
