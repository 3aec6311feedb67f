//! Layers on disk: exporting a sandbox's overlayfs upper dir as an OCI
//! layer tar (whiteouts as `.wh.` entries), turning those entries back into
//! overlayfs whiteouts when a layer is unpacked, and comparing two stacks of
//! layer directories the way overlayfs would merge them.
//!
//! Everything under a layer may have come from a guest: no function here
//! follows a symlink found inside a layer, and files are opened with
//! `O_NOFOLLOW`.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// OCI whiteout prefix: `.wh.NAME` deletes NAME from the layers below.
pub const WHITEOUT: &str = ".wh.";
/// OCI opaque marker: the directory hides everything below it.
pub const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Paths that are a sandbox's identity or its runtime's mount points, never
/// part of its state: left out of snapshots and diffs.
pub const EXCLUDED: [&str; 4] = ["etc/machine-id", "run/spinup", "run/secrets", "etc/resolv.conf"];

pub fn excluded(rel: &Path) -> bool {
    EXCLUDED.iter().any(|x| Path::new(x) == rel)
}

/// An overlayfs whiteout: a 0/0 character device.
pub fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn is_opaque(p: &Path) -> bool {
    let (Ok(cp), Ok(name)) = (cpath(p), CString::new(OPAQUE_XATTR)) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(cp.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

fn set_opaque(p: &Path) -> io::Result<()> {
    let cp = cpath(p)?;
    let name = CString::new(OPAQUE_XATTR).unwrap();
    // SAFETY: valid C strings and a one-byte value.
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open a regular file inside a layer without following a symlink, and make
/// sure it is the inode `m` describes.
fn open_exact(p: &Path, m: &Metadata) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p)?;
    let fm = f.metadata()?;
    if fm.ino() != m.ino() || fm.dev() != m.dev() || !fm.is_file() {
        return Err(io::Error::other(format!("{} changed while being read", p.display())));
    }
    Ok(f)
}

/// `rel` as plain components (no root, `.` or `..`), or an error.
pub fn normal(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("path {} leaves the layer", rel.display()))),
        })
        .collect()
}

/// A header from metadata, without access and change times: the same tree
/// always gives the same tar (a copy keeps mtimes but gets new ctimes).
fn header(m: &Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(m, tar::HeaderMode::Complete);
    if let Some(g) = h.as_gnu_mut() {
        g.set_atime(0);
        g.set_ctime(0);
    }
    h
}

/// Hashes and counts what is written, keeps nothing.
#[derive(Default)]
struct HashSink {
    h: sha2::Sha256,
    n: u64,
}

impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(&mut self.h, b);
        self.n += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies what is read through it into `w`.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Copy an overlayfs upper dir into `staging` (a new layer directory) in
/// one pass, and return the sha256 and length of its OCI layer tar (the
/// tar `export_upper` of either directory writes), without writing the tar.
pub fn snapshot_upper(upper: &Path, staging: &Path) -> io::Result<(String, u64)> {
    let mut b = tar::Builder::new(HashSink::default());
    b.follow_symlinks(false);
    let mut dirs = vec![];
    walk_upper(&mut b, upper, Path::new(""), Some(staging), &mut dirs)?;
    // Directories last, deepest first: creating their entries moved their times.
    for (p, m) in dirs.iter().rev() {
        own(p, m)?;
    }
    let sink = b.into_inner()?;
    Ok((hex::encode(sha2::Digest::finalize(sink.h)), sink.n))
}

/// Owner, permissions and mtime of `m` on `p` (never following a symlink).
fn own(p: &Path, m: &Metadata) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use nix::unistd::{fchownat, Gid, Uid};
    fchownat(None, p, Some(Uid::from_raw(m.uid())), Some(Gid::from_raw(m.gid())), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)?;
    if !m.file_type().is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777))?;
    }
    let mtime = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(None, p, &mtime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

fn empty_file_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    h
}

/// Unpack a layer tar into `dir`: OCI whiteouts become overlayfs whiteouts
/// (0/0 character devices, opaque xattrs) so stacked layers delete; device
/// nodes are skipped (every sandbox gets its own /dev), fifos unless
/// `keep_fifos`; the tar crate refuses entries that would land outside `dir`
/// (`..`, absolute paths, and parents that are symlinks leading out).
/// `unpacked` is told the count after each entry.
pub fn unpack(dir: &Path, reader: impl Read, keep_fifos: bool, mut unpacked: impl FnMut(u64)) -> io::Result<()> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut n = 0u64;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let t = entry.header().entry_type();
        if t.is_block_special() || t.is_character_special() || (t.is_fifo() && !keep_fifos) {
            continue;
        }
        let path = entry.path()?.into_owned();
        if apply_whiteout(dir, &path)? {
            continue;
        }
        entry.unpack_in(dir)?;
        n += 1;
        unpacked(n);
    }
    Ok(())
}

/// Write an overlayfs upper dir as an OCI layer tar. The caller keeps the
/// sandbox frozen meanwhile.
pub fn export_upper<W: Write>(upper: &Path, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    walk_upper(&mut b, upper, Path::new(""), None, &mut vec![])?;
    b.into_inner()
}

fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Write `root/rel`'s entries to the tar; with `mirror`, also recreate
/// them there (directories are listed in `dirs` for their metadata).
fn walk_upper<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    mirror: Option<&Path>,
    dirs: &mut Vec<(PathBuf, Metadata)>,
) -> io::Result<()> {
    for name in sorted_names(&root.join(rel))? {
        let r = rel.join(&name);
        if excluded(&r) {
            continue;
        }
        let p = root.join(&r);
        let to = mirror.map(|m| m.join(&r));
        let m = fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        if is_whiteout(&m) {
            let mut wh = OsString::from(WHITEOUT);
            wh.push(&name);
            b.append_data(&mut empty_file_header(), rel.join(wh), io::empty())?;
            if let Some(t) = &to {
                nix::sys::stat::mknod(t, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                    .map_err(io::Error::from)?;
            }
        } else if ft.is_dir() {
            let mut h = header(&m);
            h.set_size(0);
            b.append_data(&mut h, &r, io::empty())?;
            if let Some(t) = &to {
                fs::create_dir(t)?;
                dirs.push((t.clone(), m.clone()));
            }
            if is_opaque(&p) {
                b.append_data(&mut empty_file_header(), r.join(OPAQUE), io::empty())?;
                if let Some(t) = &to {
                    set_opaque(t)?;
                }
            }
            walk_upper(b, root, &r, mirror, dirs)?;
        } else if ft.is_file() {
            let f = open_exact(&p, &m)?.take(m.len());
            match &to {
                Some(t) => {
                    let out = fs::OpenOptions::new().write(true).create_new(true).open(t)?;
                    let mut w = io::BufWriter::with_capacity(1 << 16, out);
                    b.append_data(&mut header(&m), &r, Tee { r: f, w: &mut w })?;
                    w.flush()?;
                    own(t, &m)?;
                }
                None => b.append_data(&mut header(&m), &r, f)?,
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&p)?;
            let mut h = header(&m);
            h.set_size(0);
            b.append_link(&mut h, &r, &target)?;
            if let Some(t) = &to {
                std::os::unix::fs::symlink(&target, t)?;
                own(t, &m)?;
            }
        } else if ft.is_fifo() {
            let mut h = header(&m);
            h.set_size(0);
            b.append_data(&mut h, &r, io::empty())?;
            if let Some(t) = &to {
                nix::unistd::mkfifo(t, nix::sys::stat::Mode::empty()).map_err(io::Error::from)?;
                own(t, &m)?;
            }
        }
        // Sockets and device nodes are not state: every sandbox gets its own /dev.
    }
    Ok(())
}

/// Create the directories of `rel` under `root`, refusing to pass through
/// anything that is not a real directory (a symlink in particular).
pub fn safe_dirs(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in normal(rel)? {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a directory in the layer", p.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&p)?,
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

/// Apply an OCI whiteout entry `rel` (its file name starts with `.wh.`)
/// inside the layer being unpacked at `root`. Returns false when `rel` is
/// not a whiteout.
pub fn apply_whiteout(root: &Path, rel: &Path) -> io::Result<bool> {
    let Some(name) = rel.file_name() else { return Ok(false) };
    let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) else { return Ok(false) };
    let parent = safe_dirs(root, rel.parent().unwrap_or(Path::new("")))?;
    if name == OPAQUE {
        set_opaque(&parent)?;
        return Ok(true);
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad whiteout {}", rel.display())));
    }
    let target = parent.join(OsStr::from_bytes(hidden));
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&target)?,
        Ok(_) => fs::remove_file(&target)?,
        Err(_) => {}
    }
    nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
        .map_err(io::Error::from)?;
    Ok(true)
}

/// Where `rel` resolves in a stack of layer directories (top first), as
/// overlayfs merges them: whiteouts delete, opaque directories hide what is
/// below, and a non-directory hides everything under its name. Symlinks are
/// never followed.
pub fn lookup(stack: &[PathBuf], rel: &Path) -> Option<(PathBuf, Metadata)> {
    let comps = normal(rel).ok()?;
    if comps.is_empty() {
        return None;
    }
    for layer in stack {
        let mut p = layer.clone();
        let mut hidden_below = false;
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Err(_) => {
                    if hidden_below {
                        return None;
                    }
                    break;
                }
                Ok(m) if is_whiteout(&m) => return None,
                Ok(m) if i + 1 == comps.len() => return Some((p, m)),
                Ok(m) if m.is_dir() => hidden_below |= is_opaque(&p),
                Ok(_) => return None,
            }
        }
    }
    None
}

/// Every path in the merged view of `stack` (top first) under `rel`.
pub fn merged_paths(stack: &[PathBuf], rel: &Path, out: &mut BTreeSet<PathBuf>) {
    let mut names = BTreeSet::new();
    for layer in stack {
        let d = layer.join(rel);
        if fs::symlink_metadata(&d).map(|m| m.is_dir()).unwrap_or(false) {
            if let Ok(rd) = fs::read_dir(&d) {
                names.extend(rd.flatten().map(|e| e.file_name()));
            }
        }
    }
    for name in names {
        let r = rel.join(&name);
        if let Some((_, m)) = lookup(stack, &r) {
            let is_dir = m.is_dir();
            out.insert(r.clone());
            if is_dir {
                merged_paths(stack, &r, out);
            }
        }
    }
}

/// The paths one layer touches: its entries, what its whiteouts delete,
/// and for an opaque directory everything `below` had under it.
pub fn touched_paths(layer: &Path, rel: &Path, below: &[PathBuf], out: &mut BTreeSet<PathBuf>) {
    let Ok(names) = sorted_names(&layer.join(rel)) else { return };
    for name in names {
        let r = rel.join(&name);
        let Ok(m) = fs::symlink_metadata(layer.join(&r)) else { continue };
        out.insert(r.clone());
        if m.is_dir() {
            if is_opaque(&layer.join(&r)) {
                merged_paths(below, &r, out);
            }
            touched_paths(layer, &r, below, out);
        } else if is_whiteout(&m) && lookup(below, &r).is_some_and(|(_, m)| m.is_dir()) {
            merged_paths(below, &r, out);
        }
    }
}

pub use spinup_api::Change;

fn type_name(m: &Metadata) -> &'static str {
    let ft = m.file_type();
    if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "other"
    }
}

fn same_content(a: &(PathBuf, Metadata), b: &(PathBuf, Metadata)) -> io::Result<bool> {
    let (fa, fb) = (open_exact(&a.0, &a.1)?, open_exact(&b.0, &b.1)?);
    let (mut ra, mut rb) = (io::BufReader::with_capacity(1 << 16, fa), io::BufReader::with_capacity(1 << 16, fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut ra, &mut ba)?;
        let k = read_full(&mut rb, &mut bb)?;
        if n != k || ba[..n] != bb[..k] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether two entries differ in what a user would call content: type,
/// permissions, owner, bytes or link target (a directory's times do not count).
fn differs(a: &(PathBuf, Metadata), b: &(PathBuf, Metadata)) -> bool {
    let (ma, mb) = (&a.1, &b.1);
    if type_name(ma) != type_name(mb)
        || ma.mode() & 0o7777 != mb.mode() & 0o7777
        || ma.uid() != mb.uid()
        || ma.gid() != mb.gid()
    {
        return true;
    }
    match type_name(ma) {
        "file" => ma.len() != mb.len() || !same_content(a, b).unwrap_or(false),
        "symlink" => fs::read_link(&a.0).ok() != fs::read_link(&b.0).ok(),
        _ => false,
    }
}

/// Compare `paths` between two stacks (top first). A deleted directory is
/// listed once, not with everything under it.
pub fn diff(before: &[PathBuf], after: &[PathBuf], paths: &BTreeSet<PathBuf>) -> Vec<Change> {
    let mut out = vec![];
    let mut deleted_dirs: Vec<PathBuf> = vec![];
    for rel in paths {
        if excluded(rel) {
            continue;
        }
        let (b, a) = (lookup(before, rel), lookup(after, rel));
        let path = format!("/{}", rel.display());
        match (b, a) {
            (None, None) => {}
            (None, Some(a)) => {
                out.push(Change { path, kind: "added".into(), file_type: type_name(&a.1).into(), size: a.1.len() })
            }
            (Some(b), None) => {
                if deleted_dirs.iter().any(|d| rel.starts_with(d)) {
                    continue;
                }
                if b.1.is_dir() {
                    deleted_dirs.push(rel.clone());
                }
                out.push(Change { path, kind: "deleted".into(), file_type: type_name(&b.1).into(), size: b.1.len() })
            }
            (Some(b), Some(a)) => {
                if differs(&b, &a) {
                    out.push(Change {
                        path,
                        kind: "modified".into(),
                        file_type: type_name(&a.1).into(),
                        size: a.1.len(),
                    })
                }
            }
        }
    }
    out
}

/// Up to `limit` bytes of a regular file in a stack, for showing one path.
pub fn read_entry(stack: &[PathBuf], rel: &Path, limit: u64) -> Option<Vec<u8>> {
    let e = lookup(stack, rel)?;
    if !e.1.is_file() {
        return None;
    }
    let mut out = vec![];
    open_exact(&e.0, &e.1).ok()?.take(limit).read_to_end(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spinup-layers-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lookup_follows_overlay_rules_without_following_symlinks() {
        let root = tmpdir("lookup");
        let (low, up) = (root.join("low"), root.join("up"));
        fs::create_dir_all(low.join("a/b")).unwrap();
        fs::write(low.join("a/b/f"), "x").unwrap();
        fs::write(low.join("a/g"), "y").unwrap();
        fs::create_dir_all(up.join("a")).unwrap();
        // A symlink in the upper layer pointing out must never be followed.
        std::os::unix::fs::symlink("/etc", up.join("link")).unwrap();
        let stack = vec![up.clone(), low.clone()];
        assert!(lookup(&stack, Path::new("a/b/f")).is_some());
        assert!(lookup(&stack, Path::new("link/passwd")).is_none());
        assert!(lookup(&stack, Path::new("../etc/passwd")).is_none());
        apply_whiteout(&up, Path::new("a/.wh.g")).unwrap();
        assert!(lookup(&stack, Path::new("a/g")).is_none());
        let mut paths = BTreeSet::new();
        merged_paths(&stack, Path::new(""), &mut paths);
        assert!(paths.contains(Path::new("a/b/f")) && !paths.contains(Path::new("a/g")));
        if apply_whiteout(&up, Path::new("a/.wh..wh..opq")).is_ok() {
            assert!(lookup(&stack, Path::new("a/b/f")).is_none(), "opaque dir hides the lower one");
        }
        assert!(apply_whiteout(&up, Path::new("link/.wh.passwd")).is_err(), "never through a symlink");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn export_then_diff_reports_added_modified_deleted() {
        let root = tmpdir("diff");
        let (low, up) = (root.join("low"), root.join("up"));
        fs::create_dir_all(low.join("etc")).unwrap();
        fs::write(low.join("etc/keep"), "same").unwrap();
        fs::write(low.join("etc/change"), "old").unwrap();
        fs::write(low.join("etc/gone"), "bye").unwrap();
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::write(up.join("etc/change"), "new!").unwrap();
        fs::write(up.join("etc/keep"), "same").unwrap(); // copied up, unchanged
        fs::write(up.join("new"), "hello").unwrap();
        nix::sys::stat::mknod(&up.join("etc/gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .unwrap();
        // Round trip through the OCI tar form into a fresh layer dir.
        let tar = export_upper(&up, vec![]).unwrap();
        let back = root.join("back");
        fs::create_dir_all(&back).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().into_owned();
            if !apply_whiteout(&back, &p).unwrap() {
                e.unpack_in(&back).unwrap();
            }
        }
        // One pass into a layer dir gives the tar's digest, and the layer
        // dir exports to the very same tar.
        let copy = root.join("copy");
        fs::create_dir_all(&copy).unwrap();
        let (digest, len) = snapshot_upper(&up, &copy).unwrap();
        let again = export_upper(&copy, vec![]).unwrap();
        use sha2::Digest;
        assert_eq!((digest.clone(), len), (hex::encode(sha2::Sha256::digest(&tar)), tar.len() as u64));
        assert_eq!(hex::encode(sha2::Sha256::digest(&again)), digest);
        let mut paths = BTreeSet::new();
        touched_paths(&back, Path::new(""), std::slice::from_ref(&low), &mut paths);
        let changes = diff(std::slice::from_ref(&low), &[back.clone(), low.clone()], &paths);
        let got: Vec<(String, &str, u64)> = changes.iter().map(|c| (c.path.clone(), c.kind.as_str(), c.size)).collect();
        assert_eq!(
            got,
            vec![
                ("/etc/change".to_string(), "modified", 4),
                ("/etc/gone".to_string(), "deleted", 3),
                ("/new".to_string(), "added", 5)
            ]
        );
        let _ = fs::remove_dir_all(&root);
    }
}
