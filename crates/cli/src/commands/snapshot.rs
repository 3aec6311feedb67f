//! `spinup snapshot ID`, `snapshot ls` (also `spinup snapshots`) and
//! `snapshot rm S...`.

use anyhow::Result;
use clap::Subcommand;
use spinup_api::{Snapshot, SnapshotRequest};

use crate::client::enc;
use crate::ctx::Ctx;
use crate::flags;
use crate::output::{ago, table};

// `snapshot ID [--name N]` is the verb itself; `ls` and `rm` are
// subcommands (ids are 12 hex digits, so never `ls` or `rm`).
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The sandbox to snapshot.
    #[arg(required = true)]
    id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Keep the processes' memory too (drivers with memory_snapshot).
    #[arg(long)]
    memory: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List snapshots.
    Ls,
    /// Remove snapshots (by id or name).
    Rm {
        #[arg(required = true, value_name = "S")]
        snapshots: Vec<String>,
    },
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<i32> {
    match (args.command, args.id) {
        (Some(Command::Ls), _) => ls(ctx).await.map(|()| 0),
        (Some(Command::Rm { snapshots }), _) => rm(ctx, snapshots).await,
        (None, id) => {
            let id = id.expect("clap requires ID without a subcommand");
            let req = SnapshotRequest { name: args.name, labels: flags::labels(&args.labels)?, memory: args.memory };
            let v = ctx.client.post(&format!("/v1/sandboxes/{}/snapshot", enc(&id)), &req).await?;
            ctx.emit(&v, |s: Snapshot| println!("{}", s.id))?;
            Ok(0)
        }
    }
}

/// `spinup snapshot ls`, `spinup snapshots`.
pub async fn ls(ctx: &Ctx) -> Result<()> {
    let v = ctx.client.get("/v1/snapshots").await?;
    ctx.emit(&v, |snapshots: Vec<Snapshot>| {
        let rows = snapshots
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.name.clone().unwrap_or_else(|| "-".into()),
                    s.sandbox_id.clone(),
                    s.driver.clone(),
                    s.env.clone(),
                    format!("{} KiB", s.size_bytes / 1024),
                    ago(s.created_at),
                ]
            })
            .collect();
        table(&["ID", "NAME", "FROM", "DRIVER", "ENV", "SIZE", "CREATED"], rows);
    })
}

/// Each snapshot removed is printed; 1 when any could not be.
async fn rm(ctx: &Ctx, snapshots: Vec<String>) -> Result<i32> {
    let mut failed = false;
    for s in snapshots {
        match ctx.client.delete(&format!("/v1/snapshots/{}", enc(&s))).await {
            Ok(_) => println!("{s}"),
            Err(e) => {
                eprintln!("spinup: snapshot rm {s}: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
