//! `spinup env ls|import|build|rm`: environments, the root filesystems
//! sandboxes are made from.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use spinup_api::{BuildEvent, EnvList, Environment};
use spinup_protocol::client::{channel_body, empty_body};

use crate::client::{enc, ChannelWriter, Client};
use crate::ctx::{quiet, Ctx};
use crate::output::{ago, table};

#[derive(Subcommand)]
pub enum Command {
    Ls,
    /// Import a rootfs directory or tarball (tar, tar.gz).
    Import {
        name: String,
        path: PathBuf,
    },
    /// Build a built-in recipe (busybox, debian, base, code-interpreter).
    Build {
        name: String,
    },
    Rm {
        name: String,
    },
}

pub async fn run(cmd: Command, ctx: &Ctx) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        Command::Ls => {
            let v = c.get("/v1/environments").await?;
            ctx.emit(&v, |list: EnvList| {
                let rows = list
                    .environments
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.digest.chars().take(19).collect(),
                            e.layers.len().to_string(),
                            format!("{} MiB", e.size_bytes >> 20),
                            ago(e.created_at),
                        ]
                    })
                    .collect();
                table(&["NAME", "DIGEST", "LAYERS", "SIZE", "CREATED"], rows);
            })
        }
        Command::Build { name } => {
            let v = build_env(c, &name, ctx.json).await?;
            ctx.emit(&v, quiet)
        }
        Command::Rm { name } => {
            c.delete(&format!("/v1/environments/{}", enc(&name))).await?;
            Ok(())
        }
        Command::Import { name, path } => {
            let v = import(c, &name, path).await?;
            ctx.emit(&v, |e: Environment| println!("{} {}", e.name, e.digest))
        }
    }
}

/// Build a built-in environment with a progress spinner (hidden with
/// `--json`); the environment as the daemon answered it.
pub async fn build_env(c: &Client, name: &str, quiet_json: bool) -> Result<Value> {
    let resp = c.request(Method::POST, &format!("/v1/environments/{}/build", enc(name)), empty_body()).await?;
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
    let mut last = None;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line)?;
            match BuildEvent::deserialize(&v)? {
                BuildEvent::Progress(p) => pb.set_message(p),
                event => last = Some((event, v)),
            }
        }
    }
    pb.finish_and_clear();
    match last.context("the build stream ended early")? {
        (BuildEvent::Environment(env), mut v) => {
            if !quiet_json {
                eprintln!("built environment {name} ({})", env.digest);
            }
            Ok(v["environment"].take())
        }
        (BuildEvent::Error(e), _) => bail!("building {name} failed: {}", e.message),
        (BuildEvent::Progress(_), _) => unreachable!("progress lines are not kept"),
    }
}

/// Stream a directory (as a tar) or a tarball to the daemon.
async fn import(c: &Client, name: &str, path: PathBuf) -> Result<Value> {
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
    let res = c.json_body(Method::POST, &format!("/v1/environments/{}/import", enc(name)), channel_body(rx)).await;
    pb.finish_and_clear();
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("tar thread panicked"))?
        .with_context(|| format!("reading {}", path.display()))?;
    res
}
