//! `spinup rm`: destroy sandboxes; each id removed is printed, and the exit
//! code is 1 when any could not be.

use crate::client::enc;
use crate::ctx::Ctx;
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Also destroy running sandboxes.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<i32> {
    let mut failed = false;
    for id in args.ids {
        match ctx.client.delete(&format!("/v1/sandboxes/{}?force={}", enc(&id), args.force)).await {
            Ok(_) => println!("{id}"),
            Err(e) => {
                eprintln!("spinup: rm {id}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
