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
//!   it. So are arguments that do not fit a tool's schema (a missing
//!   field, a wrong type, an unknown field) or that the tool cannot take
//!   (bad base64, `cmd` and `argv` both or neither): `invalid_argument`.
//!   That is MCP's rule since 2025-11-25 (SEP-1303, "input validation
//!   errors as tool execution errors", which rmcp and the other official
//!   SDKs follow): a protocol error never reaches the model, so it could
//!   not correct its call. JSON-RPC errors are for what is wrong with the
//!   request itself: an unknown tool or a `tools/call` without a name
//!   (`-32602`), an unknown method (`-32601`), a body that is not JSON
//!   (`-32700`) or not a JSON-RPC 2.0 message (`-32600`).
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

use axum::body::Body;
use axum::extract::Request;
use axum::http::{self, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
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
        .with_max_request_body_bytes(MAX_BODY);
    // One server (its tool router and schemas built once), cloned per
    // request onto the service of the request's caller: the one its API
    // key resolved to on a TCP listener (a tenant's tools see only its
    // sandboxes), else the router's own.
    let server = Server::new(svc);
    let sessions = Arc::new(LocalSessionManager::default());
    let serve = move |req: Request| {
        let caller = req.extensions().get::<Arc<dyn SandboxService>>().cloned();
        let server = match caller {
            Some(svc) => server.with_service(svc),
            None => server.clone(),
        };
        let service = StreamableHttpService::new(move || Ok(server.clone()), sessions.clone(), config.clone());
        async move {
            use tower::ServiceExt;
            match service.oneshot(req).await {
                Ok(resp) => resp.map(axum::body::Body::new),
                Err(e) => match e {},
            }
        }
    };
    axum::Router::new().route(PATH, axum::routing::any(serve)).layer(axum::middleware::from_fn(jsonrpc_errors))
}

/// The most a POST to `/mcp` may carry (as rmcp is configured above).
const MAX_BODY: usize = 24 << 20;

/// JSON-RPC errors for POSTs that are not JSON-RPC: rmcp answers them with
/// a plain-text 4xx, which a client's JSON-RPC layer cannot read. A body
/// that is not JSON gets `-32700 parse error`; one that rmcp refuses as a
/// message (`jsonrpc` not "2.0", no method, …) `-32600 invalid request`,
/// with its id when it has one. Everything else passes untouched.
async fn jsonrpc_errors(req: Request, next: Next) -> Response {
    if req.method() != http::Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let json_body = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("application/json"));
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return jsonrpc_error(StatusCode::PAYLOAD_TOO_LARGE, Value::Null, -32600, &e.to_string()),
    };
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) if json_body => {
            return jsonrpc_error(StatusCode::BAD_REQUEST, Value::Null, -32700, &format!("parse error: {e}"))
        }
        // rmcp refuses it for its media type (415) or Accept header (406).
        Err(_) => Value::Null,
    };
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/event-stream"));
    // rmcp's 415 for a JSON body means the message was not one it knows.
    let refused =
        resp.status() == StatusCode::BAD_REQUEST || (resp.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE && json_body);
    if !refused || json {
        return resp;
    }
    let status = resp.status();
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
    let id = msg.get("id").filter(|id| id.is_string() || id.is_number()).cloned().unwrap_or(Value::Null);
    jsonrpc_error(status, id, -32600, &format!("invalid request: {}", String::from_utf8_lossy(&text)))
}

fn jsonrpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}
