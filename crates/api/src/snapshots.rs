//! Snapshots, forks and diffs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spinup_model::{Sandbox, Snapshot};

/// `POST /v1/sandboxes/{id}/snapshot`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Keep the processes' memory too (drivers that declare memory_snapshot).
    pub memory: bool,
}

/// `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ForkRequest {
    pub count: Option<u32>,
    /// Children's driver; default: the parent's.
    pub driver: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForkResult {
    pub snapshot: Snapshot,
    pub children: Vec<Sandbox>,
}

/// `GET /v1/sandboxes/{id}/diff?since=&path=&content=`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffQuery {
    /// A snapshot (id or name) of this sandbox; default: its creation.
    pub since: Option<String>,
    /// Only this path (and below).
    pub path: Option<String>,
    /// With `path`: its bytes before and after.
    pub content: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    pub sandbox: String,
    /// The snapshot compared against; `None`: the sandbox's creation.
    pub since: Option<String>,
    pub changes: Vec<Change>,
    /// With `path` and `content`: the path's bytes before and after (files
    /// only, at most 1 MiB each), lossy UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One path that differs between two filesystem states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub kind: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// Bytes: the new size, or for a deletion the old one.
    pub size: u64,
}
