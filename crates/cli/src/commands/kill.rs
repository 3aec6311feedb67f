//! `spinup kill`: a signal to a process group in a sandbox.

use anyhow::Result;
use spinup_protocol::SignalRequest;

use crate::client::enc;
use crate::ctx::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    pid: u32,
    #[arg(short, long, default_value_t = 15)]
    signal: i32,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let path = format!("/v1/sandboxes/{}/processes/{}/signal", enc(&args.id), args.pid);
    ctx.client.post(&path, &SignalRequest { signal: args.signal }).await?;
    Ok(())
}
