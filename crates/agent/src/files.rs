//! File operations. Every path is resolved by the kernel inside the
//! sandbox's own root (the agent runs there), so `..` and symlinks can only
//! ever name guest files.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use spinup_protocol::{ChmodRequest, FileKind, FileStat, PathRequest, RemoveRequest, RenameRequest};
use tokio::io::AsyncWriteExt;

use crate::server::{AgentError, AppState};

/// Entries a single list call may return.
const MAX_LIST: usize = 100_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/files/content", get(read).put(write))
        .route("/v1/files/stat", get(stat))
        .route("/v1/files/list", get(list))
        .route("/v1/files/mkdir", post(mkdir))
        .route("/v1/files/remove", post(remove))
        .route("/v1/files/rename", post(rename))
        .route("/v1/files/chmod", post(chmod))
}

pub(crate) fn io_err(op: &str, path: &Path, e: io::Error) -> AgentError {
    let (status, code) = match e.kind() {
        io::ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        io::ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        // A mount point (EBUSY) is busy, not broken.
        io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::ResourceBusy => {
            (StatusCode::CONFLICT, "conflict")
        }
        io::ErrorKind::InvalidInput | io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => {
            (StatusCode::BAD_REQUEST, "invalid_argument")
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
        // The guest's own state refuses it: a read-only mount (/sys,
        // /proc), a rename across mounts, a busy executable.
        io::ErrorKind::ReadOnlyFilesystem => (StatusCode::FORBIDDEN, "permission_denied"),
        io::ErrorKind::CrossesDevices | io::ErrorKind::ExecutableFileBusy => (StatusCode::CONFLICT, "conflict"),
        // A path the guest cannot use this way: too long, a symlink loop,
        // a device with nothing behind it (ENXIO, ENODEV), an operation
        // its filesystem lacks.
        io::ErrorKind::InvalidFilename | io::ErrorKind::Unsupported => (StatusCode::BAD_REQUEST, "invalid_argument"),
        _ if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO | libc::ENODEV | libc::EOPNOTSUPP)) => {
            (StatusCode::BAD_REQUEST, "invalid_argument")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    AgentError { status, code, message: format!("{op} {}: {e}", path.display()) }
}

/// Permission bits, set-id and sticky bits included; nothing above.
fn check_mode(mode: Option<u32>) -> Result<(), AgentError> {
    match mode {
        Some(m) if m > 0o7777 => Err(AgentError::bad(format!("mode {m:o} is out of range"))),
        _ => Ok(()),
    }
}

/// Paths must be absolute and sane; the kernel does the rest in our root.
pub(crate) fn check(path: &str) -> Result<PathBuf, AgentError> {
    if !path.starts_with('/') {
        return Err(AgentError::bad(format!("path '{path}' must be absolute")));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(AgentError::bad("path is too long or contains NUL"));
    }
    Ok(PathBuf::from(path))
}

pub fn stat_of(path: &Path) -> io::Result<FileStat> {
    let m = std::fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    Ok(FileStat {
        path: path.to_string_lossy().into_owned(),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        symlink_target: if ft.is_symlink() {
            std::fs::read_link(path).ok().map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
        kind,
        size: m.len(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ms: m.mtime() * 1000 + m.mtime_nsec() / 1_000_000,
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AgentError::bad(format!("task failed: {e}")))?
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    depth: Option<usize>,
    #[serde(default)]
    user: Option<String>,
}

/// The uid and gid a request's `user` names (resolved as exec resolves it).
fn owner(user: Option<&str>) -> Result<Option<(u32, u32)>, AgentError> {
    match user {
        None => Ok(None),
        Some(u) => {
            let u = crate::process::resolve_user(Some(u)).map_err(AgentError::bad)?;
            Ok(Some((u.uid, u.gid)))
        }
    }
}

/// `mkdir -p`, and every directory it creates is chowned to `owner`.
fn make_dirs(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), AgentError> {
    let Some((uid, gid)) = owner else {
        return std::fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, e));
    };
    // The missing ancestors, deepest first; then made from the top down.
    let mut missing = vec![];
    let mut p = dir;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p);
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => nix::unistd::chown(d, Some(uid.into()), Some(gid.into()))
                .map_err(|e| io_err("chown", d, io::Error::from(e)))?,
            // Made meanwhile by someone else: theirs, as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io_err("mkdir", d, e)),
        }
    }
    if !dir.is_dir() {
        return Err(io_err("mkdir", dir, io::Error::from(io::ErrorKind::NotADirectory)));
    }
    Ok(())
}

async fn read(Query(q): Query<PathQuery>) -> Result<Response, AgentError> {
    let path = check(&q.path)?;
    let p = path.clone();
    let (file, len) = blocking(move || {
        let f = std::fs::File::open(&p).map_err(|e| io_err("read", &p, e))?;
        let m = f.metadata().map_err(|e| io_err("read", &p, e))?;
        if !m.is_file() {
            return Err(AgentError::bad(format!("read {}: not a regular file", p.display())));
        }
        Ok((f, m.len()))
    })
    .await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
    Ok(([(header::CONTENT_LENGTH, len.to_string())], Body::from_stream(stream)).into_response())
}

/// The temporary name a write streams into before it is renamed over the
/// file (so a reader never sees half a file).
fn upload_name(name: &str, nonce: u64) -> String {
    format!(".{name}{UPLOAD_SUFFIX}{nonce:x}")
}

const UPLOAD_SUFFIX: &str = ".spinup-";

#[cfg(test)]
pub fn upload_name_for_tests(name: &str) -> String {
    upload_name(name, 0xabc123)
}

/// Whether `name` is a write's temporary file (watchers do not see those).
pub fn is_upload(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.starts_with('.')
        && n.rsplit_once(UPLOAD_SUFFIX)
            .is_some_and(|(_, hex)| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn write(Query(q): Query<PathQuery>, body: Body) -> Result<Json<FileStat>, AgentError> {
    let path = check(&q.path)?;
    check_mode(q.mode)?;
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let name = path.file_name().ok_or_else(|| AgentError::bad("cannot write to /"))?.to_string_lossy().into_owned();
    let mut nonce = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut nonce));
    let tmp = parent.join(upload_name(
        &name,
        u64::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], 0, 0]),
    ));
    let (par, tmp2, dest) = (parent.clone(), tmp.clone(), path.clone());
    let mode = q.mode;
    let user = q.user;
    let file = blocking(move || {
        let owner = owner(user.as_deref())?;
        make_dirs(&par, owner)?;
        let keep = std::fs::metadata(&dest).ok().filter(|m| m.is_file()).map(|m| m.mode() & 0o7777);
        let mode = mode.or(keep).unwrap_or(0o644) & 0o7777;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp2)
            .map_err(|e| io_err("write", &dest, e))?;
        // Owner before mode: a chown clears set-id bits.
        let set = || -> Result<(), AgentError> {
            if let Some((uid, gid)) = owner {
                nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&f), Some(uid.into()), Some(gid.into()))
                    .map_err(|e| io_err("chown", &dest, io::Error::from(e)))?;
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io_err("chmod", &dest, e))
        };
        if let Err(e) = set() {
            let _ = std::fs::remove_file(&tmp2);
            return Err(e);
        }
        Ok(f)
    })
    .await?;
    let mut f = tokio::fs::File::from_std(file);
    let mut data = body.into_data_stream();
    let res: Result<(), AgentError> = async {
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| AgentError::bad(format!("upload of {} interrupted: {e}", path.display())))?;
            f.write_all(&chunk).await.map_err(|e| io_err("write", &path, e))?;
        }
        f.flush().await.map_err(|e| io_err("write", &path, e))?;
        Ok(())
    }
    .await;
    drop(f);
    let (tmp3, dest) = (tmp.clone(), path.clone());
    match res {
        Ok(()) => blocking(move || {
            std::fs::rename(&tmp3, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp3);
                io_err("write", &dest, e)
            })?;
            stat_of(&dest).map_err(|e| io_err("stat", &dest, e))
        })
        .await
        .map(Json),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn stat(Query(q): Query<PathQuery>) -> Result<Json<FileStat>, AgentError> {
    let path = check(&q.path)?;
    blocking(move || stat_of(&path).map_err(|e| io_err("stat", &path, e))).await.map(Json)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<FileStat>) -> Result<(), AgentError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        if out.len() >= MAX_LIST {
            return Err(AgentError::bad(format!(
                "list {}: more than {MAX_LIST} entries; use a smaller depth",
                dir.display()
            )));
        }
        let Ok(st) = stat_of(&p) else { continue };
        let is_dir = st.kind == FileKind::Dir;
        out.push(st);
        if is_dir && depth > 1 {
            // Unreadable subdirectories are listed but not entered.
            if let Err(e) = walk(&p, depth - 1, out) {
                if e.code == "invalid_argument" {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

async fn list(Query(q): Query<PathQuery>) -> Result<Json<Vec<FileStat>>, AgentError> {
    let path = check(&q.path)?;
    let depth = q.depth.unwrap_or(1);
    if depth == 0 || depth > 64 {
        return Err(AgentError::bad("depth must be between 1 and 64"));
    }
    blocking(move || {
        let mut out = vec![];
        walk(&path, depth, &mut out)?;
        Ok(out)
    })
    .await
    .map(Json)
}

async fn mkdir(body: bytes::Bytes) -> Result<Json<FileStat>, AgentError> {
    let r: PathRequest = crate::server::parse(&body)?;
    let path = check(&r.path)?;
    check_mode(r.mode)?;
    blocking(move || {
        make_dirs(&path, owner(r.user.as_deref())?)?;
        if let Some(m) = r.mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                .map_err(|e| io_err("chmod", &path, e))?;
        }
        stat_of(&path).map_err(|e| io_err("stat", &path, e))
    })
    .await
    .map(Json)
}

async fn remove(body: bytes::Bytes) -> Result<Json<serde_json::Value>, AgentError> {
    let r: RemoveRequest = crate::server::parse(&body)?;
    let path = check(&r.path)?;
    if path == Path::new("/") {
        return Err(AgentError::bad("refusing to remove /"));
    }
    blocking(move || {
        let m = std::fs::symlink_metadata(&path).map_err(|e| io_err("remove", &path, e))?;
        let res = if m.is_dir() {
            if r.recursive {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_dir(&path)
            }
        } else {
            std::fs::remove_file(&path)
        };
        res.map_err(|e| io_err("remove", &path, e))?;
        Ok(Json(serde_json::json!({})))
    })
    .await
}

async fn rename(body: bytes::Bytes) -> Result<Json<FileStat>, AgentError> {
    let r: RenameRequest = crate::server::parse(&body)?;
    let (from, to) = (check(&r.from)?, check(&r.to)?);
    if from == Path::new("/") || to == Path::new("/") {
        return Err(AgentError::bad("refusing to rename / or onto it"));
    }
    blocking(move || {
        std::fs::rename(&from, &to).map_err(|e| io_err("rename", &from, e))?;
        stat_of(&to).map_err(|e| io_err("stat", &to, e))
    })
    .await
    .map(Json)
}

async fn chmod(body: bytes::Bytes) -> Result<Json<FileStat>, AgentError> {
    let r: ChmodRequest = crate::server::parse(&body)?;
    let path = check(&r.path)?;
    check_mode(Some(r.mode))?;
    blocking(move || {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(r.mode))
            .map_err(|e| io_err("chmod", &path, e))?;
        stat_of(&path).map_err(|e| io_err("stat", &path, e))
    })
    .await
    .map(Json)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn upload_names_are_recognised_and_nothing_else() {
        assert!(super::is_upload(OsStr::new(&super::upload_name("f.txt", 0x1f))));
        assert!(!super::is_upload(OsStr::new("f.txt")));
        assert!(!super::is_upload(OsStr::new(".f.txt.spinup-")));
        assert!(!super::is_upload(OsStr::new(".f.txt.spinup-xyz")));
        assert!(!super::is_upload(OsStr::new("f.txt.spinup-12")));
    }
}
