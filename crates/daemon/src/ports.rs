//! Exposed ports: `spinup port ID 8080` makes a guest's port reachable on
//! a host address the daemon chooses (loopback TCP, or a unix socket in the
//! data dir). Every connection is carried by the sandbox's agent
//! (`/v1/net/connect`), so it works the same on every driver, whatever the
//! network policy, and nothing on the host routes into a sandbox. Bytes are
//! spliced untouched, so WebSocket and long-lived HTTP work.
//!
//! A port is public or needs its access token: the first request on a
//! connection must carry `X-Spinup-Token: T` or `?spinup_token=T` (for
//! browsers and WebSocket clients); the connection is then spliced. A bad
//! or missing token gets a 401 and nothing reaches the guest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use spinup_model::{Error, PortExposure, Result, SandboxState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::manager::Manager;

/// The token itself is never kept (only its sha256).
#[derive(Debug)]
pub struct Exposed {
    pub info: PortExposure,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Exposed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use spinup_api::{ExposeAnswer, ExposeRequest};

fn key(id: &str, port: u16) -> String {
    format!("{id}:{port}")
}

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Manager {
    /// Expose `req.port` of sandbox `id`.
    pub(crate) async fn expose_now(self: &Arc<Self>, id: &str, req: ExposeRequest) -> Result<ExposeAnswer> {
        spinup_model::validate_id(id)?;
        if req.port == 0 {
            return Err(Error::InvalidArgument("port must be 1-65535".into()));
        }
        if req.unix && req.listen.is_some() {
            return Err(Error::InvalidArgument("give either unix or listen, not both".into()));
        }
        let address = if req.unix {
            let dir = self.envs.data_dir().join("ports");
            std::fs::create_dir_all(&dir).map_err(|e| Error::internal("ports dir", e))?;
            dir.join(format!("{id}-{}.sock", req.port)).display().to_string()
        } else {
            let a = req.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
            let sa: std::net::SocketAddr =
                a.parse().map_err(|_| Error::InvalidArgument(format!("listen {a:?} is not an IP:PORT address")))?;
            if !sa.ip().is_loopback() {
                return Err(Error::InvalidArgument(format!(
                    "listen {a}: ports are exposed on loopback only (put your own proxy in front for more)"
                )));
            }
            a
        };
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        self.require(&sb, "port_exposure")?;
        if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Error::Conflict(format!("sandbox {id} is {}", sb.state)));
        }
        if let Some(e) = sb.ports.iter().find(|p| p.port == req.port) {
            return Err(Error::Conflict(format!(
                "port {} of {id} is already exposed at {}; remove that first (spinup port {id} {} --rm)",
                req.port, e.address, req.port
            )));
        }
        let token = (!req.public).then(|| {
            let mut b = [0u8; 24];
            getrandom::fill(&mut b).expect("OS randomness");
            hex::encode(b)
        });
        let info =
            PortExposure { port: req.port, address, public: req.public, token_sha256: token.as_deref().map(sha) };
        let info = self.listen(id, info).await?;
        sb.ports.push(info.clone());
        sb.updated_at = spinup_model::now_ms();
        if let Err(e) = self.store.update_sandbox(&sb, sb.state, None) {
            self.ports.lock().unwrap().remove(&key(id, req.port));
            return Err(e);
        }
        tracing::info!(id, port = req.port, address = %info.address, public = req.public, "port exposed");
        Ok(ExposeAnswer {
            port: req.port,
            url: (!req.unix).then(|| format!("http://{}", info.address)),
            address: info.address,
            public: req.public,
            token,
        })
    }

    /// Bind and serve one exposure; returns it with the bound address.
    async fn listen(self: &Arc<Self>, id: &str, mut info: PortExposure) -> Result<PortExposure> {
        let l = if info.address.starts_with('/') {
            let _ = std::fs::remove_file(&info.address);
            let l = tokio::net::UnixListener::bind(&info.address)
                .map_err(|e| Error::internal(format!("binding {}", info.address), e))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&info.address, std::fs::Permissions::from_mode(0o666));
            Listener::Unix(l)
        } else {
            let l = tokio::net::TcpListener::bind(&info.address)
                .await
                .map_err(|e| Error::Conflict(format!("cannot listen on {}: {e}", info.address)))?;
            info.address = l.local_addr().map_err(|e| Error::internal("local addr", e))?.to_string();
            Listener::Tcp(l)
        };
        let m = Arc::downgrade(self);
        let (sid, port, token) = (id.to_string(), info.port, info.token_sha256.clone());
        let task = tokio::spawn(async move {
            loop {
                let conn: Box<dyn Io> = match &l {
                    Listener::Tcp(l) => match l.accept().await {
                        Ok((s, _)) => {
                            let _ = s.set_nodelay(true);
                            Box::new(s)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    Listener::Unix(l) => match l.accept().await {
                        Ok((s, _)) => Box::new(s),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Some(m) = m.upgrade() else { return };
                let (sid, token) = (sid.clone(), token.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(m, conn, &sid, port, token.as_deref()).await {
                        tracing::debug!(id = %sid, port, "port connection: {e}");
                    }
                });
            }
        });
        self.ports.lock().unwrap().insert(key(id, info.port), Exposed { info: info.clone(), task });
        Ok(info)
    }

    /// Stop exposing a port.
    pub(crate) async fn unexpose_now(&self, id: &str, port: u16) -> Result<()> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut sb = self.get(id)?;
        let before = sb.ports.len();
        sb.ports.retain(|p| p.port != port);
        if sb.ports.len() == before {
            return Err(Error::NotFound { kind: "exposed port", id: key(id, port) });
        }
        if let Some(e) = self.ports.lock().unwrap().remove(&key(id, port)) {
            if e.info.address.starts_with('/') {
                let _ = std::fs::remove_file(&e.info.address);
            }
        }
        self.store.update_sandbox(&sb, sb.state, None)
    }

    /// A destroyed sandbox's exposures go with it.
    pub(crate) fn unexpose_all(&self, id: &str) {
        let prefix = format!("{id}:");
        let mut ports = self.ports.lock().unwrap();
        let keys: Vec<String> = ports.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
        for k in keys {
            if let Some(e) = ports.remove(&k) {
                if e.info.address.starts_with('/') {
                    let _ = std::fs::remove_file(&e.info.address);
                }
            }
        }
    }

    /// After a restart: listen again on the addresses recorded.
    pub async fn recover_ports(self: &Arc<Self>) {
        let Ok(all) = self.store.list_sandboxes() else { return };
        for (sb, _) in all {
            if !matches!(sb.state, SandboxState::Running | SandboxState::Paused) {
                continue;
            }
            for p in &sb.ports {
                if let Err(e) = self.listen(&sb.id, p.clone()).await {
                    tracing::warn!(id = %sb.id, port = p.port, "cannot expose again: {e}");
                }
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The request head's token, from `X-Spinup-Token` or `spinup_token=`.
fn token_of(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let first = lines.next()?;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("x-spinup-token") {
                return Some(v.trim().to_string());
            }
        }
    }
    let target = first.split(' ').nth(1)?;
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("spinup_token=")).map(str::to_string)
}

async fn respond(conn: &mut Box<dyn Io>, status: &str, msg: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
        msg.len()
    );
    let _ = conn.write_all(r.as_bytes()).await;
    let _ = conn.shutdown().await;
}

async fn serve(m: Arc<Manager>, mut conn: Box<dyn Io>, id: &str, port: u16, token: Option<&str>) -> Result<()> {
    let mut head = Vec::new();
    if let Some(want) = token {
        // Read the first request head (bounded in size and time).
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                let n = conn.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Some(end);
                }
                if head.len() > 32 * 1024 {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        let Some(end) = got else {
            respond(&mut conn, "400 Bad Request", "spinup: expected an HTTP request carrying the port's token\n").await;
            return Ok(());
        };
        let ok = token_of(&head[..end + 4]).is_some_and(|t| {
            let h = sha(&t);
            // Equal-length hex strings: compare all bytes.
            h.len() == want.len() && h.bytes().zip(want.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
        });
        if !ok {
            respond(
                &mut conn,
                "401 Unauthorized",
                "spinup: this port needs its access token (header X-Spinup-Token or query spinup_token)\n",
            )
            .await;
            return Ok(());
        }
    }
    let sb = m.get(id)?;
    let agent = match m.agent_for(&sb).await {
        Ok(a) => a,
        Err(e) => {
            if token.is_some() {
                respond(&mut conn, "502 Bad Gateway", &format!("spinup: sandbox {id} is not reachable: {e}\n")).await;
            }
            return Err(e);
        }
    };
    let (tx, mut rx) = match agent.tunnel(port, Some(Bytes::from(head))).await {
        Ok(t) => t,
        Err(e) => {
            if token.is_some() {
                respond(&mut conn, "502 Bad Gateway", &format!("spinup: {e}\n")).await;
            }
            return Err(Error::Agent(e.to_string()));
        }
    };
    let (mut rd, mut wr) = tokio::io::split(conn);
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping tx ends the request body: the guest sees a half-close.
    };
    let down = async move {
        while let Some(Ok(chunk)) = rx.next().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_from_header_or_query() {
        assert_eq!(super::token_of(b"GET / HTTP/1.1\r\nX-Spinup-Token: abc\r\n\r\n").as_deref(), Some("abc"));
        assert_eq!(
            super::token_of(b"GET /ws?a=1&spinup_token=xyz HTTP/1.1\r\nHost: h\r\n\r\n").as_deref(),
            Some("xyz")
        );
        assert_eq!(super::token_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), None);
    }
}
