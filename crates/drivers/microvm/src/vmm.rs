//! The VMM behind a small trait: QEMU's `microvm` machine today; Firecracker
//! or Cloud Hypervisor can implement [`Vmm`] when their binaries are present.

use std::os::unix::fs::MetadataExt;
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
    /// The `cgroup.procs` files of the VMM's own cgroup (see [`crate::jail`]),
    /// joined before QEMU runs.
    pub cgroup: Vec<PathBuf>,
    /// The uid and gid QEMU runs as (see [`crate::jail::vmm_ids`]), with
    /// no supplementary group but `/dev/kvm`'s under KVM; `None`: as the
    /// daemon's user (probe guests, which read only our kernel and agent).
    pub user: Option<(u32, u32)>,
    /// The only files QEMU sees (see [`crate::jail::Root`]); `None`: the
    /// host's.
    pub root: Option<crate::jail::Root>,
}

pub trait Vmm: Send + Sync {
    fn name(&self) -> &str;
    /// `qemu-system-x86_64 7.2.x` and the like.
    fn version(&self) -> &str;
    /// The command that boots `vm` under `accel` in the foreground (it is
    /// detached by [`boot`]), writing its pid to `vm.pidfile`.
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
        c.args(["-sandbox", crate::jail::QEMU_SANDBOX]);
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
        // Into the VMM's own cgroup first, so all it does is counted there.
        let procs: Vec<std::ffi::CString> =
            vm.cgroup.iter().filter_map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()).collect();
        // SAFETY: open, write and close are async-signal-safe; the paths
        // are made before the fork.
        unsafe {
            c.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    // "0" is the writer itself.
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        if let Some(state) = &vm.incoming {
            // The saved state as an fd (3): `-sandbox spawn=deny` rules out
            // `exec:cat`, and QEMU opens no path of it.
            c.arg("-incoming").arg(format!("fd:{INCOMING_FD}"));
            let file = std::fs::File::open(state);
            // SAFETY: dup2 is async-signal-safe; the file stays open in the
            // parent until spawn returns. A file that cannot be opened fails
            // the spawn with its error.
            unsafe {
                c.pre_exec(move || match &file {
                    Ok(f) => put_fd(std::os::fd::AsRawFd::as_raw_fd(f), INCOMING_FD),
                    Err(e) => Err(std::io::Error::new(e.kind(), "the saved VM state cannot be opened")),
                });
            }
        }
        if let Some((netns, mac)) = &vm.nic {
            c.args(["-netdev", &format!("tap,id=net0,fd={TAP_FD}")]);
            c.args(["-device", &format!("virtio-net-device,netdev=net0,mac={mac}")]);
            // The tap is attached here, as root in the sandbox's namespace,
            // and handed to QEMU as an fd: QEMU itself runs unprivileged
            // and could not. Its sockets (QMP, agent) are unix sockets and
            // work from that namespace.
            match std::fs::File::open(netns) {
                Ok(f) => {
                    // SAFETY: setns, open, ioctl, dup2 and close are
                    // async-signal-safe; the fd stays open in the parent
                    // until spawn returns.
                    unsafe {
                        c.pre_exec(move || {
                            if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            open_tap(b"tap0", TAP_FD)
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
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(root) = &vm.root {
            match root.prepare() {
                // SAFETY: `enter` makes only syscalls, on what `prepare`
                // made before the fork.
                Ok(p) => unsafe {
                    c.pre_exec(move || p.enter());
                },
                Err(e) => {
                    let msg = e.to_string();
                    // SAFETY: returns an error; nothing else runs.
                    unsafe { c.pre_exec(move || Err(std::io::Error::other(msg.clone()))) };
                }
            }
        }
        if let Some((uid, gid)) = vm.user {
            // Under KVM the one group it keeps is /dev/kvm's.
            let groups: Vec<libc::gid_t> = match accel {
                Accel::Kvm => std::fs::metadata("/dev/kvm").map(|m| vec![m.gid()]).unwrap_or_default(),
                Accel::Tcg => vec![],
            };
            // Last, after everything that needs root (cgroup, netns, tap).
            // SAFETY: setgroups, setresgid and setresuid are
            // async-signal-safe; `groups` is made before the fork.
            unsafe {
                c.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        c
    }
}

/// The fd a sandbox's tap is handed to QEMU on.
const TAP_FD: i32 = 4;

/// Attach to the existing tap `name` (in this network namespace) and put
/// it on fd `at`, open across exec. Runs between fork and exec.
fn open_tap(name: &[u8], at: i32) -> std::io::Result<()> {
    // struct ifreq: the name, then the flags (a short) at offset 16.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: plain syscalls on a buffer we own, of the size TUNSETIFF reads.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TUNSETIFF, ifr.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        put_fd(fd, at)?;
        if fd != at {
            libc::close(fd);
        }
    }
    Ok(())
}

/// Make `fd` available as `at` across exec (dup2, or, where it is `at`
/// already, clear its close-on-exec flag). Runs between fork and exec.
fn put_fd(fd: i32, at: i32) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl are async-signal-safe.
    let ok = unsafe {
        if fd == at {
            libc::fcntl(fd, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(fd, at) == at
        }
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The fd a saved state is handed to QEMU on.
const INCOMING_FD: i32 = 3;

/// Start `vm` under `accel` and wait, at most `bound`, until it is up: its
/// QMP socket answers (QEMU's main loop runs, so every device was made),
/// or, with no QMP socket, it has written its pid file. QEMU does not
/// `-daemonize` (its seccomp sandbox refuses the setsid and fork that
/// needs): it starts in a session of its own, so it outlives the daemon,
/// and a task reaps it. Its stderr goes to `qemu.log` beside the pid file,
/// and a VMM that exits says what that holds.
pub async fn boot(vmm: &dyn Vmm, vm: &VmConfig, accel: Accel, bound: Duration) -> Result<i32> {
    let log = vm.pidfile.with_file_name("qemu.log");
    let io = |e: std::io::Error| Error::Internal(format!("starting {}: {}: {e}", vmm.name(), log.display()));
    let stderr = std::fs::File::create(&log).map_err(io)?;
    let mut cmd = vmm.command(vm, accel);
    cmd.stderr(stderr);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|e| Error::Unavailable(format!("starting {}: {e}", vmm.name())))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let deadline = std::time::Instant::now() + bound;
    let failed = |what: String| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Error::Internal(format!("{} did not start the guest: {what}: {}", vmm.name(), text.trim()))
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(status.to_string()));
        }
        let up = match &vm.qmp_socket {
            Some(sock) => crate::qmp::execute(sock, "query-status").await.is_ok(),
            None => vm.pidfile.exists(),
        };
        if up {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(failed(format!("not up within {bound:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(pid)
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
        cgroup: vec![],
        user: None,
        root: None,
    };
    let start = std::time::Instant::now();
    let pid = boot(vmm, &vm, accel, bound).await.map_err(|e| e.to_string())?;
    // The agent, booted with spinup.probe=1, prints this marker and stops.
    let result = loop {
        let console = std::fs::read_to_string(&vm.console).unwrap_or_default();
        if console.contains(spinup_protocol::VM_PROBE_MARKER) {
            break Ok(start.elapsed());
        }
        if pid > 0 && spinup_driver_container::proc_starttime(pid).is_none() {
            let mut tail: String = console.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            if tail.trim().is_empty() {
                // No guest output: QEMU's own error (KVM refused, ...).
                tail = std::fs::read_to_string(vm.pidfile.with_file_name("qemu.log")).unwrap_or_default();
            }
            break Err(format!("the probe guest exited before its agent started: {}", tail.trim()));
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
