//! The command line: global flags and one subcommand per file under
//! `commands/`.

use clap::{Parser, Subcommand};

use crate::commands::{
    attach, audit, bench, cp, create, diff, env, exec, fork, inspect, key, kill, ls, net, pause, port, ps, resume, rm,
    secret, serve, snapshot, start, timeout,
};

#[derive(Parser)]
#[command(name = "spinup", version, about = "Spinup: a small computer for every AI agent")]
pub struct Cli {
    /// Daemon address: a unix socket path or http://HOST:PORT.
    #[arg(long, global = true, env = "SPINUP_HOST")]
    pub host: Option<String>,
    /// API key for a TCP daemon.
    #[arg(long, global = true, env = "SPINUP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(serve::Args),
    /// Create a sandbox and print its id.
    Create(create::Args),
    /// Network policy of a running sandbox: `net set ID --mode M [--allow X]...`, `net show ID`.
    #[command(subcommand)]
    Net(net::Command),
    /// Expose a port of a sandbox through the daemon (prints the address and
    /// the access token); `port ID` lists, `port ID PORT --rm` removes.
    Port(port::Args),
    /// Secrets: `secret set NAME [--file F]` (value from stdin or F), `secret ls`,
    /// `secret rm NAME`, `secret attach ID NAME[:MODE]...`, `secret detach ID NAME...`.
    #[command(subcommand)]
    Secret(secret::Command),
    /// Snapshot a sandbox's filesystem changes and print the snapshot's id;
    /// `snapshot ls` lists snapshots, `snapshot rm S...` removes them.
    Snapshot(snapshot::Args),
    /// List snapshots (same as `snapshot ls`).
    Snapshots,
    /// Snapshot a sandbox and start COUNT children from it; prints their ids.
    Fork(fork::Args),
    /// Paths added, modified and deleted since creation (or a snapshot).
    Diff(diff::Args),
    /// Run a command in a sandbox; exits with its exit code.
    Exec(exec::Args),
    /// Re-attach to a process started in a sandbox.
    Attach(attach::Args),
    /// List processes started in a sandbox.
    Ps(ps::Args),
    /// Send a signal to a process group in a sandbox.
    Kill(kill::Args),
    /// List sandboxes.
    Ls(ls::Args),
    /// Show one sandbox as JSON.
    Inspect(inspect::Args),
    /// Destroy sandboxes.
    Rm(rm::Args),
    /// Set a sandbox's timeout (seconds from now; 0 clears it).
    Timeout(timeout::Args),
    /// Freeze every process of a sandbox in place (memory kept); with
    /// --free-memory, save its memory to disk and stop its VM (microvm).
    Pause(pause::Args),
    /// Continue a paused sandbox.
    Resume(resume::Args),
    /// Boot a stopped sandbox again on the disk it kept (its files as they
    /// were), with a fresh init; `rm` deletes it for good.
    Start(start::Args),
    /// Copy a file between the host and a sandbox: SRC DST, one of them ID:/path ('-' is stdin/stdout).
    Cp(cp::Args),
    /// Environments: ls | import NAME PATH | build NAME | rm NAME.
    #[command(subcommand)]
    Env(env::Command),
    /// The drivers and their capability matrix.
    Drivers,
    /// Remove what belongs to no sandbox in the daemon's store: network
    /// namespaces, links, nftables chains, mounts, cgroups and processes a
    /// killed daemon (or a failed teardown) left behind. Every daemon
    /// start does the same.
    Gc,
    /// API keys for the TCP listeners: `key create --tenant NAME [--max-sandboxes N
    /// --max-vcpus N --max-memory-mib N]` (or `--admin`), `key ls`, `key rm ID...`.
    #[command(subcommand)]
    Key(key::Command),
    /// The audit log: who did what to which object, when, with what result.
    Audit(audit::Args),
    /// Measure create→first exec, exec round trip and idle memory against
    /// runc and bwrap baselines taken in the same run (needs root, runc, bwrap).
    Bench(bench::Args),
    /// Serve MCP (Model Context Protocol) on stdin/stdout for a desktop
    /// agent: the daemon's sandbox tools, through its /mcp endpoint.
    Mcp,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    fn parse(line: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("spinup").chain(line.split_whitespace())).map(|c| c.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_documented_form_parses() {
        for line in [
            "snapshot 0123456789ab --name n --memory --label a=b",
            "snapshot ls",
            "snapshot rm s1 s2",
            "snapshots",
            "net set 0123456789ab --mode allow --allow pypi.org --add-host a=10.0.0.1",
            "net show 0123456789ab",
            "port 0123456789ab",
            "port 0123456789ab 8000 --public",
            "port 0123456789ab 8000 --rm",
            "secret set NAME --file /dev/null",
            "secret ls",
            "secret rm A B",
            "secret attach 0123456789ab A B:env C:proxy=api.example.com",
            "secret detach 0123456789ab A B",
            "env ls",
            "env import n /tmp",
            "env build busybox",
            "env rm n",
            "bench --snapshots --iterations 3",
            "exec -it 0123456789ab -- sh -c true",
            "mcp",
            "key create --tenant acme --max-sandboxes 3 --max-vcpus 4 --max-memory-mib 4096",
            "key create --admin",
            "key ls",
            "key rm 0123456789ab",
            "audit --tenant acme --limit 10",
        ] {
            assert!(parse(line).is_ok(), "{line}: {}", parse(line).err().unwrap());
        }
    }

    #[test]
    fn snapshot_id_and_subcommands_do_not_mix() {
        assert!(parse("snapshot").is_err());
        assert!(parse("snapshot rm").is_err());
        assert!(parse("snapshot ls --name x").is_err());
        assert!(parse("snapshot a b").is_err());
        assert!(matches!(parse("snapshot abc"), Ok(Command::Snapshot(_))));
    }
}
