//! `spinup inspect`: one sandbox, always as the API's JSON.

use anyhow::Result;

use crate::client::enc;
use crate::ctx::Ctx;
use crate::output::print_json;

#[derive(clap::Args)]
pub struct Args {
    id: String,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    print_json(&ctx.client.get(&format!("/v1/sandboxes/{}", enc(&args.id))).await?);
    Ok(())
}
