//! The HTTP API, `/v1`. JSON in and out; errors are `{code, message}` with
//! the matching status. Exec and PTY stream over WebSocket (binary
//! messages carrying protocol frames) or NDJSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use spinup_model::{Error, Sandbox, Snapshot};
use spinup_protocol::client::full_body;
use spinup_protocol::{AgentClient, ClientError, ExecRequest, Frame};

use crate::manager::{CreateRequest, Manager};

/// Output kept per stream by a non-streaming exec.
const EXEC_CAPTURE_LIMIT: usize = 16 << 20;

pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        ApiError(agent_err(e))
    }
}

pub fn agent_err(e: ClientError) -> Error {
    match e {
        ClientError::Remote { status, code, message } => Error::Guest { status, code, message },
        other => Error::Agent(other.to_string()),
    }
}

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Agent(_) => StatusCode::BAD_GATEWAY,
        Error::Guest { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"code": self.0.code(), "message": self.0.to_string()});
        if let Error::Unsupported { driver, capability } = &self.0 {
            body["driver"] = driver.clone().into();
            body["capability"] = capability.clone().into();
        }
        (status_of(&self.0), Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body ourselves so malformed input gets our error shape.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let body: &[u8] = if body.iter().all(|b| b.is_ascii_whitespace()) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError(Error::InvalidArgument(format!("malformed JSON body: {e}"))))
}

type M = State<Arc<Manager>>;

pub fn router(m: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/v1/drivers", get(drivers))
        .route("/v1/gc", post(gc))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(inspect).delete(remove))
        .route("/v1/sandboxes/{id}/timeout", put(set_timeout))
        .route("/v1/sandboxes/{id}/info", get(info))
        .route("/v1/sandboxes/{id}/events", get(events))
        .route(
            "/v1/sandboxes/{id}/pause",
            post(|State(m): M, Path(id): Path<String>, body: Bytes| async move {
                #[derive(Deserialize, Default)]
                #[serde(default, deny_unknown_fields)]
                struct PauseBody {
                    free_memory: bool,
                }
                let b: PauseBody = parse(&body)?;
                Ok::<_, ApiError>(Json(m.pause(&id, b.free_memory).await?))
            }),
        )
        .route(
            "/v1/sandboxes/{id}/resume",
            post(|State(m): M, Path(id): Path<String>| async move { Ok::<_, ApiError>(Json(m.resume(&id).await?)) }),
        )
        .route("/v1/sandboxes/{id}/snapshot", post(snapshot))
        .route("/v1/sandboxes/{id}/fork", post(fork))
        .route("/v1/sandboxes/{id}/diff", get(diff))
        .route("/v1/snapshots", get(snapshot_list))
        .route("/v1/snapshots/{id}", get(snapshot_get).delete(snapshot_remove))
        .route("/v1/snapshots/{id}/layer", get(snapshot_layer))
        .route(
            "/v1/sandboxes/{id}/resources",
            axum::routing::patch(|s: M, p: Path<String>| gated(s, p, "live_resource_update")),
        )
        .route("/v1/sandboxes/{id}/network", put(net_set))
        .route("/v1/sandboxes/{id}/ports", get(port_list).post(port_expose))
        .route("/v1/sandboxes/{id}/ports/{port}", axum::routing::delete(port_remove))
        .route("/v1/sandboxes/{id}/secrets", post(secrets_attach))
        .route("/v1/secrets", get(secret_list))
        .route("/v1/secrets/{name}", get(secret_get).put(secret_set).delete(secret_remove))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/exec/ws", get(exec_ws))
        .route("/v1/sandboxes/{id}/processes", get(processes))
        .route("/v1/sandboxes/{id}/processes/{pid}/ws", get(attach_ws))
        .route("/v1/sandboxes/{id}/processes/{pid}/signal", post(proc_signal))
        .route("/v1/sandboxes/{id}/processes/{pid}/stdin", post(proc_stdin))
        .route("/v1/sandboxes/{id}/files", get(file_read).put(file_write))
        .route("/v1/sandboxes/{id}/files/stat", get(file_stat))
        .route("/v1/sandboxes/{id}/files/list", get(file_list))
        .route("/v1/sandboxes/{id}/files/{op}", post(file_op))
        .route("/v1/environments", get(env_list))
        .route("/v1/environments/{name}", get(env_get).delete(env_remove))
        .route("/v1/environments/{name}/import", post(env_import))
        .route("/v1/environments/{name}/build", post(env_build))
        .fallback(|| async { ApiError(Error::NotFound { kind: "route", id: "requested".into() }) })
        .with_state(m)
}

/// TCP listeners require `Authorization: Bearer <key>` on every request.
pub fn with_api_key(r: Router, key: String) -> Router {
    let key = Arc::new(key);
    r.layer(middleware::from_fn(move |req: Request, next: Next| {
        let key = key.clone();
        async move {
            let given = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| {
                g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            });
            if ok {
                next.run(req).await
            } else {
                (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"code": "unauthorized", "message": "missing or wrong API key (Authorization: Bearer <key>)"}))).into_response()
            }
        }
    }))
}

/// Operations whose capability no driver implements yet: the answer comes
/// from the sandbox's driver's declaration (501 `unsupported` with the
/// driver and capability), never a silent no-op.
async fn gated(State(m): M, Path(id): Path<String>, capability: &'static str) -> ApiResult<Response> {
    let sb = m.get(&id)?;
    m.require(&sb, capability)?;
    Err(ApiError(Error::Unsupported { driver: sb.driver, capability: capability.into() }))
}

async fn net_set(State(m): M, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<Sandbox>> {
    let p: spinup_model::NetworkPolicy = parse(&body)?;
    Ok(Json(m.set_network(&id, p).await?))
}

async fn port_list(State(m): M, Path(id): Path<String>) -> ApiResult<Json<Vec<spinup_model::PortExposure>>> {
    Ok(Json(m.get(&id)?.ports))
}

async fn port_expose(
    State(m): M,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<crate::ports::ExposeAnswer>)> {
    let req: crate::ports::ExposeRequest = parse(&body)?;
    Ok((StatusCode::CREATED, Json(m.expose(&id, req).await?)))
}

async fn port_remove(State(m): M, Path((id, port)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let port: u16 = port.parse().map_err(|_| ApiError(Error::InvalidArgument(format!("bad port {port:?}"))))?;
    m.unexpose(&id, port).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn secrets_attach(State(m): M, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<Sandbox>> {
    let req: crate::policy::AttachRequest = parse(&body)?;
    Ok(Json(m.attach_secrets(&id, req).await?))
}

async fn secret_list(State(m): M) -> ApiResult<Json<Vec<crate::secrets::SecretInfo>>> {
    Ok(Json(m.secrets.list()?))
}

async fn secret_get(State(m): M, Path(name): Path<String>) -> ApiResult<Json<crate::secrets::SecretInfo>> {
    Ok(Json(m.secrets.info(&name)?))
}

/// The value is the raw body (or `{"value": "..."}` with a JSON content
/// type); the answer never contains it.
async fn secret_set(
    State(m): M,
    Path(name): Path<String>,
    headers: http::HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<crate::secrets::SecretInfo>)> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let value = if json {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct V {
            value: String,
        }
        let v: V = serde_json::from_slice(&body).map_err(|_| {
            ApiError(Error::InvalidArgument("malformed JSON body: expected {\"value\": \"...\"}".into()))
        })?;
        zeroize::Zeroizing::new(v.value.into_bytes())
    } else {
        zeroize::Zeroizing::new(body.to_vec())
    };
    let existed = m.secrets.info(&name).is_ok();
    let info = m.secrets.set(&name, &value)?;
    Ok((if existed { StatusCode::OK } else { StatusCode::CREATED }, Json(info)))
}

async fn secret_remove(State(m): M, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let users: Vec<String> = m
        .list(&Default::default())?
        .into_iter()
        .filter(|s| s.secrets.iter().any(|x| x.name == name))
        .map(|s| s.id)
        .collect();
    if !users.is_empty() {
        return Err(ApiError(Error::Conflict(format!(
            "secret {name} is attached to sandbox(es) {}; detach it or remove them first",
            users.join(", ")
        ))));
    }
    m.secrets.remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot(State(m): M, Path(id): Path<String>, body: Bytes) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    let req: crate::snapshots::SnapshotRequest = parse(&body)?;
    let snap = m.snapshot(&id, req).await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

async fn fork(
    State(m): M,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<crate::snapshots::ForkResult>)> {
    let req: crate::snapshots::ForkRequest = parse(&body)?;
    let res = m.fork(&id, req).await?;
    Ok((StatusCode::CREATED, Json(res)))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DiffQuery {
    since: Option<String>,
    path: Option<String>,
    content: bool,
}

async fn diff(
    State(m): M,
    Path(id): Path<String>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<crate::snapshots::Diff>> {
    let Query(q) = q.map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))?;
    Ok(Json(m.diff(&id, q.since, q.path, q.content).await?))
}

async fn snapshot_list(State(m): M) -> ApiResult<Json<Vec<Snapshot>>> {
    Ok(Json(m.snapshot_list()?))
}

async fn snapshot_get(State(m): M, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(m.snapshot_get(&id)?))
}

/// The snapshot's own layer as an OCI layer tar; its sha256 is the
/// snapshot's `layer` digest.
async fn snapshot_layer(State(m): M, Path(id): Path<String>) -> ApiResult<Response> {
    let snap = m.snapshot_get(&id)?;
    let m2 = m.clone();
    let digest = snap.layer.clone();
    let path = tokio::task::spawn_blocking(move || m2.envs.layer_blob(&digest))
        .await
        .map_err(|e| ApiError(Error::internal("blob task", e)))??;
    let f = tokio::fs::File::open(&path).await.map_err(|e| ApiError(Error::internal("opening the layer blob", e)))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/vnd.oci.image.layer.v1.tar".to_string()),
            (http::header::CONTENT_LENGTH, len.to_string()),
            (http::HeaderName::from_static("x-spinup-digest"), snap.layer),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(f)),
    )
        .into_response())
}

async fn snapshot_remove(State(m): M, Path(id): Path<String>) -> ApiResult<StatusCode> {
    m.snapshot_remove(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drivers(State(m): M) -> Json<Vec<spinup_model::Capabilities>> {
    Json(m.drivers())
}

async fn list(State(m): M, Query(q): Query<Vec<(String, String)>>) -> ApiResult<Json<Vec<Sandbox>>> {
    let mut labels = BTreeMap::new();
    for (k, v) in q {
        if k != "label" {
            return Err(ApiError(Error::InvalidArgument(format!("unknown query parameter '{k}'"))));
        }
        let (lk, lv) = v
            .split_once('=')
            .ok_or_else(|| ApiError(Error::InvalidArgument(format!("label filter '{v}' must be key=value"))))?;
        labels.insert(lk.to_string(), lv.to_string());
    }
    Ok(Json(m.list(&labels)?))
}

/// Remove what belongs to no sandbox in the store (`spinup gc`).
async fn gc(State(m): M) -> ApiResult<Json<crate::gc::GcReport>> {
    Ok(Json(m.gc().await?))
}

async fn create(State(m): M, body: Bytes) -> ApiResult<(StatusCode, Json<Sandbox>)> {
    let req: CreateRequest = parse(&body)?;
    Ok((StatusCode::CREATED, Json(m.create(req, None).await?)))
}

async fn inspect(State(m): M, Path(id): Path<String>) -> ApiResult<Json<Sandbox>> {
    Ok(Json(m.get(&id)?))
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(m): M,
    Path(id): Path<String>,
    q: Result<Query<ForceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let force = q.map(|q| q.force).map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))?;
    m.destroy(&id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutBody {
    timeout_s: u64,
}

async fn set_timeout(State(m): M, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<Sandbox>> {
    let t: TimeoutBody = parse(&body)?;
    Ok(Json(m.set_timeout(&id, t.timeout_s)?))
}

async fn info(State(m): M, Path(id): Path<String>) -> ApiResult<Json<spinup_protocol::AgentInfo>> {
    let c = m.agent(&id).await?;
    Ok(Json(c.call(http::Method::GET, "/v1/info", None::<&()>).await?))
}

async fn events(State(m): M, Path(id): Path<String>) -> ApiResult<Json<Vec<crate::store::Transition>>> {
    spinup_model::validate_id(&id)?;
    let t = m.store.transitions(&id)?;
    if t.is_empty() {
        return Err(ApiError(Error::not_found("sandbox", id)));
    }
    Ok(Json(t))
}

/// An exec request as the API takes it: the protocol's request plus
/// optional stdin data for one-shot calls.
#[derive(Deserialize, Default)]
struct ApiExec {
    #[serde(flatten)]
    req: ExecRequest,
    /// Text fed to stdin, which is then closed.
    input: Option<String>,
}

#[derive(Deserialize)]
struct ExecQuery {
    #[serde(default)]
    stream: bool,
}

/// Fill in what the request leaves open from the environment's defaults.
fn apply_defaults(m: &Manager, sb: &Sandbox, req: &mut ExecRequest) -> ApiResult<()> {
    if req.argv.is_empty() && req.cmd.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError(Error::InvalidArgument("exec needs argv or cmd".into())));
    }
    if req.argv.iter().any(|a| a.contains('\0')) || req.cmd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(ApiError(Error::InvalidArgument("command contains a NUL byte".into())));
    }
    if let Ok(env) = m.envs.get(&sb.env) {
        for kv in &env.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                req.env.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if req.cwd.is_none() && !env.config.workdir.is_empty() {
            req.cwd = Some(env.config.workdir.clone());
        }
        if req.user.is_none() && !env.config.user.is_empty() {
            req.user = Some(env.config.user.clone());
        }
    }
    Ok(())
}

fn ndjson_event(f: &Frame) -> Option<serde_json::Value> {
    use serde_json::json;
    let data = |b: &Bytes| match std::str::from_utf8(b) {
        Ok(s) => json!({"data": s}),
        Err(_) => {
            use base64::Engine;
            json!({"data_b64": base64::engine::general_purpose::STANDARD.encode(b)})
        }
    };
    Some(match f {
        Frame::Started(s) => json!({"type": "started", "pid": s.pid}),
        Frame::Stdout(b) => {
            let mut v = data(b);
            v["type"] = "stdout".into();
            v
        }
        Frame::Stderr(b) => {
            let mut v = data(b);
            v["type"] = "stderr".into();
            v
        }
        Frame::Exit(e) => {
            json!({"type": "exit", "exit_code": e.exit_code, "signal": e.signal, "timed_out": e.timed_out, "message": e.message})
        }
        Frame::Error(e) => json!({"type": "error", "code": e.code, "message": e.message}),
        _ => return None,
    })
}

async fn exec(
    State(m): M,
    Path(id): Path<String>,
    q: Result<Query<ExecQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult<Response> {
    let stream = q.map(|q| q.stream).map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))?;
    let mut api: ApiExec = parse(&body)?;
    let sb = m.get(&id)?;
    apply_defaults(&m, &sb, &mut api.req)?;
    api.req.stdin = api.input.is_some();
    if api.req.pty.is_some() {
        return Err(ApiError(Error::InvalidArgument("a pty needs the WebSocket endpoint (/exec/ws)".into())));
    }
    let c = m.agent_for(&sb).await?;
    let (tx, mut rx) = c.process_stream("/v1/exec", Some(Frame::Start(api.req))).await?;
    if let Some(input) = api.input {
        let _ = tx.send(Frame::Stdin(Bytes::from(input))).await;
        let _ = tx.send(Frame::StdinClose).await;
    }
    if stream {
        let s = async_stream(move |out: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>| async move {
            let _keep = tx;
            while let Some(f) = rx.next().await {
                let f = match f {
                    Ok(f) => f,
                    Err(e) => Frame::Error(spinup_protocol::ErrorBody { code: "agent_error".into(), message: e }),
                };
                let end = matches!(f, Frame::Exit(_) | Frame::Error(_));
                if let Some(v) = ndjson_event(&f) {
                    let mut line = serde_json::to_vec(&v).unwrap();
                    line.push(b'\n');
                    if out.send(Ok(Bytes::from(line))).await.is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
            }
        });
        return Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(s)).into_response());
    }
    drop(tx);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut truncated = false;
    while let Some(f) = rx.next().await {
        match f.map_err(|e| ApiError(Error::Agent(e)))? {
            Frame::Stdout(b) => capture(&mut out, &b, &mut truncated),
            Frame::Stderr(b) => capture(&mut err, &b, &mut truncated),
            Frame::Exit(e) => {
                return Ok(Json(serde_json::json!({
                    "stdout": String::from_utf8_lossy(&out),
                    "stderr": String::from_utf8_lossy(&err),
                    "exit_code": e.exit_code,
                    "signal": e.signal,
                    "timed_out": e.timed_out,
                    "message": e.message,
                    "truncated": truncated,
                }))
                .into_response())
            }
            Frame::Error(e) => return Err(ApiError(Error::Guest { status: 400, code: e.code, message: e.message })),
            _ => {}
        }
    }
    Err(ApiError(Error::Agent("the process stream ended without an exit status (sandbox stopped?)".into())))
}

fn capture(buf: &mut Vec<u8>, b: &[u8], truncated: &mut bool) {
    let room = EXEC_CAPTURE_LIMIT.saturating_sub(buf.len());
    if b.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

/// A body stream produced by a task writing into a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

async fn exec_ws(State(m): M, Path(id): Path<String>, ws: WebSocketUpgrade) -> ApiResult<Response> {
    let sb = m.get(&id)?;
    let c = m.agent_for(&sb).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        // The first message must be a Start frame.
        let start = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => break Frame::decode(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return,
            }
        };
        let mut req = match start {
            Ok(Frame::Start(r)) if r.pty.is_some() && m.require(&sb, "pty").is_err() => {
                let e = Error::Unsupported { driver: sb.driver.clone(), capability: "pty".into() };
                let f = Frame::Error(spinup_protocol::ErrorBody { code: e.code().into(), message: e.to_string() });
                let _ = sink.send(Message::Binary(f.encode())).await;
                return;
            }
            Ok(Frame::Start(r)) => r,
            _ => {
                let f = Frame::Error(spinup_protocol::ErrorBody {
                    code: "invalid_argument".into(),
                    message: "the first message must be a Start frame".into(),
                });
                let _ = sink.send(Message::Binary(f.encode())).await;
                return;
            }
        };
        if let Err(ApiError(e)) = apply_defaults(&m, &sb, &mut req) {
            let f = Frame::Error(spinup_protocol::ErrorBody { code: e.code().into(), message: e.to_string() });
            let _ = sink.send(Message::Binary(f.encode())).await;
            return;
        }
        pump(c, "/v1/exec".into(), Some(Frame::Start(req)), sink, stream).await;
    }))
}

async fn attach_ws(State(m): M, Path((id, pid)): Path<(String, String)>, ws: WebSocketUpgrade) -> ApiResult<Response> {
    let pid: u32 = pid.parse().map_err(|_| ApiError(Error::InvalidArgument(format!("pid '{pid}' is not a number"))))?;
    let c = m.agent(&id).await?;
    // Fail before the upgrade when the process does not exist.
    let procs: Vec<spinup_protocol::ProcessInfo> = c.call(http::Method::GET, "/v1/processes", None::<&()>).await?;
    if !procs.iter().any(|p| p.pid == pid) {
        return Err(ApiError(Error::not_found("process", pid.to_string())));
    }
    Ok(ws.on_upgrade(move |socket| async move {
        let (sink, stream) = socket.split();
        pump(c, format!("/v1/processes/{pid}/attach"), None, sink, stream).await;
    }))
}

/// Join a WebSocket to an agent process stream, frames both ways.
async fn pump(
    c: AgentClient,
    uri: String,
    first: Option<Frame>,
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut stream: futures::stream::SplitStream<WebSocket>,
) {
    let (tx, mut rx) = match c.process_stream(&uri, first).await {
        Ok(x) => x,
        Err(e) => {
            let e = agent_err(e);
            let f = Frame::Error(spinup_protocol::ErrorBody { code: e.code().into(), message: e.to_string() });
            let _ = sink.send(Message::Binary(f.encode())).await;
            let _ = sink.close().await;
            return;
        }
    };
    // Client → agent. When the client goes away (close or error), the
    // whole exchange ends: dropping the agent stream resets it, and the
    // agent kills a foreground process whose client is gone.
    let inbound = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => {
                    if let Ok(f @ (Frame::Stdin(_) | Frame::StdinClose | Frame::Signal(_) | Frame::Resize(_))) =
                        Frame::decode(b)
                    {
                        if tx.send(f).await.is_err() {
                            break;
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // Agent → client, until the process exits.
    let outbound = async {
        while let Some(f) = rx.next().await {
            let Ok(f) = f else { break };
            let end = matches!(f, Frame::Exit(_) | Frame::Error(_));
            if sink.send(Message::Binary(f.encode())).await.is_err() {
                return false;
            }
            if end {
                return true;
            }
        }
        let f = Frame::Error(spinup_protocol::ErrorBody {
            code: "agent_error".into(),
            message: "the process stream ended without an exit status (sandbox stopped?)".into(),
        });
        let _ = sink.send(Message::Binary(f.encode())).await;
        true
    };
    tokio::select! {
        _ = inbound => {}
        done = outbound => {
            if done {
                let _ = sink.close().await;
            }
        }
    }
}

async fn processes(State(m): M, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let c = m.agent(&id).await?;
    Ok(Json(c.call(http::Method::GET, "/v1/processes", None::<&()>).await?))
}

fn pid_of(pid: &str) -> ApiResult<u32> {
    pid.parse().map_err(|_| ApiError(Error::InvalidArgument(format!("pid '{pid}' is not a number"))))
}

async fn proc_signal(
    State(m): M,
    Path((id, pid)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let pid = pid_of(&pid)?;
    let req: spinup_protocol::SignalRequest = parse(&body)?;
    let c = m.agent(&id).await?;
    Ok(Json(c.call(http::Method::POST, &format!("/v1/processes/{pid}/signal"), Some(&req)).await?))
}

async fn proc_stdin(
    State(m): M,
    Path((id, pid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let pid = pid_of(&pid)?;
    let c = m.agent(&id).await?;
    let uri = format!("/v1/processes/{pid}/stdin?{}", q.unwrap_or_default());
    forward(&c, http::Method::POST, &uri, body).await
}

/// Pass a request through to the agent, streaming both bodies.
async fn forward(c: &AgentClient, method: http::Method, uri: &str, body: Body) -> ApiResult<Response> {
    let body = body.map_err(std::io::Error::other).boxed_unsync();
    let resp = c.request(method, uri, body).await?;
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::new(Body::new(incoming));
    *out.status_mut() = parts.status;
    for h in [http::header::CONTENT_TYPE, http::header::CONTENT_LENGTH] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    Ok(out)
}

fn files_uri(path: &str, q: Option<String>) -> String {
    format!("/v1/files/{path}?{}", q.unwrap_or_default())
}

async fn file_read(State(m): M, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let c = m.agent(&id).await?;
    forward(&c, http::Method::GET, &files_uri("content", q), Body::empty()).await
}

async fn file_write(State(m): M, Path(id): Path<String>, RawQuery(q): RawQuery, body: Body) -> ApiResult<Response> {
    let c = m.agent(&id).await?;
    forward(&c, http::Method::PUT, &files_uri("content", q), body).await
}

async fn file_stat(State(m): M, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let c = m.agent(&id).await?;
    forward(&c, http::Method::GET, &files_uri("stat", q), Body::empty()).await
}

async fn file_list(State(m): M, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let c = m.agent(&id).await?;
    forward(&c, http::Method::GET, &files_uri("list", q), Body::empty()).await
}

async fn file_op(State(m): M, Path((id, op)): Path<(String, String)>, body: Bytes) -> ApiResult<Response> {
    if !["mkdir", "remove", "rename", "chmod"].contains(&op.as_str()) {
        return Err(ApiError(Error::NotFound { kind: "file operation", id: op }));
    }
    // Validate the JSON here so a malformed body gets the API's error.
    let _: serde_json::Value = parse(&body)?;
    let c = m.agent(&id).await?;
    let resp = c.request(http::Method::POST, &format!("/v1/files/{op}"), full_body(body)).await?;
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::new(Body::new(incoming));
    *out.status_mut() = parts.status;
    out.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(out)
}

async fn env_list(State(m): M) -> ApiResult<Json<serde_json::Value>> {
    let envs = m.envs.list()?;
    Ok(Json(serde_json::json!({"environments": envs, "builtin": crate::envs::BUILTINS})))
}

async fn env_get(State(m): M, Path(name): Path<String>) -> ApiResult<Json<spinup_model::Environment>> {
    Ok(Json(m.envs.get(&name)?))
}

async fn env_remove(State(m): M, Path(name): Path<String>) -> ApiResult<StatusCode> {
    m.envs.get(&name)?;
    if let Some(sb) = m.list(&BTreeMap::new())?.into_iter().find(|s| s.env == name) {
        return Err(ApiError(Error::Conflict(format!("environment {name} is used by sandbox {}", sb.id))));
    }
    let layers = m.envs.get(&name)?.layers;
    m.envs.forget(&name)?;
    // Layers a snapshot or sandbox still stacks stay.
    m.gc_layers(&layers);
    Ok(StatusCode::NO_CONTENT)
}

/// Body: a rootfs tarball (tar or tar.gz), streamed.
async fn env_import(
    State(m): M,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<spinup_model::Environment>)> {
    crate::envs::validate_name(&name)?;
    let stream = body.into_data_stream().map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let m2 = m.clone();
    let env = tokio::task::spawn_blocking(move || {
        let sync = tokio_util::io::SyncIoBridge::new(reader);
        m2.envs.import_tar(&name, sync, &None)
    })
    .await
    .map_err(|e| ApiError(Error::internal("import task", e)))??;
    Ok((StatusCode::CREATED, Json(env)))
}

/// Build a built-in recipe; the answer is NDJSON progress, then the
/// environment (or an error) as the last line.
async fn env_build(State(m): M, Path(name): Path<String>) -> ApiResult<Response> {
    crate::envs::validate_name(&name)?;
    if !crate::envs::BUILTINS.contains(&name.as_str()) {
        return Err(ApiError(Error::InvalidArgument(format!(
            "no built-in recipe '{name}'; recipes: {}",
            crate::envs::BUILTINS.join(", ")
        ))));
    }
    let s = async_stream(move |out| async move {
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let build = {
            let m = m.clone();
            tokio::spawn(async move { m.envs.build(&name, Some(ptx)).await })
        };
        while let Some(line) = prx.recv().await {
            let mut l = serde_json::to_vec(&serde_json::json!({"progress": line})).unwrap();
            l.push(b'\n');
            let _ = out.send(Ok(Bytes::from(l))).await;
        }
        let last = match build.await {
            Ok(Ok(env)) => serde_json::json!({"environment": env}),
            Ok(Err(e)) => serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}}),
            Err(e) => serde_json::json!({"error": {"code": "internal", "message": e.to_string()}}),
        };
        let mut l = serde_json::to_vec(&last).unwrap();
        l.push(b'\n');
        let _ = out.send(Ok(Bytes::from(l))).await;
    });
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(s)).into_response())
}
