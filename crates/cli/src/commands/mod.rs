//! One module per verb (or verb group); [`run`] only routes. Each verb's
//! `run` returns the process's exit code, or `()` for 0.

pub mod attach;
pub mod audit;
pub mod bench;
pub mod cp;
pub mod create;
pub mod diff;
pub mod drivers;
pub mod env;
pub mod exec;
pub mod fork;
pub mod gc;
pub mod inspect;
pub mod key;
pub mod kill;
pub mod ls;
pub mod mcp;
pub mod net;
pub mod pause;
pub mod port;
pub mod ps;
pub mod resume;
pub mod rm;
pub mod secret;
pub mod serve;
pub mod snapshot;
pub mod start;
pub mod timeout;

use anyhow::Result;

use crate::cli::Command;
use crate::ctx::Ctx;

pub async fn run(cmd: Command, ctx: &Ctx) -> Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("`spinup serve` runs before any client runtime exists"),
        Command::Create(a) => create::run(a, ctx).await.map(ok),
        Command::Net(c) => net::run(c, ctx).await.map(ok),
        Command::Port(a) => port::run(a, ctx).await.map(ok),
        Command::Secret(c) => secret::run(c, ctx).await.map(ok),
        Command::Snapshot(a) => snapshot::run(a, ctx).await,
        Command::Snapshots => snapshot::ls(ctx).await.map(ok),
        Command::Fork(a) => fork::run(a, ctx).await.map(ok),
        Command::Diff(a) => diff::run(a, ctx).await.map(ok),
        Command::Exec(a) => exec::run(a, ctx).await,
        Command::Attach(a) => attach::run(a, ctx).await,
        Command::Ps(a) => ps::run(a, ctx).await.map(ok),
        Command::Kill(a) => kill::run(a, ctx).await.map(ok),
        Command::Ls(a) => ls::run(a, ctx).await.map(ok),
        Command::Inspect(a) => inspect::run(a, ctx).await.map(ok),
        Command::Rm(a) => rm::run(a, ctx).await,
        Command::Timeout(a) => timeout::run(a, ctx).await.map(ok),
        Command::Pause(a) => pause::run(a, ctx).await.map(ok),
        Command::Resume(a) => resume::run(a, ctx).await.map(ok),
        Command::Start(a) => start::run(a, ctx).await.map(ok),
        Command::Cp(a) => cp::run(a, ctx).await.map(ok),
        Command::Env(c) => env::run(c, ctx).await.map(ok),
        Command::Drivers => drivers::run(ctx).await.map(ok),
        Command::Gc => gc::run(ctx).await,
        Command::Key(c) => key::run(c, ctx).await.map(ok),
        Command::Audit(a) => audit::run(a, ctx).await.map(ok),
        Command::Bench(a) => bench::run(a, ctx).await.map(ok),
        Command::Mcp => mcp::run(ctx).await,
    }
}

/// A verb that succeeded exits with 0.
fn ok((): ()) -> i32 {
    0
}
