//! Secrets and port tunnels, guest side.
//!
//! `POST /v1/secrets`: file-mode secrets are written to `/run/secrets`, a
//! tmpfs the sandbox gets at start (never the writable layer, so never a
//! snapshot); env-mode values and proxy placeholders are kept in memory and
//! given to processes started afterwards; the egress proxy's CA goes into
//! the trust store.
//!
//! `POST /v1/net/connect?port=N`: a byte tunnel to 127.0.0.1:N inside the
//! guest (the request body is what the client sends, the response body what
//! the guest's server answers): how `spinup port` reaches a guest service on
//! every driver without any route from the host into the sandbox.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use spinup_protocol::SecretsRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{AgentError, AppState};

pub const SECRETS_DIR: &str = "/run/secrets";
/// Debian's bundle; other trust stores get the CA file under
/// /usr/local/share/ca-certificates and the env variables below.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const CA_FILE: &str = "/usr/local/share/ca-certificates/spinup-egress-ca.crt";
const CA_BEGIN: &str = "# spinup egress CA: begin\n";
const CA_END: &str = "# spinup egress CA: end\n";

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/secrets", post(secrets)).route("/v1/net/connect", post(connect))
}

async fn secrets(State(s): State<AppState>, body: Bytes) -> Result<Json<serde_json::Value>, AgentError> {
    // Never echo the body: it carries values.
    let req: SecretsRequest =
        serde_json::from_slice(&body).map_err(|_| AgentError::bad("malformed secrets request"))?;
    drop(body);
    let user = crate::process::resolve_user(req.user.as_deref()).map_err(AgentError::bad)?;
    let dir = Path::new(SECRETS_DIR);
    if !dir.is_dir() {
        return Err(AgentError::bad(format!("{SECRETS_DIR} is missing in this sandbox")));
    }
    for (name, _) in req.files.iter().chain(req.env.iter()) {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(AgentError::bad(format!("bad secret name {name:?}")));
        }
    }
    // Replace what was there: files no longer attached go.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !req.files.contains_key(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
    let _ = nix::unistd::chown(dir, Some(0.into()), Some(user.gid.into()));
    for (name, value) in &req.files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| AgentError::bad(format!("writing secret {name}: {e}")))?;
        f.write_all(value.as_bytes()).map_err(|e| AgentError::bad(format!("writing secret {name}: {e}")))?;
        nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&f), Some(user.uid.into()), Some(user.gid.into()))
            .map_err(|e| AgentError::bad(format!("secret {name}: chown: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| AgentError::bad(format!("secret {name}: {e}")))?;
    }
    let mut env: BTreeMap<String, String> = req.env.clone();
    if let Some(ca) = &req.ca_pem {
        let bundle = install_ca(ca);
        for k in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS"] {
            env.entry(k.to_string()).or_insert_with(|| bundle.clone());
        }
    }
    *s.table.extra_env.lock().unwrap() = env;
    Ok(Json(serde_json::json!({"files": req.files.len(), "env": req.env.len()})))
}

/// Put `ca` in the trust store: its own file, and (replacing an earlier
/// one) a marked block at the end of the system bundle. Returns the bundle
/// path for the env variables.
fn install_ca(ca: &str) -> String {
    if let Some(parent) = Path::new(CA_FILE).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(CA_FILE, ca);
    match std::fs::symlink_metadata(SYSTEM_BUNDLE) {
        Ok(m) if m.is_file() => {
            let old = std::fs::read_to_string(SYSTEM_BUNDLE).unwrap_or_default();
            let mut kept = match (old.find(CA_BEGIN), old.find(CA_END)) {
                (Some(a), Some(b)) if b > a => format!("{}{}", &old[..a], &old[b + CA_END.len()..]),
                _ => old,
            };
            if !kept.is_empty() && !kept.ends_with('\n') {
                kept.push('\n');
            }
            let new = format!("{kept}{CA_BEGIN}{}{}{CA_END}", ca, if ca.ends_with('\n') { "" } else { "\n" });
            let tmp = format!("{SYSTEM_BUNDLE}.spinup-tmp");
            if std::fs::write(&tmp, new).is_ok() {
                let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
                let _ = std::fs::rename(&tmp, SYSTEM_BUNDLE);
            }
            SYSTEM_BUNDLE.to_string()
        }
        _ => CA_FILE.to_string(),
    }
}

#[derive(serde::Deserialize)]
struct ConnectQuery {
    port: u16,
}

async fn connect(Query(q): Query<ConnectQuery>, body: Body) -> Result<Response, AgentError> {
    if q.port == 0 {
        return Err(AgentError::bad("port must be 1-65535"));
    }
    let sock = match tokio::net::TcpStream::connect(("127.0.0.1", q.port)).await {
        Ok(s) => s,
        Err(_) => tokio::net::TcpStream::connect(("::1", q.port)).await.map_err(|e| AgentError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            code: "connection_refused",
            message: format!("nothing accepts connections on port {} in the sandbox: {e}", q.port),
        })?,
    };
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let mut input = body.into_data_stream();
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = input.next().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok(Body::from_stream(stream).into_response())
}
