//! `spinup bench`: Spinup's figures next to baselines measured in the same
//! run on the same rootfs (`runc run` of /bin/true, `bwrap --unshare-all
//! /bin/true`). Ratios matter here; absolute times on shared machines do not.
//!
//! - [`run`]: create → first exec, exec round trip and idle memory on the
//!   container driver against runc and bwrap ([`container`]), with gVisor
//!   against runsc ([`gvisor`]) and the microVM against a plain QEMU boot
//!   ([`microvm`]) when those drivers are available;
//! - [`run_snapshots`]: snapshot, fork, pause/resume and memory restore
//!   ([`snapshots`]);
//! - [`run_network`]: HTTP from a sandbox and through the secrets proxy
//!   against curl on the host ([`network`]);
//! - [`run_e2b`]: the official E2B Python SDK through the E2B front end
//!   against the native API ([`e2b`]).
//!
//! The harness reaches the daemon through [`Api`], which the `spinup` CLI's
//! client implements; it reads the daemon's data dir and `/proc` directly,
//! so it runs as root on the daemon's host.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the harness prints its progress and tables")]

pub mod code;
pub mod container;
pub mod e2b;
pub mod gvisor;
pub mod microvm;
pub mod network;
pub mod snapshots;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use spinup_protocol::client::Body;
use tokio::io::{AsyncRead, AsyncWrite};

pub use code::{print_clients_table, print_code_table, run_clients, run_code_bench, ClientOpts, CodeOpts};
pub use container::{print_table, run};
pub use e2b::{print_e2b_table, run_e2b, E2bOpts};
pub use network::{print_network_table, run_network};
pub use snapshots::{print_snapshot_table, run_snapshots};

/// The daemon's API as the harness needs it.
#[async_trait::async_trait]
pub trait Api: Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A new connection to the API (unix socket or TCP).
    async fn connect(&self) -> Result<Self::Io>;
    /// One request: the answer parsed as JSON (`null` when empty), an
    /// error for anything but a success.
    async fn call(&self, method: Method, path: &str, body: Body) -> Result<Value>;
}

#[derive(Debug)]
pub struct Opts {
    pub iterations: usize,
    pub exec_iterations: usize,
    pub idle: usize,
    pub data_dir: PathBuf,
    pub driver: Option<String>,
}

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p95: f64,
    mean: f64,
}

impl Stats {
    fn json(self) -> Value {
        serde_json::json!({"p50": self.p50, "p95": self.p95, "mean": self.mean})
    }
}

/// One `| name | p50 | p95 |` row of a table, from `v[key]`.
fn print_row(v: &Value, name: &str, key: &str) {
    println!(
        "| {name} | {:.1} | {:.1} |",
        v[key]["p50"].as_f64().unwrap_or(0.0),
        v[key]["p95"].as_f64().unwrap_or(0.0)
    );
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Stats { p50: pct(0.50), p95: pct(0.95), mean: ms.iter().sum::<f64>() / ms.len() as f64 }
}

/// One keep-alive HTTP/1.1 connection, so exec timings are not connection setup.
struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(c: &impl Api) -> Result<Conn> {
        let io = c.connect().await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Conn { tx })
    }

    async fn call(&mut self, method: &str, path: &str, body: Value) -> Result<(u16, Value)> {
        let (st, b) = self.raw(method, path, body).await?;
        Ok((st, if b.is_empty() { Value::Null } else { serde_json::from_slice(&b)? }))
    }

    /// A request whose answer is not one JSON value (NDJSON): its bytes.
    async fn raw(&mut self, method: &str, path: &str, body: Value) -> Result<(u16, Bytes)> {
        self.tx.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = self.tx.send_request(req).await?;
        let st = resp.status().as_u16();
        Ok((st, resp.into_body().collect().await?.to_bytes()))
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/{pid}/status")))
        .unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Host pids whose executable lives under `dir` (the agents), or the daemon.
fn pids_where(pred: impl Fn(&Path, &str) -> bool) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
        if pred(&exe, &cmd) {
            out.push(pid);
        }
    }
    out
}

fn time_cmd(n: usize, mut mk: impl FnMut(usize) -> Command) -> Result<Vec<Duration>> {
    let mut v = vec![];
    for i in 0..n {
        let mut cmd = mk(i);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let out = cmd.output()?;
        let d = t.elapsed();
        if !out.status.success() {
            bail!("baseline {:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim());
        }
        v.push(d);
    }
    Ok(v)
}
