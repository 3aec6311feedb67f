//! Running commands. The public request is this crate's own; it converts
//! into the agent protocol's, so the two can change apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes/{id}/exec`; also the Start of `/exec/ws`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ExecRequest {
    /// Program and arguments, run directly.
    pub argv: Vec<String>,
    /// A shell string run through `/bin/sh -c`; used when `argv` is empty.
    pub cmd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// User name or numeric uid[:gid] inside the sandbox.
    pub user: Option<String>,
    /// Kill the whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Keep running when the attached stream goes away.
    pub background: bool,
    /// Run on a pseudo-terminal of this size (WebSocket only).
    pub pty: Option<PtySize>,
    /// Keep stdin open for input (WebSocket); the JSON endpoint sets it
    /// from `input`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Text fed to stdin, which is then closed (JSON endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

/// `?stream=true` answers NDJSON events instead of one [`ExecResult`].
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ExecQuery {
    #[serde(default)]
    pub stream: bool,
}

/// The answer of a non-streaming exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub message: Option<String>,
    /// Some output was dropped past the capture limit.
    pub truncated: bool,
}

impl From<ExecRequest> for spinup_protocol::ExecRequest {
    fn from(r: ExecRequest) -> Self {
        spinup_protocol::ExecRequest {
            argv: r.argv,
            cmd: r.cmd,
            env: r.env,
            cwd: r.cwd,
            user: r.user,
            timeout_ms: r.timeout_ms,
            background: r.background,
            pty: r.pty.map(|p| spinup_protocol::PtySize { cols: p.cols, rows: p.rows }),
            stdin: r.stdin,
        }
    }
}

impl From<spinup_protocol::ExecRequest> for ExecRequest {
    fn from(r: spinup_protocol::ExecRequest) -> Self {
        ExecRequest {
            argv: r.argv,
            cmd: r.cmd,
            env: r.env,
            cwd: r.cwd,
            user: r.user,
            timeout_ms: r.timeout_ms,
            background: r.background,
            pty: r.pty.map(|p| PtySize { cols: p.cols, rows: p.rows }),
            stdin: r.stdin,
            input: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways_without_loss() {
        let r = ExecRequest {
            argv: vec!["sh".into()],
            cmd: Some("x".into()),
            env: [("A".to_string(), "1".to_string())].into(),
            cwd: Some("/w".into()),
            user: Some("1000".into()),
            timeout_ms: Some(5),
            background: true,
            pty: Some(PtySize { cols: 80, rows: 24 }),
            stdin: true,
            input: None,
        };
        let p: spinup_protocol::ExecRequest = r.clone().into();
        assert_eq!(ExecRequest::from(p), r);
    }
}
