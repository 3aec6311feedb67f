//! `spinup`: `spinup serve` runs the daemon; every other verb is a client
//! of its API. `--json` prints the API's answer as is.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a CLI: what it prints is its interface")]

mod cli;
mod client;
mod commands;
mod ctx;
mod flags;
mod output;
mod session;

use clap::Parser;

use cli::{Cli, Command};
use ctx::Ctx;

fn main() {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Serve(args) => return commands::serve::main(args, cli.api_key),
        command => command,
    };
    // A client makes one call at a time: one thread keeps latency low.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        let ctx = Ctx::new(cli.host, cli.api_key, cli.json)?;
        commands::run(command, &ctx).await
    });
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spinup: {e:#}");
            // Like docker: 125 when spinup itself failed, not the command.
            125
        }
    };
    std::process::exit(code);
}
