//! The `container` driver: an OCI runtime bundle on an overlayfs rootfs,
//! run by crun where it works on this host, otherwise runc. The OCI
//! machinery lives in [`engine`], shared with the gVisor driver.

pub mod engine;
pub mod probe;
pub mod spec;

use std::path::PathBuf;

use async_trait::async_trait;
use spinup_model::{AgentStream, Capabilities, Driver, DriverStatus, IsolationClass, Result, SandboxSpec};

pub use engine::{proc_starttime, remove_cgroups, OciEngine, Transport};
pub use probe::Runtime;

#[derive(Debug)]
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

#[derive(Debug)]
pub struct ContainerDriver {
    engine: OciEngine,
}

impl ContainerDriver {
    /// Probes the runtimes (by running a real container) once, up front.
    pub async fn new(cfg: Config) -> Self {
        let _ = std::fs::create_dir_all(cfg.root.join("state"));
        let candidates: Vec<String> = match cfg.runtime {
            Some(r) => vec![r],
            None => vec!["crun".into(), "runc".into()],
        };
        let runtime = probe::detect(&cfg.root, &cfg.agent, &candidates, &[], &cfg.cgroup_parent).await;
        match &runtime {
            Ok(r) => tracing::info!(runtime = %r.describe(), "container driver ready"),
            Err(e) => tracing::warn!("container driver unavailable: {e}"),
        }
        ContainerDriver {
            engine: OciEngine::new(cfg.root, cfg.agent, cfg.cgroup_parent, runtime, vec![], Transport::InheritListener),
        }
    }
}

/// The agent as PID 1, on the listening socket it inherits (fd 3:
/// spinup_protocol::LISTEN_FD).
const AGENT_ARGS: [&str; 3] = ["/run/spinup/spinup-agent", "--listen-fd", "3"];
const _: () = assert!(spinup_protocol::LISTEN_FD == 3);

#[async_trait]
impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn capabilities(&self) -> Capabilities {
        self.engine.capabilities("container", IsolationClass::SharedKernel, false)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        self.engine.create(spec, &AGENT_ARGS, |_| {}).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        self.engine.start(spec, &AGENT_ARGS, |_| {}).await
    }

    async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus {
        self.engine.status(id, state).await
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        self.engine.destroy(id).await
    }

    fn traces(&self) -> Vec<String> {
        self.engine.traces()
    }

    fn writable_layer(&self, id: &str) -> Option<std::path::PathBuf> {
        self.engine.upper(id)
    }

    async fn connect_agent(&self, id: &str) -> Result<AgentStream> {
        self.engine.connect_agent(id).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.engine.freeze(id, "pause").await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.engine.freeze(id, "resume").await
    }

    fn console_tail(&self, id: &str) -> Option<String> {
        self.engine.console_tail(id)
    }
}
