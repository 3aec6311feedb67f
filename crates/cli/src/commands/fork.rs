//! `spinup fork`: snapshot a sandbox and start children from it; prints
//! their ids.

use anyhow::Result;
use spinup_api::{ForkRequest, ForkResult};

use crate::client::enc;
use crate::ctx::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The children's driver (default: the parent's).
    #[arg(long)]
    driver: Option<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let req = ForkRequest { count: Some(args.count), driver: args.driver };
    let v = ctx.client.post(&format!("/v1/sandboxes/{}/fork", enc(&args.id)), &req).await?;
    ctx.emit(&v, |fork: ForkResult| {
        for child in fork.children {
            println!("{}", child.id);
        }
    })
}
