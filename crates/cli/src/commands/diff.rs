//! `spinup diff`: paths added, modified and deleted since creation (or a
//! snapshot), and with `--path` one path's content before and after.

use anyhow::Result;
use spinup_api::{Diff, DiffQuery};

use crate::client::enc;
use crate::ctx::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    #[arg(long, value_name = "SNAPSHOT")]
    since: Option<String>,
    /// Show one path's content before and after.
    #[arg(long)]
    path: Option<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let q = DiffQuery { content: args.path.is_some(), since: args.since, path: args.path };
    let mut pairs = vec![];
    if let Some(s) = &q.since {
        pairs.push(format!("since={}", enc(s)));
    }
    if let Some(p) = &q.path {
        pairs.push(format!("path={}&content={}", enc(p), q.content));
    }
    let v = ctx.client.get(&format!("/v1/sandboxes/{}/diff?{}", enc(&args.id), pairs.join("&"))).await?;
    ctx.emit(&v, |diff: Diff| {
        for ch in &diff.changes {
            let mark = match ch.kind.as_str() {
                "added" => "A",
                "deleted" => "D",
                _ => "M",
            };
            println!("{mark} {:>10} {}", ch.size, ch.path);
        }
        if q.path.is_some() {
            for (text, label) in [(&diff.before, "--- before"), (&diff.after, "+++ after")] {
                match text {
                    Some(t) => println!("{label}\n{t}"),
                    None => println!("{label}: (absent or not a file)"),
                }
            }
        }
    })
}
