//! `spinup`: `spinup serve` runs the daemon; every other verb is a client
//! of its API. `--json` prints the API's answer as is.

mod client;
mod exec;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use client::{enc, ChannelWriter, Client};

/// The static agent, built by build.rs and embedded here.
static AGENT: &[u8] = include_bytes!(env!("SPINUP_EMBEDDED_AGENT"));

#[derive(Parser)]
#[command(name = "spinup", version, about = "Spinup: a small computer for every AI agent")]
struct Cli {
    /// Daemon address: a unix socket path or http://HOST:PORT.
    #[arg(long, global = true, env = "SPINUP_HOST")]
    host: Option<String>,
    /// API key for a TCP daemon.
    #[arg(long, global = true, env = "SPINUP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        #[arg(long, env = "SPINUP_DATA_DIR", default_value = spinup_daemon::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, env = "SPINUP_SOCKET", default_value = spinup_daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Also listen on TCP (every request needs SPINUP_API_KEY as a bearer token).
        #[arg(long)]
        tcp: Option<std::net::SocketAddr>,
        /// Daemon config file (TOML); a missing default file is fine.
        #[arg(long, env = "SPINUP_CONFIG")]
        config: Option<PathBuf>,
        /// OCI runtime for the container driver (crun, runc or a path); probed when unset.
        #[arg(long, env = "SPINUP_RUNTIME")]
        runtime: Option<String>,
        /// gVisor platform (systrap, ptrace, kvm); probed when unset.
        #[arg(long, env = "SPINUP_GVISOR_PLATFORM")]
        gvisor_platform: Option<String>,
        /// Driver used when a create names none: container, gvisor, microvm or auto.
        #[arg(long, env = "SPINUP_DEFAULT_DRIVER")]
        default_driver: Option<String>,
        /// microVM accelerator: auto (KVM if a probe guest boots under it, else TCG), kvm or tcg.
        #[arg(long, env = "SPINUP_ACCEL")]
        accel: Option<String>,
        /// microVM guest kernel to use instead of Debian's cloud kernel.
        #[arg(long, env = "SPINUP_KERNEL")]
        kernel: Option<PathBuf>,
        /// microVM initramfs (its /init must be spinup-agent); needs --kernel.
        #[arg(long, env = "SPINUP_INITRD")]
        initrd: Option<PathBuf>,
        /// Where the downloaded guest kernel lives (default <data-dir>/microvm/kernel).
        #[arg(long, env = "SPINUP_KERNEL_DIR")]
        kernel_dir: Option<PathBuf>,
        /// Parent cgroup for sandboxes.
        #[arg(long, env = "SPINUP_CGROUP_PARENT", default_value = "spinup")]
        cgroup_parent: String,
    },
    /// Create a sandbox and print its id.
    Create {
        #[arg(long, default_value = "busybox")]
        env: String,
        #[arg(long)]
        driver: Option<String>,
        /// Destroy the sandbox this many seconds from now.
        #[arg(long)]
        timeout: Option<u64>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<u64>,
        #[arg(long)]
        cpus: Option<f64>,
        #[arg(long)]
        pids: Option<u64>,
        #[arg(long)]
        disk: Option<u64>,
        /// key=value, repeatable.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Start from a snapshot (id or name) instead of --env; any driver.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with = "env")]
        from_snapshot: Option<String>,
        /// What the timeout does: destroy (default) or pause.
        #[arg(long, value_name = "destroy|pause")]
        on_timeout: Option<String>,
        /// Resume by itself on exec or file access when paused.
        #[arg(long)]
        auto_resume: bool,
        /// Network mode: none (default: loopback only), allow (only --allow), open.
        #[arg(long, value_name = "none|allow|open")]
        net: Option<String>,
        /// Domain (pypi.org, *.example.com) or IPv4 CIDR the sandbox may reach; repeatable.
        #[arg(long = "allow", value_name = "DOMAIN|CIDR")]
        allow: Vec<String>,
        /// A static name for the sandbox's resolver, NAME=IPv4; repeatable.
        #[arg(long = "add-host", value_name = "NAME=IP")]
        hosts: Vec<String>,
        /// Attach a secret: NAME (file), NAME:env, NAME:proxy=HOST[,HOST]; repeatable.
        #[arg(long = "secret", value_name = "NAME[:MODE]")]
        secrets: Vec<String>,
    },
    /// Network policy of a running sandbox: `net set ID --mode M [--allow X]...`, `net show ID`.
    Net {
        /// set | show
        action: String,
        id: String,
        #[arg(long, value_name = "none|allow|open")]
        mode: Option<String>,
        #[arg(long = "allow", value_name = "DOMAIN|CIDR")]
        allow: Vec<String>,
        #[arg(long = "add-host", value_name = "NAME=IP")]
        hosts: Vec<String>,
    },
    /// Expose a port of a sandbox through the daemon (prints the address and
    /// the access token); `port ID` lists, `port ID PORT --rm` removes.
    Port {
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
    },
    /// Secrets: `secret set NAME [--file F]` (value from stdin or F), `secret ls`,
    /// `secret rm NAME`, `secret attach ID NAME[:MODE]...`, `secret detach ID NAME...`.
    Secret {
        /// set | ls | rm | attach | detach, then its arguments
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
        /// Read the value from this file (set).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Snapshot a sandbox's filesystem changes and print the snapshot's id;
    /// `snapshot ls` lists snapshots, `snapshot rm S...` removes them.
    Snapshot {
        /// ID | ls | rm S...
        #[arg(required = true, num_args = 1.., value_name = "ID")]
        args: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// key=value, repeatable.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Keep the processes' memory too (drivers with memory_snapshot).
        #[arg(long)]
        memory: bool,
    },
    /// List snapshots (same as `snapshot ls`).
    Snapshots,
    /// Snapshot a sandbox and start COUNT children from it; prints their ids.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The children's driver (default: the parent's).
        #[arg(long)]
        driver: Option<String>,
    },
    /// Paths added, modified and deleted since creation (or a snapshot).
    Diff {
        id: String,
        #[arg(long, value_name = "SNAPSHOT")]
        since: Option<String>,
        /// Show one path's content before and after.
        #[arg(long)]
        path: Option<String>,
    },
    /// Run a command in a sandbox; exits with its exit code.
    Exec {
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
    },
    /// Re-attach to a process started in a sandbox.
    Attach { id: String, pid: u32 },
    /// List processes started in a sandbox.
    Ps { id: String },
    /// Send a signal to a process group in a sandbox.
    Kill {
        id: String,
        pid: u32,
        #[arg(short, long, default_value_t = 15)]
        signal: i32,
    },
    /// List sandboxes.
    Ls {
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
    },
    /// Show one sandbox as JSON.
    Inspect { id: String },
    /// Destroy sandboxes.
    Rm {
        /// Also destroy running sandboxes.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set a sandbox's timeout (seconds from now; 0 clears it).
    Timeout { id: String, seconds: u64 },
    /// Freeze every process of a sandbox in place (memory kept); with
    /// --free-memory, save its memory to disk and stop its VM (microvm).
    Pause {
        id: String,
        #[arg(long)]
        free_memory: bool,
    },
    /// Continue a paused sandbox.
    Resume { id: String },
    /// Copy a file between the host and a sandbox: SRC DST, one of them ID:/path ('-' is stdin/stdout).
    Cp { src: String, dst: String },
    /// Environments: ls | import NAME PATH | build NAME | rm NAME.
    #[command(subcommand)]
    Env(EnvCmd),
    /// The drivers and their capability matrix.
    Drivers,
    /// Remove what belongs to no sandbox in the daemon's store: network
    /// namespaces, links, nftables chains, mounts, cgroups and processes a
    /// killed daemon (or a failed teardown) left behind. Every daemon
    /// start does the same.
    Gc,
    /// Measure create→first exec, exec round trip and idle memory against
    /// runc and bwrap baselines taken in the same run (needs root, runc, bwrap).
    Bench {
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
    },
}

#[derive(Subcommand)]
enum EnvCmd {
    Ls,
    /// Import a rootfs directory or tarball (tar, tar.gz).
    Import {
        name: String,
        path: PathBuf,
    },
    /// Build a built-in recipe (busybox, debian).
    Build {
        name: String,
    },
    Rm {
        name: String,
    },
}

/// A network policy from the CLI's flags.
fn policy_json(mode: Option<&str>, allow: &[String], hosts: &[String]) -> Result<Value> {
    let mode = mode.unwrap_or(if allow.is_empty() { "open" } else { "allow" });
    let mut h = serde_json::Map::new();
    for e in hosts {
        let (n, ip) = e.split_once('=').with_context(|| format!("--add-host {e:?} must be NAME=IP"))?;
        h.insert(n.to_string(), ip.into());
    }
    Ok(json!({"mode": mode, "allow": allow, "hosts": h}))
}

/// `NAME`, `NAME:env`, `NAME:proxy=h1,h2` into the API's mounts.
fn secret_mounts(specs: &[String]) -> Result<Value> {
    let mut out = vec![];
    for s in specs {
        let m = spinup_model::SecretMount::parse(s).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(serde_json::to_value(m)?);
    }
    Ok(Value::Array(out))
}

async fn secret_cmd(c: &Client, args: &[String], file: Option<PathBuf>, as_json: bool) -> Result<()> {
    match (args[0].as_str(), &args[1..]) {
        ("set", [name]) => {
            let value = match file {
                Some(f) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                None => {
                    use std::io::{IsTerminal, Read};
                    if std::io::stdin().is_terminal() {
                        eprintln!("value for {name} (end with Ctrl-D):");
                    }
                    let mut b = vec![];
                    std::io::stdin().read_to_end(&mut b)?;
                    b
                }
            };
            // One trailing newline (from echo or a file) is not part of it.
            let mut value = value;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            let v = c
                .json_body(Method::PUT, &format!("/v1/secrets/{}", enc(name)), spinup_protocol::client::full_body(value))
                .await?;
            if as_json {
                print_json(&v);
            }
        }
        ("ls", []) => {
            let v = c.json(Method::GET, "/v1/secrets", None).await?;
            if as_json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| vec![s["name"].as_str().unwrap_or("").to_string(), ago(s["updated_at"].as_i64().unwrap_or(0))])
                    .collect();
                table(&["NAME", "UPDATED"], rows);
            }
        }
        ("rm", names) if !names.is_empty() => {
            for n in names {
                c.json(Method::DELETE, &format!("/v1/secrets/{}", enc(n)), None).await?;
            }
        }
        ("attach", [id, specs @ ..]) if !specs.is_empty() => {
            let body = json!({"attach": secret_mounts(specs)?});
            c.json(Method::POST, &format!("/v1/sandboxes/{}/secrets", enc(id)), Some(body)).await?;
        }
        ("detach", [id, names @ ..]) if !names.is_empty() => {
            let body = json!({"detach": names});
            c.json(Method::POST, &format!("/v1/sandboxes/{}/secrets", enc(id)), Some(body)).await?;
        }
        _ => bail!("usage: secret set NAME [--file F] | secret ls | secret rm NAME... | secret attach ID NAME[:MODE]... | secret detach ID NAME..."),
    }
    Ok(())
}

fn labels_map(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label '{l}' must be key=value"))
        })
        .collect()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn ago(ms: i64) -> String {
    let s = (spinup_model::now_ms() - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Build a built-in environment with a progress spinner.
async fn build_env(c: &Client, name: &str, quiet_json: bool) -> Result<Value> {
    use futures::StreamExt;
    let resp = c
        .request(Method::POST, &format!("/v1/environments/{}/build", enc(name)), spinup_protocol::client::empty_body())
        .await?;
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] building {prefix}: {wide_msg}").unwrap(),
    );
    pb.set_prefix(name.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    if quiet_json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut result = None;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line)?;
            if let Some(p) = v["progress"].as_str() {
                pb.set_message(p.to_string());
            } else {
                result = Some(v);
            }
        }
    }
    pb.finish_and_clear();
    let v = result.context("the build stream ended early")?;
    if let Some(e) = v.get("error") {
        bail!("building {name} failed: {}", e["message"].as_str().unwrap_or("unknown error"));
    }
    if !quiet_json {
        eprintln!("built environment {name} ({})", v["environment"]["digest"].as_str().unwrap_or("?"));
    }
    Ok(v["environment"].clone())
}

fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && path.starts_with('/')).then_some((id, path))
}

async fn cp(c: &Client, src: &str, dst: &str) -> Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    match (split_remote(src), split_remote(dst)) {
        (Some(_), Some(_)) => bail!("copying between two sandboxes is not supported; copy through the host"),
        (None, None) => bail!("one of SRC and DST must be ID:/path"),
        (Some((id, path)), None) => {
            let resp = c
                .request(
                    Method::GET,
                    &format!("/v1/sandboxes/{id}/files?path={}", enc(path)),
                    spinup_protocol::client::empty_body(),
                )
                .await?;
            let mut body = resp.into_body().into_data_stream();
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if dst == "-" {
                Box::new(tokio::io::stdout())
            } else {
                let mut local = PathBuf::from(dst);
                if local.is_dir() {
                    local = local.join(std::path::Path::new(path).file_name().context("source has no file name")?);
                }
                Box::new(
                    tokio::fs::File::create(&local).await.with_context(|| format!("creating {}", local.display()))?,
                )
            };
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk?).await?;
            }
            out.flush().await?;
        }
        (None, Some((id, path))) => {
            let mut path = path.to_string();
            if path.ends_with('/') {
                let name = std::path::Path::new(src).file_name().context("source has no file name")?;
                path.push_str(&name.to_string_lossy());
            } else if let Ok(st) =
                c.json(Method::GET, &format!("/v1/sandboxes/{id}/files/stat?path={}", enc(&path)), None).await
            {
                if st["kind"] == "dir" {
                    let name = std::path::Path::new(src).file_name().context("source has no file name")?;
                    path = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
                }
            }
            let mode = if src == "-" {
                None
            } else {
                let m = std::fs::metadata(src).with_context(|| format!("reading {src}"))?;
                if m.is_dir() {
                    bail!(
                        "{src} is a directory; cp copies files (use `spinup env import` or tar through exec for trees)"
                    );
                }
                use std::os::unix::fs::PermissionsExt;
                Some(m.permissions().mode() & 0o7777)
            };
            let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
                if src == "-" { Box::new(tokio::io::stdin()) } else { Box::new(tokio::fs::File::open(src).await?) };
            let stream = tokio_util_stream(reader);
            let body = http_body_util::StreamBody::new(stream.map(|r| r.map(hyper::body::Frame::data)));
            let mut uri = format!("/v1/sandboxes/{id}/files?path={}", enc(&path));
            if let Some(m) = mode {
                uri.push_str(&format!("&mode={m}"));
            }
            c.request(Method::PUT, &uri, BodyExt::boxed_unsync(body)).await?;
        }
    }
    Ok(())
}

fn tokio_util_stream(
    r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    tokio_util::io::ReaderStream::with_capacity(r, 256 * 1024)
}

async fn run(cli: Cli) -> Result<i32> {
    let c = Client::new(cli.host.clone(), cli.api_key.clone())?;
    match cli.cmd {
        Cmd::Serve { .. } => unreachable!("handled in main"),
        Cmd::Create {
            env,
            driver,
            timeout,
            memory,
            cpus,
            pids,
            disk,
            labels,
            from_snapshot,
            on_timeout,
            auto_resume,
            net,
            allow,
            hosts,
            secrets,
        } => {
            if from_snapshot.is_none()
                && spinup_daemon::envs::BUILTINS.contains(&env.as_str())
                && c.json(Method::GET, &format!("/v1/environments/{}", enc(&env)), None).await.is_err()
            {
                build_env(&c, &env, cli.json).await?;
            }
            let mut resources = serde_json::Map::new();
            for (k, v) in [
                ("memory_mib", memory.map(Value::from)),
                ("vcpus", cpus.map(Value::from)),
                ("pids", pids.map(Value::from)),
                ("disk_mib", disk.map(Value::from)),
            ] {
                if let Some(v) = v {
                    resources.insert(k.into(), v);
                }
            }
            let mut body = json!({"labels": labels_map(&labels)?});
            match from_snapshot {
                Some(s) => body["from_snapshot"] = s.into(),
                None => body["env"] = env.into(),
            }
            if let Some(d) = driver {
                body["driver"] = d.into();
            }
            if let Some(t) = timeout {
                body["timeout_s"] = t.into();
            }
            if let Some(o) = on_timeout {
                body["on_timeout"] = o.into();
            }
            if auto_resume {
                body["auto_resume"] = true.into();
            }
            if !resources.is_empty() {
                body["resources"] = Value::Object(resources);
            }
            if net.is_some() || !allow.is_empty() || !hosts.is_empty() {
                body["network"] = policy_json(net.as_deref(), &allow, &hosts)?;
            }
            if !secrets.is_empty() {
                body["secrets"] = secret_mounts(&secrets)?;
            }
            let v = c.json(Method::POST, "/v1/sandboxes", Some(body)).await?;
            if cli.json {
                print_json(&v);
            } else {
                println!("{}", v["id"].as_str().unwrap_or_default());
            }
        }
        Cmd::Exec { id, interactive, tty, detach, env, workdir, user, timeout, cmd } => {
            let mut envs = BTreeMap::new();
            for kv in env {
                let (k, v) = kv.split_once('=').with_context(|| format!("-e '{kv}' must be KEY=VALUE"))?;
                envs.insert(k.to_string(), v.to_string());
            }
            let req = spinup_protocol::ExecRequest {
                argv: cmd,
                cmd: None,
                env: envs,
                cwd: workdir,
                user,
                timeout_ms: timeout.map(|t| (t * 1000.0) as u64),
                background: detach,
                pty: None,
                stdin: interactive,
            };
            return exec::run(&c, &id, req, tty, detach, cli.json).await;
        }
        Cmd::Attach { id, pid } => return exec::attach(&c, &id, pid).await,
        Cmd::Ps { id } => {
            let v = c.json(Method::GET, &format!("/v1/sandboxes/{}/processes", enc(&id)), None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        let state = if p["running"] == true {
                            "running".to_string()
                        } else {
                            format!("exited({})", p["exit"]["exit_code"])
                        };
                        let argv: Vec<String> = p["argv"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|a| a.as_str().unwrap_or("").to_string())
                            .collect();
                        vec![
                            p["pid"].to_string(),
                            state,
                            if p["background"] == true { "yes".into() } else { "no".into() },
                            argv.join(" "),
                        ]
                    })
                    .collect();
                table(&["PID", "STATE", "BACKGROUND", "COMMAND"], rows);
            }
        }
        Cmd::Kill { id, pid, signal } => {
            c.json(
                Method::POST,
                &format!("/v1/sandboxes/{}/processes/{pid}/signal", enc(&id)),
                Some(json!({"signal": signal})),
            )
            .await?;
        }
        Cmd::Ls { labels } => {
            let q: Vec<String> = labels.iter().map(|l| format!("label={}", enc(l))).collect();
            let v = c.json(Method::GET, &format!("/v1/sandboxes?{}", q.join("&")), None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        let labels: Vec<String> = s["labels"]
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
                            .unwrap_or_default();
                        vec![
                            s["id"].as_str().unwrap_or("").into(),
                            s["env"].as_str().unwrap_or("").into(),
                            s["driver"].as_str().unwrap_or("").into(),
                            s["state"].as_str().unwrap_or("").into(),
                            ago(s["created_at"].as_i64().unwrap_or(0)),
                            labels.join(","),
                        ]
                    })
                    .collect();
                table(&["ID", "ENV", "DRIVER", "STATE", "CREATED", "LABELS"], rows);
            }
        }
        Cmd::Inspect { id } => print_json(&c.json(Method::GET, &format!("/v1/sandboxes/{}", enc(&id)), None).await?),
        Cmd::Rm { force, ids } => {
            let mut failed = false;
            for id in ids {
                match c.json(Method::DELETE, &format!("/v1/sandboxes/{}?force={force}", enc(&id)), None).await {
                    Ok(_) => println!("{id}"),
                    Err(e) => {
                        eprintln!("spinup: rm {id}: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed { 1 } else { 0 });
        }
        Cmd::Timeout { id, seconds } => {
            let v = c
                .json(Method::PUT, &format!("/v1/sandboxes/{}/timeout", enc(&id)), Some(json!({"timeout_s": seconds})))
                .await?;
            if cli.json {
                print_json(&v);
            }
        }
        Cmd::Snapshot { args, name, labels, memory } => match args[0].as_str() {
            "ls" if args.len() == 1 => snapshot_ls(&c, cli.json).await?,
            "rm" if args.len() > 1 => {
                let mut failed = false;
                for s in &args[1..] {
                    match c.json(Method::DELETE, &format!("/v1/snapshots/{}", enc(s)), None).await {
                        Ok(_) => println!("{s}"),
                        Err(e) => {
                            eprintln!("spinup: snapshot rm {s}: {e:#}");
                            failed = true;
                        }
                    }
                }
                return Ok(if failed { 1 } else { 0 });
            }
            id if args.len() == 1 => {
                let mut body = json!({"labels": labels_map(&labels)?, "memory": memory});
                if let Some(n) = name {
                    body["name"] = n.into();
                }
                let v = c.json(Method::POST, &format!("/v1/sandboxes/{}/snapshot", enc(id)), Some(body)).await?;
                if cli.json {
                    print_json(&v);
                } else {
                    println!("{}", v["id"].as_str().unwrap_or_default());
                }
            }
            _ => anyhow::bail!("usage: spinup snapshot ID [--name N] | snapshot ls | snapshot rm S..."),
        },
        Cmd::Snapshots => snapshot_ls(&c, cli.json).await?,
        Cmd::Fork { id, count, driver } => {
            let mut body = json!({"count": count});
            if let Some(d) = driver {
                body["driver"] = d.into();
            }
            let v = c.json(Method::POST, &format!("/v1/sandboxes/{}/fork", enc(&id)), Some(body)).await?;
            if cli.json {
                print_json(&v);
            } else {
                for ch in v["children"].as_array().cloned().unwrap_or_default() {
                    println!("{}", ch["id"].as_str().unwrap_or_default());
                }
            }
        }
        Cmd::Diff { id, since, path } => {
            let mut q = vec![];
            if let Some(s) = &since {
                q.push(format!("since={}", enc(s)));
            }
            if let Some(p) = &path {
                q.push(format!("path={}&content=true", enc(p)));
            }
            let v = c.json(Method::GET, &format!("/v1/sandboxes/{}/diff?{}", enc(&id), q.join("&")), None).await?;
            if cli.json {
                print_json(&v);
            } else {
                for ch in v["changes"].as_array().cloned().unwrap_or_default() {
                    let mark = match ch["kind"].as_str() {
                        Some("added") => "A",
                        Some("deleted") => "D",
                        _ => "M",
                    };
                    println!("{mark} {:>10} {}", ch["size"].as_u64().unwrap_or(0), ch["path"].as_str().unwrap_or(""));
                }
                if path.is_some() {
                    for (k, label) in [("before", "--- before"), ("after", "+++ after")] {
                        match v[k].as_str() {
                            Some(t) => println!("{label}\n{t}"),
                            None => println!("{label}: (absent or not a file)"),
                        }
                    }
                }
            }
        }
        Cmd::Pause { id, free_memory } => {
            if free_memory {
                let v = c
                    .json(
                        Method::POST,
                        &format!("/v1/sandboxes/{}/pause", enc(&id)),
                        Some(json!({"free_memory": true})),
                    )
                    .await?;
                if cli.json {
                    print_json(&v);
                } else {
                    println!("{}", v["state"].as_str().unwrap_or_default());
                }
            } else {
                freeze(&c, &id, "pause", cli.json).await?
            }
        }
        Cmd::Resume { id } => freeze(&c, &id, "resume", cli.json).await?,
        Cmd::Net { action, id, mode, allow, hosts } => match action.as_str() {
            "set" => {
                let body = policy_json(
                    mode.as_deref().or(Some(if allow.is_empty() { "none" } else { "allow" })),
                    &allow,
                    &hosts,
                )?;
                let v = c.json(Method::PUT, &format!("/v1/sandboxes/{}/network", enc(&id)), Some(body)).await?;
                print_json(&v["network"]);
            }
            "show" => {
                let v = c.json(Method::GET, &format!("/v1/sandboxes/{}", enc(&id)), None).await?;
                print_json(&json!({"network": v["network"], "address": v["net"]["address"]}));
            }
            other => bail!("unknown net action {other:?}: use set or show"),
        },
        Cmd::Port { id, port, public, unix, listen, rm } => match (port, rm) {
            (None, _) => {
                let v = c.json(Method::GET, &format!("/v1/sandboxes/{}/ports", enc(&id)), None).await?;
                if cli.json {
                    print_json(&v);
                } else {
                    let rows = v
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|p| {
                            vec![
                                p["port"].to_string(),
                                p["address"].as_str().unwrap_or("").to_string(),
                                if p["public"] == true { "public".into() } else { "token".into() },
                            ]
                        })
                        .collect();
                    table(&["PORT", "ADDRESS", "ACCESS"], rows);
                }
            }
            (Some(p), true) => {
                c.json(Method::DELETE, &format!("/v1/sandboxes/{}/ports/{p}", enc(&id)), None).await?;
            }
            (Some(p), false) => {
                let mut body = json!({"port": p, "public": public, "unix": unix});
                if let Some(l) = listen {
                    body["listen"] = l.into();
                }
                let v = c.json(Method::POST, &format!("/v1/sandboxes/{}/ports", enc(&id)), Some(body)).await?;
                if cli.json {
                    print_json(&v);
                } else {
                    println!("{}", v["url"].as_str().or(v["address"].as_str()).unwrap_or(""));
                    if let Some(t) = v["token"].as_str() {
                        println!("token: {t}  (send it as the X-Spinup-Token header or ?spinup_token=)");
                    }
                }
            }
        },
        Cmd::Secret { args, file } => secret_cmd(&c, &args, file, cli.json).await?,
        Cmd::Cp { src, dst } => cp(&c, &src, &dst).await?,
        Cmd::Env(EnvCmd::Ls) => {
            let v = c.json(Method::GET, "/v1/environments", None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v["environments"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        vec![
                            e["name"].as_str().unwrap_or("").into(),
                            e["digest"].as_str().unwrap_or("").chars().take(19).collect(),
                            e["layers"].as_array().map(|l| l.len()).unwrap_or(0).to_string(),
                            format!("{} MiB", e["size_bytes"].as_u64().unwrap_or(0) >> 20),
                            ago(e["created_at"].as_i64().unwrap_or(0)),
                        ]
                    })
                    .collect();
                table(&["NAME", "DIGEST", "LAYERS", "SIZE", "CREATED"], rows);
            }
        }
        Cmd::Env(EnvCmd::Build { name }) => {
            let v = build_env(&c, &name, cli.json).await?;
            if cli.json {
                print_json(&v);
            }
        }
        Cmd::Env(EnvCmd::Rm { name }) => {
            c.json(Method::DELETE, &format!("/v1/environments/{}", enc(&name)), None).await?;
        }
        Cmd::Env(EnvCmd::Import { name, path }) => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            let src = path.clone();
            let producer = std::thread::spawn(move || -> std::io::Result<()> {
                let mut w = ChannelWriter(tx);
                if meta.is_dir() {
                    let mut b = tar::Builder::new(w);
                    b.follow_symlinks(false);
                    b.append_dir_all(".", &src)?;
                    b.into_inner()?;
                } else {
                    std::io::copy(&mut std::fs::File::open(&src)?, &mut w)?;
                }
                Ok(())
            });
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_message(format!("importing {} as {name}", path.display()));
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            let res = c
                .json_body(
                    Method::POST,
                    &format!("/v1/environments/{}/import", enc(&name)),
                    spinup_protocol::client::channel_body(rx),
                )
                .await;
            pb.finish_and_clear();
            producer
                .join()
                .map_err(|_| anyhow::anyhow!("tar thread panicked"))?
                .with_context(|| format!("reading {}", path.display()))?;
            let v = res?;
            if cli.json {
                print_json(&v);
            } else {
                println!("{} {}", v["name"].as_str().unwrap_or(""), v["digest"].as_str().unwrap_or(""));
            }
        }
        Cmd::Bench { iterations, exec_iterations, idle, data_dir, driver, snapshots, network } => {
            let o = spinup_bench::Opts { iterations, exec_iterations, idle, data_dir, driver };
            let v = if snapshots {
                spinup_bench::run_snapshots(&c, o).await?
            } else if network {
                spinup_bench::run_network(&c, o).await?
            } else {
                spinup_bench::run(&c, o).await?
            };
            if cli.json {
                print_json(&v);
            } else if network {
                spinup_bench::print_network_table(&v);
            } else if snapshots {
                spinup_bench::print_snapshot_table(&v);
            } else {
                spinup_bench::print_table(&v);
            }
        }
        Cmd::Gc => {
            let v = c.json(Method::POST, "/v1/gc", None).await?;
            let lines = |k: &str| -> Vec<String> {
                v[k].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_string)).collect()
            };
            let (removed, failed) = (lines("removed"), lines("failed"));
            if cli.json {
                print_json(&v);
            } else {
                for l in &removed {
                    println!("removed {l}");
                }
                for l in &failed {
                    eprintln!("could not remove {l}");
                }
                if removed.is_empty() && failed.is_empty() {
                    println!("nothing to remove");
                }
            }
            return Ok(if failed.is_empty() { 0 } else { 1 });
        }
        Cmd::Drivers => {
            let v = c.json(Method::GET, "/v1/drivers", None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let yn = |b: &Value| if b == true { "yes" } else { "no" }.to_string();
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|d| {
                        let mut r = vec![
                            d["driver"].as_str().unwrap_or("").to_string(),
                            yn(&d["available"]),
                            d["isolation"].as_str().unwrap_or("").to_string(),
                            d["backend"].as_str().unwrap_or("-").to_string(),
                        ];
                        for cap in spinup_model::Capabilities::NAMES {
                            r.push(yn(&d[cap]));
                        }
                        r
                    })
                    .collect();
                let mut headers = vec!["DRIVER", "AVAILABLE", "ISOLATION", "BACKEND"];
                headers.extend(spinup_model::Capabilities::NAMES);
                table(&headers, rows);
                for d in v.as_array().cloned().unwrap_or_default() {
                    if let Some(r) = d["reason"].as_str() {
                        println!("{}: {r}", d["driver"].as_str().unwrap_or(""));
                    }
                }
            }
        }
    }
    Ok(0)
}

/// `spinup pause|resume ID`.
async fn snapshot_ls(c: &Client, json: bool) -> Result<()> {
    let v = c.json(Method::GET, "/v1/snapshots", None).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                s["id"].as_str().unwrap_or("").into(),
                s["name"].as_str().unwrap_or("-").into(),
                s["sandbox_id"].as_str().unwrap_or("").into(),
                s["driver"].as_str().unwrap_or("").into(),
                s["env"].as_str().unwrap_or("").into(),
                format!("{} KiB", s["size_bytes"].as_u64().unwrap_or(0) / 1024),
                ago(s["created_at"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    table(&["ID", "NAME", "FROM", "DRIVER", "ENV", "SIZE", "CREATED"], rows);
    Ok(())
}

async fn freeze(c: &Client, id: &str, verb: &str, json: bool) -> Result<()> {
    let v = c.json(Method::POST, &format!("/v1/sandboxes/{}/{verb}", enc(id)), None).await?;
    if json {
        print_json(&v);
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Serve {
        data_dir,
        socket,
        tcp,
        config,
        runtime,
        gvisor_platform,
        default_driver,
        accel,
        kernel,
        initrd,
        kernel_dir,
        cgroup_parent,
    } = cli.cmd
    {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SPINUP_LOG").unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        let explicit = config.is_some();
        let path = config.unwrap_or_else(|| PathBuf::from(spinup_daemon::DEFAULT_CONFIG));
        let mut file = match spinup_daemon::FileConfig::load(&path, explicit) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("spinup serve: {e:#}");
                std::process::exit(1);
            }
        };
        file.container.runtime = runtime.or(file.container.runtime);
        file.gvisor.platform = gvisor_platform.or(file.gvisor.platform);
        file.default_driver = default_driver.or(file.default_driver);
        file.microvm.accel = accel.or(file.microvm.accel);
        file.microvm.kernel = kernel.or(file.microvm.kernel);
        file.microvm.initrd = initrd.or(file.microvm.initrd);
        file.microvm.kernel_dir = kernel_dir.or(file.microvm.kernel_dir);
        let cfg = spinup_daemon::Config {
            data_dir,
            socket,
            tcp,
            api_key: cli.api_key,
            file,
            agent: AGENT.to_vec(),
            cgroup_parent,
        };
        if let Err(e) = rt.block_on(spinup_daemon::run(cfg)) {
            eprintln!("spinup serve: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    // A client makes one call at a time: one thread keeps latency low.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spinup: {e:#}");
            // Like docker: 125 when spinup itself failed, not the command.
            125
        }
    };
    std::process::exit(code);
}
