//! `spinup bench`: the performance harness (the `spinup-bench` crate) run
//! against this daemon, through this CLI's client.

use std::path::PathBuf;

use anyhow::Result;
use http::Method;
use serde_json::Value;
use spinup_protocol::client::Body;

use crate::client::{Client, Io};
use crate::ctx::Ctx;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    #[arg(long, default_value_t = 300)]
    exec_iterations: usize,
    /// Idle sandboxes for the memory figure.
    #[arg(long, default_value_t = 10)]
    idle: usize,
    /// The running daemon's data dir (to find the busybox layer).
    #[arg(long, env = "SPINUP_DATA_DIR", default_value = spinup_daemon::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long)]
    driver: Option<String>,
    /// Measure snapshots, fork, pause/resume and memory restore instead.
    #[arg(long)]
    snapshots: bool,
    /// Measure HTTP from a sandbox and through the secrets proxy instead.
    #[arg(long, conflicts_with = "snapshots")]
    network: bool,
    /// Measure the official E2B Python SDK through this E2B listener
    /// (e.g. http://127.0.0.1:3000) against the native API instead.
    #[arg(long, conflicts_with_all = ["snapshots", "network"])]
    e2b: Option<String>,
    /// The Python with the `e2b` package (for --e2b).
    #[arg(long, default_value = "/var/tmp/spinup-e2b/venv/bin/python")]
    python: PathBuf,
    /// The environment (--e2b: default base; --code: code-interpreter;
    /// --clients: busybox).
    #[arg(long)]
    env: Option<String>,
    /// Measure the code interpreter instead: run_code("1+1") warm and on a
    /// new sandbox, against exec of python3 -c in the same sandbox.
    #[arg(long, conflicts_with_all = ["snapshots", "network", "e2b", "clients"])]
    code: bool,
    /// New sandboxes for the first-run_code figure (for --code).
    #[arg(long, default_value_t = 5)]
    sandboxes: usize,
    /// Measure create → first exec through the Python SDK and this CLI
    /// against the raw HTTP API instead.
    #[arg(long, conflicts_with_all = ["snapshots", "network", "e2b"])]
    clients: bool,
    /// The Python with the `spinup` package (for --clients).
    #[arg(long, default_value = "/var/tmp/spinup-py/venv/bin/python")]
    sdk_python: PathBuf,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let c = &ctx.client;
    if let Some(url) = args.e2b {
        let api_key = std::env::var("SPINUP_API_KEY")
            .or_else(|_| std::env::var("E2B_API_KEY"))
            .ok()
            .ok_or_else(|| anyhow::anyhow!("--e2b needs the daemon's API key (SPINUP_API_KEY or E2B_API_KEY)"))?;
        let o = spinup_bench::E2bOpts {
            url,
            api_key,
            python: args.python,
            env: args.env.unwrap_or_else(|| "base".into()),
            iterations: args.iterations,
            exec_iterations: args.exec_iterations,
        };
        let v = spinup_bench::run_e2b(c, o).await?;
        return ctx.emit(&v, |v: Value| spinup_bench::print_e2b_table(&v));
    }
    if args.code {
        let env = args.env.unwrap_or_else(|| "code-interpreter".into());
        let o =
            spinup_bench::CodeOpts { env, driver: args.driver, sandboxes: args.sandboxes, iterations: args.iterations };
        let v = spinup_bench::run_code_bench(c, o).await?;
        return ctx.emit(&v, |v: Value| spinup_bench::print_code_table(&v));
    }
    if args.clients {
        let env = args.env.unwrap_or_else(|| "busybox".into());
        let host = std::env::var("SPINUP_HOST").unwrap_or_else(|_| spinup_daemon::DEFAULT_SOCKET.to_string());
        let o = spinup_bench::ClientOpts {
            env,
            iterations: args.iterations,
            python: args.sdk_python,
            cli: std::env::current_exe()?,
            host,
        };
        let v = spinup_bench::run_clients(c, o).await?;
        return ctx.emit(&v, |v: Value| spinup_bench::print_clients_table(&v));
    }
    let o = spinup_bench::Opts {
        iterations: args.iterations,
        exec_iterations: args.exec_iterations,
        idle: args.idle,
        data_dir: args.data_dir,
        driver: args.driver,
    };
    if args.snapshots {
        let v = spinup_bench::run_snapshots(c, o).await?;
        ctx.emit(&v, |v: Value| spinup_bench::print_snapshot_table(&v))
    } else if args.network {
        let v = spinup_bench::run_network(c, o).await?;
        ctx.emit(&v, |v: Value| spinup_bench::print_network_table(&v))
    } else {
        let v = spinup_bench::run(c, o).await?;
        ctx.emit(&v, |v: Value| spinup_bench::print_table(&v))
    }
}

#[async_trait::async_trait]
impl spinup_bench::Api for Client {
    type Io = Box<dyn Io>;

    async fn connect(&self) -> Result<Box<dyn Io>> {
        Client::connect(self).await
    }

    async fn call(&self, method: Method, path: &str, body: Body) -> Result<Value> {
        self.json_body(method, path, body).await
    }
}
