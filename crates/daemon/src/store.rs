//! All daemon state, in one embedded SQLite database. Every sandbox
//! transition is a row in `transitions`, written in the same transaction as
//! the new state. WAL with synchronous=NORMAL: a committed transaction
//! survives the daemon being killed at any point (kill -9); only a power
//! loss can drop the last few, which `recover` then treats like a crash
//! during create.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use spinup_model::{now_ms, Environment, Error, Result, Sandbox, SandboxState, Snapshot};

/// A secret as stored: (key_id, nonce, ciphertext).
pub type SealedSecret = (String, Vec<u8>, Vec<u8>);

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> Error {
    // A full disk is the host's state, not a bug: say so and what to do.
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::Unavailable(format!(
            "state database: {e}; the data dir's filesystem is full (free space there and retry)"
        ));
    }
    Error::internal("state database", e)
}

pub use spinup_api::{AuditEntry, Quota, Transition};

/// How many audit entries are kept (the oldest go first).
pub const AUDIT_KEEP: i64 = 100_000;

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|e| Error::internal(format!("opening {}", path.display()), e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS sandboxes (
                 id TEXT PRIMARY KEY,
                 state TEXT NOT NULL,
                 body TEXT NOT NULL,
                 driver_state TEXT
             );
             CREATE TABLE IF NOT EXISTS transitions (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 sandbox_id TEXT NOT NULL,
                 from_state TEXT,
                 to_state TEXT NOT NULL,
                 reason TEXT,
                 at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS transitions_by_sandbox ON transitions(sandbox_id);
             CREATE TABLE IF NOT EXISTS environments (
                 name TEXT PRIMARY KEY,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS snapshots (
                 id TEXT PRIMARY KEY,
                 name TEXT UNIQUE,
                 ready INTEGER NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS secrets (
                 name TEXT PRIMARY KEY,
                 key_id TEXT NOT NULL,
                 nonce BLOB NOT NULL,
                 ciphertext BLOB NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS tenants (
                 name TEXT PRIMARY KEY,
                 max_sandboxes INTEGER,
                 max_vcpus REAL,
                 max_memory_mib INTEGER,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY,
                 tenant TEXT,
                 hash TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at INTEGER NOT NULL,
                 actor TEXT NOT NULL,
                 tenant TEXT,
                 op TEXT NOT NULL,
                 object TEXT,
                 outcome TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit(tenant, seq);",
        )
        .map_err(db_err)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    /// Store (or replace) an encrypted secret.
    pub fn put_secret(&self, name: &str, key_id: &str, nonce: &[u8], ciphertext: &[u8]) -> Result<()> {
        let now = now_ms();
        self.conn
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(name) DO UPDATE SET key_id = ?2, nonce = ?3, ciphertext = ?4, updated_at = ?5",
                params![name, key_id, nonce, ciphertext, now],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// (key_id, nonce, ciphertext) of a secret.
    pub fn get_secret(&self, name: &str) -> Result<Option<SealedSecret>> {
        let c = self.conn.lock().unwrap();
        c.query_row("SELECT key_id, nonce, ciphertext FROM secrets WHERE name = ?1", params![name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(db_err)
    }

    /// (name, created_at, updated_at) of every secret.
    pub fn list_secrets(&self) -> Result<Vec<(String, i64, i64)>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare("SELECT name, created_at, updated_at FROM secrets ORDER BY name").map_err(db_err)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>().map_err(db_err)
    }

    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        let n =
            self.conn.lock().unwrap().execute("DELETE FROM secrets WHERE name = ?1", params![name]).map_err(db_err)?;
        Ok(n > 0)
    }

    /// Make or update a tenant; a quota left `None` keeps what it was.
    pub fn put_tenant(&self, name: &str, q: &Quota) -> Result<()> {
        self.conn
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO tenants (name, max_sandboxes, max_vcpus, max_memory_mib, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET max_sandboxes = coalesce(?2, max_sandboxes),
                     max_vcpus = coalesce(?3, max_vcpus), max_memory_mib = coalesce(?4, max_memory_mib)",
                params![name, q.max_sandboxes, q.max_vcpus, q.max_memory_mib, now_ms()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// A tenant's quotas (all `None` for a tenant never made).
    pub fn tenant_quota(&self, name: &str) -> Result<Quota> {
        let c = self.conn.lock().unwrap();
        c.query_row(
            "SELECT max_sandboxes, max_vcpus, max_memory_mib FROM tenants WHERE name = ?1",
            params![name],
            |r| Ok(Quota { max_sandboxes: r.get(0)?, max_vcpus: r.get(1)?, max_memory_mib: r.get(2)? }),
        )
        .optional()
        .map(Option::unwrap_or_default)
        .map_err(db_err)
    }

    /// Store a key: its id, tenant (`None`: an admin key) and hash only.
    pub fn put_key(&self, id: &str, tenant: Option<&str>, hash: &str) -> Result<i64> {
        let now = now_ms();
        self.conn
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO api_keys (id, tenant, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, tenant, hash, now],
            )
            .map_err(db_err)?;
        Ok(now)
    }

    /// (tenant, hash) of key `id`.
    pub fn get_key(&self, id: &str) -> Result<Option<(Option<String>, String)>> {
        let c = self.conn.lock().unwrap();
        c.query_row("SELECT tenant, hash FROM api_keys WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db_err)
    }

    /// (id, tenant, created_at) of every key, oldest first.
    pub fn list_keys(&self) -> Result<Vec<(String, Option<String>, i64)>> {
        let c = self.conn.lock().unwrap();
        let mut st =
            c.prepare("SELECT id, tenant, created_at FROM api_keys ORDER BY created_at, id").map_err(db_err)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>().map_err(db_err)
    }

    pub fn delete_key(&self, id: &str) -> Result<bool> {
        let n = self.conn.lock().unwrap().execute("DELETE FROM api_keys WHERE id = ?1", params![id]).map_err(db_err)?;
        Ok(n > 0)
    }

    /// Append to the audit log; past [`AUDIT_KEEP`] entries the oldest go.
    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT INTO audit (at, actor, tenant, op, object, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.actor, e.tenant, e.op, e.object, e.outcome],
        )
        .map_err(db_err)?;
        let seq = c.last_insert_rowid();
        if seq % 1000 == 0 {
            c.execute("DELETE FROM audit WHERE seq <= ?1", params![seq - AUDIT_KEEP]).map_err(db_err)?;
        }
        Ok(())
    }

    /// The newest `limit` entries before `before` (all when `None`), of
    /// one tenant or all, newest first.
    pub fn audit_log(&self, tenant: Option<&str>, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let c = self.conn.lock().unwrap();
        let mut st = c
            .prepare(
                "SELECT seq, at, actor, tenant, op, object, outcome FROM audit
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![tenant, before, limit], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    tenant: r.get(3)?,
                    op: r.get(4)?,
                    object: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Insert a new sandbox (state `creating`).
    pub fn insert_sandbox(&self, sb: &Sandbox) -> Result<()> {
        let mut c = self.conn.lock().unwrap();
        let tx = c.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO sandboxes (id, state, body) VALUES (?1, ?2, ?3)",
            params![sb.id.as_str(), sb.state.as_str(), serde_json::to_string(sb).unwrap()],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO transitions (sandbox_id, from_state, to_state, reason, at) VALUES (?1, NULL, ?2, NULL, ?3)",
            params![sb.id.as_str(), sb.state.as_str(), sb.created_at],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Persist `sb` (whose state may have changed from `from`).
    pub fn update_sandbox(
        &self,
        sb: &Sandbox,
        from: SandboxState,
        driver_state: Option<&serde_json::Value>,
    ) -> Result<()> {
        let mut c = self.conn.lock().unwrap();
        let tx = c.transaction().map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE sandboxes SET state = ?2, body = ?3, driver_state = COALESCE(?4, driver_state) WHERE id = ?1",
                params![
                    sb.id.as_str(),
                    sb.state.as_str(),
                    serde_json::to_string(sb).unwrap(),
                    driver_state.map(|v| v.to_string())
                ],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Err(Error::not_found("sandbox", sb.id.as_str()));
        }
        if from != sb.state {
            tx.execute(
                "INSERT INTO transitions (sandbox_id, from_state, to_state, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sb.id.as_str(), from.as_str(), sb.state.as_str(), sb.reason, sb.updated_at],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Record `destroyed` and forget the sandbox.
    pub fn delete_sandbox(&self, id: &str, from: SandboxState, reason: Option<&str>) -> Result<()> {
        let mut c = self.conn.lock().unwrap();
        let tx = c.transaction().map_err(db_err)?;
        tx.execute("DELETE FROM sandboxes WHERE id = ?1", params![id]).map_err(db_err)?;
        tx.execute(
            "INSERT INTO transitions (sandbox_id, from_state, to_state, reason, at) VALUES (?1, ?2, 'destroyed', ?3, ?4)",
            params![id, from.as_str(), reason, now_ms()],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub fn get_sandbox(&self, id: &str) -> Result<Option<(Sandbox, Option<serde_json::Value>)>> {
        let c = self.conn.lock().unwrap();
        c.query_row("SELECT body, driver_state FROM sandboxes WHERE id = ?1", params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .optional()
        .map_err(db_err)?
        .map(|(body, ds)| {
            let sb: Sandbox = serde_json::from_str(&body).map_err(|e| Error::internal("corrupt sandbox row", e))?;
            Ok((sb, ds.and_then(|d| serde_json::from_str(&d).ok())))
        })
        .transpose()
    }

    pub fn list_sandboxes(&self) -> Result<Vec<(Sandbox, Option<serde_json::Value>)>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare("SELECT body, driver_state FROM sandboxes").map_err(db_err)?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))).map_err(db_err)?;
        let mut out = vec![];
        for row in rows {
            let (body, ds) = row.map_err(db_err)?;
            let sb: Sandbox = serde_json::from_str(&body).map_err(|e| Error::internal("corrupt sandbox row", e))?;
            out.push((sb, ds.and_then(|d| serde_json::from_str(&d).ok())));
        }
        out.sort_by_key(|(s, _)| s.created_at);
        Ok(out)
    }

    pub fn transitions(&self, id: &str) -> Result<Vec<Transition>> {
        let c = self.conn.lock().unwrap();
        let mut st = c
            .prepare("SELECT from_state, to_state, reason, at FROM transitions WHERE sandbox_id = ?1 ORDER BY seq")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(Transition { from: r.get(0)?, to: r.get(1)?, reason: r.get(2)?, at: r.get(3)? })
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>().map_err(db_err)
    }

    pub fn put_environment(&self, env: &Environment) -> Result<()> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT INTO environments (name, body) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            params![env.name, serde_json::to_string(env).unwrap()],
        )
        .map_err(db_err)?;
        Ok(())
    }

    pub fn get_environment(&self, name: &str) -> Result<Option<Environment>> {
        let c = self.conn.lock().unwrap();
        c.query_row("SELECT body FROM environments WHERE name = ?1", params![name], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db_err)?
            .map(|b| serde_json::from_str(&b).map_err(|e| Error::internal("corrupt environment row", e)))
            .transpose()
    }

    pub fn list_environments(&self) -> Result<Vec<Environment>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare("SELECT body FROM environments ORDER BY name").map_err(db_err)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        let mut out = vec![];
        for b in rows {
            out.push(
                serde_json::from_str(&b.map_err(db_err)?).map_err(|e| Error::internal("corrupt environment row", e))?,
            );
        }
        Ok(out)
    }

    /// Record a snapshot; `ready` false while its layer is being made (a
    /// daemon killed meanwhile finds it on restart and cleans it up).
    pub fn put_snapshot(&self, s: &Snapshot, ready: bool) -> Result<()> {
        let c = self.conn.lock().unwrap();
        c.execute(
            "INSERT INTO snapshots (id, name, ready, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, ready = excluded.ready, body = excluded.body",
            params![s.id, s.name, ready, serde_json::to_string(s).unwrap()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                Error::Conflict(format!("a snapshot named '{}' exists already", s.name.clone().unwrap_or_default()))
            }
            e => db_err(e),
        })?;
        Ok(())
    }

    /// Snapshots by id or name; with `ready` false, only half-made ones.
    pub fn list_snapshots(&self, ready: bool) -> Result<Vec<Snapshot>> {
        let c = self.conn.lock().unwrap();
        let mut st = c.prepare("SELECT body FROM snapshots WHERE ready = ?1").map_err(db_err)?;
        let rows = st.query_map(params![ready], |r| r.get::<_, String>(0)).map_err(db_err)?;
        let mut out: Vec<Snapshot> = vec![];
        for b in rows {
            out.push(
                serde_json::from_str(&b.map_err(db_err)?).map_err(|e| Error::internal("corrupt snapshot row", e))?,
            );
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    pub fn get_snapshot(&self, id_or_name: &str) -> Result<Option<Snapshot>> {
        let c = self.conn.lock().unwrap();
        c.query_row("SELECT body FROM snapshots WHERE ready = 1 AND (id = ?1 OR name = ?1)", params![id_or_name], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db_err)?
        .map(|b| serde_json::from_str(&b).map_err(|e| Error::internal("corrupt snapshot row", e)))
        .transpose()
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let c = self.conn.lock().unwrap();
        Ok(c.execute("DELETE FROM snapshots WHERE id = ?1", params![id]).map_err(db_err)? > 0)
    }

    pub fn delete_environment(&self, name: &str) -> Result<bool> {
        let c = self.conn.lock().unwrap();
        Ok(c.execute("DELETE FROM environments WHERE name = ?1", params![name]).map_err(db_err)? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinup_model::Resources;
    use std::collections::BTreeMap;

    fn sb(id: &str) -> Sandbox {
        Sandbox {
            id: spinup_model::SandboxId::parse(id).unwrap(),
            env: "busybox".into(),
            env_digest: "sha256:0".into(),
            driver: "container".into(),
            state: SandboxState::Creating,
            reason: None,
            resources: Resources::default(),
            timeout_s: None,
            expires_at: None,
            labels: BTreeMap::new(),
            created_at: 1,
            updated_at: 1,
            layers: vec![],
            snapshot: None,
            on_timeout: Default::default(),
            auto_resume: false,
            network: Default::default(),
            net: None,
            secrets: vec![],
            ports: vec![],
            env_vars: BTreeMap::new(),
            tenant: None,
        }
    }

    #[test]
    fn transitions_are_recorded_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("spinup-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let st = Store::open(&path).unwrap();
            let mut s = sb("0123456789ab");
            st.insert_sandbox(&s).unwrap();
            s.state = SandboxState::Running;
            st.update_sandbox(&s, SandboxState::Creating, Some(&serde_json::json!({"pid": 7}))).unwrap();
        }
        let st = Store::open(&path).unwrap();
        let (s, ds) = st.get_sandbox("0123456789ab").unwrap().unwrap();
        assert_eq!(s.state, SandboxState::Running);
        assert_eq!(ds.unwrap()["pid"], 7);
        st.delete_sandbox("0123456789ab", SandboxState::Running, Some("test")).unwrap();
        assert!(st.get_sandbox("0123456789ab").unwrap().is_none());
        let t: Vec<String> = st.transitions("0123456789ab").unwrap().into_iter().map(|t| t.to).collect();
        assert_eq!(t, ["creating", "running", "destroyed"]);
        assert!(matches!(
            st.update_sandbox(&sb("ffffffffffff"), SandboxState::Creating, None),
            Err(Error::NotFound { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
