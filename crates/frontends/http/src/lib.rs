//! The native `/v1` HTTP front end. JSON in and out; errors are
//! [`spinup_api::ErrorBody`] with the matching status. Exec and PTY stream
//! over WebSocket (binary messages carrying protocol frames) or NDJSON.
//!
//! A handler extracts its inputs, calls one [`SandboxService`] method and
//! encodes the answer; nothing else. The router is built from
//! [`spinup_api::ROUTES`], one handler per [`Op`].

mod error;
mod exec;
mod extract;
mod handlers;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{self, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use spinup_api::{Authenticator, Error, ErrorBody, Op, SandboxService, ROUTES};

pub use error::{status_of, ApiError};

type Svc = Arc<dyn SandboxService>;

/// The `/v1` router over a service.
pub fn router(svc: Svc) -> Router {
    let mut r = Router::new();
    for route in ROUTES {
        r = r.route(route.path, handler(route.op, filter(route.method)));
    }
    r.fallback(|| async { ApiError(Error::NotFound { kind: "route", id: "requested".into() }) })
        .layer(middleware::map_response(json_errors))
        .with_state(svc)
}

/// Every error answer is the API's JSON error, also those axum makes
/// itself (405 for a method a path does not serve, 413 past the body
/// limit, 400 for a WebSocket route without an upgrade), which are plain
/// text: the status and headers (`Allow`) stay, the text becomes the
/// message. Successful answers and JSON errors pass untouched.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (parts, body) = res.into_parts();
    // These bodies are a line of text; an agent's error is already JSON.
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        s if s >= 500 => "internal",
        _ => "invalid_argument",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let mut out =
        (status, Json(ErrorBody { code: code.into(), message, driver: None, capability: None })).into_response();
    for (k, v) in &parts.headers {
        if k != http::header::CONTENT_TYPE && k != http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

fn filter(method: &str) -> MethodFilter {
    match method {
        "get" => MethodFilter::GET,
        "post" => MethodFilter::POST,
        "put" => MethodFilter::PUT,
        "patch" => MethodFilter::PATCH,
        "delete" => MethodFilter::DELETE,
        other => panic!("ROUTES has a method axum does not route: {other}"),
    }
}

/// The one handler of each operation.
fn handler(op: Op, f: MethodFilter) -> MethodRouter<Svc> {
    use handlers as h;
    match op {
        Op::OpenApi => on(f, h::openapi),
        Op::Drivers => on(f, h::drivers),
        Op::Gc => on(f, h::gc),
        Op::List => on(f, h::list),
        Op::Create => on(f, h::create),
        Op::Get => on(f, h::get),
        Op::Remove => on(f, h::remove),
        Op::SetTimeout => on(f, h::set_timeout),
        Op::Info => on(f, h::info),
        Op::Events => on(f, h::events),
        Op::Pause => on(f, h::pause),
        Op::Resume => on(f, h::resume),
        Op::Start => on(f, h::start),
        Op::Snapshot => on(f, h::snapshot),
        Op::Fork => on(f, h::fork),
        Op::Diff => on(f, h::diff),
        Op::Snapshots => on(f, h::snapshots),
        Op::GetSnapshot => on(f, h::snapshot_get),
        Op::RemoveSnapshot => on(f, h::snapshot_remove),
        Op::SnapshotLayer => on(f, h::snapshot_layer),
        Op::UpdateResources => on(f, h::update_resources),
        Op::SetNetwork => on(f, h::set_network),
        Op::Ports => on(f, h::ports),
        Op::Expose => on(f, h::expose),
        Op::Unexpose => on(f, h::unexpose),
        Op::AttachSecrets => on(f, h::attach_secrets),
        Op::Secrets => on(f, h::secrets),
        Op::Secret => on(f, h::secret),
        Op::SetSecret => on(f, h::set_secret),
        Op::RemoveSecret => on(f, h::remove_secret),
        Op::Exec => on(f, exec::exec),
        Op::ExecWs => on(f, exec::exec_ws),
        Op::Processes => on(f, h::processes),
        Op::AttachWs => on(f, exec::attach_ws),
        Op::Signal => on(f, h::signal),
        Op::Stdin => on(f, h::stdin),
        Op::ReadFile => on(f, h::read_file),
        Op::WriteFile => on(f, h::write_file),
        Op::StatFile => on(f, h::stat_file),
        Op::ListFiles => on(f, h::list_files),
        Op::WatchFiles => on(f, h::watch_files),
        Op::MakeDir => on(f, h::mkdir),
        Op::RemovePath => on(f, h::remove_path),
        Op::RenamePath => on(f, h::rename_path),
        Op::ChmodPath => on(f, h::chmod_path),
        Op::Environments => on(f, h::environments),
        Op::Environment => on(f, h::environment),
        Op::RemoveEnvironment => on(f, h::remove_environment),
        Op::ImportEnvironment => on(f, h::import_environment),
        Op::BuildEnvironment => on(f, h::build_environment),
        Op::RunCode => on(f, h::run_code),
        Op::CodeContexts => on(f, h::code_contexts),
        Op::CreateCodeContext => on(f, h::create_code_context),
        Op::RestartCodeContext => on(f, h::restart_code_context),
        Op::RemoveCodeContext => on(f, h::remove_code_context),
        Op::Keys => on(f, h::keys),
        Op::CreateKey => on(f, h::create_key),
        Op::RemoveKey => on(f, h::remove_key),
        Op::Audit => on(f, h::audit),
    }
}

/// TCP listeners require `Authorization: Bearer <key>` on every request;
/// the request then runs on the service as that key's holder sees it.
pub fn with_auth(r: Router, auth: Arc<dyn Authenticator>) -> Router {
    r.layer(middleware::from_fn(move |mut req: Request, next: Next| {
        let auth = auth.clone();
        async move {
            let svc = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|key| auth.authenticate(key.trim()));
            match svc {
                Some(svc) => {
                    req.extensions_mut().insert(svc);
                    next.run(req).await
                }
                None => (
                    StatusCode::UNAUTHORIZED,
                    Json(serde_json::json!({"code": "unauthorized", "message": "missing, wrong or revoked API key (Authorization: Bearer <key>)"})),
                )
                    .into_response(),
            }
        }
    }))
}

/// Equal, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
