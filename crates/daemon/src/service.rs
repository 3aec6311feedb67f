//! [`SandboxService`] over the lifecycle manager: the one implementation
//! every front end calls. Validation, defaults, capability checks, usage
//! checks and filters live here, never in a handler. Mutating operations
//! go through `ops.rs`, so each runs on its own task to the end.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use spinup_api::{
    AttachRequest, AuditEntry, AuditQuery, BuildEvent, ByteStream, CodeContext, CodeEvent, CodeRequest, ContextRequest,
    CreateRequest, Diff, DiffQuery, EnvList, ErrorBody, ExecRequest, ExecSession, ExposeAnswer, ExposeRequest, FileOp,
    FileRequest, ForkRequest, ForkResult, Forwarded, GcReport, KeyInfo, KeyRequest, Layer, ListQuery, NewKey,
    PauseRequest, SandboxService, SecretInfo, SecretSet, SecretValue, SnapshotRequest, TimeoutRequest, Transition,
    Tunnel,
};
use spinup_model::{
    Capabilities, Environment, Error, NetworkPolicy, PortExposure, Result, Sandbox, SandboxId, Snapshot,
};
use spinup_protocol::client::{full_body, FrameStream};
use spinup_protocol::{AgentClient, AgentInfo, ClientError, Frame, ProcessInfo, SignalRequest};

use crate::manager::Manager;

/// Who is calling: the name the audit log gives it, and the tenant whose
/// objects alone it sees and makes (`None`: everything, as the admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `socket` (the unix socket), `api-key` (the daemon's configured
    /// key) or `key:<id>` (a key made with `spinup key create`).
    pub actor: String,
    pub tenant: Option<String>,
}

impl Caller {
    pub fn admin(actor: &str) -> Caller {
        Caller { actor: actor.to_string(), tenant: None }
    }
}

/// The service, shared by every front end, as one caller sees it.
#[derive(Clone)]
pub struct Service {
    m: Arc<Manager>,
    /// Starts and reaches the code interpreter inside each sandbox.
    code: Arc<spinup_interpreter::Interpreter>,
    caller: Arc<Caller>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// The admin's view, as the unix socket's caller.
    pub fn new(m: Arc<Manager>) -> Service {
        Service { m, code: Arc::new(spinup_interpreter::Interpreter::new()), caller: Arc::new(Caller::admin("socket")) }
    }

    /// The same service (its interpreter too) as `caller` sees it.
    pub fn as_caller(&self, caller: Caller) -> Service {
        Service { m: self.m.clone(), code: self.code.clone(), caller: Arc::new(caller) }
    }

    pub fn manager(&self) -> &Arc<Manager> {
        &self.m
    }

    fn tenant(&self) -> Option<&str> {
        self.caller.tenant.as_deref()
    }

    /// Whether this caller may see an object of tenant `owner`.
    fn sees(&self, owner: Option<&str>) -> bool {
        self.tenant().is_none_or(|t| owner == Some(t))
    }

    /// The sandbox, if this caller may see it: another tenant's answers
    /// exactly as an unknown id does.
    fn mine(&self, id: &str) -> Result<Sandbox> {
        let sb = self.m.get(id)?;
        if !self.sees(sb.tenant.as_deref()) {
            return Err(Error::not_found("sandbox", id));
        }
        Ok(sb)
    }

    fn my_snapshot(&self, id_or_name: &str) -> Result<Snapshot> {
        let snap = self.m.snapshot_get(id_or_name)?;
        if !self.sees(snap.tenant.as_deref()) {
            return Err(Error::not_found("snapshot", id_or_name));
        }
        Ok(snap)
    }

    fn admin_only(&self, what: &str) -> Result<()> {
        match self.tenant() {
            Some(t) => Err(Error::Forbidden(format!("{what} is the admin's; tenant {t}'s key cannot do it"))),
            None => Ok(()),
        }
    }

    /// Record a call in the audit log, then pass its result on. The log
    /// names the object, never an argument (so no secret value).
    fn audit<T>(&self, op: &str, object: Option<&str>, r: Result<T>) -> Result<T> {
        let e = spinup_api::AuditEntry {
            seq: 0,
            at: spinup_model::now_ms(),
            actor: self.caller.actor.clone(),
            tenant: self.caller.tenant.clone(),
            op: op.to_string(),
            object: object.map(str::to_string),
            outcome: match &r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.code().to_string(),
            },
        };
        if let Err(err) = self.m.store.audit(&e) {
            tracing::warn!(op, "writing the audit log: {err}");
        }
        r
    }
}

/// An agent's error, in the model's terms.
pub fn agent_err(e: ClientError) -> Error {
    match e {
        ClientError::Remote { status, code, message } => Error::Guest { status, code, message },
        other => Error::Agent(other.to_string()),
    }
}

/// Fill in what an exec request leaves open from the environment's
/// defaults; refuse one with nothing to run.
fn apply_defaults(m: &Manager, sb: &Sandbox, req: &mut ExecRequest) -> Result<()> {
    if req.argv.is_empty() && req.cmd.as_deref().is_none_or(str::is_empty) {
        return Err(Error::InvalidArgument("exec needs argv or cmd".into()));
    }
    if req.argv.iter().any(|a| a.contains('\0')) || req.cmd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(Error::InvalidArgument("command contains a NUL byte".into()));
    }
    for (k, v) in &sb.env_vars {
        req.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if let Ok(env) = m.envs.get(&sb.env) {
        for kv in &env.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                req.env.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if req.cwd.is_none() && !env.config.workdir.is_empty() {
            req.cwd = Some(env.config.workdir.clone());
        }
        if req.user.is_none() && !env.config.user.is_empty() {
            req.user = Some(env.config.user.clone());
        }
    }
    Ok(())
}

/// A frame reader as a stream.
fn frames(rx: FrameStream) -> BoxStream<'static, std::result::Result<Frame, String>> {
    futures::stream::unfold(rx, |mut rx| async move { rx.next().await.map(|f| (f, rx)) }).boxed()
}

fn body_of(s: ByteStream) -> spinup_protocol::client::Body {
    StreamBody::new(s.map(|r| r.map(hyper::body::Frame::data))).boxed_unsync()
}

/// Pass a request through to the agent, streaming both bodies.
async fn forward(
    c: &AgentClient,
    method: http::Method,
    uri: &str,
    body: spinup_protocol::client::Body,
) -> Result<Forwarded> {
    let resp = c.request(method, uri, body).await.map_err(agent_err)?;
    let (parts, incoming) = resp.into_parts();
    let header = |h: http::HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Forwarded {
        status: parts.status.as_u16(),
        content_type: header(http::header::CONTENT_TYPE),
        content_length: header(http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        body: incoming.into_data_stream().map(|r| r.map_err(std::io::Error::other)).boxed(),
    })
}

#[async_trait::async_trait]
impl SandboxService for Service {
    async fn drivers(&self) -> Result<Vec<Capabilities>> {
        Ok(self.m.drivers())
    }

    async fn gc(&self) -> Result<GcReport> {
        let r = async {
            self.admin_only("gc")?;
            self.m.gc().await
        }
        .await;
        self.audit("gc", None, r)
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Sandbox>> {
        Ok(self.m.list(&q.labels)?.into_iter().filter(|sb| self.sees(sb.tenant.as_deref())).collect())
    }

    async fn create(&self, req: CreateRequest) -> Result<Sandbox> {
        let r = async {
            if let Some(s) = &req.from_snapshot {
                self.my_snapshot(s)?;
            }
            self.m.create(req, None, self.caller.tenant.clone()).await
        }
        .await;
        let id = r.as_ref().ok().map(|sb| sb.id.to_string());
        self.audit("create", id.as_deref(), r)
    }

    async fn get(&self, id: &SandboxId) -> Result<Sandbox> {
        self.mine(id)
    }

    async fn remove(&self, id: &SandboxId, force: bool) -> Result<()> {
        let r = async {
            self.mine(id)?;
            self.m.destroy(id, force).await
        }
        .await;
        self.audit("remove", Some(id), r)
    }

    async fn set_timeout(&self, id: &SandboxId, req: TimeoutRequest) -> Result<Sandbox> {
        let r = self.mine(id).and_then(|_| self.m.set_timeout(id, req.timeout_s));
        self.audit("set_timeout", Some(id), r)
    }

    async fn info(&self, id: &SandboxId) -> Result<AgentInfo> {
        self.mine(id)?;
        let c = self.m.agent(id).await?;
        c.call(http::Method::GET, "/v1/info", None::<&()>).await.map_err(agent_err)
    }

    async fn events(&self, id: &SandboxId) -> Result<Vec<Transition>> {
        if self.tenant().is_some() {
            self.mine(id)?;
        }
        let t = self.m.store.transitions(id)?;
        if t.is_empty() {
            return Err(Error::not_found("sandbox", id.as_str()));
        }
        Ok(t)
    }

    async fn pause(&self, id: &SandboxId, req: PauseRequest) -> Result<Sandbox> {
        let r = async {
            self.mine(id)?;
            self.m.pause(id, req.free_memory).await
        }
        .await;
        self.audit("pause", Some(id), r)
    }

    async fn resume(&self, id: &SandboxId) -> Result<Sandbox> {
        let r = async {
            self.mine(id)?;
            self.m.resume(id).await
        }
        .await;
        self.audit("resume", Some(id), r)
    }

    async fn start(&self, id: &SandboxId) -> Result<Sandbox> {
        let r = async {
            self.mine(id)?;
            self.m.start(id).await
        }
        .await;
        self.audit("start", Some(id), r)
    }

    /// No driver implements it yet: the answer comes from the sandbox's
    /// driver's declaration (`unsupported` with the driver and capability),
    /// never a silent no-op.
    async fn update_resources(&self, id: &SandboxId) -> Result<Sandbox> {
        const CAPABILITY: &str = "live_resource_update";
        let sb = self.mine(id)?;
        self.m.require(&sb, CAPABILITY)?;
        Err(Error::Unsupported { driver: sb.driver, capability: CAPABILITY.into() })
    }

    async fn snapshot(&self, id: &SandboxId, req: SnapshotRequest) -> Result<Snapshot> {
        let r = async {
            self.mine(id)?;
            self.m.snapshot(id, req).await
        }
        .await;
        self.audit("snapshot", Some(id), r)
    }

    async fn fork(&self, id: &SandboxId, req: ForkRequest) -> Result<ForkResult> {
        let r = async {
            self.mine(id)?;
            self.m.fork(id, req).await
        }
        .await;
        self.audit("fork", Some(id), r)
    }

    async fn diff(&self, id: &SandboxId, q: DiffQuery) -> Result<Diff> {
        self.mine(id)?;
        if let Some(since) = &q.since {
            self.my_snapshot(since)?;
        }
        self.m.diff(id, q.since, q.path, q.content).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(self.m.snapshot_list()?.into_iter().filter(|s| self.sees(s.tenant.as_deref())).collect())
    }

    async fn snapshot_get(&self, id: &str) -> Result<Snapshot> {
        self.my_snapshot(id)
    }

    async fn snapshot_remove(&self, id: &str) -> Result<()> {
        let r = self.my_snapshot(id).and_then(|_| self.m.snapshot_remove(id));
        self.audit("snapshot_remove", Some(id), r)
    }

    /// The snapshot's own layer as an OCI layer tar; its sha256 is the
    /// snapshot's `layer` digest.
    async fn snapshot_layer(&self, id: &str) -> Result<Layer> {
        let snap = self.my_snapshot(id)?;
        let m = self.m.clone();
        let digest = snap.layer.clone();
        let path = tokio::task::spawn_blocking(move || m.envs.layer_blob(&digest))
            .await
            .map_err(|e| Error::internal("blob task", e))??;
        let f = tokio::fs::File::open(&path).await.map_err(|e| Error::internal("opening the layer blob", e))?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok(Layer { digest: snap.layer, len, body: tokio_util::io::ReaderStream::new(f).boxed() })
    }

    async fn set_network(&self, id: &SandboxId, policy: NetworkPolicy) -> Result<Sandbox> {
        let r = async {
            self.mine(id)?;
            self.m.set_network(id, policy).await
        }
        .await;
        self.audit("set_network", Some(id), r)
    }

    async fn ports(&self, id: &SandboxId) -> Result<Vec<PortExposure>> {
        Ok(self.mine(id)?.ports)
    }

    async fn expose(&self, id: &SandboxId, req: ExposeRequest) -> Result<ExposeAnswer> {
        let r = async {
            self.mine(id)?;
            self.m.expose(id, req).await
        }
        .await;
        self.audit("expose", Some(id), r)
    }

    async fn unexpose(&self, id: &SandboxId, port: u16) -> Result<()> {
        let r = async {
            self.mine(id)?;
            self.m.unexpose(id, port).await
        }
        .await;
        self.audit("unexpose", Some(id), r)
    }

    async fn tunnel(&self, id: &SandboxId, port: u16) -> Result<Tunnel> {
        if port == 0 {
            return Err(Error::InvalidArgument("port must be 1-65535".into()));
        }
        let sb = self.mine(id)?;
        let c = self.m.agent_for(&sb).await?;
        let (input, rx) = c.tunnel(port, None).await.map_err(agent_err)?;
        let output = rx.map(|r| r.map_err(std::io::Error::other));
        Ok(Tunnel { input, output: Box::pin(output) })
    }

    async fn attach_secrets(&self, id: &SandboxId, req: AttachRequest) -> Result<Sandbox> {
        let r = async {
            self.mine(id)?;
            self.m.attach_secrets(id, req).await
        }
        .await;
        self.audit("attach_secrets", Some(id), r)
    }

    async fn secrets(&self) -> Result<Vec<SecretInfo>> {
        Ok(self.m.secrets.list()?.into_iter().filter(|s| self.sees(s.tenant.as_deref())).collect())
    }

    async fn secret(&self, name: &str) -> Result<SecretInfo> {
        self.m.secrets.info(self.tenant(), name)
    }

    async fn set_secret(&self, name: &str, value: SecretValue) -> Result<SecretSet> {
        let existed = self.m.secrets.info(self.tenant(), name).is_ok();
        let r = self.m.secrets.set(self.tenant(), name, &value.0).map(|info| SecretSet { created: !existed, info });
        self.audit("set_secret", Some(name), r)
    }

    /// Refused while any sandbox has it attached.
    async fn remove_secret(&self, name: &str) -> Result<()> {
        let r = (|| {
            let users: Vec<String> = self
                .m
                .list(&Default::default())?
                .into_iter()
                .filter(|s| s.tenant.as_deref() == self.tenant() && s.secrets.iter().any(|x| x.name == name))
                .map(|s| s.id.into())
                .collect();
            if !users.is_empty() {
                return Err(Error::Conflict(format!(
                    "secret {name} is attached to sandbox(es) {}; detach it or remove them first",
                    users.join(", ")
                )));
            }
            self.m.secrets.remove(self.tenant(), name)
        })();
        self.audit("remove_secret", Some(name), r)
    }

    async fn ready(&self, id: &SandboxId) -> Result<()> {
        self.mine(id)?;
        self.m.agent(id).await.map(drop)
    }

    async fn exec(&self, id: &SandboxId, req: ExecRequest, interactive: bool) -> Result<ExecSession> {
        let r = self.exec_now(id, req, interactive).await;
        self.audit("exec", Some(id), r)
    }

    async fn attach(&self, id: &SandboxId, pid: u32) -> Result<ExecSession> {
        self.mine(id)?;
        self.attach_now(id, pid).await
    }

    async fn processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>> {
        self.mine(id)?;
        let c = self.m.agent(id).await?;
        c.call(http::Method::GET, "/v1/processes", None::<&()>).await.map_err(agent_err)
    }

    async fn signal(&self, id: &SandboxId, pid: u32, req: SignalRequest) -> Result<serde_json::Value> {
        let r = async {
            self.mine(id)?;
            let c = self.m.agent(id).await?;
            c.call(http::Method::POST, &format!("/v1/processes/{pid}/signal"), Some(&req)).await.map_err(agent_err)
        }
        .await;
        self.audit("signal", Some(id), r)
    }

    async fn stdin(&self, id: &SandboxId, pid: u32, query: String, body: ByteStream) -> Result<Forwarded> {
        self.mine(id)?;
        let c = self.m.agent(id).await?;
        forward(&c, http::Method::POST, &format!("/v1/processes/{pid}/stdin?{query}"), body_of(body)).await
    }

    async fn files(&self, id: &SandboxId, req: FileRequest) -> Result<Forwarded> {
        let op = match req.op {
            FileOp::Read | FileOp::Stat | FileOp::List | FileOp::Watch => None,
            FileOp::Write => Some("files.write"),
            FileOp::Mkdir => Some("files.mkdir"),
            FileOp::Remove => Some("files.remove"),
            FileOp::Rename => Some("files.rename"),
            FileOp::Chmod => Some("files.chmod"),
        };
        let r = async {
            self.mine(id)?;
            self.files_now(id, req).await
        }
        .await;
        match op {
            Some(op) => self.audit(op, Some(id), r),
            None => r,
        }
    }

    async fn environments(&self) -> Result<EnvList> {
        let environments = self.m.envs.list()?;
        Ok(EnvList { environments, builtin: crate::envs::BUILTINS.iter().map(|s| s.to_string()).collect() })
    }

    async fn environment(&self, name: &str) -> Result<Environment> {
        self.m.envs.get(name)
    }

    /// Refused while a sandbox uses it; layers a snapshot or sandbox still
    /// stacks stay.
    async fn remove_environment(&self, name: &str) -> Result<()> {
        let r = async {
            self.admin_only("removing an environment")?;
            self.remove_environment_now(name)
        }
        .await;
        self.audit("remove_environment", Some(name), r)
    }

    async fn import_environment(&self, name: &str, tar: ByteStream) -> Result<Environment> {
        let r = async {
            self.admin_only("importing an environment")?;
            self.import_environment_now(name, tar).await
        }
        .await;
        self.audit("import_environment", Some(name), r)
    }

    async fn build_environment(&self, name: &str) -> Result<BoxStream<'static, BuildEvent>> {
        let r = async {
            self.admin_only("building an environment")?;
            self.build_environment_now(name)
        }
        .await;
        self.audit("build_environment", Some(name), r)
    }
    async fn run_code(&self, id: &SandboxId, req: CodeRequest) -> Result<BoxStream<'static, CodeEvent>> {
        let r = async {
            self.mine(id)?;
            self.code.run(self, id, req).await
        }
        .await;
        self.audit("run_code", Some(id), r)
    }

    async fn code_contexts(&self, id: &SandboxId) -> Result<Vec<CodeContext>> {
        self.mine(id)?;
        self.code.contexts(self, id).await
    }

    async fn create_code_context(&self, id: &SandboxId, req: ContextRequest) -> Result<CodeContext> {
        let r = async {
            self.mine(id)?;
            self.code.create_context(self, id, req).await
        }
        .await;
        self.audit("create_code_context", Some(id), r)
    }

    async fn restart_code_context(&self, id: &SandboxId, context: &str) -> Result<CodeContext> {
        let r = async {
            self.mine(id)?;
            self.code.restart_context(self, id, context).await
        }
        .await;
        self.audit("restart_code_context", Some(id), r)
    }

    async fn remove_code_context(&self, id: &SandboxId, context: &str) -> Result<()> {
        let r = async {
            self.mine(id)?;
            self.code.remove_context(self, id, context).await
        }
        .await;
        self.audit("remove_code_context", Some(id), r)
    }

    async fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.admin_only("listing keys")?;
        crate::tenants::list_keys(&self.m.store)
    }

    async fn create_key(&self, req: KeyRequest) -> Result<NewKey> {
        let r = self.admin_only("making keys").and_then(|()| crate::tenants::create_key(&self.m.store, &req));
        let id = r.as_ref().ok().map(|k| k.info.id.clone());
        self.audit("create_key", id.as_deref().or(req.tenant.as_deref()), r)
    }

    async fn remove_key(&self, id: &str) -> Result<()> {
        let r = self.admin_only("revoking keys").and_then(|()| crate::tenants::remove_key(&self.m.store, id));
        self.audit("remove_key", Some(id), r)
    }

    async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>> {
        self.admin_only("the audit log")?;
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Error::InvalidArgument(format!("limit must be 1-1000, got {limit}")));
        }
        if q.before.is_some_and(|b| b < 0) {
            return Err(Error::InvalidArgument("before is an entry's seq, 0 or more".into()));
        }
        self.m.store.audit_log(q.tenant.as_deref(), q.before, limit)
    }
}

/// The bodies of the calls the trait methods check and audit first.
impl Service {
    async fn exec_now(&self, id: &SandboxId, mut req: ExecRequest, interactive: bool) -> Result<ExecSession> {
        let sb = self.mine(id)?;
        if req.pty.is_some() {
            if !interactive {
                return Err(Error::InvalidArgument("a pty needs the WebSocket endpoint (/exec/ws)".into()));
            }
            self.m.require(&sb, "pty")?;
        }
        apply_defaults(&self.m, &sb, &mut req)?;
        // Stdin stays open for input frames only on a two-way stream;
        // otherwise it is `input` (then closed) or nothing.
        let input = req.input.take();
        req.stdin = input.is_some() || (interactive && req.stdin);
        let c = self.m.agent_for(&sb).await?;
        let start = Frame::Start(req.into());
        let (tx, rx) = c.process_stream("/v1/exec", Some(start)).await.map_err(agent_err)?;
        if let Some(input) = input {
            let _ = tx.send(Frame::Stdin(Bytes::from(input))).await;
            let _ = tx.send(Frame::StdinClose).await;
        }
        Ok(ExecSession { input: tx, output: frames(rx) })
    }

    async fn attach_now(&self, id: &SandboxId, pid: u32) -> Result<ExecSession> {
        let c = self.m.agent(id).await?;
        let procs: Vec<ProcessInfo> =
            c.call(http::Method::GET, "/v1/processes", None::<&()>).await.map_err(agent_err)?;
        if !procs.iter().any(|p| p.pid == pid) {
            return Err(Error::not_found("process", pid.to_string()));
        }
        let (tx, rx) = c.process_stream(&format!("/v1/processes/{pid}/attach"), None).await.map_err(agent_err)?;
        Ok(ExecSession { input: tx, output: frames(rx) })
    }

    async fn files_now(&self, id: &SandboxId, req: FileRequest) -> Result<Forwarded> {
        let (method, path) = match req.op {
            FileOp::Read => (http::Method::GET, "content"),
            FileOp::Write => (http::Method::PUT, "content"),
            FileOp::Stat => (http::Method::GET, "stat"),
            FileOp::List => (http::Method::GET, "list"),
            FileOp::Watch => (http::Method::GET, "watch"),
            FileOp::Mkdir => (http::Method::POST, "mkdir"),
            FileOp::Remove => (http::Method::POST, "remove"),
            FileOp::Rename => (http::Method::POST, "rename"),
            FileOp::Chmod => (http::Method::POST, "chmod"),
        };
        if method != http::Method::POST {
            let c = self.m.agent(id).await?;
            let body = if req.op == FileOp::Write { body_of(req.body) } else { full_body(Bytes::new()) };
            return forward(&c, method, &format!("/v1/files/{path}?{}", req.query), body).await;
        }
        // A POST operation's body is JSON: check it here so a malformed one
        // gets the API's error, not the agent's.
        let body: Vec<Bytes> = req
            .body
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::InvalidArgument(format!("reading the request body: {e}")))?;
        let body = Bytes::from(body.concat());
        spinup_api::parse_json::<serde_json::Value>(&body)?;
        let c = self.m.agent(id).await?;
        let mut out = forward(&c, method, &format!("/v1/files/{path}"), full_body(body)).await?;
        out.content_type = Some("application/json".into());
        Ok(out)
    }

    fn remove_environment_now(&self, name: &str) -> Result<()> {
        self.m.envs.get(name)?;
        if let Some(sb) = self.m.list(&Default::default())?.into_iter().find(|s| s.env == name) {
            return Err(Error::Conflict(format!("environment {name} is used by sandbox {}", sb.id)));
        }
        let layers = self.m.envs.get(name)?.layers;
        self.m.envs.forget(name)?;
        self.m.gc_layers(&layers);
        Ok(())
    }

    async fn import_environment_now(&self, name: &str, tar: ByteStream) -> Result<Environment> {
        crate::envs::validate_name(name)?;
        let reader = tokio_util::io::StreamReader::new(tar);
        let m = self.m.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let sync = tokio_util::io::SyncIoBridge::new(reader);
            m.envs.import_tar(&name, sync, &None)
        })
        .await
        .map_err(|e| Error::internal("import task", e))?
    }

    fn build_environment_now(&self, name: &str) -> Result<BoxStream<'static, BuildEvent>> {
        crate::envs::validate_name(name)?;
        if !crate::envs::BUILTINS.contains(&name) {
            return Err(Error::InvalidArgument(format!(
                "no built-in recipe '{name}'; recipes: {}",
                crate::envs::BUILTINS.join(", ")
            )));
        }
        let (ptx, prx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let build = {
            let m = self.m.clone();
            let name = name.to_string();
            tokio::spawn(async move { m.envs.build(&name, Some(ptx)).await })
        };
        let progress =
            futures::stream::unfold(
                prx,
                |mut rx| async move { rx.recv().await.map(|l| (BuildEvent::Progress(l), rx)) },
            );
        let last = futures::stream::once(async move {
            match build.await {
                Ok(Ok(env)) => BuildEvent::Environment(env),
                Ok(Err(e)) => BuildEvent::Error(ErrorBody {
                    code: e.code().into(),
                    message: e.to_string(),
                    driver: None,
                    capability: None,
                }),
                Err(e) => BuildEvent::Error(ErrorBody {
                    code: "internal".into(),
                    message: e.to_string(),
                    driver: None,
                    capability: None,
                }),
            }
        });
        Ok(progress.chain(last).boxed())
    }
}
