//! The Spinup daemon: the HTTP API, the lifecycle manager, the environment
//! store and the SQLite state, wired to the drivers.

pub mod api;
pub mod envs;
pub mod manager;
pub mod openapi;
pub mod store;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use spinup_model::Driver;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/spinup";
pub const DEFAULT_SOCKET: &str = "/run/spinup/spinup.sock";

pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub api_key: Option<String>,
    /// Force an OCI runtime for the container driver.
    pub runtime: Option<String>,
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

/// One daemon per data dir: a second would fight over the same sandboxes.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join("daemon.lock"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("another spinup daemon is already using {}", data_dir.display()))
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
    let container = spinup_driver_container::ContainerDriver::new(spinup_driver_container::Config {
        root: cfg.data_dir.join("container"),
        agent,
        runtime: cfg.runtime.clone(),
        cgroup_parent: cfg.cgroup_parent.clone(),
    })
    .await;
    let drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(container)];
    let m = Arc::new(manager::Manager::new(store, envs, drivers, "container"));
    m.recover().await.context("recovering sandboxes from the store")?;
    m.spawn_monitor();

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let unix =
        tokio::net::UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %cfg.socket.display(), data_dir = %cfg.data_dir.display(), "spinup daemon listening");
    let app = api::router(m.clone());
    let mut tasks = tokio::task::JoinSet::new();
    {
        let app = app.clone();
        tasks.spawn(async move { axum::serve(unix, app).await.context("unix listener") });
    }
    if let Some(addr) = cfg.tcp {
        let key = cfg.api_key.clone().filter(|k| !k.is_empty()).context("--tcp needs an API key (SPINUP_API_KEY)")?;
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, "TCP listener (bearer API key required)");
        let app = api::with_api_key(app, key);
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
