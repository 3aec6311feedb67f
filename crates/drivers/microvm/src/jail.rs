//! What the VMM runs inside, as Firecracker's jailer runs Firecracker: a
//! uid of its own with no capabilities, QEMU's own seccomp sandbox with its
//! strictest options, and a cgroup of its own that bounds the VMM's
//! memory, CPU and threads (not only the guest's, which its kernel bounds
//! inside). What needs root (joining the cgroup and network namespace,
//! attaching the tap) is done before QEMU runs, and handed to it as fds.

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
