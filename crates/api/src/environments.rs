//! Environments: root filesystems sandboxes are made from.

use serde::{Deserialize, Serialize};
use spinup_model::Environment;

use crate::ErrorBody;

/// `GET /v1/environments`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvList {
    pub environments: Vec<Environment>,
    /// Recipes `POST /v1/environments/{name}/build` knows.
    pub builtin: Vec<String>,
}

/// One NDJSON line of `POST /v1/environments/{name}/build`: progress
/// lines, then the environment or an error as the last.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuildEvent {
    Progress(String),
    Environment(Environment),
    Error(ErrorBody),
}
