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

#[derive(Debug)]
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

#[derive(Debug)]
pub struct GvisorDriver {
    engine: OciEngine,
}

fn global_args(platform: &str) -> Vec<String> {
    // network=none: loopback only inside the Sentry; a sandbox with a
    // network runs with network=sandbox instead (the engine swaps it): the
    // Sentry's own network stack on the daemon's veth in the namespace the
    // spec names. host-uds=open: the agent may connect to the host socket
    // bind-mounted at /run/spinup.
    vec![format!("--platform={platform}"), "--network=none".into(), "--host-uds=open".into()]
}

/// The agent as PID 1, dialling the host's socket.
const AGENT_ARGS: [&str; 3] = ["/run/spinup/spinup-agent", "--dial", "/run/spinup/host.sock"];

/// The OCI spec as runsc needs it.
fn tweak(config: &mut serde_json::Value) {
    // The Sentry has its own /proc and /sys: the host paths the container
    // driver masks do not exist there.
    config["linux"]["maskedPaths"] = serde_json::json!([]);
    config["linux"]["readonlyPaths"] = serde_json::json!([]);
    // The host cgroup holds the Sentry and gofer, whose Go runtimes need
    // threads of their own on top of the guest's.
    // Never past the kernel's own ceiling (PID_MAX_LIMIT), which pids.max
    // refuses with EINVAL: a sandbox asking for that many gets the most.
    let pids = config["linux"]["resources"]["pids"]["limit"].as_u64().unwrap_or(512);
    config["linux"]["resources"]["pids"]["limit"] = serde_json::json!((pids + SENTRY_THREADS).min(PID_MAX_LIMIT));
}

/// The most `pids.max` takes (`PID_MAX_LIMIT` on 64-bit Linux).
const PID_MAX_LIMIT: u64 = 4 << 20;

impl GvisorDriver {
    async fn create_once(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        self.engine.create(spec, &AGENT_ARGS, tweak).await
    }

    /// Whether `e`, from running a sandbox with a network, asks for the
    /// host kernel's stack: then every later sandbox uses it, and the run
    /// is worth one more try.
    ///
    /// runsc 2022-12 decides "root namespace" by whether
    /// /proc/sys/net/core/rmem_default exists, which newer kernels have in
    /// every namespace, so its own network stack (netstack) refuses the
    /// daemon's namespace. Then the Sentry uses the host kernel's stack
    /// (hostinet), still inside that namespace and under the same nftables
    /// policy; said once in the log.
    fn fall_back_to_hostinet(&self, spec: &SandboxSpec, e: &spinup_model::Error) -> bool {
        if spec.net.is_none() || !e.to_string().contains("cannot run with network enabled in root network namespace") {
            return false;
        }
        let mut n = self.engine.networked.lock().unwrap();
        if *n == "--network=host" {
            return false;
        }
        *n = "--network=host";
        tracing::warn!("runsc cannot put its own network stack on a namespace here (runsc's root-namespace check misfires on this kernel); gVisor sandboxes use the host kernel's stack (hostinet) inside their own namespace");
        true
    }

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
            match probe::detect(&cfg.root, &cfg.agent, &binary, &global_args(p), &cfg.cgroup_parent).await {
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
        match self.create_once(spec).await {
            Err(e) if self.fall_back_to_hostinet(spec, &e) => self.create_once(spec).await,
            r => r,
        }
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<serde_json::Value> {
        match self.engine.start(spec, &AGENT_ARGS, tweak).await {
            Err(e) if self.fall_back_to_hostinet(spec, &e) => self.engine.start(spec, &AGENT_ARGS, tweak).await,
            r => r,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentry_threads_come_on_top_but_never_past_the_kernel_ceiling() {
        for (asked, given) in [(100, 100 + SENTRY_THREADS), (PID_MAX_LIMIT, PID_MAX_LIMIT)] {
            let mut config = serde_json::json!({"linux": {"resources": {"pids": {"limit": asked}}}});
            tweak(&mut config);
            assert_eq!(config["linux"]["resources"]["pids"]["limit"], given);
        }
    }
}
