//! The parts of an OCI-runtime driver that do not depend on which runtime
//! runs the bundle: sandbox directories, the overlay rootfs, the spec, the
//! runtime process, agent transport, liveness and teardown. The
//! `container` driver (crun/runc) and the `gvisor` driver (runsc) are thin
//! configurations of it.
//!
//! Layout under the driver's root:
//!
//! ```text
//! state/                     the OCI runtime's --root (ours alone)
//! sandboxes/<id>/disk.img    sparse ext4 image of disk_mib (the disk limit)
//! sandboxes/<id>/disk/       disk.img mounted (loop, nosuid, nodev):
//!     upper                  writable layer
//!     work                   overlayfs work dir
//!     console.log            the agent's stdout/stderr (within the limit)
//! sandboxes/<id>/rootfs      overlay mount point (the sandbox's /)
//! sandboxes/<id>/config.json the OCI bundle
//! sandboxes/<id>/init.pid    the runtime's init (or sandbox) process
//! sandboxes/<id>/run/        bind-mounted read-only at /run/spinup:
//!     agent.sock | host.sock bound by the host (see Transport)
//!     spinup-agent           hard link of the agent binary
//! ```

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spinup_model::{AgentStream, Capabilities, DriverStatus, Error, IsolationClass, Result, SandboxSpec};

use crate::probe::Runtime;
use crate::spec;

/// How the host and the agent find each other over a unix socket. In both,
/// the host binds the socket, so the guest never chooses where the host
/// connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The host binds `run/agent.sock` and the agent inherits the listening
    /// fd (`--preserve-fds`).
    InheritListener,
    /// The host listens on `run/host.sock` and the agent dials out to it,
    /// for runtimes that cannot pass fds (runsc, with `--host-uds=open`).
    AgentDials,
}

/// How long a dialling agent has to connect.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for OciEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciEngine")
            .field("root", &self.root)
            .field("runtime", &self.runtime.as_ref().map(|r| r.path.display().to_string()))
            .field("global_args", &self.global_args)
            .finish_non_exhaustive()
    }
}

pub struct OciEngine {
    root: PathBuf,
    agent: PathBuf,
    cgroup_parent: String,
    pub runtime: std::result::Result<Runtime, String>,
    /// Flags before the runtime's verb (e.g. `--platform=ptrace`).
    global_args: Vec<String>,
    transport: Transport,
    listeners: Mutex<HashMap<String, Arc<tokio::net::UnixListener>>>,
    /// What replaces `--network=none` for a sandbox with a network (runsc).
    pub networked: Mutex<&'static str>,
    /// Each sandbox gets a disk image of its `disk_mib` (unless
    /// `SPINUP_DISK_LIMITS=off`: then its writable layer is a plain dir on
    /// the data dir's filesystem, unbounded).
    disk_limits: bool,
}

/// What the store keeps for one sandbox between daemon restarts.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: i32,
    /// Start time of `pid` (clock ticks since boot), so a reused pid is
    /// never mistaken for our init.
    starttime: u64,
    runtime: String,
}

/// Start time of a live process from /proc/<pid>/stat (field 22); None
/// when it is gone (zombies included).
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // A zombie is gone: it waits only for its (re)parent to reap it, and a
    // daemonized VMM's parent is the host's init, which may take seconds.
    if matches!(rest.split_whitespace().next(), Some("Z" | "X")) {
        return None;
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Cgroup `parent` in every hierarchy (v2, or each v1 controller).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let parent = parent.trim_matches('/');
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(parent)];
    for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        dirs.push(e.path().join(parent));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Remove what the runtime left of container `id`'s cgroup under `parent`
/// (it does not always remove it: its state may be gone, or a run failed
/// halfway). An empty cgroup goes; one with processes left is an error.
pub async fn remove_cgroups(parent: &str, id: &str) -> Result<()> {
    for cg in cgroup_dirs(parent).into_iter().map(|d| d.join(id)).filter(|d| d.is_dir()) {
        // Busy while its last processes are reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while let Err(e) = std::fs::remove_dir(&cg) {
            if e.kind() == std::io::ErrorKind::NotFound {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Internal(format!("removing the cgroup {}: {e}", cg.display())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The sandbox id a runtime file or dir name starts with (12 lowercase
/// hex digits, then nothing or a non-hex character).
fn sandbox_id_prefix(name: &str) -> Option<String> {
    let id = name.get(..12)?;
    let rest = &name[12..];
    (spinup_model::validate_id(id).is_ok() && !rest.starts_with(|c: char| c.is_ascii_hexdigit()))
        .then(|| id.to_string())
}

fn mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(&p))
}

/// Where a sandbox's writable layer and overlayfs work dir live: on its
/// disk (`disk/`) or, for a sandbox made before disks, in its dir itself.
fn layer_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let base = if dir.join(DISK_IMAGE).exists() { dir.join("disk") } else { dir.to_path_buf() };
    (base.join("upper"), base.join("work"))
}

const DISK_IMAGE: &str = "disk.img";

/// The agent's stdout and stderr: on the sandbox's disk, since a guest
/// may get to write there (gVisor lets guest root open /proc/1/fd/1), so
/// that it is bounded by the disk limit.
fn console_log(dir: &Path) -> PathBuf {
    if dir.join(DISK_IMAGE).exists() {
        dir.join("disk/console.log")
    } else {
        dir.join("console.log")
    }
}

/// What to do when the disk tools are missing.
const DISK_TOOLS: &str = "install e2fsprogs and util-linux (scripts/install-deps.sh)";

/// Make the sandbox's disk: a sparse file of `mib` MiB holding an ext4
/// filesystem, loop-mounted at `dir/disk`, with the overlay's upper and
/// work dirs on it. A write past it fails with ENOSPC in the guest, `df /`
/// shows its size, and its inodes are ext4's for that size. The image
/// takes host space only as the guest writes.
async fn make_disk(dir: &Path, mib: u64) -> Result<()> {
    let img = dir.join(DISK_IMAGE);
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(|e| Error::internal(format!("creating {}", img.display()), e))?;
    // No reserved blocks (the guest has the whole disk); inode tables are
    // left to read as the sparse file's zeros, so making it writes a few
    // MiB whatever its size. No journal: it would take up to 64 MiB of the
    // host's disk per sandbox as it cycles, for a filesystem a host crash
    // leaves to `e2fsck -p` before its next start (see `mount_disk`).
    spinup_host::run(
        tokio::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard"])
            .arg(&img),
        spinup_host::Run::new(DISK_TOOLS),
    )
    .await?;
    mount_disk(dir, false).await?;
    let (upper, work) = layer_dirs(dir);
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| Error::internal(format!("creating {}", d.display()), e))?;
    }
    Ok(())
}

/// Mount the sandbox's disk at `dir/disk` unless it is mounted already;
/// `check` first (a disk a reboot or a crash unmounted): `e2fsck -p`
/// repairs what is safe to, and a disk it cannot is refused.
/// noinit_itable: the kernel does not zero the inode tables behind the
/// guest's back (they read as zeros already).
async fn mount_disk(dir: &Path, check: bool) -> Result<()> {
    let at = dir.join("disk");
    if mounted(&at) {
        return Ok(());
    }
    std::fs::create_dir_all(&at).map_err(|e| Error::internal(format!("creating {}", at.display()), e))?;
    if check {
        // Exit 1: errors corrected. 4 and up: left uncorrected.
        let out = tokio::process::Command::new("e2fsck")
            .arg("-p")
            .arg(dir.join(DISK_IMAGE))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot run e2fsck: {e}; {DISK_TOOLS}")))?;
        if out.status.code().is_none_or(|c| c >= 4) {
            return Err(Error::Conflict(format!(
                "the sandbox's disk needs repairs e2fsck -p would not make ({}): {}; `rm` it, or repair {} by hand",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                dir.join(DISK_IMAGE).display()
            )));
        }
    }
    spinup_host::run(
        tokio::process::Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,noatime,nosuid,nodev,noinit_itable"])
            .arg(dir.join(DISK_IMAGE))
            .arg(&at),
        spinup_host::Run::new(DISK_TOOLS),
    )
    .await?;
    Ok(())
}

/// Unmount `at` (lazily: a sandbox's last processes may still hold it)
/// when it is mounted, and fail unless it is gone after.
fn unmount(at: &Path) -> Result<()> {
    if mounted(at) {
        nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| Error::internal(format!("unmounting {}", at.display()), e))?;
    }
    if mounted(at) {
        return Err(Error::Internal(format!("{} is still mounted", at.display())));
    }
    Ok(())
}

fn mount_overlay(spec: &SandboxSpec, dir: &Path) -> Result<()> {
    for l in &spec.layers {
        let s = l.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "layer path {s} contains ',' or ':', which overlayfs cannot take"
            )));
        }
    }
    let (upper, work) = layer_dirs(dir);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        spinup_host::overlay_lowerdir(&spec.layers),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &dir.join("rootfs"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| Error::internal("mounting the sandbox's overlayfs rootfs (is the overlay module loaded?)", e))
}

impl OciEngine {
    pub fn new(
        root: PathBuf,
        agent: PathBuf,
        cgroup_parent: String,
        runtime: std::result::Result<Runtime, String>,
        global_args: Vec<String>,
        transport: Transport,
    ) -> Self {
        let _ = std::fs::create_dir_all(root.join("sandboxes"));
        let _ = std::fs::create_dir_all(root.join("state"));
        let disk_limits = std::env::var("SPINUP_DISK_LIMITS").as_deref() != Ok("off");
        if !disk_limits {
            tracing::warn!(root = %root.display(), "SPINUP_DISK_LIMITS=off: sandboxes here write to the data dir's disk without a limit");
        }
        OciEngine {
            root,
            agent,
            cgroup_parent,
            runtime,
            global_args,
            transport,
            listeners: Default::default(),
            networked: Mutex::new("--network=sandbox"),
            disk_limits,
        }
    }

    /// The sandbox's overlayfs upper dir (its writable layer), while its
    /// disk is mounted.
    pub fn upper(&self, id: &str) -> Option<PathBuf> {
        let dir = self.dir(id);
        if dir.join(DISK_IMAGE).exists() && !mounted(&dir.join("disk")) {
            tracing::warn!(sandbox = id, "the sandbox's disk is not mounted: no writable layer to read");
            return None;
        }
        Some(layer_dirs(&dir).0)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime.as_ref().map_err(|e| Error::Unavailable(e.clone()))
    }

    fn command(&self, rt: &Runtime) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&rt.path);
        cmd.arg("--root").arg(self.root.join("state")).args(&self.global_args);
        cmd
    }

    /// What a driver built on this engine can do: availability comes from
    /// the runtime probe; exec, PTY and files from the agent, which every
    /// engine-based driver runs; the rest is not implemented yet.
    pub fn capabilities(&self, driver: &str, isolation: IsolationClass, own_kernel: bool) -> Capabilities {
        let (available, reason, backend) = match &self.runtime {
            Ok(r) => (true, None, Some(r.describe())),
            Err(e) => (false, Some(e.clone()), None),
        };
        Capabilities {
            available,
            reason,
            backend,
            // The runtime's pause/resume (cgroup freezer; runsc stops the
            // Sentry's tasks), exercised by the conformance suite.
            pause_resume: true,
            // The daemon's netns + veth is joined through the spec (runsc: its
            // own netstack on it); ports go through the agent.
            network_policy: true,
            port_exposure: true,
            // The writable layer is an overlayfs upper dir on the host.
            fs_snapshot: true,
            fork: true,
            own_kernel,
            per_process_limits: true,
            // The disk image outlives the runtime's processes.
            restart: true,
            disk_limit: self.disk_limits,
            ..Capabilities::base(driver, isolation)
        }
    }

    /// The sandbox's cgroup limits that were hit, in words (v2 or v1 layout).
    fn limits_hit(&self, id: &str) -> Vec<String> {
        let rel = format!("{}/{id}", self.cgroup_parent.trim_matches('/'));
        let count = |files: &[String], key: &str| -> u64 {
            files
                .iter()
                .filter_map(|f| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok())
                .flat_map(|s| {
                    s.lines().filter_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok()).collect::<Vec<_>>()
                })
                .max()
                .unwrap_or(0)
        };
        let mut hit = vec![];
        let pids = count(&[format!("{rel}/pids.events"), format!("pids/{rel}/pids.events")], "max ");
        if pids > 0 {
            hit.push(format!("pids limit reached {pids} times"));
        }
        let oom = count(&[format!("{rel}/memory.events"), format!("memory/{rel}/memory.oom_control")], "oom_kill ");
        if oom > 0 {
            hit.push(format!("memory limit: {oom} processes OOM-killed"));
        }
        hit
    }

    /// Start a sandbox whose PID 1 is `agent_args`; `tweak` may adjust the
    /// generated OCI spec for this runtime.
    pub async fn create(
        &self,
        spec: &SandboxSpec,
        agent_args: &[&str],
        tweak: impl FnOnce(&mut serde_json::Value),
    ) -> Result<serde_json::Value> {
        self.runtime()?;
        let dir = self.dir(&spec.id);
        for sub in ["rootfs", "run"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::internal(format!("creating {}", dir.join(sub).display()), e))?;
        }
        let disk = if self.disk_limits {
            make_disk(&dir, spec.resources.disk_mib).await
        } else {
            let (upper, work) = layer_dirs(&dir);
            [upper, work]
                .iter()
                .try_for_each(std::fs::create_dir_all)
                .map_err(|e| Error::internal("creating the writable layer", e))
        };
        let made = match disk {
            Ok(()) => self.launch(spec, agent_args, tweak).await,
            Err(e) => Err(e),
        };
        if made.is_err() {
            let _ = self.destroy(&spec.id).await;
        }
        made
    }

    /// Boot a stopped sandbox again on the disk it kept: what is left of
    /// its last run (runtime state, cgroups) goes, its disk and rootfs are
    /// mounted again where a reboot unmounted them, and a fresh init starts
    /// on them. A failed start leaves the disk as it was.
    pub async fn start(
        &self,
        spec: &SandboxSpec,
        agent_args: &[&str],
        tweak: impl FnOnce(&mut serde_json::Value),
    ) -> Result<serde_json::Value> {
        let dir = self.dir(&spec.id);
        let (upper, _) = layer_dirs(&dir);
        if !dir.join(DISK_IMAGE).exists() && !upper.exists() {
            return Err(Error::Conflict(format!("sandbox {} has no disk left on this host to start from", spec.id)));
        }
        self.delete_runtime_state(&spec.id).await?;
        let started = self.launch(spec, agent_args, tweak).await;
        if started.is_err() {
            let _ = self.delete_runtime_state(&spec.id).await;
        }
        started
    }

    /// Run the runtime on the sandbox's disk (mounted here unless it is).
    async fn launch(
        &self,
        spec: &SandboxSpec,
        agent_args: &[&str],
        tweak: impl FnOnce(&mut serde_json::Value),
    ) -> Result<serde_json::Value> {
        let rt = self.runtime()?.clone();
        let dir = self.dir(&spec.id);
        // Placed afresh each boot: a restarted daemon may carry a newer agent.
        let agent = dir.join("run/spinup-agent");
        let _ = std::fs::remove_file(&agent);
        std::fs::hard_link(&self.agent, &agent)
            .or_else(|_| std::fs::copy(&self.agent, &agent).map(|_| ()))
            .map_err(|e| Error::internal("placing the agent binary", e))?;
        if dir.join(DISK_IMAGE).exists() {
            mount_disk(&dir, true).await?;
        }
        if !mounted(&dir.join("rootfs")) {
            mount_overlay(spec, &dir)?;
        }
        if let Some(net) = &spec.net {
            std::fs::write(dir.join("resolv.conf"), net.resolv_conf())
                .map_err(|e| Error::internal("writing resolv.conf", e))?;
        }

        let mut config: serde_json::Value = serde_json::from_str(&spec::build(spec, &dir, &self.cgroup_parent)?)
            .map_err(|e| Error::internal("OCI spec", e))?;
        config["process"]["args"] = serde_json::json!(agent_args);
        tweak(&mut config);
        std::fs::write(dir.join("config.json"), config.to_string())
            .map_err(|e| Error::internal("writing config.json", e))?;

        let sock = dir.join(match self.transport {
            Transport::InheritListener => "run/agent.sock",
            Transport::AgentDials => "run/host.sock",
        });
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| Error::internal("binding the agent socket", e))?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console_log(&dir))
            .map_err(|e| Error::internal("opening console.log", e))?;
        let pid_file = dir.join("init.pid");
        let lfd = listener.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&rt.path);
        // A runtime with its own network stack (runsc) uses it on the
        // daemon's namespace when there is one, and none otherwise.
        let networked = *self.networked.lock().unwrap();
        cmd.arg("--root").arg(self.root.join("state")).args(self.global_args.iter().map(|a| {
            if spec.net.is_some() && a == "--network=none" {
                networked
            } else {
                a.as_str()
            }
        }));
        cmd.args(["run", "--detach"]);
        if self.transport == Transport::InheritListener {
            cmd.args(["--preserve-fds", "1"]);
            // SAFETY: dup2 is async-signal-safe; it places the listener at
            // the fd the agent expects (and clears CLOEXEC on the copy).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(lfd, spinup_protocol::LISTEN_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("--bundle")
            .arg(&dir)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&spec.id)
            .stdin(Stdio::null())
            // The sandbox inherits these: they must not be pipes anyone waits on.
            .stdout(console.try_clone().map_err(|e| Error::internal("console.log", e))?)
            .stderr(console);
        let status =
            cmd.status().await.map_err(|e| Error::Unavailable(format!("cannot run {}: {e}", rt.path.display())))?;
        match self.transport {
            Transport::InheritListener => drop(listener),
            Transport::AgentDials => {
                listener.set_nonblocking(true).map_err(|e| Error::internal("agent listener", e))?;
                let l =
                    tokio::net::UnixListener::from_std(listener).map_err(|e| Error::internal("agent listener", e))?;
                self.listeners.lock().unwrap().insert(spec.id.clone(), Arc::new(l));
            }
        }
        if !status.success() {
            let msg = self.console_tail(&spec.id).unwrap_or_default();
            return Err(Error::Internal(format!("{} run failed: {msg}", rt.name)));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Internal(format!("{} did not write a pid file", rt.name)))?;
        let starttime = proc_starttime(pid).unwrap_or(0);
        Ok(serde_json::to_value(State { pid, starttime, runtime: rt.name.clone() }).expect("state serializes"))
    }

    pub async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus {
        let Ok(st) = serde_json::from_value::<State>(state.clone()) else { return DriverStatus::Missing };
        match proc_starttime(st.pid) {
            Some(t) if t == st.starttime => DriverStatus::Running,
            _ => {
                let tail = self.console_tail(id).map(|t| format!("; last output: {t}")).unwrap_or_default();
                let hit = self.limits_hit(id);
                let why = if hit.is_empty() { "killed from outside or crashed".to_string() } else { hit.join(", ") };
                DriverStatus::Exited(format!("sandbox init (pid {}) is gone: {why}{tail}", st.pid))
            }
        }
    }

    /// `pause` or `resume` through the runtime.
    pub async fn freeze(&self, id: &str, verb: &str) -> Result<()> {
        let rt = self.runtime()?;
        let out = self
            .command(rt)
            .args([verb, id])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::Internal(format!("{}: {e}", rt.path.display())))?;
        if !out.status.success() {
            // Already where it was asked to go: a daemon killed between the
            // runtime's answer and the store's update leaves the store a
            // step behind (paused in the store, running here), and the
            // retry must not fail on it.
            let want = if verb == "pause" { "paused" } else { "running" };
            if self.runtime_status(rt, id).await.as_deref() == Some(want) {
                return Ok(());
            }
            return Err(Error::Internal(format!("{verb} {id}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    }

    /// The runtime's `status` of container `id` (`running`, `paused`, ...).
    async fn runtime_status(&self, rt: &Runtime, id: &str) -> Option<String> {
        let out = self.command(rt).args(["state", id]).stdin(Stdio::null()).output().await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    /// Ids with a sandbox dir, runtime state or a cgroup under our parent,
    /// and probe containers of a daemon killed mid-probe.
    pub fn traces(&self) -> Vec<String> {
        let mut ids = std::collections::BTreeSet::new();
        let names = |dir: PathBuf| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect::<Vec<_>>()
        };
        // A probe container of another (so: dead) daemon of this data dir.
        let own_probe = format!("spinup-probe-{}", std::process::id());
        let stale_probe = |n: &str| n.starts_with("spinup-probe-") && n != own_probe;
        for n in names(self.root.join("sandboxes")) {
            ids.extend(sandbox_id_prefix(&n));
        }
        for n in names(self.root.join("state")) {
            // runc keeps a dir per container; runsc `<id>_sandbox:<id>.state` files.
            if stale_probe(&n) {
                ids.insert(n);
            } else {
                ids.extend(sandbox_id_prefix(&n));
            }
        }
        // An empty cgroup left of a sandbox (one with processes belongs to
        // runtime state, listed above, or to another daemon's sandbox).
        for dir in self.cgroup_dirs() {
            for n in names(dir.clone()) {
                let procs = std::fs::read_to_string(dir.join(&n).join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    ids.extend(sandbox_id_prefix(&n).filter(|i| *i == n));
                    if stale_probe(&n) {
                        ids.insert(n);
                    }
                }
            }
        }
        ids.into_iter().collect()
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.cgroup_parent)
    }

    /// Kill every process of sandbox `id` and delete its runtime state and
    /// cgroups; its disk and dirs stay. Idempotent.
    async fn delete_runtime_state(&self, id: &str) -> Result<()> {
        self.listeners.lock().unwrap().remove(id);
        if let Ok(rt) = self.runtime() {
            // `delete --force` kills every process and removes the cgroup.
            let out = self
                .command(rt)
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| Error::Internal(format!("{}: {e}", rt.path.display())))?;
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !err.contains("does not exist") && !err.contains("not exist") {
                return Err(Error::Internal(format!("deleting sandbox {id}: {}", err.trim())));
            }
        }
        // What the runtime did not remove (its state was gone already):
        // empty cgroups go; one with processes left is an error.
        remove_cgroups(&self.cgroup_parent, id).await?;
        Ok(())
    }

    /// Idempotent: kill, delete runtime state and cgroup, unmount, remove.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        self.delete_runtime_state(id).await?;
        let rootfs = dir.join("rootfs");
        let disk = dir.join("disk");
        unmount(&rootfs)?;
        unmount(&disk)?;
        if dir.exists() {
            // The mount points must be empty now; never recurse through a mount.
            for at in [&rootfs, &disk] {
                if at.exists() {
                    std::fs::remove_dir(at).map_err(|e| Error::internal(format!("removing {}", at.display()), e))?;
                }
            }
            std::fs::remove_dir_all(&dir).map_err(|e| Error::internal(format!("removing {}", dir.display()), e))?;
        }
        Ok(())
    }

    pub async fn connect_agent(&self, id: &str) -> Result<AgentStream> {
        match self.transport {
            Transport::InheritListener => {
                let p = self.dir(id).join("run/agent.sock");
                let s = tokio::net::UnixStream::connect(&p)
                    .await
                    .map_err(|e| Error::Agent(format!("connecting to {}: {e}", p.display())))?;
                Ok(Box::new(s))
            }
            Transport::AgentDials => {
                let existing = self.listeners.lock().unwrap().get(id).cloned();
                let l = match existing {
                    Some(l) => l,
                    None => {
                        // After a daemon restart: listen again where the
                        // agent keeps dialling.
                        let p = self.dir(id).join("run/host.sock");
                        let _ = std::fs::remove_file(&p);
                        let l = Arc::new(
                            tokio::net::UnixListener::bind(&p)
                                .map_err(|e| Error::internal("re-binding the agent socket", e))?,
                        );
                        self.listeners.lock().unwrap().insert(id.to_string(), l.clone());
                        l
                    }
                };
                match tokio::time::timeout(DIAL_TIMEOUT, l.accept()).await {
                    Ok(Ok((s, _))) => Ok(Box::new(s)),
                    Ok(Err(e)) => Err(Error::Agent(format!("accepting the agent's connection: {e}"))),
                    Err(_) => Err(Error::Agent(format!("the agent did not dial in within {DIAL_TIMEOUT:?}"))),
                }
            }
        }
    }

    pub fn console_tail(&self, id: &str) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        // The last KiB only: the log may be as big as the disk.
        let mut f = std::fs::File::open(console_log(&self.dir(id))).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(1024))).ok()?;
        let mut s = vec![];
        f.take(1024).read_to_end(&mut s).ok()?;
        let tail = String::from_utf8_lossy(&s).trim().to_string();
        (!tail.is_empty()).then_some(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_give_their_sandbox_id() {
        assert_eq!(sandbox_id_prefix("0123456789ab").as_deref(), Some("0123456789ab"));
        assert_eq!(sandbox_id_prefix("0123456789ab_sandbox:0123456789ab.state").as_deref(), Some("0123456789ab"));
        assert_eq!(sandbox_id_prefix("0123456789abc"), None);
        assert_eq!(sandbox_id_prefix("spinup-probe-12"), None);
        assert_eq!(sandbox_id_prefix("0123"), None);
        assert_eq!(sandbox_id_prefix("ééééééé"), None);
    }
}
