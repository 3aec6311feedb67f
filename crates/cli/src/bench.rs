//! `spinup bench`: Spinup's figures next to baselines measured in the same
//! run on the same rootfs (`runc run` of /bin/true, `bwrap --unshare-all
//! /bin/true`). Ratios matter here; absolute times on shared machines do not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::client::Client;

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
    async fn open(c: &Client) -> Result<Conn> {
        let io = c.connect().await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Conn { tx })
    }

    async fn call(&mut self, method: &str, path: &str, body: Value) -> Result<(u16, Value)> {
        self.tx.ready().await?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = self.tx.send_request(req).await?;
        let st = resp.status().as_u16();
        let b = resp.into_body().collect().await?.to_bytes();
        Ok((st, if b.is_empty() { Value::Null } else { serde_json::from_slice(&b)? }))
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

pub async fn run(c: &Client, o: Opts) -> Result<Value> {
    let mut conn = Conn::open(c).await?;
    let env = c.json(http::Method::GET, "/v1/environments/busybox", None).await;
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
    let env = c.json(http::Method::GET, "/v1/environments/busybox", None).await?;
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

    let gvisor = bench_gvisor(c, &mut conn, &layer, &o).await?;
    let microvm = bench_microvm(c, &mut conn, &o).await?;
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

/// gVisor next to the container driver and `runsc run` of /bin/true on the
/// same rootfs and platform, in the same run. Null when gVisor is unavailable.
async fn bench_gvisor(c: &Client, conn: &mut Conn, layer: &Path, o: &Opts) -> Result<Value> {
    let drivers = c.json(http::Method::GET, "/v1/drivers", None).await?;
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

/// The microVM driver: create → first exec (boot to agent ready, plus one
/// exec) against a plain boot, in the same run, of the same kernel under
/// the same QEMU machine to a trivial /init that powers off; exec round
/// trip in the guest; and the VMM's host memory beyond guest RAM.
async fn bench_microvm(c: &Client, conn: &mut Conn, o: &Opts) -> Result<Value> {
    use spinup_driver_microvm::vmm::{Accel, Qemu, VmConfig, Vmm};
    let drivers = c.json(http::Method::GET, "/v1/drivers", None).await?;
    let Some(m) =
        drivers.as_array().and_then(|d| d.iter().find(|d| d["driver"] == "microvm" && d["available"] == true))
    else {
        return Ok(Value::Null);
    };
    let backend = m["backend"].as_str().unwrap_or("").to_string();
    let accel = if backend.contains("TCG") { Accel::Tcg } else { Accel::Kvm };
    let kdir =
        std::env::var_os("SPINUP_KERNEL_DIR").map(PathBuf::from).unwrap_or_else(|| o.data_dir.join("microvm/kernel"));
    let release = std::fs::read_to_string(kdir.join("current")).with_context(|| {
        format!("no guest kernel under {} (set SPINUP_KERNEL_DIR as for the daemon)", kdir.display())
    })?;
    let kernel = kdir.join(release.trim()).join("vmlinuz");
    // The baseline's initramfs: busybox and a /init that powers off at once.
    let work = std::env::temp_dir().join(format!("spinup-bench-vm-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut a = spinup_driver_microvm::cpio::Archive::default();
    for d in ["bin", "dev", "proc", "sys", "run", "run/spinup"] {
        a.dir(d);
    }
    a.file("bin/busybox", 0o755, &std::fs::read("/bin/busybox").context("/bin/busybox (busybox-static)")?);
    let init = b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n";
    a.file(spinup_driver_microvm::kernel::AGENT_PATH.trim_start_matches('/'), 0o755, init);
    std::fs::write(work.join("initrd.cpio"), a.finish())?;
    let qemu = Qemu::find(None).await?;
    let n = (o.iterations / 6).max(5);
    let mut plain = vec![];
    for i in 0..n {
        let vm = VmConfig {
            kernel: kernel.clone(),
            initrd: work.join("initrd.cpio"),
            cmdline: String::new(),
            disk: None,
            vcpus: 1,
            memory_mib: 256 + spinup_driver_microvm::GUEST_KERNEL_MIB,
            agent_socket: None,
            qmp_socket: None,
            console: work.join(format!("console-{i}.log")),
            pidfile: work.join(format!("qemu-{i}.pid")),
            incoming: None,
            nic: None,
        };
        let t = Instant::now();
        let out = qemu.command(&vm, accel).output().await?;
        if !out.status.success() {
            bail!("plain QEMU boot failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let pid: i32 = std::fs::read_to_string(&vm.pidfile)?.trim().parse()?;
        while spinup_driver_container::proc_starttime(pid).is_some() {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the plain QEMU boot did not power off within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        plain.push(t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&work);
    let body = json!({"env": "busybox", "driver": "microvm", "resources": {"vcpus": 1, "memory_mib": 256}});
    let mut create_exec = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let (st, v) = conn.call("POST", "/v1/sandboxes", body.clone()).await?;
        if st != 201 {
            bail!("microvm create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        create_exec.push(t.elapsed());
        conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    }
    let (_, v) = conn.call("POST", "/v1/sandboxes", body.clone()).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let mut rtt = vec![];
    for i in 0..(o.exec_iterations / 6).max(20) + 5 {
        let t = Instant::now();
        conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"argv": ["/bin/true"]})).await?;
        if i >= 5 {
            rtt.push(t.elapsed());
        }
    }
    // Host memory of the idle VMM outside the guest's RAM mapping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid: u32 =
        std::fs::read_to_string(o.data_dir.join(format!("microvm/sandboxes/{id}/run/qemu.pid")))?.trim().parse()?;
    let ram_kib = (256 + spinup_driver_microvm::GUEST_KERNEL_MIB) << 10;
    let (mut guest_rss, mut other_rss, mut size) = (0u64, 0u64, 0u64);
    for line in std::fs::read_to_string(format!("/proc/{pid}/smaps"))?.lines() {
        let field = |name: &str| line.strip_prefix(name).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(s) = field("Size:") {
            size = s;
        } else if let Some(r) = field("Rss:") {
            if size == ram_kib {
                guest_rss += r;
            } else {
                other_rss += r;
            }
        }
    }
    conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await?;
    let (ce, rt, pl) = (stats(create_exec), stats(rtt), stats(plain));
    Ok(json!({
        "backend": backend,
        "create_to_first_exec_ms": {"p50": ce.p50, "p95": ce.p95, "mean": ce.mean},
        "plain_qemu_boot_poweroff_ms": {"p50": pl.p50, "p95": pl.p95, "mean": pl.mean},
        "ratio_create_exec_vs_plain_boot_p50": ce.p50 / pl.p50,
        "exec_round_trip_ms": {"p50": rt.p50, "p95": rt.p95, "mean": rt.mean},
        "vmm_memory_beyond_guest_ram_mib": other_rss as f64 / 1024.0,
        "guest_ram_resident_mib": guest_rss as f64 / 1024.0,
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

/// `spinup bench --snapshots`: snapshot, fork, pause/resume and memory
/// restore latencies, each next to its baseline in the same run.
pub async fn run_snapshots(c: &Client, o: Opts) -> Result<Value> {
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

// ---- `spinup bench --network` ----

/// A server that exists only on this machine: a network namespace with a
/// veth to the host (198.19.254.2), plain HTTP on :80 and TLS on :443 under
/// a CA made for the run. `/small` answers 64 bytes (keep-alive), `/big`
/// 64 MiB.
struct BenchNet {
    ns: String,
    host_if: String,
    ip: String,
    ca_pem: String,
}

const BIG: usize = 64 << 20;

impl BenchNet {
    fn start() -> Result<BenchNet> {
        let ns = format!("spbench-{}", std::process::id());
        let host_if = "spbench0".to_string();
        let ip = "198.19.254.2".to_string();
        let sh = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output().context("running ip")?;
            if !out.status.success() {
                bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["netns", "add", &ns])?;
        sh(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        sh(&["addr", "add", "198.19.254.1/24", "dev", &host_if])?;
        sh(&["link", "set", &host_if, "up"])?;
        sh(&["-n", &ns, "addr", "add", "198.19.254.2/24", "dev", "eth0"])?;
        sh(&["-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&["-n", &ns, "link", "set", "lo", "up"])?;
        sh(&["-n", &ns, "route", "add", "default", "via", "198.19.254.1"])?;
        let ca = std::sync::Arc::new(spinup_net::ca::SandboxCa::generate("Spinup bench upstream CA")?);
        let ca_pem = ca.cert_pem().to_string();
        let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only; it serves from there.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error().to_string()));
                return;
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let (Ok(http), Ok(https)) = (
                    tokio::net::TcpListener::bind("0.0.0.0:80").await,
                    tokio::net::TcpListener::bind("0.0.0.0:443").await,
                ) else {
                    let _ = tx.send(Err("binding the bench server".into()));
                    return;
                };
                let _ = tx.send(Ok(()));
                let tls = tokio_rustls::TlsAcceptor::from(ca.server_config());
                tokio::spawn(async move {
                    while let Ok((s, _)) = http.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(bench_http(s));
                    }
                });
                while let Ok((s, _)) = https.accept().await {
                    let _ = s.set_nodelay(true);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Ok(s) = tls.accept(s).await {
                            bench_http(s).await;
                        }
                    });
                }
            });
        });
        rx.recv_timeout(Duration::from_secs(10)).context("bench server")?.map_err(|e| anyhow::anyhow!(e))?;
        Ok(BenchNet { ns, host_if, ip, ca_pem })
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

async fn bench_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let zeros = vec![0u8; 256 * 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let big = head.starts_with(b"GET /big");
        let len = if big { BIG } else { 64 };
        let h = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n");
        if s.write_all(h.as_bytes()).await.is_err() {
            return;
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            if s.write_all(&zeros[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
    }
}

/// curl arguments for `n` requests of `/small` over one connection, printing
/// each request's total time, then one `/big` printing the download speed.
fn curl_script(url: &str, n: usize, extra: &str) -> String {
    // One `-o /dev/null URL` pair per request: the same connection, each
    // transfer's own time.
    let urls = std::iter::repeat_n(format!("-o /dev/null {url}/small"), n).collect::<Vec<_>>().join(" ");
    format!(
        "curl -s {extra} -w '%{{time_total}}\\n' {urls} && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big && curl -s {extra} -o /dev/null -w 'speed %{{speed_download}}\\n' {url}/big"
    )
}

/// (per-request latencies, median download speed in MB/s) from curl's
/// output; the first request (connection and TLS set-up) is left out.
fn parse_curl(out: &str) -> Result<(Vec<Duration>, f64)> {
    let mut lat = vec![];
    let mut speeds = vec![];
    for l in out.lines() {
        if let Some(s) = l.strip_prefix("speed ") {
            speeds.push(s.trim().parse::<f64>()? / 1e6);
        } else if let Ok(t) = l.trim().parse::<f64>() {
            lat.push(Duration::from_secs_f64(t));
        }
    }
    if lat.is_empty() || speeds.is_empty() {
        bail!("unexpected curl output: {out}");
    }
    speeds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if lat.len() > 1 {
        lat.remove(0);
    }
    Ok((lat, speeds[speeds.len() / 2]))
}

/// `spinup bench --network`: HTTP latency and throughput from a sandbox to
/// a server on this machine, next to the same curl run on the host; and the
/// same over HTTPS through the secrets proxy (TLS terminated with the
/// sandbox's CA, re-encrypted upstream, placeholder swapped), next to the
/// host's HTTPS.
pub async fn run_network(c: &Client, o: Opts) -> Result<Value> {
    let n = o.exec_iterations.clamp(20, 1000);
    let mut conn = Conn::open(c).await?;
    let net = BenchNet::start()?;
    // The daemon's proxy trusts this run's CA for sandboxes made from now.
    let ca_dir = o.data_dir.join("net/upstream-ca.d");
    std::fs::create_dir_all(&ca_dir)
        .with_context(|| format!("{} (pass --data-dir of the running daemon)", ca_dir.display()))?;
    let ca_file = ca_dir.join(format!("spinup-bench-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &net.ca_pem)?;
    let host_ca = std::env::temp_dir().join(format!("spinup-bench-ca-{}.pem", std::process::id()));
    std::fs::write(&host_ca, &net.ca_pem)?;
    let secret = "SPINUP_BENCH_TOKEN";
    c.json_body(
        http::Method::PUT,
        &format!("/v1/secrets/{secret}"),
        spinup_protocol::client::full_body("bench-token-value"),
    )
    .await?;
    let result = async {
        let ip = &net.ip;
        let host_run = |script: String| -> Result<String> {
            let out = Command::new("sh").arg("-c").arg(&script).output()?;
            if !out.status.success() {
                bail!("host curl failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        };
        let mut create = json!({
            "env": "debian",
            "network": {"mode": "open", "hosts": {"bench.test": ip}},
            "secrets": [{"name": secret, "mode": "proxy", "hosts": ["bench.test"]}],
        });
        if let Some(d) = &o.driver {
            create["driver"] = d.clone().into();
        }
        eprintln!("creating a debian sandbox (the first run builds the environment)");
        let (st, v) = conn.call("POST", "/v1/sandboxes", create).await?;
        if st != 201 {
            bail!("create failed: {v}");
        }
        let id = v["id"].as_str().unwrap_or("").to_string();
        let sandbox_run = |script: String| {
            let id = id.clone();
            async move {
                let mut conn = Conn::open(c).await?;
                let (st, v) = conn.call("POST", &format!("/v1/sandboxes/{id}/exec"), json!({"cmd": script})).await?;
                if st != 200 || v["exit_code"] != 0 {
                    bail!("sandbox curl failed: {v}");
                }
                Ok::<_, anyhow::Error>(v["stdout"].as_str().unwrap_or("").to_string())
            }
        };
        let http_url = format!("http://{ip}");
        let host_tls = format!("--cacert {} --resolve bench.test:443:{ip}", host_ca.display());
        let arms = [
            ("host_http", host_run(curl_script(&http_url, n, ""))?),
            ("sandbox_http", sandbox_run(curl_script(&http_url, n, "")).await?),
            ("host_https", host_run(curl_script("https://bench.test", n, &host_tls))?),
            (
                "sandbox_https_proxy",
                sandbox_run(curl_script("https://bench.test", n, "-H \"Authorization: Bearer $SPINUP_BENCH_TOKEN\""))
                    .await?,
            ),
        ];
        let _ = conn.call("DELETE", &format!("/v1/sandboxes/{id}?force=true"), json!(null)).await;
        let mut out = json!({"requests": n, "big_mib": BIG >> 20});
        for (k, text) in arms {
            let (lat, mbps) = parse_curl(&text)?;
            let s = stats(lat);
            out[k] = json!({"latency_ms": {"p50": s.p50, "p95": s.p95}, "throughput_mb_s": mbps});
        }
        let r = |a: &str, b: &str, f: &str| {
            let (x, y) = if f == "lat" {
                (
                    out[a]["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                    out[b]["latency_ms"]["p50"].as_f64().unwrap_or(1.0),
                )
            } else {
                (out[a]["throughput_mb_s"].as_f64().unwrap_or(0.0), out[b]["throughput_mb_s"].as_f64().unwrap_or(1.0))
            };
            x / y
        };
        let ratios = [
            ("ratio_sandbox_vs_host_http_latency_p50", r("sandbox_http", "host_http", "lat")),
            ("ratio_sandbox_vs_host_http_throughput", r("sandbox_http", "host_http", "tp")),
            ("ratio_proxy_vs_host_https_latency_p50", r("sandbox_https_proxy", "host_https", "lat")),
            ("ratio_proxy_vs_host_https_throughput", r("sandbox_https_proxy", "host_https", "tp")),
        ];
        for (k, v) in ratios {
            out[k] = v.into();
        }
        Ok(out)
    }
    .await;
    let _ = std::fs::remove_file(&ca_file);
    let _ = std::fs::remove_file(&host_ca);
    let _ = c.json(http::Method::DELETE, &format!("/v1/secrets/{secret}"), None).await;
    result
}

pub fn print_network_table(v: &Value) {
    let f = |x: &Value| x.as_f64().map(|n| format!("{n:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "| HTTP to a server on this machine ({} requests on one connection; {} MiB download) | latency p50 (ms) | p95 | throughput (MB/s) |",
        v["requests"], v["big_mib"]
    );
    println!("|---|---|---|---|");
    for (k, label) in [
        ("host_http", "baseline: curl on the host, HTTP"),
        ("sandbox_http", "curl in a sandbox, HTTP (veth + NAT + policy)"),
        ("host_https", "baseline: curl on the host, HTTPS"),
        ("sandbox_https_proxy", "curl in a sandbox, HTTPS through the secrets proxy"),
    ] {
        let e = &v[k];
        println!(
            "| {label} | {} | {} | {} |",
            f(&e["latency_ms"]["p50"]),
            f(&e["latency_ms"]["p95"]),
            f(&e["throughput_mb_s"])
        );
    }
    println!();
    println!(
        "sandbox vs host (HTTP): latency {}×, throughput {}×; secrets proxy vs host (HTTPS): latency {}×, throughput {}×",
        f(&v["ratio_sandbox_vs_host_http_latency_p50"]),
        f(&v["ratio_sandbox_vs_host_http_throughput"]),
        f(&v["ratio_proxy_vs_host_https_latency_p50"]),
        f(&v["ratio_proxy_vs_host_https_throughput"])
    );
}
