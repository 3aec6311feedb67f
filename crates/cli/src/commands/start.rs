//! `spinup start`: boot a stopped sandbox again on the disk it kept.

use anyhow::Result;

use crate::client::enc;
use crate::ctx::{quiet, Ctx};

#[derive(clap::Args)]
pub struct Args {
    id: String,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let v = ctx.client.post_empty(&format!("/v1/sandboxes/{}/start", enc(&args.id))).await?;
    ctx.emit(&v, quiet)
}
