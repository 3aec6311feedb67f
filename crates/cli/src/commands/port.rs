//! `spinup port ID` lists a sandbox's exposed ports, `port ID PORT` exposes
//! one through the daemon (printing its address and access token), and
//! `port ID PORT --rm` removes it.

use anyhow::Result;
use spinup_api::{ExposeAnswer, ExposeRequest, PortExposure};

use crate::client::enc;
use crate::ctx::Ctx;
use crate::output::table;

// Not subcommands: the sandbox comes first (`port ID PORT`).
#[derive(clap::Args)]
pub struct Args {
    id: String,
    port: Option<u16>,
    /// No access token needed.
    #[arg(long)]
    public: bool,
    /// On a unix socket instead of loopback TCP.
    #[arg(long)]
    unix: bool,
    /// Loopback address to listen on (default 127.0.0.1, any free port).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<String>,
    #[arg(long)]
    rm: bool,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let ports = format!("/v1/sandboxes/{}/ports", enc(&args.id));
    match (args.port, args.rm) {
        (None, _) => {
            let v = ctx.client.get(&ports).await?;
            ctx.emit(&v, |ports: Vec<PortExposure>| {
                let rows = ports
                    .iter()
                    .map(|p| {
                        let access = if p.public { "public" } else { "token" };
                        vec![p.port.to_string(), p.address.clone(), access.into()]
                    })
                    .collect();
                table(&["PORT", "ADDRESS", "ACCESS"], rows);
            })
        }
        (Some(p), true) => {
            ctx.client.delete(&format!("{ports}/{p}")).await?;
            Ok(())
        }
        (Some(port), false) => {
            let req = ExposeRequest { port, public: args.public, unix: args.unix, listen: args.listen };
            let v = ctx.client.post(&ports, &req).await?;
            ctx.emit(&v, |a: ExposeAnswer| {
                println!("{}", a.url.as_deref().unwrap_or(&a.address));
                if let Some(t) = a.token {
                    println!("token: {t}  (send it as the X-Spinup-Token header or ?spinup_token=)");
                }
            })
        }
    }
}
