//! The listener: plain HTTP/1.1 (E2B_API_URL + E2B_SANDBOX_URL mode), or
//! TLS with HTTP/2 and HTTP/1.1 by ALPN (E2B_DOMAIN mode).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A certificate chain and key, PEM files.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn tls_config(tls: &Tls) -> anyhow::Result<rustls::ServerConfig> {
    let pem = std::fs::read(&tls.cert).with_context(|| format!("reading [e2b] tls_cert {}", tls.cert.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", tls.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", tls.cert.display());
    }
    let pem = std::fs::read(&tls.key).with_context(|| format!("reading [e2b] tls_key {}", tls.key.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", tls.key.display()))?
        .with_context(|| format!("{} holds no private key", tls.key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Bind `addr` and load the TLS files (errors surface here, before
/// anything is served); the future it returns serves `app` for good.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    tls: Option<Tls>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("binding the E2B listener {addr}"))?;
    let acceptor = match &tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(t)?))),
        None => None,
    };
    Ok(async move {
        let Some(acceptor) = acceptor else {
            // Streams are many small writes (one per event): without
            // TCP_NODELAY each waits for the client's delayed ACK (40 ms).
            use axum::serve::ListenerExt;
            let l = l.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            return Ok(axum::serve(l, app).await?);
        };
        loop {
            let (tcp, _) = match l.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("E2B listener accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                let Ok(Ok(stream)) = handshake.await else { return };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
