//! API keys and tenants. A key is `spk_<id>_<secret>`: the id names it
//! (in `key ls`, the audit log, `key rm`), the secret is 32 random bytes.
//! Only the SHA-256 of the whole key is stored, so the daemon cannot show
//! a key again; it is shown once, when made. (A key is 256 bits of
//! randomness, so a fast hash is enough: there is nothing to guess.)
//!
//! A request on a TCP listener names its key; [`Keys`] turns it into the
//! service as that key's holder sees it ([`crate::service::Caller`]).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use spinup_api::keys::validate_tenant;
use spinup_api::{Authenticator, KeyInfo, KeyRequest, NewKey, Quota, SandboxService};
use spinup_model::{Error, Result};

use crate::service::{Caller, Service};
use crate::store::Store;

const PREFIX: &str = "spk_";

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A key id: 12 lowercase hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn create_key(store: &Store, req: &KeyRequest) -> Result<NewKey> {
    let quota =
        Quota { max_sandboxes: req.max_sandboxes, max_vcpus: req.max_vcpus, max_memory_mib: req.max_memory_mib };
    match (&req.tenant, req.admin) {
        (Some(_), true) => return Err(Error::InvalidArgument("a key is a tenant's or the admin's, not both".into())),
        (None, false) => {
            return Err(Error::InvalidArgument(
                "give the key's tenant, or admin: true for one that sees everything".into(),
            ))
        }
        (None, true) if quota != Quota::default() => {
            return Err(Error::InvalidArgument("quotas are a tenant's; an admin key has none".into()))
        }
        (Some(t), false) => validate_tenant(t)?,
        (None, true) => {}
    }
    if quota.max_vcpus.is_some_and(|v| !v.is_finite() || !(0.0..=1e6).contains(&v)) {
        return Err(Error::InvalidArgument("max_vcpus must be a number of vCPUs, 0 to 1000000".into()));
    }
    if quota.max_memory_mib.is_some_and(|m| m > 1 << 40) {
        return Err(Error::InvalidArgument("max_memory_mib must be at most 2^40 (1 EiB)".into()));
    }
    if let Some(t) = &req.tenant {
        store.put_tenant(t, &quota)?;
    }
    let mut raw = [0u8; 38];
    getrandom::fill(&mut raw).map_err(|e| Error::internal("OS randomness", e))?;
    let id = hex::encode(&raw[..6]);
    let key = format!("{PREFIX}{id}_{}", hex::encode(&raw[6..]));
    let created_at = store.put_key(&id, req.tenant.as_deref(), &hash(&key))?;
    let quota = match &req.tenant {
        Some(t) => store.tenant_quota(t)?,
        None => Quota::default(),
    };
    tracing::info!(id, tenant = req.tenant.as_deref().unwrap_or("(admin)"), "API key made");
    Ok(NewKey { key, info: KeyInfo { id, tenant: req.tenant.clone(), created_at, quota } })
}

pub fn list_keys(store: &Store) -> Result<Vec<KeyInfo>> {
    store
        .list_keys()?
        .into_iter()
        .map(|(id, tenant, created_at)| {
            let quota = match &tenant {
                Some(t) => store.tenant_quota(t)?,
                None => Quota::default(),
            };
            Ok(KeyInfo { id, tenant, created_at, quota })
        })
        .collect()
}

/// Revoked at once: the next request with it gets 401. The tenant and its
/// objects stay (the admin still sees them).
pub fn remove_key(store: &Store, id: &str) -> Result<()> {
    if !valid_id(id) || !store.delete_key(id)? {
        return Err(Error::not_found("key", id));
    }
    tracing::info!(id, "API key revoked");
    Ok(())
}

/// The TCP listeners' authenticator: the daemon's configured key (the
/// admin's, `SPINUP_API_KEY`) or a key from the store.
pub struct Keys {
    base: Service,
    configured: Option<String>,
}

/// Debug never prints the configured key.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("configured", &self.configured.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl Keys {
    pub fn new(base: Service, configured: Option<String>) -> Keys {
        Keys { base, configured: configured.filter(|k| !k.is_empty()) }
    }

    fn caller(&self, key: &str) -> Option<Caller> {
        if let Some(k) = &self.configured {
            if spinup_http::constant_time_eq(k.as_bytes(), key.as_bytes()) {
                return Some(Caller::admin("api-key"));
            }
        }
        let (id, _) = key.strip_prefix(PREFIX)?.split_once('_')?;
        if !valid_id(id) {
            return None;
        }
        let (tenant, stored) = self.base.manager().store.get_key(id).ok()??;
        if !spinup_http::constant_time_eq(stored.as_bytes(), hash(key).as_bytes()) {
            return None;
        }
        Some(Caller { actor: format!("key:{id}"), tenant })
    }
}

impl Authenticator for Keys {
    fn authenticate(&self, key: &str) -> Option<Arc<dyn SandboxService>> {
        self.caller(key).map(|c| Arc::new(self.base.as_caller(c)) as Arc<dyn SandboxService>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_stored_as_its_hash_and_checked_against_it() {
        let dir = std::env::temp_dir().join(format!("spinup-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("state.db")).unwrap();
        let req = KeyRequest { tenant: Some("acme".into()), max_sandboxes: Some(2), ..Default::default() };
        let k = create_key(&store, &req).unwrap();
        assert!(k.key.starts_with("spk_") && k.key.len() == 4 + 12 + 1 + 64, "{}", k.key);
        assert_eq!(k.info.quota.max_sandboxes, Some(2));
        let (tenant, stored) = store.get_key(&k.info.id).unwrap().unwrap();
        assert_eq!(tenant.as_deref(), Some("acme"));
        assert_eq!(stored, hash(&k.key));
        assert!(!stored.contains(&k.key[17..]));
        // A second key of the tenant without quotas keeps them.
        let k2 = create_key(&store, &KeyRequest { tenant: Some("acme".into()), ..Default::default() }).unwrap();
        assert_eq!(k2.info.quota.max_sandboxes, Some(2));
        assert_eq!(list_keys(&store).unwrap().len(), 2);
        for bad in [
            KeyRequest::default(),
            KeyRequest { tenant: Some("Acme".into()), ..Default::default() },
            KeyRequest { tenant: Some("a/b".into()), ..Default::default() },
            KeyRequest { tenant: Some("acme".into()), admin: true, ..Default::default() },
            KeyRequest { admin: true, max_sandboxes: Some(1), ..Default::default() },
            KeyRequest { tenant: Some("acme".into()), max_vcpus: Some(f64::NAN), ..Default::default() },
            KeyRequest { tenant: Some("acme".into()), max_memory_mib: Some(u64::MAX), ..Default::default() },
        ] {
            assert_eq!(create_key(&store, &bad).unwrap_err().code(), "invalid_argument", "{bad:?}");
        }
        remove_key(&store, &k.info.id).unwrap();
        assert!(store.get_key(&k.info.id).unwrap().is_none());
        assert_eq!(remove_key(&store, &k.info.id).unwrap_err().code(), "not_found");
        assert_eq!(remove_key(&store, "../x").unwrap_err().code(), "not_found");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
