//! What the VMM runs inside, as Firecracker's jailer runs Firecracker: a
//! uid of its own with no capabilities, QEMU's own seccomp sandbox with its
//! strictest options, and a cgroup of its own that bounds the VMM's
//! memory, CPU and threads (not only the guest's, which its kernel bounds
//! inside), and a mount namespace whose root holds only what it needs.
//! What needs root (joining the cgroup and network namespace, attaching
//! the tap) is done before QEMU runs, and handed to it as fds.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use spinup_model::{Error, Resources, Result};

/// `-sandbox`: QEMU's seccomp filter, every group denied: obsolete
/// syscalls, privilege changes (setuid, setsid, ...), spawning (fork,
/// exec), and resource control (scheduler, affinity, priorities).
pub const QEMU_SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The first uid (and gid) of the range VMMs run as: each sandbox's VMM
/// gets one of its own, far above any host account's, so no two VMMs can
/// signal or trace each other and none owns a host file but its sandbox's.
pub const VMM_ID_BASE: u32 = 0x5000_0000;

/// The uid and gid sandbox `id`'s VMM runs as (from the id's first six
/// hex digits: one in 16 M).
pub fn vmm_ids(id: &str) -> (u32, u32) {
    let n = id.get(..6).and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or(0);
    (VMM_ID_BASE + n, VMM_ID_BASE + n)
}

/// Give `paths` to the VMM's uid (the sandbox's run dir, disk and console:
/// what QEMU writes), so it writes only those and reads, besides, only
/// what is world-readable: kernel, initramfs, base images, firmware.
pub fn own(paths: &[&Path], (uid, gid): (u32, u32)) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in paths {
        let err = |e: std::io::Error| Error::Internal(format!("the VMM's files: {}: {e}", p.display()));
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(err)?;
        // Its alone: no other VMM's uid reads a disk or console of this one.
        let mode = if p.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

/// Memory the VMM may use beyond the guest's RAM: QEMU itself, the
/// translation cache under TCG (64 MiB), device buffers.
pub const VMM_OVERHEAD_MIB: u64 = 256;

/// Threads the VMM may have: vCPUs, the main loop, RCU, and QEMU's block
/// I/O worker pool (up to 64).
pub const VMM_PIDS: u64 = 128;

const PERIOD: u64 = 100_000;

/// The VMM's limits for a sandbox of `res` whose guest has `guest_mib` of
/// RAM: (memory bytes, CPU quota per 100 ms period, pids).
pub fn limits(res: &Resources, guest_mib: u64) -> (u64, u64, u64) {
    let vcpus = (res.vcpus.ceil() as u64).max(1);
    // Each vCPU thread, plus one for the main loop and device emulation.
    ((guest_mib + VMM_OVERHEAD_MIB) << 20, (vcpus + 1) * PERIOD, VMM_PIDS)
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Make cgroup `parent/id` with the VMM's limits, in the unified hierarchy
/// where its controllers are (cgroup v2), or else in each v1 controller's;
/// returns the `cgroup.procs` files the VMM joins.
pub fn make_cgroup(parent: &str, id: &str, res: &Resources, guest_mib: u64) -> Result<Vec<PathBuf>> {
    let (memory, quota, pids) = limits(res, guest_mib);
    let rel = Path::new(parent.trim_matches('/')).join(id);
    let root = Path::new(CGROUP_ROOT);
    let write = |dir: &Path, file: &str, value: &str| {
        std::fs::write(dir.join(file), value)
            .map_err(|e| Error::Internal(format!("the VMM's cgroup: {}/{file}: {e}", dir.display())))
    };
    let mkdir = |dir: &Path| {
        std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("the VMM's cgroup: {}: {e}", dir.display())))
    };
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if ["memory", "cpu", "pids"].iter().all(|c| v2.split_whitespace().any(|x| x == *c)) {
        // Each level above hands the controllers down.
        let mut dir = root.to_path_buf();
        for part in Path::new(parent.trim_matches('/')).components() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
            dir.push(part);
            mkdir(&dir)?;
        }
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
        let dir = root.join(&rel);
        mkdir(&dir)?;
        write(&dir, "memory.max", &memory.to_string())?;
        write(&dir, "memory.swap.max", "0")?;
        write(&dir, "cpu.max", &format!("{quota} {PERIOD}"))?;
        write(&dir, "pids.max", &pids.to_string())?;
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    let (mem, cpu, pid) = (root.join("memory").join(&rel), root.join("cpu").join(&rel), root.join("pids").join(&rel));
    for (controller, dir) in [("memory", &mem), ("cpu", &cpu), ("pids", &pid)] {
        if !root.join(controller).is_dir() {
            return Err(Error::Unavailable(format!(
                "the {controller} cgroup controller is not mounted (neither in {CGROUP_ROOT} nor {CGROUP_ROOT}/{controller}): the VMM cannot be bounded"
            )));
        }
        mkdir(dir)?;
    }
    write(&mem, "memory.limit_in_bytes", &memory.to_string())?;
    // With swap accounting, swap is bounded too (memory + swap = memory).
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        write(&mem, "memory.memsw.limit_in_bytes", &memory.to_string())?;
    }
    write(&cpu, "cpu.cfs_period_us", &PERIOD.to_string())?;
    write(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
    write(&pid, "pids.max", &pids.to_string())?;
    Ok([mem, cpu, pid].iter().map(|d| d.join("cgroup.procs")).collect())
}

/// The root QEMU sees: a mount namespace of its own whose `/` is a small
/// read-only tmpfs holding only what the VMM needs, each at its own path:
/// `/usr` (QEMU, its libraries and firmware) and the top-level links into
/// it, a few `/dev` nodes, and the paths given, read-only or writable.
/// Nothing else of the host is there: no `/etc`, `/home`, `/root`, `/proc`,
/// `/sys`, no other sandbox, no daemon state.
#[derive(Debug, Clone, Default)]
pub struct Root {
    /// The empty dir the tmpfs goes on (in the VMM's namespace only).
    pub dir: PathBuf,
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
    /// Device nodes besides null, zero, full, random and urandom
    /// (`/dev/kvm` under KVM).
    pub devices: Vec<PathBuf>,
}

/// [`Root`], turned before the fork into what the child does after it:
/// no allocation happens between fork and exec.
#[derive(Debug)]
pub struct Prepared {
    root: CString,
    /// Made in the tmpfs, in order: dirs, then files (bind targets).
    dirs: Vec<CString>,
    files: Vec<CString>,
    links: Vec<(CString, CString)>,
    /// (source, target inside the root, read-only)
    binds: Vec<(CString, CString, bool)>,
}

fn cstr(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).ok()
}

impl Root {
    pub fn prepare(&self) -> Result<Prepared> {
        let bad = |p: &Path| Error::Internal(format!("the VMM's root: {} cannot be named", p.display()));
        let inside = |p: &Path| self.dir.join(p.strip_prefix("/").unwrap_or(p));
        let mut dirs: Vec<PathBuf> = vec![];
        let mut files: Vec<PathBuf> = vec![];
        let mut links = vec![];
        let mut binds = vec![];
        let parents = |p: &Path, dirs: &mut Vec<PathBuf>| {
            for a in p.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
                if !dirs.iter().any(|d| d == a) {
                    dirs.push(a.to_path_buf());
                }
            }
        };
        // /bin, /lib, ... as the host has them: links into /usr, or dirs.
        let mut ro: Vec<PathBuf> = vec!["/usr".into()];
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            match std::fs::read_link(top) {
                Ok(to) => links.push((
                    cstr(&to).ok_or_else(|| bad(&to))?,
                    cstr(&inside(Path::new(top))).ok_or_else(|| bad(Path::new(top)))?,
                )),
                Err(_) if Path::new(top).is_dir() => ro.push(top.into()),
                Err(_) => {}
            }
        }
        let mut devices: Vec<PathBuf> =
            ["null", "zero", "full", "random", "urandom"].iter().map(|d| Path::new("/dev").join(d)).collect();
        devices.extend(self.devices.iter().cloned());
        let all = ro.iter().chain(&self.read_only).map(|p| (p, true)).chain(self.writable.iter().map(|p| (p, false)));
        for (p, read_only) in all.chain(devices.iter().map(|d| (d, false))) {
            let target = inside(p);
            if p.is_dir() {
                parents(&target, &mut dirs);
            } else {
                parents(target.parent().unwrap_or(&self.dir), &mut dirs);
                files.push(target.clone());
            }
            binds.push((cstr(p).ok_or_else(|| bad(p))?, cstr(&target).ok_or_else(|| bad(p))?, read_only));
        }
        // Only what lies under the root is made there.
        dirs.retain(|d| d.starts_with(&self.dir) && d != &self.dir);
        let all = |v: Vec<PathBuf>| v.iter().map(|p| cstr(p).ok_or_else(|| bad(p))).collect::<Result<Vec<_>>>();
        Ok(Prepared {
            root: cstr(&self.dir).ok_or_else(|| bad(&self.dir))?,
            dirs: all(dirs)?,
            files: all(files)?,
            links,
            binds,
        })
    }
}

impl Prepared {
    /// Enter it: a new mount namespace, the tmpfs, the binds, then
    /// pivot_root into it, the old root detached, `/` made read-only.
    /// Runs between fork and exec, as root (before the uid changes).
    pub fn enter(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: plain syscalls on C strings made before the fork.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here reaches the host's mounts.
            check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=1m".as_ptr().cast(),
            ))?;
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for f in &self.files {
                let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            for (to, at) in &self.links {
                check(libc::symlink(to.as_ptr(), at.as_ptr()))?;
            }
            for (src, dst, read_only) in &self.binds {
                check(libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                // Read-only, and never a set-id or device file from a bind.
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                if *read_only {
                    flags |= libc::MS_RDONLY;
                }
                check(libc::mount(none, dst.as_ptr(), none, flags, std::ptr::null()))?;
            }
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sandbox_gets_its_own_vmm_ids_above_host_accounts() {
        let (a, b) = (vmm_ids("00000000abcd"), vmm_ids("fffffe00abcd"));
        assert_eq!(a, (VMM_ID_BASE, VMM_ID_BASE));
        assert_eq!(b.0, VMM_ID_BASE + 0xfffffe);
        assert_ne!(vmm_ids("0a1b2c000000"), vmm_ids("0a1b2d000000"));
    }

    #[test]
    fn limits_cover_the_guest_and_the_vmm() {
        let res = Resources { vcpus: 1.5, memory_mib: 512, disk_mib: 1024, pids: 100 };
        let (memory, quota, pids) = limits(&res, 512 + 96);
        assert_eq!(memory, (512 + 96 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(quota, 3 * PERIOD);
        assert_eq!(pids, VMM_PIDS);
    }
}
