//! The Spinup daemon: the lifecycle manager, the environment store and the
//! SQLite state, wired to the drivers, behind [`service::Service`]; it
//! mounts the front ends (`spinup-http`) on its listeners.

pub mod envs;
pub mod gc;
pub use spinup_layers as layers;
pub mod manager;
pub mod network;
pub mod ops;
pub mod policy;
pub mod ports;
pub mod secrets;
pub mod service;
pub mod snapshots;
pub mod store;
pub mod tenants;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use spinup_model::Driver;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/spinup";
pub const DEFAULT_SOCKET: &str = "/run/spinup/spinup.sock";
pub const DEFAULT_CONFIG: &str = "/etc/spinup/config.toml";

/// The daemon's configuration file (TOML). Every key is optional; command
/// line flags override it. See README.md for an example.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `container`, `gvisor`, or `auto` (the strongest isolation available).
    pub default_driver: Option<String>,
    pub defaults: DefaultsConfig,
    pub container: RuntimeConfig,
    pub gvisor: RuntimeConfig,
    pub microvm: MicrovmConfig,
    pub network: network::NetConfig,
    pub e2b: E2bConfig,
}

/// `[e2b]`: the E2B-compatible listener (off unless `listen` is set).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2bConfig {
    /// Address of the E2B API (`E2B_API_URL`) and of every sandbox's envd
    /// (`E2B_SANDBOX_URL`), e.g. `127.0.0.1:3000`. Clients send an API key
    /// (`SPINUP_API_KEY`, or one made with `spinup key create`).
    pub listen: Option<SocketAddr>,
    /// Serve `{port}-{id}.{domain}` and `api.{domain}` (`E2B_DOMAIN` mode).
    pub domain: Option<String>,
    /// PEM certificate chain and key: serve TLS (HTTP/2 and HTTP/1.1).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[microvm]`: the VMM and guest kernel.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MicrovmConfig {
    /// `auto` (KVM if a probe guest boots under it, else TCG), `kvm`, `tcg`.
    pub accel: Option<String>,
    /// Your own guest kernel; with `initrd`, your own initramfs (its /init
    /// must be spinup-agent, run as `/init --vm`).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Where Debian's cloud kernel is downloaded (default `<data-dir>/microvm/kernel`).
    pub kernel_dir: Option<PathBuf>,
    /// The QEMU binary.
    pub qemu: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DefaultsConfig {
    pub vcpus: Option<f64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Runtime binary (name or path).
    pub runtime: Option<String>,
    /// gVisor platform: systrap, ptrace or kvm.
    pub platform: Option<String>,
}

impl FileConfig {
    /// Read `path`; a missing file at the default location is no error.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<FileConfig> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).with_context(|| format!("{} is not a valid config file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(FileConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Debug never prints the API key.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("socket", &self.socket)
            .field("tcp", &self.tcp)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .field("agent", &format_args!("<{} bytes>", self.agent.len()))
            .field("cgroup_parent", &self.cgroup_parent)
            .finish()
    }
}

pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub api_key: Option<String>,
    pub file: FileConfig,
    /// The static agent binary to put in every sandbox.
    pub agent: Vec<u8>,
    /// Parent cgroup for sandboxes (`spinup` → /sys/fs/cgroup/.../spinup/<id>).
    pub cgroup_parent: String,
}

/// Install the agent under the data dir, named by its content, so the hard
/// links sandboxes use never change under them.
fn install_agent(data_dir: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir)?;
    let name = format!("spinup-agent-{}", &hex::encode(Sha256::digest(bytes))[..16]);
    let path = dir.join(&name);
    if !path.exists() {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// The secret the E2B front end derives each sandbox's access tokens from:
/// 32 random bytes made once, kept in the data dir (0600), so tokens
/// survive a restart.
fn token_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("e2b-token.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => anyhow::bail!("{} is not a 32-byte key; remove it to make a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut k = vec![0u8; 32];
    getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let tmp = data_dir.join(".e2b-token.key.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&k)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(k)
}

/// One daemon per data dir: a second would fight over the same sandboxes.
/// A daemon started right after one was killed with -9 waits up to 10 s
/// for the lock: a child the dead daemon was forking when it died holds a
/// copy of the lock's fd until it execs.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join("daemon.lock"))?;
    loop {
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, _)) if std::time::Instant::now() > deadline => {
                anyhow::bail!("another spinup daemon is already using {}", data_dir.display())
            }
            Err((file, _)) => {
                f = file;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("spinup serve must run as root (it mounts overlayfs and runs an OCI runtime)");
    }
    let cg = &cfg.cgroup_parent;
    if cg.is_empty()
        || cg.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || !cg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        anyhow::bail!("--cgroup-parent '{cg}' must be a relative cgroup path like 'spinup' or 'agents/spinup'");
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o711))?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let agent = install_agent(&cfg.data_dir, &cfg.agent).context("installing the agent binary")?;
    let store = Arc::new(store::Store::open(&cfg.data_dir.join("state.db"))?);
    let envs = envs::EnvStore::new(cfg.data_dir.join("environments"), store.clone())?;
    // Probe the drivers side by side: each runs a real sandbox to find out.
    let (container, gvisor, microvm) = tokio::join!(
        spinup_driver_container::ContainerDriver::new(spinup_driver_container::Config {
            root: cfg.data_dir.join("container"),
            agent: agent.clone(),
            runtime: cfg.file.container.runtime.clone(),
            cgroup_parent: cfg.cgroup_parent.clone(),
        }),
        spinup_driver_gvisor::GvisorDriver::new(spinup_driver_gvisor::Config {
            root: cfg.data_dir.join("gvisor"),
            agent: agent.clone(),
            runtime: cfg.file.gvisor.runtime.clone(),
            platform: cfg.file.gvisor.platform.clone(),
            cgroup_parent: cfg.cgroup_parent.clone(),
        }),
        spinup_driver_microvm::MicrovmDriver::new(spinup_driver_microvm::Config {
            root: cfg.data_dir.join("microvm"),
            agent,
            accel: cfg.file.microvm.accel.clone(),
            kernel: cfg.file.microvm.kernel.clone(),
            initrd: cfg.file.microvm.initrd.clone(),
            kernel_dir: cfg.file.microvm.kernel_dir.clone(),
            qemu: cfg.file.microvm.qemu.clone(),
            cgroup_parent: cfg.cgroup_parent.clone(),
        }),
    );
    let drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(container), Arc::new(gvisor), Arc::new(microvm)];
    let d = &cfg.file.defaults;
    let defaults =
        manager::ResourcesPatch { vcpus: d.vcpus, memory_mib: d.memory_mib, disk_mib: d.disk_mib, pids: d.pids }
            .over(spinup_model::Resources::default());
    defaults.validate().context("[defaults] in the config file")?;
    let default_driver = cfg.file.default_driver.clone().unwrap_or_else(|| "container".into());
    // Sandbox networking: the slots of every sandbox the store still has
    // keep their objects; a host without ip/nft runs loopback-only.
    let live: Vec<spinup_model::NetSlot> = store.list_sandboxes()?.into_iter().filter_map(|(sb, _)| sb.net).collect();
    let host: Arc<dyn spinup_host::HostTools> = Arc::new(spinup_host::RealHost);
    let net = match network::Network::create(&cfg.data_dir, cfg.file.network.clone(), &live, host).await {
        Ok(n) => {
            tracing::info!(pool = %format!("10.{}.0.0/16", n.pool), "sandbox networking ready");
            Ok(Arc::new(n))
        }
        Err(e) => {
            let e = format!("{e:#}");
            tracing::warn!("sandbox networking unavailable: {e}");
            Err(e)
        }
    };
    let m = Arc::new(manager::Manager::new(store, envs, drivers, &default_driver, defaults).with_network(net));
    if default_driver != "auto" {
        m.driver(&default_driver).context("default_driver in the config file")?;
    }
    m.recover().await.context("recovering sandboxes from the store")?;
    m.recover_snapshots().await.context("recovering snapshots from the store")?;
    m.recover_ports().await;
    // What a killed daemon left that no row leads to (each item is logged).
    if let Err(e) = m.gc().await {
        tracing::warn!("gc at start: {e}");
    }
    m.spawn_monitor();

    // One service, seen per caller: the unix socket's is the admin's; a TCP
    // request's is its API key's (a tenant's, or the admin's).
    let base = service::Service::new(m.clone());
    let keys: Arc<dyn spinup_api::Authenticator> = Arc::new(tenants::Keys::new(base.clone(), cfg.api_key.clone()));
    // The E2B listener is bound before the unix socket, so a daemon that
    // answers on its socket serves E2B too.
    let mut e2b = None;
    if let Some(addr) = cfg.file.e2b.listen {
        let e = &cfg.file.e2b;
        let tls = match (&e.tls_cert, &e.tls_key) {
            (Some(cert), Some(key)) => Some(spinup_e2b::Tls { cert: cert.clone(), key: key.clone() }),
            (None, None) => None,
            _ => anyhow::bail!("[e2b] needs both tls_cert and tls_key, or neither"),
        };
        let cfg = spinup_e2b::Config {
            auth: keys.clone(),
            token_key: token_key(&cfg.data_dir).context("the E2B token key")?,
            domain: e.domain.clone(),
        };
        // The sandbox plane is authorized by each sandbox's own token.
        let app = spinup_e2b::router(Arc::new(base.as_caller(service::Caller::admin("e2b-envd"))), cfg);
        tracing::info!(%addr, tls = tls.is_some(), "E2B API listener (X-API-KEY required)");
        // Bind now, so a bad address or TLS file fails the start.
        let serving = spinup_e2b::serve(addr, app, tls).await?;
        e2b = Some(serving);
    }
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let unix =
        tokio::net::UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %cfg.socket.display(), data_dir = %cfg.data_dir.display(), "spinup daemon listening");
    // The native API and MCP at /mcp, on the unix socket and (behind the
    // same API key check) on the TCP listener.
    let svc: Arc<dyn spinup_api::SandboxService> = Arc::new(base.clone());
    let app = spinup_http::router(svc.clone()).merge(spinup_mcp::router(svc));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(serving) = e2b {
        tasks.spawn(async move { serving.await.context("E2B listener") });
    }
    {
        let app = app.clone();
        tasks.spawn(async move { axum::serve(unix, app).await.context("unix listener") });
    }
    if let Some(addr) = cfg.tcp {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, configured_key = cfg.api_key.is_some(), "TCP listener (bearer API key required)");
        let app = spinup_http::with_auth(app, keys.clone());
        // Exec streams are many small writes: no Nagle delay on them.
        use axum::serve::ListenerExt;
        let l = l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tasks.spawn(async move { axum::serve(l, app).await.context("tcp listener") });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tasks.join_next() => { r.context("no listener task")???; }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Sandboxes keep running; a restarted daemon re-attaches.
    tracing::info!("daemon stopping; sandboxes keep running");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_debug_never_prints_the_api_key() {
        let cfg = super::Config {
            data_dir: "/d".into(),
            socket: "/s".into(),
            tcp: None,
            api_key: Some("k3y-v4lue".into()),
            file: Default::default(),
            agent: vec![0; 3],
            cgroup_parent: "spinup".into(),
        };
        let s = format!("{cfg:?}");
        assert!(!s.contains("k3y-v4lue") && s.contains("<redacted>"), "{s}");
    }
}
