//! `spinup create`: a sandbox from an environment or a snapshot; prints its id.

use anyhow::Result;
use spinup_api::{CreateRequest, ResourcesPatch, Sandbox};

use crate::client::enc;
use crate::commands::env::build_env;
use crate::ctx::Ctx;
use crate::flags;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "busybox")]
    env: String,
    #[arg(long)]
    driver: Option<String>,
    /// Destroy the sandbox this many seconds from now.
    #[arg(long)]
    timeout: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids: Option<u64>,
    #[arg(long)]
    disk: Option<u64>,
    /// key=value, repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Start from a snapshot (id or name) instead of --env; any driver.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "env")]
    from_snapshot: Option<String>,
    /// What the timeout does: destroy (default) or pause.
    #[arg(long, value_name = "destroy|pause")]
    on_timeout: Option<String>,
    /// Resume by itself on exec or file access when paused.
    #[arg(long)]
    auto_resume: bool,
    /// Network mode: none (default: loopback only), allow (only --allow), open.
    #[arg(long, value_name = "none|allow|open")]
    net: Option<String>,
    /// Domain (pypi.org, *.example.com) or IPv4 CIDR the sandbox may reach; repeatable.
    #[arg(long = "allow", value_name = "DOMAIN|CIDR")]
    allow: Vec<String>,
    /// A static name for the sandbox's resolver, NAME=IPv4; repeatable.
    #[arg(long = "add-host", value_name = "NAME=IP")]
    hosts: Vec<String>,
    /// Attach a secret: NAME (file), NAME:env, NAME:proxy=HOST[,HOST]; repeatable.
    #[arg(long = "secret", value_name = "NAME[:MODE]")]
    secrets: Vec<String>,
}

impl Args {
    fn request(self) -> Result<CreateRequest> {
        let resources =
            ResourcesPatch { vcpus: self.cpus, memory_mib: self.memory, disk_mib: self.disk, pids: self.pids };
        let any_resource = [self.cpus.is_some(), self.memory.is_some(), self.disk.is_some(), self.pids.is_some()];
        let network = self.net.is_some() || !self.allow.is_empty() || !self.hosts.is_empty();
        Ok(CreateRequest {
            env: self.from_snapshot.is_none().then_some(self.env),
            driver: self.driver,
            timeout_s: self.timeout,
            resources: any_resource.contains(&true).then_some(resources),
            labels: flags::labels(&self.labels)?,
            on_timeout: self.on_timeout.map(|o| flags::wire("--on-timeout", &o)).transpose()?,
            auto_resume: self.auto_resume.then_some(true),
            network: network.then(|| flags::policy(self.net.as_deref(), &self.allow, &self.hosts)).transpose()?,
            secrets: flags::secret_mounts(&self.secrets)?,
            from_snapshot: self.from_snapshot,
            env_vars: Default::default(),
        })
    }
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let c = &ctx.client;
    // A built-in environment is built on first use, with a progress spinner.
    if args.from_snapshot.is_none()
        && spinup_daemon::envs::BUILTINS.contains(&args.env.as_str())
        && c.get(&format!("/v1/environments/{}", enc(&args.env))).await.is_err()
    {
        build_env(c, &args.env, ctx.json).await?;
    }
    let v = c.post("/v1/sandboxes", &args.request()?).await?;
    ctx.emit(&v, |sb: Sandbox| println!("{}", sb.id))
}
