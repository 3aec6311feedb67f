//! The process table: spawning, reaping, output fan-out and re-attach.
//!
//! PID 1 must reap every child, including orphans it never started, so the
//! agent never uses a per-child `wait`. One reaper calls `waitpid(-1)` under
//! the table lock, and spawning happens under the same lock, so an exit can
//! never be reaped before its process is in the table.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use spinup_protocol::{ExecRequest, ExitStatus, Frame, ProcessInfo, PtySize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::pty;

/// Output kept per process for re-attach (and for late subscribers).
const REPLAY_BYTES: usize = 1 << 20;
/// Exited processes kept listable.
const KEEP_EXITED: usize = 64;
/// How long output may keep flowing after the process itself exited
/// (a grandchild holding the pipe must not hold the exit hostage).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Default)]
pub struct Table {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
    exited: Mutex<VecDeque<u32>>,
    /// Environment the host gave for every process started from now on
    /// (env-mode secrets, proxy placeholders, CA bundle paths); never in
    /// PID 1's own environment.
    pub extra_env: Mutex<std::collections::BTreeMap<String, String>>,
}

enum StdinMsg {
    Data(Bytes),
    Close,
}

#[derive(Default)]
struct OutState {
    buf: VecDeque<Frame>,
    buf_bytes: usize,
    subs: Vec<mpsc::Sender<Frame>>,
    finished: Option<ExitStatus>,
}

pub struct Proc {
    pub pid: u32,
    pub argv: Vec<String>,
    pub background: bool,
    pty: Option<Arc<pty::Master>>,
    started_at_ms: i64,
    stdin: Mutex<Option<mpsc::UnboundedSender<StdinMsg>>>,
    out: Mutex<OutState>,
    exit_tx: Mutex<Option<oneshot::Sender<WaitStatus>>>,
}

/// Why a process did not start.
pub enum SpawnError {
    /// The command could not be executed: shell-style exit code + message.
    Exec { exit_code: i32, message: String },
    /// The request itself is wrong (unknown user, missing cwd).
    Invalid(String),
}

pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) name: String,
    pub(crate) home: String,
    pub(crate) groups: Vec<u32>,
}

/// Resolve `name`, `uid` or `uid:gid` against the guest's own /etc files.
/// (Exec, file writes, mkdir and secrets all resolve their `user` here.)
pub(crate) fn resolve_user(spec: Option<&str>) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_user_in(spec.unwrap_or("root"), &passwd, &group)
}

/// [`resolve_user`] against the given passwd and group file contents.
fn resolve_user_in(spec: &str, passwd: &str, groups: &str) -> Result<User, String> {
    let entries: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 7).collect();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let found = entries.iter().find(|f| f[0] == user_part || (user_part.parse::<u32>().is_ok() && f[2] == user_part));
    let mut user = match (found, user_part.parse::<u32>()) {
        (Some(f), _) => User {
            uid: f[2].parse().map_err(|_| format!("bad uid for user {user_part} in /etc/passwd"))?,
            gid: f[3].parse().map_err(|_| format!("bad gid for user {user_part} in /etc/passwd"))?,
            name: f[0].to_string(),
            home: f[5].to_string(),
            groups: vec![],
        },
        (None, Ok(uid)) => User { uid, gid: uid, name: uid.to_string(), home: "/".into(), groups: vec![] },
        // root is uid 0 with or without an /etc/passwd that says so (a
        // bare busybox image has none), as in runc: the default user
        // always resolves.
        (None, Err(_)) if user_part == "root" => {
            User { uid: 0, gid: 0, name: "root".into(), home: "/".into(), groups: vec![] }
        }
        (None, Err(_)) => return Err(format!("user '{user_part}' does not exist in the sandbox's /etc/passwd")),
    };
    if let Some(g) = group_part {
        user.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                group_id(g, groups).ok_or_else(|| format!("group '{g}' does not exist in the sandbox's /etc/group"))?
            }
        };
    }
    for l in groups.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[3].split(',').any(|m| m == user.name) {
            if let Ok(gid) = f[2].parse() {
                user.groups.push(gid);
            }
        }
    }
    user.groups.push(user.gid);
    Ok(user)
}

fn group_id(name: &str, groups: &str) -> Option<u32> {
    groups.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 3 && f[0] == name)?[2].parse().ok()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Table {
    /// Start a process. Returns it together with the task that supervises it.
    pub fn spawn(self: &Arc<Self>, req: &ExecRequest) -> Result<Arc<Proc>, SpawnError> {
        let argv = req.effective_argv();
        if argv[0].is_empty() {
            return Err(SpawnError::Invalid("empty command".into()));
        }
        let user = resolve_user(req.user.as_deref()).map_err(SpawnError::Invalid)?;
        let cwd = req.cwd.clone().unwrap_or_else(|| {
            if std::path::Path::new(&user.home).is_dir() {
                user.home.clone()
            } else {
                "/".into()
            }
        });
        if !std::path::Path::new(&cwd).is_dir() {
            return Err(SpawnError::Invalid(format!("working directory '{cwd}' does not exist in the sandbox")));
        }

        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(&cwd).env_clear();
        cmd.env("PATH", DEFAULT_PATH).env("HOME", &user.home).env("USER", &user.name).env("LOGNAME", &user.name);
        if let Ok(h) = nix::unistd::gethostname() {
            cmd.env("HOSTNAME", h);
        }
        if req.pty.is_some() {
            cmd.env("TERM", "xterm-256color");
        }
        // The host's extra environment first, so a request can override a
        // placeholder (never the other way round).
        cmd.envs(self.extra_env.lock().unwrap().iter());
        cmd.envs(&req.env);

        let (uid, gid, groups) = (user.uid, user.gid, user.groups.clone());
        let pty_pair = match req.pty {
            Some(size) => {
                Some(pty::Master::open(size).map_err(|e| SpawnError::Invalid(format!("cannot open a pty: {e}")))?)
            }
            None => None,
        };
        let is_pty = pty_pair.is_some();
        if let Some((_, slave)) = &pty_pair {
            let s = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            let (i, o, e) = (s(slave), s(slave), s(slave));
            let map = |r: io::Result<Stdio>| r.map_err(|e| SpawnError::Invalid(format!("pty: {e}")));
            cmd.stdin(map(i)?).stdout(map(o)?).stderr(map(e)?);
        } else {
            cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.process_group(0);
        }
        // The agent already runs as root with groups [0]: a root exec needs
        // no pre-exec hook, which lets std use posix_spawn (vfork-like,
        // measurably faster than fork on the exec hot path).
        let already_root = uid == 0 && gid == 0 && groups.iter().all(|g| *g == 0) && !is_pty;
        if !already_root {
            // SAFETY: only async-signal-safe calls (setsid, ioctl, setgroups,
            // setgid, setuid) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if is_pty {
                        if libc::setsid() < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }

        let (exit_tx, exit_rx) = oneshot::channel();
        // Hold the table lock across fork/exec: the reaper cannot steal the
        // exit status of a process that is not in the table yet.
        let mut procs = self.procs.lock().unwrap();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let (exit_code, what) = match e.kind() {
                    io::ErrorKind::NotFound => (127, "command not found"),
                    io::ErrorKind::PermissionDenied => (126, "permission denied"),
                    _ => (126, "cannot execute"),
                };
                return Err(SpawnError::Exec { exit_code, message: format!("spinup: {}: {what} ({e})", argv[0]) });
            }
        };
        let pid = child.id();
        let (pty_master, stdin_tx) = match pty_pair {
            Some((m, _slave)) => {
                // The slave closes here; only the child holds it now, so the
                // master sees EOF (EIO) when the child's session ends.
                let m = Arc::new(m);
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(pty_stdin(m.clone(), rx));
                (Some(m), Some(tx))
            }
            None => {
                let tx = child.stdin.take().and_then(|s| {
                    let w = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(s)).ok()?;
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(pipe_stdin(w, rx));
                    Some(tx)
                });
                (None, tx)
            }
        };
        let proc = Arc::new(Proc {
            pid,
            argv,
            background: req.background,
            pty: pty_master.clone(),
            started_at_ms: now_ms(),
            stdin: Mutex::new(stdin_tx),
            out: Mutex::new(OutState::default()),
            exit_tx: Mutex::new(Some(exit_tx)),
        });
        procs.insert(pid, proc.clone());
        drop(procs);

        let mut readers = vec![];
        if let Some(m) = pty_master {
            let p = proc.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = m.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    p.publish(Frame::Stdout(Bytes::copy_from_slice(&buf[..n]))).await;
                }
            }));
        } else {
            if let Some(o) = child.stdout.take() {
                readers.push(tokio::spawn(pipe_reader(proc.clone(), OwnedFd::from(o), false)));
            }
            if let Some(e) = child.stderr.take() {
                readers.push(tokio::spawn(pipe_reader(proc.clone(), OwnedFd::from(e), true)));
            }
        }
        // `child` is dropped without waiting: the reaper owns exit statuses.
        drop(child);
        tokio::spawn(supervise(
            self.clone(),
            proc.clone(),
            exit_rx,
            readers,
            req.timeout_ms.map(Duration::from_millis),
        ));
        Ok(proc)
    }

    /// Reap every exited child; hand statuses of ours to their supervisors.
    pub fn reap(&self) {
        let procs = self.procs.lock().unwrap();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => {
                    let Some(pid) = st.pid() else { continue };
                    if let Some(p) = procs.get(&(pid.as_raw() as u32)) {
                        if let Some(tx) = p.exit_tx.lock().unwrap().take() {
                            let _ = tx.send(st);
                        }
                    }
                    // Anything else was an orphan re-parented to us: reaped.
                }
            }
        }
    }

    pub fn get(&self, pid: u32) -> Option<Arc<Proc>> {
        self.procs.lock().unwrap().get(&pid).cloned()
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<ProcessInfo> = self.procs.lock().unwrap().values().map(|p| p.info()).collect();
        v.sort_by_key(|p| p.started_at_ms);
        v
    }

    pub fn running(&self) -> usize {
        self.procs.lock().unwrap().values().filter(|p| p.is_running()).count()
    }

    pub fn signal_all(&self, sig: i32) {
        for p in self.procs.lock().unwrap().values() {
            p.signal(sig);
        }
    }

    fn retire(&self, pid: u32) {
        let mut exited = self.exited.lock().unwrap();
        exited.push_back(pid);
        while exited.len() > KEEP_EXITED {
            if let Some(old) = exited.pop_front() {
                let mut procs = self.procs.lock().unwrap();
                if procs.get(&old).is_some_and(|p| !p.is_running()) {
                    procs.remove(&old);
                }
            }
        }
    }
}

async fn pipe_reader(p: Arc<Proc>, fd: OwnedFd, stderr: bool) {
    let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else { return };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        buf.reserve(64 * 1024);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let chunk = buf.split().freeze();
                p.publish(if stderr { Frame::Stderr(chunk) } else { Frame::Stdout(chunk) }).await;
            }
        }
    }
}

async fn pipe_stdin(mut w: tokio::net::unix::pipe::Sender, mut rx: mpsc::UnboundedReceiver<StdinMsg>) {
    while let Some(m) = rx.recv().await {
        match m {
            StdinMsg::Data(b) => {
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
            StdinMsg::Close => break,
        }
    }
}

async fn pty_stdin(m: Arc<pty::Master>, mut rx: mpsc::UnboundedReceiver<StdinMsg>) {
    while let Some(StdinMsg::Data(b)) = rx.recv().await {
        if m.write_all(&b).await.is_err() {
            break;
        }
    }
}

async fn supervise(
    table: Arc<Table>,
    p: Arc<Proc>,
    exit_rx: oneshot::Receiver<WaitStatus>,
    mut readers: Vec<tokio::task::JoinHandle<()>>,
    timeout: Option<Duration>,
) {
    let mut timed_out = false;
    let status = match timeout {
        None => exit_rx.await.ok(),
        Some(t) => {
            tokio::pin!(exit_rx);
            tokio::select! {
                s = &mut exit_rx => s.ok(),
                _ = tokio::time::sleep(t) => {
                    timed_out = true;
                    p.signal(libc::SIGKILL);
                    exit_rx.await.ok()
                }
            }
        }
    };
    let drain = async {
        for r in readers.iter_mut() {
            let _ = r.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        for r in &readers {
            r.abort();
        }
    }
    let mut exit = match status {
        Some(WaitStatus::Exited(_, code)) => ExitStatus { exit_code: code, ..Default::default() },
        Some(WaitStatus::Signaled(_, sig, _)) => {
            ExitStatus { exit_code: 128 + sig as i32, signal: Some(sig as i32), ..Default::default() }
        }
        _ => ExitStatus { exit_code: 255, message: Some("exit status lost".into()), ..Default::default() },
    };
    exit.timed_out = timed_out;
    if timed_out {
        exit.message = Some(format!("killed after the {} ms timeout", timeout.unwrap_or_default().as_millis()));
    }
    p.finish(exit).await;
    table.retire(p.pid);
}

impl Proc {
    pub fn is_running(&self) -> bool {
        self.out.lock().unwrap().finished.is_none()
    }

    pub fn info(&self) -> ProcessInfo {
        let finished = self.out.lock().unwrap().finished.clone();
        ProcessInfo {
            pid: self.pid,
            argv: self.argv.clone(),
            background: self.background,
            pty: self.pty.is_some(),
            running: finished.is_none(),
            exit: finished,
            started_at_ms: self.started_at_ms,
        }
    }

    /// Signal the whole process group (each exec is its own group).
    pub fn signal(&self, sig: i32) {
        if self.is_running() {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = killpg(Pid::from_raw(self.pid as i32), s);
            }
        }
    }

    pub fn write_stdin(&self, data: Bytes) -> bool {
        self.stdin.lock().unwrap().as_ref().is_some_and(|tx| tx.send(StdinMsg::Data(data)).is_ok())
    }

    pub fn close_stdin(&self) {
        if let Some(tx) = self.stdin.lock().unwrap().take() {
            let _ = tx.send(StdinMsg::Close);
        }
    }

    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        match &self.pty {
            Some(m) => m.resize(size),
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "process has no terminal")),
        }
    }

    async fn publish(&self, f: Frame) {
        let subs = {
            let mut st = self.out.lock().unwrap();
            st.push(f.clone());
            st.subs.clone()
        };
        let mut dead = vec![];
        for s in &subs {
            if s.send(f.clone()).await.is_err() {
                dead.push(s.clone());
            }
        }
        if !dead.is_empty() {
            self.out.lock().unwrap().subs.retain(|s| !dead.iter().any(|d| d.same_channel(s)));
        }
    }

    async fn finish(&self, exit: ExitStatus) {
        let subs = {
            let mut st = self.out.lock().unwrap();
            st.push(Frame::Exit(exit.clone()));
            st.finished = Some(exit.clone());
            std::mem::take(&mut st.subs)
        };
        self.close_stdin();
        for s in subs {
            let _ = s.send(Frame::Exit(exit.clone())).await;
        }
    }

    /// Replay of buffered output (ending in `Exit` if finished) and, while
    /// running, a receiver for everything published afterwards.
    pub fn subscribe(&self) -> (Vec<Frame>, Option<mpsc::Receiver<Frame>>) {
        let mut st = self.out.lock().unwrap();
        let replay: Vec<Frame> = st.buf.iter().cloned().collect();
        if st.finished.is_some() {
            return (replay, None);
        }
        let (tx, rx) = mpsc::channel(64);
        st.subs.push(tx);
        (replay, Some(rx))
    }
}

impl OutState {
    fn push(&mut self, f: Frame) {
        let n = frame_len(&f);
        self.buf.push_back(f);
        self.buf_bytes += n;
        while self.buf_bytes > REPLAY_BYTES && self.buf.len() > 1 {
            if let Some(old) = self.buf.pop_front() {
                self.buf_bytes -= frame_len(&old);
            }
        }
    }
}

fn frame_len(f: &Frame) -> usize {
    match f {
        Frame::Stdout(b) | Frame::Stderr(b) => b.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_user_in;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\nbroken:x:zz:1::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:user,other\nuser:x:1000:\nstaff:x:50:\n";

    fn ids(spec: &str) -> Result<(u32, u32, Vec<u32>), String> {
        resolve_user_in(spec, PASSWD, GROUP).map(|u| (u.uid, u.gid, u.groups))
    }

    #[test]
    fn names_and_numbers_resolve_against_the_guest_files() {
        assert_eq!(ids("root"), Ok((0, 0, vec![0])));
        assert_eq!(ids("user"), Ok((1000, 1000, vec![100, 1000])));
        let u = resolve_user_in("user", PASSWD, GROUP).unwrap();
        assert_eq!((u.name.as_str(), u.home.as_str()), ("user", "/home/user"));
        // A uid in passwd is that user; one not in it is itself, gid = uid.
        assert_eq!(ids("1000"), Ok((1000, 1000, vec![100, 1000])));
        assert_eq!(ids("4242"), Ok((4242, 4242, vec![4242])));
        // An explicit group, by number or by name.
        assert_eq!(ids("1000:1000"), Ok((1000, 1000, vec![100, 1000])));
        assert_eq!(ids("4242:7"), Ok((4242, 7, vec![7])));
        assert_eq!(ids("user:staff"), Ok((1000, 50, vec![100, 50])));
    }

    /// An image without /etc/passwd (or without root in it) still runs as
    /// root, the default user; other names stay errors.
    #[test]
    fn root_resolves_without_a_passwd_entry() {
        let u = resolve_user_in("root", "", "").unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_str(), u.home.as_str()), (0, 0, "root", "/"));
        assert!(resolve_user_in("user", "", "").is_err());
    }

    #[test]
    fn unknown_users_and_groups_are_clear_errors() {
        let e = ids("nosuchuser").unwrap_err();
        assert!(e.contains("user 'nosuchuser' does not exist"), "{e}");
        let e = ids("user:nosuchgroup").unwrap_err();
        assert!(e.contains("group 'nosuchgroup' does not exist"), "{e}");
        assert!(ids("broken").unwrap_err().contains("bad uid"));
    }
}
