//! Root disks: one ext4 image per environment (built with `mkfs.ext4 -d`,
//! no loop mount), cached by the environment's layers, and one qcow2
//! copy-on-write overlay per sandbox backed by it (no copy).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use spinup_model::{Error, Result};

fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            total += m.blocks() * 512 + 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The ext4 image of `layers` (lowest first), built once under `dir`.
/// Several layers are merged through a read-only overlay mount first.
pub async fn environment_image(dir: &Path, layers: &[PathBuf]) -> Result<PathBuf> {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.as_os_str().as_encoded_bytes());
        h.update([0]);
    }
    let key = hex::encode(h.finalize());
    let path = dir.join(format!("{}.ext4", &key[..24]));
    if path.is_file() {
        return Ok(path);
    }
    // One build at a time: two creates of a new environment must not write
    // the same image (the second finds it done).
    static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = BUILD.lock().await;
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("image dir: {e}")))?;
    let tmp = dir.join(format!(".{}.{}.tmp", &key[..24], std::process::id()));
    let merged = dir.join(format!(".{}.{}.merged", &key[..24], std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    // A repeated layer is merged once (and a read-only overlay wants two
    // distinct lower dirs, so one left over is used as it is).
    let distinct = spinup_host::distinct_layers(layers);
    let source = match distinct.as_slice() {
        [one] => one.clone(),
        [] => return Err(Error::InvalidArgument("an environment without layers".into())),
        many => {
            std::fs::create_dir_all(&merged).map_err(|e| Error::Internal(format!("image dir: {e}")))?;
            nix::mount::mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                nix::mount::MsFlags::MS_RDONLY,
                Some(format!("lowerdir={}", spinup_host::overlay_lowerdir(many)).as_str()),
            )
            .map_err(|e| Error::Internal(format!("merging layers: {e}")))?;
            merged.clone()
        }
    };
    // Content plus room for metadata; each sandbox's disk grows from here to
    // its own disk limit (the guest resizes the filesystem at boot).
    let size_mib = du(&source) * 5 / 4 / (1 << 20) + 64;
    let r = spinup_host::run(
        tokio::process::Command::new("mkfs.ext4")
            // One inode per 4 KiB: environments are many small files.
            .args(["-q", "-F", "-m", "0", "-i", "4096", "-L", "spinup-root", "-E", "lazy_itable_init=0", "-d"])
            .arg(&source)
            .arg(&tmp)
            .arg(format!("{size_mib}M")),
        crate::TOOL,
    )
    .await;
    if source == merged {
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&merged);
    }
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::Internal(format!("image: {e}")))?;
    Ok(path)
}

/// Remove what an image build stopped midway leaves (`.KEY.PID.merged`
/// overlay mounts, `.KEY.PID.tmp` images). Only at start-up, when no build
/// runs.
pub fn clean_partial(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        if name.ends_with(".merged") {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(e.path());
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A sandbox's own disk: a qcow2 overlay of `base`, `size_mib` big.
pub async fn overlay(base: &Path, disk: &Path, size_mib: u64) -> Result<()> {
    let layer = base.extension().is_some_and(|e| e == "qcow2");
    let base_mib = std::fs::metadata(base).map(|m| m.len() >> 20).unwrap_or(0);
    if !layer && size_mib < base_mib {
        return Err(Error::InvalidArgument(format!(
            "disk_mib {size_mib} is smaller than the environment's image ({base_mib} MiB)"
        )));
    }
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", if layer { "qcow2" } else { "raw" }, "-b"]);
    if layer {
        // A saved layer beside the disk: named relative to it, so copies of
        // the dir keep their chain; and never opened here (`-u`), as root,
        // since the VMM that wrote it could have written any header.
        cmd.arg(base.file_name().unwrap_or_default()).arg("-u");
    } else {
        cmd.arg(base);
    }
    spinup_host::run(cmd.arg(disk).arg(format!("{size_mib}M")), crate::TOOL).await.map(|_| ())
}

/// The name of a sandbox's `n`th saved disk layer (`layer-0.qcow2` is
/// backed by the environment's image, each next one by the one before,
/// by a name relative to its own dir).
pub fn layer_name(n: usize) -> String {
    format!("layer-{n}.qcow2")
}

/// The saved disk layers in `dir` (a sandbox's or a memory snapshot's),
/// bottom first: `layer-0.qcow2` up to the first one missing. A snapshot
/// made before layers were named holds one, `disk.qcow2`.
pub fn layers(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (0..).map(|n| dir.join(layer_name(n))).take_while(|p| p.is_file()).collect();
    if out.is_empty() && dir.join("memory").is_file() && dir.join("disk.qcow2").is_file() {
        out.push(dir.join("disk.qcow2"));
    }
    out
}
