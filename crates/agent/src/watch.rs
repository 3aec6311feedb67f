//! `GET /v1/files/watch?path=P&recursive=BOOL`: changes under a guest
//! directory, from inotify, as an NDJSON stream of [`WatchEvent`]s.
//!
//! The first line, `started`, is queued only once every watch is in
//! place. inotify's events map as Go's fsnotify maps them: `IN_CREATE` →
//! create, `IN_MODIFY` → write, `IN_DELETE` → remove, `IN_MOVED_FROM` →
//! rename (the old path), `IN_MOVED_TO` → create (the new path),
//! `IN_ATTRIB` → chmod. Recursive watches cover every subdirectory, and
//! each directory that appears later (created or moved in) is watched and
//! then read: what is already in it is reported as `create` (so nothing
//! made before its watch existed goes unseen; an entry made in between may
//! be reported twice). Symlinks to directories are not followed below the
//! root. The stream ends when the client goes (the inotify fd is closed
//! with it) or when the watched directory itself is removed or moved
//! (after its `remove` or `rename` line).
//!
//! Memory is bounded: at most [`MAX_WATCHES`] directories (a tree larger
//! than that is refused; a directory past it that appears later is not
//! watched and an `overflow` line says so), at most [`QUEUE_LINES`] lines
//! queued for a slow client (then the agent stops reading, the kernel's
//! queue fills, and its overflow becomes an `overflow` line), and at most
//! [`MAX_SCAN_LINES`] lines from reading one batch's new directories.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use serde::Deserialize;
use spinup_protocol::WatchEvent;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::files::{check, io_err};
use crate::server::{AgentError, AppState};

/// Directories one watch may cover.
pub const MAX_WATCHES: usize = 8192;
/// Lines queued for the client before the agent stops reading events.
pub const QUEUE_LINES: usize = 256;
/// Lines reading the directories that appeared in one batch may add.
pub const MAX_SCAN_LINES: usize = 16_384;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/files/watch", get(watch))
}

#[derive(Deserialize)]
struct WatchQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

fn mask() -> F {
    F::IN_CREATE
        | F::IN_MODIFY
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_ATTRIB
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR
}

/// The inotify instance, shared by the reader (as an [`AsyncFd`]) and the
/// tree (which adds and removes watches); closed when both are gone.
struct Fd(Arc<Inotify>);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn exhausted(path: &Path) -> AgentError {
    AgentError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: format!(
            "watch {}: the guest's inotify limits are reached (fs.inotify.max_user_watches, max_user_instances)",
            path.display()
        ),
    }
}

fn watch_err(path: &Path, e: Errno) -> AgentError {
    match e {
        Errno::ENOSPC | Errno::EMFILE | Errno::ENFILE => exhausted(path),
        e => io_err("watch", path, io::Error::from(e)),
    }
}

/// The watched directories, by watch descriptor.
struct Tree {
    ino: Arc<Inotify>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root: WatchDescriptor,
    root_path: PathBuf,
    recursive: bool,
    /// An `overflow` for the watch limit was sent.
    full: bool,
    /// The root is gone (removed, moved or unmounted): end the stream.
    done: bool,
}

/// Subdirectories of `dir`, never through a symlink.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

impl Tree {
    /// Watch `root` (and, recursive, every directory under it).
    fn new(root: PathBuf, recursive: bool) -> Result<Tree, AgentError> {
        let m = std::fs::metadata(&root).map_err(|e| io_err("watch", &root, e))?;
        if !m.is_dir() {
            return Err(AgentError::bad(format!("watch {}: not a directory", root.display())));
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| watch_err(&root, e))?;
        let wd = ino.add_watch(&root, mask()).map_err(|e| watch_err(&root, e))?;
        let mut t = Tree {
            ino: Arc::new(ino),
            dirs: HashMap::from([(wd, root.clone())]),
            root: wd,
            root_path: root.clone(),
            recursive,
            full: false,
            done: false,
        };
        if recursive {
            let mut todo = subdirs(&root);
            while let Some(d) = todo.pop() {
                if t.dirs.len() >= MAX_WATCHES {
                    return Err(AgentError::bad(format!(
                        "watch {}: more than {MAX_WATCHES} directories; watch a smaller tree, or not recursively",
                        root.display()
                    )));
                }
                match t.ino.add_watch(&d, mask() | F::IN_DONT_FOLLOW) {
                    Ok(wd) => {
                        todo.extend(subdirs(&d));
                        t.dirs.insert(wd, d);
                    }
                    Err(e @ (Errno::ENOSPC | Errno::EMFILE | Errno::ENFILE)) => return Err(watch_err(&d, e)),
                    // Gone meanwhile, or not ours to read: not watched.
                    Err(_) => {}
                }
            }
        }
        Ok(t)
    }

    /// Watch a directory that appeared under the tree and everything in
    /// it, reporting what it already holds as created.
    fn add(&mut self, dir: &Path, out: &mut Vec<WatchEvent>, scanned: &mut usize) {
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            if self.dirs.len() >= MAX_WATCHES {
                if !self.full {
                    self.full = true;
                    out.push(WatchEvent::Overflow);
                }
                return;
            }
            let Ok(wd) = self.ino.add_watch(&d, mask() | F::IN_DONT_FOLLOW) else { continue };
            self.dirs.insert(wd, d.clone());
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if *scanned < MAX_SCAN_LINES {
                    out.push(WatchEvent::Create { path: e.path().to_string_lossy().into_owned(), is_dir });
                } else if *scanned == MAX_SCAN_LINES {
                    out.push(WatchEvent::Overflow);
                }
                *scanned += 1;
                if is_dir {
                    todo.push(e.path());
                }
            }
        }
    }

    /// Watches at or under `dir`.
    fn under(&self, dir: &Path) -> Vec<WatchDescriptor> {
        self.dirs.iter().filter(|(_, p)| p.starts_with(dir)).map(|(wd, _)| *wd).collect()
    }

    /// A watched directory moved within the tree: its watches keep going,
    /// under their new paths.
    fn moved(&mut self, from: &Path, to: &Path) {
        for wd in self.under(from) {
            if let Some(p) = self.dirs.get_mut(&wd) {
                if let Ok(rest) = p.strip_prefix(from) {
                    *p = to.join(rest);
                }
            }
        }
    }

    /// A watched directory moved out of the tree: its watches end.
    fn left(&mut self, dir: &Path) {
        for wd in self.under(dir) {
            let _ = self.ino.rm_watch(wd);
            self.dirs.remove(&wd);
        }
    }

    /// One read's events, as lines.
    fn handle(&mut self, events: Vec<InotifyEvent>) -> Vec<WatchEvent> {
        let mut out = vec![];
        let mut scanned = 0;
        // Directories moved from a watched place, by cookie, until their
        // IN_MOVED_TO (the pair comes in one read) says where to.
        let mut moved_from: HashMap<u32, PathBuf> = HashMap::new();
        // Writes through the API stream into a temporary file renamed over
        // the target: a watcher sees the target created and written, never
        // the temporary name.
        let mut uploads: std::collections::HashSet<u32> = Default::default();
        for ev in events {
            let m = ev.mask;
            if m.contains(F::IN_Q_OVERFLOW) {
                out.push(WatchEvent::Overflow);
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else { continue };
            if m.contains(F::IN_IGNORED) {
                self.dirs.remove(&ev.wd);
                if ev.wd == self.root {
                    self.done = true;
                }
                continue;
            }
            let is_dir = m.contains(F::IN_ISDIR);
            let Some(name) = ev.name else {
                // An event on a watched directory itself: reported by its
                // parent's watch, unless it is the root.
                if ev.wd == self.root {
                    let path = self.root_path.to_string_lossy().into_owned();
                    if m.contains(F::IN_ATTRIB) {
                        out.push(WatchEvent::Chmod { path: path.clone(), is_dir: true });
                    }
                    if m.contains(F::IN_DELETE_SELF) {
                        out.push(WatchEvent::Remove { path: path.clone(), is_dir: true });
                        self.done = true;
                    }
                    if m.contains(F::IN_MOVE_SELF) {
                        out.push(WatchEvent::Rename { path, is_dir: true });
                        self.done = true;
                    }
                }
                continue;
            };
            let path = dir.join(&name);
            let p = || path.to_string_lossy().into_owned();
            if crate::files::is_upload(name.as_os_str()) && !is_dir {
                if m.contains(F::IN_MOVED_FROM) {
                    uploads.insert(ev.cookie);
                }
                continue;
            }
            if m.contains(F::IN_MOVED_TO) && uploads.remove(&ev.cookie) {
                out.push(WatchEvent::Create { path: p(), is_dir });
                out.push(WatchEvent::Write { path: p(), is_dir });
                continue;
            }
            if m.contains(F::IN_CREATE) {
                out.push(WatchEvent::Create { path: p(), is_dir });
                if is_dir && self.recursive {
                    self.add(&path, &mut out, &mut scanned);
                }
            }
            if m.contains(F::IN_MODIFY) {
                out.push(WatchEvent::Write { path: p(), is_dir });
            }
            if m.contains(F::IN_ATTRIB) {
                out.push(WatchEvent::Chmod { path: p(), is_dir });
            }
            if m.contains(F::IN_DELETE) {
                out.push(WatchEvent::Remove { path: p(), is_dir });
            }
            if m.contains(F::IN_MOVED_FROM) {
                out.push(WatchEvent::Rename { path: p(), is_dir });
                if is_dir && self.recursive {
                    moved_from.insert(ev.cookie, path.clone());
                }
            }
            if m.contains(F::IN_MOVED_TO) {
                out.push(WatchEvent::Create { path: p(), is_dir });
                if is_dir && self.recursive {
                    match moved_from.remove(&ev.cookie) {
                        Some(from) => self.moved(&from, &path),
                        None => self.add(&path, &mut out, &mut scanned),
                    }
                }
            }
        }
        // Moved somewhere unwatched (or the pair was split across reads:
        // then its IN_MOVED_TO watches it afresh).
        for (_, from) in moved_from {
            self.left(&from);
        }
        out
    }
}

async fn watch(Query(q): Query<WatchQuery>) -> Result<Response, AgentError> {
    let root = check(&q.path)?;
    let recursive = q.recursive;
    let tree = crate::files::blocking(move || Tree::new(root, recursive)).await?;
    // SAFETY: the fd is the inotify instance's, which the `Arc` inside
    // `Fd` keeps open (and the same) for as long as the `AsyncFd` lives.
    let fd = unsafe { AsyncFd::register(Fd(tree.ino.clone())) }.map_err(io::Error::from).map_err(|e| AgentError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: format!("watch: registering the inotify fd: {e}"),
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_LINES);
    // Every watch is in place: whatever changes from now on is reported.
    let _ = tx.try_send(WatchEvent::Started.line());
    tokio::spawn(pump(fd, tree, tx));
    let lines =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx)) });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// Read events until the client goes or the root does.
async fn pump(fd: AsyncFd<Fd>, mut tree: Tree, tx: mpsc::Sender<Bytes>) {
    loop {
        let events = tokio::select! {
            r = fd.readable() => {
                let Ok(mut guard) = r else { return };
                match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(_)) => return,
                    // Nothing to read after all (readiness is cleared).
                    Err(_) => continue,
                }
            }
            _ = tx.closed() => return,
        };
        // New directories are walked: off the (single-threaded) runtime.
        let Ok((t, lines)) = tokio::task::spawn_blocking(move || {
            let lines = tree.handle(events);
            (tree, lines)
        })
        .await
        else {
            return;
        };
        tree = t;
        for l in lines {
            if tx.send(l.line()).await.is_err() {
                return;
            }
        }
        if tree.done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events of the real kernel for the changes `f` makes, read until
    /// `until` shows up.
    fn events(tree: &mut Tree, until: &WatchEvent, f: impl FnOnce()) -> Vec<WatchEvent> {
        f();
        let mut out = vec![];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !out.contains(until) {
            assert!(std::time::Instant::now() < deadline, "no {until:?} in {out:?}");
            match tree.ino.read_events() {
                Ok(evs) => out.extend(tree.handle(evs)),
                Err(Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => panic!("read_events: {e}"),
            }
        }
        out
    }

    fn ev(kind: &str, path: &Path, is_dir: bool) -> WatchEvent {
        let path = path.to_string_lossy().into_owned();
        match kind {
            "create" => WatchEvent::Create { path, is_dir },
            "write" => WatchEvent::Write { path, is_dir },
            "remove" => WatchEvent::Remove { path, is_dir },
            "rename" => WatchEvent::Rename { path, is_dir },
            "chmod" => WatchEvent::Chmod { path, is_dir },
            _ => unreachable!("{kind}"),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spinup-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn inotify_events_map_like_fsnotify_and_new_directories_are_watched() {
        use std::os::unix::fs::PermissionsExt;
        let root = scratch("map");
        std::fs::create_dir_all(root.join("old/deep")).unwrap();
        let mut t = Tree::new(root.clone(), true).unwrap();
        assert_eq!(t.dirs.len(), 3);

        let a = root.join("a");
        let got = events(&mut t, &ev("chmod", &a, false), || {
            std::fs::write(&a, b"x").unwrap();
            std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        });
        assert_eq!(got, [ev("create", &a, false), ev("write", &a, false), ev("chmod", &a, false)]);

        // A directory made with something in it already: watched, and its
        // contents reported even if made before the watch.
        let sub = root.join("sub");
        let f = sub.join("inner/f");
        let got = events(&mut t, &ev("create", &f, false), || {
            std::fs::create_dir_all(sub.join("inner")).unwrap();
            std::fs::write(&f, b"").unwrap();
        });
        assert_eq!(got.first(), Some(&ev("create", &sub, true)), "{got:?}");
        let g = sub.join("inner/g");
        let got = events(&mut t, &ev("create", &g, false), || std::fs::write(&g, b"").unwrap());
        assert_eq!(got, [ev("create", &g, false)]);

        // Moved within the tree: watches follow; rename then create.
        let new = root.join("new");
        let got = events(&mut t, &ev("create", &new, true), || std::fs::rename(root.join("old"), &new).unwrap());
        assert_eq!(got, [ev("rename", &root.join("old"), true), ev("create", &new, true)]);
        let h = new.join("deep/h");
        let got = events(&mut t, &ev("create", &h, false), || std::fs::write(&h, b"").unwrap());
        assert_eq!(got, [ev("create", &h, false)]);

        // A write through the API (a temporary file renamed over the
        // target) reads as the target created and written.
        let up = root.join("up.txt");
        let tmp = root.join(super::super::files::upload_name_for_tests("up.txt"));
        let got = events(&mut t, &ev("write", &up, false), || {
            std::fs::write(&tmp, b"data").unwrap();
            std::fs::rename(&tmp, &up).unwrap();
        });
        assert_eq!(got, [ev("create", &up, false), ev("write", &up, false)]);

        let got = events(&mut t, &ev("remove", &a, false), || std::fs::remove_file(&a).unwrap());
        assert_eq!(got, [ev("remove", &a, false)]);

        // The root removed: its remove line, then the end.
        std::fs::remove_dir_all(&root).unwrap();
        let got = events(&mut t, &ev("remove", &root, true), || {});
        assert!(got.contains(&ev("remove", &h, false)), "{got:?}");
        assert!(t.done);
    }

    #[test]
    fn a_watch_is_refused_on_a_missing_path_or_a_file_and_is_flat_unless_recursive() {
        let root = scratch("flat");
        let e = Tree::new(root.join("missing"), false).err().unwrap();
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "not_found"));
        std::fs::write(root.join("file"), b"").unwrap();
        let e = Tree::new(root.join("file"), false).err().unwrap();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        std::fs::create_dir(root.join("d")).unwrap();
        let mut t = Tree::new(root.clone(), false).unwrap();
        assert_eq!(t.dirs.len(), 1);
        let inner = root.join("d/x");
        let top = root.join("top");
        let got = events(&mut t, &ev("create", &top, false), || {
            std::fs::write(&inner, b"").unwrap();
            std::fs::write(&top, b"").unwrap();
        });
        assert_eq!(got, [ev("create", &top, false)]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
