//! Filesystem snapshots, restore, fork and diff.
//!
//! A snapshot is the sandbox's changes since it was made, frozen as one
//! content-addressed OCI layer (a tar with `.wh.` whiteouts, digest = sha256
//! of the tar) stacked on the layers the sandbox ran on. Drivers whose
//! writable layer is an overlayfs upper dir on the host (container, gVisor)
//! are frozen, synced and exported from that dir; the microVM's disk is
//! never mounted by the host, so its agent walks the guest's root and sends
//! the same tar. Restoring stacks the layers, so a snapshot from one driver
//! starts on any other.
//!
//! Crash-only: a snapshot row is written (not ready) before any work and
//! marked ready only once its layer is stored; `recover_snapshots` after a
//! kill -9 deletes half-made rows and thaws their sandboxes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use spinup_model::{
    now_ms, validate_id, validate_label, validate_snapshot_name, Error, Result, Sandbox, SandboxState, Snapshot,
};

use crate::layers;
use crate::manager::{new_id, CreateRequest, Manager, ResourcesPatch};

pub use spinup_api::{Diff, ForkRequest, ForkResult, SnapshotRequest};

/// A sandbox's changes, as exported: a layer directory (host-side upper
/// dirs, copied in one pass while their tar is hashed) or a tar (from an
/// agent).
#[derive(Debug, Clone)]
enum Exported {
    Dir { dir: PathBuf, digest: String, size: u64 },
    Tar(PathBuf),
}

/// The most children one fork makes.
pub const MAX_FORK: u32 = 64;

/// A digest for a stack of layers (what `env_digest` holds for a sandbox
/// restored from a snapshot).
pub fn stack_digest(layers: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(layers).unwrap());
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn io_error(what: &str, e: impl std::fmt::Display, data_dir: &Path) -> Error {
    let msg = e.to_string();
    if msg.contains("os error 28") || msg.to_lowercase().contains("no space") {
        Error::Unavailable(format!(
            "{what}: no space left on the device holding {}; free space there and try again (the sandbox is unharmed)",
            data_dir.display()
        ))
    } else {
        Error::Internal(format!("{what}: {msg}"))
    }
}

impl Manager {
    /// Where a snapshot's saved memory and disk live.
    pub fn memory_dir(&self, snapshot_id: &str) -> PathBuf {
        self.envs.root().join("memory").join(snapshot_id)
    }

    /// A ready snapshot by id or name.
    pub fn snapshot_get(&self, id_or_name: &str) -> Result<Snapshot> {
        if validate_id(id_or_name).is_err() && validate_snapshot_name(id_or_name).is_err() {
            return Err(Error::not_found("snapshot", id_or_name));
        }
        self.store.get_snapshot(id_or_name)?.ok_or_else(|| Error::not_found("snapshot", id_or_name))
    }

    pub fn snapshot_list(&self) -> Result<Vec<Snapshot>> {
        self.store.list_snapshots(true)
    }

    /// The layers under a sandbox (rows written before layers were kept in
    /// the sandbox fall back to its environment).
    fn sandbox_layers(&self, sb: &Sandbox) -> Result<Vec<String>> {
        if !sb.layers.is_empty() {
            return Ok(sb.layers.clone());
        }
        Ok(self.envs.get(&sb.env)?.layers)
    }

    fn stack(&self, layers: &[String]) -> Vec<PathBuf> {
        layers.iter().rev().map(|l| self.envs.layer_dir(l)).collect()
    }

    /// The sandbox's changes since its creation, quiesced (the sandbox is
    /// left as it was). The caller holds the sandbox's lock.
    async fn export_changes(&self, sb: &Sandbox) -> Result<Exported> {
        let driver = self.driver(&sb.driver)?;
        let data_dir = self.envs.root().to_path_buf();
        if let Some(upper) = driver.writable_layer(&sb.id) {
            // Sync inside first (gVisor's Sentry caches writes), then
            // freeze so nothing moves while the upper dir is read.
            if sb.state == SandboxState::Running {
                if let Ok(c) = self.agent_locked(sb).await {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        c.call::<serde_json::Value>(http::Method::POST, "/v1/fs/sync", None::<&()>),
                    )
                    .await;
                }
                driver.pause(&sb.id).await?;
            }
            // One pass: the upper dir is copied into a new layer dir while
            // its tar is hashed (the tar itself is made on demand).
            let dir = self.envs.tmp("layer");
            let dir2 = dir.clone();
            let res = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
                std::fs::create_dir_all(&dir2)?;
                layers::snapshot_upper(&upper, &dir2)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(format!("export task: {e}"))));
            if sb.state == SandboxState::Running {
                if let Err(e) = driver.resume(&sb.id).await {
                    tracing::error!(id = %sb.id, "could not thaw after a snapshot: {e}");
                }
            }
            return match res {
                Ok((digest, size)) => Ok(Exported::Dir { dir, digest: format!("sha256:{digest}"), size }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Err(io_error(&format!("exporting the changes of sandbox {}", sb.id), e, &data_dir))
                }
            };
        }
        if sb.state != SandboxState::Running {
            return Err(Error::Conflict(format!(
                "sandbox {} is {}; a {} sandbox's changes come from its agent, so it must be running",
                sb.id, sb.state, sb.driver
            )));
        }
        // Through the agent: it needs the base's path list to see deletions.
        let layers = self.sandbox_layers(sb)?;
        let stack = self.stack(&layers);
        let base: Vec<String> = tokio::task::spawn_blocking(move || {
            let mut set = BTreeSet::new();
            layers::merged_paths(&stack, Path::new(""), &mut set);
            set.into_iter().map(|p| p.to_string_lossy().into_owned()).collect()
        })
        .await
        .map_err(|e| Error::internal("base listing", e))?;
        let c = self.agent_locked(sb).await?;
        let body = serde_json::to_vec(&spinup_protocol::ChangesRequest {
            base,
            exclude: layers::EXCLUDED.map(String::from).to_vec(),
        })
        .map_err(|e| Error::internal("changes request", e))?;
        let resp = c
            .request(http::Method::POST, "/v1/fs/changes", spinup_protocol::client::full_body(body))
            .await
            .map_err(|e| Error::Agent(e.to_string()))?;
        let dest = self.envs.tmp("changes.tar");
        let res = async {
            let mut f =
                tokio::fs::File::create(&dest).await.map_err(|e| io_error("creating the layer file", e, &data_dir))?;
            let mut stream = http_body_util::BodyExt::into_data_stream(resp.into_body());
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Agent(format!("reading the sandbox's changes: {e}")))?;
                f.write_all(&chunk).await.map_err(|e| io_error("writing the layer file", e, &data_dir))?;
            }
            f.flush().await.map_err(|e| io_error("writing the layer file", e, &data_dir))
        }
        .await;
        match res {
            Ok(()) => Ok(Exported::Tar(dest)),
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                Err(e)
            }
        }
    }

    /// Freeze a sandbox's filesystem changes as a snapshot.
    pub(crate) async fn snapshot_now(&self, id: &str, req: SnapshotRequest, ephemeral: bool) -> Result<Snapshot> {
        let sb = self.get(id)?;
        self.require(&sb, if req.memory { "memory_snapshot" } else { "fs_snapshot" })?;
        if req.memory && !sb.secrets.is_empty() {
            // Its memory holds the values it was given.
            return Err(Error::Conflict(format!(
                "sandbox {id} has secrets attached ({}); a memory snapshot would contain them. Take a filesystem snapshot, or detach them first",
                sb.secrets.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(n) = &req.name {
            validate_snapshot_name(n)?;
        }
        for (k, v) in &req.labels {
            validate_label(k, v)?;
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let sb = self.get(id)?;
        if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Error::Conflict(format!(
                "sandbox {id} is {}; only a live sandbox can be snapshotted",
                sb.state
            )));
        }
        let base = self.sandbox_layers(&sb)?;
        let config = match &sb.snapshot {
            Some(s) => self.store.get_snapshot(s)?.map(|s| s.config),
            None => self.envs.get(&sb.env).ok().map(|e| e.config),
        }
        .unwrap_or_default();
        let mut snap = Snapshot {
            id: new_id(),
            name: req.name.clone(),
            sandbox_id: sb.id.to_string(),
            driver: sb.driver.clone(),
            env: sb.env.clone(),
            parent_snapshot: sb.snapshot.clone(),
            layer: String::new(),
            layers: vec![],
            config,
            resources: sb.resources,
            labels: req.labels.clone(),
            size_bytes: 0,
            created_at: now_ms(),
            ephemeral,
            memory: req.memory.then(|| sb.driver.clone()),
            tenant: sb.tenant.clone(),
        };
        // Not ready until the layer is stored: a restart cleans it up.
        self.store.put_snapshot(&snap, false)?;
        let t0 = std::time::Instant::now();
        let mut exported_ms = 0;
        let mut leftover = None;
        let made = async {
            let exported = self.export_changes(&sb).await?;
            leftover = Some(exported.clone());
            exported_ms = t0.elapsed().as_millis();
            if req.memory {
                // After the layer (for other drivers): the exact memory and
                // disk, for this one.
                let driver = self.driver(&sb.driver)?;
                driver.save_memory(&sb.id, &self.memory_dir(&snap.id)).await?;
            }
            let envs_root = self.envs.root().to_path_buf();
            let res = tokio::task::block_in_place(|| match exported {
                Exported::Dir { dir, digest, size } => self.envs.adopt_layer(&dir, &digest).map(|_| (digest, size)),
                Exported::Tar(t) => self.envs.import_layer_file(&t),
            });
            res.map_err(|e| io_error("storing the snapshot layer", e, &envs_root))
        }
        .await;
        match leftover {
            Some(Exported::Dir { dir, .. }) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Some(Exported::Tar(t)) => {
                let _ = std::fs::remove_file(t);
            }
            None => {}
        }
        match made {
            Ok((digest, size)) => {
                snap.layer = digest.clone();
                snap.layers = base.into_iter().chain([digest]).collect();
                snap.size_bytes = size;
                self.store.put_snapshot(&snap, true)?;
                tracing::info!(id, snapshot = %snap.id, bytes = size, exported_ms, total_ms = t0.elapsed().as_millis() as u64, "snapshot taken");
                Ok(snap)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.memory_dir(&snap.id));
                self.store.delete_snapshot(&snap.id)?;
                tracing::warn!(id, "snapshot failed: {e}");
                Err(e)
            }
        }
    }

    /// Remove a snapshot nobody runs on, and the layers only it used.
    pub fn snapshot_remove(&self, id_or_name: &str) -> Result<()> {
        let snap = self.snapshot_get(id_or_name)?;
        if let Some(sb) = self.list(&BTreeMap::new())?.into_iter().find(|s| s.snapshot.as_deref() == Some(&snap.id)) {
            return Err(Error::Conflict(format!(
                "snapshot {} is in use by sandbox {}; remove that sandbox first",
                snap.id, sb.id
            )));
        }
        // A memory snapshot holds copies of every disk layer it builds on
        // (the driver's), so one made from a sandbox restored from this one
        // does not keep this one.
        self.store.delete_snapshot(&snap.id)?;
        let _ = std::fs::remove_dir_all(self.memory_dir(&snap.id));
        self.gc_layers(std::slice::from_ref(&snap.layer));
        Ok(())
    }

    /// Delete the given layers unless an environment, snapshot or sandbox
    /// still stacks them.
    pub fn gc_layers(&self, candidates: &[String]) {
        let mut keep: HashSet<String> = HashSet::new();
        if let (Ok(envs), Ok(snaps), Ok(half), Ok(sbs)) = (
            self.envs.list(),
            self.store.list_snapshots(true),
            self.store.list_snapshots(false),
            self.store.list_sandboxes(),
        ) {
            keep.extend(envs.into_iter().flat_map(|e| e.layers));
            keep.extend(snaps.into_iter().chain(half).flat_map(|s| s.layers));
            keep.extend(sbs.into_iter().flat_map(|(s, _)| s.layers));
            self.envs.remove_layers_except(candidates, &keep);
        }
    }

    /// A fork's snapshot, once its last child is gone.
    pub(crate) fn drop_ephemeral(&self, snapshot: &str) {
        let Ok(Some(snap)) = self.store.get_snapshot(snapshot) else { return };
        if !snap.ephemeral {
            return;
        }
        let used = self.list(&BTreeMap::new()).map(|l| l.iter().any(|s| s.snapshot.as_deref() == Some(snapshot)));
        if matches!(used, Ok(false)) {
            let _ = self.snapshot_remove(snapshot);
        }
    }

    /// Snapshot a sandbox and start `count` children from it.
    pub(crate) async fn fork_now(&self, id: &str, req: ForkRequest) -> Result<ForkResult> {
        let count = req.count.unwrap_or(1);
        if count == 0 || count > MAX_FORK {
            return Err(Error::InvalidArgument(format!("count must be between 1 and {MAX_FORK}, got {count}")));
        }
        let parent = self.get(id)?;
        self.require(&parent, "fork")?;
        // Children belong to the parent's tenant and count against its
        // quotas: refused here, before the snapshot, when all of them
        // cannot fit (each child's create checks again, under the lock).
        if let Some(t) = &parent.tenant {
            self.check_quota(t, &parent.resources, count)?;
        }
        let mut labels = BTreeMap::new();
        labels.insert("spinup.fork.parent".to_string(), id.to_string());
        let snap = self.snapshot_now(id, SnapshotRequest { labels, ..Default::default() }, true).await?;
        let child = |_: u32| {
            let mut labels = parent.labels.clone();
            labels.insert("spinup.fork.parent".into(), id.into());
            CreateRequest {
                driver: Some(req.driver.clone().unwrap_or_else(|| parent.driver.clone())),
                timeout_s: parent.timeout_s,
                resources: Some(ResourcesPatch {
                    vcpus: Some(parent.resources.vcpus),
                    memory_mib: Some(parent.resources.memory_mib),
                    disk_mib: Some(parent.resources.disk_mib),
                    pids: Some(parent.resources.pids),
                }),
                labels,
                from_snapshot: Some(snap.id.clone()),
                on_timeout: Some(parent.on_timeout),
                auto_resume: Some(parent.auto_resume),
                // The same policy, and secrets projected afresh from the
                // store (never copied from the parent).
                network: Some(parent.network.clone()),
                secrets: parent
                    .secrets
                    .iter()
                    .map(|m| spinup_model::SecretMount { placeholder: None, ..m.clone() })
                    .collect(),
                env_vars: parent.env_vars.clone(),
                ..Default::default()
            }
        };
        let results =
            futures::future::join_all((0..count).map(|i| self.create_now(child(i), None, parent.tenant.clone()))).await;
        let mut children = vec![];
        let mut failed = None;
        for r in results {
            match r {
                Ok(sb) => children.push(sb),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            // All or nothing: a half fork is not what was asked for.
            for c in &children {
                let _ = self.destroy_now(&c.id, true).await;
            }
            self.drop_ephemeral(&snap.id);
            return Err(e);
        }
        tracing::info!(id, snapshot = %snap.id, count, "forked");
        Ok(ForkResult { snapshot: snap, children })
    }

    /// What changed in a sandbox since its creation or since a snapshot.
    pub(crate) async fn diff_now(
        &self,
        id: &str,
        since: Option<&str>,
        path: Option<&str>,
        content: bool,
    ) -> Result<Diff> {
        let sb = self.get(id)?;
        self.require(&sb, "fs_snapshot")?;
        let since_snap = since.map(|s| self.snapshot_get(s)).transpose()?;
        let rel = match path {
            Some(p) => {
                let rel = PathBuf::from(p.trim_start_matches('/'));
                match layers::normal(&rel) {
                    Ok(c) if p.starts_with('/') && c.is_empty() => None, // `/`: the whole tree
                    Ok(_) if p.starts_with('/') => Some(rel),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "path '{p}' must be an absolute path inside the sandbox"
                        )))
                    }
                }
            }
            None => None,
        };
        let lock = self.lock_for(id);
        let g = lock.lock().await;
        let sb = self.get(id)?;
        if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Error::Conflict(format!("sandbox {id} is {}", sb.state)));
        }
        let exported = self.export_changes(&sb).await;
        drop(g);
        let scratch = match exported? {
            Exported::Dir { dir, .. } => dir,
            Exported::Tar(t) => {
                let r = self.envs.unpack_scratch(&t);
                let _ = std::fs::remove_file(&t);
                r?
            }
        };
        let own = self.sandbox_layers(&sb)?;
        let before_layers = since_snap.as_ref().map(|s| s.layers.clone()).unwrap_or_else(|| own.clone());
        let before = self.stack(&before_layers);
        let mut after = vec![scratch.clone()];
        after.extend(self.stack(&own));
        // Candidates: what the changes touch, plus every layer the two
        // stacks do not share.
        let common = own.iter().zip(&before_layers).take_while(|(a, b)| a == b).count();
        let extra: Vec<(PathBuf, Vec<PathBuf>)> = own[common..]
            .iter()
            .enumerate()
            .map(|(i, l)| (self.envs.layer_dir(l), self.stack(&own[..common + i])))
            .chain(
                before_layers[common..]
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (self.envs.layer_dir(l), self.stack(&before_layers[..common + i]))),
            )
            .collect();
        let result = tokio::task::spawn_blocking(move || {
            let mut paths = BTreeSet::new();
            layers::touched_paths(&scratch, Path::new(""), &after[1..], &mut paths);
            for (layer, below) in &extra {
                layers::touched_paths(layer, Path::new(""), below, &mut paths);
            }
            if let Some(r) = &rel {
                paths.retain(|p| p == r);
                paths.insert(r.clone());
            }
            let changes = layers::diff(&before, &after, &paths);
            let (b, a) = match (&rel, content) {
                (Some(r), true) => (
                    layers::read_entry(&before, r, 1 << 20).map(|v| String::from_utf8_lossy(&v).into_owned()),
                    layers::read_entry(&after, r, 1 << 20).map(|v| String::from_utf8_lossy(&v).into_owned()),
                ),
                _ => (None, None),
            };
            let _ = std::fs::remove_dir_all(&scratch);
            (changes, b, a)
        })
        .await
        .map_err(|e| Error::internal("diff task", e))?;
        Ok(Diff {
            sandbox: id.into(),
            since: since_snap.map(|s| s.id),
            changes: result.0,
            before: result.1,
            after: result.2,
        })
    }

    /// After a restart (and after `recover`): snapshots a killed daemon left
    /// half-made are deleted, with their files.
    pub async fn recover_snapshots(&self) -> Result<()> {
        for snap in self.store.list_snapshots(false)? {
            // Its sandbox, if frozen for the export or stopped to save its
            // memory, was resumed by `recover`, which runs first.
            tracing::warn!(snapshot = %snap.id, sandbox = %snap.sandbox_id, "daemon stopped during a snapshot; cleaning up");
            let _ = std::fs::remove_dir_all(self.memory_dir(&snap.id));
            self.store.delete_snapshot(&snap.id)?;
        }
        // Saved memory no snapshot names.
        let known: HashSet<String> = self.store.list_snapshots(true)?.into_iter().map(|s| s.id).collect();
        for e in std::fs::read_dir(self.envs.root().join("memory")).into_iter().flatten().flatten() {
            if !known.contains(&*e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        // Layers nothing names: a snapshot or build stopped between storing
        // its layer and recording it.
        let all: Vec<String> = std::fs::read_dir(self.envs.root().join("layers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
            .chain(
                std::fs::read_dir(self.envs.root().join("blobs/sha256"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| format!("sha256:{}", e.file_name().to_string_lossy())),
            )
            .collect();
        self.gc_layers(&all);
        // Ephemeral snapshots whose children all went while the daemon was down.
        for snap in self.store.list_snapshots(true)? {
            if snap.ephemeral {
                self.drop_ephemeral(&snap.id);
            }
        }
        Ok(())
    }
}
