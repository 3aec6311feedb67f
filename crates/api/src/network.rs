//! Exposed ports and attached secrets (the network policy itself is the
//! model's [`spinup_model::NetworkPolicy`]).

use serde::{Deserialize, Serialize};
use spinup_model::SecretMount;

/// `POST /v1/sandboxes/{id}/ports`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExposeRequest {
    pub port: u16,
    /// No token needed.
    pub public: bool,
    /// Listen on a unix socket instead of loopback TCP.
    pub unix: bool,
    /// Loopback TCP address to listen on (default 127.0.0.1, a free port).
    pub listen: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExposeAnswer {
    pub port: u16,
    pub address: String,
    /// `http://127.0.0.1:PORT` for TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub public: bool,
    /// The access token, shown only here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The token is a credential: Debug never prints it.
impl std::fmt::Debug for ExposeAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExposeAnswer")
            .field("port", &self.port)
            .field("address", &self.address)
            .field("url", &self.url)
            .field("public", &self.public)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `POST /v1/sandboxes/{id}/secrets`: `attach` adds (or changes the
/// mode of) secrets; `detach` removes by name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AttachRequest {
    pub attach: Vec<SecretMount>,
    pub detach: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_prints_a_token() {
        let a = super::ExposeAnswer {
            port: 1,
            address: "a".into(),
            url: None,
            public: false,
            token: Some("s3cr3t-token".into()),
        };
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }
}
