//! Test harness: real daemons (the built `spinup` binary) on private data
//! dirs and sockets, and a small API client. Tests run as root against the
//! real OCI runtime, overlayfs and cgroups.
#![allow(dead_code, reason = "each test binary uses its own part of the harness")]

pub mod testnet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use spinup_protocol::{ExecRequest, Frame};
use tokio_tungstenite::tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_spinup");
/// Shared by every test daemon (and kept between runs).
pub const KERNEL_CACHE: &str = "/var/tmp/spinup-test-kernel";
/// Builds of the Debian recipes, shared the same way (a week at most).
pub const RECIPE_CACHE: &str = "/var/tmp/spinup-test-recipes";

/// One test module per driver (`container::…`, `gvisor::…`), each test
/// body run with that driver selected.
#[macro_export]
macro_rules! for_driver {
    ($driver:ident: $($test:ident),* $(,)?) => {
        mod $driver {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::common::set_driver(stringify!($driver));
                    super::$test().await
                }
            )*
        }
    };
}

/// Each test once per driver: `container::…`, `gvisor::…`, `microvm::…`.
#[macro_export]
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        for_driver!(container: $($test),*);
        for_driver!(gvisor: $($test),*);
        for_driver!(microvm: $($test),*);
    };
}

thread_local! {
    static DRIVER: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Select the driver under test for this test (its thread).
pub fn set_driver(d: &str) {
    DRIVER.with(|c| *c.borrow_mut() = Some(d.to_string()));
}

/// The driver under test: the suites run once per driver.
pub fn driver() -> String {
    DRIVER
        .with(|c| c.borrow().clone())
        .or_else(|| std::env::var("SPINUP_TEST_DRIVER").ok())
        .unwrap_or_else(|| "container".into())
}

pub struct Daemon {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Mutex<Option<Child>>,
    extra: Vec<String>,
    envs: Vec<(String, String)>,
    /// Its dir, data and host objects are ours to remove (not `attach`).
    owned: bool,
    /// The data dir is a tmpfs (`start_on_tmpfs`).
    tmpfs: bool,
}

/// Removes what the daemon made when the test ends, however it ends.
impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Spawn from a thread that never exits, so PDEATHSIG fires only when the
/// whole test process ends (a daemon must not outlive its test run).
fn spawn_daemon(dir: &Path, sock: &Path, extra: &[String], envs: &[(String, String)]) -> Child {
    let (tx, rx) = std::sync::mpsc::channel();
    let (dir, sock) = (dir.to_path_buf(), sock.to_path_buf());
    let (extra, envs) = (extra.to_vec(), envs.to_vec());
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&sock)
            .arg("--cgroup-parent")
            .arg(cgroup_parent(&dir))
            .args(&extra)
            .envs(envs)
            .env("SPINUP_LOG", "info")
            // The microVM guest kernel is downloaded once for all test daemons.
            .env("SPINUP_KERNEL_DIR", KERNEL_CACHE)
            // mmdebstrap runs once per recipe, not once per test daemon.
            .env("SPINUP_RECIPE_CACHE", RECIPE_CACHE)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tx.send(cmd.spawn().expect("spawning spinup serve")).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap()
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Self::start_with(name, &[], &[])
    }

    pub fn start_with(name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/spinup-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("spinup.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = spawn_daemon(&dir, &sock, &extra, &envs);
        let d = Daemon { child: Mutex::new(Some(child)), dir, sock, extra, envs, owned: true, tmpfs: false };
        d.wait_ready();
        d
    }

    /// A daemon whose data dir is a tmpfs of `mib` MiB (to run it out of
    /// space); `unmount` when done.
    pub fn start_on_tmpfs(name: &str, mib: u64) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/spinup-test-{name}-{}", std::process::id()));
        let _ = Command::new("umount").arg("-l").arg(dir.join("data")).status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs data dir");
        let sock = dir.join("spinup.sock");
        let child = spawn_daemon(&dir, &sock, &[], &[]);
        let d =
            Daemon { child: Mutex::new(Some(child)), dir, sock, extra: vec![], envs: vec![], owned: true, tmpfs: true };
        d.wait_ready();
        d
    }

    /// Stop it and unmount its tmpfs data dir (see `cleanup`).
    pub fn unmount(&self) {
        self.cleanup();
    }

    /// A client handle on a daemon someone else owns (no process control).
    pub fn attach(sock: PathBuf) -> Daemon {
        Daemon {
            dir: sock.parent().unwrap().to_path_buf(),
            sock,
            child: Mutex::new(None),
            extra: vec![],
            envs: vec![],
            owned: false,
            tmpfs: false,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            if let Some(c) = self.child().as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon exited ({st}): {}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child().as_ref().unwrap().id()
    }

    /// kill -9 the daemon (sandboxes keep running).
    pub fn kill9(&self) {
        let mut c = self.child();
        if let Some(mut ch) = c.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }

    pub fn restart(&self) {
        self.kill9();
        *self.child() = Some(spawn_daemon(&self.dir, &self.sock, &self.extra, &self.envs));
        self.wait_ready();
    }

    /// The daemon process (a test that panicked holding it poisons nothing).
    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alive(&self) -> bool {
        self.child().as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            && std::os::unix::net::UnixStream::connect(&self.sock).is_ok()
    }

    /// Leave the host as this daemon found it: its sandboxes removed
    /// through the API (a killed daemon is started again for that, so each
    /// goes the product's way), then the daemon stopped and its nftables
    /// table, cgroup parent and dir removed. What the product failed to
    /// remove stays for the suite's host check to report (a dir with a
    /// mount under it is kept, never recursed through). Never panics: it
    /// runs in `Drop` and at exit.
    pub fn cleanup(&self) {
        if !self.owned || !self.dir.exists() {
            return;
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon log tail ({}) ---", self.dir.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        if !self.alive() && self.data().join("state.db").exists() {
            self.kill9();
            *self.child() = Some(spawn_daemon(&self.dir, &self.sock, &self.extra, &self.envs));
            let deadline = Instant::now() + Duration::from_secs(60);
            // (A daemon that cannot start again, on a config the test broke,
            // exits: no need to wait it out.)
            let exited = || self.child().as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            while !self.alive() && !exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.alive() {
            let cli = |args: &[&str]| Command::new(BIN).args(args).env("SPINUP_HOST", &self.sock).output().ok();
            let ls = cli(&["ls", "--json"]);
            let ids: Vec<String> = ls
                .and_then(|ls| serde_json::from_slice::<Value>(&ls.stdout).ok())
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                match cli(&args) {
                    Some(out) if out.status.success() => {}
                    Some(out) => {
                        eprintln!(
                            "cleanup of {}: rm failed: {}",
                            self.dir.display(),
                            String::from_utf8_lossy(&out.stderr)
                        )
                    }
                    None => eprintln!("cleanup of {}: cannot run {BIN}", self.dir.display()),
                }
            }
        }
        self.kill9();
        if let Ok(pool) = std::fs::read_to_string(self.data().join("net-pool")) {
            let _ = Command::new("nft").args(["delete", "table", "inet", &format!("spinup_{}", pool.trim())]).output();
        }
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(self.data()).status();
        }
        let parent = cgroup_parent(&self.dir);
        let mut cgs = vec![PathBuf::from("/sys/fs/cgroup").join(&parent)];
        for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            cgs.push(e.path().join(&parent));
        }
        for cg in cgs.iter().filter(|c| c.is_dir()) {
            // Only the parent the test made: a sandbox cgroup left in it
            // keeps it (and the host check reports both).
            let _ = std::fs::remove_dir(cg);
        }
        let dir = format!("{}/", self.dir.display());
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(4).is_some_and(|mp| mp.starts_with(&dir)));
        if mounted {
            eprintln!("cleanup: {} keeps a mount; left for the host check", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub async fn raw(&self, method: &str, path: &str, body: Bytes) -> (u16, Bytes) {
        let s = tokio::net::UnixStream::connect(&self.sock).await.expect("connect daemon");
        let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(body))
            .unwrap();
        let resp = tx.send_request(req).await.expect("daemon request");
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// A GET whose answer streams (NDJSON): its status and the open body.
    /// Dropping the [`Lines`] closes the connection.
    pub async fn stream(&self, path: &str) -> (u16, Lines) {
        let s = tokio::net::UnixStream::connect(&self.sock).await.expect("connect daemon");
        let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s)).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .method("GET")
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tx.send_request(req).await.expect("daemon request");
        let status = resp.status().as_u16();
        (status, Lines { body: resp.into_body(), buf: vec![], conn })
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
        let (st, bytes) = self.raw(method, path, b).await;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (st, v)
    }

    /// Create a sandbox on the driver under test; `extra` is merged in.
    pub async fn create(&self, extra: Value) -> String {
        let mut body = json!({"env": "busybox", "driver": driver()});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let (st, v) = self.req("POST", "/v1/sandboxes", Some(body)).await;
        assert_eq!(st, 201, "create failed: {v}\n{}", self.log());
        assert_eq!(v["state"], "running");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn rm(&self, id: &str) {
        let (st, v) = self.req("DELETE", &format!("/v1/sandboxes/{id}?force=true"), None).await;
        assert_eq!(st, 204, "rm {id}: {v}");
    }

    pub async fn exec(&self, id: &str, req: Value) -> Value {
        let (st, v) = self.req("POST", &format!("/v1/sandboxes/{id}/exec"), Some(req)).await;
        assert_eq!(st, 200, "exec: {v}");
        v
    }

    /// Start a background process in `id` that counts up in /tmp/count
    /// (written atomically) every 0.1 s; returns its pid.
    pub async fn start_counter(&self, id: &str) -> u32 {
        let mut ws = self
            .ws_exec(
                id,
                ExecRequest {
                    cmd: Some("i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new && mv /tmp/count.new /tmp/count; sleep 0.1; done".into()),
                    background: true,
                    ..Default::default()
                },
            )
            .await;
        wait_started(&mut ws).await
    }

    /// Run a shell string; returns the exec result.
    pub async fn sh(&self, id: &str, cmd: &str) -> Value {
        self.exec(id, json!({"cmd": cmd})).await
    }

    /// Run a shell string that must succeed; returns its stdout.
    pub async fn ok(&self, id: &str, cmd: &str) -> String {
        let v = self.sh(id, cmd).await;
        assert_eq!(v["exit_code"], 0, "`{cmd}` failed: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    pub async fn ws(&self, path: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::UnixStream> {
        let s = tokio::net::UnixStream::connect(&self.sock).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://localhost{path}"), s).await.expect("websocket");
        ws
    }

    pub async fn ws_exec(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> tokio_tungstenite::WebSocketStream<tokio::net::UnixStream> {
        let mut ws = self.ws(&format!("/v1/sandboxes/{id}/exec/ws")).await;
        ws.send(Message::Binary(Frame::Start(req).encode())).await.unwrap();
        ws
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).env("SPINUP_HOST", &self.sock).output().unwrap()
    }
}

/// The lines of a streamed answer, as they come.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Lines {
    /// The next line as JSON; `None` when the stream ends, or nothing
    /// came for `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(
                    serde_json::from_slice(&line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(&line))),
                );
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The whole rest of the body (an error answer's JSON).
    pub async fn rest(mut self) -> Value {
        let mut all = std::mem::take(&mut self.buf);
        while let Some(Ok(f)) = self.body.frame().await {
            if let Ok(d) = f.into_data() {
                all.extend_from_slice(&d);
            }
        }
        serde_json::from_slice(&all).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&all).into()))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Next frame from a WebSocket, skipping control messages.
pub async fn next_frame(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("frame within 30 s")? {
            Ok(Message::Binary(b)) => return Some(Frame::decode(b).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The first frame of an exec stream must be `Started`; its pid.
pub async fn wait_started(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>) -> u32 {
    match next_frame(ws).await {
        Some(Frame::Started(s)) => s.pid,
        other => panic!("expected Started, got {other:?}"),
    }
}

/// Skip frames until the process's exit status.
pub async fn wait_exit(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
) -> spinup_protocol::ExitStatus {
    loop {
        match next_frame(ws).await {
            Some(Frame::Exit(e)) => return e,
            Some(_) => {}
            None => panic!("the stream ended without an exit status"),
        }
    }
}

/// Collect stdout until `needle` shows up (or the stream ends).
pub async fn read_until(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>, needle: &str) -> String {
    let mut out = String::new();
    while !out.contains(needle) {
        match next_frame(ws).await {
            Some(Frame::Stdout(b)) | Some(Frame::Stderr(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(Frame::Exit(e)) => panic!("exited ({e:?}) before '{needle}'; got: {out}"),
            Some(_) => {}
            None => panic!("stream ended before '{needle}'; got: {out}"),
        }
    }
    out
}

static SHARED: OnceLock<Daemon> = OnceLock::new();

extern "C" fn cleanup_shared() {
    if let Some(d) = SHARED.get() {
        d.cleanup();
    }
}

/// One daemon shared by the tests of this process that do not restart it;
/// cleaned up when the process exits (a static is never dropped).
pub fn shared() -> &'static Daemon {
    SHARED.get_or_init(|| {
        let d = Daemon::start("shared");
        // SAFETY: registers a plain function; it runs once, at exit.
        unsafe { libc::atexit(cleanup_shared) };
        d
    })
}

/// Poll until `f` is true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Each test daemon gets its own parent cgroup, so leak checks of one
/// never see another's sandboxes.
pub fn cgroup_parent(dir: &Path) -> String {
    format!("spinup-test/{}", dir.file_name().unwrap().to_string_lossy())
}

/// A sandbox's cgroup directory for `controller` on cgroup v1 or v2.
pub fn cgroup_dir(controller: &str, id: &str) -> Option<PathBuf> {
    let parent = cgroup_parent(&shared().dir);
    let v2 = PathBuf::from(format!("/sys/fs/cgroup/{parent}/{id}"));
    if v2.join("cgroup.controllers").exists() {
        return Some(v2);
    }
    [controller.to_string(), format!("{controller},cpuacct"), format!("cpu,{controller}")]
        .into_iter()
        .map(|c| PathBuf::from(format!("/sys/fs/cgroup/{c}/{parent}/{id}")))
        .find(|p| p.is_dir())
}

/// Everything a destroyed sandbox could leave behind, for the container
/// driver: mounts, cgroups, runtime state, sandbox dirs, agent processes.
pub fn leftovers(d: &Daemon) -> Vec<String> {
    let data = d.data();
    let data_s = data.to_string_lossy().to_string();
    let mut out = vec![];
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if let Some(mp) = l.split_whitespace().nth(4) {
            if mp.starts_with(&data_s) && mp != data_s {
                out.push(format!("mount {mp}"));
            }
        }
    }
    let parent = cgroup_parent(&d.dir);
    let mut cg_roots = vec![PathBuf::from("/sys/fs/cgroup").join(&parent)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        cg_roots.extend(rd.flatten().map(|e| e.path().join(&parent)));
    }
    let ids: Vec<String> = ["container", "gvisor", "microvm"]
        .iter()
        .flat_map(|drv| std::fs::read_dir(data.join(drv).join("sandboxes")).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for id in &ids {
        out.push(format!("sandbox dir {id}"));
    }
    for root in cg_roots {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    for drv in ["container", "gvisor"] {
        if let Ok(rd) = std::fs::read_dir(data.join(drv).join("state")) {
            for e in rd.flatten() {
                out.push(format!("{drv} runtime state {}", e.file_name().to_string_lossy()));
            }
        }
    }
    // Network objects: netns of its sandboxes, veths of its pool, chains.
    for id in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = id.file_name().to_string_lossy().to_string();
        if let Some(sid) = n.strip_prefix("spinup-") {
            if ids.iter().any(|i| i == sid) || d.log().contains(sid) {
                out.push(format!("netns {n}"));
            }
        }
    }
    if let Ok(pool) = std::fs::read_to_string(data.join("net-pool")) {
        let prefix = format!("sp{}v", pool.trim());
        for e in std::fs::read_dir("/sys/class/net").into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&prefix) {
                out.push(format!("veth {n}"));
            }
        }
        let t = Command::new("nft").args(["list", "table", "inet", &format!("spinup_{}", pool.trim())]).output();
        if let Ok(t) = t {
            for l in String::from_utf8_lossy(&t.stdout).lines() {
                let l = l.trim();
                if l.starts_with("chain sb_") || l.starts_with("set dyn_") {
                    out.push(format!("nft {l}"));
                }
            }
        }
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(e.path().join("exe")) {
            if exe.to_string_lossy().starts_with(&data_s) {
                out.push(format!("process {} {}", e.file_name().to_string_lossy(), exe.display()));
            }
        }
        // A VMM of one of this daemon's guests.
        let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).to_string();
        if cmdline.contains(&format!("{data_s}/microvm/sandboxes/")) {
            out.push(format!("vmm {} {}", e.file_name().to_string_lossy(), cmdline.replace('\0', " ")));
        }
    }
    out
}

/// A free TCP port on loopback (for a daemon's extra listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The last `n` lines of a log, for a failure message.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The Python of the tools venv (pytest, mcp, schemathesis) that
/// scripts/install-python-tools.sh makes.
pub fn tools_python() -> PathBuf {
    let venv = std::env::var("SPINUP_PY_VENV").unwrap_or_else(|_| "/var/tmp/spinup-py/venv".into());
    let py = Path::new(&venv).join("bin/python");
    assert!(py.exists(), "{} is missing: run scripts/install-python-tools.sh", py.display());
    py
}

/// Build (or reuse) a built-in environment; its last NDJSON line must be
/// the environment.
pub async fn build_env(d: &Daemon, env: &str) {
    let (st, body) = d.raw("POST", &format!("/v1/environments/{env}/build"), Bytes::new()).await;
    let last = String::from_utf8_lossy(&body).lines().last().unwrap_or_default().to_string();
    assert!(st == 200 && last.contains("\"environment\""), "building {env}: {st} {last}\n{}", d.log());
}

/// Run a client program (an SDK scenario, pip) to its end within `limit`;
/// its output is printed and returned. A failure panics with the daemon's
/// log tail and then the client's output, last, so that a runner showing
/// only the end of a failure shows the client's traceback.
pub async fn run_client(d: &Daemon, what: &str, cmd: Command, limit: Duration) -> String {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output()).await.unwrap_or_else(|_| panic!("{what}: over {limit:?}"));
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- {what}\n{text}");
    assert!(
        out.status.success(),
        "--- daemon log (tail)\n{}\n--- {what} failed ({}):\n{text}",
        tail(&d.log(), 40),
        out.status
    );
    text
}

/// Kill the sandbox's init from the host, the way a crash or an operator would.
pub fn kill_init(d: &Daemon, id: &str) {
    match driver().as_str() {
        drv @ ("container" | "gvisor") => {
            let pid: i32 = std::fs::read_to_string(d.data().join(format!("{drv}/sandboxes/{id}/init.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // SAFETY: plain kill(2).
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        }
        "microvm" => {
            // Kill the VMM: the guest goes with it.
            let pid: i32 = std::fs::read_to_string(d.data().join(format!("microvm/sandboxes/{id}/run/qemu.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // SAFETY: plain kill(2).
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        }
        other => panic!("no outside-kill helper for driver {other}"),
    }
}
