//! E2B's control-plane JSON, as the SDKs send and require it, and the
//! translation of Spinup's answers into it.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spinup_api::{Error, Sandbox};

/// E2B's error body: the SDK's parser needs both keys, or `kill()` of an
/// unknown sandbox crashes instead of returning `False`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({"code": status.as_u16(), "message": message}))).into_response();
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        // Permanent: the SDK's retry loop would only repeat it.
        r.headers_mut().insert("should-retry", http::HeaderValue::from_static("false"));
    }
    r
}

/// A Spinup error as E2B's status and body.
pub fn from_error(e: &Error) -> Response {
    let status = StatusCode::from_u16(spinup_api::error::http_status(e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, &e.to_string())
}

/// `POST /v2/sandboxes` (`NewSandboxV2`) and the v1 `POST /sandboxes`.
/// Fields Spinup has no use for are ignored: `autoPauseMemory` (a pause
/// keeps what the driver can keep), and v1's `secure` (an envd token is
/// always issued, and the SDK uses it whenever one is returned).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: Option<String>,
    pub timeout: Option<u64>,
    pub auto_pause: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    pub network: Option<Network>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    pub mcp: Option<Value>,
    pub volume_mounts: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

/// The sandbox network settings E2B has; those Spinup cannot honour are
/// refused, never ignored.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub allow_out: Option<Vec<String>>,
    pub deny_out: Option<Vec<String>>,
    pub allow_public_traffic: Option<bool>,
    pub mask_request_host: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    pub egress_proxy: Option<Value>,
    pub https_ports: Option<Vec<Value>>,
    pub rules: Option<Value>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Deserialize)]
pub struct Timeout {
    pub timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect`.
#[derive(Debug, Default, Deserialize)]
pub struct Connect {
    pub timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Default, Deserialize)]
pub struct NewSnapshot {
    pub name: Option<String>,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Default, Deserialize)]
pub struct Fork {
    pub timeout: Option<u64>,
    pub count: Option<u32>,
}

/// `POST /sandboxes/{id}/pause`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub memory: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// Unix ms as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// RFC 3339 / ISO 8601 with an offset, as unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// E2B's state of a Spinup sandbox, or `None` for one E2B would not show
/// (being made, stopped or gone).
pub fn state(sb: &Sandbox) -> Option<&'static str> {
    match sb.state.as_str() {
        "running" => Some("running"),
        "paused" => Some("paused"),
        _ => None,
    }
}

/// The template a sandbox was made from: its snapshot, else its environment.
pub fn template(sb: &Sandbox) -> String {
    sb.snapshot.clone().unwrap_or_else(|| sb.env.clone())
}

/// Labels this front end keeps for itself (never shown as metadata).
pub const HIDDEN_PREFIX: &str = "spinup.e2b/";
/// Ports open without the traffic token (`network.allowPublicTraffic`).
pub const PUBLIC_TRAFFIC_LABEL: &str = "spinup.e2b/public-traffic";

/// A sandbox's labels as E2B metadata: the caller's, without this front
/// end's own.
pub fn metadata(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter(|(k, _)| !k.starts_with(HIDDEN_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `Sandbox` (create, connect, a fork's child).
pub fn sandbox(sb: &Sandbox, envd_token: &str, traffic_token: &str, domain: Option<&str>) -> Value {
    let mut v = json!({
        "sandboxID": sb.id.as_str(),
        "templateID": template(sb),
        "clientID": "spinup",
        "envdVersion": crate::ENVD_VERSION,
        "envdAccessToken": envd_token,
        "trafficAccessToken": traffic_token,
    });
    if let Some(d) = domain {
        v["domain"] = json!(d);
    }
    v
}

/// `SandboxDetail` / `ListedSandbox`: the keys the SDK requires, and the
/// optional ones Spinup knows.
pub fn detail(sb: &Sandbox, state: &str, envd_token: Option<&str>, domain: Option<&str>) -> Value {
    let r = &sb.resources;
    let mut v = json!({
        "sandboxID": sb.id.as_str(),
        "templateID": template(sb),
        "clientID": "spinup",
        "envdVersion": crate::ENVD_VERSION,
        "startedAt": rfc3339(sb.created_at),
        // No timeout: a date the SDK can parse that never comes.
        "endAt": sb.expires_at.map(rfc3339).unwrap_or_else(|| "9999-12-31T23:59:59Z".into()),
        "cpuCount": r.vcpus.ceil().max(1.0) as u64,
        "memoryMB": r.memory_mib,
        "diskSizeMB": r.disk_mib,
        "state": state,
        "metadata": metadata(&sb.labels),
        "lifecycle": {
            "autoResume": sb.auto_resume,
            "onTimeout": if sb.on_timeout == spinup_api::OnTimeout::Pause { "pause" } else { "kill" },
        },
        "allowInternetAccess": sb.network.mode != spinup_api::NetMode::None,
    });
    if let Some(t) = envd_token {
        v["envdAccessToken"] = json!(t);
    }
    if let Some(d) = domain {
        v["domain"] = json!(d);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn the_sdks_create_bodies_parse() {
        let min: NewSandbox = serde_json::from_str(r#"{"templateID":"base","metadata":{},"envVars":{}}"#).unwrap();
        assert_eq!(min.template_id.as_deref(), Some("base"));
        let full: NewSandbox = serde_json::from_str(
            r#"{"templateID":"my-tpl","timeout":90,"autoPause":true,"autoPauseMemory":true,"autoResume":{"enabled":true},"allow_internet_access":false,"network":{"allowPublicTraffic":false,"allowOut":["1.1.1.1"],"denyOut":["0.0.0.0/0"],"maskRequestHost":"x.example:${PORT}"},"metadata":{"a":"b"},"envVars":{"E":"1"},"volumeMounts":[{"name":"vol1","path":"/mnt/v"}]}"#,
        )
        .unwrap();
        assert_eq!(full.timeout, Some(90));
        assert!(full.auto_resume.unwrap().enabled);
        assert_eq!(full.network.unwrap().allow_out.unwrap(), vec!["1.1.1.1"]);
    }
}
