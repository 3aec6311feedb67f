//! [`SandboxService`]: one async method per operation of the API.
//!
//! The daemon implements it once, over its lifecycle manager; that
//! implementation owns validation, defaults, capability checks and
//! filters. Front ends (the native HTTP API, E2B, MCP) only translate to
//! it, and a cluster router will implement it remotely. Every mutating
//! method runs to completion, or undoes itself, whether or not its caller
//! still waits for the answer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use spinup_model::{Capabilities, Environment, NetworkPolicy, PortExposure, Result, Sandbox, SandboxId, Snapshot};
use spinup_protocol::{AgentInfo, Frame, ProcessInfo, SignalRequest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;

use crate::{
    AttachRequest, BuildEvent, CodeContext, CodeEvent, CodeRequest, ContextRequest, CreateRequest, Diff, DiffQuery,
    EnvList, ExecRequest, ExposeAnswer, ExposeRequest, ForkRequest, ForkResult, GcReport, ListQuery, PauseRequest,
    SecretInfo, SnapshotRequest, TimeoutRequest, Transition,
};

/// A streamed body, in or out.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A running process's streams. The `/v1` WebSocket carries these frames
/// as they are (protocol frames are its documented wire format).
pub struct ExecSession {
    /// To the process: `Stdin`, `StdinClose`, `Signal`, `Resize`. Dropping
    /// it closes the request; a foreground process whose caller is gone
    /// is killed.
    pub input: tokio::sync::mpsc::Sender<Frame>,
    /// From it: `Started`, `Stdout`, `Stderr`, then `Exit` or `Error`; an
    /// `Err` is a broken stream.
    pub output: BoxStream<'static, std::result::Result<Frame, String>>,
}

impl fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecSession").finish_non_exhaustive()
    }
}

/// File operations, answered by the sandbox's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
    Stat,
    List,
    /// A directory's changes: the agent's NDJSON stream, passed through.
    Watch,
    Mkdir,
    Remove,
    Rename,
    Chmod,
}

/// A file operation: `query` is the raw query (`path=…&mode=…`), `body`
/// the content to write or the JSON of a POST operation.
pub struct FileRequest {
    pub op: FileOp,
    pub query: String,
    pub body: ByteStream,
}

impl fmt::Debug for FileRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRequest").field("op", &self.op).field("query", &self.query).finish_non_exhaustive()
    }
}

/// An answer passed through from the agent as it gave it: its status,
/// type and (streamed) body.
pub struct Forwarded {
    pub status: u16,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub body: ByteStream,
}

impl fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarded")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// A byte stream to a port inside a sandbox, carried by its agent (so it
/// works on every driver, whatever the network policy). Dropping `input`
/// half-closes the connection.
pub struct Tunnel {
    pub input: tokio::sync::mpsc::Sender<Bytes>,
    pub output: ByteStream,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

/// A tunnel as one byte stream, for a client (hyper's) that runs over it.
pub struct TunnelIo {
    tx: PollSender<Bytes>,
    rx: ByteStream,
    pending: Bytes,
}

impl fmt::Debug for TunnelIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelIo").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

impl TunnelIo {
    pub fn new(t: Tunnel) -> Self {
        TunnelIo { tx: PollSender::new(t.input), rx: t.output, pending: Bytes::new() }
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) => self.pending = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                let b = Bytes::copy_from_slice(buf);
                self.tx.send_item(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// A snapshot's layer tar.
pub struct Layer {
    /// `sha256:…`, the snapshot's `layer`.
    pub digest: String,
    pub len: u64,
    pub body: ByteStream,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer").field("digest", &self.digest).field("len", &self.len).finish_non_exhaustive()
    }
}

/// What setting a secret did.
#[derive(Debug, Clone)]
pub struct SecretSet {
    /// It did not exist before.
    pub created: bool,
    pub info: SecretInfo,
}

/// A secret's value on its way in. Debug never prints it; it is wiped
/// from memory when dropped.
pub struct SecretValue(pub zeroize::Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes, redacted>)", self.0.len())
    }
}

#[async_trait::async_trait]
pub trait SandboxService: Send + Sync + 'static {
    // The daemon.
    async fn drivers(&self) -> Result<Vec<Capabilities>>;
    async fn gc(&self) -> Result<GcReport>;

    // Sandboxes.
    async fn list(&self, q: ListQuery) -> Result<Vec<Sandbox>>;
    async fn create(&self, req: CreateRequest) -> Result<Sandbox>;
    async fn get(&self, id: &SandboxId) -> Result<Sandbox>;
    async fn remove(&self, id: &SandboxId, force: bool) -> Result<()>;
    async fn set_timeout(&self, id: &SandboxId, req: TimeoutRequest) -> Result<Sandbox>;
    async fn info(&self, id: &SandboxId) -> Result<AgentInfo>;
    async fn events(&self, id: &SandboxId) -> Result<Vec<Transition>>;
    async fn pause(&self, id: &SandboxId, req: PauseRequest) -> Result<Sandbox>;
    async fn resume(&self, id: &SandboxId) -> Result<Sandbox>;
    /// Boot a stopped sandbox again on its disk.
    async fn start(&self, id: &SandboxId) -> Result<Sandbox>;
    async fn update_resources(&self, id: &SandboxId) -> Result<Sandbox>;

    // Snapshots.
    async fn snapshot(&self, id: &SandboxId, req: SnapshotRequest) -> Result<Snapshot>;
    async fn fork(&self, id: &SandboxId, req: ForkRequest) -> Result<ForkResult>;
    async fn diff(&self, id: &SandboxId, q: DiffQuery) -> Result<Diff>;
    async fn snapshots(&self) -> Result<Vec<Snapshot>>;
    /// By id or name.
    async fn snapshot_get(&self, id: &str) -> Result<Snapshot>;
    async fn snapshot_remove(&self, id: &str) -> Result<()>;
    async fn snapshot_layer(&self, id: &str) -> Result<Layer>;

    // Network, ports and secrets.
    async fn set_network(&self, id: &SandboxId, policy: NetworkPolicy) -> Result<Sandbox>;
    async fn ports(&self, id: &SandboxId) -> Result<Vec<PortExposure>>;
    async fn expose(&self, id: &SandboxId, req: ExposeRequest) -> Result<ExposeAnswer>;
    async fn unexpose(&self, id: &SandboxId, port: u16) -> Result<()>;
    /// Connect to a port inside the sandbox (resumed first if it is paused
    /// with `auto_resume`), for a front end that proxies traffic itself.
    async fn tunnel(&self, id: &SandboxId, port: u16) -> Result<Tunnel>;
    async fn attach_secrets(&self, id: &SandboxId, req: AttachRequest) -> Result<Sandbox>;
    async fn secrets(&self) -> Result<Vec<SecretInfo>>;
    async fn secret(&self, name: &str) -> Result<SecretInfo>;
    async fn set_secret(&self, name: &str, value: SecretValue) -> Result<SecretSet>;
    async fn remove_secret(&self, name: &str) -> Result<()>;

    // Processes.
    /// Make sure the sandbox can run a process now: running (resumed
    /// first if it is paused with `auto_resume`) and its agent connected.
    /// A caller that must answer before it has the request (a WebSocket
    /// before its upgrade) asks this first.
    async fn ready(&self, id: &SandboxId) -> Result<()>;
    /// Start a process. `interactive`: the caller carries a live two-way
    /// stream (a WebSocket), so it may ask for a pty and keep stdin open;
    /// otherwise a pty is refused and stdin is `input` (then closed) or
    /// nothing.
    async fn exec(&self, id: &SandboxId, req: ExecRequest, interactive: bool) -> Result<ExecSession>;
    /// Re-attach to a process (buffered output is replayed).
    async fn attach(&self, id: &SandboxId, pid: u32) -> Result<ExecSession>;
    async fn processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>>;
    async fn signal(&self, id: &SandboxId, pid: u32, req: SignalRequest) -> Result<serde_json::Value>;
    /// Feed stdin; `query` is passed on (`close=true`).
    async fn stdin(&self, id: &SandboxId, pid: u32, query: String, body: ByteStream) -> Result<Forwarded>;

    // Files.
    async fn files(&self, id: &SandboxId, req: FileRequest) -> Result<Forwarded>;

    // Environments.
    async fn environments(&self) -> Result<EnvList>;
    async fn environment(&self, name: &str) -> Result<Environment>;
    async fn remove_environment(&self, name: &str) -> Result<()>;
    /// A rootfs tarball (tar or tar.gz), streamed.
    async fn import_environment(&self, name: &str, tar: ByteStream) -> Result<Environment>;
    /// Build a built-in recipe: progress, then the environment or an error.
    async fn build_environment(&self, name: &str) -> Result<BoxStream<'static, BuildEvent>>;

    // Code: kernels that live in the sandbox, started on first use.
    /// Run code in a context: its events as they come, `end` last.
    async fn run_code(&self, id: &SandboxId, req: CodeRequest) -> Result<BoxStream<'static, CodeEvent>>;
    async fn code_contexts(&self, id: &SandboxId) -> Result<Vec<CodeContext>>;
    async fn create_code_context(&self, id: &SandboxId, req: ContextRequest) -> Result<CodeContext>;
    /// A new kernel for the context; its state is lost.
    async fn restart_code_context(&self, id: &SandboxId, context: &str) -> Result<CodeContext>;
    async fn remove_code_context(&self, id: &SandboxId, context: &str) -> Result<()>;

    // Keys and the audit log (the admin's).
    async fn keys(&self) -> Result<Vec<crate::KeyInfo>>;
    async fn create_key(&self, req: crate::KeyRequest) -> Result<crate::NewKey>;
    async fn remove_key(&self, id: &str) -> Result<()>;
    async fn audit(&self, q: crate::AuditQuery) -> Result<Vec<crate::AuditEntry>>;
}

/// Who a TCP listener's caller is: the daemon turns an API key into the
/// service as that key's holder sees it (its tenant's objects only, or
/// everything for an admin key).
pub trait Authenticator: Send + Sync + 'static {
    /// `None`: no such key, or a revoked one.
    fn authenticate(&self, key: &str) -> Option<std::sync::Arc<dyn SandboxService>>;
}
