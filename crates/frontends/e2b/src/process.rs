//! `process.Process`: E2B's commands and pty API over Spinup's exec.
//! Every command runs in the background in Spinup's sense (it outlives
//! its stream, so `commands.connect(pid)` can re-attach), and E2B's
//! `timeout` (the call's Connect deadline) kills it, as E2B's envd does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use http::HeaderMap;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use spinup_api::{ExecRequest, ExecSession, SandboxId};
use spinup_protocol::{ExitStatus, Frame, PtySize, SignalRequest};
use tokio::sync::mpsc;

use crate::connect::{self, ConnectError, Envelopes, Events};
use crate::{App, Target};

type St = State<Arc<App>>;
type Ext = Extension<Target>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// ProtoJSON integers may come as numbers or strings.
pub fn int<'de, D: Deserializer<'de>, T: std::str::FromStr + TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("bad integer")),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| serde::de::Error::custom("bad integer")),
        Some(_) => Err(serde::de::Error::custom("expected an integer")),
    }
}

/// ProtoJSON bytes: standard base64 (padding optional).
pub fn bytes_of(b64: &str) -> Result<Bytes, ConnectError> {
    let t = b64.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
        .map(Bytes::from)
        .map_err(|_| ConnectError::invalid("bytes field is not base64"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(default)]
struct Size {
    #[serde(deserialize_with = "int")]
    cols: Option<u16>,
    #[serde(deserialize_with = "int")]
    rows: Option<u16>,
}

impl Size {
    fn pty(self) -> PtySize {
        PtySize { cols: self.cols.unwrap_or(80).max(1), rows: self.rows.unwrap_or(24).max(1) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    #[serde(deserialize_with = "int")]
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selected {
    process: Selector,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

impl Input {
    fn data(&self) -> Result<Bytes, ConnectError> {
        match (&self.stdin, &self.pty) {
            (Some(b), _) | (None, Some(b)) => bytes_of(b),
            (None, None) => Ok(Bytes::new()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Selector,
    input: Input,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Selector,
    signal: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Selector,
    pty: Option<Pty>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputRequest {
    start: Option<Selected>,
    data: Option<StreamData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamData {
    input: Input,
}

/// What the front end remembers of the commands it started: tags (E2B
/// names some processes) and the live input of each pty's Start stream (its
/// resize and input go there). Both are in memory, as in E2B's envd.
#[derive(Default)]
pub struct Processes {
    tags: Mutex<HashMap<(String, String), u32>>,
    inputs: Mutex<HashMap<(String, u32), mpsc::Sender<Frame>>>,
}

impl Processes {
    fn pid(&self, id: &SandboxId, s: &Selector) -> Result<u32, ConnectError> {
        if let Some(pid) = s.pid {
            return Ok(pid);
        }
        let tag = s.tag.as_deref().ok_or_else(|| ConnectError::invalid("process selector needs a pid or a tag"))?;
        self.tags
            .lock()
            .expect("tags lock")
            .get(&(id.to_string(), tag.to_string()))
            .copied()
            .ok_or_else(|| ConnectError::new("not_found", format!("process with tag {tag} not found")))
    }

    /// Forget what was kept of a sandbox that is gone.
    pub fn drop_sandbox(&self, id: &str) {
        self.tags.lock().expect("tags lock").retain(|(sb, _), _| sb != id);
        self.inputs.lock().expect("inputs lock").retain(|(sb, _), _| sb != id);
    }

    fn tag_of(&self, id: &SandboxId, pid: u32) -> Option<String> {
        let tags = self.tags.lock().expect("tags lock");
        tags.iter().find(|((sb, _), p)| sb == id.as_str() && **p == pid).map(|((_, t), _)| t.clone())
    }
}

/// The user a call runs as: `Authorization: Basic base64("<user>:")`.
pub fn user_of(h: &HeaderMap) -> Option<String> {
    let v = h.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let raw = B64.decode(v.strip_prefix("Basic ")?.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let user = s.split_once(':').map_or(s.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_string())
}

/// The home of a user, by E2B's convention.
pub fn home_of(user: &str) -> String {
    if user == "root" || user == "0" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

fn event(e: Value) -> Bytes {
    connect::message(&json!({"event": e}))
}

fn signal_name(sig: i32) -> String {
    match sig {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        1 => "hangup".into(),
        _ => format!("{sig}"),
    }
}

/// Spinup's exit as E2B's `end` event (Go's wording: a signalled process
/// has exit code -1 and status `signal: killed`).
fn end_event(e: &ExitStatus) -> Bytes {
    let (code, exited, status) = match e.signal {
        Some(s) => (-1, false, format!("signal: {}", signal_name(s))),
        None => (e.exit_code, true, format!("exit status {}", e.exit_code)),
    };
    let mut end = json!({"exited": exited, "status": status});
    if code != 0 {
        end["exitCode"] = json!(code);
    }
    if let Some(m) = &e.message {
        end["error"] = json!(m);
    }
    event(json!({"end": end}))
}

/// A process's frames as E2B events. `start` always comes first (the SDK
/// requires it); for a re-attach it is made from the pid asked for.
fn events(app: Arc<App>, id: SandboxId, s: ExecSession, pty: bool, attached: Option<u32>, register: bool) -> Events {
    struct State {
        app: Arc<App>,
        id: SandboxId,
        input: Option<mpsc::Sender<Frame>>,
        output: futures::stream::BoxStream<'static, Result<Frame, String>>,
        pid: Option<u32>,
        pending: Option<Bytes>,
        register: bool,
        done: bool,
    }
    impl Drop for State {
        fn drop(&mut self) {
            if let (true, Some(pid)) = (self.register, self.pid) {
                self.app.processes.inputs.lock().expect("inputs lock").remove(&(self.id.to_string(), pid));
            }
        }
    }
    let st = State {
        pending: attached.map(|pid| event(json!({"start": {"pid": pid}}))),
        pid: attached,
        app,
        id,
        input: Some(s.input),
        output: s.output,
        register,
        done: false,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if let Some(p) = st.pending.take() {
            return Some((Ok(p), st));
        }
        loop {
            if st.done {
                return None;
            }
            let item = match st.output.next().await {
                None => Err(ConnectError::new("unavailable", "the process stream ended before the process did")),
                Some(Err(e)) => {
                    Err(ConnectError::new("unavailable", format!("the connection to the sandbox broke: {e}")))
                }
                Some(Ok(f)) => match f {
                    Frame::Started(s) => {
                        if st.pid.is_some() {
                            continue;
                        }
                        st.pid = Some(s.pid);
                        // A pty's input stream is kept: its resizes and its
                        // stdin go down it, in the order they were sent.
                        if st.register && pty {
                            if let Some(i) = &st.input {
                                let key = (st.id.to_string(), s.pid);
                                st.app.processes.inputs.lock().expect("inputs lock").insert(key, i.clone());
                            }
                        }
                        Ok(event(json!({"start": {"pid": s.pid}})))
                    }
                    Frame::Stdout(b) if pty => Ok(event(json!({"data": {"pty": B64.encode(&b)}}))),
                    Frame::Stdout(b) => Ok(event(json!({"data": {"stdout": B64.encode(&b)}}))),
                    Frame::Stderr(b) => Ok(event(json!({"data": {"stderr": B64.encode(&b)}}))),
                    Frame::Exit(e) => {
                        st.done = true;
                        st.input = None;
                        if e.timed_out {
                            Err(ConnectError::new("deadline_exceeded", "the command's timeout expired; it was killed"))
                        } else {
                            return Some((Ok(end_event(&e)), st));
                        }
                    }
                    Frame::Error(e) => {
                        let code = match e.code.as_str() {
                            "not_found" => "not_found",
                            "invalid_argument" => "invalid_argument",
                            _ => "internal",
                        };
                        Err(ConnectError::new(code, e.message))
                    }
                    _ => continue,
                },
            };
            if item.is_err() {
                st.done = true;
            }
            return Some((item, st));
        }
    })
    .boxed()
}

use connect::stream_error as fail;

fn keepalive(h: &HeaderMap) -> Option<(std::time::Duration, Bytes)> {
    Some((connect::keepalive_every(h), event(json!({"keepalive": {}}))))
}

pub async fn start(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let req: StartRequest = match connect::first_message(&headers, body).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if req.process.cmd.is_empty() {
        return fail(ConnectError::invalid("process.cmd is empty"));
    }
    let user = user_of(&headers);
    let pty = req.pty.as_ref().map(|p| p.size.unwrap_or_default().pty());
    let mut argv = vec![req.process.cmd];
    argv.extend(req.process.args);
    let cwd = req.process.cwd.filter(|c| !c.is_empty()).or_else(|| user.as_deref().map(home_of));
    let exec = ExecRequest {
        argv,
        env: req.process.envs,
        cwd,
        user,
        timeout_ms: connect::timeout_ms(&headers),
        background: true,
        pty: pty.map(|p| spinup_api::exec::PtySize { cols: p.cols, rows: p.rows }),
        stdin: pty.is_some() || req.stdin.unwrap_or(true),
        ..Default::default()
    };
    let session = match app.svc.exec(&t.id, exec, true).await {
        Ok(s) => s,
        Err(e) => return fail(e.into()),
    };
    let tag = req.tag.filter(|t| !t.is_empty());
    let mut ev = events(app.clone(), t.id.clone(), session, pty.is_some(), None, true);
    if let Some(tag) = tag {
        // Learn the pid from the first event, then record the tag.
        let (app2, id2) = (app.clone(), t.id.clone());
        let first = ev.next().await;
        if let Some(Ok(b)) = &first {
            if let Some(pid) = pid_in(b) {
                app2.processes.tags.lock().expect("tags lock").insert((id2.to_string(), tag), pid);
            }
        }
        ev = futures::stream::iter(first).chain(ev).boxed();
    }
    connect::streaming(ev, keepalive(&headers))
}

fn pid_in(envelope: &Bytes) -> Option<u32> {
    let v: Value = serde_json::from_slice(envelope.get(5..)?).ok()?;
    v["event"]["start"]["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

pub async fn connect(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let req: Selected = match connect::first_message(&headers, body).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let pid = match app.processes.pid(&t.id, &req.process) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let procs = match app.svc.processes(&t.id).await {
        Ok(p) => p,
        Err(e) => return fail(e.into()),
    };
    let Some(info) = procs.iter().find(|p| p.pid == pid && p.running) else {
        return fail(ConnectError::new("not_found", format!("process with pid {pid} not found")));
    };
    let pty = info.pty;
    match app.svc.attach(&t.id, pid).await {
        Ok(s) => connect::streaming(events(app.clone(), t.id, s, pty, Some(pid), false), keepalive(&headers)),
        Err(e) => fail(e.into()),
    }
}

pub async fn list(State(app): St, Extension(t): Ext) -> Response {
    let r = async {
        let procs = app.svc.processes(&t.id).await?;
        let list: Vec<Value> = procs
            .into_iter()
            .filter(|p| p.running)
            .map(|p| {
                let mut v = json!({
                    "pid": p.pid,
                    "config": {
                        "cmd": p.argv.first().cloned().unwrap_or_default(),
                        "args": p.argv.get(1..).unwrap_or_default(),
                        "envs": {},
                    },
                });
                if let Some(tag) = app.processes.tag_of(&t.id, p.pid) {
                    v["tag"] = json!(tag);
                }
                v
            })
            .collect();
        Ok::<_, spinup_api::Error>(json!({"processes": list}))
    };
    connect::unary(r.await.map_err(ConnectError::from))
}

/// A process that exists and still runs (E2B answers `not_found` for an
/// ended one).
async fn running(app: &App, id: &SandboxId, s: &Selector) -> Result<u32, ConnectError> {
    let pid = app.processes.pid(id, s)?;
    let procs = app.svc.processes(id).await?;
    if procs.iter().any(|p| p.pid == pid && p.running) {
        Ok(pid)
    } else {
        Err(ConnectError::new("not_found", format!("process with pid {pid} not found")))
    }
}

pub async fn send_signal(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: SendSignalRequest = connect::unary_request(&headers, body).await?;
        let signal = match &req.signal {
            Value::String(s) if s == "SIGNAL_SIGKILL" => 9,
            Value::String(s) if s == "SIGNAL_SIGTERM" => 15,
            Value::Number(n) if matches!(n.as_u64(), Some(9) | Some(15)) => n.as_u64().unwrap_or(9) as i32,
            other => return Err(ConnectError::invalid(format!("unknown signal {other}"))),
        };
        let pid = running(&app, &t.id, &req.process).await?;
        match app.svc.signal(&t.id, pid, SignalRequest { signal }).await {
            Ok(_) => Ok(json!({})),
            // It ended between the check and the signal: as E2B answers
            // for a process that is gone.
            Err(e) if e.code() == "conflict" => Err(ConnectError::new("not_found", e.to_string())),
            Err(e) => Err(e.into()),
        }
    };
    connect::unary(r.await)
}

async fn feed(app: &App, id: &SandboxId, pid: u32, data: Bytes, close: bool) -> Result<(), ConnectError> {
    // A pty's input goes down its Start stream, behind any resize sent
    // before it (`stty size` after a resize sees the new size).
    let live = app.processes.inputs.lock().expect("inputs lock").get(&(id.to_string(), pid)).cloned();
    if let Some(tx) = live {
        let frame = if close { Frame::StdinClose } else { Frame::Stdin(data.clone()) };
        if tx.send(frame).await.is_ok() {
            return Ok(());
        }
    }
    let body = futures::stream::once(async move { Ok(data) }).boxed();
    let out = app.svc.stdin(id, pid, if close { "close=true".into() } else { String::new() }, body).await?;
    if out.status >= 300 {
        let body: Vec<Bytes> = out.body.filter_map(|r| async { r.ok() }).collect().await;
        let msg = serde_json::from_slice::<Value>(&body.concat())
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or_else(|| format!("stdin of process {pid}: status {}", out.status));
        let code = if out.status == 404 { "not_found" } else { "failed_precondition" };
        return Err(ConnectError::new(code, msg));
    }
    Ok(())
}

pub async fn send_input(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: SendInputRequest = connect::unary_request(&headers, body).await?;
        let pid = running(&app, &t.id, &req.process).await?;
        feed(&app, &t.id, pid, req.input.data()?, false).await?;
        Ok(json!({}))
    };
    connect::unary(r.await)
}

pub async fn close_stdin(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: Selected = connect::unary_request(&headers, body).await?;
        let pid = running(&app, &t.id, &req.process).await?;
        feed(&app, &t.id, pid, Bytes::new(), true).await?;
        Ok(json!({}))
    };
    connect::unary(r.await)
}

/// A pty's new size: through the live Start stream that owns the pty, or
/// (when that is gone) a short re-attach.
pub async fn update(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let req: UpdateRequest = connect::unary_request(&headers, body).await?;
        let pid = running(&app, &t.id, &req.process).await?;
        let Some(size) = req.pty.and_then(|p| p.size) else { return Ok(json!({})) };
        let frame = Frame::Resize(size.pty());
        let live = app.processes.inputs.lock().expect("inputs lock").get(&(t.id.to_string(), pid)).cloned();
        match live {
            Some(tx) if tx.send(frame.clone()).await.is_ok() => {}
            _ => {
                let s = app.svc.attach(&t.id, pid).await?;
                let _ = s.input.send(frame).await;
                // Let the agent read the frame before the stream closes.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(json!({}))
    };
    connect::unary(r.await)
}

/// Client streaming: `start` names the process, then `data` messages are
/// its input; the answer comes when the request body ends.
pub async fn stream_input(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/connect+json") {
            return Err(ConnectError::new("unimplemented", "streaming calls take application/connect+json"));
        }
        let mut env = Envelopes::new(body.into_data_stream());
        let mut pid = None;
        while let Some(m) = env.next::<StreamInputRequest>().await {
            let m = m?;
            if let Some(s) = m.start {
                pid = Some(running(&app, &t.id, &s.process).await?);
            }
            if let Some(d) = m.data {
                let pid = pid.ok_or_else(|| ConnectError::invalid("data before start"))?;
                feed(&app, &t.id, pid, d.input.data()?, false).await?;
            }
        }
        Ok(connect::message(&json!({})))
    };
    let first = r.await;
    connect::streaming(futures::stream::once(async move { first }).boxed(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_from_basic_auth() {
        let mut h = HeaderMap::new();
        assert_eq!(user_of(&h), None);
        h.insert(http::header::AUTHORIZATION, "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(user_of(&h).as_deref(), Some("root"));
        h.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(user_of(&h), None);
        assert_eq!(home_of("root"), "/root");
        assert_eq!(home_of("user"), "/home/user");
    }

    #[test]
    fn protojson_inputs_decode() {
        let s: Selected = serde_json::from_value(json!({"process": {"pid": "42"}})).unwrap();
        assert_eq!(s.process.pid, Some(42));
        let s: Selected = serde_json::from_value(json!({"process": {"pid": 7}})).unwrap();
        assert_eq!(s.process.pid, Some(7));
        assert!(serde_json::from_value::<Selected>(json!({"process": {"pid": -1}})).is_err());
        assert_eq!(bytes_of("aGkK").unwrap(), Bytes::from_static(b"hi\n"));
        assert_eq!(bytes_of("aGk=").unwrap(), Bytes::from_static(b"hi"));
        assert!(bytes_of("!!!").is_err());
    }

    #[test]
    fn exits_read_like_go() {
        let v = |b: Bytes| serde_json::from_slice::<Value>(&b[5..]).unwrap();
        let ok = v(end_event(&ExitStatus::default()));
        assert_eq!(ok, json!({"event": {"end": {"exited": true, "status": "exit status 0"}}}));
        let three = v(end_event(&ExitStatus { exit_code: 3, ..Default::default() }));
        assert_eq!(three["event"]["end"]["exitCode"], 3);
        let killed = v(end_event(&ExitStatus { exit_code: 137, signal: Some(9), ..Default::default() }));
        assert_eq!(killed["event"]["end"], json!({"exitCode": -1, "exited": false, "status": "signal: killed"}));
    }
}
