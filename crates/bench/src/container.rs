//! The main figure: create → first exec, exec round trip and idle memory
//! on the container driver, next to `runc run` (a minimal spec and Spinup's
//! own), `bwrap` and a bare host spawn; then gVisor and the microVM.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::Method;
use serde_json::{json, Value};
use spinup_protocol::client::empty_body;

use crate::{gvisor, microvm, pids_where, rss_kib, stats, time_cmd, Api, Conn, Opts};

pub async fn run(c: &impl Api, o: Opts) -> Result<Value> {
    let mut conn = Conn::open(c).await?;
    let env = c.call(Method::GET, "/v1/environments/busybox", empty_body()).await;
    if env.is_err() {
        eprintln!("building the busybox environment first");
        let mut tmp = Conn::open(c).await?;
        let (st, v) = tmp.call("POST", "/v1/sandboxes", json!({"env": "busybox"})).await?;
        if st != 201 {
            bail!("create failed: {v}");
        }
        tmp.call("DELETE", &format!("/v1/sandboxes/{}?force=true", v["id"].as_str().unwrap_or("")), json!(null))
            .await?;
    }
    let env = c.call(Method::GET, "/v1/environments/busybox", empty_body()).await?;
    let layer = o
        .data_dir
        .join("environments/layers")
        .join(env["layers"][0].as_str().unwrap_or("").trim_start_matches("sha256:"));
    if !layer.join("bin/busybox").exists() {
        bail!("busybox layer not found at {} (pass --data-dir of the running daemon)", layer.display());
    }
    let mut create_body = json!({"env": "busybox"});
    if let Some(d) = &o.driver {
        create_body["driver"] = d.clone().into();
    }

    // Baseline 1: runc run /bin/true on the same rootfs, same namespaces.
    let work = std::env::temp_dir().join(format!("spinup-bench-{}", std::process::id()));
    std::fs::create_dir_all(work.join("rootfs"))?;
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"]},
        "root": {"path": layer, "readonly": true},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}, {"type": "cgroup"}],
                  "cgroupsPath": "/spinup-bench/b", "resources": {"pids": {"limit": 64}, "memory": {"limit": 268435456}}}
    });
    std::fs::write(work.join("config.json"), config.to_string())?;
    let runc = time_cmd(o.iterations, |i| {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(work.join("state")).args(["run", "--bundle"]).arg(&work).arg(format!("bench-{i}"));
        cmd
    })
    .context("runc run baseline (is runc installed?)")?;
    // Baseline 2: bwrap, the floor for namespace creation.
    let bwrap = time_cmd(o.iterations, |_| {
        let mut cmd = Command::new("bwrap");
        cmd.args(["--unshare-all", "--ro-bind"]).arg(&layer).args(["/", "/bin/true"]);
        cmd
    })
    .context("bwrap baseline (is bubblewrap installed?)")?;
    // Baseline 3: runc run /bin/true with exactly the spec a Spinup sandbox
    // gets (seccomp, masked paths, capabilities, cgroup limits), so the
    // ratio against it is the cost of Spinup itself, not of the hardening.
    let hard = work.join("hardened");
    std::fs::create_dir_all(hard.join("run"))?;
    let spec = spinup_model::SandboxSpec {
        id: "bench".into(),
        hostname: "bench".into(),
        resources: spinup_model::Resources::default(),
        layers: vec![],
        net: None,
    };
    let mut cfg: Value = serde_json::from_str(&spinup_driver_container::spec::build(&spec, &hard, "spinup-bench")?)?;
    cfg["root"] = json!({"path": layer, "readonly": true});
    cfg["process"]["args"] = json!(["/bin/true"]);
    if let Some(m) = cfg["mounts"].as_array_mut() {
        m.retain(|m| m["destination"] != "/run/spinup");
    }
    std::fs::write(hard.join("config.json"), cfg.to_string())?;
    let runc_hard = time_cmd(o.iterations, |i| {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(work.join("state")).args(["run", "--bundle"]).arg(&hard).arg(format!("bench-h-{i}"));
        cmd
    })
    .context("runc run (Spinup's spec) baseline")?;
    let _ = std::fs::remove_dir_all(&work);

    // Spinup: create → first exec of /bin/true.
    let mut create_exec = vec![];
    let mut ids = vec![];
    for _ in 0..o.iterations {
        let t = Instant::now();
        let (st, v) = conn.call("POST", "/v1/sandboxes", create_body.clone()).await?;
        if st != 201 {
            bail!("create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        if st != 200 || v["exit_code"] != 0 {
            bail!("first exec failed: {v}");
        }
        create_exec.push(t.elapsed());
        ids.push(id);
        conn.call("DELETE", &format!("/v1/sandboxes/{}?force=true", ids.pop().unwrap()), json!(null)).await?;
    }

    // Exec round trip of /bin/true on one sandbox.
    let (_, v) = conn.call("POST", "/v1/sandboxes", create_body.clone()).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let mut rtt = vec![];
    for i in 0..o.exec_iterations + 10 {
        let t = Instant::now();
        let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        if st != 200 || v["exit_code"] != 0 {
            bail!("exec failed: {v}");
        }
        if i >= 10 {
            rtt.push(t.elapsed());
        }
    }
    // The protocol alone: a unary daemon → agent call, no process.
    let mut info = vec![];
    for _ in 0..o.exec_iterations {
        let t = Instant::now();
        let (st, v) = conn.call("GET", &format!("/v1/sandboxes/{id}/info"), json!(null)).await?;
        if st != 200 {
            bail!("info failed: {v}");
        }
        info.push(t.elapsed());
    }
    conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    // The floor under any exec: fork + exec + wait of /bin/true on the host.
    let spawn = time_cmd(o.exec_iterations, |_| {
        let mut cmd = Command::new(layer.join("bin/busybox"));
        cmd.arg("true");
        cmd
    })?;

    // Host memory per idle sandbox.
    let daemon: Vec<u32> = pids_where(|_, cmd| cmd.contains("spinup") && cmd.contains(" serve"));
    let daemon_pid = *daemon.first().context("cannot find the spinup serve process")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let daemon_before = rss_kib(daemon_pid, "Rss:");
    let agents_dir = o.data_dir.join("container");
    let mut idle_ids = vec![];
    for _ in 0..o.idle {
        let (_, v) = conn.call("POST", "/v1/sandboxes", create_body.clone()).await?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        idle_ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon_after = rss_kib(daemon_pid, "Rss:");
    let agent_pids =
        pids_where(|exe, _| exe.starts_with(&agents_dir) || exe.to_string_lossy().contains("/run/spinup/spinup-agent"));
    let agent_pids: Vec<u32> = agent_pids
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .starts_with("/run/spinup/spinup-agent")
        })
        .collect();
    let agent_pss: u64 = agent_pids.iter().map(|p| rss_kib(*p, "Pss:")).sum();
    let agent_rss: u64 = agent_pids.iter().map(|p| rss_kib(*p, "Rss:")).sum();
    for id in &idle_ids {
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    }
    let n = o.idle.max(1) as f64;
    let daemon_share = daemon_after.saturating_sub(daemon_before) as f64 / n / 1024.0;
    let agent_each_pss = agent_pss as f64 / agent_pids.len().max(1) as f64 / 1024.0;
    let agent_each_rss = agent_rss as f64 / agent_pids.len().max(1) as f64 / 1024.0;

    let gvisor = gvisor::bench(c, &mut conn, &layer, &o).await?;
    let microvm = microvm::bench(c, &mut conn, &o).await?;
    let (ce, rt, rn, bw, inf, sp, rh) =
        (stats(create_exec), stats(rtt), stats(runc), stats(bwrap), stats(info), stats(spawn), stats(runc_hard));
    Ok(json!({
        "iterations": o.iterations,
        "exec_iterations": o.exec_iterations,
        "idle_sandboxes": o.idle,
        "create_to_first_exec_ms": {"p50": ce.p50, "p95": ce.p95, "mean": ce.mean},
        "exec_round_trip_ms": {"p50": rt.p50, "p95": rt.p95, "mean": rt.mean},
        "runc_run_true_ms": {"p50": rn.p50, "p95": rn.p95, "mean": rn.mean},
        "bwrap_true_ms": {"p50": bw.p50, "p95": bw.p95, "mean": bw.mean},
        "info_round_trip_ms": {"p50": inf.p50, "p95": inf.p95, "mean": inf.mean},
        "host_spawn_true_ms": {"p50": sp.p50, "p95": sp.p95, "mean": sp.mean},
        "ratio_exec_vs_host_spawn_p50": rt.p50 / sp.p50,
        "runc_run_true_spinup_spec_ms": {"p50": rh.p50, "p95": rh.p95, "mean": rh.mean},
        "ratio_create_exec_vs_runc_p50": ce.p50 / rn.p50,
        "ratio_create_exec_vs_runc_spinup_spec_p50": ce.p50 / rh.p50,
        "ratio_create_exec_vs_bwrap_p50": ce.p50 / bw.p50,
        "gvisor": gvisor,
        "microvm": microvm,
        "idle_memory_mib": {
            "daemon_share_per_sandbox": daemon_share,
            "agent_pss_per_sandbox": agent_each_pss,
            "agent_rss_per_sandbox": agent_each_rss,
            "agents_seen": agent_pids.len(),
            "total_per_sandbox_pss": daemon_share + agent_each_pss,
        }
    }))
}

pub fn print_table(v: &Value) {
    let row = |name: &str, k: &str| {
        println!(
            "| {name} | {:.2} | {:.2} |",
            v[k]["p50"].as_f64().unwrap_or(0.0),
            v[k]["p95"].as_f64().unwrap_or(0.0)
        );
    };
    println!("| measure (ms) | p50 | p95 |");
    println!("|---|---|---|");
    row("spinup create → first exec (/bin/true)", "create_to_first_exec_ms");
    row("spinup exec round trip (/bin/true)", "exec_round_trip_ms");
    row("baseline: runc run /bin/true (minimal spec)", "runc_run_true_ms");
    row("baseline: runc run /bin/true (Spinup's spec)", "runc_run_true_spinup_spec_ms");
    row("baseline: bwrap --unshare-all /bin/true", "bwrap_true_ms");
    row("spinup agent info round trip (no process)", "info_round_trip_ms");
    row("baseline: host fork+exec+wait of busybox true", "host_spawn_true_ms");
    println!();
    println!(
        "create → first exec vs runc run (minimal spec): {:.2}×",
        v["ratio_create_exec_vs_runc_p50"].as_f64().unwrap_or(0.0)
    );
    println!(
        "create → first exec vs runc run (Spinup's spec): {:.2}×",
        v["ratio_create_exec_vs_runc_spinup_spec_p50"].as_f64().unwrap_or(0.0)
    );
    println!("create → first exec vs bwrap: {:.2}×", v["ratio_create_exec_vs_bwrap_p50"].as_f64().unwrap_or(0.0));
    println!("exec round trip vs a bare host spawn: {:.2}×", v["ratio_exec_vs_host_spawn_p50"].as_f64().unwrap_or(0.0));
    let g = &v["gvisor"];
    if !g.is_null() {
        println!();
        println!("| gvisor ({}) (ms) | p50 | p95 |", g["platform"].as_str().unwrap_or("?"));
        println!("|---|---|---|");
        for (name, k) in [
            ("spinup gvisor create → first exec", "create_to_first_exec_ms"),
            ("spinup gvisor exec round trip", "exec_round_trip_ms"),
            ("baseline: runsc run /bin/true", "runsc_run_true_ms"),
        ] {
            println!(
                "| {name} | {:.2} | {:.2} |",
                g[k]["p50"].as_f64().unwrap_or(0.0),
                g[k]["p95"].as_f64().unwrap_or(0.0)
            );
        }
        println!();
        println!(
            "gvisor create → first exec vs runsc run: {:.2}×",
            g["ratio_create_exec_vs_runsc_p50"].as_f64().unwrap_or(0.0)
        );
        println!(
            "gvisor vs container driver, create → first exec: {:.2}×, exec round trip: {:.2}×",
            g["create_to_first_exec_ms"]["p50"].as_f64().unwrap_or(0.0)
                / v["create_to_first_exec_ms"]["p50"].as_f64().unwrap_or(1.0),
            g["exec_round_trip_ms"]["p50"].as_f64().unwrap_or(0.0)
                / v["exec_round_trip_ms"]["p50"].as_f64().unwrap_or(1.0)
        );
    }
    let vm = &v["microvm"];
    if !vm.is_null() {
        println!();
        println!("| microvm ({}) (ms) | p50 | p95 |", vm["backend"].as_str().unwrap_or("?"));
        println!("|---|---|---|");
        for (name, k) in [
            ("spinup microvm create → first exec (1 vCPU, 256 MiB)", "create_to_first_exec_ms"),
            ("baseline: plain QEMU boot of the same kernel to /init → poweroff", "plain_qemu_boot_poweroff_ms"),
            ("spinup microvm exec round trip", "exec_round_trip_ms"),
        ] {
            println!(
                "| {name} | {:.2} | {:.2} |",
                vm[k]["p50"].as_f64().unwrap_or(0.0),
                vm[k]["p95"].as_f64().unwrap_or(0.0)
            );
        }
        println!();
        println!(
            "microvm create → first exec vs plain QEMU boot: {:.2}×",
            vm["ratio_create_exec_vs_plain_boot_p50"].as_f64().unwrap_or(0.0)
        );
        println!(
            "microvm VMM host memory beyond guest RAM: {:.1} MiB (guest RAM resident: {:.1} MiB)",
            vm["vmm_memory_beyond_guest_ram_mib"].as_f64().unwrap_or(0.0),
            vm["guest_ram_resident_mib"].as_f64().unwrap_or(0.0)
        );
    }
    let m = &v["idle_memory_mib"];
    println!(
        "idle sandbox host memory: daemon share {:.2} MiB + agent {:.2} MiB PSS ({:.2} MiB RSS) = {:.2} MiB",
        m["daemon_share_per_sandbox"].as_f64().unwrap_or(0.0),
        m["agent_pss_per_sandbox"].as_f64().unwrap_or(0.0),
        m["agent_rss_per_sandbox"].as_f64().unwrap_or(0.0),
        m["total_per_sandbox_pss"].as_f64().unwrap_or(0.0)
    );
}
