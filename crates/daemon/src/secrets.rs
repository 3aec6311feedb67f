//! The secret store: values encrypted at rest (XChaCha20-Poly1305) in the
//! SQLite store, under a 32-byte key file made on first use
//! (`<data>/secrets.key`, 0600). A value leaves the store only towards a
//! sandbox (its agent, or its egress proxy); the API never returns one, and
//! no log line or error message carries one.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use spinup_model::{validate_secret_name, Error, Result};
use zeroize::Zeroizing;

use crate::store::Store;

/// The largest value accepted (64 KiB).
pub const MAX_VALUE: usize = 64 * 1024;

/// Holds where the key is, never the key: Debug prints no secret.
#[derive(Debug)]
pub struct Secrets {
    store: Arc<Store>,
    key_path: PathBuf,
}

pub use spinup_api::SecretInfo;

/// Where a secret is stored: its name for the admin's, `tenant/name` for
/// a tenant's (a secret name has no `/`), so each tenant has its own names
/// and a sandbox only ever reaches its own tenant's.
fn slot(tenant: Option<&str>, name: &str) -> Result<String> {
    validate_secret_name(name)?;
    Ok(match tenant {
        Some(t) => format!("{t}/{name}"),
        None => name.to_string(),
    })
}

fn info_of((slot, created_at, updated_at): (String, i64, i64)) -> SecretInfo {
    let (tenant, name) = match slot.split_once('/') {
        Some((t, n)) => (Some(t.to_string()), n.to_string()),
        None => (None, slot),
    };
    SecretInfo { name, tenant, created_at, updated_at }
}

fn key_id(key: &[u8]) -> String {
    hex::encode(&Sha256::digest([b"spinup-secret-key-id:".as_slice(), key].concat())[..8])
}

impl Secrets {
    pub fn new(store: Arc<Store>, data_dir: &Path) -> Secrets {
        Secrets { store, key_path: data_dir.join("secrets.key") }
    }

    fn lost_key(&self, n: usize) -> Error {
        Error::Unavailable(format!(
            "the secret store's key file {} is missing or is not the key the {n} stored secret(s) were encrypted with; \
             they cannot be decrypted without it. Restore that file, or remove the secrets (spinup secret rm NAME) and set them again",
            self.key_path.display()
        ))
    }

    /// The key; made on first use, but never silently replaced while
    /// secrets encrypted under another key exist.
    fn key(&self, create: bool) -> Result<Zeroizing<Vec<u8>>> {
        match std::fs::read(&self.key_path) {
            Ok(k) if k.len() == 32 => Ok(Zeroizing::new(k)),
            Ok(_) => Err(Error::Unavailable(format!(
                "the secret store's key file {} is damaged (not 32 bytes); restore it from a backup",
                self.key_path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let n = self.store.list_secrets()?.len();
                if n > 0 {
                    return Err(self.lost_key(n));
                }
                if !create {
                    return Err(Error::NotFound { kind: "secret key", id: self.key_path.display().to_string() });
                }
                let mut k = Zeroizing::new(vec![0u8; 32]);
                getrandom::fill(&mut k).map_err(|e| Error::internal("OS randomness", e))?;
                let tmp = self.key_path.with_extension("key.tmp");
                let _ = std::fs::remove_file(&tmp);
                std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| {
                        std::io::Write::write_all(&mut f, &k)?;
                        f.sync_all()
                    })
                    .map_err(|e| Error::internal("writing the secret key file", e))?;
                std::fs::rename(&tmp, &self.key_path).map_err(|e| Error::internal("writing the secret key file", e))?;
                tracing::info!(path = %self.key_path.display(), "secret store key created");
                Ok(k)
            }
            Err(e) => Err(Error::internal(format!("reading {}", self.key_path.display()), e)),
        }
    }

    pub fn set(&self, tenant: Option<&str>, name: &str, value: &[u8]) -> Result<SecretInfo> {
        let at = slot(tenant, name)?;
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!("secret {name}: the value is empty")));
        }
        if value.len() > MAX_VALUE {
            return Err(Error::InvalidArgument(format!("secret {name}: the value is over {MAX_VALUE} bytes")));
        }
        if value.contains(&0) || std::str::from_utf8(value).is_err() {
            return Err(Error::InvalidArgument(format!(
                "secret {name}: the value must be UTF-8 text without NUL bytes (it may go into an environment variable or an HTTP header)"
            )));
        }
        let key = self.key(true)?;
        // A key that differs from the one existing secrets were made with.
        let kid = key_id(&key);
        if let Some((other, _, _)) =
            self.store.list_secrets()?.first().and_then(|(n, _, _)| self.store.get_secret(n).ok().flatten())
        {
            if other != kid {
                return Err(self.lost_key(self.store.list_secrets()?.len()));
            }
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|e| Error::internal("secret key", e))?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| Error::internal("OS randomness", e))?;
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), chacha20poly1305::aead::Payload { msg: value, aad: at.as_bytes() })
            .map_err(|_| Error::Internal("encrypting the secret failed".into()))?;
        self.store.put_secret(&at, &kid, &nonce, &ct)?;
        self.info(tenant, name)
    }

    pub fn info(&self, tenant: Option<&str>, name: &str) -> Result<SecretInfo> {
        slot(tenant, name)?;
        self.list()?
            .into_iter()
            .find(|s| s.name == name && s.tenant.as_deref() == tenant)
            .ok_or_else(|| Error::not_found("secret", name))
    }

    /// Every tenant's secrets (names and times).
    pub fn list(&self) -> Result<Vec<SecretInfo>> {
        Ok(self.store.list_secrets()?.into_iter().map(info_of).collect())
    }

    pub fn remove(&self, tenant: Option<&str>, name: &str) -> Result<()> {
        if !self.store.delete_secret(&slot(tenant, name)?)? {
            return Err(Error::not_found("secret", name));
        }
        Ok(())
    }

    /// The value of `tenant`'s secret `name`, for delivery to one of that
    /// tenant's sandboxes only.
    pub fn reveal(&self, tenant: Option<&str>, name: &str) -> Result<Zeroizing<String>> {
        let at = slot(tenant, name)?;
        let (kid, nonce, ct) = self.store.get_secret(&at)?.ok_or_else(|| Error::not_found("secret", name))?;
        let key = self.key(false).map_err(|e| match e {
            Error::NotFound { .. } => self.lost_key(1),
            e => e,
        })?;
        if key_id(&key) != kid {
            return Err(self.lost_key(self.store.list_secrets().map(|l| l.len()).unwrap_or(1)));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|e| Error::internal("secret key", e))?;
        let pt = cipher
            .decrypt(XNonce::from_slice(&nonce), chacha20poly1305::aead::Payload { msg: &ct, aad: at.as_bytes() })
            .map_err(|_| Error::Internal(format!("secret {name} does not decrypt: the stored value is damaged")))?;
        let s = String::from_utf8(pt).map_err(|_| Error::Internal(format!("secret {name} is not UTF-8")))?;
        Ok(Zeroizing::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_at_rest_and_lost_key_is_clear() {
        let dir = std::env::temp_dir().join(format!("spinup-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("state.db")).unwrap());
        let s = Secrets::new(store.clone(), &dir);
        let value = "tok-9f8e7d6c5b4a-unique";
        s.set(None, "API_TOKEN", value.as_bytes()).unwrap();
        assert_eq!(&*s.reveal(None, "API_TOKEN").unwrap(), value);
        // A tenant's names are its own: the same name, another value,
        // and neither reaches the other.
        s.set(Some("acme"), "API_TOKEN", b"acme-value").unwrap();
        assert_eq!(&*s.reveal(Some("acme"), "API_TOKEN").unwrap(), "acme-value");
        assert_eq!(&*s.reveal(None, "API_TOKEN").unwrap(), value);
        assert_eq!(s.reveal(Some("other"), "API_TOKEN").unwrap_err().code(), "not_found");
        assert_eq!(s.info(Some("acme"), "API_TOKEN").unwrap().tenant.as_deref(), Some("acme"));
        assert!(s.set(Some("acme"), "A/B", b"x").is_err());
        s.remove(Some("acme"), "API_TOKEN").unwrap();
        // Not in the database file in clear.
        drop(store);
        let mut raw = std::fs::read(dir.join("state.db")).unwrap();
        raw.extend(std::fs::read(dir.join("state.db-wal")).unwrap_or_default());
        assert!(!raw.windows(value.len()).any(|w| w == value.as_bytes()));
        let store = Arc::new(Store::open(&dir.join("state.db")).unwrap());
        let s = Secrets::new(store, &dir);
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(s.set(None, "bad-name", b"x").is_err());
        assert!(s.set(None, "EMPTY", b"").is_err());
        // Losing the key: a clear error, never a new key over old secrets.
        std::fs::remove_file(dir.join("secrets.key")).unwrap();
        let e = s.reveal(None, "API_TOKEN").unwrap_err().to_string();
        assert!(e.contains("key file") && e.contains("missing"), "{e}");
        assert!(!e.contains(value));
        let e = s.set(None, "OTHER", b"v").unwrap_err().to_string();
        assert!(e.contains("key file"), "{e}");
        s.remove(None, "API_TOKEN").unwrap();
        s.set(None, "OTHER", b"v").unwrap();
        assert_eq!(&*s.reveal(None, "OTHER").unwrap(), "v");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
