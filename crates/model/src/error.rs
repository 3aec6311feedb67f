//! Errors every layer speaks. Each variant's message is what the user reads;
//! [`Error::code`] is the stable machine-readable code the API returns.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// The named object does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// The request was malformed or a parameter was out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object is in a state where the operation cannot run.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The driver declared that it cannot do this.
    #[error("driver '{driver}' does not support {capability}")]
    Unsupported { driver: String, capability: String },
    /// A host dependency is missing or broken (binary, kernel feature).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The in-sandbox agent could not be reached or failed.
    #[error("agent: {0}")]
    Agent(String),
    /// An operation inside the sandbox failed; `status` is the HTTP status
    /// the agent chose, `code` its machine-readable code.
    #[error("{message}")]
    Guest { status: u16, code: String, message: String },
    /// The caller may not do this (an admin operation asked with a
    /// tenant's key). Another tenant's objects are `NotFound`, never this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The caller's tenant is at one of its quotas.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// Something on the host failed; the message says what and what to do.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Stable code for API clients.
    pub fn code(&self) -> &str {
        if let Error::Guest { code, .. } = self {
            return code;
        }
        match self {
            Error::NotFound { .. } => "not_found",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Conflict(_) => "conflict",
            Error::Unsupported { .. } => "unsupported",
            Error::Unavailable(_) => "unavailable",
            Error::Agent(_) => "agent_error",
            Error::Forbidden(_) => "forbidden",
            Error::QuotaExceeded(_) => "quota_exceeded",
            Error::Guest { .. } => unreachable!(),
            Error::Internal(_) => "internal",
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    pub fn internal(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("I/O error: {e}"))
    }
}
