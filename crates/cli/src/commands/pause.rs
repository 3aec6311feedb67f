//! `spinup pause`: freeze a sandbox in place, or with `--free-memory` save
//! its memory to disk and stop its VM.

use anyhow::Result;
use spinup_api::{PauseRequest, Sandbox};

use crate::client::enc;
use crate::ctx::{quiet, Ctx};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    #[arg(long)]
    free_memory: bool,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let path = format!("/v1/sandboxes/{}/pause", enc(&args.id));
    if !args.free_memory {
        let v = ctx.client.post_empty(&path).await?;
        return ctx.emit(&v, quiet);
    }
    let v = ctx.client.post(&path, &PauseRequest { free_memory: true }).await?;
    ctx.emit(&v, |sb: Sandbox| println!("{}", sb.state))
}
