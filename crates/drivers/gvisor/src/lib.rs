//! The `gvisor` driver: the same OCI bundle, overlay rootfs, limits and
//! agent as the container driver, run by `runsc`, so a user-space kernel
//! (the Sentry) answers every syscall the sandbox makes.
//!
//! Agent transport: runsc cannot hand an inherited fd to the sandboxed
//! process, and a socket the guest binds would let the guest choose where
//! the host connects. So the host listens on `run/host.sock` in the
//! sandbox's host directory (bind-mounted read-only at /run/spinup) and the
//! agent dials out to it, which runsc allows with `--host-uds=open`
//! (connect only; the guest cannot create host sockets). The agent redials
//! whenever the connection drops, which is how a restarted daemon gets its
//! sandboxes back. Exec never falls back to `runsc exec`.

use std::path::PathBuf;

use async_trait::async_trait;
use spinup_driver_container::{probe, OciEngine, Transport};
use spinup_model::{AgentStream, Capabilities, Driver, DriverStatus, IsolationClass, Result, SandboxSpec};

/// Platforms tried in order when none is forced: systrap is the fast one
/// where runsc has it; ptrace works everywhere. KVM is only used when asked
/// for, since nested hypervisors can hang it.
const PLATFORMS: [&str; 2] = ["systrap", "ptrace"];

/// Host threads the Sentry and gofer need beyond the guest's own tasks.
pub const SENTRY_THREADS: u64 = 128;

pub struct Config {
    /// Directory the driver owns (`<data-dir>/gvisor`).
    pub root: PathBuf,
    pub agent: PathBuf,
    /// Force a runsc binary path.
    pub runtime: Option<String>,
    /// Force a platform (systrap, ptrace, kvm).
    pub platform: Option<String>,
    pub cgroup_parent: String,
}

pub struct GvisorDriver {
    engine: OciEngine,
}

fn global_args(platform: &str) -> Vec<String> {
    // network=sandbox: the Sentry's own network stack, on the interfaces of
    // the namespace the spec names (the daemon's veth; a sandbox without
    // one gets an empty namespace: loopback only). host-uds=open: the
    // agent may connect to the host socket bind-mounted at /run/spinup.
    vec![format!("--platform={platform}"), "--network=sandbox".into(), "--host-uds=open".into()]
}

impl GvisorDriver {
    /// Probes runsc and its platforms by running a real sandbox.
    pub async fn new(cfg: Config) -> Self {
        let _ = std::fs::create_dir_all(cfg.root.join("state"));
        let binary = vec![cfg.runtime.clone().unwrap_or_else(|| "runsc".into())];
        let platforms: Vec<String> = match &cfg.platform {
            Some(p) => vec![p.clone()],
            None => PLATFORMS.iter().map(|s| s.to_string()).collect(),
        };
        let mut why = vec![];
        let mut found = None;
        for p in &platforms {
            match probe::detect(&cfg.root, &cfg.agent, &binary, &global_args(p)).await {
                Ok(mut rt) => {
                    rt.version = format!("{} ({p})", rt.version);
                    found = Some((rt, p.clone()));
                    break;
                }
                Err(e) => why.push(format!("platform {p}: {e}")),
            }
        }
        let (runtime, args) = match found {
            Some((rt, p)) => {
                tracing::info!(runtime = %rt.describe(), "gvisor driver ready");
                (Ok(rt), global_args(&p))
            }
            None => {
                let e = format!("runsc cannot run a sandbox here: {}", why.join("; "));
                tracing::warn!("gvisor driver unavailable: {e}");
                (Err(e), vec![])
            }
        };
        GvisorDriver {
            engine: OciEngine::new(cfg.root, cfg.agent, cfg.cgroup_parent, runtime, args, Transport::AgentDials),
        }
    }
}

#[async_trait]
impl Driver for GvisorDriver {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    fn capabilities(&self) -> Capabilities {
        // The host cgroup bounds the Sentry as a whole: a guest fork bomb or
        // memory hog that reaches a limit takes the sandbox down (runsc of
        // Debian bookworm has no pids controller and applies no limits in
        // its own cgroupfs), and the daemon reports which limit was hit.
        Capabilities {
            per_process_limits: false,
            ..self.engine.capabilities("gvisor", IsolationClass::UserSpaceKernel, true)
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        self.engine
            .create(spec, &["/run/spinup/spinup-agent", "--dial", "/run/spinup/host.sock"], |config| {
                // The Sentry has its own /proc and /sys: the host paths the
                // container driver masks do not exist there.
                config["linux"]["maskedPaths"] = serde_json::json!([]);
                config["linux"]["readonlyPaths"] = serde_json::json!([]);
                // The host cgroup holds the Sentry and gofer, whose Go
                // runtimes need threads of their own on top of the guest's.
                let pids = config["linux"]["resources"]["pids"]["limit"].as_u64().unwrap_or(512);
                config["linux"]["resources"]["pids"]["limit"] = serde_json::json!(pids + SENTRY_THREADS);
            })
            .await
    }

    async fn status(&self, id: &str, state: &serde_json::Value) -> DriverStatus {
        self.engine.status(id, state).await
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        self.engine.destroy(id).await
    }

    fn writable_layer(&self, id: &str) -> Option<std::path::PathBuf> {
        Some(self.engine.upper(id))
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
