//! Environments: content-addressed read-only layers plus defaults.
//!
//! A layer is identified by the sha256 of its uncompressed tar stream (the
//! OCI "diff id") and stored unpacked at `layers/<hex>/`, shared read-only
//! by every sandbox that uses it. Snapshots and OCI images add layers the
//! same way.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use spinup_model::{now_ms, Environment, EnvironmentConfig, Error, Result};
use tokio::sync::mpsc::UnboundedSender;

use crate::store::Store;

/// Built-in recipes, buildable by name.
pub const BUILTINS: [&str; 4] = ["busybox", "debian", "base", "code-interpreter"];

/// A Debian bookworm recipe: what mmdebstrap installs on minbase, the
/// hooks it runs in the new root, and the environment's exec defaults.
struct DebianRecipe {
    name: &'static str,
    /// For the first progress line.
    summary: &'static str,
    /// Groups of packages, installed together (a recipe may build on
    /// another's list).
    packages: &'static [&'static [&'static str]],
    /// mmdebstrap options: hooks (each run by `sh -c` with the root as
    /// `$1`) and apt options.
    hooks: &'static [&'static str],
    config: fn() -> EnvironmentConfig,
}

/// `debian`: bookworm minbase + Python, git and curl; runs as root.
const DEBIAN: DebianRecipe = DebianRecipe {
    name: "debian",
    summary: "bookworm + python3, pip, git, curl",
    packages: &[&["python3", "python3-pip", "python3-venv", "git", "curl", "ca-certificates", "procps"]],
    hooks: &[],
    config: default_config,
};

/// What `base` installs.
const BASE_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "passwd",
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "git",
    "curl",
    "ca-certificates",
    "procps",
    "sudo",
];

/// `base`: shaped like E2B's base sandbox image. Bookworm minbase + Python,
/// Node.js, git, curl and sudo, and an unprivileged `user` (uid/gid 1000,
/// home /home/user, bash, passwordless sudo) that processes run as by
/// default, in its home.
const BASE: DebianRecipe = DebianRecipe {
    name: "base",
    summary: "bookworm + python3, pip, venv, nodejs, npm, git, curl, sudo; user `user` (1000)",
    packages: &[BASE_PACKAGES],
    hooks: &[
        r#"--customize-hook=chroot "$1" groupadd --gid 1000 user"#,
        r#"--customize-hook=chroot "$1" useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user"#,
        r#"--customize-hook=chroot "$1" sh -c 'echo "user ALL=(ALL:ALL) NOPASSWD: ALL" > /etc/sudoers.d/user && chmod 0440 /etc/sudoers.d/user && visudo -cf /etc/sudoers.d/user'"#,
    ],
    config: base_config,
};

/// `code-interpreter`: `base` plus what the code interpreter's kernels
/// need, all from Debian: ipykernel and jupyter_client (python), numpy,
/// pandas, matplotlib; Node.js is base's. About 1.6 GB: Debian's
/// matplotlib and ipykernel depend (not merely recommend) on scipy,
/// pythran's C++ toolchain and gdb. Matplotlib's font cache is made at
/// build time, so the first chart does not pay for it.
const CODE_INTERPRETER: DebianRecipe = DebianRecipe {
    name: "code-interpreter",
    summary: "base + ipykernel, jupyter_client, numpy, pandas, matplotlib",
    packages: &[
        BASE_PACKAGES,
        &["python3-ipykernel", "python3-jupyter-client", "python3-numpy", "python3-pandas", "python3-matplotlib"],
    ],
    hooks: &[
        BASE.hooks[0],
        BASE.hooks[1],
        BASE.hooks[2],
        r#"--customize-hook=chroot "$1" runuser -u user -- env HOME=/home/user python3 -c "import matplotlib.pyplot""#,
    ],
    config: base_config,
};

/// Progress lines for long work; `None` when nobody watches.
pub type Progress = Option<UnboundedSender<String>>;

fn say(p: &Progress, msg: impl Into<String>) {
    if let Some(tx) = p {
        let _ = tx.send(msg.into());
    }
}

#[derive(Debug)]
pub struct EnvStore {
    root: PathBuf,
    store: Arc<Store>,
    building: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Environment names: like image names, never a path.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "environment name '{name}' must be 1-64 characters of [a-z0-9-_.], not starting with '.'"
        )))
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}

impl EnvStore {
    pub fn new(root: PathBuf, store: Arc<Store>) -> Result<EnvStore> {
        for d in ["layers", "tmp", "blobs/sha256"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(|e| Error::internal(format!("creating {}", root.join(d).display()), e))?;
        }
        // Layers may hold a guest's set-id files: only root may look inside.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::internal(format!("securing {}", root.display()), e))?;
        // Half-finished imports from a killed daemon.
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        Ok(EnvStore { root, store, building: Default::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The daemon's data dir (the environment store lives under it).
    pub fn data_dir(&self) -> PathBuf {
        self.root.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone())
    }

    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.trim_start_matches("sha256:"))
    }

    /// Where a layer's tar (its OCI blob) is kept, when it was made here.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    pub(crate) fn tmp(&self, what: &str) -> PathBuf {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).expect("OS randomness");
        self.root.join("tmp").join(format!("{what}-{}", hex::encode(b)))
    }

    pub fn get(&self, name: &str) -> Result<Environment> {
        validate_name(name)?;
        self.store.get_environment(name)?.ok_or_else(|| Error::not_found("environment", name))
    }

    pub fn list(&self) -> Result<Vec<Environment>> {
        self.store.list_environments()
    }

    /// The environment, building a built-in recipe on first use.
    pub async fn resolve(&self, name: &str, progress: Progress) -> Result<Environment> {
        match self.get(name) {
            Err(Error::NotFound { .. }) if BUILTINS.contains(&name) => self.build(name, progress).await,
            other => other,
        }
    }

    /// Unpack a tar stream into a new layer; returns its digest. Device
    /// nodes are skipped (every sandbox gets its own /dev), and the tar
    /// crate refuses entries that would land outside the layer.
    fn unpack_layer(&self, reader: impl Read, progress: &Progress) -> Result<(String, u64)> {
        let staging = self.tmp("layer");
        std::fs::create_dir_all(&staging)?;
        let mut hr = HashingReader { inner: reader, hasher: Sha256::new(), bytes: 0 };
        let res = unpack_into(&staging, &mut hr, progress, false);
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::InvalidArgument(format!("cannot unpack the layer tarball: {e}")));
        }
        // Hash the rest of the stream too (tar padding), so the digest is of
        // the whole input.
        let _ = io::copy(&mut hr, &mut io::sink());
        let digest = hex::encode(hr.hasher.finalize());
        let dest = self.layer_dir(&digest);
        if dest.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        } else if let Err(e) = std::fs::rename(&staging, &dest) {
            // The same layer stored meanwhile by someone else is fine.
            let _ = std::fs::remove_dir_all(&staging);
            if !dest.is_dir() {
                return Err(Error::internal("storing layer", e));
            }
        }
        Ok((format!("sha256:{digest}"), dir_size(&dest)))
    }

    /// Store a layer tar made here (a snapshot's): unpacked for sandboxes
    /// to stack, and the tar itself kept as the layer's blob. Returns the
    /// digest and the tar's size.
    pub fn import_layer_file(&self, tar: &Path) -> Result<(String, u64)> {
        let size = std::fs::metadata(tar)?.len();
        let (digest, _) = self.unpack_layer(std::fs::File::open(tar)?, &None)?;
        let blob = self.blob_path(&digest);
        if !blob.exists() {
            std::fs::rename(tar, &blob).map_err(|e| Error::internal("storing the layer blob", e))?;
        }
        Ok((digest, size))
    }

    /// Take a layer directory made here (whose tar has `digest`) into the
    /// store; it is moved, or dropped when the layer exists already.
    pub fn adopt_layer(&self, dir: &Path, digest: &str) -> Result<()> {
        let dest = self.layer_dir(digest);
        if dest.exists() {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(());
        }
        if let Err(e) = std::fs::rename(dir, &dest) {
            let _ = std::fs::remove_dir_all(dir);
            if !dest.is_dir() {
                return Err(Error::internal("storing layer", e));
            }
        }
        Ok(())
    }

    /// A layer's OCI tar: the blob kept when the layer came as a tar, else
    /// written from the layer directory (the same bytes its digest names).
    pub fn layer_blob(&self, digest: &str) -> Result<PathBuf> {
        let blob = self.blob_path(digest);
        if blob.is_file() {
            return Ok(blob);
        }
        let dir = self.layer_dir(digest);
        if !dir.is_dir() {
            return Err(Error::not_found("layer", digest));
        }
        let tmp = self.tmp("blob");
        let res = (|| -> io::Result<String> {
            let f = std::fs::File::create(&tmp)?;
            let w = crate::layers::export_upper(&dir, io::BufWriter::new(f))?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let mut h = Sha256::new();
            io::copy(&mut std::fs::File::open(&tmp)?, &mut h)?;
            Ok(hex::encode(h.finalize()))
        })();
        match res {
            Ok(d) if format!("sha256:{d}") == digest || d == digest => {
                std::fs::rename(&tmp, &blob).map_err(|e| Error::internal("storing the layer blob", e))?;
                Ok(blob)
            }
            Ok(d) => {
                let _ = std::fs::remove_file(&tmp);
                Err(Error::Internal(format!("layer {digest} exports as sha256:{d}; its directory was changed")))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(Error::internal("writing the layer blob", e))
            }
        }
    }

    /// Unpack a layer tar into a scratch directory (not content-addressed).
    pub fn unpack_scratch(&self, tar: &Path) -> Result<PathBuf> {
        let dir = self.tmp("scratch");
        std::fs::create_dir_all(&dir)?;
        let res = std::fs::File::open(tar).and_then(|f| unpack_into(&dir, io::BufReader::new(f), &None, true));
        match res {
            Ok(()) => Ok(dir),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(Error::Internal(format!("unpacking the sandbox's changes: {e}")))
            }
        }
    }

    /// Delete layers (and their blobs) that nothing in `keep` names.
    pub fn remove_layers_except(&self, candidates: &[String], keep: &std::collections::HashSet<String>) {
        for l in candidates {
            if !keep.contains(l) {
                let _ = std::fs::remove_dir_all(self.layer_dir(l));
                let _ = std::fs::remove_file(self.blob_path(l));
            }
        }
    }

    fn record(&self, name: &str, layers: Vec<String>, size: u64, config: EnvironmentConfig) -> Result<Environment> {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&(&layers, &config)).unwrap());
        let env = Environment {
            name: name.to_string(),
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            layers,
            config,
            size_bytes: size,
            created_at: now_ms(),
        };
        self.store.put_environment(&env)?;
        Ok(env)
    }

    /// Import a rootfs tarball (plain or gzip) read from `reader`.
    pub fn import_tar(&self, name: &str, reader: impl Read, progress: &Progress) -> Result<Environment> {
        self.import_tar_with(name, reader, progress, default_config())
    }

    /// `import_tar` with the environment's exec defaults.
    fn import_tar_with(
        &self,
        name: &str,
        reader: impl Read,
        progress: &Progress,
        config: EnvironmentConfig,
    ) -> Result<Environment> {
        validate_name(name)?;
        let mut br = io::BufReader::new(reader);
        let gz = {
            use io::BufRead;
            let head = br.fill_buf()?;
            head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
        };
        say(progress, format!("importing {} layer", if gz { "gzip" } else { "tar" }));
        let (digest, size) = if gz {
            self.unpack_layer(flate2::read::GzDecoder::new(br), progress)?
        } else {
            self.unpack_layer(br, progress)?
        };
        say(progress, format!("layer {digest} ({} MiB)", size >> 20));
        self.record(name, vec![digest], size, config)
    }

    /// Import a host directory as a one-layer environment.
    pub fn import_dir(&self, name: &str, dir: &Path, progress: &Progress) -> Result<Environment> {
        validate_name(name)?;
        let tarfile = self.tmp("dir.tar");
        let res = (|| -> io::Result<()> {
            let f = std::fs::File::create(&tarfile)?;
            let mut b = tar::Builder::new(io::BufWriter::new(f));
            // Complete, not Deterministic: that mode rewrites permissions to
            // 0755/0644 (a world-writable /tmp would lose its mode).
            b.mode(tar::HeaderMode::Complete);
            b.follow_symlinks(false);
            b.append_dir_all(".", dir)?;
            b.into_inner()?.flush()
        })();
        let out = res
            .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", dir.display())))
            .and_then(|_| self.import_tar(name, std::fs::File::open(&tarfile)?, progress));
        let _ = std::fs::remove_file(&tarfile);
        out
    }

    /// Build a built-in recipe (once; concurrent callers wait for it).
    pub async fn build(&self, name: &str, progress: Progress) -> Result<Environment> {
        if !BUILTINS.contains(&name) {
            return Err(Error::InvalidArgument(format!(
                "no built-in recipe '{name}'; recipes: {}",
                BUILTINS.join(", ")
            )));
        }
        let lock = self.building.lock().await.entry(name.to_string()).or_default().clone();
        let _guard = lock.lock().await;
        if let Ok(env) = self.get(name) {
            say(&progress, format!("environment {name} is already built"));
            return Ok(env);
        }
        let staging = self.tmp(name);
        let res = match name {
            "busybox" => self.build_busybox(&staging, &progress).await,
            "base" => self.build_debian(&BASE, &staging, &progress).await,
            "code-interpreter" => self.build_debian(&CODE_INTERPRETER, &staging, &progress).await,
            _ => self.build_debian(&DEBIAN, &staging, &progress).await,
        };
        let _ = std::fs::remove_dir_all(&staging);
        res
    }

    async fn build_busybox(&self, staging: &Path, progress: &Progress) -> Result<Environment> {
        let busybox =
            ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(
                || Error::Unavailable("busybox is not installed; run: apt-get install busybox-static".into()),
            )?;
        say(progress, format!("building busybox from {}", busybox.display()));
        let list = spinup_host::run(
            tokio::process::Command::new(&busybox).arg("--list-full"),
            spinup_host::Run::new("run: apt-get install busybox-static").failed_as(Error::Unavailable),
        )
        .await?;
        let root = staging.join("rootfs");
        for d in
            ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "home", "var/tmp"]
        {
            std::fs::create_dir_all(root.join(d))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
        std::fs::set_permissions(root.join("var/tmp"), std::fs::Permissions::from_mode(0o1777))?;
        std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;
        std::fs::copy(&busybox, root.join("bin/busybox"))?;
        for applet in list.stdout.lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
                continue;
            }
            let link = root.join(applet);
            if !link.exists() {
                let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n",
        )?;
        std::fs::write(root.join("etc/group"), "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")?;
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
        let env = self.import_dir("busybox", &root, progress)?;
        say(progress, format!("built busybox: {}", env.digest));
        Ok(env)
    }

    /// A Debian recipe built with mmdebstrap from the host's own mirror;
    /// its output streams to `progress` line by line.
    async fn build_debian(&self, recipe: &DebianRecipe, staging: &Path, progress: &Progress) -> Result<Environment> {
        let tool = spinup_host::which("mmdebstrap")
            .ok_or_else(|| Error::Unavailable("mmdebstrap is not installed; run: apt-get install mmdebstrap".into()))?;
        let mirror = debian_mirror().ok_or_else(|| {
            Error::Unavailable(
                "no Debian mirror found in /etc/apt/sources.list*; set SPINUP_DEBIAN_MIRROR to your mirror's URL"
                    .into(),
            )
        })?;
        std::fs::create_dir_all(staging)?;
        let name = recipe.name;
        let started = std::time::Instant::now();
        // A host-wide cache of recipe builds (SPINUP_RECIPE_CACHE): one
        // build per recipe, mirror and week, whatever the data dir; the
        // lock makes a second daemon wait for the first's build.
        let cached = recipe_cache(recipe, &mirror);
        let _lock = match &cached {
            Some(c) => Some(lock_cache(c).await?),
            None => None,
        };
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            say(progress, format!("using the cached build of {name}: {}", c.display()));
            let env = self.import_tar_with(name, std::fs::File::open(c)?, progress, (recipe.config)())?;
            say(progress, format!("built {name}: {} ({} MiB) from the cache", env.digest, env.size_bytes >> 20));
            return Ok(env);
        }
        let tarball = staging.join("rootfs.tar");
        say(progress, format!("building {name} ({}) with mmdebstrap from {mirror}", recipe.summary));
        let mut child = tokio::process::Command::new(tool)
            .arg("--variant=minbase")
            .arg(format!("--include={}", recipe.packages.concat().join(",")))
            .arg("--mode=root")
            .args(recipe.hooks)
            .arg("bookworm")
            .arg(&tarball)
            .arg(&mirror)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut tail: Vec<String> = vec![];
        if let Some(err) = child.stderr.take() {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                say(progress, l.clone());
                tail.push(l);
                if tail.len() > 10 {
                    tail.remove(0);
                }
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(Error::Unavailable(format!("mmdebstrap failed ({status}): {}", tail.join(" | "))));
        }
        if let Some(c) = &cached {
            let tmp = c.with_extension("tmp");
            std::fs::copy(&tarball, &tmp).and_then(|_| std::fs::rename(&tmp, c)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::internal("caching the recipe build", e)
            })?;
        }
        say(progress, format!("importing the {name} root filesystem"));
        let env = self.import_tar_with(name, std::fs::File::open(&tarball)?, progress, (recipe.config)())?;
        say(
            progress,
            format!("built {name}: {} ({} MiB) in {} s", env.digest, env.size_bytes >> 20, started.elapsed().as_secs()),
        );
        Ok(env)
    }

    /// Forget an environment; the caller collects its layers (see
    /// `Manager::gc_layers`: snapshots and sandboxes may still stack them).
    pub fn forget(&self, name: &str) -> Result<()> {
        self.get(name)?;
        self.store.delete_environment(name)?;
        Ok(())
    }
}

/// [`crate::layers::unpack`], saying how far it got every 5000 files.
fn unpack_into(dir: &Path, reader: impl Read, progress: &Progress, keep_fifos: bool) -> io::Result<()> {
    crate::layers::unpack(dir, reader, keep_fifos, |n| {
        if n.is_multiple_of(5000) {
            say(progress, format!("unpacked {n} files"));
        }
    })
}

fn default_config() -> EnvironmentConfig {
    EnvironmentConfig { env: vec![], workdir: String::new(), user: String::new() }
}

/// `base` runs as `user` in its home. The agent sets PATH, HOME, USER and
/// LOGNAME from the user's passwd entry; LANG picks glibc's built-in UTF-8
/// locale (minbase has no others).
fn base_config() -> EnvironmentConfig {
    EnvironmentConfig { env: vec!["LANG=C.UTF-8".into()], workdir: "/home/user".into(), user: "user".into() }
}

/// How long a cached recipe build is used before it is built afresh (so
/// security updates arrive).
const RECIPE_CACHE_DAYS: u64 = 7;

/// Where a build of `recipe` from `mirror` is cached, when
/// `SPINUP_RECIPE_CACHE` names a directory: keyed by everything that
/// changes its output.
fn recipe_cache(recipe: &DebianRecipe, mirror: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SPINUP_RECIPE_CACHE").filter(|d| !d.is_empty())?);
    let mut h = Sha256::new();
    for part in [recipe.name, "bookworm", "minbase", mirror]
        .iter()
        .chain(recipe.packages.iter().copied().flatten())
        .chain(recipe.hooks)
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Some(dir.join(format!("{}-{}.tar", recipe.name, &hex::encode(h.finalize())[..16])))
}

fn fresh(tar: &Path) -> bool {
    let max = std::time::Duration::from_secs(RECIPE_CACHE_DAYS * 24 * 3600);
    std::fs::metadata(tar).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age < max))
}

/// An exclusive lock on one cached build (held until dropped).
async fn lock_cache(tar: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let lock = tar.with_extension("lock");
    tokio::task::spawn_blocking(move || {
        if let Some(d) = lock.parent() {
            std::fs::create_dir_all(d)?;
        }
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::internal("locking the recipe cache", e))
    })
    .await
    .map_err(|e| Error::internal("locking the recipe cache", e))?
}

/// The Debian mirror this host already uses (so no address is baked in).
fn debian_mirror() -> Option<String> {
    if let Ok(m) = std::env::var("SPINUP_DEBIAN_MIRROR") {
        return Some(m);
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines() {
            let line = line.trim();
            // one-line format: deb [opts] URI suite components
            if let Some(rest) = line.strip_prefix("deb ") {
                let uri = rest.split_whitespace().find(|w| w.starts_with("http"));
                if let Some(u) = uri {
                    if !u.contains("security") {
                        return Some(u.to_string());
                    }
                }
            }
            // deb822 format
            if let Some(u) = line.strip_prefix("URIs:") {
                let u = u.split_whitespace().next().unwrap_or("");
                if u.starts_with("http") && !u.contains("security") {
                    return Some(u.to_string());
                }
            }
        }
    }
    None
}
