//! The VMM behind a small trait: QEMU's `microvm` machine today; Firecracker
//! or Cloud Hypervisor can implement [`Vmm`] when their binaries are present.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use spinup_model::{Error, Result};

/// How guest instructions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One guest to start.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel command line (the VMM adds console and panic settings).
    pub cmdline: String,
    /// The root disk (qcow2); None for a probe guest.
    pub disk: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Unix socket (server) the agent's virtio-serial port is wired to.
    pub agent_socket: Option<PathBuf>,
    /// QMP control socket (server), for pause/resume and snapshots.
    pub qmp_socket: Option<PathBuf>,
    /// Where the guest's serial console goes.
    pub console: PathBuf,
    pub pidfile: PathBuf,
    /// Start from a saved state (a migration stream in this file) instead
    /// of booting.
    pub incoming: Option<PathBuf>,
    /// A virtio-net NIC on `tap0` of this network namespace (where QEMU is
    /// started), with this MAC.
    pub nic: Option<(PathBuf, String)>,
}

pub trait Vmm: Send + Sync {
    fn name(&self) -> &str;
    /// `qemu-system-x86_64 7.2.x` and the like.
    fn version(&self) -> &str;
    /// The command that boots `vm` under `accel`, detached from the caller
    /// (the guest outlives the daemon), writing its pid to `vm.pidfile`.
    fn command(&self, vm: &VmConfig, accel: Accel) -> tokio::process::Command;
}

#[derive(Debug)]
pub struct Qemu {
    pub binary: PathBuf,
    pub version: String,
}

impl Qemu {
    /// Find qemu-system-x86_64 (or `binary`) and its version.
    pub async fn find(binary: Option<&str>) -> Result<Qemu> {
        let binary = PathBuf::from(binary.unwrap_or("qemu-system-x86_64"));
        let out = spinup_host::run(
            tokio::process::Command::new(&binary).arg("--version"),
            spinup_host::Run::new("install qemu-system-x86 and qemu-utils (scripts/install-deps.sh)")
                .failed_as(Error::Unavailable),
        )
        .await?;
        let first = out.stdout.lines().next().unwrap_or("").to_string();
        let version = first.split("version ").nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
        Ok(Qemu { binary, version: format!("qemu {version}") })
    }
}

impl Vmm for Qemu {
    fn name(&self) -> &str {
        "qemu"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn command(&self, vm: &VmConfig, accel: Accel) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.binary);
        // microvm: virtio-mmio only, no PCI, no option ROMs. ACPI stays on:
        // Debian's kernel finds virtio-mmio devices through the DSDT (it
        // lacks VIRTIO_MMIO_CMDLINE_DEVICES), and powers off through S5.
        c.args(["-M", "microvm,pit=on,rtc=on,x-option-roms=off,isa-serial=on"]);
        match accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            // A bounded translation cache: TCG's default is 1 GiB of host RAM.
            Accel::Tcg => c.args(["-accel", "tcg,tb-size=64", "-cpu", "max"]),
        };
        c.args(["-m", &format!("{}M", vm.memory_mib), "-smp", &vm.vcpus.to_string()]);
        c.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none"]);
        c.arg("-kernel").arg(&vm.kernel).arg("-initrd").arg(&vm.initrd);
        // Under TCG the kernel's TSC calibration against the emulated PIT
        // fails on a busy host and the boot hangs: give it the host's TSC
        // rate, which is what the emulated TSC runs at.
        let tsc = match (accel, host_tsc_khz()) {
            (Accel::Tcg, Some(khz)) => format!("tsc_early_khz={khz} tsc=reliable "),
            _ => String::new(),
        };
        c.args([
            "-append",
            &format!("console=ttyS0 quiet panic=-1 {tsc}rdinit={} {} -- --vm", crate::kernel::AGENT_PATH, vm.cmdline),
        ]);
        c.arg("-serial").arg(format!("file:{}", vm.console.display()));
        if let Some(disk) = &vm.disk {
            c.arg("-drive").arg(format!("id=root,file={},format=qcow2,if=none,discard=unmap", disk.display()));
            c.args(["-device", "virtio-blk-device,drive=root"]);
        }
        if let Some(sock) = &vm.agent_socket {
            c.args(["-device", "virtio-serial-device"]);
            c.arg("-chardev").arg(format!("socket,id=agent,path={},server=on,wait=off", sock.display()));
            c.args(["-device", &format!("virtserialport,chardev=agent,name={}", spinup_protocol::VM_AGENT_PORT)]);
        }
        if let Some(qmp) = &vm.qmp_socket {
            c.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        if let Some(state) = &vm.incoming {
            // QEMU runs this through /bin/sh; the path is ours (data dir + ids).
            c.arg("-incoming").arg(format!("exec:cat '{}'", state.display()));
        }
        if let Some((netns, mac)) = &vm.nic {
            c.args(["-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no"]);
            c.args(["-device", &format!("virtio-net-device,netdev=net0,mac={mac}")]);
            // QEMU opens the tap in the sandbox's namespace; its sockets
            // (QMP, agent) are unix sockets and work from there.
            match std::fs::File::open(netns) {
                Ok(f) => {
                    // SAFETY: setns is async-signal-safe; the fd stays
                    // open in the parent until spawn returns.
                    unsafe {
                        c.pre_exec(move || {
                            if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                }
                Err(e) => {
                    // Never fall back to the host's namespace.
                    let kind = e.kind();
                    // SAFETY: returns an error; nothing else runs.
                    unsafe {
                        c.pre_exec(move || Err(std::io::Error::new(kind, "the sandbox's network namespace is gone")))
                    };
                }
            }
        }
        c.arg("-pidfile").arg(&vm.pidfile);
        c.arg("-daemonize");
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }
}

/// How a probe that ran out of time starts its error.
pub const PROBE_TIMEOUT: &str = "no guest agent within";

/// The host's TSC rate in kHz (`cpu MHz` of /proc/cpuinfo).
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Boot a probe guest under `accel` and wait, at most `bound`, for its
/// agent to come up; the guest is then killed. A KVM that cannot run an
/// ordinary kernel (nested PVM hangs at the switch to long mode) fails here.
pub async fn probe(
    vmm: &dyn Vmm,
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    bound: Duration,
) -> std::result::Result<Duration, String> {
    // A probe guest of a daemon killed mid-probe goes first (only ours:
    // its command line names this dir).
    let stale = std::fs::read_to_string(dir.join("qemu.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = stale {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let vm = VmConfig {
        kernel: kernel.into(),
        initrd: initrd.into(),
        cmdline: "spinup.probe=1".into(),
        disk: None,
        vcpus: 1,
        memory_mib: 128,
        agent_socket: None,
        qmp_socket: None,
        console: dir.join("console.log"),
        pidfile: dir.join("qemu.pid"),
        incoming: None,
        nic: None,
    };
    let start = std::time::Instant::now();
    let out = vmm.command(&vm, accel).output().await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let pid: i32 = std::fs::read_to_string(&vm.pidfile).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
    // The agent, booted with spinup.probe=1, prints this marker and stops.
    let result = loop {
        let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
        if console.contains(spinup_protocol::VM_PROBE_MARKER) {
            break Ok(start.elapsed());
        }
        if pid > 0 && spinup_driver_container::proc_starttime(pid).is_none() {
            let tail: String = console.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            break Err(format!("the probe guest exited before its agent started: {tail}"));
        }
        if start.elapsed() > bound {
            break Err(format!("{PROBE_TIMEOUT} {bound:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_dir_all(dir);
    result
}
