//! `spinup attach`: re-attach to a process started in a sandbox.

use anyhow::Result;

use crate::ctx::Ctx;
use crate::session;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    pid: u32,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<i32> {
    session::attach(&ctx.client, &args.id, args.pid).await
}
