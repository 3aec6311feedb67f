//! envd, the in-sandbox API of E2B (`E2B_SANDBOX_URL`): `/health`,
//! `/files` (plain HTTP) and the Connect-RPC services. Requests reach it
//! already routed to one sandbox ([`Target`]) and authorized.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, FromRequest, Multipart, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use spinup_api::{FileOp, FileRequest, Sandbox, SandboxId};
use tokio::sync::mpsc;

use crate::filesystem::{self as fs, absolute, acting_user, query};
use crate::{process, App, Target};

type St = State<Arc<App>>;
type Ext = Extension<Target>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(read).post(write).layer(DefaultBodyLimit::disable()))
        .route("/process.Process/Start", post(process::start))
        .route("/process.Process/Connect", post(process::connect))
        .route("/process.Process/List", post(process::list))
        .route("/process.Process/SendSignal", post(process::send_signal))
        .route("/process.Process/SendInput", post(process::send_input))
        .route("/process.Process/CloseStdin", post(process::close_stdin))
        .route("/process.Process/Update", post(process::update))
        .route("/process.Process/StreamInput", post(process::stream_input))
        .route("/filesystem.Filesystem/Stat", post(fs::stat))
        .route("/filesystem.Filesystem/MakeDir", post(fs::make_dir))
        .route("/filesystem.Filesystem/Move", post(fs::move_entry))
        .route("/filesystem.Filesystem/ListDir", post(fs::list_dir))
        .route("/filesystem.Filesystem/Remove", post(fs::remove))
        .route("/filesystem.Filesystem/WatchDir", post(fs::watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(fs::create_watcher))
        .route("/filesystem.Filesystem/GetWatcherEvents", post(fs::get_watcher_events))
        .route("/filesystem.Filesystem/RemoveWatcher", post(fs::remove_watcher))
        .fallback(|req: Request| async move {
            let msg = format!("{} {} is not part of envd's API", req.method(), req.uri().path());
            (StatusCode::NOT_FOUND, Json(json!({"code": "unimplemented", "message": msg})))
        })
}

/// What E2B's edge answers for a sandbox that does not exist (any more):
/// the SDK raises SandboxNotRunningException on "was not found".
pub fn sandbox_not_found(id: &str) -> Response {
    let body = json!({"message": "The sandbox was not found", "code": 502, "sandboxId": id});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

async fn health(Extension(t): Ext) -> Response {
    if t.sb.state.as_str() == "running" {
        crate::empty(StatusCode::NO_CONTENT)
    } else {
        sandbox_not_found(&t.id)
    }
}

/// envd's `/files` error: `{code, message}` with the HTTP status the SDK
/// maps (404 FileNotFound, 400 InvalidArgument, 507 NotEnoughSpace).
fn file_error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"code": status.as_u16(), "message": message}))).into_response()
}

fn from_connect(e: crate::connect::ConnectError) -> Response {
    let status = match e.code {
        "not_found" => 404,
        "invalid_argument" => 400,
        "permission_denied" => 403,
        "resource_exhausted" => 507,
        "unavailable" => 502,
        _ => 500,
    };
    file_error(status, &e.message)
}

fn params(q: Option<&str>) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The user of a `/files` call: `?username=`, else the environment's.
async fn files_user(
    app: &App,
    sb: &Sandbox,
    p: &std::collections::HashMap<String, String>,
    h: &HeaderMap,
) -> Option<String> {
    match p.get("username").filter(|u| !u.is_empty()) {
        Some(u) => Some(u.clone()),
        None => acting_user(app, sb, h).await,
    }
}

async fn read(State(app): St, Extension(t): Ext, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let p = params(q.as_deref());
    let Some(path) = p.get("path") else { return file_error(400, "missing ?path=") };
    let user = files_user(&app, &t.sb, &p, &headers).await;
    let path = match absolute(path, user.as_deref()) {
        Ok(p) => p,
        Err(e) => return from_connect(e),
    };
    let req =
        FileRequest { op: FileOp::Read, query: query(&[("path", &path)]), body: futures::stream::empty().boxed() };
    let f = match app.svc.files(&t.id, req).await {
        Ok(f) => f,
        Err(e) => return file_error(spinup_api::error::http_status(&e), &e.to_string()),
    };
    if f.status >= 300 {
        let status = f.status;
        return match fs::json_of(f).await {
            Err(e) => from_connect(e),
            Ok(_) => file_error(status, "read failed"),
        };
    }
    let mut r = Response::new(Body::from_stream(f.body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    if let Some(len) = f.content_length {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
    }
    r
}

/// Write one file from a stream of chunks; its `EntryInfo`-like answer.
async fn put(
    app: &App,
    id: &SandboxId,
    path: &str,
    user: Option<&str>,
    body: spinup_api::ByteStream,
) -> Result<Value, Response> {
    let path = absolute(path, user).map_err(from_connect)?;
    let mut q = vec![("path", path.as_str())];
    if let Some(u) = user {
        q.push(("user", u));
    }
    let f = app
        .svc
        .files(id, FileRequest { op: FileOp::Write, query: query(&q), body })
        .await
        .map_err(|e| file_error(spinup_api::error::http_status(&e), &e.to_string()))?;
    let v = fs::json_of(f).await.map_err(from_connect)?;
    let name = v["name"].as_str().map(String::from).unwrap_or_default();
    Ok(json!({"name": name, "type": "file", "path": v["path"].as_str().unwrap_or(&path)}))
}

/// A gzip body, unpacked as it streams (bounded memory).
fn gunzip(body: Body) -> spinup_api::ByteStream {
    use std::io::Write;
    let dec = flate2::write::GzDecoder::new(Vec::new());
    futures::stream::unfold((body.into_data_stream(), Some(dec)), |(mut s, dec)| async move {
        let mut dec = dec?;
        match s.next().await {
            Some(Ok(chunk)) => {
                let r = dec.write_all(&chunk).map(|_| Bytes::from(std::mem::take(dec.get_mut())));
                Some((r, (s, Some(dec))))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e)), (s, None))),
            None => Some((dec.finish().map(Bytes::from), (s, None))),
        }
    })
    .boxed()
}

async fn write(State(app): St, Extension(t): Ext, RawQuery(q): RawQuery, req: Request) -> Response {
    let p = params(q.as_deref());
    let headers = req.headers().clone();
    let user = files_user(&app, &t.sb, &p, &headers).await;
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let gz = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    let out: Result<Vec<Value>, Response> = if ct.starts_with("multipart/form-data") {
        multipart(&app, &t.id, p.get("path").map(String::as_str), user.as_deref(), req, gz).await
    } else {
        let Some(path) = p.get("path") else { return file_error(400, "missing ?path=") };
        let body = req.into_body();
        let stream =
            if gz { gunzip(body) } else { body.into_data_stream().map(|r| r.map_err(std::io::Error::other)).boxed() };
        put(&app, &t.id, path, user.as_deref(), stream).await.map(|v| vec![v])
    };
    match out {
        Ok(v) if v.is_empty() => file_error(400, "the request carries no file"),
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// One part per file, named `file`; its filename is its path unless the
/// query gives one (then there is exactly one part).
async fn multipart(
    app: &App,
    id: &SandboxId,
    path: Option<&str>,
    user: Option<&str>,
    req: Request,
    gz: bool,
) -> Result<Vec<Value>, Response> {
    if gz {
        return Err(file_error(400, "gzip applies to octet-stream uploads, not multipart"));
    }
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| file_error(400, &e.body_text()))?;
    let mut out = vec![];
    while let Some(mut field) =
        form.next_field().await.map_err(|e| file_error(400, &format!("malformed multipart body: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let dest = match (path, field.file_name()) {
            (Some(p), _) if !p.is_empty() => p.to_string(),
            (_, Some(f)) if !f.is_empty() => f.to_string(),
            _ => return Err(file_error(400, "a file part needs a filename (its path) or ?path=")),
        };
        // The part borrows the form: feed it to the write through a channel.
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let stream = futures::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx)
        })
        .boxed();
        let write = put(app, id, &dest, user, stream);
        let feed = async move {
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
        };
        let (v, ()) = tokio::join!(write, feed);
        out.push(v?);
    }
    Ok(out)
}
