//! `filesystem.Filesystem`: E2B's file metadata calls and directory
//! watching, over Spinup's file operations (the sandbox's agent resolves
//! every path inside the guest root).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::response::Response;
use futures::StreamExt;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};
use spinup_api::{FileOp, FileRequest, Forwarded, Sandbox, SandboxId};
use spinup_protocol::{FileKind, FileStat};

use crate::connect::{self, ConnectError};
use crate::process::{home_of, int, user_of};
use crate::{App, Target};

type St = State<Arc<App>>;
type Ext = Extension<Target>;

/// Watchers per sandbox, and events one keeps between polls.
const MAX_WATCHERS: usize = 64;
const MAX_QUEUED: usize = 10_000;

/// Read a forwarded answer whole (bounded), as JSON or the agent's error.
pub async fn json_of(f: Forwarded) -> Result<Value, ConnectError> {
    let mut buf = Vec::new();
    let mut body = f.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ConnectError::new("unavailable", format!("reading the agent's answer: {e}")))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > 64 << 20 {
            return Err(ConnectError::new("resource_exhausted", "the answer is larger than 64 MiB"));
        }
    }
    let v: Value = serde_json::from_slice(&buf).unwrap_or_else(|_| json!({"message": String::from_utf8_lossy(&buf)}));
    if f.status >= 300 {
        return Err(guest_error(f.status, &v));
    }
    Ok(v)
}

/// The agent's `{code, message}` error as a Connect error.
pub fn guest_error(status: u16, v: &Value) -> ConnectError {
    let message = v["message"].as_str().unwrap_or("the file operation failed").to_string();
    let code = match (v["code"].as_str().unwrap_or(""), status) {
        ("not_found", _) | (_, 404) => "not_found",
        ("invalid_argument", _) | (_, 400) => "invalid_argument",
        ("permission_denied", _) | (_, 403) => "permission_denied",
        ("conflict", _) | (_, 409) => "already_exists",
        ("no_space", _) | (_, 507) => "resource_exhausted",
        _ => "internal",
    };
    ConnectError::new(code, message)
}

/// Who a call acts as: the user it names, else the environment's default
/// user (E2B's `user` in the base template); `None`: the agent's root.
pub async fn acting_user(app: &App, sb: &Sandbox, h: &HeaderMap) -> Option<String> {
    if let Some(u) = user_of(h) {
        return Some(u);
    }
    let env = app.svc.environment(&sb.env).await.ok()?;
    Some(env.config.user).filter(|u| !u.is_empty())
}

/// A path as the guest sees it: relative ones are under the user's home.
pub fn absolute(path: &str, user: Option<&str>) -> Result<String, ConnectError> {
    if path.contains('\0') {
        return Err(ConnectError::invalid("path contains a NUL byte"));
    }
    if path.starts_with('/') {
        return Ok(path.to_string());
    }
    let home = user.map(home_of).unwrap_or_else(|| "/root".into());
    let rel = path.trim_start_matches("./");
    Ok(if rel.is_empty() || rel == "." { home } else { format!("{home}/{rel}") })
}

pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn empty() -> spinup_api::ByteStream {
    futures::stream::empty().boxed()
}

fn body(v: Value) -> spinup_api::ByteStream {
    let b = Bytes::from(serde_json::to_vec(&v).expect("JSON"));
    futures::stream::once(async move { Ok(b) }).boxed()
}

/// Go's `FileMode.String()`: `drwxr-xr-x`.
fn permissions(kind: &FileKind, mode: u32) -> String {
    let t = match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'L',
        _ => '-',
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

fn name_of(id: u32) -> String {
    if id == 0 {
        "root".into()
    } else {
        id.to_string()
    }
}

/// Spinup's stat as E2B's `EntryInfo`.
pub fn entry(s: &FileStat) -> Value {
    let ty = match s.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let mut v = json!({
        "name": s.name,
        "type": ty,
        "path": s.path,
        "size": s.size.to_string(),
        "mode": s.mode,
        "permissions": permissions(&s.kind, s.mode),
        "owner": name_of(s.uid),
        "group": name_of(s.gid),
        "modifiedTime": crate::wire::rfc3339(s.mtime_ms),
    });
    if s.kind == FileKind::Symlink {
        v["isSymlink"] = json!(true);
        if let Some(t) = &s.symlink_target {
            v["symlinkTarget"] = json!(t);
        }
    }
    v
}

async fn stat_path(app: &App, id: &SandboxId, path: &str) -> Result<FileStat, ConnectError> {
    let f = app.svc.files(id, FileRequest { op: FileOp::Stat, query: query(&[("path", path)]), body: empty() }).await?;
    serde_json::from_value(json_of(f).await?).map_err(|e| ConnectError::new("internal", format!("agent stat: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PathReq {
    path: String,
    #[serde(deserialize_with = "int")]
    depth: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MoveReq {
    source: String,
    destination: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WatchReq {
    path: String,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WatcherReq {
    watcher_id: String,
}

macro_rules! unary {
    ($name:ident, $req:ty, |$app:ident, $id:ident, $user:ident, $r:ident| $body:expr) => {
        pub async fn $name(State($app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
            let res = async {
                let $r: $req = connect::unary_request(&headers, body).await?;
                let $id = &t.id;
                let $user = acting_user(&$app, &t.sb, &headers).await;
                $body
            };
            connect::unary(res.await)
        }
    };
}

unary!(stat, PathReq, |app, id, user, r| {
    let path = absolute(&r.path, user.as_deref())?;
    Ok(json!({"entry": entry(&stat_path(&app, id, &path).await?)}))
});

unary!(make_dir, PathReq, |app, id, user, r| {
    let path = absolute(&r.path, user.as_deref())?;
    match stat_path(&app, id, &path).await {
        Ok(_) => return Err(ConnectError::new("already_exists", format!("{path} already exists"))),
        Err(e) if e.code == "not_found" => {}
        Err(e) => return Err(e),
    }
    let mut req = json!({"path": path});
    if let Some(u) = &user {
        req["user"] = json!(u);
    }
    let f = app.svc.files(id, FileRequest { op: FileOp::Mkdir, query: String::new(), body: body(req) }).await?;
    let s: FileStat = serde_json::from_value(json_of(f).await?)
        .map_err(|e| ConnectError::new("internal", format!("agent mkdir: {e}")))?;
    Ok(json!({"entry": entry(&s)}))
});

unary!(move_entry, MoveReq, |app, id, user, r| {
    let from = absolute(&r.source, user.as_deref())?;
    let to = absolute(&r.destination, user.as_deref())?;
    let f = app
        .svc
        .files(
            id,
            FileRequest { op: FileOp::Rename, query: String::new(), body: body(json!({"from": from, "to": to})) },
        )
        .await?;
    let s: FileStat = serde_json::from_value(json_of(f).await?)
        .map_err(|e| ConnectError::new("internal", format!("agent rename: {e}")))?;
    Ok(json!({"entry": entry(&s)}))
});

unary!(list_dir, PathReq, |app, id, user, r| {
    let path = absolute(&r.path, user.as_deref())?;
    let depth = r.depth.filter(|d| *d > 0).unwrap_or(1).to_string();
    let f = app
        .svc
        .files(id, FileRequest { op: FileOp::List, query: query(&[("path", &path), ("depth", &depth)]), body: empty() })
        .await?;
    let list: Vec<FileStat> = serde_json::from_value(json_of(f).await?)
        .map_err(|e| ConnectError::new("internal", format!("agent list: {e}")))?;
    Ok(json!({"entries": list.iter().map(entry).collect::<Vec<_>>()}))
});

unary!(remove, PathReq, |app, id, user, r| {
    let path = absolute(&r.path, user.as_deref())?;
    let f = app
        .svc
        .files(
            id,
            FileRequest {
                op: FileOp::Remove,
                query: String::new(),
                body: body(json!({"path": path, "recursive": true})),
            },
        )
        .await?;
    json_of(f).await?;
    Ok(json!({}))
});

/// One line of the agent's watch stream as E2B's `FilesystemEvent`
/// (`name` relative to the watched directory); `None` for other lines.
fn fs_event(line: &Value, root: &str) -> Option<Value> {
    let ty = match line["type"].as_str()? {
        "create" => "EVENT_TYPE_CREATE",
        "write" => "EVENT_TYPE_WRITE",
        "remove" => "EVENT_TYPE_REMOVE",
        "rename" => "EVENT_TYPE_RENAME",
        "chmod" => "EVENT_TYPE_CHMOD",
        _ => return None,
    };
    let path = line["path"].as_str()?;
    let name = path.strip_prefix(root).map(|p| p.trim_start_matches('/')).unwrap_or(path);
    Some(json!({"name": name, "type": ty}))
}

/// Start watching; answers once the guest's watches are in place.
async fn open_watch(
    app: &App,
    t: &Target,
    h: &HeaderMap,
    r: &WatchReq,
) -> Result<(String, futures::stream::BoxStream<'static, Result<Value, ConnectError>>), ConnectError> {
    if r.include_entry || r.allow_network_mounts {
        return Err(ConnectError::new("unimplemented", "includeEntry and allowNetworkMounts are not served"));
    }
    let user = acting_user(app, &t.sb, h).await;
    let path = absolute(&r.path, user.as_deref())?;
    let q = query(&[("path", &path), ("recursive", if r.recursive { "true" } else { "false" })]);
    let f = app.svc.files(&t.id, FileRequest { op: FileOp::Watch, query: q, body: empty() }).await?;
    if f.status >= 300 {
        return Err(json_of(f).await.err().unwrap_or_else(|| ConnectError::new("internal", "watch failed")));
    }
    let mut lines = ndjson(f.body);
    match lines.next().await {
        Some(Ok(v)) if v["type"] == "started" => {}
        Some(Err(e)) => return Err(e),
        _ => return Err(ConnectError::new("unavailable", "the agent's watch ended before it started")),
    }
    let root = path.clone();
    let events = lines.filter_map(move |l| {
        let out = match l {
            Ok(v) if v["type"] == "overflow" => {
                Some(Err(ConnectError::new("resource_exhausted", "too many changes at once: events were lost")))
            }
            Ok(v) => fs_event(&v, &root).map(Ok),
            Err(e) => Some(Err(e)),
        };
        async move { out }
    });
    Ok((path, events.boxed()))
}

/// NDJSON lines of a streamed body.
fn ndjson(body: spinup_api::ByteStream) -> futures::stream::BoxStream<'static, Result<Value, ConnectError>> {
    futures::stream::unfold((body, Vec::<u8>::new(), false), |(mut body, mut buf, done)| async move {
        loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v = serde_json::from_slice(&line)
                    .map_err(|e| ConnectError::new("internal", format!("agent watch line: {e}")));
                return Some((v, (body, buf, done)));
            }
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(c)) => buf.extend_from_slice(&c),
                Some(Err(e)) => {
                    return Some((
                        Err(ConnectError::new("unavailable", format!("the watch stream broke: {e}"))),
                        (body, buf, true),
                    ))
                }
                None => {
                    if buf.len() > 1 << 20 {
                        return None;
                    }
                    buf.push(b'\n');
                    return Some((
                        Err(ConnectError::new("unavailable", "the watch ended (the sandbox stopped?)")),
                        (body, Vec::new(), true),
                    ));
                }
            }
        }
    })
    .boxed()
}

/// `WatchDir` (the async SDK): `start`, then events, keepalives between.
pub async fn watch_dir(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let r: WatchReq = match connect::first_message(&headers, body).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(e),
    };
    let events = match open_watch(&app, &t, &headers, &r).await {
        Ok((_, ev)) => ev,
        Err(e) => return connect::stream_error(e),
    };
    let start = futures::stream::once(async { Ok(connect::message(&json!({"start": {}}))) });
    let rest = events.map(|e| e.map(|v| connect::message(&json!({"filesystem": v}))));
    let keep = connect::message(&json!({"keepalive": {}}));
    connect::streaming(start.chain(rest).boxed(), Some((connect::keepalive_every(&headers), keep)))
}

/// Watchers of the polling API (`CreateWatcher` → `GetWatcherEvents` →
/// `RemoveWatcher`, the sync SDK's `watch_dir`).
#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, Watcher>>,
}

struct Watcher {
    sandbox: String,
    queue: Arc<Mutex<Queue>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Value>,
    error: Option<ConnectError>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn create_watcher(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let r: WatchReq = connect::unary_request(&headers, body).await?;
        let n = {
            let mut map = app.watchers.map.lock().expect("watchers lock");
            // Watchers whose stream ended (their sandbox went away) and
            // were never removed go now.
            map.retain(|_, w| !w.task.is_finished());
            map.values().filter(|w| w.sandbox == t.id.as_str()).count()
        };
        if n >= MAX_WATCHERS {
            return Err(ConnectError::new(
                "resource_exhausted",
                format!("at most {MAX_WATCHERS} watchers per sandbox"),
            ));
        }
        let (_, mut events) = open_watch(&app, &t, &headers, &r).await?;
        let queue = Arc::new(Mutex::new(Queue::default()));
        let q = queue.clone();
        let task = tokio::spawn(async move {
            while let Some(e) = events.next().await {
                let mut q = q.lock().expect("queue lock");
                match e {
                    Ok(v) => {
                        if q.events.len() >= MAX_QUEUED {
                            q.events.pop_front();
                        }
                        q.events.push_back(v);
                    }
                    Err(e) => {
                        q.error = Some(e);
                        return;
                    }
                }
            }
        });
        let wid = format!("w{}", hex::encode(rand_bytes()));
        app.watchers
            .map
            .lock()
            .expect("watchers lock")
            .insert(wid.clone(), Watcher { sandbox: t.id.to_string(), queue, task });
        Ok(json!({"watcherId": wid}))
    };
    connect::unary(res.await)
}

fn rand_bytes() -> [u8; 12] {
    use sha2::Digest;
    // Unique, not secret (the watcher is reachable only with the
    // sandbox's token): a hash of time and a counter.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = sha2::Sha256::digest(format!("{t}:{n}").as_bytes());
    let mut out = [0u8; 12];
    out.copy_from_slice(&h[..12]);
    out
}

fn watcher_queue(app: &App, t: &Target, wid: &str) -> Result<Arc<Mutex<Queue>>, ConnectError> {
    let map = app.watchers.map.lock().expect("watchers lock");
    match map.get(wid) {
        Some(w) if w.sandbox == t.id.as_str() => Ok(w.queue.clone()),
        _ => Err(ConnectError::new("not_found", format!("watcher {wid} not found"))),
    }
}

pub async fn get_watcher_events(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let r: WatcherReq = connect::unary_request(&headers, body).await?;
        let q = watcher_queue(&app, &t, &r.watcher_id)?;
        let mut q = q.lock().expect("queue lock");
        let events: Vec<Value> = q.events.drain(..).collect();
        if events.is_empty() {
            if let Some(e) = q.error.take() {
                return Err(e);
            }
        }
        Ok(json!({"events": events}))
    };
    connect::unary(res.await)
}

pub async fn remove_watcher(State(app): St, Extension(t): Ext, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let r: WatcherReq = connect::unary_request(&headers, body).await?;
        watcher_queue(&app, &t, &r.watcher_id)?;
        app.watchers.map.lock().expect("watchers lock").remove(&r.watcher_id);
        Ok(json!({}))
    };
    connect::unary(res.await)
}

impl Watchers {
    /// Forget the watchers of a sandbox that is gone.
    pub fn drop_sandbox(&self, id: &str) {
        self.map.lock().expect("watchers lock").retain(|_, w| w.sandbox != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_users_home() {
        assert_eq!(absolute("/etc/x", Some("user")).unwrap(), "/etc/x");
        assert_eq!(absolute("a/b", Some("user")).unwrap(), "/home/user/a/b");
        assert_eq!(absolute("./a", Some("root")).unwrap(), "/root/a");
        assert_eq!(absolute("", None).unwrap(), "/root");
        assert!(absolute("a\0b", None).is_err());
    }

    #[test]
    fn entries_read_like_envds() {
        let s = FileStat {
            path: "/home/user/d".into(),
            name: "d".into(),
            kind: FileKind::Dir,
            size: 4096,
            mode: 0o755,
            uid: 0,
            gid: 1000,
            mtime_ms: 0,
            symlink_target: None,
        };
        let e = entry(&s);
        assert_eq!(e["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(e["permissions"], "drwxr-xr-x");
        assert_eq!(e["size"], "4096");
        assert_eq!((e["owner"].as_str(), e["group"].as_str()), (Some("root"), Some("1000")));
        assert!(e.get("symlinkTarget").is_none() && e.get("isSymlink").is_none());
    }

    #[test]
    fn watch_lines_become_events_named_from_the_root() {
        let l = json!({"type": "create", "path": "/home/user/w/sub/f", "is_dir": false});
        assert_eq!(fs_event(&l, "/home/user/w").unwrap(), json!({"name": "sub/f", "type": "EVENT_TYPE_CREATE"}));
        assert!(fs_event(&json!({"type": "started"}), "/").is_none());
    }
}
