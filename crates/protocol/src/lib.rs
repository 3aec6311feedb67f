//! The host ⇄ agent protocol, version [`PROTOCOL_VERSION`].
//!
//! Transport: HTTP/2 with prior knowledge over one byte stream (a unix
//! socket today; a virtio-serial port or vsock tomorrow). HTTP/2 gives many
//! concurrent streams on that one connection.
//!
//! Unary calls are JSON. File contents travel as raw streaming bodies.
//! Processes (exec, attach, PTY) use a bidirectional stream of [`Frame`]s in
//! the request and response bodies.
//!
//! | method | path | body → response |
//! |---|---|---|
//! | GET  | /v1/info | → [`AgentInfo`] |
//! | POST | /v1/exec | frames (first is `Start`) → frames |
//! | GET  | /v1/processes | → `Vec<ProcessInfo>` |
//! | POST | /v1/processes/{pid}/attach | frames → frames (replays buffered output) |
//! | POST | /v1/processes/{pid}/signal | [`SignalRequest`] → `{}` |
//! | POST | /v1/processes/{pid}/stdin?close=BOOL | raw bytes → `{}` |
//! | GET  | /v1/files/content?path=P | → raw bytes |
//! | PUT  | /v1/files/content?path=P&mode=M&user=U | raw bytes → [`FileStat`] (file and created parents owned by U) |
//! | GET  | /v1/files/stat?path=P | → [`FileStat`] |
//! | GET  | /v1/files/list?path=P&depth=N | → `Vec<FileStat>` |
//! | POST | /v1/files/mkdir | [`PathRequest`] → [`FileStat`] (created dirs owned by its `user`) |
//! | GET  | /v1/files/watch?path=P&recursive=BOOL | → NDJSON [`WatchEvent`] stream: `started`, then changes, until the client goes |
//! | POST | /v1/files/remove | [`RemoveRequest`] → `{}` |
//! | POST | /v1/files/rename | [`RenameRequest`] → [`FileStat`] |
//! | POST | /v1/files/chmod | [`ChmodRequest`] → [`FileStat`] |
//! | POST | /v1/fs/sync | → `{}` (flush every filesystem's caches) |
//! | POST | /v1/fs/changes | [`ChangesRequest`] → OCI layer tar of the root's changes |
//! | POST | /v1/identity | [`IdentityRequest`] → `{}` (VM guests only) |
//!
//! Errors are JSON [`ErrorBody`] with a 4xx/5xx status.
//!
//! `user` (file writes, mkdir) is a user name or numeric `uid[:gid]`,
//! resolved against the guest's own /etc/passwd and /etc/group exactly as
//! exec's `user`; an unknown one is 400 `invalid_argument`.
//!
//! A watch answers `200 application/x-ndjson` whose first line,
//! `{"type":"started"}`, is written only once the inotify watches are in
//! place: a change made after a client has read it is reported. Errors
//! before that (404 missing path, 400 relative path or not a directory)
//! are the usual [`ErrorBody`].

pub mod client;
pub mod frame;
pub mod types;

pub use client::{AgentClient, ClientError};
pub use frame::{Frame, FrameDecoder};
pub use types::*;

/// Bumped on any incompatible change. Sent by both sides in
/// [`PROTOCOL_HEADER`]; the agent refuses other versions.
pub mod guest_policy;

pub const PROTOCOL_VERSION: u32 = 1;
pub const PROTOCOL_HEADER: &str = "x-spinup-protocol";

/// In-guest path of the agent's per-sandbox run directory.
pub const GUEST_RUN_DIR: &str = "/run/spinup";
/// Fd on which the agent inherits its already-bound listening socket.
pub const LISTEN_FD: i32 = 3;

/// The name of a microVM's virtio-serial port for the agent.
pub const VM_AGENT_PORT: &str = "spinup.agent";
/// What a probe guest's agent (`spinup.probe=1`) prints on the console
/// before it powers the guest off.
pub const VM_PROBE_MARKER: &str = "SPINUP-PROBE-OK";

/// A serial byte stream (virtio-serial) has no connections, and a guest
/// cannot always tell that its host went away and came back. So each host
/// session starts with a handshake: the host writes [`SERIAL_RESET`] (bytes
/// that are no valid HTTP/2: a guest still in a stale session drops it)
/// and `SPINUP-HELLO <nonce>\n`, repeating the hello until the agent answers
/// `SPINUP-READY <nonce>\n`. Both sides discard whatever precedes those
/// lines; the agent then also discards anything before the HTTP/2 preface.
pub const SERIAL_RESET: &[u8] = b"\0\0\0\x07\0\0\0\0\0SPINUP-RESET\n";
pub const SERIAL_HELLO: &str = "SPINUP-HELLO ";
pub const SERIAL_READY: &str = "SPINUP-READY ";
/// What an HTTP/2 client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
