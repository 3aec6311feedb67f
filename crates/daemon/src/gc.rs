//! Garbage collection: whatever belongs to no sandbox in the store. A
//! daemon killed at the wrong moment, a driver that failed halfway through
//! a destroy, or a store restored from a backup can leave a sandbox's
//! pieces behind with no row to find them by; `spinup gc` (`POST /v1/gc`)
//! and every daemon start remove them:
//! - each driver's traces (sandbox dirs, runtime state, cgroups), through
//!   the driver's own idempotent `destroy`;
//! - network namespaces, links, nftables chains and sets (`Network`);
//! - then, as a backstop, processes and mounts that name a sandbox dir of
//!   this data dir.
//!
//! Only this data dir's objects are touched: a trace is ours when it lives
//! under the data dir, carries this daemon's address-pool prefix (the pool
//! is locked per host) or was recorded in `<data>/net/<id>/` before it was
//! made. Traces are listed before the store is read: a row is written
//! before its sandbox leaves any trace and deleted only after they are
//! gone, so a trace listed first whose id the store then lacks is nobody's,
//! even while creates and removes run.

use std::collections::HashSet;
use std::path::Path;

use spinup_model::{validate_id, Result};

use crate::manager::Manager;

pub use spinup_api::GcReport;

/// A process that names a sandbox dir of this data dir.
struct Owned {
    pid: i32,
    starttime: u64,
    /// The sandbox it belongs to; `None` for a driver's probe.
    id: Option<String>,
    what: String,
}

impl Manager {
    pub(crate) async fn gc_now(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let data = self.envs.data_dir();
        let traced: Vec<_> = self.all_drivers().into_iter().map(|d| (d.traces(), d)).collect();
        let net = self.net.as_ref().ok().cloned();
        let net_traced = net.as_ref().map(|n| n.traces()).unwrap_or_default();
        let processes = owned_processes(&data);
        let mounts = owned_mounts(&data);
        let known = self.known_ids()?;

        // (An empty cgroup is a trace of both OCI drivers: one removes it.)
        let mut done = HashSet::new();
        for (ids, driver) in traced {
            for id in ids.into_iter().filter(|i| !known.contains(i)) {
                if done.contains(&id) {
                    continue;
                }
                let lock = self.lock_for(&id);
                let _g = lock.lock().await;
                if self.store.get_sandbox(&id).ok().flatten().is_some() {
                    continue;
                }
                match driver.destroy(&id).await {
                    Ok(()) => {
                        report
                            .removed
                            .push(format!("{} sandbox {id} (its processes, mounts, cgroups and files)", driver.name()));
                        done.insert(id);
                    }
                    Err(e) => report.failed.push(format!("{} sandbox {id}: {e}", driver.name())),
                }
            }
        }
        if let Some(n) = &net {
            for (id, slot) in net_traced.into_iter().filter(|(i, _)| !known.contains(i)) {
                report.removed.extend(n.remove_orphan(&id, slot.as_ref()).await);
            }
            let (removed, failed) = n.sweep().await;
            report.removed.extend(removed);
            report.failed.extend(failed);
        }
        // Backstops: what the drivers did not find by their own records.
        let known = self.known_ids()?;
        for p in processes.into_iter().filter(|p| !p.id.as_ref().is_some_and(|i| known.contains(i))) {
            // The same process still (never a later one that reused the pid).
            if spinup_driver_container::proc_starttime(p.pid) != Some(p.starttime) {
                continue;
            }
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGKILL) {
                Ok(()) => report.removed.push(format!("process {} ({})", p.pid, p.what)),
                Err(e) => report.failed.push(format!("process {} ({}): {e}", p.pid, p.what)),
            }
        }
        for (mp, id) in mounts.into_iter().rev() {
            if known.contains(&id) || !Path::new(&mp).exists() {
                continue;
            }
            match nix::mount::umount2(Path::new(&mp), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => report.removed.push(format!("mount {mp}")),
                // Gone with its parent already.
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => report.failed.push(format!("mount {mp}: {e}")),
            }
        }
        for r in &report.removed {
            tracing::info!("gc: removed {r}");
        }
        for f in &report.failed {
            tracing::warn!("gc: could not remove {f}");
        }
        Ok(report)
    }

    fn known_ids(&self) -> Result<HashSet<String>> {
        Ok(self.store.list_sandboxes()?.into_iter().map(|(s, _)| s.id.into()).collect())
    }
}

/// The sandbox a path under the data dir belongs to: `<driver>/sandboxes/<id>...`.
fn sandbox_of(rel: &str) -> Option<String> {
    let mut parts = rel.split('/');
    let (_driver, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    (kind == "sandboxes" && validate_id(id).is_ok()).then(|| id.to_string())
}

/// Driver processes (a VMM, runsc's sandbox and gofer, a runtime) whose
/// command line names a sandbox dir of `data`, processes whose executable
/// lives in one (a container sandbox's agent), and probe guests of a daemon
/// killed mid-probe.
fn owned_processes(data: &Path) -> Vec<Owned> {
    let prefix = format!("{}/", data.to_string_lossy());
    let me = std::process::id() as i32;
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        let exe =
            std::fs::read_link(e.path().join("exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let mut found: Option<Option<String>> = None;
        for text in [exe.as_str(), cmdline.as_str()] {
            for (at, _) in text.match_indices(&prefix) {
                let rel = &text[at + prefix.len()..];
                let rel = rel.split([' ', '=', ',']).next().unwrap_or("");
                if let Some(id) = sandbox_of(rel) {
                    found = Some(Some(id));
                } else if rel.starts_with("microvm/probe-") && found.is_none() {
                    found = Some(None);
                }
            }
        }
        let Some(id) = found else { continue };
        // Only what a driver runs: never a user's `tail -f` of a console log.
        let base = exe.rsplit('/').next().unwrap_or("");
        let component =
            exe.starts_with(&prefix) || base.starts_with("qemu-system") || ["runsc", "runc", "crun"].contains(&base);
        if !component {
            continue;
        }
        let Some(starttime) = spinup_driver_container::proc_starttime(pid) else { continue };
        let name = cmdline.split_whitespace().next().unwrap_or("?").to_string();
        let what = match &id {
            Some(id) => format!("{name} of sandbox {id}"),
            None => format!("{name}, a probe guest"),
        };
        out.push(Owned { pid, starttime, id, what });
    }
    out
}

/// Mount points under a sandbox dir of `data`, in mount order, with the
/// sandbox they belong to.
fn owned_mounts(data: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", data.to_string_lossy());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter_map(|mp| {
            let rel = mp.strip_prefix(&prefix)?;
            Some((mp.to_string(), sandbox_of(rel)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_sandbox() {
        assert_eq!(sandbox_of("microvm/sandboxes/0123456789ab/run/qemu.pid").as_deref(), Some("0123456789ab"));
        assert_eq!(sandbox_of("container/sandboxes/0123456789ab").as_deref(), Some("0123456789ab"));
        assert_eq!(sandbox_of("container/state/0123456789ab"), None);
        assert_eq!(sandbox_of("environments/busybox"), None);
        assert_eq!(sandbox_of("gvisor/sandboxes/../etc"), None);
        assert_eq!(sandbox_of("gvisor/sandboxes/0123456789AB"), None);
    }
}
