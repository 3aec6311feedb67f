//! The guest kernel: Debian's cloud kernel, downloaded with apt into the
//! data dir and unpacked there (never installed on the host's /boot), and
//! the initramfs around the agent: the modules the guest needs, in load
//! order, and the agent as /init.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use spinup_model::{Error, Result};

use crate::cpio;

/// Debian's metapackage for the newest cloud kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest loads before it can reach its disk and the host:
/// virtio over MMIO, the block device, the serial port, and vsock for
/// hosts with vhost-vsock. Their dependencies come from modules.dep.
pub const GUEST_MODULES: [&str; 7] = [
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// The agent's path in the initramfs: the guest's init (`rdinit=`).
pub const AGENT_PATH: &str = "/run/spinup/spinup-agent";

#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// Unpacked `lib/modules/<release>` (absent for a user's own kernel).
    pub modules: Option<PathBuf>,
    pub release: String,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// A tool that fails leaves the driver without a kernel: unavailable.
async fn run(cmd: &mut tokio::process::Command) -> Result<String> {
    spinup_host::run(cmd, crate::TOOL.failed_as(Error::Unavailable)).await.map(|o| o.stdout)
}

/// The kernel under `dir` (`<data>/microvm/kernel`), fetching it first if
/// it is not there. Concurrent daemons sharing `dir` fetch it once.
pub async fn ensure(dir: &Path) -> Result<Kernel> {
    std::fs::create_dir_all(dir).map_err(|e| internal("kernel dir", e))?;
    if let Some(k) = installed(dir) {
        return Ok(k);
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| internal("kernel lock", e))?;
    let lock = tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive))
        .await
        .map_err(|e| internal("kernel lock", e))?
        .map_err(|(_, e)| internal("kernel lock", e))?;
    if let Some(k) = installed(dir) {
        return Ok(k);
    }
    let r = fetch(dir).await;
    drop(lock);
    r
}

fn installed(dir: &Path) -> Option<Kernel> {
    let release = std::fs::read_to_string(dir.join("current")).ok()?.trim().to_string();
    let root = dir.join(&release);
    let vmlinuz = root.join("vmlinuz");
    let modules = root.join("modules");
    (vmlinuz.is_file() && modules.join("kernel").is_dir()).then_some(Kernel {
        vmlinuz,
        modules: Some(modules),
        release,
    })
}

async fn fetch(dir: &Path) -> Result<Kernel> {
    // The metapackage names the versioned image package it depends on.
    let deps = run(tokio::process::Command::new("apt-cache").args(["depends", "--important", KERNEL_PACKAGE])).await?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "apt knows no {KERNEL_PACKAGE}: run `apt-get update`, or pass --kernel and --initrd"
            ))
        })?
        .to_string();
    let release = pkg.trim_start_matches("linux-image-").to_string();
    tracing::info!(package = %pkg, "downloading the microVM guest kernel (apt-get download, once)");
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| internal("kernel download dir", e))?;
    let result = async {
        run(tokio::process::Command::new("apt-get").args(["download", "-q", &pkg]).current_dir(&tmp)).await?;
        let deb = std::fs::read_dir(&tmp)
            .map_err(|e| internal("kernel download dir", e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| Error::Unavailable(format!("apt-get download {pkg} produced no .deb")))?;
        tracing::info!(deb = %deb.display(), "unpacking the guest kernel");
        let unpacked = tmp.join("root");
        run(tokio::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked)).await?;
        let dest = dir.join(&release);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(&dest).map_err(|e| internal("kernel dir", e))?;
        std::fs::rename(unpacked.join(format!("boot/vmlinuz-{release}")), dest.join("vmlinuz"))
            .map_err(|e| internal("kernel image in the package", e))?;
        std::fs::rename(unpacked.join(format!("lib/modules/{release}")), dest.join("modules"))
            .map_err(|e| internal("modules in the package", e))?;
        std::fs::write(dir.join(".current.tmp"), &release).map_err(|e| internal("kernel dir", e))?;
        std::fs::rename(dir.join(".current.tmp"), dir.join("current")).map_err(|e| internal("kernel dir", e))?;
        Ok::<(), Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    installed(dir).ok_or_else(|| Error::Internal("the unpacked kernel is incomplete".into()))
}

/// Every module file under `modules`, by module name (`virtio_mmio`).
fn module_files(modules: &Path) -> std::collections::HashMap<String, PathBuf> {
    let mut out = std::collections::HashMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                out.insert(stem.replace('-', "_"), p);
            }
        }
    }
    out
}

/// The `depends=` of a module, read from its `.modinfo` strings (the
/// package ships no modules.dep: depmod runs at install time).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else { return vec![] };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")).collect()
}

/// `wanted` modules and their dependencies, dependencies first. Modules
/// built into the kernel (no file) are skipped.
pub fn module_order(wanted: &[&str], file_of: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<Vec<(String, Vec<u8>)>> {
    fn visit(
        name: &str,
        file_of: &dyn Fn(&str) -> Option<Vec<u8>>,
        order: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(Error::Internal(format!("module dependency loop at {name}")));
        }
        let Some(data) = file_of(name) else { return Ok(()) };
        for d in modinfo_depends(&data) {
            visit(&d, file_of, order, depth + 1)?;
        }
        order.push((name.to_string(), data));
        Ok(())
    }
    let mut order = vec![];
    for w in wanted {
        visit(w, file_of, &mut order, 0)?;
    }
    Ok(order)
}

/// The initramfs for `kernel` around `agent`, built once per (agent,
/// kernel) pair and cached under `dir`.
pub fn initramfs(dir: &Path, kernel: &Kernel, agent: &Path) -> Result<PathBuf> {
    let agent_bytes = std::fs::read(agent).map_err(|e| internal("reading the agent", e))?;
    let key = hex::encode(
        Sha256::new()
            .chain_update(&agent_bytes)
            .chain_update(kernel.release.as_bytes())
            .chain_update(GUEST_MODULES.join(","))
            .finalize(),
    );
    let path = dir.join(format!("initramfs-{}.cpio", &key[..16]));
    if path.is_file() {
        return Ok(path);
    }
    let mut a = cpio::Archive::default();
    for d in ["dev", "proc", "sys", "newroot", "modules", "run", "run/spinup"] {
        a.dir(d);
    }
    // Where the agent lives in every sandbox (PID 1's command line is the
    // same whatever the driver).
    a.file(AGENT_PATH.trim_start_matches('/'), 0o755, &agent_bytes);
    let mut order = vec![];
    if let Some(mdir) = &kernel.modules {
        let files = module_files(mdir);
        let read = |name: &str| files.get(name).and_then(|p| std::fs::read(p).ok());
        for (name, data) in module_order(&GUEST_MODULES, &read)? {
            let file = format!("{name}.ko");
            a.file(&format!("modules/{file}"), 0o644, &data);
            order.push(file);
        }
    }
    a.file("modules/order", 0o644, format!("{}\n", order.join("\n")).as_bytes());
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, a.finish()).map_err(|e| internal("writing the initramfs", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| internal("writing the initramfs", e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first_and_skips_builtins() {
        let ko = |deps: &str| format!("\x7fELF...\0license=GPL\0depends={deps}\0name=x\0").into_bytes();
        let files: std::collections::HashMap<&str, Vec<u8>> = [
            ("virtio_ring", ko("")),
            ("virtio", ko("virtio_ring")),
            ("virtio_mmio", ko("virtio,virtio_ring")),
            ("virtio_blk", ko("virtio,virtio_ring")),
        ]
        .into_iter()
        .collect();
        let read = |n: &str| files.get(n).cloned();
        let order: Vec<String> =
            module_order(&["virtio_mmio", "virtio_blk", "ext4"], &read).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"]);
    }
}
