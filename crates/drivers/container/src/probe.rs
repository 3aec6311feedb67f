//! Which OCI runtime works here: found by running a real container, not by
//! reading version strings (crun, for one, starts but fails on hybrid
//! cgroup hosts).

use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    pub path: PathBuf,
    pub version: String,
}

impl Runtime {
    pub fn describe(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// Try `candidate` end to end: run the agent's `--version` in a minimal
/// bundle with every namespace and a cgroup.
pub async fn try_runtime(
    root: &Path,
    agent: &Path,
    candidate: &str,
    global_args: &[String],
    cgroup_parent: &str,
) -> Result<Runtime, String> {
    let path = spinup_host::which(candidate)
        .ok_or_else(|| format!("{candidate}: not installed (apt-get install {candidate})"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| candidate.into());
    let v = tokio::process::Command::new(&path).arg("--version").output().await.map_err(|e| format!("{name}: {e}"))?;
    let version = String::from_utf8_lossy(&v.stdout)
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string();

    let bundle = root.join(format!("probe-{name}"));
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(bundle.join("rootfs")).map_err(|e| format!("probe bundle: {e}"))?;
    let id = format!("spinup-probe-{}", std::process::id());
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/agent", "--version"], "cwd": "/", "env": []},
        "root": {"path": bundle.join("rootfs"), "readonly": true},
        "mounts": [
            {"destination": "/agent", "type": "bind", "source": agent, "options": ["bind", "ro"]},
            {"destination": "/proc", "type": "proc", "source": "proc"}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}, {"type": "cgroup"}],
            "cgroupsPath": format!("/{}/{id}", cgroup_parent.trim_matches('/')),
            "resources": {"pids": {"limit": 256}, "memory": {"limit": 268435456}}
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).map_err(|e| format!("probe bundle: {e}"))?;
    let state = root.join("state");
    let out = tokio::process::Command::new(&path)
        .arg("--root")
        .arg(&state)
        .args(global_args)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{name}: {e}"));
    let _ =
        tokio::process::Command::new(&path).arg("--root").arg(&state).args(["delete", "--force", &id]).output().await;
    // A failed run can leave the cgroup behind (seen with runsc).
    if let Err(e) = crate::engine::remove_cgroups(cgroup_parent, &id).await {
        tracing::warn!("probe of {name}: {e}");
    }
    let _ = std::fs::remove_dir_all(&bundle);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("spinup-agent") {
        Ok(Runtime { name, path, version })
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{name} {version} cannot run a container here: {}",
            err.trim().lines().last().unwrap_or("no output")
        ))
    }
}

/// The first runtime that really runs a container, or why none does.
pub async fn detect(
    root: &Path,
    agent: &Path,
    candidates: &[String],
    global_args: &[String],
    cgroup_parent: &str,
) -> Result<Runtime, String> {
    if !agent.is_file() {
        return Err(format!("agent binary {} is missing; build it with `cargo build --release`", agent.display()));
    }
    let mut why = vec![];
    for c in candidates {
        match try_runtime(root, agent, c, global_args, cgroup_parent).await {
            Ok(r) => return Ok(r),
            Err(e) => why.push(e),
        }
    }
    Err(format!("no working OCI runtime: {}", why.join("; ")))
}
