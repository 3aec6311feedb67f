//! The mutating operations every front end calls (the `/v1` API today; E2B,
//! MCP and a router next). Each runs on a task of its own, so it runs to
//! completion, or undoes itself, whether or not its caller still waits: a
//! client that disconnects, an HTTP handler future that is dropped or a
//! caller that times out cancels nothing halfway. This is the one place
//! that guarantee lives; the `*_now` methods behind it may only be called
//! from a task that is not cancelled (another operation's).

use std::future::Future;
use std::sync::Arc;

use spinup_model::{Error, NetworkPolicy, Result, Sandbox, SandboxState, Snapshot};

use crate::envs::Progress;
use crate::manager::{CreateRequest, Manager};
use crate::policy::AttachRequest;
use crate::ports::{ExposeAnswer, ExposeRequest};
use crate::snapshots::{Diff, ForkResult, SnapshotRequest};

/// Run `op` on its own task and wait for it; dropping the returned future
/// does not stop the task.
async fn detached<T, F, Fut>(m: &Arc<Manager>, op: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<Manager>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    tokio::spawn(op(m.clone())).await.map_err(|e| Error::internal("operation task", e))?
}

impl Manager {
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRequest,
        progress: Progress,
        tenant: Option<String>,
    ) -> Result<Sandbox> {
        detached(self, move |m| async move { m.create_now(req, progress, tenant).await }).await
    }

    /// Remove a sandbox (`force`: also a running or paused one).
    pub async fn destroy(self: &Arc<Self>, id: &str, force: bool) -> Result<()> {
        let id = id.to_string();
        detached(self, move |m| async move { m.destroy_now(&id, force).await }).await
    }

    /// Freeze a running sandbox in place; with `free_memory` (drivers with
    /// `memory_snapshot`) its memory goes to disk and its VMM stops.
    pub async fn pause(self: &Arc<Self>, id: &str, free_memory: bool) -> Result<Sandbox> {
        let id = id.to_string();
        detached(self, move |m| async move { m.freeze_with(&id, SandboxState::Paused, free_memory).await }).await
    }

    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<Sandbox> {
        let id = id.to_string();
        detached(self, move |m| async move { m.freeze_with(&id, SandboxState::Running, false).await }).await
    }

    /// Boot a stopped sandbox again on the disk it kept.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Sandbox> {
        let id = id.to_string();
        detached(self, move |m| async move { m.start_now(&id).await }).await
    }

    pub async fn snapshot(self: &Arc<Self>, id: &str, req: SnapshotRequest) -> Result<Snapshot> {
        let id = id.to_string();
        detached(self, move |m| async move { m.snapshot_now(&id, req, false).await }).await
    }

    pub async fn fork(self: &Arc<Self>, id: &str, req: crate::snapshots::ForkRequest) -> Result<ForkResult> {
        let id = id.to_string();
        detached(self, move |m| async move { m.fork_now(&id, req).await }).await
    }

    /// A diff freezes the sandbox while it reads: it must always thaw it.
    pub async fn diff(
        self: &Arc<Self>,
        id: &str,
        since: Option<String>,
        path: Option<String>,
        content: bool,
    ) -> Result<Diff> {
        let id = id.to_string();
        detached(self, move |m| async move { m.diff_now(&id, since.as_deref(), path.as_deref(), content).await }).await
    }

    pub async fn set_network(self: &Arc<Self>, id: &str, policy: NetworkPolicy) -> Result<Sandbox> {
        let id = id.to_string();
        detached(self, move |m| async move { m.set_network_now(&id, policy).await }).await
    }

    pub async fn attach_secrets(self: &Arc<Self>, id: &str, req: AttachRequest) -> Result<Sandbox> {
        let id = id.to_string();
        detached(self, move |m| async move { m.attach_secrets_now(&id, req).await }).await
    }

    pub async fn expose(self: &Arc<Self>, id: &str, req: ExposeRequest) -> Result<ExposeAnswer> {
        let id = id.to_string();
        detached(self, move |m| async move { m.expose_now(&id, req).await }).await
    }

    pub async fn unexpose(self: &Arc<Self>, id: &str, port: u16) -> Result<()> {
        let id = id.to_string();
        detached(self, move |m| async move { m.unexpose_now(&id, port).await }).await
    }

    /// Remove what belongs to no sandbox in the store (see `gc.rs`).
    pub async fn gc(self: &Arc<Self>) -> Result<crate::gc::GcReport> {
        detached(self, move |m| async move { m.gc_now().await }).await
    }
}
