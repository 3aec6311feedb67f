//! `spinup ls`: sandboxes, filtered by label.

use anyhow::Result;
use spinup_api::{ListQuery, Sandbox};

use crate::client::enc;
use crate::ctx::Ctx;
use crate::flags;
use crate::output::{ago, table};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let q = ListQuery { labels: flags::labels(&args.labels)? };
    let q: Vec<String> = q.to_pairs().iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let v = ctx.client.get(&format!("/v1/sandboxes?{}", q.join("&"))).await?;
    ctx.emit(&v, |sandboxes: Vec<Sandbox>| {
        let rows = sandboxes
            .iter()
            .map(|s| {
                let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    s.id.to_string(),
                    s.env.clone(),
                    s.driver.clone(),
                    s.state.to_string(),
                    ago(s.created_at),
                    labels.join(","),
                ]
            })
            .collect();
        table(&["ID", "ENV", "DRIVER", "STATE", "CREATED", "LABELS"], rows);
    })
}
