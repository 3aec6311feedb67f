//! The one trait every isolation driver implements, and the capability
//! declaration the API answers from.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::sandbox::Resources;

/// How strong the boundary between the agent's code and the host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsolationClass {
    /// Namespaces, cgroups, seccomp: the host kernel is shared.
    SharedKernel,
    /// A user-space kernel (gVisor) answers the guest's syscalls.
    UserSpaceKernel,
    /// A guest kernel behind hardware (or emulated) virtualization.
    HardwareVirtualization,
}

/// What a driver can do on this host. Built by probing, not from a table:
/// `available` is false with a `reason` when the runtime is missing or broken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub driver: String,
    pub isolation: IsolationClass,
    pub available: bool,
    /// Why the driver is unavailable, and what to do about it.
    pub reason: Option<String>,
    /// The backend actually in use (e.g. `runc 1.1.5`).
    pub backend: Option<String>,
    pub exec: bool,
    pub pty: bool,
    pub files: bool,
    pub fs_snapshot: bool,
    pub memory_snapshot: bool,
    pub fork: bool,
    pub pause_resume: bool,
    pub network_policy: bool,
    pub port_exposure: bool,
    pub live_resource_update: bool,
    pub own_kernel: bool,
    /// A process that goes over the sandbox's pids or memory limit fails on
    /// its own (fork gets EAGAIN, the OOM killer picks it). When false the
    /// limits bound the whole sandbox, its kernel included, and going over
    /// them stops the sandbox, with the limit named in the reason.
    pub per_process_limits: bool,
    /// A stopped sandbox (its init died, the host rebooted, the guest
    /// powered off) keeps its disk and boots again on it with `start`.
    pub restart: bool,
    /// `disk_mib` bounds what the guest can write (ENOSPC past it, `df /`
    /// shows it). False where the operator turned it off (container and
    /// gVisor on a host without loop devices: `SPINUP_DISK_LIMITS=off`).
    pub disk_limit: bool,
}

impl Capabilities {
    /// What every driver serves (exec, PTY, files through its agent) and
    /// nothing more; drivers set what else they can do on top.
    pub fn base(driver: &str, isolation: IsolationClass) -> Capabilities {
        Capabilities {
            driver: driver.into(),
            isolation,
            available: false,
            reason: None,
            backend: None,
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
            per_process_limits: false,
            restart: false,
            disk_limit: false,
        }
    }

    /// Look a capability up by its API name; `None` for unknown names.
    pub fn get(&self, name: &str) -> Option<bool> {
        Some(match name {
            "exec" => self.exec,
            "pty" => self.pty,
            "files" => self.files,
            "fs_snapshot" => self.fs_snapshot,
            "memory_snapshot" => self.memory_snapshot,
            "fork" => self.fork,
            "pause_resume" => self.pause_resume,
            "network_policy" => self.network_policy,
            "port_exposure" => self.port_exposure,
            "live_resource_update" => self.live_resource_update,
            "own_kernel" => self.own_kernel,
            "per_process_limits" => self.per_process_limits,
            "restart" => self.restart,
            "disk_limit" => self.disk_limit,
            _ => return None,
        })
    }

    pub const NAMES: [&'static str; 14] = [
        "exec",
        "pty",
        "files",
        "fs_snapshot",
        "memory_snapshot",
        "fork",
        "pause_resume",
        "network_policy",
        "port_exposure",
        "live_resource_update",
        "own_kernel",
        "per_process_limits",
        "restart",
        "disk_limit",
    ];
}

/// One byte stream to a sandbox's agent; the protocol on top is the same
/// whatever carries it (unix socket, virtio-serial, vsock).
pub trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AgentIo for T {}
pub type AgentStream = Box<dyn AgentIo>;

/// Everything a driver needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub hostname: String,
    pub resources: Resources,
    /// Read-only environment layers, lowest first.
    pub layers: Vec<PathBuf>,
    /// The network the daemon made for it; `None`: loopback only.
    pub net: Option<GuestNet>,
}

/// A sandbox's network as its driver wires it: a network namespace the
/// daemon made (a veth whose peer is `eth0` in there, already addressed,
/// for drivers that run the guest in it directly; a bridge to a tap named
/// `tap0` for VMs), and what the guest should configure itself with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestNet {
    /// `/run/netns/<name>`.
    pub netns: PathBuf,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    /// The sandbox's resolver (the daemon, on the gateway address).
    pub dns: std::net::Ipv4Addr,
    /// For a VM's NIC.
    pub mac: String,
}

impl GuestNet {
    /// `/etc/resolv.conf` for the guest.
    pub fn resolv_conf(&self) -> String {
        format!("# written by spinup: the sandbox's own resolver, which answers only for allowed names\nnameserver {}\noptions timeout:2 attempts:2\n", self.dns)
    }
}

/// What a driver observes about a sandbox it started.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverStatus {
    Running,
    /// The sandbox ended without the daemon asking; the string says how.
    Exited(String),
    /// The driver has no trace of it.
    Missing,
}

#[async_trait]
pub trait Driver: Send + Sync {
    /// The name users select it by (`container`, `gvisor`, `microvm`).
    fn name(&self) -> &'static str;

    /// Probed capabilities; cheap to call (drivers cache the probe).
    fn capabilities(&self) -> Capabilities;

    /// Start a sandbox and return once its agent endpoint exists.
    /// The returned value is opaque driver state, persisted by the store
    /// and handed back to [`Driver::status`] after a daemon restart.
    async fn create(&self, spec: &SandboxSpec) -> Result<serde_json::Value>;

    /// Boot a stopped sandbox again on the disk it kept (its writable
    /// layer, or its VM disk), with a fresh init and agent; whatever is
    /// left of its last run (runtime state, cgroups, a dead VMM's sockets)
    /// goes first. Returns new driver state. Declared by `restart`.
    async fn start(&self, _spec: &SandboxSpec) -> Result<serde_json::Value> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "restart".into() })
    }

    /// Observe a sandbox, using the state [`Driver::create`] returned.
    async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus;

    /// Stop it and remove every trace: processes, mounts, cgroups, runtime
    /// state, writable layer. Idempotent: destroying what is gone succeeds.
    async fn destroy(&self, id: &str) -> Result<()>;

    /// The ids of every sandbox this driver holds any trace of on this
    /// host (its directories, runtime state, cgroups, processes), whether
    /// or not the store knows them: `spinup gc` destroys those it does not.
    fn traces(&self) -> Vec<String> {
        vec![]
    }

    /// How the daemon wires the sandbox's network namespace: false (the
    /// default) for a guest that runs in it (its `eth0` is addressed by the
    /// host), true for a VM whose NIC is a tap (`tap0`) there and which
    /// addresses itself from `GuestNet`.
    fn nic_is_tap(&self) -> bool {
        false
    }

    /// Freeze every process of a running sandbox in place (memory kept).
    async fn pause(&self, _id: &str) -> Result<()> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "pause_resume".into() })
    }

    /// Continue a paused sandbox's processes where they were.
    async fn resume(&self, _id: &str) -> Result<()> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "pause_resume".into() })
    }

    /// The host directory holding the sandbox's filesystem changes as an
    /// overlayfs upper dir (whiteouts as 0/0 character devices, opaque
    /// directories by xattr), for drivers whose writable layer lives on the
    /// host. `None`: the changes are reachable only through the agent.
    fn writable_layer(&self, _id: &str) -> Option<PathBuf> {
        None
    }

    /// Pause and free the memory: save it to disk and stop the VMM. Declared
    /// by `memory_snapshot`.
    async fn suspend(&self, _id: &str) -> Result<()> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "memory_snapshot".into() })
    }

    /// Whether the sandbox is suspended to disk (it counts as alive).
    fn is_suspended(&self, _id: &str) -> bool {
        false
    }

    /// Continue a suspended sandbox; returns its new driver state.
    async fn wake(&self, _id: &str) -> Result<serde_json::Value> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "memory_snapshot".into() })
    }

    /// Save a running sandbox's memory and disk into `dir` (which it
    /// creates); the sandbox goes on running. Declared by `memory_snapshot`.
    async fn save_memory(&self, _id: &str, _dir: &std::path::Path) -> Result<()> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "memory_snapshot".into() })
    }

    /// Start sandbox `spec.id` from a state [`Driver::save_memory`] wrote:
    /// its processes continue where they were.
    async fn create_from_memory(&self, _spec: &SandboxSpec, _dir: &std::path::Path) -> Result<serde_json::Value> {
        Err(crate::Error::Unsupported { driver: self.name().into(), capability: "memory_snapshot".into() })
    }

    /// Open a byte stream to the sandbox's agent.
    async fn connect_agent(&self, id: &str) -> Result<AgentStream>;

    /// How long a new sandbox may take until its agent answers.
    fn ready_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(15)
    }

    /// The last lines the sandbox's init wrote, for failure reasons.
    fn console_tail(&self, _id: &str) -> Option<String> {
        None
    }
}
