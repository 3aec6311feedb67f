//! Messages shared by host and agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// Program and arguments, run directly.
    pub argv: Vec<String>,
    /// A shell string run through `/bin/sh -c`; used when `argv` is empty.
    pub cmd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// User name or numeric uid[:gid] inside the sandbox.
    pub user: Option<String>,
    /// Kill the whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Keep running when the attached stream goes away.
    pub background: bool,
    /// Run on a pseudo-terminal of this size.
    pub pty: Option<PtySize>,
    /// Keep stdin open for `Stdin` frames; otherwise stdin is /dev/null.
    pub stdin: bool,
}

impl ExecRequest {
    /// The argv actually run.
    pub fn effective_argv(&self) -> Vec<String> {
        if !self.argv.is_empty() {
            self.argv.clone()
        } else {
            vec!["/bin/sh".into(), "-c".into(), self.cmd.clone().unwrap_or_default()]
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
}

/// How a process ended.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; `128 + signal` when killed, as shells report it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Set when the process could not start (e.g. command not found).
    pub message: Option<String>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub argv: Vec<String>,
    pub background: bool,
    pub pty: bool,
    pub running: bool,
    pub exit: Option<ExitStatus>,
    pub started_at_ms: i64,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: i32,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub path: String,
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ms: i64,
    pub symlink_target: Option<String>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    pub path: String,
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner of the directories created (mkdir): a user name or numeric
    /// `uid[:gid]`, resolved inside the guest as exec resolves its `user`.
    #[serde(default)]
    pub user: Option<String>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameRequest {
    pub from: String,
    pub to: String,
}

/// Ask the agent for its root filesystem's changes since it started, as an
/// OCI layer tar (`.wh.` whiteouts for deletions). For drivers whose
/// writable layer the host cannot read (a VM's disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesRequest {
    /// Every path of the base image, relative (`etc/passwd`): what is not
    /// found any more is reported deleted.
    pub base: Vec<String>,
    /// Relative paths never reported (identity files, mount points).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Secrets for a sandbox (replaces what it had): `files` go to
/// `/run/secrets/NAME` (a tmpfs; 0400, owned by `user`), `env` into the
/// environment of every process started afterwards (never PID 1's), and
/// `ca_pem` (the egress proxy's CA for proxy-mode secrets) into the trust
/// store.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsRequest {
    pub user: Option<String>,
    pub files: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub ca_pem: Option<String>,
}

/// Names only: the values are secrets.
impl std::fmt::Debug for SecretsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsRequest")
            .field("user", &self.user)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<certificate>"))
            .finish()
    }
}

/// A new identity for a guest continued from saved memory (microVM): its
/// hostname, a fresh machine-id, and host entropy to reseed its RNG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRequest {
    pub hostname: String,
    pub entropy: Vec<u8>,
    /// Its new network (`ADDR/PREFIX,GATEWAY,DNS`), when it has one.
    #[serde(default)]
    pub net: Option<String>,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChmodRequest {
    pub path: String,
    pub mode: u32,
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    pub hostname: String,
    pub uptime_ms: u64,
    pub processes: usize,
    /// Resident memory of the agent itself.
    pub agent_rss_bytes: u64,
    /// Memory charged to the sandbox's cgroup, when visible.
    pub memory_bytes: Option<u64>,
    /// CPU time used by the sandbox's cgroup, when visible.
    pub cpu_usage_us: Option<u64>,
    pub load_avg: [f64; 3],
    /// Bytes used on the guest's root filesystem (`statvfs("/")`: total
    /// less free blocks, as `df` counts them). Absent from older agents.
    #[serde(default)]
    pub disk_used_bytes: Option<u64>,
    /// Size of the guest's root filesystem. Absent from older agents.
    #[serde(default)]
    pub disk_total_bytes: Option<u64>,
}

/// One line of a `GET /v1/files/watch` stream (NDJSON): `started` first,
/// once every watch is in place, then one line per change. Paths are
/// absolute guest paths of the entry that changed. The kinds follow Go's
/// fsnotify: `create` (also the new name of a rename), `write`, `remove`,
/// `rename` (the old name), `chmod` (attributes: mode, owner, times);
/// `overflow` says events were lost (the kernel's queue overflowed, or a
/// new directory was past the watch limit and is not watched).
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchEvent {
    Started,
    Create { path: String, is_dir: bool },
    Write { path: String, is_dir: bool },
    Remove { path: String, is_dir: bool },
    Rename { path: String, is_dir: bool },
    Chmod { path: String, is_dir: bool },
    Overflow,
}

impl WatchEvent {
    /// The NDJSON line: the JSON object and a newline.
    pub fn line(&self) -> bytes::Bytes {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v.into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_are_the_documented_lines() {
        assert_eq!(WatchEvent::Started.line().as_ref(), b"{\"type\":\"started\"}\n");
        assert_eq!(WatchEvent::Overflow.line().as_ref(), b"{\"type\":\"overflow\"}\n");
        let e = WatchEvent::Rename { path: "/w/a".into(), is_dir: false };
        assert_eq!(e.line().as_ref(), b"{\"type\":\"rename\",\"path\":\"/w/a\",\"is_dir\":false}\n");
        let back: WatchEvent = serde_json::from_str(r#"{"type":"create","path":"/w/d","is_dir":true}"#).unwrap();
        assert_eq!(back, WatchEvent::Create { path: "/w/d".into(), is_dir: true });
    }

    #[test]
    fn older_agent_info_and_path_requests_still_decode() {
        let info: AgentInfo = serde_json::from_str(
            r#"{"protocol":1,"version":"0.1.0","pid":1,"hostname":"h","uptime_ms":1,"processes":0,
                "agent_rss_bytes":1,"memory_bytes":null,"cpu_usage_us":null,"load_avg":[0,0,0]}"#,
        )
        .unwrap();
        assert_eq!((info.disk_used_bytes, info.disk_total_bytes), (None, None));
        let r: PathRequest = serde_json::from_str(r#"{"path":"/x"}"#).unwrap();
        assert_eq!(r.user, None);
    }

    #[test]
    fn secrets_request_debug_shows_names_never_values() {
        let r = super::SecretsRequest {
            user: None,
            files: [("TOKEN".to_string(), "s3cr3t-file".to_string())].into(),
            env: [("API_KEY".to_string(), "s3cr3t-env".to_string())].into(),
            ca_pem: None,
        };
        let s = format!("{r:?}");
        assert!(s.contains("TOKEN") && s.contains("API_KEY"), "{s}");
        assert!(!s.contains("s3cr3t"), "{s}");
    }
}
