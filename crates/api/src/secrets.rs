//! Secrets: names and times only; a value goes in and never comes out.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The tenant whose secret it is (each tenant has its own names);
    /// `None`: the admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}
