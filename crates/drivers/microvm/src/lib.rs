//! The `microvm` driver: every sandbox is a guest with its own kernel under
//! QEMU's `microvm` machine. KVM where a probe guest proves it works,
//! otherwise TCG (software emulation), said so in the capabilities.
//!
//! Data: `<root>/kernel/<release>/{vmlinuz,modules}` (Debian's cloud
//! kernel, fetched once), `<root>/initramfs-*.cpio` (agent as /init),
//! `<root>/images/*.ext4` (one per environment), and per sandbox
//! `<root>/sandboxes/<id>/{disk.qcow2,console.log,run/{agent.sock,qmp.sock,qemu.pid,qemu.log}}`.
//! Each VMM runs jailed (see [`jail`]): QEMU's seccomp sandbox and a
//! cgroup `<cgroup-parent>/<id>` of its own.

pub mod cpio;
pub mod image;
pub mod jail;
pub mod kernel;
pub mod qmp;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spinup_driver_container::proc_starttime;
use spinup_model::{AgentStream, Capabilities, Driver, DriverStatus, Error, IsolationClass, Result, SandboxSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmm::{Accel, Qemu, VmConfig, Vmm};

#[derive(Debug)]
pub struct Config {
    /// Directory the driver owns (`<data-dir>/microvm`).
    pub root: PathBuf,
    /// The static agent binary (becomes the initramfs's /init).
    pub agent: PathBuf,
    /// `auto` (default), `kvm` or `tcg`.
    pub accel: Option<String>,
    /// Bring your own kernel (and initramfs, whose /init must be the agent).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Where the downloaded kernel lives (default `<root>/kernel`).
    pub kernel_dir: Option<PathBuf>,
    /// The QEMU binary (default `qemu-system-x86_64`).
    pub qemu: Option<String>,
    /// The cgroup each VMM's own cgroup is made under (`<parent>/<id>`).
    pub cgroup_parent: String,
}

struct Ready {
    vmm: Box<dyn Vmm>,
    accel: Accel,
    /// Why this accelerator (shown in `spinup drivers` and the logs).
    accel_note: String,
    kernel: PathBuf,
    initrd: PathBuf,
}

impl std::fmt::Debug for MicrovmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrovmDriver")
            .field("root", &self.root)
            .field("accel", &self.ready.as_ref().map(|r| &r.accel_note))
            .finish_non_exhaustive()
    }
}

pub struct MicrovmDriver {
    root: PathBuf,
    cgroup_parent: String,
    ready: std::result::Result<Ready, String>,
}

/// How long a KVM probe guest may take before KVM is judged unusable.
const KVM_PROBE_BOUND: Duration = Duration::from_secs(10);
/// How long a TCG probe guest may take (software emulation, busy host).
const TCG_PROBE_BOUND: Duration = Duration::from_secs(90);

/// Guest RAM on top of the sandbox's memory limit, for the guest kernel,
/// its page cache floor and the agent.
pub const GUEST_KERNEL_MIB: u64 = 96;

#[derive(Serialize, Deserialize)]
struct State {
    pid: i32,
    starttime: u64,
    accel: Accel,
}

/// Save a stopped VM's state to `path` through QMP and wait for it.
async fn migrate_to(qmp: &std::path::Path, path: &std::path::Path) -> Result<()> {
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
    }
    .map_err(|e| Error::Internal(format!("saving the VM's memory to {}: {e}", path.display())))?;
    qmp::migrate_to_file(qmp, &file).await?;
    // QEMU has its own copy of the fd now.
    drop(file);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let st = qmp::execute(qmp, "query-migrate").await?;
        match st["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(Error::Internal(format!("saving the VM's memory failed: {}", st["error-desc"])))
            }
            _ if std::time::Instant::now() > deadline => {
                let _ = qmp::execute(qmp, "migrate_cancel").await;
                return Err(Error::Internal("saving the VM's memory took over 300 s".into()));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl MicrovmDriver {
    /// Stop this sandbox's VMM if it runs (SIGTERM, SIGKILL after 3 s) and
    /// remove its cgroup. False if it survived that.
    async fn stop_vmm(&self, id: &str) -> bool {
        let gone = self.kill_vmm(id).await;
        if gone {
            self.remove_cgroup(id).await;
        }
        gone
    }

    async fn kill_vmm(&self, id: &str) -> bool {
        let dir = self.dir(id);
        let pidfile = dir.join("run/qemu.pid");
        let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
            return true;
        };
        // Only our VMM: its command line names this sandbox's dir.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
        let (true, Some(start)) = (ours, proc_starttime(pid)) else { return true };
        // The same process throughout (pid + start time), never a later one
        // that reused the pid.
        let alive = || proc_starttime(pid) == Some(start);
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if alive() {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while alive() {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        true
    }

    /// The VMM's cgroup, once no VMM is in it (an error is logged: the
    /// suite's host check, and a later stop, find what is left).
    async fn remove_cgroup(&self, id: &str) {
        if let Err(e) = spinup_driver_container::remove_cgroups(&self.cgroup_parent, id).await {
            tracing::warn!(sandbox = id, "{e}");
        }
    }

    /// After `-incoming`: wait until the saved state has loaded, then
    /// continue it (it was saved stopped, so it arrives stopped).
    async fn continue_incoming(&self, id: &str) -> Result<()> {
        let qmp = self.dir(id).join("run/qmp.sock");
        let deadline = std::time::Instant::now() + self.boot_bound();
        loop {
            match qmp::execute(&qmp, "query-migrate").await {
                Ok(st) if st["status"] == "completed" => break,
                Ok(st) if st["status"] == "failed" => {
                    return Err(Error::Internal(format!("loading the saved VM failed: {}", st["error-desc"])))
                }
                _ if std::time::Instant::now() > deadline => {
                    return Err(Error::Internal("loading the saved VM did not finish in time".into()))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        qmp::execute(&qmp, "cont").await.map(|_| ())
    }

    /// Start a VM on an overlay of `base` (an environment image or a saved
    /// disk), booting or, with `incoming`, continuing from saved memory.
    async fn launch(
        &self,
        spec: &SandboxSpec,
        base: &std::path::Path,
        incoming: Option<PathBuf>,
    ) -> Result<serde_json::Value> {
        self.launch_on(spec, Some(base), incoming).await
    }

    /// `base`: make the sandbox's overlay on it; `None`: reuse the overlay
    /// there is (a suspended sandbox waking up).
    async fn launch_on(
        &self,
        spec: &SandboxSpec,
        base: Option<&std::path::Path>,
        incoming: Option<PathBuf>,
    ) -> Result<serde_json::Value> {
        let r = self.ready()?;
        let dir = self.dir(&spec.id);
        let run = dir.join("run");
        std::fs::create_dir_all(&run).map_err(|e| Error::Internal(format!("sandbox dir: {e}")))?;
        let disk = dir.join("disk.qcow2");
        if let Some(base) = base {
            image::overlay(base, &disk, spec.resources.disk_mib).await?;
            // What a suspended sandbox is started again with.
            let saved = serde_json::to_vec(&(&spec.hostname, &spec.resources, &spec.net)).unwrap_or_default();
            std::fs::write(dir.join("spec.json"), saved).map_err(|e| Error::Internal(format!("spec.json: {e}")))?;
        }
        let res = &spec.resources;
        let vcpus = (res.vcpus.ceil() as u32).max(1);
        let quota = ((res.vcpus * 100_000.0) as u64).max(1000);
        let ids = jail::vmm_ids(&spec.id);
        let mut vm = VmConfig {
            kernel: r.kernel.clone(),
            initrd: r.initrd.clone(),
            cmdline: format!(
                "spinup.hostname={} spinup.pids={} spinup.cpu={quota} spinup.mem={}{}",
                spec.hostname,
                res.pids,
                res.memory_mib << 20,
                spec.net
                    .as_ref()
                    .map(|n| format!(" spinup.net={}/{},{},{}", n.address, n.prefix, n.gateway, n.dns))
                    .unwrap_or_default()
            ),
            disk: Some(disk),
            vcpus,
            // The sandbox's memory limit is a cgroup in the guest, as in a
            // container; the guest kernel and agent get room of their own.
            memory_mib: res.memory_mib + GUEST_KERNEL_MIB,
            agent_socket: Some(run.join("agent.sock")),
            qmp_socket: Some(run.join("qmp.sock")),
            console: dir.join("console.log"),
            pidfile: run.join("qemu.pid"),
            incoming,
            nic: spec.net.as_ref().map(|n| (n.netns.clone(), n.mac.clone())),
            cgroup: vec![],
            user: Some(ids),
            root: None,
        };
        // What QEMU writes as its own uid: the run dir (sockets, pid file),
        // the disk and the console, made first so that it is the VMM's. The
        // sandbox dir stays root's: the VMM cannot replace what is in it.
        let io = |e: std::io::Error| Error::Internal(format!("sandbox dir: {e}"));
        std::fs::OpenOptions::new().create(true).append(true).open(&vm.console).map_err(io)?;
        let disk = vm.disk.as_deref().unwrap_or(&run);
        let layers = image::layers(&dir);
        let mut mine: Vec<&Path> = vec![&run, disk, &vm.console];
        mine.extend(layers.iter().map(PathBuf::as_path));
        jail::own(&mine, ids)?;
        // Its own root: the sandbox's dir, the kernel, the initramfs and the
        // environment images (a disk's bottom layer), nothing more.
        let jail_dir = dir.join("root");
        std::fs::create_dir_all(&jail_dir).map_err(io)?;
        vm.root = Some(jail::Root {
            dir: jail_dir,
            read_only: vec![r.kernel.clone(), r.initrd.clone(), self.root.join("images")],
            writable: vec![dir.clone()],
            devices: if r.accel == Accel::Kvm { vec!["/dev/kvm".into()] } else { vec![] },
        });
        // The VMM's own bound, the guest's RAM plus QEMU's overhead: made
        // last, so that nothing before the boot can fail and leave it.
        vm.cgroup = jail::make_cgroup(&self.cgroup_parent, &spec.id, res, res.memory_mib + GUEST_KERNEL_MIB)?;
        let pid = match vmm::boot(&*r.vmm, &vm, r.accel, self.boot_bound()).await {
            Ok(pid) => pid,
            Err(e) => {
                self.remove_cgroup(&spec.id).await;
                return Err(e);
            }
        };
        let starttime = proc_starttime(pid).ok_or_else(|| {
            Error::Internal(format!(
                "the VMM exited at once{}",
                self.console_tail(&spec.id).map(|t| format!(": {t}")).unwrap_or_default()
            ))
        })?;
        Ok(serde_json::to_value(State { pid, starttime, accel: r.accel }).unwrap_or_default())
    }
    pub async fn new(cfg: Config) -> Self {
        let root = cfg.root.clone();
        let cgroup_parent = cfg.cgroup_parent.clone();
        // Image builds a killed daemon left half done: merge mounts, temp images.
        image::clean_partial(&root.join("images"));
        let ready = Self::prepare(cfg).await;
        match &ready {
            Ok(r) => {
                tracing::info!(vmm = r.vmm.version(), accel = r.accel.as_str(), note = %r.accel_note, "microvm driver ready")
            }
            Err(e) => tracing::warn!("microvm driver unavailable: {e}"),
        }
        MicrovmDriver { root, cgroup_parent, ready }
    }

    async fn prepare(cfg: Config) -> std::result::Result<Ready, String> {
        let _ = std::fs::create_dir_all(cfg.root.join("sandboxes"));
        let qemu = Qemu::find(cfg.qemu.as_deref()).await.map_err(|e| e.to_string())?;
        for tool in ["qemu-img", "mkfs.ext4"] {
            spinup_host::which(tool).ok_or_else(|| {
                format!("{tool} not found; install qemu-utils and e2fsprogs (scripts/install-deps.sh)")
            })?;
        }
        let (kernel, initrd) = match (cfg.kernel, cfg.initrd) {
            (Some(k), Some(i)) => (k, i),
            (k, None) => {
                let kernel = match k {
                    Some(path) => kernel::Kernel { vmlinuz: path, modules: None, release: "custom".into() },
                    None => kernel::ensure(&cfg.kernel_dir.clone().unwrap_or_else(|| cfg.root.join("kernel")))
                        .await
                        .map_err(|e| format!("guest kernel: {e}"))?,
                };
                let initrd =
                    kernel::initramfs(&cfg.root, &kernel, &cfg.agent).map_err(|e| format!("initramfs: {e}"))?;
                (kernel.vmlinuz, initrd)
            }
            (None, Some(_)) => return Err("--initrd needs --kernel too".into()),
        };
        let probes = cfg.kernel_dir.clone().unwrap_or_else(|| cfg.root.join("kernel"));
        let (accel, accel_note) =
            choose_accel(&qemu, cfg.accel.as_deref(), &kernel, &initrd, &cfg.root, &probes).await?;
        Ok(Ready { vmm: Box::new(qemu), accel, accel_note, kernel, initrd })
    }

    fn ready(&self) -> Result<&Ready> {
        self.ready.as_ref().map_err(|e| Error::Unavailable(format!("microvm driver: {e}")))
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    /// How long a guest may take to boot to its agent.
    fn boot_bound(&self) -> Duration {
        match self.ready.as_ref().map(|r| r.accel) {
            Ok(Accel::Kvm) => Duration::from_secs(15),
            _ => Duration::from_secs(90),
        }
    }
}

/// How the driver runs a host tool: one that cannot be started is
/// unavailable, with what installs it.
pub(crate) const TOOL: spinup_host::Run<'static> = spinup_host::Run::new("scripts/install-deps.sh installs it");

/// `auto` uses KVM only once a probe guest has booted under it within a
/// bound; otherwise TCG, and the note says why. Results are cached per host
/// boot, QEMU version and kernel, so a restart does not pay for the probe.
async fn choose_accel(
    qemu: &Qemu,
    wanted: Option<&str>,
    kernel: &Path,
    initrd: &Path,
    root: &Path,
    cache_dir: &Path,
) -> std::result::Result<(Accel, String), String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            boot_id.trim().as_bytes(),
            qemu.version.as_bytes(),
            kernel.as_os_str().as_encoded_bytes(),
            initrd.as_os_str().as_encoded_bytes(),
        ] {
            h.update(part);
            h.update([0]);
        }
        hex::encode(h.finalize())[..16].to_string()
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let probe = |accel: Accel, bound: Duration| {
        let cache = cache_dir.join(format!("probe-{key}-{}.json", accel.as_str()));
        let dir = root.join(format!("probe-{}", accel.as_str()));
        async move {
            if let Some(r) = std::fs::read_to_string(&cache)
                .ok()
                .and_then(|s| serde_json::from_str::<std::result::Result<u64, String>>(&s).ok())
            {
                return r;
            }
            tracing::info!(accel = accel.as_str(), "booting a probe guest");
            let r = vmm::probe(qemu, accel, kernel, initrd, &dir, bound).await.map(|d| d.as_millis() as u64);
            // A probe that ran out of time may only have met a busy host:
            // try again next start. Definite answers are kept.
            let timed_out = matches!(&r, Err(e) if e.starts_with(vmm::PROBE_TIMEOUT));
            let tmp = cache.with_extension(format!("{}.tmp", std::process::id()));
            if !timed_out && std::fs::write(&tmp, serde_json::to_string(&r).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(&tmp, &cache);
            }
            r
        }
    };
    match wanted.unwrap_or("auto") {
        "kvm" => Ok((Accel::Kvm, "KVM (forced by configuration)".into())),
        "tcg" => {
            probe(Accel::Tcg, TCG_PROBE_BOUND).await.map_err(|e| format!("a guest does not boot under TCG: {e}"))?;
            Ok((Accel::Tcg, "TCG (forced by configuration)".into()))
        }
        "auto" => {
            let kvm_why = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
                Err(e) => format!("/dev/kvm: {e}"),
                Ok(_) => match probe(Accel::Kvm, KVM_PROBE_BOUND).await {
                    Ok(ms) => return Ok((Accel::Kvm, format!("KVM (probe guest booted in {ms} ms)"))),
                    Err(e) => {
                        tracing::warn!("microvm: the KVM probe guest failed: {e}");
                        // The first line says it; the log has the rest.
                        let first = e.lines().next().unwrap_or("").trim_start_matches("qemu-system-x86_64: ");
                        let first: String = first.chars().take(80).collect();
                        format!("KVM unusable: {first}")
                    }
                },
            };
            let ms = probe(Accel::Tcg, TCG_PROBE_BOUND).await.map_err(|e| format!("{kvm_why}; TCG: {e}"))?;
            tracing::warn!("microvm: {kvm_why}; falling back to TCG (software emulation, slow)");
            Ok((Accel::Tcg, format!("TCG ({kvm_why}; TCG probe guest up in {ms} ms)")))
        }
        other => Err(format!("unknown accelerator '{other}' (auto, kvm or tcg)")),
    }
}

#[async_trait]
impl Driver for MicrovmDriver {
    fn nic_is_tap(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "microvm"
    }

    fn capabilities(&self) -> Capabilities {
        let (available, reason, backend) = match &self.ready {
            Ok(r) => (true, None, Some(format!("{} microvm, {}", r.vmm.version(), r.accel_note))),
            Err(e) => (false, Some(e.clone()), None),
        };
        Capabilities {
            available,
            reason,
            backend,
            // QEMU stop/cont in place (QMP); the guest's RAM stays.
            pause_resume: true,
            // A tap in the daemon's netns; ports go through the agent.
            network_policy: true,
            port_exposure: true,
            // Changes come from the agent (the host never mounts a guest's
            // disk); restore builds an image from the layers.
            fs_snapshot: true,
            fork: true,
            // QEMU's migration stream to a file plus a copy of the stopped
            // disk overlay; restored with -incoming.
            memory_snapshot: true,
            own_kernel: true,
            // The guest kernel enforces pids (a cgroup in the guest) and
            // memory (its RAM): the OOM killer picks one process.
            per_process_limits: true,
            // The qcow2 overlay outlives the VMM.
            restart: true,
            // The guest's disk is the size of disk_mib.
            disk_limit: true,
            ..Capabilities::base("microvm", IsolationClass::HardwareVirtualization)
        }
    }

    fn ready_timeout(&self) -> Duration {
        self.boot_bound()
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        let base = image::environment_image(&self.root.join("images"), &spec.layers).await?;
        self.launch(spec, &base, None).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        let dir = self.dir(&spec.id);
        if !dir.join("disk.qcow2").exists() {
            return Err(Error::Conflict(format!("sandbox {} has no disk left on this host to start from", spec.id)));
        }
        // Never two VMMs on one disk; a dead one's sockets and pid file go.
        if !self.stop_vmm(&spec.id).await {
            return Err(Error::Internal(format!("the old VMM of {} survived SIGKILL for 10 s", spec.id)));
        }
        for f in ["agent.sock", "qmp.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(dir.join("run").join(f));
        }
        self.launch_on(spec, None, None).await
    }

    async fn save_memory(&self, id: &str, dir: &std::path::Path) -> Result<()> {
        let sdir = self.dir(id);
        let qmp = sdir.join("run/qmp.sock");
        qmp::execute(&qmp, "stop").await?;
        let saved = async {
            let io = |e: std::io::Error| Error::Internal(format!("saving the VM to {}: {e}", dir.display()));
            std::fs::create_dir_all(dir).map_err(io)?;
            // Stopped, QEMU has flushed the disk: a copy of the overlay is
            // the disk at this instant. It goes in as the next layer, above
            // copies of the layers it is backed by (see `image::layers`).
            let layers = image::layers(&sdir);
            for l in &layers {
                std::fs::copy(l, dir.join(l.file_name().unwrap_or_default())).map_err(io)?;
            }
            std::fs::copy(sdir.join("disk.qcow2"), dir.join(image::layer_name(layers.len()))).map_err(io)?;
            migrate_to(&qmp, &dir.join("memory")).await?;
            Ok::<(), Error>(())
        }
        .await;
        // Always running again, whatever happened.
        let cont = qmp::execute(&qmp, "cont").await;
        saved?;
        cont.map(|_| ())
    }

    async fn create_from_memory(&self, spec: &SandboxSpec, dir: &std::path::Path) -> Result<serde_json::Value> {
        // Copies of the saved layers in the sandbox's own dir, for its VMM
        // alone to read (the snapshot stays as it is, root's, for every
        // sandbox restored from it); a new overlay on the top one; and the
        // saved memory as the start.
        let sdir = self.dir(&spec.id);
        let io = |e: std::io::Error| Error::Internal(format!("restoring from {}: {e}", dir.display()));
        std::fs::create_dir_all(&sdir).map_err(io)?;
        let layers = image::layers(dir);
        if layers.is_empty() {
            return Err(Error::Internal(format!("the snapshot {} holds no disk", dir.display())));
        }
        // (By index: a snapshot from before layers were named holds one,
        // `disk.qcow2`, backed by the environment's image like a layer 0.)
        for (n, l) in layers.iter().enumerate() {
            std::fs::copy(l, sdir.join(image::layer_name(n))).map_err(io)?;
        }
        let top = sdir.join(image::layer_name(layers.len() - 1));
        let state = self.launch(spec, &top, Some(dir.join("memory"))).await?;
        self.continue_incoming(&spec.id).await?;
        Ok(state)
    }

    async fn suspend(&self, id: &str) -> Result<()> {
        let sdir = self.dir(id);
        let qmp = sdir.join("run/qmp.sock");
        let saved = sdir.join("suspend");
        qmp::execute(&qmp, "stop").await?;
        // The disk stays where it is (the overlay is not touched while the
        // VM is down); only the memory goes to a file.
        let res = async {
            std::fs::create_dir_all(&saved).map_err(|e| Error::Internal(format!("suspend dir: {e}")))?;
            migrate_to(&qmp, &saved.join("memory.part")).await?;
            // The spec to start it again with (the id's resources).
            std::fs::rename(saved.join("memory.part"), saved.join("memory"))
                .map_err(|e| Error::Internal(format!("suspend: {e}")))
        }
        .await;
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&saved);
            let _ = qmp::execute(&qmp, "cont").await;
            return Err(e);
        }
        let _ = qmp::execute(&qmp, "quit").await;
        // Gone for sure before it counts as suspended (quit is asynchronous).
        self.stop_vmm(id).await;
        Ok(())
    }

    fn is_suspended(&self, id: &str) -> bool {
        self.dir(id).join("suspend/memory").is_file()
    }

    async fn wake(&self, id: &str) -> Result<serde_json::Value> {
        let sdir = self.dir(id);
        let spec: SandboxSpec = {
            let saved = std::fs::read_to_string(sdir.join("spec.json"))
                .map_err(|e| Error::Internal(format!("the suspended sandbox's spec: {e}")))?;
            let (hostname, resources, net): (String, spinup_model::Resources, Option<spinup_model::GuestNet>) =
                serde_json::from_str(&saved).map_err(|e| Error::Internal(format!("spec.json: {e}")))?;
            SandboxSpec { id: id.to_string(), hostname, resources, layers: vec![], net }
        };
        let state = self.launch_on(&spec, None, Some(sdir.join("suspend/memory"))).await?;
        if let Err(e) = self.continue_incoming(id).await {
            // Never two VMMs on one disk: this one goes, the saved state stays.
            self.stop_vmm(id).await;
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(sdir.join("suspend"));
        Ok(state)
    }

    async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus {
        if self.is_suspended(id) {
            // Its memory is on disk and no VMM runs: alive, paused.
            return DriverStatus::Running;
        }
        let Ok(st) = serde_json::from_value::<State>(state.clone()) else { return DriverStatus::Missing };
        match proc_starttime(st.pid) {
            Some(t) if t == st.starttime => DriverStatus::Running,
            _ => {
                let tail = self.console_tail(id).map(|t| format!("; last console lines: {t}")).unwrap_or_default();
                DriverStatus::Exited(format!(
                    "the VM (pid {}) is gone: the guest powered off or panicked, or the VMM was killed{tail}",
                    st.pid
                ))
            }
        }
    }

    fn traces(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| spinup_model::validate_id(n).is_ok())
            .collect()
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if !self.stop_vmm(id).await {
            return Err(Error::Internal(format!("the VMM of {id} survived SIGKILL for 10 s")));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Internal(format!("removing {}: {e}", dir.display()))),
        }
    }

    async fn connect_agent(&self, id: &str) -> Result<AgentStream> {
        let sock = self.dir(id).join("run/agent.sock");
        let mut s = tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(|e| Error::Agent(format!("connecting to the VM's serial port {}: {e}", sock.display())))?;
        // The handshake (see spinup_protocol::SERIAL_RESET): reset any
        // stale session, say hello with a fresh nonce, and wait for the
        // agent's answer; whatever comes before it is stale.
        let nonce = format!("{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
            );
            h.finish()
        });
        let hello = format!("{}{nonce}\n", spinup_protocol::SERIAL_HELLO);
        let ready = format!("{}{nonce}\n", spinup_protocol::SERIAL_READY).into_bytes();
        let io_err = |e: std::io::Error| Error::Agent(format!("the VM's serial port: {e}"));
        // Zeros longer than the largest frame first: a stale session that
        // stopped mid-frame reads them as that frame's payload, then RESET.
        s.write_all(&[0u8; 16 * 1024 + 64]).await.map_err(io_err)?;
        s.write_all(spinup_protocol::SERIAL_RESET).await.map_err(io_err)?;
        s.write_all(hello.as_bytes()).await.map_err(io_err)?;
        let deadline = tokio::time::Instant::now() + self.boot_bound();
        let mut seen: Vec<u8> = vec![];
        let mut chunk = [0u8; 4096];
        let mut last_hello = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Agent(format!("no answer from the VM's agent within {:?}", self.boot_bound())));
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(Error::Agent("the VM's serial port closed (VM gone?)".into())),
                Ok(Ok(n)) => {
                    seen.extend_from_slice(&chunk[..n]);
                    if let Some(at) = seen.windows(ready.len()).position(|w| w == ready) {
                        if at + ready.len() < seen.len() {
                            // The agent says nothing after READY until our preface.
                            return Err(Error::Agent("unexpected bytes after the agent's answer".into()));
                        }
                        break;
                    }
                    if seen.len() > 4096 {
                        seen.drain(..seen.len() - ready.len());
                    }
                }
                Ok(Err(e)) => return Err(io_err(e)),
                Err(_) => {}
            }
            // Booting, or the hello went to a stale session: say it again.
            if last_hello.elapsed() > Duration::from_secs(1) {
                s.write_all(hello.as_bytes()).await.map_err(io_err)?;
                last_hello = tokio::time::Instant::now();
            }
        }
        Ok(Box::new(s))
    }

    async fn pause(&self, id: &str) -> Result<()> {
        qmp::execute(&self.dir(id).join("run/qmp.sock"), "stop").await.map(|_| ())
    }

    async fn resume(&self, id: &str) -> Result<()> {
        qmp::execute(&self.dir(id).join("run/qmp.sock"), "cont").await.map(|_| ())
    }

    fn console_tail(&self, id: &str) -> Option<String> {
        // Only the end of the file, decoded lossily: the guest writes it.
        let text = {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(self.dir(id).join("console.log")).ok()?;
            let len = f.metadata().ok()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
            let mut buf = vec![];
            f.read_to_end(&mut buf).ok()?;
            String::from_utf8_lossy(&buf).into_owned()
        };
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(8)..].join(" | "))
    }
}
