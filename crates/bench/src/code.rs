//! The code interpreter and the clients, each against a baseline in the
//! same run:
//! - `run_code("1+1")` on a warm context against a bare exec of
//!   `python3 -c 1+1` in the same sandbox, interleaved;
//! - the first `run_code` of a new sandbox (it starts the interpreter and
//!   the kernel) against the same bare exec;
//! - create → first exec through the Python SDK and through the CLI
//!   against the raw HTTP API (this harness's own keep-alive client).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{stats, Api, Conn};

const SDK_SCRIPT: &str = include_str!("sdk_clients.py");

#[derive(Debug)]
pub struct CodeOpts {
    pub env: String,
    pub driver: Option<String>,
    /// New sandboxes for the first-run figure.
    pub sandboxes: usize,
    pub iterations: usize,
}

#[derive(Debug)]
pub struct ClientOpts {
    pub env: String,
    pub iterations: usize,
    /// The Python with the `spinup` package.
    pub python: std::path::PathBuf,
    /// This CLI (what `spinup create` / `spinup exec` run as).
    pub cli: std::path::PathBuf,
    /// Where the CLI and the SDK find the daemon (SPINUP_HOST).
    pub host: String,
}

async fn create(conn: &mut Conn, env: &str, driver: Option<&str>) -> Result<String> {
    let mut body = json!({"env": env, "resources": {"memory_mib": 2048}});
    if let Some(d) = driver {
        body["driver"] = json!(d);
    }
    let (st, v) = conn.call("POST", "/v1/sandboxes", body).await?;
    if st != 201 {
        bail!("create failed: {v}");
    }
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

async fn run_code(conn: &mut Conn, id: &str, code: &str) -> Result<Duration> {
    let t = Instant::now();
    let (st, body) = conn.raw("POST", &format!("/v1/sandboxes/{id}/code"), json!({"code": code})).await?;
    let d = t.elapsed();
    let text = String::from_utf8_lossy(&body);
    if st != 200 || !text.contains("\"text/plain\":\"2\"") {
        bail!("run_code failed ({st}): {text}");
    }
    Ok(d)
}

async fn exec_python(conn: &mut Conn, id: &str) -> Result<Duration> {
    let t = Instant::now();
    let (st, v) = conn
        .call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["python3", "-c", "print(1+1)"]}))
        .await?;
    let d = t.elapsed();
    if st != 200 || v["stdout"] != "2\n" {
        bail!("exec failed: {v}");
    }
    Ok(d)
}

pub async fn run_code_bench(c: &impl Api, o: CodeOpts) -> Result<Value> {
    if o.iterations < 2 || o.sandboxes < 1 {
        bail!("--iterations must be at least 2 and --sandboxes at least 1");
    }
    let mut conn = Conn::open(c).await?;
    let drv = o.driver.as_deref();
    // First runs: each on a new sandbox, with a bare exec beside it.
    let (mut first, mut first_exec) = (vec![], vec![]);
    for _ in 0..o.sandboxes {
        let id = create(&mut conn, &o.env, drv).await.context("creating a sandbox")?;
        first_exec.push(exec_python(&mut conn, &id).await?);
        first.push(run_code(&mut conn, &id, "1+1").await?);
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    }
    // Warm: one sandbox, one context, interleaved with the bare exec.
    let id = create(&mut conn, &o.env, drv).await?;
    run_code(&mut conn, &id, "1+1").await?;
    exec_python(&mut conn, &id).await?;
    let (mut warm, mut bare) = (vec![], vec![]);
    for _ in 0..o.iterations {
        warm.push(run_code(&mut conn, &id, "1+1").await?);
        bare.push(exec_python(&mut conn, &id).await?);
    }
    conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    let (w, b, f, fe) = (stats(warm), stats(bare), stats(first), stats(first_exec));
    Ok(json!({
        "env": o.env,
        "driver": o.driver,
        "warm_run_code_ms": w.json(),
        "exec_python3_c_ms": b.json(),
        "first_run_code_ms": f.json(),
        "first_exec_python3_c_ms": fe.json(),
        "ratio_warm_run_code_vs_exec_p50": w.p50 / b.p50,
        "ratio_first_run_code_vs_exec_p50": f.p50 / fe.p50,
    }))
}

pub fn print_code_table(v: &Value) {
    let row = |name: &str, k: &str| crate::print_row(v, name, k);
    println!("| measure (ms), env {} | p50 | p95 |", v["env"].as_str().unwrap_or(""));
    println!("|---|---|---|");
    row("run_code(\"1+1\"), warm context", "warm_run_code_ms");
    row("exec python3 -c 'print(1+1)', same sandbox", "exec_python3_c_ms");
    row("first run_code(\"1+1\") of a new sandbox", "first_run_code_ms");
    row("exec python3 -c on a new sandbox", "first_exec_python3_c_ms");
    println!();
    println!("warm run_code vs exec python3 -c: {:.2}×", v["ratio_warm_run_code_vs_exec_p50"].as_f64().unwrap_or(0.0));
    println!(
        "first run_code vs exec python3 -c: {:.2}×",
        v["ratio_first_run_code_vs_exec_p50"].as_f64().unwrap_or(0.0)
    );
}

/// Create → first exec of /bin/true through each client, interleaved
/// round by round; removal is not timed.
pub async fn run_clients(c: &impl Api, o: ClientOpts) -> Result<Value> {
    if o.iterations < 2 {
        bail!("--iterations must be at least 2");
    }
    if !o.python.exists() {
        bail!("{} is missing: run scripts/install-python-tools.sh (or pass --python)", o.python.display());
    }
    let mut conn = Conn::open(c).await?;
    let script = std::env::temp_dir().join(format!("spinup-bench-sdk-{}.py", std::process::id()));
    std::fs::write(&script, SDK_SCRIPT)?;
    // The SDK keeps one process (imports and its client warmed), fed a
    // line per round.
    let mut sdk = std::process::Command::new(&o.python)
        .arg(&script)
        .arg(&o.env)
        .env("SPINUP_HOST", &o.host)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the SDK client")?;
    let mut to_sdk = sdk.stdin.take().expect("piped");
    let mut from_sdk = std::io::BufReader::new(sdk.stdout.take().expect("piped"));
    let (mut raw, mut py, mut cli) = (vec![], vec![], vec![]);
    for round in 0..o.iterations + 1 {
        // raw HTTP
        let t = Instant::now();
        let id = create(&mut conn, &o.env, None).await?;
        let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        let d = t.elapsed();
        if st != 200 || v["exit_code"] != 0 {
            bail!("exec failed: {v}");
        }
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
        // the SDK
        use std::io::{BufRead, Write};
        writeln!(to_sdk, "go")?;
        to_sdk.flush()?;
        let mut line = String::new();
        from_sdk.read_line(&mut line)?;
        let ms: f64 = line.trim().parse().with_context(|| format!("the SDK said {line:?}"))?;
        // the CLI: two processes, as a shell script would run it
        let t = Instant::now();
        let out = std::process::Command::new(&o.cli)
            .args(["create", "--env", &o.env])
            .env("SPINUP_HOST", &o.host)
            .output()?;
        let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || cid.is_empty() {
            bail!("spinup create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let st = std::process::Command::new(&o.cli)
            .args(["exec", &cid, "--", "/bin/true"])
            .env("SPINUP_HOST", &o.host)
            .status()?;
        let dc = t.elapsed();
        if !st.success() {
            bail!("spinup exec failed: {st}");
        }
        conn.call("DELETE", &format!("/v1/sandboxes/{cid}?force=true"), json!(null)).await?;
        // The first round warms every path.
        if round > 0 {
            raw.push(d);
            py.push(Duration::from_secs_f64(ms / 1000.0));
            cli.push(dc);
        }
    }
    drop(to_sdk);
    let _ = sdk.wait();
    let _ = std::fs::remove_file(&script);
    let (r, p, c) = (stats(raw), stats(py), stats(cli));
    Ok(json!({
        "env": o.env,
        "raw_http_create_exec_ms": r.json(),
        "sdk_create_exec_ms": p.json(),
        "cli_create_exec_ms": c.json(),
        "ratio_sdk_vs_raw_p50": p.p50 / r.p50,
        "ratio_cli_vs_raw_p50": c.p50 / r.p50,
    }))
}

pub fn print_clients_table(v: &Value) {
    let row = |name: &str, k: &str| crate::print_row(v, name, k);
    println!("| create → first exec of /bin/true (ms), env {} | p50 | p95 |", v["env"].as_str().unwrap_or(""));
    println!("|---|---|---|");
    row("raw HTTP (one keep-alive connection)", "raw_http_create_exec_ms");
    row("Python SDK: sandboxes.create → exec", "sdk_create_exec_ms");
    row("CLI: spinup create; spinup exec", "cli_create_exec_ms");
    println!();
    println!("SDK vs raw HTTP: {:.2}×", v["ratio_sdk_vs_raw_p50"].as_f64().unwrap_or(0.0));
    println!("CLI vs raw HTTP: {:.2}×", v["ratio_cli_vs_raw_p50"].as_f64().unwrap_or(0.0));
}
