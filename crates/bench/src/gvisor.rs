//! gVisor against `runsc run`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use http::Method;
use serde_json::{json, Value};
use spinup_protocol::client::empty_body;

use crate::{stats, time_cmd, Api, Conn, Opts};

/// gVisor next to the container driver and `runsc run` of /bin/true on the
/// same rootfs and platform, in the same run. Null when gVisor is unavailable.
pub(crate) async fn bench(c: &impl Api, conn: &mut Conn, layer: &Path, o: &Opts) -> Result<Value> {
    let drivers = c.call(Method::GET, "/v1/drivers", empty_body()).await?;
    let Some(g) = drivers.as_array().and_then(|d| d.iter().find(|d| d["driver"] == "gvisor" && d["available"] == true))
    else {
        return Ok(Value::Null);
    };
    let platform = g["backend"]
        .as_str()
        .and_then(|b| b.rsplit('(').next())
        .map(|p| p.trim_end_matches(')'))
        .unwrap_or("ptrace")
        .to_string();
    let n = (o.iterations / 3).max(5);
    let work = std::env::temp_dir().join(format!("spinup-bench-gv-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": layer, "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}],
                  "cgroupsPath": "/spinup-bench/gv", "resources": {"pids": {"limit": 256}, "memory": {"limit": 268435456}}}
    });
    std::fs::write(work.join("config.json"), config.to_string())?;
    let runsc = time_cmd(n, |i| {
        let mut cmd = Command::new("runsc");
        cmd.arg("--root").arg(work.join("state")).arg(format!("--platform={platform}")).arg("--network=none");
        cmd.args(["run", "--bundle"]).arg(&work).arg(format!("bench-gv-{i}"));
        cmd
    })
    .context("runsc run baseline")?;
    let _ = std::fs::remove_dir_all(&work);
    let mut create_exec = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let (st, v) = conn.call("POST", "/v1/sandboxes", json!({"env": "busybox", "driver": "gvisor"})).await?;
        if st != 201 {
            bail!("gvisor create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        create_exec.push(t.elapsed());
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    }
    let (_, v) = conn.call("POST", "/v1/sandboxes", json!({"env": "busybox", "driver": "gvisor"})).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let mut rtt = vec![];
    for i in 0..(o.exec_iterations / 3).max(20) + 5 {
        let t = Instant::now();
        conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        if i >= 5 {
            rtt.push(t.elapsed());
        }
    }
    conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    let (ce, rt, rs) = (stats(create_exec), stats(rtt), stats(runsc));
    Ok(json!({
        "platform": platform,
        "create_to_first_exec_ms": {"p50": ce.p50, "p95": ce.p95, "mean": ce.mean},
        "exec_round_trip_ms": {"p50": rt.p50, "p95": rt.p95, "mean": rt.mean},
        "runsc_run_true_ms": {"p50": rs.p50, "p95": rs.p95, "mean": rs.mean},
        "ratio_create_exec_vs_runsc_p50": ce.p50 / rs.p50,
    }))
}
