//! `spinup bench --snapshots`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{stats, Api, Conn, Opts};

/// `spinup bench --snapshots`: snapshot, fork, pause/resume and memory
/// restore latencies, each next to its baseline in the same run.
pub async fn run_snapshots(c: &impl Api, o: Opts) -> Result<Value> {
    let mut conn = Conn::open(c).await?;
    let (_, drivers) = conn.call("GET", "/v1/drivers", json!(null)).await?;
    let avail: Vec<String> = drivers
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|d| d["available"] == true)
        .map(|d| d["driver"].as_str().unwrap_or("").to_string())
        .collect();
    let mut out = json!({});
    let create = |driver: &str| json!({"env": "busybox", "driver": driver});

    async fn ok(conn: &mut Conn, method: &str, path: &str, body: Value, want: u16) -> Result<Value> {
        let (st, v) = conn.call(method, path, body).await?;
        if st != want {
            bail!("{method} {path}: {st} {v}");
        }
        Ok(v)
    }
    async fn timed(conn: &mut Conn, method: &str, path: &str, body: Value, want: u16) -> Result<(Duration, Value)> {
        let t = Instant::now();
        let v = ok(conn, method, path, body, want).await?;
        Ok((t.elapsed(), v))
    }
    async fn sh(conn: &mut Conn, id: &str, cmd: &str) -> Result<()> {
        let v = ok(conn, "POST", &format!("/v1/sandboxes/{id}/exec"), json!({"cmd": cmd}), 200).await?;
        if v["exit_code"] != 0 {
            bail!("`{cmd}` failed: {v}");
        }
        Ok(())
    }
    let st = |v: Vec<Duration>| {
        let s = stats(v);
        json!({"p50": s.p50, "p95": s.p95})
    };

    // Snapshot and fork at 1 MB and 100 MB of changes (container), with
    // `cp -a` of the changed files (from the writable layer) as the baseline.
    if avail.iter().any(|d| d == "container") {
        for mib in [1u64, 100] {
            let n = if mib == 1 { o.iterations.min(20) } else { o.iterations.min(5) };
            let id = ok(&mut conn, "POST", "/v1/sandboxes", create("container"), 201).await?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            sh(&mut conn, &id, &format!("mkdir -p /root/data; for i in $(seq {mib}); do dd if=/dev/urandom of=/root/data/f$i bs=1M count=1 2>/dev/null; done")).await?;
            let (mut snap, mut fork, mut cp) = (vec![], vec![], vec![]);
            for _ in 0..n {
                let (d, v) = timed(&mut conn, "POST", &format!("/v1/sandboxes/{id}/snapshot"), json!({}), 201).await?;
                snap.push(d);
                ok(&mut conn, "DELETE", &format!("/v1/snapshots/{}", v["id"].as_str().unwrap_or("")), json!(null), 204)
                    .await?;
                let (d, v) =
                    timed(&mut conn, "POST", &format!("/v1/sandboxes/{id}/fork"), json!({"count": 1}), 201).await?;
                fork.push(d);
                for ch in v["children"].as_array().cloned().unwrap_or_default() {
                    ok(
                        &mut conn,
                        "DELETE",
                        &format!("/v1/sandboxes/{}?force=true", ch["id"].as_str().unwrap_or("")),
                        json!(null),
                        204,
                    )
                    .await?;
                }
            }
            let src = o.data_dir.join("container/sandboxes").join(&id).join("upper/root/data");
            let dst = std::env::temp_dir().join(format!("spinup-bench-cp-{}", std::process::id()));
            for _ in 0..n {
                let _ = std::fs::remove_dir_all(&dst);
                let t = Instant::now();
                let s = Command::new("cp").arg("-a").arg(&src).arg(&dst).status()?;
                cp.push(t.elapsed());
                if !s.success() {
                    bail!("cp -a {} failed", src.display());
                }
            }
            let _ = std::fs::remove_dir_all(&dst);
            ok(&mut conn, "DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null), 204).await?;
            let (s, f, b) = (stats(snap), stats(fork), stats(cp));
            out[format!("container_{mib}mb")] = json!({
                "iterations": n,
                "snapshot_ms": {"p50": s.p50, "p95": s.p95},
                "fork1_ms": {"p50": f.p50, "p95": f.p95},
                "cp_a_changed_files_ms": {"p50": b.p50, "p95": b.p95},
                "ratio_fork_vs_cp_a_p50": f.p50 / b.p50,
                "ratio_snapshot_vs_cp_a_p50": s.p50 / b.p50,
            });
        }
    }

    // Pause/resume per driver, next to the cold create it avoids.
    for driver in &avail {
        let n = if driver == "microvm" { 5 } else { 10 };
        let mut cold = vec![];
        let mut id = String::new();
        for i in 0..n.min(3) {
            let (d, v) = timed(&mut conn, "POST", "/v1/sandboxes", create(driver), 201).await?;
            cold.push(d);
            let new = v["id"].as_str().unwrap_or_default().to_string();
            if i == 0 {
                id = new;
            } else {
                ok(&mut conn, "DELETE", &format!("/v1/sandboxes/{new}?force=true"), json!(null), 204).await?;
            }
        }
        let (mut pause, mut resume) = (vec![], vec![]);
        for _ in 0..n {
            pause.push(timed(&mut conn, "POST", &format!("/v1/sandboxes/{id}/pause"), json!(null), 200).await?.0);
            resume.push(timed(&mut conn, "POST", &format!("/v1/sandboxes/{id}/resume"), json!(null), 200).await?.0);
        }
        let mut entry = json!({"pause_ms": st(pause), "resume_ms": st(resume), "cold_create_ms": st(cold.clone())});
        let caps = drivers.as_array().cloned().unwrap_or_default();
        let mem = caps.iter().any(|c| c["driver"] == driver.as_str() && c["memory_snapshot"] == true);
        if mem {
            let (mut save, mut restore) = (vec![], vec![]);
            for _ in 0..3 {
                let (d, v) =
                    timed(&mut conn, "POST", &format!("/v1/sandboxes/{id}/snapshot"), json!({"memory": true}), 201)
                        .await?;
                save.push(d);
                let sid = v["id"].as_str().unwrap_or_default().to_string();
                let body = json!({"driver": driver, "from_snapshot": sid});
                let (d, v) = timed(&mut conn, "POST", "/v1/sandboxes", body, 201).await?;
                restore.push(d);
                ok(
                    &mut conn,
                    "DELETE",
                    &format!("/v1/sandboxes/{}?force=true", v["id"].as_str().unwrap_or("")),
                    json!(null),
                    204,
                )
                .await?;
                ok(&mut conn, "DELETE", &format!("/v1/snapshots/{sid}"), json!(null), 204).await?;
            }
            let (r, c0) = (stats(restore.clone()), stats(cold));
            entry["memory_snapshot_ms"] = st(save);
            entry["memory_restore_ms"] = st(restore);
            entry["ratio_memory_restore_vs_cold_create_p50"] = json!(r.p50 / c0.p50);
        }
        ok(&mut conn, "DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null), 204).await?;
        out[driver.as_str()] = entry;
    }
    Ok(out)
}

pub fn print_snapshot_table(v: &Value) {
    let f = |x: &Value| x.as_f64().map(|n| format!("{n:.1}")).unwrap_or_else(|| "-".into());
    for mib in [1, 100] {
        let e = &v[format!("container_{mib}mb")];
        if e.is_null() {
            continue;
        }
        println!("| container, {mib} MB of changes (ms) | p50 | p95 |");
        println!("|---|---|---|");
        for (k, label) in [
            ("snapshot_ms", "snapshot"),
            ("fork1_ms", "fork ×1 (snapshot + child running)"),
            ("cp_a_changed_files_ms", "baseline: cp -a of the changed files"),
        ] {
            println!("| {label} | {} | {} |", f(&e[k]["p50"]), f(&e[k]["p95"]));
        }
        println!();
        println!(
            "fork ×1 vs cp -a: {:.2}×; snapshot vs cp -a: {:.2}×",
            e["ratio_fork_vs_cp_a_p50"].as_f64().unwrap_or(0.0),
            e["ratio_snapshot_vs_cp_a_p50"].as_f64().unwrap_or(0.0)
        );
        println!();
    }
    println!("| driver | pause p50 | resume p50 | cold create p50 | memory snapshot p50 | memory restore p50 | restore vs cold create |");
    println!("|---|---|---|---|---|---|---|");
    for d in ["container", "gvisor", "microvm"] {
        let e = &v[d];
        if e.is_null() {
            continue;
        }
        let ratio =
            e["ratio_memory_restore_vs_cold_create_p50"].as_f64().map(|r| format!("{r:.2}×")).unwrap_or("-".into());
        println!(
            "| {d} | {} | {} | {} | {} | {} | {ratio} |",
            f(&e["pause_ms"]["p50"]),
            f(&e["resume_ms"]["p50"]),
            f(&e["cold_create_ms"]["p50"]),
            f(&e["memory_snapshot_ms"]["p50"]),
            f(&e["memory_restore_ms"]["p50"])
        );
    }
}
