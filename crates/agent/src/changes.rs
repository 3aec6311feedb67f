//! The root filesystem's changes since the agent started, as an OCI layer
//! tar: for drivers whose writable layer the host cannot read (a VM's disk
//! is never mounted by the host). Changed = created, or with a ctime at or
//! after the agent's start (the guest cannot set ctimes back); deleted =
//! in the base list the host sends but gone. Only the root filesystem is
//! walked: other mounts (/proc, /dev, /run) are not state.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use spinup_protocol::ChangesRequest;
use tokio::sync::mpsc;

use crate::server::{AgentError, AppState};

static STARTED: OnceLock<(i64, i64)> = OnceLock::new();

/// Call first thing in `main`: changes are measured from here.
pub fn mark_start() {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = STARTED.set((d.as_secs() as i64, d.subsec_nanos() as i64));
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/fs/sync", post(sync))
        .route("/v1/fs/changes", post(changes))
        .route("/v1/identity", post(identity))
}

async fn identity(body: Bytes) -> Result<Json<serde_json::Value>, AgentError> {
    let req: spinup_protocol::IdentityRequest =
        serde_json::from_slice(&body).map_err(|e| AgentError::bad(format!("bad identity request: {e}")))?;
    tokio::task::spawn_blocking(move || crate::vminit::set_identity(&req.hostname, &req.entropy, req.net.as_deref()))
        .await
        .map_err(|e| AgentError::bad(format!("identity task: {e}")))?
        .map_err(|e| AgentError::bad(format!("cannot set the identity: {e}")))?;
    Ok(Json(serde_json::json!({})))
}

async fn sync() -> Json<serde_json::Value> {
    // SAFETY: sync(2) has no arguments and cannot fail.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    Json(serde_json::json!({}))
}

/// Sends what it is given as body chunks.
struct ChanWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::other("the host went away"))?;
        }
        Ok(())
    }
}

/// Stops every other process of the sandbox for the duration (the agent is
/// PID 1 of the sandbox's PID namespace, so `kill(-1)` reaches all of them
/// and not itself), so the tar is one consistent moment.
struct Frozen(bool);

impl Frozen {
    fn new(on: bool) -> Frozen {
        if on && std::process::id() == 1 {
            // SAFETY: plain signal syscall.
            unsafe { libc::kill(-1, libc::SIGSTOP) };
            Frozen(true)
        } else {
            Frozen(false)
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: plain signal syscall.
            unsafe { libc::kill(-1, libc::SIGCONT) };
        }
    }
}

async fn changes(body: Bytes) -> Result<Response, AgentError> {
    let req: ChangesRequest =
        serde_json::from_slice(&body).map_err(|e| AgentError::bad(format!("bad changes request: {e}")))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let since = *STARTED.get().unwrap_or(&(0, 0));
    std::thread::spawn(move || {
        let _frozen = Frozen::new(std::process::id() == 1);
        // SAFETY: sync(2) has no arguments and cannot fail.
        unsafe { libc::sync() };
        let mut w = ChanWriter { tx: tx.clone(), buf: vec![] };
        let res = write_changes(&req, since, &mut w).and_then(|_| w.flush());
        if let Err(e) = res {
            // An error chunk aborts the body: the host never takes half a layer.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok(Body::from_stream(stream).into_response())
}

struct Walk<'a, W: Write> {
    b: tar::Builder<W>,
    since: (i64, i64),
    root_dev: u64,
    base: HashSet<&'a [u8]>,
    exclude: HashSet<&'a [u8]>,
    seen: HashSet<Vec<u8>>,
    mounts: Vec<PathBuf>,
    /// Directories above the current entry, and whether they are in the tar.
    parents: Vec<(PathBuf, Metadata, bool)>,
}

fn header(m: &Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
    h
}

impl<W: Write> Walk<'_, W> {
    fn changed(&self, m: &Metadata) -> bool {
        (m.ctime(), m.ctime_nsec()) >= self.since
    }

    /// Directories above an entry go in first, with their real metadata
    /// (an implied directory would get default permissions).
    fn emit_parents(&mut self) -> io::Result<()> {
        for i in 0..self.parents.len() {
            if !self.parents[i].2 {
                let (rel, m, _) = &self.parents[i];
                let mut h = header(m);
                h.set_size(0);
                self.b.append_data(&mut h, rel, io::empty())?;
                self.parents[i].2 = true;
            }
        }
        Ok(())
    }

    fn entry(&mut self, abs: &Path, rel: &Path, m: &Metadata) -> io::Result<()> {
        let ft = m.file_type();
        if ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
            return Ok(());
        }
        self.emit_parents()?;
        let mut h = header(m);
        if ft.is_file() {
            let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(abs)?;
            // A file that grew meanwhile is cut at its size when stat'ed.
            self.b.append_data(&mut h, rel, f.take(m.len()))?;
        } else if ft.is_symlink() {
            h.set_size(0);
            self.b.append_link(&mut h, rel, fs::read_link(abs)?)?;
        } else {
            h.set_size(0);
            self.b.append_data(&mut h, rel, io::empty())?;
        }
        Ok(())
    }

    fn walk(&mut self, rel: &Path) -> io::Result<()> {
        let abs = Path::new("/").join(rel);
        let mut names: Vec<OsString> = fs::read_dir(&abs)?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let key = r.as_os_str().as_bytes();
            if self.exclude.contains(key) || (rel.as_os_str().is_empty() && name == "lost+found") {
                self.seen.insert(key.to_vec());
                continue;
            }
            let a = abs.join(&name);
            let Ok(m) = fs::symlink_metadata(&a) else { continue };
            if self.base.contains(key) {
                self.seen.insert(key.to_vec());
            }
            if m.dev() != self.root_dev {
                self.mounts.push(r);
                continue;
            }
            let is_new = !self.base.contains(key);
            if m.is_dir() {
                let changed = is_new || self.changed(&m);
                if changed {
                    self.emit_parents()?;
                    let mut h = header(&m);
                    h.set_size(0);
                    self.b.append_data(&mut h, &r, io::empty())?;
                }
                self.parents.push((r.clone(), m, changed));
                let res = self.walk(&r);
                self.parents.pop();
                res?;
            } else if is_new || self.changed(&m) {
                self.entry(&a, &r, &m)?;
            }
        }
        Ok(())
    }
}

fn write_changes<W: Write>(req: &ChangesRequest, since: (i64, i64), w: W) -> io::Result<()> {
    let root_dev = fs::symlink_metadata("/")?.dev();
    let mut walk = Walk {
        b: tar::Builder::new(w),
        since,
        root_dev,
        base: req.base.iter().map(|s| s.as_bytes()).collect(),
        exclude: req.exclude.iter().map(|s| s.as_bytes()).collect(),
        seen: HashSet::new(),
        mounts: vec![],
        parents: vec![],
    };
    walk.b.follow_symlinks(false);
    walk.walk(Path::new(""))?;
    // Deletions: base paths not seen, unless under a mount point, or under
    // a directory that is itself deleted or no longer a directory.
    let mut base: Vec<&str> = req.base.iter().map(|s| s.as_str()).collect();
    base.sort_unstable();
    let mut gone_dirs: Vec<PathBuf> = vec![];
    for p in base {
        if walk.seen.contains(p.as_bytes()) {
            continue;
        }
        let rel = Path::new(p);
        if walk.mounts.iter().chain(&gone_dirs).any(|m| rel.starts_with(m)) || rel.components().count() == 0 {
            continue;
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        let parent_is_dir = fs::symlink_metadata(Path::new("/").join(parent)).map(|m| m.is_dir()).unwrap_or(false);
        if !parent_is_dir {
            continue;
        }
        gone_dirs.push(rel.to_path_buf());
        // The parent directory's own entry, with its metadata.
        if !parent.as_os_str().is_empty() {
            if let Ok(m) = fs::symlink_metadata(Path::new("/").join(parent)) {
                let mut h = header(&m);
                h.set_size(0);
                walk.b.append_data(&mut h, parent, io::empty())?;
            }
        }
        let mut wh = OsString::from(".wh.");
        wh.push(rel.file_name().unwrap_or_default());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        walk.b.append_data(&mut h, parent.join(wh), io::empty())?;
    }
    walk.b.into_inner()?.flush()
}
