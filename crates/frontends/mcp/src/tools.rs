//! The tools: one typed argument struct each (its doc comments are the
//! schema's descriptions), one service call each.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spinup_api::{
    ByteStream, CodeEvent, CodeRequest, CreateRequest, DiffQuery, Error, ErrorBody, ExecRequest, ExecSession,
    ExposeRequest, FileOp, FileRequest, ForkRequest, Forwarded, Language, ListQuery, SandboxId, SandboxService,
    SnapshotRequest,
};
use spinup_protocol::Frame;

use crate::capture::Capture;

/// The most `read_file` returns.
pub const READ_LIMIT: u64 = 1 << 20;

const NO_EXIT: &str = "the process stream ended without an exit status (sandbox stopped?)";

type ToolResult = Result<CallToolResult, ErrorData>;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// The environment (root filesystem) to start from, e.g. `busybox` or
    /// `debian` (it must have been built or imported on the daemon).
    pub env: String,
    /// The isolation driver: `container` (the daemon's default), `gvisor`
    /// or `microvm`.
    pub driver: Option<String>,
    /// Destroy the sandbox this many seconds from now (default: the
    /// daemon's).
    pub timeout_s: Option<u64>,
    /// Labels to find it by later (`list_sandboxes` filters on them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxRef {
    /// The sandbox's id (12 hex digits, as `create_sandbox` returned it).
    pub id: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxes {
    /// Only sandboxes that carry every one of these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// The sandbox's id.
    pub id: String,
    /// A shell command line, run with `/bin/sh -c`. Give this or `argv`.
    pub cmd: Option<String>,
    /// A program and its arguments, run directly (no shell). Give this or
    /// `cmd`.
    pub argv: Option<Vec<String>>,
    /// Working directory (default: the environment's).
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User name or numeric uid[:gid] to run as (default: the
    /// environment's).
    pub user: Option<String>,
    /// Kill the command (its whole process group) after this many
    /// milliseconds; the answer then says `timed_out`.
    pub timeout_ms: Option<u64>,
    /// Text fed to the command's standard input, which is then closed.
    pub stdin: Option<String>,
    /// Start it and answer its `pid` at once, leaving it running (a server
    /// to reach through `expose_port`, say); its output is not returned.
    #[serde(default)]
    pub background: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCode {
    /// The sandbox's id.
    pub id: String,
    /// The code. Its last expression's value is the main result.
    pub code: String,
    /// `python` (default), `javascript` or `bash`.
    pub language: Option<String>,
    /// A context id (from the API's `/code/contexts`); default: the
    /// language's default context, whose variables and imports persist
    /// between calls.
    pub context: Option<String>,
    /// Interrupt the code after this many seconds (default 300); the
    /// context keeps its state.
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// The sandbox's id.
    pub id: String,
    /// Absolute path of a regular file inside the sandbox.
    pub path: String,
}

/// How `content` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Encoding {
    /// The text as it is.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// Standard base64 of the bytes (for binary files).
    #[serde(rename = "base64")]
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// The sandbox's id.
    pub id: String,
    /// Absolute path inside the sandbox; missing parent directories are
    /// made. An existing file is replaced whole.
    pub path: String,
    /// The file's new content.
    pub content: String,
    /// `utf-8` (default): `content` is the text; `base64`: it is the
    /// bytes, base64-encoded.
    #[serde(default)]
    pub encoding: Encoding,
    /// Permission bits, e.g. 493 (0o755) for an executable (default: the
    /// existing file's, else 0o644).
    pub mode: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// The sandbox's id.
    pub id: String,
    /// Absolute path of a directory inside the sandbox.
    pub path: String,
    /// How many levels to descend: 1 (default) lists the directory's own
    /// entries; at most 64.
    pub depth: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The sandbox's id.
    pub id: String,
    /// A name to refer to the snapshot by (unique on the daemon).
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// The sandbox's id.
    pub id: String,
    /// How many children to start (default 1).
    pub count: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffArgs {
    /// The sandbox's id.
    pub id: String,
    /// A snapshot (id or name) of this sandbox to compare against
    /// (default: the sandbox as it was created).
    pub since: Option<String>,
    /// Only this path and what is below it.
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePort {
    /// The sandbox's id.
    pub id: String,
    /// The TCP port a server inside the sandbox listens on (on any
    /// address, 127.0.0.1 included).
    pub port: u16,
    /// Reachable without the access token (default: the token is needed).
    #[serde(default)]
    pub public: bool,
}

/// The MCP server: the tools over one [`SandboxService`].
#[derive(Clone)]
pub struct Server {
    svc: Arc<dyn SandboxService>,
    tool_router: ToolRouter<Server>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

#[tool_router]
impl Server {
    pub fn new(svc: Arc<dyn SandboxService>) -> Server {
        Server { svc, tool_router: Self::tool_router() }
    }

    /// The same tools over another caller's service.
    pub fn with_service(&self, svc: Arc<dyn SandboxService>) -> Server {
        Server { svc, tool_router: self.tool_router.clone() }
    }

    #[tool(description = "Create a sandbox: a small Linux computer of its own (root filesystem, processes, \
        files, network) started from an environment. Answers the sandbox (its `id` is what every other tool \
        takes), running.")]
    async fn create_sandbox(&self, Parameters(p): Parameters<CreateSandbox>) -> ToolResult {
        let req = CreateRequest {
            env: Some(p.env),
            driver: p.driver,
            timeout_s: p.timeout_s,
            labels: p.labels,
            ..Default::default()
        };
        reply(self.svc.create(req).await)
    }

    #[tool(
        description = "Destroy a sandbox, running or not, with everything in it (its snapshots stay).",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    async fn remove_sandbox(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        reply(self.svc.remove(&id, true).await.map(|()| json!({"removed": id.as_str()})))
    }

    #[tool(
        description = "List the sandboxes (id, state, driver, environment, labels, timeout), optionally only \
            those with the given labels.",
        annotations(read_only_hint = true)
    )]
    async fn list_sandboxes(&self, Parameters(p): Parameters<ListSandboxes>) -> ToolResult {
        reply(self.svc.list(ListQuery { labels: p.labels }).await.map(|l| json!({"sandboxes": l})))
    }

    #[tool(description = "Run a command in a sandbox and wait for it to end. Answers `exit_code`, `stdout`, \
        `stderr` (UTF-8; each bounded to its first and last 32 KiB, with `stdout_truncated`/`stderr_truncated` \
        and the full byte counts when more was printed), `signal` and `timed_out`; with `background`, its \
        `pid` at once.")]
    async fn run_command(&self, Parameters(p): Parameters<RunCommand>) -> ToolResult {
        let argv = p.argv.unwrap_or_default();
        let cmd = p.cmd.filter(|c| !c.trim().is_empty());
        match (&cmd, argv.is_empty()) {
            (Some(_), false) => return Ok(invalid("give `cmd` (a shell command line) or `argv`, not both")),
            (None, true) => {
                return Ok(invalid("give `cmd` (a shell command line) or `argv` (a program and its arguments)"))
            }
            _ => {}
        }
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        let req = ExecRequest {
            argv,
            cmd,
            env: p.env,
            cwd: p.cwd,
            user: p.user,
            timeout_ms: p.timeout_ms,
            input: p.stdin,
            background: p.background,
            ..Default::default()
        };
        let ExecSession { input, mut output } = match self.svc.exec(&id, req, false).await {
            Ok(s) => s,
            Err(e) => return Ok(failure(&e)),
        };
        drop(input);
        let (mut out, mut err) = (Capture::default(), Capture::default());
        while let Some(f) = output.next().await {
            match f {
                Ok(Frame::Started(s)) if p.background => {
                    return Ok(CallToolResult::structured(json!({"pid": s.pid, "background": true})))
                }
                Ok(Frame::Stdout(b)) => out.push(&b),
                Ok(Frame::Stderr(b)) => err.push(&b),
                Ok(Frame::Exit(e)) => {
                    let mut v = json!({
                        "exit_code": e.exit_code,
                        "signal": e.signal,
                        "timed_out": e.timed_out,
                        "stdout": out.text(),
                        "stderr": err.text(),
                    });
                    if let Some(m) = e.message {
                        v["message"] = m.into();
                    }
                    for (name, c) in [("stdout", &out), ("stderr", &err)] {
                        if c.truncated() {
                            v[format!("{name}_truncated")] = true.into();
                            v[format!("{name}_bytes")] = c.total().into();
                        }
                    }
                    return Ok(CallToolResult::structured(v));
                }
                Ok(Frame::Error(e)) => {
                    return Ok(failure(&Error::Guest { status: 400, code: e.code, message: e.message }))
                }
                Ok(_) => {}
                Err(e) => return Ok(failure(&Error::Agent(e))),
            }
        }
        Ok(failure(&Error::Agent(NO_EXIT.into())))
    }

    #[tool(description = "Run code in a sandbox's persistent kernel (python: IPython; javascript: node; \
        bash), like a notebook cell: variables and imports survive between calls. Answers `stdout`, `stderr`, \
        `results` (the last expression's value and displayed outputs, as MIME bundles; charts come back as \
        image content), `error` (name, value, traceback) or null, `execution_count`, `timed_out` and \
        `truncated`. The sandbox needs python3 with Jupyter: the `code-interpreter` environment.")]
    async fn run_code(&self, Parameters(p): Parameters<RunCode>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        let language = match p.language.as_deref().map(Language::parse).transpose() {
            Ok(l) => l,
            Err(e) => return Ok(failure(&e)),
        };
        let req =
            CodeRequest { code: p.code, language, context: p.context, timeout_s: p.timeout_s, ..Default::default() };
        let mut events = match self.svc.run_code(&id, req).await {
            Ok(s) => s,
            Err(e) => return Ok(failure(&e)),
        };
        let (mut stdout, mut stderr) = (Capture::default(), Capture::default());
        let (mut results, mut images) = (Vec::new(), Vec::new());
        let mut out = json!({"error": null, "execution_count": null, "timed_out": false, "truncated": false});
        while let Some(e) = events.next().await {
            match e {
                CodeEvent::Stdout { text } => stdout.push(text.as_bytes()),
                CodeEvent::Stderr { text } => stderr.push(text.as_bytes()),
                CodeEvent::Result { is_main_result, mut data } => {
                    // Pictures go as image content, not as base64 text in
                    // the JSON.
                    for mime in ["image/png", "image/jpeg"] {
                        if let Some(Value::String(b64)) = data.remove(mime) {
                            images.push(ContentBlock::image(b64, mime));
                            data.insert(mime.into(), json!(format!("(image content {})", images.len())));
                        }
                    }
                    results.push(json!({"is_main_result": is_main_result, "data": data}));
                }
                CodeEvent::Error { name, value, traceback } => {
                    out["error"] = json!({"name": name, "value": value, "traceback": traceback});
                }
                CodeEvent::End { execution_count, timed_out, truncated } => {
                    out["execution_count"] = json!(execution_count);
                    out["timed_out"] = json!(timed_out);
                    out["truncated"] = json!(truncated);
                }
            }
        }
        out["stdout"] = json!(stdout.text());
        out["stderr"] = json!(stderr.text());
        out["results"] = json!(results);
        let mut r = CallToolResult::structured(out);
        r.content.extend(images);
        Ok(r)
    }

    #[tool(
        description = "Read a file from a sandbox (at most 1 MiB). Answers `content`: the text when the file \
            is UTF-8 (`encoding: utf-8`), else its bytes in base64 (`encoding: base64`); and `size`.",
        annotations(read_only_hint = true)
    )]
    async fn read_file(&self, Parameters(p): Parameters<ReadFile>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        let f = match self.file(&id, FileOp::Read, &[("path", &p.path)], empty()).await {
            Ok(f) => f,
            Err(e) => return Ok(failure(&e)),
        };
        let too_big = |n: u64| {
            Error::InvalidArgument(format!(
                "{} is {n} bytes; read_file returns at most {READ_LIMIT}: read part of it with run_command \
                 (head -c, tail -c, sed -n)",
                p.path
            ))
        };
        if let Some(n) = f.content_length.filter(|n| *n > READ_LIMIT) {
            return Ok(failure(&too_big(n)));
        }
        let bytes = match collect(f.body, READ_LIMIT).await {
            Ok(b) => b,
            Err(None) => return Ok(failure(&too_big(READ_LIMIT + 1))),
            Err(Some(e)) => return Ok(failure(&e)),
        };
        let size = bytes.len();
        let (encoding, content) = match String::from_utf8(bytes) {
            Ok(s) => ("utf-8", s),
            Err(e) => ("base64", base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
        };
        Ok(CallToolResult::structured(json!({"path": p.path, "size": size, "encoding": encoding, "content": content})))
    }

    #[tool(description = "Write a file in a sandbox (made with its parent directories, or replaced whole). \
        Answers the file's stat (path, size, mode, owner).")]
    async fn write_file(&self, Parameters(p): Parameters<WriteFile>) -> ToolResult {
        let data = match p.encoding {
            Encoding::Utf8 => Bytes::from(p.content),
            Encoding::Base64 => match base64::engine::general_purpose::STANDARD.decode(p.content.trim()) {
                Ok(b) => Bytes::from(b),
                Err(e) => return Ok(invalid(&format!("`content` is not valid base64: {e}"))),
            },
        };
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        let mode = p.mode.map(|m| m.to_string());
        let mut q = vec![("path", p.path.as_str())];
        if let Some(m) = &mode {
            q.push(("mode", m));
        }
        let body = futures::stream::once(async move { Ok(data) }).boxed();
        reply(self.json(&id, FileOp::Write, &q, body).await)
    }

    #[tool(
        description = "List a directory in a sandbox: one entry per file (path, name, kind, size, mode, \
            owner, mtime), descending `depth` levels.",
        annotations(read_only_hint = true)
    )]
    async fn list_files(&self, Parameters(p): Parameters<ListFiles>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        let depth = p.depth.map(|d| d.to_string());
        let mut q = vec![("path", p.path.as_str())];
        if let Some(d) = &depth {
            q.push(("depth", d));
        }
        reply(self.json(&id, FileOp::List, &q, empty()).await.map(|l| json!({"path": p.path, "entries": l})))
    }

    #[tool(description = "Snapshot a sandbox's filesystem changes (it keeps running). Answers the snapshot; \
        its `id` or `name` is what `diff` takes as `since`, and a new sandbox can start from it.")]
    async fn snapshot(&self, Parameters(p): Parameters<Snapshot>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        reply(self.svc.snapshot(&id, SnapshotRequest { name: p.name, ..Default::default() }).await)
    }

    #[tool(description = "Fork a sandbox: snapshot its filesystem and start `count` new sandboxes from it, \
        each with its own id and hostname. Answers the snapshot and the children.")]
    async fn fork(&self, Parameters(p): Parameters<Fork>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        reply(self.svc.fork(&id, ForkRequest { count: p.count, driver: None }).await)
    }

    #[tool(
        description = "The paths added, modified and deleted in a sandbox's filesystem since it was created \
            (or since a snapshot of it), with their type and size.",
        annotations(read_only_hint = true)
    )]
    async fn diff(&self, Parameters(p): Parameters<DiffArgs>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        reply(self.svc.diff(&id, DiffQuery { since: p.since, path: p.path, content: false }).await)
    }

    #[tool(description = "Expose a TCP port of a sandbox on the daemon's host (loopback). Answers its `url` \
        and, unless `public`, the `token` a client must send as the X-Spinup-Token header or the \
        ?spinup_token= query parameter.")]
    async fn expose_port(&self, Parameters(p): Parameters<ExposePort>) -> ToolResult {
        let id = match sandbox(&p.id) {
            Ok(id) => id,
            Err(e) => return Ok(failure(&e)),
        };
        reply(self.svc.expose(&id, ExposeRequest { port: p.port, public: p.public, ..Default::default() }).await)
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "spinup",
    instructions = "Spinup sandboxes: create_sandbox gives you a Linux computer of your own; run commands and code and \
        move files in it by its id, snapshot, fork and diff its filesystem, expose its ports. Remove it when done."
)]
impl ServerHandler for Server {
    /// The router's call; arguments that do not fit a tool's schema (which
    /// rmcp answers as a tool error, per MCP's SEP-1303) get the shape of
    /// every other tool error: `invalid_argument: …`.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tcc = ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await? {
            CallToolResponse::Complete(r) if r.is_error == Some(true) && r.structured_content.is_none() => {
                let text = r.content.first().and_then(|c| c.as_text()).map(|t| t.text.clone()).unwrap_or_default();
                Ok(invalid(&text).into())
            }
            other => Ok(other),
        }
    }
}

impl Server {
    async fn file(&self, id: &SandboxId, op: FileOp, q: &[(&str, &str)], body: ByteStream) -> Result<Forwarded, Error> {
        let f = self.svc.files(id, FileRequest { op, query: query(q), body }).await?;
        if f.status < 300 {
            return Ok(f);
        }
        // The agent's `{code, message}`.
        let status = f.status;
        let b = collect(f.body, 1 << 20).await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        Err(Error::Guest {
            status,
            code: v["code"].as_str().unwrap_or("agent_error").to_string(),
            message: v["message"].as_str().map(String::from).unwrap_or_else(|| String::from_utf8_lossy(&b).into()),
        })
    }

    /// A file operation whose answer is JSON.
    async fn json(&self, id: &SandboxId, op: FileOp, q: &[(&str, &str)], body: ByteStream) -> Result<Value, Error> {
        let f = self.file(id, op, q, body).await?;
        let b = collect(f.body, 64 << 20)
            .await
            .map_err(|e| e.unwrap_or_else(|| Error::Agent("the agent's answer is larger than 64 MiB".into())))?;
        serde_json::from_slice(&b).map_err(|e| Error::Agent(format!("the agent's answer is not JSON: {e}")))
    }
}

fn sandbox(id: &str) -> Result<SandboxId, Error> {
    SandboxId::parse(id)
}

/// Arguments the schema lets through but the tool cannot take.
fn invalid(message: &str) -> CallToolResult {
    failure(&Error::InvalidArgument(message.to_string()))
}

/// A service answer as the tool's result. It is a JSON object (MCP
/// before 2026-07 allows no other structured content).
fn reply<T: Serialize>(r: Result<T, Error>) -> ToolResult {
    match r {
        Ok(v) => {
            let v = serde_json::to_value(&v)
                .map_err(|e| ErrorData::internal_error(format!("encoding the answer: {e}"), None))?;
            debug_assert!(v.is_object(), "a tool's answer is an object: {v}");
            Ok(CallToolResult::structured(v))
        }
        Err(e) => Ok(failure(&e)),
    }
}

/// An error of the service as a tool error: `code: message`, and the
/// `/v1` error body as structured content.
fn failure(e: &Error) -> CallToolResult {
    let body = ErrorBody::from(e);
    // `invalid_argument: invalid argument: …` says it twice.
    let said = format!("{}: ", body.code.replace('_', " "));
    let message = body.message.strip_prefix(&said).unwrap_or(&body.message);
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!("{}: {message}", body.code))]);
    r.structured_content = serde_json::to_value(&body).ok();
    r
}

fn query(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encoding of a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn empty() -> ByteStream {
    futures::stream::empty().boxed()
}

/// A body, whole; `Err(None)` past `limit` bytes.
async fn collect(mut body: ByteStream, limit: u64) -> Result<Vec<u8>, Option<Error>> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Some(Error::Agent(format!("reading the agent's answer: {e}"))))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_description_and_a_typed_schema() {
        let tools = Server::tool_router().list_all();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "create_sandbox",
                "diff",
                "expose_port",
                "fork",
                "list_files",
                "list_sandboxes",
                "read_file",
                "remove_sandbox",
                "run_code",
                "run_command",
                "snapshot",
                "write_file"
            ]
        );
        for t in &tools {
            assert!(t.description.as_deref().is_some_and(|d| d.len() > 30), "{}", t.name);
            let schema = Value::Object((*t.input_schema).clone());
            assert_eq!(schema["type"], "object", "{}: {schema}", t.name);
            let required: Vec<&str> =
                schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            match t.name.as_ref() {
                "create_sandbox" => assert_eq!(required, ["env"]),
                "list_sandboxes" => assert!(required.is_empty()),
                "write_file" => assert_eq!(required, ["id", "path", "content"]),
                "read_file" | "list_files" => assert_eq!(required, ["id", "path"]),
                "expose_port" => assert_eq!(required, ["id", "port"]),
                "run_code" => assert_eq!(required, ["id", "code"]),
                _ => assert_eq!(required, ["id"], "{}", t.name),
            }
            assert_eq!(schema["additionalProperties"], false, "{}: {schema}", t.name);
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query(&[("path", "/tmp/a b&c=d"), ("depth", "2")]), "path=/tmp/a%20b%26c%3Dd&depth=2");
    }

    #[test]
    fn a_service_error_is_a_tool_error_with_its_code() {
        let r = failure(&Error::not_found("sandbox", "nope"));
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.structured_content.as_ref().unwrap()["code"], "not_found");
        let text = serde_json::to_value(&r.content[0]).unwrap()["text"].as_str().unwrap().to_string();
        assert!(text.starts_with("not_found: "), "{text}");
        let r = invalid("no `id`");
        let text = serde_json::to_value(&r.content[0]).unwrap()["text"].as_str().unwrap().to_string();
        assert_eq!(text, "invalid_argument: no `id`");
        assert_eq!(r.structured_content.unwrap()["code"], "invalid_argument");
    }
}
