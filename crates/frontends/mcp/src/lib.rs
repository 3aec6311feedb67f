//! The MCP (Model Context Protocol) front end: Spinup's sandboxes as MCP
//! tools, served over MCP's streamable HTTP transport at `/mcp`.
//!
//! Like the other front ends it is a translation onto
//! [`SandboxService`]: every tool parses its typed arguments (their JSON
//! schema is derived from the same struct), calls one service method and
//! encodes the answer. The tools are in [`tools`].
//!
//! - **Results.** Every tool answers JSON, as `structuredContent` and as
//!   its text (MCP's convention for structured results).
//! - **Errors.** An error from the service (`not_found`, `unsupported`,
//!   `conflict`, a guest's own code, …) is a tool result with `isError:
//!   true` whose text is `code: message` and whose structured content is
//!   the `/v1` [`spinup_api::ErrorBody`]: the model sees it and can act on
//!   it. Arguments that do not fit a tool's schema (a missing field, a
//!   wrong type, an unknown field, bad base64, `cmd` and `argv` both or
//!   neither) are JSON-RPC protocol errors, `-32602 invalid params`.
//! - **Transport.** Stateless streamable HTTP with JSON answers: no MCP
//!   session is kept between requests (the tools need none: every call
//!   names its sandbox), so nothing expires while a client is idle, any
//!   number of clients share the endpoint, and a daemon restart loses
//!   nothing. Clients that initialize (the 2024-11 … 2025-11 handshake)
//!   and clients of the per-request protocol (2026-07) are both served.
//!   The daemon mounts [`router`] on its unix socket and on its `--tcp`
//!   listener, where the API key check of the native API applies.
//! - **`spinup mcp` (stdio)** is a proxy in the CLI: it forwards each
//!   line-delimited JSON-RPC message from stdin to this endpoint (over the
//!   daemon's unix socket, or TCP with the bearer key) and writes the
//!   answers to stdout. It was chosen over a client-side `SandboxService`
//!   over the daemon's HTTP API: that would be a second implementation of
//!   40-odd methods (exec frames over WebSockets, streamed file bodies)
//!   kept in step with the daemon's, and the stdio and HTTP transports
//!   could answer differently. The proxy is ~200 lines that know nothing
//!   of the tools, so both transports are this one server.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use spinup_api::SandboxService;

mod capture;
pub mod tools;

pub use tools::Server;

/// Where the daemon serves MCP.
pub const PATH: &str = "/mcp";

/// The `/mcp` route, for the daemon to merge into its listeners' routers
/// (outside any authentication it puts around them).
pub fn router(svc: Arc<dyn SandboxService>) -> axum::Router {
    let config = StreamableHttpServerConfig::default()
        // Stateless, JSON answers: see the crate docs.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // rmcp accepts only loopback Host headers by default, against DNS
        // rebinding from a browser. The daemon's TCP listener requires the
        // API key on every request (a rebinding page cannot send it) and
        // the unix socket is out of a browser's reach, so the Host check
        // would only refuse legitimate names of a `--tcp 0.0.0.0` daemon.
        .disable_allowed_hosts()
        // write_file's content is in the request: room for 16 MiB files
        // as base64.
        .with_max_request_body_bytes(24 << 20);
    // One server (its tool router and schemas built once), cloned per request.
    let server = Server::new(svc);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().route_service(PATH, service)
}
