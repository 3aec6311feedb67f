//! One handler per operation (exec and its WebSockets are in `exec.rs`):
//! extract, call the service, encode.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::http::{self, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use spinup_api::service::{Layer, SecretValue};
use spinup_api::{
    AttachRequest, AuditQuery, CodeRequest, ContextRequest, CreateRequest, DiffQuery, Error, FileOp, FileRequest,
    ForceQuery, ForkRequest, Forwarded, KeyRequest, ListQuery, NetworkPolicy, PauseRequest, SnapshotRequest,
    TimeoutRequest,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ndjson_line, number, segment, stream, Body as JsonBody, Caller, Id, Segments, Q};
use crate::Svc;

type S = Caller;

pub async fn openapi() -> Json<serde_json::Value> {
    Json(spinup_api::openapi::document())
}

pub async fn drivers(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.drivers().await?))
}

/// Remove what belongs to no sandbox in the store (`spinup gc`).
pub async fn gc(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.gc().await?))
}

pub async fn list(Caller(s): S, Q(q): Q<Vec<(String, String)>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.list(ListQuery::from_pairs(q)?).await?))
}

pub async fn create(Caller(s): S, JsonBody(req): JsonBody<CreateRequest>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.create(req).await?)))
}

pub async fn get(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.get(&id).await?))
}

pub async fn remove(Caller(s): S, Id(id): Id, Q(q): Q<ForceQuery>) -> ApiResult<impl IntoResponse> {
    s.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_timeout(
    Caller(s): S,
    Id(id): Id,
    JsonBody(t): JsonBody<TimeoutRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.set_timeout(&id, t).await?))
}

pub async fn info(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.info(&id).await?))
}

pub async fn events(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.events(&id).await?))
}

pub async fn pause(Caller(s): S, Id(id): Id, JsonBody(b): JsonBody<PauseRequest>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.pause(&id, b).await?))
}

pub async fn resume(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.resume(&id).await?))
}

pub async fn start(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.start(&id).await?))
}

pub async fn update_resources(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.update_resources(&id).await?))
}

pub async fn snapshot(
    Caller(s): S,
    Id(id): Id,
    JsonBody(r): JsonBody<SnapshotRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.snapshot(&id, r).await?)))
}

pub async fn fork(Caller(s): S, Id(id): Id, JsonBody(r): JsonBody<ForkRequest>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.fork(&id, r).await?)))
}

pub async fn diff(Caller(s): S, Id(id): Id, Q(q): Q<DiffQuery>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.diff(&id, q).await?))
}

pub async fn snapshots(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.snapshots().await?))
}

pub async fn snapshot_get(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.snapshot_get(&segment(&p.0, "id")).await?))
}

pub async fn snapshot_remove(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    s.snapshot_remove(&segment(&p.0, "id")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An OCI layer tar; `X-Spinup-Digest` is its sha256.
pub async fn snapshot_layer(Caller(s): S, p: Segments) -> ApiResult<Response> {
    let Layer { digest, len, body } = s.snapshot_layer(&segment(&p.0, "id")).await?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "application/vnd.oci.image.layer.v1.tar".to_string()),
            (http::header::CONTENT_LENGTH, len.to_string()),
            (http::HeaderName::from_static("x-spinup-digest"), digest),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

pub async fn set_network(
    Caller(s): S,
    Id(id): Id,
    JsonBody(p): JsonBody<NetworkPolicy>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.set_network(&id, p).await?))
}

pub async fn ports(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.ports(&id).await?))
}

pub async fn expose(
    Caller(s): S,
    Id(id): Id,
    JsonBody(r): JsonBody<spinup_api::ExposeRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.expose(&id, r).await?)))
}

pub async fn unexpose(Caller(s): S, Id(id): Id, p: Segments) -> ApiResult<impl IntoResponse> {
    let port: u16 = number(&p, "port", |v| format!("bad port {v:?}"))?;
    s.unexpose(&id, port).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn attach_secrets(
    Caller(s): S,
    Id(id): Id,
    JsonBody(r): JsonBody<AttachRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.attach_secrets(&id, r).await?))
}

pub async fn secrets(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.secrets().await?))
}

pub async fn secret(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.secret(&segment(&p.0, "name")).await?))
}

/// The value is the raw body (or `{"value": "..."}` with a JSON content
/// type); the answer never contains it.
pub async fn set_secret(Caller(s): S, p: Segments, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
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
    let set = s.set_secret(&segment(&p.0, "name"), SecretValue(value)).await?;
    Ok((if set.created { StatusCode::CREATED } else { StatusCode::OK }, Json(set.info)))
}

pub async fn remove_secret(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    s.remove_secret(&segment(&p.0, "name")).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn pid(p: &Segments) -> ApiResult<u32> {
    number(p, "pid", |v| format!("pid '{v}' is not a number"))
}

pub async fn processes(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.processes(&id).await?))
}

pub async fn signal(
    Caller(s): S,
    Id(id): Id,
    p: Segments,
    JsonBody(r): JsonBody<spinup_protocol::SignalRequest>,
) -> ApiResult<impl IntoResponse> {
    let pid = pid(&p)?;
    Ok(Json(s.signal(&id, pid, r).await?))
}

pub async fn stdin(Caller(s): S, Id(id): Id, p: Segments, RawQuery(q): RawQuery, body: Body) -> ApiResult<Response> {
    let pid = pid(&p)?;
    Ok(forwarded(s.stdin(&id, pid, q.unwrap_or_default(), stream(body)).await?))
}

/// An agent's answer, passed through.
fn forwarded(f: Forwarded) -> Response {
    let mut out = Response::new(Body::from_stream(f.body));
    *out.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = out.headers_mut();
    if let Some(v) = f.content_type.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Some(n) = f.content_length {
        h.insert(http::header::CONTENT_LENGTH, n.into());
    }
    out
}

async fn file(s: Svc, id: spinup_api::SandboxId, op: FileOp, q: Option<String>, body: Body) -> ApiResult<Response> {
    let req = FileRequest { op, query: q.unwrap_or_default(), body: stream(body) };
    Ok(forwarded(s.files(&id, req).await?))
}

pub async fn read_file(Caller(s): S, Id(id): Id, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let mut resp = file(s, id, FileOp::Read, q, Body::empty()).await?;
    // A file's bytes are bytes when the agent names no type.
    if resp.status().is_success() && !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    }
    Ok(resp)
}

pub async fn write_file(Caller(s): S, Id(id): Id, RawQuery(q): RawQuery, body: Body) -> ApiResult<Response> {
    file(s, id, FileOp::Write, q, body).await
}

pub async fn stat_file(Caller(s): S, Id(id): Id, RawQuery(q): RawQuery) -> ApiResult<Response> {
    file(s, id, FileOp::Stat, q, Body::empty()).await
}

pub async fn list_files(Caller(s): S, Id(id): Id, RawQuery(q): RawQuery) -> ApiResult<Response> {
    file(s, id, FileOp::List, q, Body::empty()).await
}

/// NDJSON, streamed as the agent writes it (never buffered): it runs
/// until the client goes.
pub async fn watch_files(Caller(s): S, Id(id): Id, RawQuery(q): RawQuery) -> ApiResult<Response> {
    file(s, id, FileOp::Watch, q, Body::empty()).await
}

/// `mkdir`, `remove`, `rename`, `chmod`: a JSON body (read whole, within
/// axum's body limit) the agent checks.
pub async fn mkdir(Caller(s): S, Id(id): Id, body: Bytes) -> ApiResult<Response> {
    file(s, id, FileOp::Mkdir, None, Body::from(body)).await
}

pub async fn remove_path(Caller(s): S, Id(id): Id, body: Bytes) -> ApiResult<Response> {
    file(s, id, FileOp::Remove, None, Body::from(body)).await
}

pub async fn rename_path(Caller(s): S, Id(id): Id, body: Bytes) -> ApiResult<Response> {
    file(s, id, FileOp::Rename, None, Body::from(body)).await
}

pub async fn chmod_path(Caller(s): S, Id(id): Id, body: Bytes) -> ApiResult<Response> {
    file(s, id, FileOp::Chmod, None, Body::from(body)).await
}

pub async fn environments(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.environments().await?))
}

pub async fn environment(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.environment(&segment(&p.0, "name")).await?))
}

pub async fn remove_environment(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    s.remove_environment(&segment(&p.0, "name")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body: a rootfs tarball (tar or tar.gz), streamed.
pub async fn import_environment(Caller(s): S, p: Segments, body: Body) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.import_environment(&segment(&p.0, "name"), stream(body)).await?)))
}

/// NDJSON progress, then the environment (or an error) as the last line.
pub async fn build_environment(Caller(s): S, p: Segments) -> ApiResult<Response> {
    let events = s.build_environment(&segment(&p.0, "name")).await?;
    let lines = events.map(|e| Ok::<_, std::io::Error>(ndjson_line(&e)));
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// NDJSON code events, `end` last.
pub async fn run_code(Caller(s): S, Id(id): Id, JsonBody(r): JsonBody<CodeRequest>) -> ApiResult<Response> {
    let events = s.run_code(&id, r).await?;
    let lines = events.map(|e| Ok::<_, std::io::Error>(ndjson_line(&e)));
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

pub async fn code_contexts(Caller(s): S, Id(id): Id) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.code_contexts(&id).await?))
}

pub async fn create_code_context(
    Caller(s): S,
    Id(id): Id,
    JsonBody(r): JsonBody<ContextRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.create_code_context(&id, r).await?)))
}

pub async fn restart_code_context(Caller(s): S, Id(id): Id, p: Segments) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.restart_code_context(&id, &segment(&p.0, "context")).await?))
}

pub async fn remove_code_context(Caller(s): S, Id(id): Id, p: Segments) -> ApiResult<impl IntoResponse> {
    s.remove_code_context(&id, &segment(&p.0, "context")).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn keys(Caller(s): S) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.keys().await?))
}

/// The key's secret is in this answer only.
pub async fn create_key(Caller(s): S, JsonBody(req): JsonBody<KeyRequest>) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.create_key(req).await?)))
}

pub async fn remove_key(Caller(s): S, p: Segments) -> ApiResult<impl IntoResponse> {
    s.remove_key(&segment(&p.0, "id")).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn audit(Caller(s): S, Q(q): Q<AuditQuery>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.audit(q).await?))
}
