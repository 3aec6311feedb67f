//! The lifecycle manager: turns API requests into driver calls, keeps the
//! store in step, watches running sandboxes and fires timeouts.
//!
//! Crash-only: a sandbox row is written (`creating`) before any driver work
//! and every later step is persisted, so `recover` after a kill -9 can
//! finish or undo whatever was in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use spinup_model::{
    now_ms, validate_id, validate_label, Driver, DriverStatus, Error, OnTimeout, Resources, Result, Sandbox, SandboxId,
    SandboxSpec, SandboxState,
};
use spinup_protocol::AgentClient;

use crate::envs::{EnvStore, Progress};
use crate::store::Store;

/// How often running sandboxes are checked and timeouts fired.
const MONITOR_INTERVAL: Duration = Duration::from_millis(500);

pub use spinup_api::{CreateRequest, ResourcesPatch};

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .field("default_driver", &self.default_driver)
            .field("default_resources", &self.default_resources)
            .finish_non_exhaustive()
    }
}

pub struct Manager {
    pub(crate) store: Arc<Store>,
    pub(crate) envs: EnvStore,
    drivers: BTreeMap<String, Arc<dyn Driver>>,
    default_driver: String,
    default_resources: Resources,
    pub(crate) agents: std::sync::Mutex<HashMap<String, AgentClient>>,
    /// Serializes lifecycle operations per sandbox.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Sandbox networking; `Err`: why this host cannot do it.
    pub(crate) net: std::result::Result<Arc<crate::network::Network>, String>,
    pub(crate) secrets: crate::secrets::Secrets,
    /// Exposed ports (see `ports.rs`).
    pub(crate) ports: std::sync::Mutex<HashMap<String, crate::ports::Exposed>>,
    /// Held from a tenant's quota check to its new sandbox's row, so two
    /// creates cannot both pass the last free place.
    quota: std::sync::Mutex<()>,
}

/// Snapshot ids have the format of sandbox ids (and must never be taken
/// for a name).
pub(crate) fn new_id() -> String {
    SandboxId::random().into()
}

impl Manager {
    pub fn new(
        store: Arc<Store>,
        envs: EnvStore,
        drivers: Vec<Arc<dyn Driver>>,
        default_driver: &str,
        default_resources: Resources,
    ) -> Self {
        Manager {
            drivers: drivers.into_iter().map(|d| (d.name().to_string(), d)).collect(),
            default_driver: default_driver.to_string(),
            default_resources,
            secrets: crate::secrets::Secrets::new(store.clone(), &envs.data_dir()),
            store,
            envs,
            agents: Default::default(),
            locks: Default::default(),
            net: Err("networking was not set up".into()),
            ports: Default::default(),
            quota: Default::default(),
        }
    }

    pub fn with_network(mut self, net: std::result::Result<Arc<crate::network::Network>, String>) -> Self {
        self.net = net;
        self
    }

    /// The network, or a clear error saying why there is none.
    pub fn network(&self) -> Result<&Arc<crate::network::Network>> {
        self.net
            .as_ref()
            .map_err(|e| Error::Unavailable(format!("sandbox networking is unavailable on this host: {e}")))
    }

    pub fn drivers(&self) -> Vec<spinup_model::Capabilities> {
        self.drivers.values().map(|d| d.capabilities()).collect()
    }

    pub(crate) fn all_drivers(&self) -> Vec<Arc<dyn Driver>> {
        self.drivers.values().cloned().collect()
    }

    pub fn driver(&self, name: &str) -> Result<Arc<dyn Driver>> {
        self.drivers.get(name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown driver '{name}'; drivers: {}",
                self.drivers.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap().entry(id.to_string()).or_default().clone()
    }

    pub fn get(&self, id: &str) -> Result<Sandbox> {
        validate_id(id)?;
        self.store.get_sandbox(id)?.map(|(s, _)| s).ok_or_else(|| Error::not_found("sandbox", id))
    }

    pub fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<Sandbox>> {
        Ok(self.store.list_sandboxes()?.into_iter().map(|(s, _)| s).filter(|s| s.matches_labels(labels)).collect())
    }

    pub(crate) fn set_state(
        &self,
        sb: &mut Sandbox,
        to: SandboxState,
        reason: Option<String>,
        ds: Option<&serde_json::Value>,
    ) -> Result<()> {
        let from = sb.state;
        sb.state = from.transition(to)?;
        sb.reason = reason;
        sb.updated_at = now_ms();
        self.store.update_sandbox(sb, from, ds)
    }

    /// The available driver with the strongest isolation.
    pub fn strongest(&self) -> Result<String> {
        let rank = |c: &spinup_model::Capabilities| match c.isolation {
            spinup_model::IsolationClass::HardwareVirtualization => 3,
            spinup_model::IsolationClass::UserSpaceKernel => 2,
            spinup_model::IsolationClass::SharedKernel => 1,
        };
        self.drivers()
            .into_iter()
            .filter(|c| c.available)
            .max_by_key(rank)
            .map(|c| c.driver)
            .ok_or_else(|| Error::Unavailable("no driver is available on this host; see `spinup drivers`".into()))
    }

    /// Refuse, with the API's 501, what `sb`'s driver declares it cannot do.
    pub fn require(&self, sb: &Sandbox, capability: &str) -> Result<()> {
        let caps = self.driver(&sb.driver)?.capabilities();
        match caps.get(capability) {
            Some(true) => Ok(()),
            _ => Err(Error::Unsupported { driver: sb.driver.clone(), capability: capability.to_string() }),
        }
    }

    /// Check `tenant`'s quotas against its sandboxes plus `adding`, `count`
    /// times. Every sandbox it has counts, whatever its state.
    pub(crate) fn check_quota(&self, tenant: &str, adding: &Resources, count: u32) -> Result<()> {
        let q = self.store.tenant_quota(tenant)?;
        if q == Default::default() {
            return Ok(());
        }
        let mine: Vec<Sandbox> = self
            .store
            .list_sandboxes()?
            .into_iter()
            .map(|(sb, _)| sb)
            .filter(|sb| sb.tenant.as_deref() == Some(tenant))
            .collect();
        let n = mine.len() as u64 + u64::from(count);
        let vcpus = mine.iter().map(|s| s.resources.vcpus).sum::<f64>() + adding.vcpus * f64::from(count);
        let mib = mine.iter().map(|s| s.resources.memory_mib).sum::<u64>() + adding.memory_mib * u64::from(count);
        let over = |what: &str, limit: String, would: String| {
            Err(Error::QuotaExceeded(format!(
                "tenant {tenant} may have {limit} {what}; this would make {would} (remove some of its sandboxes first)"
            )))
        };
        if let Some(max) = q.max_sandboxes {
            if n > u64::from(max) {
                return over("sandboxes", max.to_string(), n.to_string());
            }
        }
        if let Some(max) = q.max_vcpus {
            if vcpus > max + 1e-9 {
                return over("vCPUs", max.to_string(), vcpus.to_string());
            }
        }
        if let Some(max) = q.max_memory_mib {
            if mib > max {
                return over("MiB of memory", max.to_string(), mib.to_string());
            }
        }
        Ok(())
    }

    /// Create a sandbox owned by `tenant` (`None`: the admin's).
    pub(crate) async fn create_now(
        &self,
        req: CreateRequest,
        progress: Progress,
        tenant: Option<String>,
    ) -> Result<Sandbox> {
        let requested = req.driver.clone().unwrap_or_else(|| self.default_driver.clone());
        let driver_name = if requested == "auto" { self.strongest()? } else { requested };
        let driver = self.driver(&driver_name)?;
        let caps = driver.capabilities();
        if !caps.available {
            return Err(Error::Unavailable(format!(
                "driver '{driver_name}' is not available on this host: {}",
                caps.reason.unwrap_or_default()
            )));
        }
        for (k, v) in &req.labels {
            validate_label(k, v)?;
        }
        if req.labels.len() > 64 {
            return Err(Error::InvalidArgument("at most 64 labels".into()));
        }
        if req.env_vars.len() > 1024 {
            return Err(Error::InvalidArgument("at most 1024 env_vars".into()));
        }
        for (k, v) in &req.env_vars {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::InvalidArgument(format!("env_vars: '{k}' is not a valid variable name")));
            }
        }
        if let Some(t) = req.timeout_s {
            if t > 366 * 24 * 3600 {
                return Err(Error::InvalidArgument("timeout_s must be at most one year".into()));
            }
        }
        // Where the filesystem comes from: an environment, or a snapshot
        // (whose layers work on every driver).
        let mut memory = None;
        let (env_name, env_digest, layers, snapshot, base_resources) = match &req.from_snapshot {
            Some(s) => {
                if req.env.is_some() {
                    return Err(Error::InvalidArgument("give either env or from_snapshot, not both".into()));
                }
                let snap = self.snapshot_get(s)?;
                let digest = crate::snapshots::stack_digest(&snap.layers);
                // Saved memory continues on its own driver; elsewhere the
                // snapshot's filesystem layer starts a fresh boot.
                if snap.memory.as_deref() == Some(driver_name.as_str()) {
                    memory = Some(self.memory_dir(&snap.id));
                }
                (snap.env.clone(), digest, snap.layers.clone(), Some(snap.id.clone()), snap.resources)
            }
            None => {
                let env_name = req.env.clone().unwrap_or_else(|| "busybox".into());
                let env = self.envs.resolve(&env_name, progress).await?;
                // An environment bigger than the default disk gets room for
                // itself and as much again by default (a microVM's disk
                // holds the whole image: `code-interpreter` is 1.6 GB).
                let mut base = self.default_resources;
                base.disk_mib = base.disk_mib.max((env.size_bytes >> 20) * 2);
                (env.name, env.digest, env.layers, None, base)
            }
        };
        let resources = req.resources.unwrap_or_default().over(base_resources);
        resources.validate()?;
        if memory.is_some() && resources != base_resources {
            return Err(Error::InvalidArgument(
                "a sandbox restored from saved memory keeps the snapshot's resources (vcpus, memory, disk, pids)"
                    .into(),
            ));
        }
        let network = match req.network.clone() {
            Some(p) => p,
            None => spinup_model::NetworkPolicy {
                mode: self.net.as_ref().map(|n| n.default_mode()).unwrap_or_default(),
                ..Default::default()
            },
        };
        network.validate()?;
        let secrets = self.check_secrets(tenant.as_deref(), &req.secrets)?;
        if network.mode != spinup_model::NetMode::None
            || secrets.iter().any(|s| s.mode == spinup_model::SecretMode::Proxy)
        {
            self.network()?;
        }
        let on_timeout = req.on_timeout.unwrap_or_default();
        let auto_resume = req.auto_resume.unwrap_or(false);
        if (on_timeout == OnTimeout::Pause || auto_resume) && !caps.pause_resume {
            return Err(Error::Unsupported { driver: driver_name, capability: "pause_resume".into() });
        }

        let now = now_ms();
        let id = SandboxId::random();
        let timeout_s = req.timeout_s.filter(|t| *t > 0);
        let mut sb = Sandbox {
            id: id.clone(),
            env: env_name,
            env_digest,
            driver: driver_name,
            state: SandboxState::Creating,
            reason: None,
            resources,
            timeout_s,
            expires_at: timeout_s.map(|t| now + t as i64 * 1000),
            labels: req.labels,
            created_at: now,
            updated_at: now,
            layers: layers.clone(),
            snapshot,
            on_timeout,
            auto_resume,
            network,
            net: None,
            secrets,
            ports: vec![],
            env_vars: req.env_vars,
            tenant,
        };
        let lock = self.lock_for(&id);
        let _g = lock.lock().await;
        let net = self.net.as_ref().ok().cloned();
        if let Some(n) = &net {
            sb.net = Some(n.allocate()?);
        }
        let inserted = {
            let _q = self.quota.lock().unwrap();
            match &sb.tenant {
                Some(t) => self.check_quota(t, &sb.resources, 1),
                None => Ok(()),
            }
            .and_then(|()| self.store.insert_sandbox(&sb))
        };
        if let Err(e) = inserted {
            if let (Some(n), Some(slot)) = (&net, &sb.net) {
                n.release(slot);
            }
            return Err(e);
        }
        let spec = self.spec_of(&sb);
        let started = async {
            self.setup_net(&sb, &*driver).await?;
            let ds = match &memory {
                Some(dir) => driver.create_from_memory(&spec, dir).await?,
                None => driver.create(&spec).await?,
            };
            self.wait_agent(&*driver, &id).await?;
            if memory.is_some() {
                // Continued from saved memory, it still thinks it is the
                // original: a new hostname and machine-id, and a reseeded RNG.
                let mut entropy = [0u8; 64];
                getrandom::fill(&mut entropy).map_err(|e| Error::internal("host entropy", e))?;
                let c = self.agents.lock().unwrap().get(id.as_str()).cloned();
                let c = c.ok_or_else(|| Error::Agent("no agent connection".into()))?;
                c.call::<serde_json::Value>(
                    http::Method::POST,
                    "/v1/identity",
                    Some(&spinup_protocol::IdentityRequest {
                        hostname: spec.hostname.clone(),
                        entropy: entropy.to_vec(),
                        net: spec.net.as_ref().map(|n| format!("{}/{},{},{}", n.address, n.prefix, n.gateway, n.dns)),
                    }),
                )
                .await
                .map_err(|e| Error::Agent(format!("giving the restored guest its identity: {e}")))?;
            }
            self.project_secrets(&sb).await?;
            Ok::<_, Error>(ds)
        }
        .await;
        match started {
            Ok(ds) => {
                self.set_state(&mut sb, SandboxState::Running, None, Some(&ds))?;
                tracing::info!(id = %sb.id, env = %sb.env, driver = %sb.driver, "sandbox running");
                Ok(sb)
            }
            Err(e) => {
                tracing::warn!(id = %id, "create failed: {e}");
                let _ = driver.destroy(&id).await;
                if let (Some(n), Some(slot)) = (&net, &sb.net) {
                    n.teardown(&id, slot).await;
                }
                self.agents.lock().unwrap().remove(id.as_str());
                self.store.delete_sandbox(&id, SandboxState::Creating, Some(&format!("create failed: {e}")))?;
                Err(e)
            }
        }
    }

    /// What the driver is given to run `sb`.
    fn spec_of(&self, sb: &Sandbox) -> SandboxSpec {
        SandboxSpec {
            id: sb.id.to_string(),
            hostname: sb.id.to_string(),
            resources: sb.resources,
            layers: sb.layers.iter().map(|l| self.envs.layer_dir(l)).collect(),
            net: match (&self.net, &sb.net) {
                (Ok(n), Some(slot)) => Some(n.guest(&sb.id, slot)),
                _ => None,
            },
        }
    }

    /// Make `sb`'s namespace, link and policy (afresh: what a killed
    /// daemon or a reboot left of them goes first).
    async fn setup_net(&self, sb: &Sandbox, driver: &dyn Driver) -> Result<()> {
        if let (Ok(n), Some(slot)) = (&self.net, &sb.net) {
            let kind = if driver.nic_is_tap() { crate::network::NetKind::Tap } else { crate::network::NetKind::Veth };
            n.setup(&sb.id, slot, kind, &sb.network).await?;
        }
        Ok(())
    }

    /// Boot a stopped sandbox again on the disk it kept: its network made
    /// afresh, a fresh agent, its secrets projected again. A failed start
    /// leaves it stopped, with why.
    pub(crate) async fn start_now(&self, id: &str) -> Result<Sandbox> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        if sb.state != SandboxState::Stopped {
            return Err(Error::Conflict(format!("sandbox {id} is {}; only a stopped sandbox starts", sb.state)));
        }
        self.require(&sb, "restart")?;
        let driver = self.driver(&sb.driver)?;
        let spec = self.spec_of(&sb);
        let started = async {
            self.setup_net(&sb, &*driver).await?;
            let ds = driver.start(&spec).await?;
            self.wait_agent(&*driver, id).await?;
            self.project_secrets(&sb).await?;
            Ok::<_, Error>(ds)
        }
        .await;
        match started {
            Ok(ds) => {
                self.set_state(&mut sb, SandboxState::Running, None, Some(&ds))?;
                tracing::info!(id = %sb.id, driver = %sb.driver, "sandbox started again");
                Ok(sb)
            }
            Err(e) => {
                tracing::warn!(id = %sb.id, "start failed: {e}");
                self.agents.lock().unwrap().remove(id);
                sb.reason = Some(format!("start failed: {e}"));
                sb.updated_at = now_ms();
                self.store.update_sandbox(&sb, SandboxState::Stopped, None)?;
                Err(e)
            }
        }
    }

    async fn connect(&self, driver: &dyn Driver, id: &str) -> Result<AgentClient> {
        let io = driver.connect_agent(id).await?;
        AgentClient::connect(io).await.map_err(|e| Error::Agent(e.to_string()))
    }

    /// Connect to a fresh sandbox's agent and wait for its first answer.
    async fn wait_agent(&self, driver: &dyn Driver, id: &str) -> Result<()> {
        let bound = driver.ready_timeout();
        let deadline = tokio::time::Instant::now() + bound;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.connect(driver, id).await {
                Ok(c) => match tokio::time::timeout(
                    Duration::from_secs(5),
                    c.call::<spinup_protocol::AgentInfo>(http::Method::GET, "/v1/info", None::<&()>),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        self.agents.lock().unwrap().insert(id.to_string(), c);
                        return Ok(());
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no answer within 5 s".into(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let console = driver.console_tail(id).map(|t| format!("; sandbox output: {t}")).unwrap_or_default();
        Err(Error::Agent(format!("the agent did not become ready within {bound:?}: {last}{console}")))
    }

    /// A connected agent for a running sandbox.
    pub async fn agent(self: &Arc<Self>, id: &str) -> Result<AgentClient> {
        self.agent_for(&self.get(id)?).await
    }

    /// A connected agent for `sb`, which must be running (or paused with
    /// `auto_resume`: then it is resumed first, on a task of its own like
    /// every resume).
    pub async fn agent_for(self: &Arc<Self>, sb: &Sandbox) -> Result<AgentClient> {
        let resumed;
        let sb = if sb.state == SandboxState::Paused && sb.auto_resume {
            resumed = match self.resume(&sb.id).await {
                Ok(s) => s,
                // Someone else resumed it first.
                Err(Error::Conflict(_)) => self.get(&sb.id)?,
                Err(e) => return Err(e),
            };
            &resumed
        } else {
            sb
        };
        let id = sb.id.as_str();
        require_running(sb)?;
        if let Some(c) = self.agents.lock().unwrap().get(id).filter(|c| !c.is_closed()).cloned() {
            return Ok(c);
        }
        // One connection attempt at a time per sandbox (a dialling agent
        // brings exactly one connection).
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        // Whoever held the lock may have stopped or removed it meanwhile:
        // that is its state (404, 409), not an agent failure.
        let sb = self.get(id)?;
        require_running(&sb)?;
        self.agent_locked(&sb).await
    }

    /// [`Manager::agent_for`] for a caller that holds the sandbox's lock.
    pub(crate) async fn agent_locked(&self, sb: &Sandbox) -> Result<AgentClient> {
        let id = sb.id.as_str();
        if let Some(c) = self.agents.lock().unwrap().get(id).filter(|c| !c.is_closed()).cloned() {
            return Ok(c);
        }
        let driver = self.driver(&sb.driver)?;
        let c = self.connect(&*driver, id).await?;
        self.agents.lock().unwrap().insert(id.to_string(), c.clone());
        Ok(c)
    }

    /// Pause (`to` = Paused) or resume (`to` = Running) a sandbox in place.
    /// With `free_memory`, a pause saves the sandbox's memory to disk and
    /// stops its VMM (drivers with `memory_snapshot`); resume loads it back.
    pub(crate) async fn freeze_with(&self, id: &str, to: SandboxState, free_memory: bool) -> Result<Sandbox> {
        let sb = self.get(id)?;
        self.require(&sb, "pause_resume")?;
        if free_memory {
            self.require(&sb, "memory_snapshot")?;
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        let from = if to == SandboxState::Paused { SandboxState::Running } else { SandboxState::Paused };
        if sb.state != from {
            let why = sb.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}{why}; only a {from} sandbox can be {}",
                sb.state,
                if to == SandboxState::Paused { "paused" } else { "resumed" }
            )));
        }
        let driver = self.driver(&sb.driver)?;
        if to == SandboxState::Paused && free_memory {
            // Paused in the store first: a daemon killed midway finds a
            // paused sandbox, whether its VM is stopped or already on disk,
            // and resume handles both.
            self.set_state(&mut sb, SandboxState::Paused, Some("paused to disk (memory freed)".into()), None)?;
            // Its VMM goes away: so does the agent connection.
            self.agents.lock().unwrap().remove(id);
            if let Err(e) = driver.suspend(id).await {
                let _ = driver.resume(id).await;
                let _ = self.set_state(&mut sb, SandboxState::Running, None, None);
                return Err(e);
            }
        } else if to == SandboxState::Paused {
            // The agent's connection stays: calls in flight wait out the
            // pause and go on after resume.
            if let Err(e) = driver.pause(id).await {
                // A pause that half happened must not leave a frozen
                // sandbox the store calls running.
                let _ = driver.resume(id).await;
                return Err(e);
            }
            if let Err(e) = self.set_state(&mut sb, SandboxState::Paused, Some("paused by request".into()), None) {
                let _ = driver.resume(id).await;
                return Err(e);
            }
        } else {
            // Suspended to disk: a new VMM with new driver state.
            let ds = if driver.is_suspended(id) { Some(driver.wake(id).await?) } else { None };
            if ds.is_none() {
                driver.resume(id).await?;
            }
            if sb.expires_at.is_none() {
                // A timeout that paused it starts again.
                sb.expires_at = sb.timeout_s.map(|t| now_ms() + t as i64 * 1000);
            }
            self.set_state(&mut sb, SandboxState::Running, None, ds.as_ref())?;
        }
        tracing::info!(id, state = %sb.state, "sandbox {}", sb.state);
        Ok(sb)
    }

    pub(crate) async fn destroy_now(&self, id: &str, force: bool) -> Result<()> {
        let sb = self.get(id)?;
        if matches!(sb.state, SandboxState::Running | SandboxState::Paused) && !force {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}; stop it or remove it with force (rm -f)",
                sb.state
            )));
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        // Re-read under the lock: a pause or resume may have landed.
        let sb = self.get(id)?;
        self.destroy_locked(&sb, "removed by request").await
    }

    pub(crate) async fn destroy_locked(&self, sb: &Sandbox, reason: &str) -> Result<()> {
        let driver = self.driver(&sb.driver)?;
        self.agents.lock().unwrap().remove(sb.id.as_str());
        if sb.state == SandboxState::Paused && !driver.is_suspended(&sb.id) {
            // Frozen processes cannot act on a kill: thaw, then destroy.
            let _ = driver.resume(&sb.id).await;
        }
        driver.destroy(&sb.id).await?;
        self.unexpose_all(&sb.id);
        if let (Ok(n), Some(slot)) = (&self.net, &sb.net) {
            n.teardown(&sb.id, slot).await;
        }
        self.store.delete_sandbox(&sb.id, sb.state, Some(reason))?;
        self.locks.lock().unwrap().remove(sb.id.as_str());
        if let Some(s) = &sb.snapshot {
            // A fork's snapshot goes with its last child.
            self.drop_ephemeral(s);
        }
        tracing::info!(id = %sb.id, reason, "sandbox destroyed");
        Ok(())
    }

    pub fn set_timeout(&self, id: &str, timeout_s: u64) -> Result<Sandbox> {
        let mut sb = self.get(id)?;
        if timeout_s > 366 * 24 * 3600 {
            return Err(Error::InvalidArgument("timeout_s must be at most one year".into()));
        }
        sb.timeout_s = (timeout_s > 0).then_some(timeout_s);
        sb.expires_at = sb.timeout_s.map(|t| now_ms() + t as i64 * 1000);
        sb.updated_at = now_ms();
        self.store.update_sandbox(&sb, sb.state, None)?;
        Ok(sb)
    }

    /// After a (re)start: settle every sandbox the store knows.
    pub async fn recover(&self) -> Result<()> {
        for (sb, ds) in self.store.list_sandboxes()? {
            let driver = match self.driver(&sb.driver) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(id = %sb.id, "cannot recover: {e}");
                    continue;
                }
            };
            match sb.state {
                SandboxState::Creating => {
                    tracing::warn!(id = %sb.id, "daemon stopped during create; cleaning up");
                    if let Err(e) = self.undo_create(&sb, &*driver, "daemon restarted during create").await {
                        tracing::warn!(id = %sb.id, "undoing an interrupted create: {e}");
                    }
                }
                SandboxState::Running => {
                    // A daemon killed while it had a sandbox frozen (for a
                    // snapshot or a diff) must not leave it so: resuming a
                    // running sandbox is harmless.
                    let _ = driver.resume(&sb.id).await;
                    self.reattach_net(&sb).await;
                    self.check(&sb, ds.as_ref(), &*driver).await?
                }
                SandboxState::Paused => {
                    self.reattach_net(&sb).await;
                    self.check(&sb, ds.as_ref(), &*driver).await?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Undo a create that nothing finishes any more: whatever the driver
    /// and the network made goes, then the row. A driver that cannot
    /// destroy it keeps the row (a later pass or `spinup gc` tries again).
    async fn undo_create(&self, sb: &Sandbox, driver: &dyn Driver, reason: &str) -> Result<()> {
        driver.destroy(&sb.id).await?;
        if let (Ok(n), Some(slot)) = (&self.net, &sb.net) {
            n.teardown(&sb.id, slot).await;
        }
        self.agents.lock().unwrap().remove(sb.id.as_str());
        self.store.delete_sandbox(&sb.id, sb.state, Some(reason))
    }

    /// Move a running or paused sandbox whose init is gone to `stopped`, with why.
    async fn check(&self, sb: &Sandbox, ds: Option<&serde_json::Value>, driver: &dyn Driver) -> Result<()> {
        let status = driver.status(&sb.id, ds.unwrap_or(&serde_json::Value::Null)).await;
        let reason = match status {
            DriverStatus::Running => return Ok(()),
            DriverStatus::Exited(r) => r,
            DriverStatus::Missing => "the driver has no record of this sandbox".into(),
        };
        let lock = self.lock_for(&sb.id);
        let _g = lock.lock().await;
        // Re-read under the lock: it may have been destroyed meanwhile.
        let Some((mut sb, _)) = self.store.get_sandbox(&sb.id)? else { return Ok(()) };
        if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            return Ok(());
        }
        tracing::warn!(id = %sb.id, "sandbox stopped: {reason}");
        self.agents.lock().unwrap().remove(sb.id.as_str());
        self.set_state(&mut sb, SandboxState::Stopped, Some(reason), None)
    }

    /// One pass of the monitor: stopped sandboxes and expired timeouts.
    pub async fn tick(&self) {
        let Ok(all) = self.store.list_sandboxes() else { return };
        let now = now_ms();
        for (sb, ds) in all {
            let Ok(driver) = self.driver(&sb.driver) else { continue };
            if sb.expires_at.is_some_and(|t| t <= now) && sb.state != SandboxState::Creating {
                let lock = self.lock_for(&sb.id);
                let _g = lock.lock().await;
                if let Ok(Some((mut cur, _))) = self.store.get_sandbox(&sb.id) {
                    if cur.expires_at.is_none_or(|t| t > now) {
                        continue;
                    }
                    if cur.on_timeout == OnTimeout::Pause
                        && matches!(cur.state, SandboxState::Running | SandboxState::Paused)
                    {
                        // Pause instead of destroying; disarmed until resumed.
                        cur.expires_at = None;
                        let res = if cur.state == SandboxState::Running {
                            match driver.pause(&cur.id).await {
                                Ok(()) => self.set_state(
                                    &mut cur,
                                    SandboxState::Paused,
                                    Some("paused: timeout expired".into()),
                                    None,
                                ),
                                Err(e) => Err(e),
                            }
                        } else {
                            self.store.update_sandbox(&cur, cur.state, None)
                        };
                        match res {
                            Ok(()) => tracing::info!(id = %cur.id, "timeout expired: sandbox paused"),
                            Err(e) => tracing::warn!(id = %sb.id, "timeout pause failed: {e}"),
                        }
                    } else if let Err(e) = self.destroy_locked(&cur, "timeout expired").await {
                        tracing::warn!(id = %sb.id, "timeout destroy failed: {e}");
                    }
                }
                continue;
            }
            if sb.state == SandboxState::Creating {
                // A create holds its sandbox's lock from before the row is
                // written until it is running or undone: a creating row
                // whose lock is free has no create left to finish it (its
                // task panicked).
                let lock = self.lock_for(&sb.id);
                let Ok(_g) = lock.try_lock() else { continue };
                if let Ok(Some((cur, _))) = self.store.get_sandbox(&sb.id) {
                    if cur.state == SandboxState::Creating {
                        tracing::warn!(id = %sb.id, "a create was abandoned; undoing it");
                        if let Err(e) = self.undo_create(&cur, &*driver, "create abandoned").await {
                            tracing::warn!(id = %sb.id, "undoing an abandoned create: {e}");
                        }
                    }
                }
                continue;
            }
            if matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
                if let Err(e) = self.check(&sb, ds.as_ref(), &*driver).await {
                    tracing::warn!(id = %sb.id, "monitor: {e}");
                }
            }
        }
    }

    pub fn spawn_monitor(self: &Arc<Self>) {
        let m = self.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(MONITOR_INTERVAL);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                m.tick().await;
            }
        });
    }
}

/// A conflict unless `sb` is running, with the reason it stopped.
fn require_running(sb: &Sandbox) -> Result<()> {
    if sb.state == SandboxState::Running {
        return Ok(());
    }
    let why = sb.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    Err(Error::Conflict(format!("sandbox {} is {}{why}", sb.id, sb.state)))
}
