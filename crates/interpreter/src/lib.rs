//! The code interpreter, host side.
//!
//! The kernels live in the sandbox, never on the host. The sandbox's own
//! `python3` runs `guest/interpreter.py` (embedded here, fed on stdin, so
//! nothing is written into the guest's files): an HTTP server on
//! 127.0.0.1:49999 *inside* the sandbox that keeps one kernel per context
//! (an IPython kernel through jupyter_client, a node `vm` context, a bash)
//! and answers `/execute` and `/contexts` with NDJSON events.
//!
//! This side starts it on the first call (as the environment's user, under
//! the sandbox's limits, like any exec) and talks to it through the
//! agent's tunnel, so it works on every driver and whatever the network
//! policy. Nothing is kept here: a daemon restart finds the server where
//! it was; a fork or a restored snapshot has the files but no kernel, and
//! its first call starts one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use spinup_api::code::check_context_id;
use spinup_api::{
    CodeContext, CodeEvent, CodeRequest, ContextRequest, Error, ExecRequest, Result, SandboxId, SandboxService, Tunnel,
    TunnelIo,
};
use spinup_protocol::Frame;

/// The interpreter's port inside the sandbox (E2B's, too).
pub const PORT: u16 = 49999;
/// The guest server, run by the sandbox's python3.
const SERVER: &str = include_str!("../guest/interpreter.py");
/// Reads the server from stdin and runs it.
const BOOT: &str = "import sys; exec(compile(sys.stdin.read(), 'spinup-interpreter', 'exec'))";
/// How long a starting server may take to answer (python3 importing its
/// modules takes a while under an emulated CPU).
const START_WAIT: Duration = Duration::from_secs(120);
/// One event line: the guest bounds a run's output at 8 MiB.
const MAX_LINE: usize = 16 << 20;
/// How long past its own timeout a run may go before this side gives up
/// on the guest (which interrupts the kernel at the timeout itself).
const GRACE: Duration = Duration::from_secs(30);

/// Starts and reaches each sandbox's interpreter.
#[derive(Debug, Default)]
pub struct Interpreter {
    /// One start at a time per sandbox.
    starting: Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Interpreter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run code: the guest's events as they come, `end` always last (one
    /// is made here if the guest goes away without it).
    pub async fn run(
        &self,
        svc: &dyn SandboxService,
        id: &SandboxId,
        mut req: CodeRequest,
    ) -> Result<BoxStream<'static, CodeEvent>> {
        req.check()?;
        let timeout_s = req.timeout_s.unwrap_or(spinup_api::code::DEFAULT_CODE_TIMEOUT_S);
        let body = json!({
            "code": &req.code,
            "language": req.language.map(|l| l.as_str()),
            "context_id": &req.context,
            "env_vars": &req.env,
            "timeout_ms": timeout_s * 1000,
        });
        let resp =
            self.call(svc, id, Method::POST, "/execute", Some(body)).await.map_err(|e| match (e, &req.context) {
                (Error::Guest { status: 404, .. }, Some(ctx)) => Error::not_found("code context", ctx),
                (e, _) => e,
            })?;
        Ok(events(resp.into_body().into_data_stream(), Duration::from_secs(timeout_s) + GRACE))
    }

    pub async fn contexts(&self, svc: &dyn SandboxService, id: &SandboxId) -> Result<Vec<CodeContext>> {
        self.json(svc, id, Method::GET, "/contexts", None).await
    }

    pub async fn create_context(
        &self,
        svc: &dyn SandboxService,
        id: &SandboxId,
        req: ContextRequest,
    ) -> Result<CodeContext> {
        if let Some(cwd) = &req.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(Error::InvalidArgument(format!("cwd must be an absolute path, not {cwd:?}")));
            }
        }
        let body = json!({"language": req.language.map(|l| l.as_str()), "cwd": req.cwd});
        self.json(svc, id, Method::POST, "/contexts", Some(body)).await
    }

    pub async fn restart_context(&self, svc: &dyn SandboxService, id: &SandboxId, ctx: &str) -> Result<CodeContext> {
        check_context_id(ctx)?;
        self.json(svc, id, Method::POST, &format!("/contexts/{ctx}/restart"), None).await
    }

    pub async fn remove_context(&self, svc: &dyn SandboxService, id: &SandboxId, ctx: &str) -> Result<()> {
        check_context_id(ctx)?;
        self.call(svc, id, Method::DELETE, &format!("/contexts/{ctx}"), None).await?;
        Ok(())
    }

    async fn json<T: DeserializeOwned>(
        &self,
        svc: &dyn SandboxService,
        id: &SandboxId,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let resp = self.call(svc, id, method, path, body).await?;
        let bytes = read(resp.into_body()).await?;
        serde_json::from_slice(&bytes).map_err(|e| lost(format!("answered {path} with bad JSON: {e}")))
    }

    /// One request to the guest server; a non-2xx answer is its error.
    async fn call(
        &self,
        svc: &dyn SandboxService,
        id: &SandboxId,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<http::Response<Incoming>> {
        let tunnel = self.connect(svc, id).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(TunnelIo::new(tunnel))).await.map_err(lost)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a request from parts that are valid");
        let resp = send.send_request(req).await.map_err(lost)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = read(resp.into_body()).await.unwrap_or_default();
        Err(guest_error(status, &bytes, path))
    }

    /// A tunnel to the server, starting it when nothing listens yet.
    async fn connect(&self, svc: &dyn SandboxService, id: &SandboxId) -> Result<Tunnel> {
        match svc.tunnel(id, PORT).await {
            Err(e) if refused(&e) => {}
            other => return other,
        }
        let lock = self.starting.lock().expect("not poisoned").entry(id.clone()).or_default().clone();
        let _one = lock.lock().await;
        // Another caller may have started it while this one waited.
        match svc.tunnel(id, PORT).await {
            Err(e) if refused(&e) => {}
            other => return other,
        }
        let out = self.start(svc, id).await;
        self.starting.lock().expect("not poisoned").remove(id);
        out
    }

    async fn start(&self, svc: &dyn SandboxService, id: &SandboxId) -> Result<Tunnel> {
        tracing::info!(sandbox = %id, "starting the code interpreter");
        let req = ExecRequest {
            argv: vec!["python3".into(), "-c".into(), BOOT.into(), "--port".into(), PORT.to_string()],
            env: [("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            background: true,
            input: Some(SERVER.into()),
            ..Default::default()
        };
        let mut session = svc.exec(id, req, false).await?;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        let mut stderr = Vec::new();
        let mut exited = None;
        loop {
            match svc.tunnel(id, PORT).await {
                Err(e) if refused(&e) => {}
                other => return other,
            }
            // The sandbox's own files lack what it takes: the caller can
            // pick another environment (409, like any wrong state).
            if let Some(why) = exited {
                return Err(Error::Conflict(why));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "the code interpreter did not answer within {} s of starting",
                    START_WAIT.as_secs()
                )));
            }
            // Watch the server's own stream meanwhile: a python3 that is
            // missing, or a server that fails, says so there.
            let step = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(step);
            loop {
                tokio::select! {
                    _ = &mut step => break,
                    f = session.output.next() => match f {
                        Some(Ok(Frame::Stderr(b))) => {
                            stderr.extend_from_slice(&b);
                            let cut = stderr.len().saturating_sub(4096);
                            stderr.drain(..cut);
                        }
                        Some(Ok(Frame::Exit(st))) => {
                            let said = String::from_utf8_lossy(&stderr).trim().to_string();
                            exited = Some(match st.message {
                                Some(m) => format!(
                                    "the code interpreter needs python3 in the sandbox (the code-interpreter \
                                     environment has it, with Jupyter, numpy, pandas and matplotlib): {m}"
                                ),
                                None => format!("the code interpreter exited (status {}) as it started: {said}", st.exit_code),
                            });
                            break;
                        }
                        Some(Ok(Frame::Error(e))) => {
                            exited = Some(format!("the code interpreter could not start: {}", e.message));
                            break;
                        }
                        Some(Ok(_)) => {}
                        // The stream is gone (the process runs on, in the
                        // background); keep polling the port.
                        Some(Err(_)) | None => {
                            (&mut step).await;
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Nothing listens on the port (yet).
fn refused(e: &Error) -> bool {
    matches!(e, Error::Guest { code, .. } if code == "connection_refused")
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::Agent(format!("the code interpreter in the sandbox: {e}"))
}

async fn read(body: Incoming) -> Result<Bytes> {
    Limited::new(body, MAX_LINE).collect().await.map(|c| c.to_bytes()).map_err(lost)
}

/// The guest server's `{code, message}` as the API's error.
fn guest_error(status: StatusCode, body: &[u8], path: &str) -> Error {
    let (code, message) = match serde_json::from_slice::<Value>(body) {
        Ok(v) => (
            v["code"].as_str().unwrap_or("internal").to_string(),
            v["message"].as_str().unwrap_or("no message").to_string(),
        ),
        Err(_) => ("internal".into(), String::from_utf8_lossy(body).into_owned()),
    };
    match status.as_u16() {
        400 | 413 => Error::InvalidArgument(message),
        404 => match path.strip_prefix("/contexts/").map(|p| p.split('/').next().unwrap_or(p)) {
            Some(ctx) => Error::not_found("code context", ctx),
            None => Error::Guest { status: 404, code, message },
        },
        // A language whose runtime this sandbox lacks.
        503 => Error::Conflict(message),
        s => Error::Guest { status: s, code, message },
    }
}

/// The run's NDJSON lines as events, ending with exactly one `end`.
fn events<S, E>(mut body: S, limit: Duration) -> BoxStream<'static, CodeEvent>
where
    S: futures::Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<CodeEvent>(64);
    tokio::spawn(async move {
        let gone = |why: String| {
            [
                CodeEvent::Error { name: "InterpreterLost".into(), value: why, traceback: String::new() },
                CodeEvent::End { execution_count: None, timed_out: false, truncated: false },
            ]
        };
        let mut buf = BytesMut::new();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let tail = 'read: loop {
            // Whole lines first.
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                let line = &line[..nl];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<CodeEvent>(line) {
                    Ok(e) => {
                        let end = matches!(e, CodeEvent::End { .. });
                        if tx.send(e).await.is_err() || end {
                            return;
                        }
                    }
                    Err(e) => break 'read gone(format!("it sent a line that is not an event: {e}")),
                }
                if tx.is_closed() {
                    return;
                }
            }
            if buf.len() > MAX_LINE {
                break 'read gone(format!("it sent a line over {MAX_LINE} bytes"));
            }
            tokio::select! {
                _ = &mut deadline => break 'read gone(format!(
                    "it did not finish within {} s of the run's timeout", GRACE.as_secs()
                )),
                _ = tx.closed() => return,
                chunk = body.next() => match chunk {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => break 'read gone(format!("its answer broke off: {e}")),
                    None => break 'read gone("it went away before the run ended (did its sandbox stop?)".into()),
                },
            }
        };
        for e in tail {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(chunks: Vec<std::result::Result<&'static str, &'static str>>) -> Vec<CodeEvent> {
        let body = futures::stream::iter(chunks.into_iter().map(|c| c.map(|s| Bytes::from_static(s.as_bytes()))));
        events(body, Duration::from_secs(5)).collect().await
    }

    fn end() -> CodeEvent {
        CodeEvent::End { execution_count: Some(1), timed_out: false, truncated: false }
    }

    #[tokio::test]
    async fn lines_split_anywhere_become_events_up_to_the_end() {
        let got = run(vec![
            Ok("{\"type\":\"stdout\",\"te"),
            Ok("xt\":\"hi\"}\n\n{\"type\":\"end\",\"execution_count\":1,"),
            Ok("\"timed_out\":false,\"truncated\":false}\n{\"type\":\"stdout\",\"text\":\"after\"}\n"),
        ])
        .await;
        assert_eq!(got, vec![CodeEvent::Stdout { text: "hi".into() }, end()]);
    }

    #[tokio::test]
    async fn a_guest_that_goes_away_or_talks_nonsense_still_ends_the_run() {
        for chunks in [vec![Ok("{\"type\":\"stdout\",\"text\":\"x\"}\n")], vec![Ok("not json\n")], vec![Err("reset")]] {
            let got = run(chunks.clone()).await;
            assert!(matches!(got.last(), Some(CodeEvent::End { execution_count: None, .. })), "{chunks:?}: {got:?}");
            assert!(
                got.iter().any(|e| matches!(e, CodeEvent::Error { name, .. } if name == "InterpreterLost")),
                "{chunks:?}: {got:?}"
            );
            assert_eq!(got.iter().filter(|e| matches!(e, CodeEvent::End { .. })).count(), 1);
        }
    }

    #[test]
    fn the_guests_errors_keep_their_meaning() {
        let e =
            guest_error(StatusCode::NOT_FOUND, br#"{"code":"not_found","message":"no"}"#, "/contexts/ctx-1/restart");
        assert_eq!(e.to_string(), "code context 'ctx-1' not found");
        let e = guest_error(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"code":"unavailable","message":"install node"}"#,
            "/execute",
        );
        assert_eq!((e.code(), e.to_string().contains("install node")), ("conflict", true));
        let e =
            guest_error(StatusCode::BAD_REQUEST, br#"{"code":"invalid_argument","message":"bad cwd"}"#, "/contexts");
        assert_eq!(e.code(), "invalid_argument");
        let e = guest_error(StatusCode::INTERNAL_SERVER_ERROR, b"oops", "/execute");
        assert_eq!(e.code(), "internal");
    }
}
