//! The code interpreter: run code in a kernel that lives in the sandbox,
//! with state kept between runs of one context.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spinup_model::{Error, Result};

/// What the interpreter runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// An IPython kernel (ipykernel, driven by jupyter_client).
    #[default]
    Python,
    /// Node.js: one `vm` context per code context.
    Javascript,
    /// One bash per context: the working directory and exports persist.
    Bash,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Bash => "bash",
        }
    }

    /// The names E2B's SDKs send as well (`js`, `ts`, `sh`, …).
    pub fn parse(s: &str) -> Result<Language> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Language::Python,
            "javascript" | "js" | "node" | "nodejs" => Language::Javascript,
            "bash" | "sh" | "shell" => Language::Bash,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown language '{other}'; the interpreter runs python, javascript and bash"
                )))
            }
        })
    }
}

/// The longest a run may take: one day.
pub const MAX_CODE_TIMEOUT_S: u64 = 24 * 3600;
/// A run's timeout when the request names none (E2B's default too).
pub const DEFAULT_CODE_TIMEOUT_S: u64 = 300;

/// `POST /v1/sandboxes/{id}/code`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
    /// Default: the context's language, else python.
    #[serde(default)]
    pub language: Option<Language>,
    /// A context id; default: the language's default context (made on
    /// first use).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub context: Option<String>,
    /// Environment variables for this run only.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Interrupt the kernel (not the sandbox) after this many seconds;
    /// default 300. The context keeps its state.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_s: Option<u64>,
}

/// `POST /v1/sandboxes/{id}/code/contexts`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContextRequest {
    /// Default python.
    pub language: Option<Language>,
    /// The kernel's working directory; default the environment's.
    #[schema(pattern = "^/[^\\u0000]*$")]
    pub cwd: Option<String>,
}

/// A kernel and its state, inside one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CodeContext {
    pub id: String,
    pub language: Language,
    pub cwd: String,
}

/// One NDJSON line of a run, in order; `end` is always the last.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// A rich output: the value of the last expression (`is_main_result`)
    /// or something displayed (a chart). `data` is the MIME bundle:
    /// `text/plain`, `text/html`, `image/png` (base64), `application/json`…
    Result {
        is_main_result: bool,
        #[schema(value_type = Object)]
        data: BTreeMap<String, serde_json::Value>,
    },
    /// The code raised (or timed out: `TimeoutError`; or killed its
    /// kernel: `KernelDied`, and the next run starts a new one).
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    End {
        execution_count: Option<u64>,
        /// The timeout interrupted the run.
        timed_out: bool,
        /// Output past the interpreter's bound (8 MiB a run) was dropped.
        truncated: bool,
    },
}

/// A context id: what the interpreter makes (`ctx-…`, `default-python`).
pub fn check_context_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Error::InvalidArgument(format!("bad context id {id:?}: 1-64 letters, digits, '-' or '_'")));
    }
    Ok(())
}

impl CodeRequest {
    /// Refuse what cannot run; fill in the timeout.
    pub fn check(&mut self) -> Result<()> {
        if let Some(c) = &self.context {
            check_context_id(c)?;
        }
        match self.timeout_s {
            Some(0) => return Err(Error::InvalidArgument("timeout_s must be at least 1".into())),
            Some(t) if t > MAX_CODE_TIMEOUT_S => {
                return Err(Error::InvalidArgument(format!("timeout_s must be at most {MAX_CODE_TIMEOUT_S}")))
            }
            None => self.timeout_s = Some(DEFAULT_CODE_TIMEOUT_S),
            _ => {}
        }
        if self.code.contains('\0') {
            return Err(Error::InvalidArgument("code contains a NUL byte".into()));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(Error::InvalidArgument(format!("bad environment variable name {k:?}")));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(Error::InvalidArgument("an environment variable's value contains a NUL byte".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_the_documented_lines() {
        let e: CodeEvent =
            serde_json::from_str(r#"{"type":"result","is_main_result":true,"data":{"text/plain":"2"}}"#).unwrap();
        assert_eq!(e, CodeEvent::Result { is_main_result: true, data: [("text/plain".into(), "2".into())].into() });
        let end = CodeEvent::End { execution_count: Some(3), timed_out: false, truncated: false };
        assert_eq!(
            serde_json::to_string(&end).unwrap(),
            r#"{"type":"end","execution_count":3,"timed_out":false,"truncated":false}"#
        );
    }

    #[test]
    fn requests_are_checked() {
        let mut r = CodeRequest { code: "1+1".into(), ..Default::default() };
        r.check().unwrap();
        assert_eq!(r.timeout_s, Some(DEFAULT_CODE_TIMEOUT_S));
        for bad in ["", "../x", "a/b", &"x".repeat(65)] {
            let mut r = CodeRequest { context: Some(bad.into()), ..Default::default() };
            assert!(r.check().is_err(), "{bad:?}");
        }
        let mut r = CodeRequest { timeout_s: Some(0), ..Default::default() };
        assert!(r.check().is_err());
        assert_eq!(Language::parse("JS").unwrap(), Language::Javascript);
        assert!(Language::parse("cobol").is_err());
    }
}
