//! E2B's control plane (`E2B_API_URL`): sandboxes, snapshots, forks,
//! metrics. Each handler turns E2B's request into SandboxService calls and
//! the answer into E2B's JSON; errors carry E2B's `{code, message}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine;
use http::StatusCode;
use serde_json::{json, Value};
use spinup_api::{
    CreateRequest, Error, ForkRequest, ListQuery, NetMode, NetworkPolicy, OnTimeout, PauseRequest, Sandbox, SandboxId,
    SnapshotRequest, TimeoutRequest,
};

use crate::wire::{self, from_error};
use crate::{empty, token, App};

/// E2B's default sandbox lifetime when the caller gives none.
const DEFAULT_TIMEOUT_S: u64 = 300;

type St = State<Arc<App>>;
type Res = Result<Response, Response>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/snapshots", post(snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/network", put(network))
        .route("/snapshots", get(snapshots))
        .route("/templates/{id}", delete(delete_snapshot))
        .fallback(|| async { wire::error(StatusCode::NOT_FOUND, "no such endpoint in the E2B API") })
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| wire::error(StatusCode::BAD_REQUEST, &format!("malformed JSON body: {e}")))
}

fn id_of(id: &str) -> Result<SandboxId, Response> {
    SandboxId::parse(id).map_err(|_| not_found(id))
}

fn not_found(id: &str) -> Response {
    wire::error(StatusCode::NOT_FOUND, &format!("sandbox '{id}' not found"))
}

fn err(e: Error) -> Response {
    from_error(&e)
}

/// A sandbox E2B would show (running or paused), else E2B's 404.
async fn visible(app: &App, id: &SandboxId) -> Result<(Sandbox, &'static str), Response> {
    match app.svc.get(id).await {
        Ok(sb) => match wire::state(&sb) {
            Some(st) => Ok((sb, st)),
            None => Err(not_found(id)),
        },
        Err(Error::NotFound { .. }) => Err(not_found(id)),
        Err(e) => Err(err(e)),
    }
}

fn answer(app: &App, sb: &Sandbox) -> Value {
    let key = &app.cfg.token_key;
    wire::sandbox(sb, &token::envd(key, &sb.id), &token::traffic(key, &sb.id), app.cfg.domain.as_deref())
}

/// E2B's network settings as a Spinup policy. What Spinup cannot honour
/// is refused with a clear error rather than silently dropped.
fn policy(internet: Option<bool>, net: Option<&wire::Network>) -> Result<Option<NetworkPolicy>, Response> {
    let unsupported = |what: &str| {
        Err(wire::error(StatusCode::BAD_REQUEST, &format!("network.{what} is not supported by Spinup's E2B API")))
    };
    let internet = internet.or(net.and_then(|n| n.allow_internet_access));
    let Some(n) = net else {
        return Ok(internet.map(|open| NetworkPolicy {
            mode: if open { NetMode::Open } else { NetMode::None },
            ..Default::default()
        }));
    };
    if n.mask_request_host.is_some() {
        return unsupported("maskRequestHost");
    }
    if n.dns_servers.as_ref().is_some_and(|d| !d.is_empty()) {
        return unsupported("dnsServers");
    }
    if n.egress_proxy.is_some() {
        return unsupported("egressProxy");
    }
    if n.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return unsupported("httpsPorts");
    }
    if n.rules.is_some() {
        return unsupported("rules (use Spinup secrets for credential injection)");
    }
    let allow = n.allow_out.clone().unwrap_or_default();
    let deny = n.deny_out.clone().unwrap_or_default();
    let deny_all = deny.iter().any(|d| d == "0.0.0.0/0");
    if deny.iter().any(|d| d != "0.0.0.0/0") {
        return Err(wire::error(
            StatusCode::BAD_REQUEST,
            "network.denyOut: Spinup denies by listing what is allowed; give denyOut [\"0.0.0.0/0\"] with allowOut",
        ));
    }
    let mode = match (deny_all, internet) {
        (true, _) => NetMode::Allow,
        (false, Some(true)) => NetMode::Open,
        (false, Some(false)) if allow.is_empty() => NetMode::None,
        (false, Some(false)) => NetMode::Allow,
        (false, None) if allow.is_empty() => return Ok(None),
        (false, None) => NetMode::Open,
    };
    Ok(Some(NetworkPolicy { mode, allow, ..Default::default() }))
}

/// `templateID`: an environment (built-in recipes build on first use), or
/// a snapshot by id or name; `DRIVER/TEMPLATE` also picks the driver
/// (otherwise the daemon's default runs it). `code-interpreter-v1`, what
/// `e2b-code-interpreter` asks for, is the `code-interpreter` recipe.
async fn template(app: &App, name: &str, req: &mut CreateRequest) -> Result<(), Response> {
    let mut name = name;
    if let Some((driver, rest)) = name.split_once('/') {
        let drivers = app.svc.drivers().await.map_err(err)?;
        if drivers.iter().any(|c| c.driver == driver) {
            req.driver = Some(driver.to_string());
            name = rest;
        }
    }
    if name == "code-interpreter-v1" {
        name = "code-interpreter";
    }
    let envs = app.svc.environments().await.map_err(err)?;
    if envs.environments.iter().any(|e| e.name == name) || envs.builtin.iter().any(|b| b == name) {
        req.env = Some(name.to_string());
        return Ok(());
    }
    match app.svc.snapshot_get(name).await {
        Ok(s) => {
            req.from_snapshot = Some(s.id);
            Ok(())
        }
        Err(Error::NotFound { .. }) => Err(wire::error(
            StatusCode::NOT_FOUND,
            &format!("template '{name}' not found: it must name a Spinup environment or snapshot"),
        )),
        Err(e) => Err(err(e)),
    }
}

async fn create(State(app): St, body: Bytes) -> Res {
    let n: wire::NewSandbox = parse(&body)?;
    if n.mcp.is_some() {
        return Err(wire::error(
            StatusCode::BAD_REQUEST,
            "the MCP gateway (mcp=) is not supported by Spinup's E2B API",
        ));
    }
    if n.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(wire::error(StatusCode::BAD_REQUEST, "volumeMounts are not supported by Spinup's E2B API"));
    }
    let mut req = CreateRequest {
        timeout_s: Some(n.timeout.unwrap_or(DEFAULT_TIMEOUT_S)),
        on_timeout: n.auto_pause.map(|p| if p { OnTimeout::Pause } else { OnTimeout::Destroy }),
        auto_resume: n.auto_resume.map(|a| a.enabled),
        labels: n.metadata.unwrap_or_default(),
        env_vars: n.env_vars.unwrap_or_default(),
        network: policy(n.allow_internet_access, n.network.as_ref())?,
        ..Default::default()
    };
    if req.labels.keys().any(|k| k.starts_with(wire::HIDDEN_PREFIX)) {
        return Err(wire::error(
            StatusCode::BAD_REQUEST,
            &format!("metadata keys starting '{}' are reserved", wire::HIDDEN_PREFIX),
        ));
    }
    if n.network.as_ref().and_then(|n| n.allow_public_traffic) == Some(true) {
        req.labels.insert(wire::PUBLIC_TRAFFIC_LABEL.into(), "true".into());
    }
    template(&app, n.template_id.as_deref().unwrap_or("base"), &mut req).await?;
    let sb = app.svc.create(req).await.map_err(err)?;
    // The SDK makes no readiness check of its own; a sandbox that never
    // got ready is not left behind for the caller who was told it failed.
    if let Err(e) = app.svc.ready(&sb.id).await {
        let _ = app.svc.remove(&sb.id, true).await;
        return Err(err(e));
    }
    Ok((StatusCode::CREATED, Json(answer(&app, &sb))).into_response())
}

async fn connect(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let c: wire::Connect = parse(&body)?;
    let (mut sb, state) = visible(&app, &id).await?;
    if state == "paused" {
        sb = app.svc.resume(&id).await.map_err(err)?;
    }
    if let Some(t) = c.timeout {
        sb = app.svc.set_timeout(&id, TimeoutRequest { timeout_s: t }).await.map_err(err)?;
    }
    app.svc.ready(&id).await.map_err(err)?;
    Ok((StatusCode::OK, Json(answer(&app, &sb))).into_response())
}

async fn info(State(app): St, Path(id): Path<String>) -> Res {
    let id = id_of(&id)?;
    let (sb, state) = visible(&app, &id).await?;
    let tok = token::envd(&app.cfg.token_key, &sb.id);
    Ok(Json(wire::detail(&sb, state, Some(&tok), app.cfg.domain.as_deref())).into_response())
}

async fn kill(State(app): St, Path(id): Path<String>) -> Res {
    let id = id_of(&id)?;
    match app.svc.remove(&id, true).await {
        Ok(()) => {
            app.watchers.drop_sandbox(&id);
            app.processes.drop_sandbox(&id);
            Ok(empty(StatusCode::NO_CONTENT))
        }
        Err(Error::NotFound { .. }) => Err(not_found(&id)),
        Err(e) => Err(err(e)),
    }
}

async fn set_timeout(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let t: wire::Timeout = serde_json::from_slice(&body)
        .map_err(|e| wire::error(StatusCode::BAD_REQUEST, &format!("body must be {{\"timeout\": seconds}}: {e}")))?;
    visible(&app, &id).await?;
    app.svc.set_timeout(&id, TimeoutRequest { timeout_s: t.timeout }).await.map_err(err)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn pause(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let p: wire::Pause = parse(&body)?;
    let (_, state) = visible(&app, &id).await?;
    if state == "paused" {
        return Err(wire::error(StatusCode::CONFLICT, &format!("sandbox '{id}' is already paused")));
    }
    app.svc.pause(&id, PauseRequest { free_memory: p.memory.unwrap_or(false) }).await.map_err(err)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// One sample: CPU over a short window (two readings of the sandbox's CPU
/// time), memory and disk as the guest sees them.
async fn metrics(State(app): St, Path(id): Path<String>) -> Res {
    let id = id_of(&id)?;
    let (sb, state) = visible(&app, &id).await?;
    if state != "running" {
        return Ok(Json(json!([])).into_response());
    }
    let a = app.svc.info(&id).await.map_err(err)?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let b = app.svc.info(&id).await.map_err(err)?;
    let vcpus = sb.resources.vcpus.max(0.01);
    let cpu = match (a.cpu_usage_us, b.cpu_usage_us) {
        (Some(x), Some(y)) if b.uptime_ms > a.uptime_ms => {
            let used = y.saturating_sub(x) as f64;
            let wall = ((b.uptime_ms - a.uptime_ms) * 1000) as f64;
            (used / wall / vcpus * 100.0).clamp(0.0, 100.0)
        }
        _ => 0.0,
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let mib = 1024 * 1024;
    Ok(Json(json!([{
        "timestamp": wire::rfc3339(now),
        "timestampUnix": now / 1000,
        "cpuCount": vcpus.ceil() as u64,
        "cpuUsedPct": (cpu * 100.0).round() / 100.0,
        "memUsed": b.memory_bytes.unwrap_or(0),
        "memTotal": sb.resources.memory_mib * mib,
        "memCache": 0,
        "diskUsed": b.disk_used_bytes.unwrap_or(0),
        "diskTotal": b.disk_total_bytes.unwrap_or(sb.resources.disk_mib * mib),
    }]))
    .into_response())
}

async fn snapshot(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let n: wire::NewSnapshot = parse(&body)?;
    visible(&app, &id).await?;
    let s = app.svc.snapshot(&id, SnapshotRequest { name: n.name, ..Default::default() }).await.map_err(err)?;
    let info = wire::SnapshotInfo { snapshot_id: s.id, names: s.name.into_iter().collect() };
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn delete_snapshot(State(app): St, Path(id): Path<String>) -> Res {
    match app.svc.snapshot_remove(&id).await {
        Ok(()) => Ok(empty(StatusCode::NO_CONTENT)),
        Err(Error::NotFound { .. }) => Err(wire::error(StatusCode::NOT_FOUND, &format!("snapshot '{id}' not found"))),
        Err(e) => Err(err(e)),
    }
}

async fn fork(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let f: wire::Fork = parse(&body)?;
    let count = f.count.unwrap_or(1);
    if !(1..=20).contains(&count) {
        return Err(wire::error(StatusCode::BAD_REQUEST, "count must be 1-20"));
    }
    visible(&app, &id).await?;
    let r = app.svc.fork(&id, ForkRequest { count: Some(count), driver: None }).await.map_err(err)?;
    let mut out = vec![];
    for child in r.children {
        let child = match f.timeout {
            Some(t) => match app.svc.set_timeout(&child.id, TimeoutRequest { timeout_s: t }).await {
                Ok(c) => c,
                Err(e) => {
                    out.push(json!({"error": {"code": spinup_api::error::http_status(&e), "message": e.to_string()}}));
                    continue;
                }
            },
            None => child,
        };
        out.push(json!({"sandbox": answer(&app, &child)}));
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn network(State(app): St, Path(id): Path<String>, body: Bytes) -> Res {
    let id = id_of(&id)?;
    let net: wire::Network = parse(&body)?;
    visible(&app, &id).await?;
    let p = policy(net.allow_internet_access, Some(&net))?
        .unwrap_or(NetworkPolicy { mode: NetMode::Open, ..Default::default() });
    app.svc.set_network(&id, p).await.map_err(err)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Query pairs, decoded once.
fn pairs(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The SDK's `metadata` filter: `k=v&…` with each key and value
/// percent-quoted (so decoded three times in all).
fn metadata_filter(v: &str) -> BTreeMap<String, String> {
    let unquote = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    form_urlencoded::parse(v.as_bytes()).filter_map(|(k, v)| Some((unquote(&k)?, unquote(&v)?))).collect()
}

struct Page {
    limit: usize,
    after: Option<(i64, String)>,
}

fn page(q: &[(String, String)]) -> Result<Page, Response> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = match get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| wire::error(StatusCode::BAD_REQUEST, "limit must be 1-1000"))?,
    };
    let after = match get("nextToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').and_then(|(at, id)| Some((at.parse().ok()?, id.to_string()))))
                .ok_or_else(|| wire::error(StatusCode::BAD_REQUEST, "nextToken is not one this server gave"))?,
        ),
    };
    Ok(Page { limit, after })
}

/// One page of `items` (sorted by `(created_at, id)`), with `x-next-token`
/// when more follow.
fn paged(items: Vec<((i64, String), Value)>, p: Page) -> Response {
    let mut items: Vec<_> = items.into_iter().filter(|(k, _)| p.after.as_ref().is_none_or(|a| k > a)).collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let more = items.len() > p.limit;
    items.truncate(p.limit);
    let next = more.then(|| {
        let (at, id) = &items.last().expect("a full page is not empty").0;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
    });
    let body: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
    let mut r = Json(body).into_response();
    if let Some(n) = next {
        r.headers_mut().insert("x-next-token", n.parse().expect("base64 is a valid header value"));
    }
    r
}

async fn listed(app: &App, q: &[(String, String)]) -> Result<Vec<((i64, String), Value)>, Response> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let labels = get("metadata").map(metadata_filter).unwrap_or_default();
    let states: Vec<&str> = get("state").map(|s| s.split(',').map(str::trim).collect()).unwrap_or_default();
    let after = match get("startedAfter") {
        None => None,
        Some(t) => Some(
            wire::parse_time(t)
                .ok_or_else(|| wire::error(StatusCode::BAD_REQUEST, "startedAfter must be an RFC 3339 time"))?,
        ),
    };
    let tpl = get("template");
    let all = app.svc.list(ListQuery { labels }).await.map_err(err)?;
    Ok(all
        .into_iter()
        .filter_map(|sb| {
            let st = wire::state(&sb)?;
            let keep = (states.is_empty() || states.contains(&st))
                && after.is_none_or(|a| sb.created_at > a)
                && tpl.is_none_or(|t| wire::template(&sb) == t);
            keep.then(|| ((sb.created_at, sb.id.to_string()), wire::detail(&sb, st, None, app.cfg.domain.as_deref())))
        })
        .collect())
}

async fn list_v2(State(app): St, RawQuery(q): RawQuery) -> Res {
    let q = pairs(q.as_deref());
    let p = page(&q)?;
    Ok(paged(listed(&app, &q).await?, p))
}

/// The v1 list older SDKs call: every running sandbox, one array.
async fn list_v1(State(app): St, RawQuery(q): RawQuery) -> Res {
    let mut q = pairs(q.as_deref());
    q.retain(|(k, _)| k == "metadata");
    q.push(("state".into(), "running".into()));
    let mut items = listed(&app, &q).await?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Json(items.into_iter().map(|(_, v)| v).collect::<Vec<_>>()).into_response())
}

async fn snapshots(State(app): St, RawQuery(q): RawQuery) -> Res {
    let q = pairs(q.as_deref());
    let p = page(&q)?;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (sandbox, name) = (get("sandboxID"), get("name"));
    let all = app.svc.snapshots().await.map_err(err)?;
    let items = all
        .into_iter()
        .filter(|s| !s.ephemeral)
        .filter(|s| sandbox.is_none_or(|id| s.sandbox_id == id) && name.is_none_or(|n| s.name.as_deref() == Some(n)))
        .map(|s| {
            let v =
                json!(wire::SnapshotInfo { snapshot_id: s.id.clone(), names: s.name.clone().into_iter().collect() });
            ((s.created_at, s.id), v)
        })
        .collect();
    Ok(paged(items, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_undoes_the_sdks_quoting() {
        // {"a": "b c", "k&=": "v/1"} as the SDK puts it in the query,
        // after the query string's own decoding.
        assert_eq!(
            metadata_filter("a=b%2520c&k%2526%253D=v%252F1"),
            BTreeMap::from([("a".into(), "b c".into()), ("k&=".into(), "v/1".into())])
        );
    }

    #[test]
    fn network_settings_map_or_are_refused() {
        let n = |j: Value| serde_json::from_value::<wire::Network>(j).unwrap();
        assert_eq!(policy(None, None).unwrap(), None);
        assert_eq!(policy(Some(false), None).unwrap().unwrap().mode, NetMode::None);
        assert_eq!(policy(Some(true), None).unwrap().unwrap().mode, NetMode::Open);
        let p = policy(None, Some(&n(json!({"allowOut": ["pypi.org"], "denyOut": ["0.0.0.0/0"]})))).unwrap().unwrap();
        assert_eq!((p.mode, p.allow), (NetMode::Allow, vec!["pypi.org".to_string()]));
        assert!(policy(None, Some(&n(json!({"denyOut": ["10.0.0.0/8"]})))).is_err());
        assert!(policy(None, Some(&n(json!({"maskRequestHost": "x"})))).is_err());
        assert_eq!(policy(None, Some(&n(json!({"allowPublicTraffic": true})))).unwrap(), None);
    }

    #[test]
    fn pages_follow_their_tokens() {
        let items = |n: i64| (0..n).map(|i| ((i, format!("id{i}")), json!(i))).collect::<Vec<_>>();
        let q = |t: Option<&str>| {
            let mut v = vec![("limit".to_string(), "2".to_string())];
            if let Some(t) = t {
                v.push(("nextToken".into(), t.into()));
            }
            v
        };
        let r = paged(items(5), page(&q(None)).unwrap());
        let t1 = r.headers()["x-next-token"].to_str().unwrap().to_string();
        let r = paged(items(5), page(&q(Some(&t1))).unwrap());
        let t2 = r.headers()["x-next-token"].to_str().unwrap().to_string();
        let r = paged(items(5), page(&q(Some(&t2))).unwrap());
        assert!(r.headers().get("x-next-token").is_none(), "the last page has no token");
        assert!(page(&q(Some("garbage!"))).is_err());
    }
}
