//! The microVM driver against a plain QEMU boot of the same kernel.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::Method;
use serde_json::{json, Value};
use spinup_protocol::client::empty_body;

use crate::{stats, Api, Conn, Opts};

/// The microVM driver: create → first exec (boot to agent ready, plus one
/// exec) against a plain boot, in the same run, of the same kernel under
/// the same QEMU machine to a trivial /init that powers off; exec round
/// trip in the guest; and the VMM's host memory beyond guest RAM.
pub(crate) async fn bench(c: &impl Api, conn: &mut Conn, o: &Opts) -> Result<Value> {
    use spinup_driver_microvm::vmm::{Accel, Qemu, VmConfig, Vmm};
    let drivers = c.call(Method::GET, "/v1/drivers", empty_body()).await?;
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
            cgroup: vec![],
            user: None,
            root: None,
        };
        let t = Instant::now();
        // QEMU runs in the foreground until the guest powers off.
        let mut cmd = qemu.command(&vm, accel);
        cmd.stderr(std::process::Stdio::piped());
        let out = cmd.output().await?;
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
