//! `spinup serve`: the daemon, configured from its flags over its config
//! file. Runs on its own (multi-threaded) runtime, not the client's.

use std::path::PathBuf;

/// The static agent, built by build.rs and embedded here.
static AGENT: &[u8] = include_bytes!(env!("SPINUP_EMBEDDED_AGENT"));

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "SPINUP_DATA_DIR", default_value = spinup_daemon::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, env = "SPINUP_SOCKET", default_value = spinup_daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also listen on TCP: every request needs a key as a bearer token
    /// (SPINUP_API_KEY, the admin's, or one made with `spinup key create`).
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
    /// Also serve the E2B-compatible API here (`[e2b] listen`): point the
    /// E2B SDKs at it with E2B_API_URL and E2B_SANDBOX_URL, and
    /// E2B_API_KEY=SPINUP_API_KEY.
    #[arg(long, env = "SPINUP_E2B_LISTEN")]
    e2b_listen: Option<std::net::SocketAddr>,
    /// Daemon config file (TOML); a missing default file is fine.
    #[arg(long, env = "SPINUP_CONFIG")]
    config: Option<PathBuf>,
    /// OCI runtime for the container driver (crun, runc or a path); probed when unset.
    #[arg(long, env = "SPINUP_RUNTIME")]
    runtime: Option<String>,
    /// gVisor platform (systrap, ptrace, kvm); probed when unset.
    #[arg(long, env = "SPINUP_GVISOR_PLATFORM")]
    gvisor_platform: Option<String>,
    /// Driver used when a create names none: container, gvisor, microvm or auto.
    #[arg(long, env = "SPINUP_DEFAULT_DRIVER")]
    default_driver: Option<String>,
    /// microVM accelerator: auto (KVM if a probe guest boots under it, else TCG), kvm or tcg.
    #[arg(long, env = "SPINUP_ACCEL")]
    accel: Option<String>,
    /// microVM guest kernel to use instead of Debian's cloud kernel.
    #[arg(long, env = "SPINUP_KERNEL")]
    kernel: Option<PathBuf>,
    /// microVM initramfs (its /init must be spinup-agent); needs --kernel.
    #[arg(long, env = "SPINUP_INITRD")]
    initrd: Option<PathBuf>,
    /// Where the downloaded guest kernel lives (default <data-dir>/microvm/kernel).
    #[arg(long, env = "SPINUP_KERNEL_DIR")]
    kernel_dir: Option<PathBuf>,
    /// Parent cgroup for sandboxes.
    #[arg(long, env = "SPINUP_CGROUP_PARENT", default_value = "spinup")]
    cgroup_parent: String,
}

/// Runs until the daemon stops; exits with 1 when it fails.
pub fn main(args: Args, api_key: Option<String>) {
    tracing_subscriber::fmt()
        .with_env_filter({
            let f = tracing_subscriber::EnvFilter::try_from_env("SPINUP_LOG").unwrap_or_else(|_| "info".into());
            // rmcp logs every stateless MCP request at info ("Service
            // initialized", "input stream terminated"): its warnings only,
            // unless SPINUP_LOG names it.
            if std::env::var("SPINUP_LOG").is_ok_and(|v| v.contains("rmcp")) {
                f
            } else {
                f.add_directive("rmcp=warn".parse().expect("a valid directive"))
            }
        })
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let cfg = match config(args, api_key) {
        Ok(cfg) => cfg,
        Err(e) => fail(e),
    };
    if let Err(e) = rt.block_on(spinup_daemon::run(cfg)) {
        fail(e);
    }
}

#[allow(clippy::exit, reason = "the daemon could not start: say why and end, as before")]
fn fail(e: anyhow::Error) -> ! {
    eprintln!("spinup serve: {e:#}");
    std::process::exit(1);
}

/// The config file (the default one may be missing), each flag over it.
fn config(args: Args, api_key: Option<String>) -> anyhow::Result<spinup_daemon::Config> {
    let explicit = args.config.is_some();
    let path = args.config.unwrap_or_else(|| PathBuf::from(spinup_daemon::DEFAULT_CONFIG));
    let mut file = spinup_daemon::FileConfig::load(&path, explicit)?;
    file.container.runtime = args.runtime.or(file.container.runtime);
    file.gvisor.platform = args.gvisor_platform.or(file.gvisor.platform);
    file.default_driver = args.default_driver.or(file.default_driver);
    file.microvm.accel = args.accel.or(file.microvm.accel);
    file.microvm.kernel = args.kernel.or(file.microvm.kernel);
    file.microvm.initrd = args.initrd.or(file.microvm.initrd);
    file.microvm.kernel_dir = args.kernel_dir.or(file.microvm.kernel_dir);
    file.e2b.listen = args.e2b_listen.or(file.e2b.listen);
    Ok(spinup_daemon::Config {
        data_dir: args.data_dir,
        socket: args.socket,
        tcp: args.tcp,
        api_key,
        file,
        agent: AGENT.to_vec(),
        cgroup_parent: args.cgroup_parent,
    })
}
