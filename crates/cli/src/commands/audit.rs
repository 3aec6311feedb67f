//! `spinup audit`: the audit log, newest first (the admin's).

use anyhow::Result;
use spinup_api::AuditEntry;

use crate::client::enc;
use crate::ctx::Ctx;
use crate::output::{ago, table};

#[derive(clap::Args)]
pub struct Args {
    /// Only this tenant's calls.
    #[arg(long)]
    tenant: Option<String>,
    /// At most this many entries (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub async fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let mut path = format!("/v1/audit?limit={}", a.limit);
    if let Some(t) = &a.tenant {
        path.push_str(&format!("&tenant={}", enc(t)));
    }
    let v = ctx.client.get(&path).await?;
    ctx.emit(&v, |entries: Vec<AuditEntry>| {
        let rows = entries
            .iter()
            .map(|e| {
                vec![
                    ago(e.at),
                    e.actor.clone(),
                    e.tenant.clone().unwrap_or_else(|| "-".into()),
                    e.op.clone(),
                    e.object.clone().unwrap_or_else(|| "-".into()),
                    e.outcome.clone(),
                ]
            })
            .collect();
        table(&["WHEN", "ACTOR", "TENANT", "OP", "OBJECT", "OUTCOME"], rows);
    })
}
