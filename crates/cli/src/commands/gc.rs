//! `spinup gc`: remove what belongs to no sandbox in the daemon's store;
//! the exit code is 1 when something could not be removed.

use anyhow::Result;
use serde::Deserialize;
use spinup_api::GcReport;

use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx) -> Result<i32> {
    let v = ctx.client.post_empty("/v1/gc").await?;
    let report = GcReport::deserialize(&v)?;
    ctx.emit(&v, |r: GcReport| {
        for l in &r.removed {
            println!("removed {l}");
        }
        for l in &r.failed {
            eprintln!("could not remove {l}");
        }
        if r.removed.is_empty() && r.failed.is_empty() {
            println!("nothing to remove");
        }
    })?;
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
