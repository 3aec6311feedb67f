//! Flags several verbs share, turned into the API's types.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use spinup_api::{NetworkPolicy, SecretMount};

/// `--label key=value`, repeatable.
pub fn labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label '{l}' must be key=value"))
        })
        .collect()
}

/// A network policy from `--net`/`--mode`, `--allow` and `--add-host`; no
/// mode means `open`, or `allow` when something is allowed.
pub fn policy(mode: Option<&str>, allow: &[String], hosts: &[String]) -> Result<NetworkPolicy> {
    let mode = mode.unwrap_or(if allow.is_empty() { "open" } else { "allow" });
    let mut h = BTreeMap::new();
    for e in hosts {
        let (n, ip) = e.split_once('=').with_context(|| format!("--add-host {e:?} must be NAME=IP"))?;
        let ip = ip.parse().with_context(|| format!("--add-host {e:?}: {ip:?} is not an IPv4 address"))?;
        h.insert(n.to_string(), ip);
    }
    Ok(NetworkPolicy { mode: wire("network mode", mode)?, allow: allow.to_vec(), hosts: h })
}

/// `NAME`, `NAME:env`, `NAME:proxy=h1,h2` into the API's mounts.
pub fn secret_mounts(specs: &[String]) -> Result<Vec<SecretMount>> {
    specs.iter().map(|s| SecretMount::parse(s).map_err(|e| anyhow::anyhow!("{e}"))).collect()
}

/// A value of one of the API's enums by its wire name (`pause`, `allow`).
pub fn wire<T: DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).with_context(|| format!("{what} {s:?}"))
}
