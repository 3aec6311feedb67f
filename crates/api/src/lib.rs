//! The `/v1` contract, shared by the daemon (which implements it), its
//! front ends (which translate to it) and clients (the CLI).
//!
//! - the wire types, one module per resource;
//! - [`ErrorBody`], the one error shape;
//! - [`routes::ROUTES`], the table the HTTP router and the OpenAPI document
//!   are both built from;
//! - [`SandboxService`], one async method per operation: the seam every
//!   front end (native HTTP, E2B, MCP, a cluster router) sits on.
//!
//! The agent protocol keeps its own types (`spinup-protocol`); the public
//! exec request is this crate's, and converts into the agent's.

pub mod code;
pub mod environments;
pub mod error;
pub mod exec;
pub mod network;
pub mod openapi;
pub mod routes;
pub mod sandboxes;
pub mod secrets;
pub mod service;
pub mod snapshots;

pub use code::{CodeContext, CodeEvent, CodeRequest, ContextRequest, Language};
pub use environments::{BuildEvent, EnvList};
pub use error::ErrorBody;
pub use exec::{ExecQuery, ExecRequest, ExecResult};
pub use network::{AttachRequest, ExposeAnswer, ExposeRequest};
pub use routes::{Op, Route, ROUTES};
pub use sandboxes::{
    CreateRequest, ForceQuery, GcReport, ListQuery, PauseRequest, ResourcesPatch, TimeoutRequest, Transition,
};
pub use secrets::SecretInfo;
pub use service::{
    ByteStream, ExecSession, FileOp, FileRequest, Forwarded, Layer, SandboxService, SecretSet, SecretValue, Tunnel,
    TunnelIo,
};
pub use snapshots::{Change, Diff, DiffQuery, ForkRequest, ForkResult, SnapshotRequest};
pub use spinup_model::{
    Capabilities, Environment, Error, NetMode, NetworkPolicy, OnTimeout, PortExposure, Result, Sandbox, SandboxId,
    SecretMount, Snapshot,
};

/// Parse a JSON body. An empty (or all-whitespace) body is `{}`, so every
/// field takes its default; malformed input is `invalid_argument`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let body: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("malformed JSON body: {e}")))
}
