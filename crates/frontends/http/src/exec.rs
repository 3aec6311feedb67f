//! Exec and its encodings: one JSON answer, NDJSON events, or a WebSocket
//! of protocol frames both ways (exec with a pty, and re-attach).

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use spinup_api::{Error, ExecQuery, ExecRequest, ExecResult, ExecSession};
use spinup_protocol::{ErrorBody, Frame};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ndjson_line, number, Body as JsonBody, Caller, Id, Segments, Q};

/// Output kept per stream by a non-streaming exec.
const EXEC_CAPTURE_LIMIT: usize = 16 << 20;

const NO_EXIT: &str = "the process stream ended without an exit status (sandbox stopped?)";

pub async fn exec(
    Caller(s): Caller,
    Id(id): Id,
    Q(q): Q<ExecQuery>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> ApiResult<Response> {
    let ExecSession { input, mut output } = s.exec(&id, req, false).await?;
    if q.stream {
        let lines = async_stream::stream(input, output);
        return Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response());
    }
    drop(input);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut truncated = false;
    while let Some(f) = output.next().await {
        match f.map_err(|e| ApiError(Error::Agent(e)))? {
            Frame::Stdout(b) => capture(&mut out, &b, &mut truncated),
            Frame::Stderr(b) => capture(&mut err, &b, &mut truncated),
            Frame::Exit(e) => {
                return Ok(Json(ExecResult {
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    exit_code: e.exit_code,
                    signal: e.signal,
                    timed_out: e.timed_out,
                    message: e.message,
                    truncated,
                })
                .into_response())
            }
            Frame::Error(e) => return Err(ApiError(Error::Guest { status: 400, code: e.code, message: e.message })),
            _ => {}
        }
    }
    Err(ApiError(Error::Agent(NO_EXIT.into())))
}

fn capture(buf: &mut Vec<u8>, b: &[u8], truncated: &mut bool) {
    let room = EXEC_CAPTURE_LIMIT.saturating_sub(buf.len());
    if b.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

/// NDJSON events of a running process.
mod async_stream {
    use super::*;

    /// One line per event until `exit` or `error`; the input side stays
    /// open (the process keeps its stdin) until then.
    pub fn stream(
        input: tokio::sync::mpsc::Sender<Frame>,
        output: futures::stream::BoxStream<'static, Result<Frame, String>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold(Some((input, output)), |state| async move {
            let (input, mut output) = state?;
            loop {
                let f = match output.next().await? {
                    Ok(f) => f,
                    Err(e) => Frame::Error(ErrorBody { code: "agent_error".into(), message: e }),
                };
                let end = matches!(f, Frame::Exit(_) | Frame::Error(_));
                if let Some(v) = ndjson_event(&f) {
                    let next = if end { None } else { Some((input, output)) };
                    return Some((Ok(ndjson_line(&v)), next));
                }
                if end {
                    return None;
                }
            }
        })
    }
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

fn error_frame(e: &Error) -> Message {
    raw_error_frame(e.code(), &e.to_string())
}

fn raw_error_frame(code: &str, message: &str) -> Message {
    Message::Binary(Frame::Error(ErrorBody { code: code.into(), message: message.into() }).encode())
}

/// WebSocket exec (with or without a pty): the first message must be a
/// Start frame.
pub async fn exec_ws(Caller(s): Caller, Id(id): Id, ws: WebSocketUpgrade) -> ApiResult<Response> {
    // Fail before the upgrade when the sandbox does not exist, is not
    // running, or its agent cannot be reached.
    s.ready(&id).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        let start = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => break Frame::decode(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return,
            }
        };
        let Ok(Frame::Start(req)) = start else {
            let _ = sink.send(raw_error_frame("invalid_argument", "the first message must be a Start frame")).await;
            let _ = sink.close().await;
            return;
        };
        match s.exec(&id, ExecRequest::from(req), true).await {
            Ok(session) => pump(session, sink, stream).await,
            Err(e) => {
                let _ = sink.send(error_frame(&e)).await;
                let _ = sink.close().await;
            }
        }
    }))
}

/// Re-attach to a process over a WebSocket (buffered output is replayed).
pub async fn attach_ws(Caller(s): Caller, Id(id): Id, p: Segments, ws: WebSocketUpgrade) -> ApiResult<Response> {
    let pid: u32 = number(&p, "pid", |v| format!("pid '{v}' is not a number"))?;
    // Fails before the upgrade when the process does not exist.
    let session = s.attach(&id, pid).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let (sink, stream) = socket.split();
        pump(session, sink, stream).await;
    }))
}

/// Join a WebSocket to a process's streams, frames both ways.
async fn pump(
    session: ExecSession,
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut stream: futures::stream::SplitStream<WebSocket>,
) {
    let ExecSession { input, mut output } = session;
    // Client → process. When the client goes away (close or error), the
    // whole exchange ends: dropping the input resets the agent stream, and
    // the agent kills a foreground process whose client is gone.
    let inbound = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => {
                    if let Ok(f @ (Frame::Stdin(_) | Frame::StdinClose | Frame::Signal(_) | Frame::Resize(_))) =
                        Frame::decode(b)
                    {
                        if input.send(f).await.is_err() {
                            break;
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // Process → client, until it exits.
    let outbound = async {
        while let Some(f) = output.next().await {
            let Ok(f) = f else { break };
            let end = matches!(f, Frame::Exit(_) | Frame::Error(_));
            if sink.send(Message::Binary(f.encode())).await.is_err() {
                return false;
            }
            if end {
                return true;
            }
        }
        let _ = sink.send(raw_error_frame("agent_error", NO_EXIT)).await;
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
