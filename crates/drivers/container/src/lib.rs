//! The `container` driver: an OCI runtime bundle on an overlayfs rootfs,
//! run by crun where it works on this host, otherwise runc.
//!
//! Layout under the driver's root:
//!
//! ```text
//! state/                     the OCI runtime's --root (ours alone)
//! sandboxes/<id>/upper       writable layer
//! sandboxes/<id>/work        overlayfs work dir
//! sandboxes/<id>/rootfs      overlay mount point (the container's /)
//! sandboxes/<id>/config.json the OCI bundle
//! sandboxes/<id>/run/        bind-mounted read-only at /run/spinup:
//!     agent.sock             bound here by the host; the agent inherits the
//!                            listening fd, so the guest can never swap it
//!     spinup-agent           hard link of the agent binary
//! sandboxes/<id>/console.log the agent's stdout/stderr
//! ```

mod probe;
pub mod spec;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spinup_model::{AgentEndpoint, Capabilities, Driver, DriverStatus, Error, IsolationClass, Result, SandboxSpec};

pub use probe::Runtime;

pub struct Config {
    /// Directory the driver owns (`<data-dir>/container`).
    pub root: PathBuf,
    /// The static agent binary, on the same filesystem as `root`.
    pub agent: PathBuf,
    /// Force a runtime binary (`crun`, `runc`, or a path) instead of probing.
    pub runtime: Option<String>,
    /// Parent cgroup (relative to each hierarchy's root) for sandboxes.
    pub cgroup_parent: String,
}

pub struct ContainerDriver {
    root: PathBuf,
    agent: PathBuf,
    cgroup_parent: String,
    runtime: std::result::Result<Runtime, String>,
}

/// What the store keeps for one container between daemon restarts.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: i32,
    /// Start time of `pid` (clock ticks since boot), so a reused pid is
    /// never mistaken for our init.
    starttime: u64,
    runtime: String,
}

impl ContainerDriver {
    /// Probes the runtimes (by running a real container) once, up front.
    pub async fn new(cfg: Config) -> Self {
        let _ = std::fs::create_dir_all(cfg.root.join("sandboxes"));
        let _ = std::fs::create_dir_all(cfg.root.join("state"));
        let runtime = probe::detect(&cfg.root, &cfg.agent, cfg.runtime.as_deref()).await;
        match &runtime {
            Ok(r) => tracing::info!(runtime = %r.describe(), "container driver ready"),
            Err(e) => tracing::warn!("container driver unavailable: {e}"),
        }
        ContainerDriver { root: cfg.root, agent: cfg.agent, cgroup_parent: cfg.cgroup_parent, runtime }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    fn state_root(&self) -> PathBuf {
        self.root.join("state")
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime.as_ref().map_err(|e| Error::Unavailable(e.clone()))
    }

    async fn run_runtime(&self, args: &[&str]) -> std::result::Result<std::process::Output, String> {
        let rt = self.runtime().map_err(|e| e.to_string())?;
        tokio::process::Command::new(&rt.path)
            .arg("--root")
            .arg(self.state_root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", rt.path.display()))
    }
}

/// Start time of a process from /proc/<pid>/stat (field 22).
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(&p))
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
    // overlayfs lists lowerdirs top first; our layers are bottom first.
    let lower: Vec<String> = spec.layers.iter().rev().map(|p| p.to_string_lossy().into_owned()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
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

#[async_trait]
impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn capabilities(&self) -> Capabilities {
        let (available, reason, backend) = match &self.runtime {
            Ok(r) => (true, None, Some(r.describe())),
            Err(e) => (false, Some(e.clone()), None),
        };
        Capabilities {
            driver: "container".into(),
            isolation: IsolationClass::SharedKernel,
            available,
            reason,
            backend,
            exec: true,
            pty: true,
            files: true,
            fs_snapshot: false,
            memory_snapshot: false,
            fork: false,
            pause_resume: false,
            network_policy: false,
            port_exposure: false,
            live_resource_update: false,
            own_kernel: false,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        let rt = self.runtime()?.clone();
        let dir = self.dir(&spec.id);
        for sub in ["upper", "work", "rootfs", "run"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::internal(format!("creating {}", dir.join(sub).display()), e))?;
        }
        std::fs::hard_link(&self.agent, dir.join("run/spinup-agent"))
            .or_else(|_| std::fs::copy(&self.agent, dir.join("run/spinup-agent")).map(|_| ()))
            .map_err(|e| Error::internal("placing the agent binary", e))?;
        mount_overlay(spec, &dir)?;

        let config = spec::build(spec, &dir, &self.cgroup_parent)?;
        std::fs::write(dir.join("config.json"), config).map_err(|e| Error::internal("writing config.json", e))?;

        // Bind the agent's socket here, on the host, and hand the listening
        // fd to the agent: the path is never resolved inside the guest.
        let sock = dir.join("run/agent.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| Error::internal("binding the agent socket", e))?;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .map_err(|e| Error::internal("opening console.log", e))?;
        let pid_file = dir.join("init.pid");
        let lfd = listener.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&rt.path);
        cmd.arg("--root")
            .arg(self.state_root())
            .args(["run", "--detach", "--preserve-fds", "1", "--bundle"])
            .arg(&dir)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&spec.id)
            .stdin(Stdio::null())
            // The agent inherits these: they must not be pipes anyone waits on.
            .stdout(console.try_clone().map_err(|e| Error::internal("console.log", e))?)
            .stderr(console);
        // SAFETY: dup2 is async-signal-safe; it places the listener at the
        // fd the agent expects (and clears CLOEXEC on the copy).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(lfd, spinup_protocol::LISTEN_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status =
            cmd.status().await.map_err(|e| Error::Unavailable(format!("cannot run {}: {e}", rt.path.display())))?;
        drop(listener);
        if !status.success() {
            let msg = self.console_tail(&spec.id).unwrap_or_default();
            let _ = self.destroy(&spec.id).await;
            return Err(Error::Internal(format!("{} run failed: {msg}", rt.name)));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Internal(format!("{} did not write a pid file", rt.name)))?;
        let starttime = proc_starttime(pid).unwrap_or(0);
        Ok(serde_json::to_value(State { pid, starttime, runtime: rt.name.clone() }).expect("state serializes"))
    }

    async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus {
        let Ok(st) = serde_json::from_value::<State>(state.clone()) else { return DriverStatus::Missing };
        match proc_starttime(st.pid) {
            Some(t) if t == st.starttime => DriverStatus::Running,
            _ => {
                let tail = self.console_tail(id).map(|t| format!("; last output: {t}")).unwrap_or_default();
                DriverStatus::Exited(format!(
                    "sandbox init (pid {}) is gone: killed from outside or crashed{tail}",
                    st.pid
                ))
            }
        }
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if self.runtime.is_ok() {
            // `delete --force` kills every process and removes the cgroup.
            let out = self.run_runtime(&["delete", "--force", id]).await.map_err(Error::Internal)?;
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !err.contains("does not exist") && !err.contains("not exist") {
                return Err(Error::Internal(format!("deleting container {id}: {}", err.trim())));
            }
        }
        let rootfs = dir.join("rootfs");
        if mounted(&rootfs) {
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| Error::internal(format!("unmounting {}", rootfs.display()), e))?;
        }
        if dir.exists() {
            // The mount point must be empty now; never recurse through a mount.
            if rootfs.exists() {
                std::fs::remove_dir(&rootfs)
                    .map_err(|e| Error::internal(format!("removing {}", rootfs.display()), e))?;
            }
            std::fs::remove_dir_all(&dir).map_err(|e| Error::internal(format!("removing {}", dir.display()), e))?;
        }
        Ok(())
    }

    fn agent_endpoint(&self, id: &str) -> AgentEndpoint {
        AgentEndpoint::Unix(self.dir(id).join("run/agent.sock"))
    }

    fn console_tail(&self, id: &str) -> Option<String> {
        let s = std::fs::read(self.dir(id).join("console.log")).ok()?;
        let tail = String::from_utf8_lossy(&s[s.len().saturating_sub(1024)..]).trim().to_string();
        (!tail.is_empty()).then_some(tail)
    }
}
