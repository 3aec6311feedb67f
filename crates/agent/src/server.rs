//! HTTP/2 routes of the agent protocol (see `spinup_protocol` for the table).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use spinup_protocol::frame::FrameReader;
use spinup_protocol::{ErrorBody, ExitStatus, Frame, SignalRequest, Started, PROTOCOL_HEADER, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::process::{Proc, SpawnError, Table};

#[derive(Clone)]
pub struct AppState {
    pub table: Arc<Table>,
    pub started: Instant,
}

/// An error answer: status plus the protocol's JSON body.
#[derive(Debug)]
pub struct AgentError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AgentError {
    pub fn bad(message: impl Into<String>) -> Self {
        AgentError { status: StatusCode::BAD_REQUEST, code: "invalid_argument", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AgentError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { code: self.code.into(), message: self.message })).into_response()
    }
}

pub fn router(table: Arc<Table>) -> Router {
    let state = AppState { table, started: Instant::now() };
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/exec", post(exec))
        .route("/v1/processes", get(list))
        .route("/v1/processes/{pid}/attach", post(attach))
        .route("/v1/processes/{pid}/signal", post(signal))
        .route("/v1/processes/{pid}/stdin", post(stdin))
        .merge(crate::files::routes())
        .merge(crate::changes::routes())
        .merge(crate::net::routes())
        .merge(crate::watch::routes())
        .layer(middleware::from_fn(check_version))
        .with_state(state)
}

async fn check_version(req: Request, next: Next) -> Response {
    let v = req.headers().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
    if v != Some(PROTOCOL_VERSION) {
        return AgentError {
            status: StatusCode::BAD_REQUEST,
            code: "protocol_mismatch",
            message: format!(
                "agent speaks protocol {PROTOCOL_VERSION}, request has {v:?}; upgrade the host or the agent"
            ),
        }
        .into_response();
    }
    next.run(req).await
}

async fn info(State(s): State<AppState>) -> Json<spinup_protocol::AgentInfo> {
    Json(crate::info::collect(s.started, s.table.running()))
}

async fn list(State(s): State<AppState>) -> Json<Vec<spinup_protocol::ProcessInfo>> {
    Json(s.table.list())
}

fn frame_body(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    Body::from_stream(stream).into_response()
}

async fn exec(State(s): State<AppState>, body: Body) -> Result<Response, AgentError> {
    let mut reader = FrameReader::new(body.into_data_stream());
    let req = match reader.next().await {
        Some(Ok(Frame::Start(r))) => r,
        Some(Err(e)) => return Err(AgentError::bad(format!("bad exec stream: {e}"))),
        _ => return Err(AgentError::bad("the first frame of an exec stream must be Start")),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    match s.table.spawn(&req) {
        Ok(p) => {
            // Subscribe before yielding, so no output is published unseen.
            let sub = p.subscribe();
            let _ = tx.try_send(Frame::Started(Started { pid: p.pid }).encode());
            tokio::spawn(attach_loop(p, sub, reader, tx, !req.background));
        }
        Err(SpawnError::Exec { exit_code, message }) => {
            let _ = tx.try_send(Frame::Stderr(Bytes::from(format!("{message}\n"))).encode());
            let _ = tx
                .try_send(Frame::Exit(ExitStatus { exit_code, message: Some(message), ..Default::default() }).encode());
        }
        Err(SpawnError::Invalid(m)) => return Err(AgentError::bad(m)),
    }
    Ok(frame_body(rx))
}

async fn attach(State(s): State<AppState>, Path(pid): Path<u32>, body: Body) -> Result<Response, AgentError> {
    let p = s.table.get(pid).ok_or_else(|| AgentError::not_found(format!("no process with pid {pid}")))?;
    let reader = FrameReader::new(body.into_data_stream());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let sub = p.subscribe();
    // Re-attaching never kills: the process was already independent.
    tokio::spawn(attach_loop(p, sub, reader, tx, false));
    Ok(frame_body(rx))
}

/// Pump one process's output to a client and the client's input to it.
/// When the client vanishes, a foreground process is killed with its group.
async fn attach_loop<S, E>(
    p: Arc<Proc>,
    (replay, live): (Vec<Frame>, Option<mpsc::Receiver<Frame>>),
    mut reader: FrameReader<S>,
    tx: mpsc::Sender<Bytes>,
    kill_on_detach: bool,
) where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut gone = false;
    for f in replay {
        let exit = matches!(f, Frame::Exit(_));
        if tx.send(f.encode()).await.is_err() {
            gone = true;
            break;
        }
        if exit {
            return;
        }
    }
    if let (false, Some(mut live)) = (gone, live) {
        let mut input_open = true;
        loop {
            tokio::select! {
                f = live.recv() => match f {
                    Some(f) => {
                        let exit = matches!(f, Frame::Exit(_));
                        if tx.send(f.encode()).await.is_err() { gone = true; break; }
                        if exit { break; }
                    }
                    None => break,
                },
                inp = reader.next(), if input_open => match inp {
                    Some(Ok(Frame::Stdin(b))) => { p.write_stdin(b); }
                    Some(Ok(Frame::StdinClose)) => p.close_stdin(),
                    Some(Ok(Frame::Signal(SignalRequest { signal }))) => p.signal(signal),
                    Some(Ok(Frame::Resize(size))) => { let _ = p.resize(size); }
                    Some(Ok(_)) => {}
                    // The client finished sending; keep streaming output.
                    None => input_open = false,
                    Some(Err(_)) => { gone = true; break; }
                },
                _ = tx.closed() => { gone = true; break; }
            }
        }
    }
    if gone && kill_on_detach {
        p.signal(libc::SIGKILL);
    }
}

/// Parse a JSON body whatever its content type (the host sends none).
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| AgentError::bad(format!("malformed JSON body: {e}")))
}

async fn signal(
    State(s): State<AppState>,
    Path(pid): Path<u32>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, AgentError> {
    let req: SignalRequest = parse(&body)?;
    if !(1..=64).contains(&req.signal) {
        return Err(AgentError::bad(format!("signal {} is out of range 1-64", req.signal)));
    }
    let p = s.table.get(pid).ok_or_else(|| AgentError::not_found(format!("no process with pid {pid}")))?;
    if !p.is_running() {
        return Err(AgentError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!("process {pid} has exited"),
        });
    }
    p.signal(req.signal);
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct StdinQuery {
    #[serde(default)]
    close: bool,
}

async fn stdin(
    State(s): State<AppState>,
    Path(pid): Path<u32>,
    Query(q): Query<StdinQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, AgentError> {
    let p = s.table.get(pid).ok_or_else(|| AgentError::not_found(format!("no process with pid {pid}")))?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| AgentError::bad(format!("stdin body: {e}")))?;
        if !p.write_stdin(chunk) {
            return Err(AgentError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: format!("stdin of process {pid} is closed"),
            });
        }
    }
    if q.close {
        p.close_stdin();
    }
    Ok(Json(serde_json::json!({})))
}

async fn serve_conn<IO>(io: IO, app: Router)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .await;
}

/// Serve every connection on a listening unix socket.
pub async fn serve_listener(l: tokio::net::UnixListener, app: Router) {
    use std::os::fd::AsRawFd;
    // The inherited listener must not leak into the processes we spawn.
    let _ = nix::fcntl::fcntl(l.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve_conn(s, app.clone()));
            }
            Err(e) => {
                eprintln!("spinup-agent: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Dial the host's socket and serve the protocol on that connection; when
/// it drops (say, the daemon restarted), dial again, backing off to 1 s.
pub async fn serve_dial(path: &str, app: Router) {
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => {
                backoff = std::time::Duration::from_millis(10);
                serve_conn(s, app.clone()).await;
            }
            Err(_) => backoff = (backoff * 2).min(std::time::Duration::from_secs(1)),
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Serve the protocol on a virtio-serial port, one host session at a time
/// (see [`spinup_protocol::SERIAL_RESET`] for the handshake).
pub async fn serve_serial(dev: &str, app: Router) {
    loop {
        let port = match crate::serial::Port::open(dev) {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => {
                eprintln!("spinup-agent: open {dev}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            match port.handshake().await {
                Ok(rest) => serve_conn(crate::serial::Prefixed::new(rest, port.clone()), app.clone()).await,
                Err(e) => {
                    eprintln!("spinup-agent: {dev}: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
