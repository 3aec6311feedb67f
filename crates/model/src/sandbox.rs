//! Sandboxes, their lifecycle, resources, and the environments they start from.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Lifecycle: `creating → running ⇄ paused → stopped → destroyed`.
///
/// `Paused` is part of the vocabulary so stores and clients never need a
/// migration; no driver reaches it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Creating,
    Running,
    Paused,
    Stopped,
    Destroyed,
}

impl SandboxState {
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Stopped,
        SandboxState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
            SandboxState::Destroyed => "destroyed",
        }
    }

    /// Whether the lifecycle allows moving from `self` to `to`.
    pub fn can_transition(self, to: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, to),
            (Creating, Running)
                | (Creating, Stopped)
                | (Creating, Destroyed)
                | (Running, Paused)
                | (Running, Stopped)
                | (Running, Destroyed)
                | (Paused, Running)
                | (Paused, Stopped)
                | (Paused, Destroyed)
                | (Stopped, Running)
                | (Stopped, Destroyed)
        )
    }

    /// Checked transition: the error names both states.
    pub fn transition(self, to: SandboxState) -> Result<SandboxState> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(Error::Conflict(format!("sandbox cannot go from {} to {}", self.as_str(), to.as_str())))
        }
    }

    /// A sandbox whose agent can serve requests.
    pub fn is_live(self) -> bool {
        matches!(self, SandboxState::Running)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SandboxState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown sandbox state '{s}'")))
    }
}

/// What a sandbox may use. Drivers enforce every field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Resources {
    /// CPU share in whole or fractional vCPUs.
    pub vcpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub pids: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { vcpus: 1.0, memory_mib: 512, disk_mib: 2048, pids: 512 }
    }
}

impl Resources {
    pub fn validate(&self) -> Result<()> {
        if !(self.vcpus.is_finite() && self.vcpus >= 0.01 && self.vcpus <= 256.0) {
            return Err(Error::InvalidArgument(format!("vcpus must be between 0.01 and 256, got {}", self.vcpus)));
        }
        if self.memory_mib < 16 || self.memory_mib > 1 << 20 {
            return Err(Error::InvalidArgument(format!(
                "memory_mib must be between 16 and 1048576, got {}",
                self.memory_mib
            )));
        }
        if self.pids < 8 || self.pids > 1 << 22 {
            return Err(Error::InvalidArgument(format!("pids must be between 8 and 4194304, got {}", self.pids)));
        }
        // 16 TiB: ext4's limit with 4 KiB blocks, and far from u64's.
        if self.disk_mib < 16 || self.disk_mib > 1 << 24 {
            return Err(Error::InvalidArgument(format!(
                "disk_mib must be between 16 and 16777216, got {}",
                self.disk_mib
            )));
        }
        Ok(())
    }
}

/// One sandbox as the store and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sandbox {
    pub id: crate::SandboxId,
    /// Environment name as requested (e.g. `busybox`).
    pub env: String,
    /// Content digest of the environment the sandbox was made from.
    pub env_digest: String,
    pub driver: String,
    pub state: SandboxState,
    /// Why the sandbox is in its state, when that is not the happy path.
    pub reason: Option<String>,
    pub resources: Resources,
    /// Seconds from creation (or the last set_timeout) until the daemon destroys it.
    pub timeout_s: Option<u64>,
    /// Unix ms at which the timeout fires.
    pub expires_at: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Read-only layer digests under its writable layer, bottom first: the
    /// environment's, then a snapshot's. Kept here so a sandbox never
    /// depends on its environment or snapshot staying around.
    #[serde(default)]
    pub layers: Vec<String>,
    /// The snapshot it was restored from, if any.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// What the timeout does: destroy (default) or pause.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// A paused sandbox resumes by itself on exec or file access.
    #[serde(default)]
    pub auto_resume: bool,
    /// What it may reach; changed at run time with `net set`.
    #[serde(default)]
    pub network: crate::NetworkPolicy,
    /// Its network: slot in the daemon's address pool and the addresses
    /// made from it. `None` for sandboxes made before networking existed.
    #[serde(default)]
    pub net: Option<NetSlot>,
    /// Secrets attached to it, by name (values live only in the store).
    #[serde(default)]
    pub secrets: Vec<SecretMount>,
    /// Ports exposed through the daemon.
    #[serde(default)]
    pub ports: Vec<PortExposure>,
    /// Environment variables of every process started in it (under the
    /// request's own, over the environment's). Shown like `docker
    /// inspect` shows them: credentials belong in secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// The tenant that owns it (its key made it, or it was forked or
    /// restored from one of its sandboxes); `None`: the admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A guest port reachable through the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortExposure {
    pub port: u16,
    /// `127.0.0.1:PORT` or a unix socket path.
    pub address: String,
    /// No token needed.
    pub public: bool,
    /// sha256 of the access token (the token itself is shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// One sandbox's place in the daemon's address pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetSlot {
    pub index: u32,
    /// Host side of the veth (`spv<index>`).
    pub host_if: String,
    #[schema(value_type = String, format = Ipv4)]
    pub gateway: std::net::Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// How a secret reaches a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretMode {
    /// `/run/secrets/NAME` on a tmpfs, mode 0400, owned by the sandbox user.
    #[default]
    File,
    /// An environment variable of the processes started in the sandbox.
    Env,
    /// The sandbox sees a placeholder; the daemon's egress proxy swaps it
    /// for the value in request headers to the listed hosts only.
    Proxy,
}

/// A secret attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretMount {
    pub name: String,
    #[serde(default)]
    pub mode: SecretMode,
    /// Proxy mode: the hosts the value may be sent to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Proxy mode: what the sandbox sees instead of the value (random, not
    /// secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
}

/// Secret names: what an environment variable may be called.
pub fn validate_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "secret name {name:?} is invalid: use 1-64 letters, digits and '_', not starting with a digit"
        )))
    }
}

impl SecretMount {
    /// Parses the CLI's `NAME`, `NAME:file`, `NAME:env`, `NAME:proxy=h1,h2`.
    pub fn parse(s: &str) -> Result<SecretMount> {
        let (name, mode) = s.split_once(':').unwrap_or((s, "file"));
        validate_secret_name(name)?;
        let (mode, hosts) = match mode.split_once('=') {
            Some(("proxy", hosts)) => (SecretMode::Proxy, hosts.split(',').map(|h| h.trim().to_string()).collect()),
            None if mode == "file" => (SecretMode::File, vec![]),
            None if mode == "env" => (SecretMode::Env, vec![]),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "secret {s:?}: the mode must be file, env or proxy=HOST[,HOST...]"
                )))
            }
        };
        let m = SecretMount { name: name.to_string(), mode, hosts, placeholder: None };
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<()> {
        validate_secret_name(&self.name)?;
        match self.mode {
            SecretMode::Proxy => {
                if self.hosts.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "secret {}: proxy mode needs the hosts it may be sent to (NAME:proxy=api.example.com)",
                        self.name
                    )));
                }
                let p = crate::NetworkPolicy {
                    mode: crate::NetMode::Allow,
                    allow: self.hosts.iter().filter(|h| !h.contains('/')).cloned().collect(),
                    hosts: Default::default(),
                };
                if self.hosts.iter().any(|h| h.contains('/') || h.contains(':'))
                    || p.validate().is_err()
                    || !p.cidrs().is_empty()
                {
                    return Err(Error::InvalidArgument(format!(
                        "secret {}: proxy hosts must be host names (api.example.com or *.example.com)",
                        self.name
                    )));
                }
            }
            _ if !self.hosts.is_empty() => {
                return Err(Error::InvalidArgument(format!("secret {}: hosts are only for proxy mode", self.name)))
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a sandbox's timeout does when it fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Destroy,
    /// Freeze it in place (processes and memory kept); the timeout is
    /// re-armed when it resumes.
    Pause,
}

impl Sandbox {
    /// True when every `(k, v)` filter matches this sandbox's labels.
    pub fn matches_labels(&self, filters: &BTreeMap<String, String>) -> bool {
        filters.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Defaults a sandbox inherits from its environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct EnvironmentConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
}

/// An immutable, content-addressed root filesystem plus defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Environment {
    pub name: String,
    /// sha256 over the layer digests and config; changes when any layer does.
    pub digest: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    pub config: EnvironmentConfig,
    pub size_bytes: u64,
    pub created_at: i64,
}

/// A sandbox's filesystem changes frozen as a content-addressed layer (an
/// OCI layer tar with whiteouts) on top of the layers it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub name: Option<String>,
    /// The sandbox it was taken from (which may be gone by now).
    pub sandbox_id: String,
    /// The driver that sandbox ran on; restoring works on any driver.
    pub driver: String,
    /// Lineage: the environment at the bottom of the stack...
    pub env: String,
    /// ...and the snapshot the source sandbox was restored from, if any.
    pub parent_snapshot: Option<String>,
    /// Digest of this snapshot's own layer (sha256 of its tar).
    pub layer: String,
    /// Every layer a restored sandbox stacks, bottom first (ends with `layer`).
    pub layers: Vec<String>,
    /// Environment defaults carried over from the source.
    pub config: EnvironmentConfig,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    /// Size of the layer tar in bytes.
    pub size_bytes: u64,
    pub created_at: i64,
    /// Made by `fork`: removed with its last child.
    #[serde(default)]
    pub ephemeral: bool,
    /// The driver whose saved memory (and exact disk) this snapshot also
    /// holds; restoring on that driver continues the processes. Other
    /// drivers restore its filesystem layer only.
    #[serde(default)]
    pub memory: Option<String>,
    /// The tenant of the sandbox it was taken from; `None`: the admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Ids are what the daemon generates: lowercase hex, 12 characters.
/// Anything else (path separators, dots) is refused before it reaches a path.
pub fn validate_id(id: &str) -> Result<()> {
    crate::SandboxId::parse(id).map(drop)
}

/// Snapshot names: like environment names (never a path), and never
/// mistakable for an id.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !name.starts_with('.')
        && validate_id(name).is_err();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "snapshot name '{name}' must be 1-64 characters of [a-z0-9-_.], not starting with '.' and not 12 hex digits"
        )))
    }
}

/// Label keys and values: printable, bounded, no control characters.
pub fn validate_label(k: &str, v: &str) -> Result<()> {
    let ok_key = !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !ok_key {
        return Err(Error::InvalidArgument(format!("label key '{k}' must be 1-63 characters of [A-Za-z0-9-_./]")));
    }
    if v.chars().count() > 255 || v.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!("label value for '{k}' must be at most 255 printable characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_only_its_moves() {
        use SandboxState::*;
        assert!(Creating.can_transition(Running));
        assert!(Running.can_transition(Stopped));
        assert!(Stopped.can_transition(Destroyed));
        assert!(Stopped.can_transition(Running), "start");
        assert!(Running.can_transition(Paused) && Paused.can_transition(Running));
        assert!(!Stopped.can_transition(Paused));
        assert!(!Destroyed.can_transition(Creating));
        assert!(!Destroyed.can_transition(Running));
        let e = Destroyed.transition(Running).unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert!(e.to_string().contains("destroyed") && e.to_string().contains("running"));
        for s in SandboxState::ALL {
            assert!(!s.can_transition(s), "{s} must not loop to itself");
            assert_eq!(s.as_str().parse::<SandboxState>().unwrap(), s);
        }
    }

    #[test]
    fn resources_are_validated() {
        assert!(Resources::default().validate().is_ok());
        assert!(Resources { memory_mib: 1, ..Default::default() }.validate().is_err());
        assert!(Resources { vcpus: f64::NAN, ..Default::default() }.validate().is_err());
        assert!(Resources { vcpus: 0.0, ..Default::default() }.validate().is_err());
        assert!(Resources { pids: 2, ..Default::default() }.validate().is_err());
        let r: Resources = serde_json::from_str(r#"{"memory_mib":128}"#).unwrap();
        assert_eq!(r.memory_mib, 128);
        assert_eq!(r.pids, Resources::default().pids);
    }

    #[test]
    fn ids_never_become_paths() {
        assert!(validate_id("0123456789ab").is_ok());
        for bad in ["../../etc", "0123456789AB", "", "0123456789abc", "/tmp/x", "0123456789a."] {
            assert_eq!(validate_id(bad).unwrap_err().code(), "not_found", "{bad}");
        }
    }

    #[test]
    fn label_filters_match_all() {
        let mut sb = Sandbox {
            id: crate::SandboxId::parse("0123456789ab").unwrap(),
            env: "busybox".into(),
            env_digest: "sha256:x".into(),
            driver: "container".into(),
            state: SandboxState::Running,
            reason: None,
            resources: Resources::default(),
            timeout_s: None,
            expires_at: None,
            labels: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
            layers: vec![],
            snapshot: None,
            on_timeout: OnTimeout::Destroy,
            auto_resume: false,
            network: Default::default(),
            net: None,
            secrets: vec![],
            ports: vec![],
            env_vars: BTreeMap::new(),
            tenant: None,
        };
        sb.labels.insert("team".into(), "a".into());
        sb.labels.insert("run".into(), "7".into());
        let mut f = BTreeMap::new();
        assert!(sb.matches_labels(&f));
        f.insert("team".into(), "a".into());
        assert!(sb.matches_labels(&f));
        f.insert("run".into(), "8".into());
        assert!(!sb.matches_labels(&f));
        assert!(validate_label("a/b", "x").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("k", "a\nb").is_err());
    }
}
