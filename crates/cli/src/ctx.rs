//! What every command gets: the daemon's client and the output mode.

use anyhow::Result;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::client::Client;
use crate::output::print_json;

pub struct Ctx {
    pub client: Client,
    /// `--json`: print the API's answers as they are.
    pub json: bool,
}

impl Ctx {
    pub fn new(host: Option<String>, api_key: Option<String>, json: bool) -> Result<Ctx> {
        Ok(Ctx { client: Client::new(host, api_key)?, json })
    }

    /// An answer of the daemon: with `--json` printed as it came (so the
    /// output is the API's, byte for byte); otherwise read as a `T` and
    /// handed to `human`, which prints the table or line for it.
    pub fn emit<T: DeserializeOwned>(&self, answer: &Value, human: impl FnOnce(T)) -> Result<()> {
        if self.json {
            print_json(answer);
        } else {
            human(T::deserialize(answer)?);
        }
        Ok(())
    }
}

/// For [`Ctx::emit`]: a verb that prints nothing unless `--json`.
pub fn quiet(_: IgnoredAny) {}
