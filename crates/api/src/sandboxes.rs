//! Sandboxes: create, list, inspect, timeouts, pause, events, gc.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spinup_model::{NetworkPolicy, OnTimeout, Resources, SecretMount};

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateRequest {
    pub env: Option<String>,
    pub driver: Option<String>,
    pub timeout_s: Option<u64>,
    pub resources: Option<ResourcesPatch>,
    pub labels: BTreeMap<String, String>,
    /// Start from a snapshot (id or name) instead of an environment.
    pub from_snapshot: Option<String>,
    /// What the timeout does: `destroy` (default) or `pause`.
    pub on_timeout: Option<OnTimeout>,
    /// Resume a paused sandbox on exec or file access.
    pub auto_resume: Option<bool>,
    /// What it may reach (default: the daemon's `[network] default_mode`,
    /// `none` unless configured).
    pub network: Option<NetworkPolicy>,
    /// Secrets from the store to project into it.
    pub secrets: Vec<SecretMount>,
    /// Environment variables of every process started in it.
    pub env_vars: BTreeMap<String, String>,
}

/// Resources as a request gives them: unset fields take the daemon's defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesPatch {
    #[schema(minimum = 0.01, maximum = 256.0)]
    pub vcpus: Option<f64>,
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mib: Option<u64>,
    #[schema(minimum = 16, maximum = 16777216)]
    pub disk_mib: Option<u64>,
    #[schema(minimum = 8, maximum = 4194304)]
    pub pids: Option<u64>,
}

impl ResourcesPatch {
    pub fn over(self, d: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.unwrap_or(d.vcpus),
            memory_mib: self.memory_mib.unwrap_or(d.memory_mib),
            disk_mib: self.disk_mib.unwrap_or(d.disk_mib),
            pids: self.pids.unwrap_or(d.pids),
        }
    }
}

/// `GET /v1/sandboxes?label=k=v&label=…`: every label must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub labels: BTreeMap<String, String>,
}

impl ListQuery {
    /// From query pairs; only `label=key=value` is known.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> spinup_model::Result<ListQuery> {
        let mut labels = BTreeMap::new();
        for (k, v) in pairs {
            if k != "label" {
                return Err(spinup_model::Error::InvalidArgument(format!("unknown query parameter '{k}'")));
            }
            let (lk, lv) = v
                .split_once('=')
                .ok_or_else(|| spinup_model::Error::InvalidArgument(format!("label filter '{v}' must be key=value")))?;
            // A filter no label could match is a mistake, not an empty list.
            spinup_model::validate_label(lk, lv)?;
            labels.insert(lk.to_string(), lv.to_string());
        }
        Ok(ListQuery { labels })
    }

    /// Query pairs for a URL.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.labels.iter().map(|(k, v)| ("label".to_string(), format!("{k}={v}"))).collect()
    }
}

/// `DELETE /v1/sandboxes/{id}?force=true`: also a running or paused one.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ForceQuery {
    #[serde(default)]
    pub force: bool,
}

/// `PUT /v1/sandboxes/{id}/timeout`: counted from now; 0 clears it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutRequest {
    pub timeout_s: u64,
}

/// `POST /v1/sandboxes/{id}/pause`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PauseRequest {
    /// Memory to disk and the VMM stopped (drivers with `memory_snapshot`).
    pub free_memory: bool,
}

/// One recorded lifecycle transition (`GET /v1/sandboxes/{id}/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transition {
    pub from: Option<String>,
    pub to: String,
    pub reason: Option<String>,
    pub at: i64,
}

/// `POST /v1/gc`: what a pass removed, and what it could not.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_takes_labels_only() {
        let q = ListQuery::from_pairs(vec![("label".into(), "a=b=c".into())]).unwrap();
        for bad in ["=x", "a b=c", "a=\n"] {
            assert!(ListQuery::from_pairs(vec![("label".into(), bad.into())]).is_err(), "{bad}");
        }
        assert_eq!(q.labels.get("a").map(String::as_str), Some("b=c"));
        assert_eq!(ListQuery::from_pairs(q.to_pairs()).unwrap(), q);
        assert_eq!(ListQuery::from_pairs(vec![("x".into(), "1".into())]).unwrap_err().code(), "invalid_argument");
        assert_eq!(
            ListQuery::from_pairs(vec![("label".into(), "nokv".into())]).unwrap_err().code(),
            "invalid_argument"
        );
    }
}
