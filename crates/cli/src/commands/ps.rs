//! `spinup ps`: the processes started in a sandbox.

use anyhow::Result;
use spinup_protocol::ProcessInfo;

use crate::client::enc;
use crate::ctx::Ctx;
use crate::output::table;

#[derive(clap::Args)]
pub struct Args {
    id: String,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let v = ctx.client.get(&format!("/v1/sandboxes/{}/processes", enc(&args.id))).await?;
    ctx.emit(&v, |procs: Vec<ProcessInfo>| {
        let rows = procs
            .iter()
            .map(|p| {
                let state = match &p.exit {
                    _ if p.running => "running".to_string(),
                    Some(e) => format!("exited({})", e.exit_code),
                    None => "exited(null)".to_string(),
                };
                vec![p.pid.to_string(), state, if p.background { "yes".into() } else { "no".into() }, p.argv.join(" ")]
            })
            .collect();
        table(&["PID", "STATE", "BACKGROUND", "COMMAND"], rows);
    })
}
