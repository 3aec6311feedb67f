//! The one error shape of `/v1`: `{code, message}`, plus the driver and
//! capability of an `unsupported` answer.

use serde::{Deserialize, Serialize};
use spinup_model::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine code: `not_found`, `invalid_argument`, `conflict`,
    /// `unsupported`, `unavailable`, `agent_error`, `forbidden`,
    /// `quota_exceeded`, `internal`, or the
    /// agent's own code for a guest error.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        let (driver, capability) = match e {
            Error::Unsupported { driver, capability } => (Some(driver.clone()), Some(capability.clone())),
            _ => (None, None),
        };
        ErrorBody { code: e.code().to_string(), message: e.to_string(), driver, capability }
    }
}

/// The HTTP status every front end gives an error (the native API; the
/// E2B front end maps the same statuses).
pub fn http_status(e: &Error) -> u16 {
    match e {
        Error::NotFound { .. } => 404,
        Error::InvalidArgument(_) => 400,
        Error::Conflict(_) => 409,
        Error::Forbidden(_) => 403,
        // As E2B answers a create past the concurrent-sandbox limit.
        Error::QuotaExceeded(_) => 429,
        Error::Unsupported { .. } => 501,
        Error::Unavailable(_) => 503,
        Error::Agent(_) => 502,
        Error::Guest { status, .. } if (400..600).contains(status) => *status,
        Error::Guest { .. } => 502,
        Error::Internal(_) => 500,
    }
}
