//! The E2B-compatible front end: the official E2B SDKs (`pip install e2b`,
//! `npm install e2b`) work against Spinup unmodified.
//!
//! One listener serves both of E2B's planes:
//! - the control plane (`/v2/sandboxes`, `/sandboxes/{id}/…`,
//!   `/snapshots`, `/templates/{id}`), authenticated by `X-API-KEY`;
//! - every sandbox's in-sandbox API (envd: `/health`, `/files`, the
//!   Connect-RPC services `process.Process` and `filesystem.Filesystem`)
//!   and its ports, chosen by the `E2b-Sandbox-Id` / `E2b-Sandbox-Port`
//!   headers or by a `{port}-{id}.{domain}` host name, authenticated by the
//!   sandbox's envd access token;
//! - E2B's code-interpreter API on port 49999 (`code.rs`).
//!
//! It is a translation: every call becomes one or a few
//! [`SandboxService`] calls; nothing here runs, stores or isolates
//! anything itself. Watchers made by `CreateWatcher` live in memory (as in
//! E2B's envd) and do not survive a daemon restart.

#![allow(
    clippy::result_large_err,
    reason = "handlers answer Result<Response, Response> as axum's do: the error is the finished E2B answer, made once on the way out"
)]

mod code;
mod connect;
mod control;
mod envd;
mod filesystem;
mod process;
mod proxy;
mod serve;
mod token;
mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderMap, StatusCode};
use spinup_api::{Sandbox, SandboxId, SandboxService};
use tower::ServiceExt;

pub use serve::{serve, Tls};

/// The envd port every SDK call to a sandbox names.
pub const ENVD_PORT: u16 = 49983;
/// The code interpreter's port: E2B's `/execute` and `/contexts`.
pub const JUPYTER_PORT: u16 = 49999;
/// The envd version reported: every feature up to it is served. 0.6.2
/// (file metadata) and above are not, so the SDK refuses those calls
/// itself with a clear message.
pub const ENVD_VERSION: &str = "0.6.1";

/// What the front end needs from the daemon.
#[derive(Clone)]
pub struct Config {
    /// Turns `X-API-KEY` into the service as its holder sees it (the
    /// daemon's API keys: a tenant's sees only its own sandboxes).
    pub auth: Arc<dyn spinup_api::Authenticator>,
    /// Secret for the per-sandbox envd and traffic access tokens (HMACs of
    /// the sandbox id, so nothing per sandbox is stored).
    pub token_key: Vec<u8>,
    /// Serve `{port}-{id}.{domain}` host names and return `domain` to the
    /// SDK (E2B_DOMAIN mode). It may end in `:PORT` when the listener is
    /// not on 443 (the SDK puts it in its URLs as given).
    pub domain: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("auth", &"<keys>").field("domain", &self.domain).finish_non_exhaustive()
    }
}

pub(crate) struct App {
    pub svc: Arc<dyn SandboxService>,
    pub cfg: Config,
    pub watchers: Arc<filesystem::Watchers>,
    pub processes: Arc<process::Processes>,
}

/// The sandbox and port a sandbox-plane request is for, and the sandbox
/// as the router found it (running or paused), so handlers need not look
/// it up again.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub id: SandboxId,
    pub port: u16,
    pub sb: Sandbox,
}

/// The E2B front end as one router (mount it on its own listener).
pub fn router(svc: Arc<dyn SandboxService>, cfg: Config) -> Router {
    let app = Arc::new(App { svc, cfg, watchers: Default::default(), processes: Default::default() });
    let envd = envd::routes().with_state(app.clone());
    Router::new().fallback(move |req: Request| {
        let (app, envd) = (app.clone(), envd.clone());
        async move { dispatch(app, envd, req).await }
    })
}

async fn dispatch(app: Arc<App>, envd: Router, mut req: Request) -> Response {
    match target(&app.cfg, req.headers()) {
        Err(resp) => resp,
        Ok(None) => {
            // The control plane runs as the key's holder: a tenant's key
            // sees and makes only its tenant's sandboxes and snapshots.
            let Some(svc) = token::api_key(req.headers()).and_then(|k| app.cfg.auth.authenticate(k)) else {
                return wire::error(StatusCode::UNAUTHORIZED, "Invalid API key, it must be given in X-API-KEY");
            };
            let caller = Arc::new(App {
                svc,
                cfg: app.cfg.clone(),
                watchers: app.watchers.clone(),
                processes: app.processes.clone(),
            });
            control::routes().with_state(caller).oneshot(req).await.unwrap_or_else(|e| match e {})
        }
        Ok(Some((id, port))) => {
            // The token first: without it, nothing is said about the
            // sandbox, not even whether it exists.
            if port == ENVD_PORT && !token::envd_authorized(&app.cfg.token_key, &id, &req) {
                return wire::error(StatusCode::UNAUTHORIZED, "missing or wrong X-Access-Token for this sandbox");
            }
            // Unknown or gone: the answer E2B's edge proxy gives, which the
            // SDK turns into SandboxNotRunningException.
            let sb = match app.svc.get(&id).await {
                Ok(sb) if matches!(sb.state.as_str(), "running" | "paused") => sb,
                _ => return envd::sandbox_not_found(&id),
            };
            let t = Target { id, port, sb };
            if t.port == ENVD_PORT {
                req.extensions_mut().insert(t);
                envd.oneshot(req).await.unwrap_or_else(|e| match e {})
            } else if t.port == JUPYTER_PORT {
                code::serve(&app, t, req).await
            } else {
                proxy::port(&app, t, req).await
            }
        }
    }
}

/// Which sandbox a request is for: the `E2b-Sandbox-Id` header (with
/// `E2b-Sandbox-Port`, default envd's), or a `{port}-{id}.{domain}` host.
/// `None`: the control plane.
fn target(cfg: &Config, h: &HeaderMap) -> Result<Option<(SandboxId, u16)>, Response> {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    if let Some(id) = header("e2b-sandbox-id") {
        let port = match header("e2b-sandbox-port") {
            None => ENVD_PORT,
            Some(p) => p.parse().map_err(|_| bad_request(&format!("E2b-Sandbox-Port '{p}' is not a port")))?,
        };
        return Ok(Some((sandbox_id(id)?, port)));
    }
    let (Some(domain), Some(host)) = (cfg.domain.as_deref(), header("host")) else { return Ok(None) };
    // Both may carry a port (`domain = "spinup.test:3443"`).
    let no_port = |h: &'_ str| -> String {
        h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h).to_string()
    };
    let (host, domain) = (no_port(host), no_port(domain));
    let (host, domain) = (host.as_str(), domain.as_str());
    let Some(label) = host.strip_suffix(domain).and_then(|l| l.strip_suffix('.')) else { return Ok(None) };
    match label.split_once('-') {
        Some((port, id)) if !label.contains('.') => {
            let port = port.parse().map_err(|_| bad_request(&format!("host '{host}' is not PORT-ID.{domain}")))?;
            Ok(Some((sandbox_id(id)?, port)))
        }
        _ => Ok(None),
    }
}

fn sandbox_id(id: &str) -> Result<SandboxId, Response> {
    SandboxId::parse(id).map_err(|_| envd::sandbox_not_found(id))
}

fn bad_request(msg: &str) -> Response {
    wire::error(StatusCode::BAD_REQUEST, msg)
}

/// A body-less response.
pub(crate) fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}
