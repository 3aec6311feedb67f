//! API keys, tenants and the audit log: who may call, what they see, and
//! what they did. A key's secret is shown once, when it is made; the
//! daemon keeps only its hash.

use serde::{Deserialize, Serialize};

/// A tenant's limits; `None` is no limit. Every sandbox the tenant has
/// (running, paused or stopped) counts against all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    pub max_sandboxes: Option<u32>,
    pub max_vcpus: Option<f64>,
    pub max_memory_mib: Option<u64>,
}

/// `POST /v1/keys`: a tenant's key (its quotas, when given, are set or
/// changed), or with `admin` a key that sees everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KeyRequest {
    /// Lowercase letters, digits and `-`, 1-63 characters.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub tenant: Option<String>,
    /// Instead of `tenant` (and without quotas): a key that sees everything.
    pub admin: bool,
    pub max_sandboxes: Option<u32>,
    #[schema(minimum = 0, maximum = 1000000)]
    pub max_vcpus: Option<f64>,
    #[schema(maximum = 1099511627776_u64)]
    pub max_memory_mib: Option<u64>,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    /// `None`: an admin key.
    pub tenant: Option<String>,
    pub created_at: i64,
    /// The tenant's quotas (shared by all its keys).
    #[serde(default)]
    pub quota: Quota,
}

/// A key just made: `key` is its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// One audited call: who (`actor`: `socket`, `api-key`, `key:<id>`), as
/// which tenant, did what (`op`) to which object, when, with what result
/// (`ok` or the error's code). No argument, and so no secret value, is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    pub actor: String,
    pub tenant: Option<String>,
    pub op: String,
    pub object: Option<String>,
    pub outcome: String,
}

/// `GET /v1/audit`: newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only entries older than this `seq` (to page back).
    pub before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Tenant names: what a DNS label may be, lowercase.
pub fn validate_tenant(name: &str) -> spinup_model::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(spinup_model::Error::InvalidArgument(format!(
            "tenant '{name}' must be 1-63 lowercase letters, digits and '-', not starting with '-'"
        )))
    }
}
