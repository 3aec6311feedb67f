//! The E2B front end against the native API, in the same run on the same
//! environment: `Sandbox.create(env)` → `commands.run("true")` through the
//! official Python SDK against native create → first exec, and
//! `commands.run("true")` against the native exec round trip. Both sides
//! run `/bin/bash -l -c true` (what the SDK runs), and the native side is
//! measured in two halves, before and after the SDK's, so drift between
//! them shows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{stats, Api, Conn};

const SDK_SCRIPT: &str = include_str!("e2b_sdk.py");

#[derive(Debug)]
pub struct E2bOpts {
    /// The E2B listener (`http://127.0.0.1:3000`).
    pub url: String,
    pub api_key: String,
    pub python: std::path::PathBuf,
    pub env: String,
    pub iterations: usize,
    pub exec_iterations: usize,
}

async fn native(conn: &mut Conn, env: &str, creates: usize, execs: usize) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let body = json!({"env": env});
    let exec = json!({"argv": ["/bin/bash", "-l", "-c", "true"]});
    let mut create_exec = vec![];
    for _ in 0..creates {
        let t = Instant::now();
        let (st, v) = conn.call("POST", "/v1/sandboxes", body.clone()).await?;
        if st != 201 {
            bail!("create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), exec.clone()).await?;
        if st != 200 || v["exit_code"] != 0 {
            bail!("first exec failed: {v}");
        }
        create_exec.push(t.elapsed());
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    }
    let (_, v) = conn.call("POST", "/v1/sandboxes", body).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let mut rtt = vec![];
    for i in 0..execs + 5 {
        let t = Instant::now();
        let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), exec.clone()).await?;
        if st != 200 || v["exit_code"] != 0 {
            bail!("exec failed: {v}");
        }
        if i >= 5 {
            rtt.push(t.elapsed());
        }
    }
    conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    Ok((create_exec, rtt))
}

fn sdk(o: &E2bOpts) -> Result<(Vec<Duration>, Vec<Duration>)> {
    if !o.python.exists() {
        bail!("{} is missing: run scripts/install-e2b-sdks.sh (or pass --python)", o.python.display());
    }
    let script = std::env::temp_dir().join(format!("spinup-bench-e2b-{}.py", std::process::id()));
    std::fs::write(&script, SDK_SCRIPT)?;
    let out = std::process::Command::new(&o.python)
        .arg(&script)
        .arg(&o.env)
        .arg(o.iterations.to_string())
        .arg(o.exec_iterations.to_string())
        .env("E2B_API_KEY", &o.api_key)
        .env("E2B_API_URL", &o.url)
        .env("E2B_SANDBOX_URL", &o.url)
        .output()
        .context("running the E2B SDK")?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        bail!("the E2B SDK run failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).context("the SDK run's figures")?;
    let ms = |k: &str| -> Vec<Duration> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .map(|m| Duration::from_secs_f64(m / 1000.0))
            .collect()
    };
    Ok((ms("create_run_ms"), ms("run_ms")))
}

pub async fn run_e2b(c: &impl Api, o: E2bOpts) -> Result<Value> {
    if o.iterations < 2 || o.exec_iterations < 2 {
        bail!("--iterations and --exec-iterations must be at least 2");
    }
    let mut conn = Conn::open(c).await?;
    // Warm the environment (a first use may build it) and the caches.
    native(&mut conn, &o.env, 1, 2).await.context("warming up the native path")?;
    let (half, xhalf) = (o.iterations / 2, o.exec_iterations / 2);
    let (mut n_ce, mut n_rtt) = native(&mut conn, &o.env, half, xhalf).await?;
    let (s_ce, s_rtt) = sdk(&o)?;
    let (ce2, rtt2) = native(&mut conn, &o.env, o.iterations - half, o.exec_iterations - xhalf).await?;
    let drift = stats(ce2.clone()).p50 / stats(n_ce.clone()).p50;
    n_ce.extend(ce2);
    n_rtt.extend(rtt2);
    let (nce, nrt, sce, srt) = (stats(n_ce), stats(n_rtt), stats(s_ce), stats(s_rtt));
    Ok(json!({
        "env": o.env,
        "native_create_to_first_exec_ms": nce.json(),
        "sdk_create_to_run_ms": sce.json(),
        "native_exec_round_trip_ms": nrt.json(),
        "sdk_run_round_trip_ms": srt.json(),
        "ratio_create_run_p50": sce.p50 / nce.p50,
        "ratio_run_p50": srt.p50 / nrt.p50,
        "native_drift_second_half_vs_first_p50": drift,
    }))
}

pub fn print_e2b_table(v: &Value) {
    let row = |name: &str, k: &str| crate::print_row(v, name, k);
    println!("| measure (ms), env {} | p50 | p95 |", v["env"].as_str().unwrap_or(""));
    println!("|---|---|---|");
    row("native create → first exec (bash -l -c true)", "native_create_to_first_exec_ms");
    row("E2B SDK Sandbox.create → commands.run(\"true\")", "sdk_create_to_run_ms");
    row("native exec round trip (bash -l -c true)", "native_exec_round_trip_ms");
    row("E2B SDK commands.run(\"true\") round trip", "sdk_run_round_trip_ms");
    println!();
    println!("E2B create → run vs native: {:.2}×", v["ratio_create_run_p50"].as_f64().unwrap_or(0.0));
    println!("E2B run vs native exec: {:.2}×", v["ratio_run_p50"].as_f64().unwrap_or(0.0));
    println!(
        "native drift, second half vs first: {:.2}×",
        v["native_drift_second_half_vs_first_p50"].as_f64().unwrap_or(0.0)
    );
}
