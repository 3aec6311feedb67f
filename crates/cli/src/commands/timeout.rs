//! `spinup timeout`: a sandbox's timeout, counted from now (0 clears it).

use anyhow::Result;
use spinup_api::TimeoutRequest;

use crate::client::enc;
use crate::ctx::{quiet, Ctx};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    seconds: u64,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let path = format!("/v1/sandboxes/{}/timeout", enc(&args.id));
    let v = ctx.client.put(&path, &TimeoutRequest { timeout_s: args.seconds }).await?;
    ctx.emit(&v, quiet)
}
