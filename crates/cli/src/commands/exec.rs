//! `spinup exec`: run a command in a sandbox; exits with its exit code.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use spinup_api::ExecRequest;

use crate::ctx::Ctx;
use crate::session;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Start in the background and print the pid.
    #[arg(short, long)]
    detach: bool,
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<i32> {
    let mut env = BTreeMap::new();
    for kv in args.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("-e '{kv}' must be KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let req = ExecRequest {
        argv: args.cmd,
        env,
        cwd: args.workdir,
        user: args.user,
        timeout_ms: args.timeout.map(|t| (t * 1000.0) as u64),
        background: args.detach,
        stdin: args.interactive,
        ..Default::default()
    };
    session::run(&ctx.client, &args.id, req, args.tty, args.detach, ctx.json).await
}
