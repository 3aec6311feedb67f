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
pub mod keys;
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
pub use keys::{AuditEntry, AuditQuery, KeyInfo, KeyRequest, NewKey, Quota};
pub use network::{AttachRequest, ExposeAnswer, ExposeRequest};
pub use routes::{Op, Route, ROUTES};
pub use sandboxes::{
    CreateRequest, ForceQuery, GcReport, ListQuery, PauseRequest, ResourcesPatch, TimeoutRequest, Transition,
};
pub use secrets::SecretInfo;
pub use service::{
    Authenticator, ByteStream, ExecSession, FileOp, FileRequest, Forwarded, Layer, SandboxService, SecretSet,
    SecretValue, Tunnel, TunnelIo,
};
pub use snapshots::{Change, Diff, DiffQuery, ForkRequest, ForkResult, SnapshotRequest};
pub use spinup_model::{
    Capabilities, Environment, Error, NetMode, NetworkPolicy, OnTimeout, PortExposure, Result, Sandbox, SandboxId,
    SecretMount, Snapshot,
};

/// Parse a JSON body, which is an object. An empty body is `{}`, so every
/// field takes its default; anything else that is not a JSON object
/// (whitespace alone, `[...]`, malformed text) is `invalid_argument`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| Error::InvalidArgument(format!("a JSON body is required: {e}")));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::InvalidArgument("malformed JSON body: expected a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("malformed JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Req {
        count: Option<u32>,
        driver: Option<String>,
    }

    /// Only the empty body means `{}`: serde would read `[null, null]` as
    /// a struct, and whitespace is no JSON.
    #[test]
    fn a_body_is_an_object_or_nothing() {
        assert_eq!(super::parse_json::<Req>(b"").unwrap(), Req::default());
        assert_eq!(super::parse_json::<Req>(b" {\"count\": 2} ").unwrap().count, Some(2));
        for bad in [&b"\n"[..], b"[null, null]", b"[2]", b"null", b"2", b"{"] {
            let e = super::parse_json::<Req>(bad).unwrap_err();
            assert!(matches!(e, crate::Error::InvalidArgument(_)), "{bad:?}: {e:?}");
        }
    }
}
