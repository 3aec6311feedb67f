//! The transparent egress proxy for a sandbox's TCP ports 80 and 443.
//!
//! The host's nftables DNATs the sandbox's connections to ports 80/443 to a
//! per-sandbox listener; [`Proxy::serve`] accepts them, recovers the original
//! destination (`SO_ORIGINAL_DST`) and hands each to [`Proxy::handle`], which
//! reads the first bytes of the connection (not `MSG_PEEK`; they are replayed
//! to whatever comes next) and then:
//!
//! - **plain HTTP** (a complete HTTP/1.x request head): serves the connection
//!   with a hyper HTTP/1 server so that *every* request of a keep-alive
//!   connection is checked: its Host must be allowed by the policy (else
//!   `403`), and the request is forwarded to the original destination over
//!   one upstream connection per client connection. Placeholders are never
//!   swapped here (see below).
//!   Upgrades (WebSocket) are passed through with hyper's upgrade support.
//! - **TLS** (a complete ClientHello): the SNI must be allowed for the
//!   destination (else the connection is closed). If the host has no
//!   proxy-mode secret the bytes are spliced to the destination untouched;
//!   otherwise TLS is terminated with the sandbox's CA ([`crate::ca`]), every
//!   request must name the SNI host (else `421`), placeholders in header
//!   values are swapped, and requests go to the destination over a fresh TLS
//!   connection verified against [`ProxyConfig::upstream_roots`] for the SNI
//!   name (any failure: `502`, nothing of the request sent).
//! - **anything else** (no SNI, unrecognised bytes, timeout, oversized
//!   head): the policy decides with no name; allowed connections are spliced.
//!
//! Plain HTTP proves nothing about who answers (any address can be sent any
//! Host), so secret values go only over TLS, to an upstream whose
//! certificate verifies for the listed host name.
//!
//! Secret values never appear in logs or error messages: logs carry host
//! names and reasons only, and responses generated here never echo header
//! values.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use zeroize::Zeroizing;

use crate::ca::SandboxCa;

/// The most bytes read before deciding what a connection is.
const MAX_FIRST_BYTES: usize = 16 * 1024;
/// Default for [`ProxyConfig::max_conns`].
pub const DEFAULT_MAX_CONNS: usize = 256;
/// Default for [`ProxyConfig::peek_timeout`].
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ProxyConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox's network policy, as the proxy needs it.
pub trait EgressPolicy: Send + Sync + 'static {
    /// May the sandbox open a connection to `dst` naming `name` (TLS SNI or
    /// HTTP Host without port, lower-case; None when the first bytes carry
    /// neither)?
    fn allow(&self, dst: SocketAddrV4, name: Option<&str>) -> bool;
    /// (placeholder, value) pairs of the proxy-mode secrets listed for
    /// `host`. Non-empty ⇒ TLS to this host is intercepted and headers
    /// rewritten.
    fn secrets_for(&self, host: &str) -> Vec<(String, Zeroizing<String>)>;
}

/// Settings of one sandbox's proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Roots that upstream servers of intercepted connections must chain to.
    pub upstream_roots: Arc<rustls::RootCertStore>,
    /// Connections handled at once; beyond that, new ones are closed at once.
    pub max_conns: usize,
    /// Time allowed to receive the ClientHello / request head (and, for
    /// intercepted connections, to finish the TLS handshake).
    pub peek_timeout: Duration,
    /// Time allowed to connect to the destination (TCP, and TLS upstream).
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    /// The defaults (256 connections, 10 s timeouts) with these roots.
    pub fn new(upstream_roots: Arc<rustls::RootCertStore>) -> ProxyConfig {
        ProxyConfig {
            upstream_roots,
            max_conns: DEFAULT_MAX_CONNS,
            peek_timeout: DEFAULT_PEEK_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Roots from a PEM bundle (e.g. `/etc/ssl/certs/ca-certificates.crt`) plus
/// extra PEM files. A missing system bundle is skipped (as are certificates
/// in it that webpki cannot use); a missing or unusable extra file is an
/// error naming it.
pub fn load_roots(system_bundle: &Path, extra: &[PathBuf]) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match std::fs::read(system_bundle) {
        Ok(pem) => {
            let mut reader = pem.as_slice();
            let certs = rustls_pemfile::certs(&mut reader).filter_map(Result::ok);
            let (added, skipped) = roots.add_parsable_certificates(certs);
            tracing::debug!(bundle = %system_bundle.display(), added, skipped, "loaded system roots");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(bundle = %system_bundle.display(), "no system root bundle; skipped");
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", system_bundle.display())),
    }
    for path in extra {
        let pem = std::fs::read(path).with_context(|| format!("reading extra root file {}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.with_context(|| format!("parsing extra root file {}", path.display()))?;
            roots.add(cert).with_context(|| format!("unusable certificate in extra root file {}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            bail!("extra root file {} contains no certificate", path.display());
        }
    }
    Ok(roots)
}

/// An open connection: its destination, the name it was allowed for, and
/// a handle that ends it.
type LiveConn = (SocketAddrV4, Option<String>, Arc<tokio::sync::Notify>);

/// One sandbox's egress proxy.
pub struct Proxy {
    cfg: ProxyConfig,
    policy: Arc<dyn EgressPolicy>,
    /// TLS server side of intercepted connections (leaves from the CA).
    server_tls: std::sync::RwLock<Arc<rustls::ServerConfig>>,
    /// TLS client side towards real hosts (webpki against upstream_roots).
    client_tls: Arc<rustls::ClientConfig>,
    permits: Arc<Semaphore>,
    /// Open connections: (destination, name it was allowed for, a handle
    /// that ends it), so [`Proxy::recheck`] can cut what a new policy forbids.
    live: std::sync::Mutex<std::collections::HashMap<u64, LiveConn>>,
    next_conn: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    intercepted: AtomicU64,
}

/// Counters only: no key, certificate or secret.
impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("accepted", &self.accepted)
            .field("refused", &self.refused)
            .field("intercepted", &self.intercepted)
            .finish_non_exhaustive()
    }
}

/// Response bodies: upstream bodies streamed through, or our own text.
type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl Proxy {
    pub fn new(cfg: ProxyConfig, ca: Arc<SandboxCa>, policy: Arc<dyn EgressPolicy>) -> Arc<Proxy> {
        let mut client_tls = rustls::ClientConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()
            // ring supports every default version; this cannot fail.
            .expect("ring supports the default TLS versions")
            .with_root_certificates(Arc::clone(&cfg.upstream_roots))
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(Proxy {
            permits: Arc::new(Semaphore::new(cfg.max_conns)),
            live: Default::default(),
            next_conn: AtomicU64::new(0),
            server_tls: std::sync::RwLock::new(ca.server_config()),
            client_tls: Arc::new(client_tls),
            cfg,
            policy,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            intercepted: AtomicU64::new(0),
        })
    }

    /// (connections accepted, connections or requests refused by policy,
    /// connections intercepted).
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.intercepted.load(Ordering::Relaxed),
        )
    }

    /// Accept loop until aborted. The original destination of each
    /// connection comes from `SO_ORIGINAL_DST` (IPv4 only); connections
    /// without one, or aimed at the listener itself, are closed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let local = listener.local_addr().ok();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::debug!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(dst) = original_dst(&stream) else {
                tracing::debug!(%peer, "no IPv4 original destination; closing");
                continue;
            };
            if local == Some(SocketAddr::V4(dst)) {
                tracing::debug!(%peer, "connection aimed at the proxy itself; closing");
                continue;
            }
            let this = Arc::clone(&self);
            tokio::spawn(async move { this.handle(stream, dst).await });
        }
    }

    /// Terminate intercepted TLS with `ca` from now on (a sandbox gets its
    /// own CA only once it has proxy-mode secrets).
    pub fn set_ca(&self, ca: &Arc<SandboxCa>) {
        *self.server_tls.write().unwrap() = ca.server_config();
    }

    /// Cut every open connection the policy no longer allows (called after
    /// a policy change; plain HTTP is judged by the Host of its first
    /// request, every later request is checked anyway).
    pub fn recheck(&self) {
        let live = self.live.lock().unwrap();
        for (dst, name, cut) in live.values() {
            if !self.policy.allow(*dst, name.as_deref()) {
                tracing::info!(%dst, host = name.as_deref().unwrap_or("-"), "policy changed: cutting the connection");
                cut.notify_one();
            }
        }
    }

    /// One client connection whose original destination is `dst`.
    pub async fn handle(self: &Arc<Self>, client: TcpStream, dst: SocketAddrV4) {
        let cut = Arc::new(tokio::sync::Notify::new());
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.live.lock().unwrap().insert(id, (dst, None, cut.clone()));
        tokio::select! {
            _ = self.handle_inner(client, dst, id) => {}
            _ = cut.notified() => {}
        }
        self.live.lock().unwrap().remove(&id);
    }

    /// Record the name a connection was allowed for.
    fn named(&self, id: u64, name: Option<String>) {
        if let Some(e) = self.live.lock().unwrap().get_mut(&id) {
            e.1 = name;
        }
    }

    async fn handle_inner(self: &Arc<Self>, mut client: TcpStream, dst: SocketAddrV4, conn_id: u64) {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            tracing::info!(%dst, max = self.cfg.max_conns, "too many connections; closing");
            return;
        };
        let permit = Arc::new(permit);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);

        let (first, kind) = read_first(&mut client, self.cfg.peek_timeout).await;
        match &kind {
            First::Tls(Some(sni)) => self.named(conn_id, Some(sni.clone())),
            First::Http => {
                let head = String::from_utf8_lossy(&first);
                let host = head
                    .split("\r\n")
                    .skip(1)
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .and_then(|v| parse_host(&v));
                self.named(conn_id, host);
            }
            _ => {}
        }
        match kind {
            First::Closed => {}
            First::Http => {
                let conn = Arc::new(Conn::new(self, dst, None, permit));
                let io = Prefixed::new(first, client);
                serve_http(conn, io).await;
            }
            First::Tls(Some(sni)) => self.handle_tls(client, first, dst, sni, permit).await,
            First::Tls(None) | First::Other => {
                if self.policy.allow(dst, None) {
                    self.splice(client, first, dst, None).await;
                } else {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%dst, "connection without a name refused by policy");
                }
            }
        }
    }

    /// A TLS connection whose ClientHello names `sni`.
    async fn handle_tls(
        self: &Arc<Self>,
        client: TcpStream,
        first: Vec<u8>,
        dst: SocketAddrV4,
        sni: String,
        permit: Arc<OwnedSemaphorePermit>,
    ) {
        if !self.policy.allow(dst, Some(&sni)) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(host = %sni, %dst, "TLS connection refused by policy");
            return;
        }
        // Only whether there are any matters here; values are dropped
        // (and zeroized) at once.
        let has_secrets = !self.policy.secrets_for(&sni).is_empty();
        if !has_secrets {
            self.splice(client, first, dst, Some(&sni)).await;
            return;
        }

        self.intercepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(host = %sni, %dst, "intercepting TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server_tls.read().unwrap()));
        let tls = match timeout(self.cfg.peek_timeout, acceptor.accept(Prefixed::new(first, client))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(host = %sni, error = %e, "TLS handshake with the sandbox failed");
                return;
            }
            Err(_) => {
                tracing::debug!(host = %sni, "TLS handshake with the sandbox timed out");
                return;
            }
        };
        // rustls parsed the same bytes; make sure it agrees on the name.
        let agreed = tls.get_ref().1.server_name().is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(&sni));
        if !agreed {
            tracing::info!(host = %sni, "SNI seen by rustls differs from the parsed one; closing");
            return;
        }
        let conn = Arc::new(Conn::new(self, dst, Some(sni), permit));
        serve_http(conn, tls).await;
    }

    /// Connects to `dst`, replays `first`, and copies both ways until done.
    async fn splice(&self, mut client: TcpStream, first: Vec<u8>, dst: SocketAddrV4, name: Option<&str>) {
        let name = name.unwrap_or("-");
        let mut upstream = match timeout(self.cfg.connect_timeout, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(host = name, %dst, error = %e, "splice: connect failed");
                return;
            }
            Err(_) => {
                tracing::debug!(host = name, %dst, "splice: connect timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        if let Err(e) = upstream.write_all(&first).await {
            tracing::debug!(host = name, %dst, error = %e, "splice: replay failed");
            return;
        }
        drop(first);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(host = name, %dst, up, down, "splice done"),
            Err(e) => tracing::debug!(host = name, %dst, error = %e, "splice ended"),
        }
    }
}

/// The original (pre-DNAT) IPv4 destination of an accepted connection.
fn original_dst(stream: &TcpStream) -> Option<SocketAddrV4> {
    let sa = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst).ok()?;
    if i32::from(sa.sin_family) != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port)))
}

// ---------------------------------------------------------------------------
// First bytes: TLS ClientHello or HTTP request head?

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
enum First {
    /// Closed (or failed) before sending anything.
    Closed,
    /// A complete HTTP/1.x request head.
    Http,
    /// A complete TLS ClientHello, with its SNI host name if any.
    Tls(Option<String>),
    /// Anything else, or incomplete within the size/time bounds.
    Other,
}

/// Reads until [`classify`] decides, MAX_FIRST_BYTES are in, the peer stops
/// sending, or `limit` passes. Returns the bytes read and the verdict.
async fn read_first<S: AsyncRead + Unpin>(client: &mut S, limit: Duration) -> (Vec<u8>, First) {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(kind) = classify(&buf) {
            return (buf, kind);
        }
        if buf.len() >= MAX_FIRST_BYTES {
            return (buf, First::Other);
        }
        let want = chunk.len().min(MAX_FIRST_BYTES - buf.len());
        match timeout_at(deadline, client.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return (buf, First::Closed),
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (buf, First::Other),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Decides what `buf` is, or None if more bytes are needed to tell.
fn classify(buf: &[u8]) -> Option<First> {
    let &b0 = buf.first()?;
    if b0 == 0x16 {
        return match parse_client_hello(buf) {
            Hello::Incomplete => None,
            Hello::Invalid => Some(First::Other),
            Hello::Complete(name) => Some(First::Tls(name)),
        };
    }
    // An HTTP/1.x request line starts with a method token and a space.
    const MAX_METHOD: usize = 20;
    let token_len = buf.iter().take(MAX_METHOD + 1).take_while(|b| b.is_ascii_uppercase()).count();
    match buf.get(token_len) {
        None if token_len <= MAX_METHOD => None, // still inside the method
        Some(b' ') if token_len > 0 => {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                Some(First::Http)
            } else {
                None
            }
        }
        _ => Some(First::Other),
    }
}

/// Result of parsing the start of a TLS stream.
#[derive(Debug, PartialEq, Eq)]
enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a (well-formed, unambiguous) ClientHello.
    Invalid,
    /// A complete ClientHello, with its (lower-case) SNI host name if any.
    Complete(Option<String>),
}

/// A bounds-checked reader over a byte slice; every read returns None past
/// the end instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.bytes(2).map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.bytes(3).map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let n = match len_bytes {
            1 => usize::from(self.u8()?),
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.bytes(n).map(Reader)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses the TLS records at the start of `buf` far enough to get the
/// ClientHello's server_name. The ClientHello may span several records.
fn parse_client_hello(buf: &[u8]) -> Hello {
    const RECORD_HANDSHAKE: u8 = 0x16;
    const CLIENT_HELLO: u8 = 0x01;
    const MAX_RECORD: usize = 16384 + 2048;
    let mut handshake = Vec::new();
    let mut rest = Reader(buf);
    loop {
        if rest.0.len() < 5 {
            // Whatever is there must still look like a record header.
            if rest.0.first().is_some_and(|&t| t != RECORD_HANDSHAKE)
                || rest.0.get(1).is_some_and(|&v| v != 0x03)
                || rest.0.get(2).is_some_and(|&v| v > 0x04)
            {
                return Hello::Invalid;
            }
            return Hello::Incomplete;
        }
        let header = rest.bytes(5).unwrap_or_default();
        if header[0] != RECORD_HANDSHAKE || header[1] != 0x03 || header[2] > 0x04 {
            return Hello::Invalid;
        }
        let len = usize::from(header[3]) << 8 | usize::from(header[4]);
        if len == 0 || len > MAX_RECORD {
            return Hello::Invalid;
        }
        let Some(fragment) = rest.bytes(len) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(fragment);
        if handshake.len() >= 4 {
            if handshake[0] != CLIENT_HELLO {
                return Hello::Invalid;
            }
            let msg_len = usize::from(handshake[1]) << 16 | usize::from(handshake[2]) << 8 | usize::from(handshake[3]);
            if msg_len > MAX_FIRST_BYTES {
                return Hello::Invalid; // could never fit in what we read
            }
            if let Some(body) = handshake.get(4..4 + msg_len) {
                return match client_hello_sni(body) {
                    Some(name) => Hello::Complete(name),
                    None => Hello::Invalid,
                };
            }
        }
    }
}

/// The SNI host name of a ClientHello body: Some(None) if it has none, None
/// if the body is malformed or ambiguous (several names, duplicate
/// extension, a name that is not a plain DNS name).
fn client_hello_sni(body: &[u8]) -> Option<Option<String>> {
    const EXT_SERVER_NAME: usize = 0;
    let mut r = Reader(body);
    r.bytes(2)?; // legacy_version
    r.bytes(32)?; // random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = r.vec(2)?;
    if !r.is_empty() {
        return None;
    }
    let mut name = None;
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.vec(2)?;
        if ty != EXT_SERVER_NAME {
            continue;
        }
        if name.is_some() {
            return None; // duplicate server_name extension
        }
        let mut list = data.vec(2)?;
        if !data.is_empty() {
            return None;
        }
        let mut host = None;
        while !list.is_empty() {
            let name_type = list.u8()?;
            let value = list.vec(2)?;
            if name_type == 0 {
                if host.is_some() {
                    return None; // several host names
                }
                host = Some(normalize_dns_name(std::str::from_utf8(value.0).ok()?)?);
            }
        }
        name = Some(host?);
    }
    Some(name)
}

/// Lower-cases `name`, drops one trailing dot, and checks it is a plausible
/// DNS name (letters, digits, `-`, `_`, `.`; 1..=253 bytes; no empty label).
fn normalize_dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

/// The host of a Host header value / URI authority: port stripped,
/// lower-case, no trailing dot. IPv6 literals are returned without brackets.
/// None if the value is not a valid host[:port].
fn parse_host(value: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return port_ok(port).then(|| v6.to_ascii_lowercase());
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    if !port_ok(port) {
        return None;
    }
    normalize_dns_name(host)
}

/// An optional port must be 1-5 ASCII digits.
fn port_ok(port: Option<&str>) -> bool {
    port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The host a request names: the absolute-form URI's authority if any, else
/// its (single) Host header. Ok(None) when it names none (HTTP/1.0).
fn request_host<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    if let Some(authority) = req.uri().authority() {
        return parse_host(authority.as_str().rsplit('@').next().unwrap_or_default())
            .map(Some)
            .ok_or("the request URI's host is not valid");
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let Some(value) = hosts.next() else {
        return Ok(None);
    };
    if hosts.next().is_some() {
        return Err("the request has several Host headers");
    }
    value.to_str().ok().and_then(parse_host).map(Some).ok_or("the request's Host header is not valid")
}

/// Turns an absolute-form request into origin-form (what an origin server
/// expects), setting Host to the URI's authority so that it cannot disagree
/// with what was checked.
fn to_origin_form<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let host = HeaderValue::from_str(host_port).map_err(|_| "the request URI's host is not valid")?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = path.parse().map_err(|_| "the request URI is not valid")?;
    *req.uri_mut() = uri;
    req.headers_mut().insert(HOST, host);
    Ok(())
}

/// Replaces every placeholder of `secrets` in every header value by the
/// secret's value. Err if a resulting value is not a valid header value (the
/// error carries nothing of the value).
fn swap_placeholders(headers: &mut HeaderMap, secrets: &[(String, Zeroizing<String>)]) -> Result<(), ()> {
    // Longest placeholders first, so one that is a prefix of another cannot
    // shadow it; empty placeholders would match everywhere and are skipped.
    let mut secrets: Vec<&(String, Zeroizing<String>)> = secrets.iter().filter(|(p, _)| !p.is_empty()).collect();
    if secrets.is_empty() {
        return Ok(());
    }
    secrets.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let find = |at: &[u8]| secrets.iter().copied().find(|(p, _)| at.starts_with(p.as_bytes()));

    for value in headers.values_mut() {
        let bytes = value.as_bytes();
        if !secrets.iter().any(|(p, _)| bytes.windows(p.len()).any(|w| w == p.as_bytes())) {
            continue;
        }
        // Size the output first so it never reallocates (which would leave
        // unzeroized copies of the secret behind).
        let mut len = 0;
        let mut i = 0;
        while i < bytes.len() {
            match find(&bytes[i..]) {
                Some((p, v)) => (len, i) = (len + v.len(), i + p.len()),
                None => (len, i) = (len + 1, i + 1),
            }
        }
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        let mut i = 0;
        while i < bytes.len() {
            match find(&bytes[i..]) {
                Some((p, v)) => {
                    out.extend_from_slice(v.as_bytes());
                    i += p.len();
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        let mut swapped = HeaderValue::from_bytes(&out).map_err(|_| ())?;
        swapped.set_sensitive(true);
        *value = swapped;
    }
    Ok(())
}

/// Does the request ask for a protocol upgrade (e.g. WebSocket)?
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A plain-text response generated by the proxy. `msg` must never carry
/// header values.
fn text(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(msg)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

// ---------------------------------------------------------------------------
// HTTP serving (plain, and intercepted TLS)

/// State of one client connection served with hyper.
struct Conn {
    proxy: Arc<Proxy>,
    dst: SocketAddrV4,
    /// The SNI of an intercepted TLS connection; None for plain HTTP.
    sni: Option<String>,
    /// The one upstream connection of this client connection (re-dialled
    /// when it has closed). hyper serves HTTP/1 requests one at a time, so
    /// the lock is never contended.
    upstream: Mutex<Option<SendRequest<Incoming>>>,
    /// Held while the connection (or an upgraded tunnel of it) lives.
    permit: Arc<OwnedSemaphorePermit>,
}

/// Serves HTTP/1 on `io` until the client is done (or upgrades).
async fn serve_http<I>(conn: Arc<Conn>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let label = conn.sni.clone();
    let dst = conn.dst;
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.serve_request(req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        // Enables the (default 30 s) header read timeout, which also bounds
        // how long an idle keep-alive connection is kept.
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        tracing::debug!(host = label.as_deref().unwrap_or("-"), %dst, error = %e, "HTTP connection ended");
    }
}

impl Conn {
    fn new(proxy: &Arc<Proxy>, dst: SocketAddrV4, sni: Option<String>, permit: Arc<OwnedSemaphorePermit>) -> Conn {
        Conn { proxy: Arc::clone(proxy), dst, sni, upstream: Mutex::new(None), permit }
    }

    /// Checks, rewrites and forwards one request.
    async fn serve_request(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let policy = &self.proxy.policy;
        if req.method() == Method::CONNECT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "spinup: CONNECT is not supported here\n".into());
        }
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(why) => return text(StatusCode::BAD_REQUEST, format!("spinup: {why}\n")),
        };

        // The host whose secrets apply (and which names the upstream).
        let target = match &self.sni {
            Some(sni) => {
                if host.as_ref().is_some_and(|h| h != sni) {
                    tracing::info!(host = %sni, "request for another host on an intercepted connection");
                    return text(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!("spinup: this connection is for {sni}; the request names another host\n"),
                    );
                }
                Some(sni.clone())
            }
            None => {
                if !policy.allow(self.dst, host.as_deref()) {
                    self.proxy.refused.fetch_add(1, Ordering::Relaxed);
                    let shown = host.as_deref().unwrap_or("a request without a Host");
                    tracing::info!(host = shown, dst = %self.dst, "HTTP request refused by policy");
                    return text(
                        StatusCode::FORBIDDEN,
                        format!("spinup: {shown} is not allowed by this sandbox's network policy\n"),
                    );
                }
                host
            }
        };
        let label = target.as_deref().unwrap_or("the destination").to_string();

        if let Err(why) = to_origin_form(&mut req) {
            return text(StatusCode::BAD_REQUEST, format!("spinup: {why}\n"));
        }
        // Values go only where the upstream proves it is the listed host:
        // over TLS with full verification. Plain HTTP to any address could
        // claim any Host, so the placeholder passes unchanged there.
        if let (Some(target), Some(_)) = (&target, &self.sni) {
            let secrets = policy.secrets_for(target);
            if swap_placeholders(req.headers_mut(), &secrets).is_err() {
                tracing::info!(host = %target, "a secret is not a valid header value");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("spinup: a secret for {target} is not a valid HTTP header value\n"),
                );
            }
        }
        let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));

        let mut slot = self.upstream.lock().await;
        if let Err(why) = self.ready_upstream(&mut slot).await {
            tracing::info!(host = %label, dst = %self.dst, reason = %why, "upstream unavailable");
            return text(StatusCode::BAD_GATEWAY, format!("spinup: {why}\n"));
        }
        let Some(sender) = slot.as_mut() else {
            return text(StatusCode::BAD_GATEWAY, format!("spinup: no connection to {label}\n"));
        };
        let mut resp = match sender.send_request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                *slot = None;
                tracing::info!(host = %label, error = %e, "upstream request failed");
                return text(StatusCode::BAD_GATEWAY, format!("spinup: request to {label} failed: {e}\n"));
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The upstream connection now belongs to the tunnel.
            *slot = None;
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let permit = Arc::clone(&self.permit);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    tracing::debug!(host = %label, "upgraded connection done");
                });
            }
        }
        resp.map(|body| body.boxed())
    }

    /// Makes sure `slot` holds a ready upstream connection, dialling one if
    /// there is none or it has closed. Err carries a message for the client.
    async fn ready_upstream(&self, slot: &mut Option<SendRequest<Incoming>>) -> Result<(), String> {
        let alive = match slot.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            *slot = None;
            let mut sender = self.dial().await?;
            sender.ready().await.map_err(|e| format!("connection to {} failed: {e}", self.label()))?;
            *slot = Some(sender);
        }
        Ok(())
    }

    fn label(&self) -> String {
        self.sni.clone().unwrap_or_else(|| self.dst.to_string())
    }

    /// A new upstream HTTP/1 connection to the destination: TLS verified for
    /// the SNI name when intercepting, plain TCP otherwise.
    async fn dial(&self) -> Result<SendRequest<Incoming>, String> {
        let cfg = &self.proxy.cfg;
        let label = self.label();
        let tcp = match timeout(cfg.connect_timeout, TcpStream::connect(self.dst)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(format!("cannot connect to {label} ({}): {e}", self.dst)),
            Err(_) => return Err(format!("connecting to {label} ({}) timed out", self.dst)),
        };
        let _ = tcp.set_nodelay(true);
        match &self.sni {
            None => handshake(tcp, &label).await,
            Some(sni) => {
                let name = ServerName::try_from(sni.clone())
                    .map_err(|_| format!("upstream TLS to {sni} failed: not a valid server name"))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.proxy.client_tls));
                let tls = match timeout(cfg.connect_timeout, connector.connect(name, tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return Err(format!("upstream TLS to {sni} failed: {e}")),
                    Err(_) => return Err(format!("upstream TLS to {sni} failed: handshake timed out")),
                };
                handshake(tls, sni).await
            }
        }
    }
}

/// HTTP/1 client handshake on `io`; the connection task is spawned.
async fn handshake<I>(io: I, label: &str) -> Result<SendRequest<Incoming>, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {label} failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

// ---------------------------------------------------------------------------
// Replaying the first bytes

/// A stream that yields `prefix` before reading from `inner`; writes go
/// straight to `inner`.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new(); // done with it; free the memory
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    const PLACEHOLDER: &str = "SPINUP_PLACEHOLDER_abc";
    const SECRET: &str = "s3cr3t-value";

    // -- test PKI and servers ------------------------------------------------

    /// A test upstream CA and a server config presenting leaves it issued
    /// for `echo.test` and `other.test` (chosen by SNI).
    struct TestPki {
        ca_pem: String,
        server: Arc<rustls::ServerConfig>,
    }

    fn test_pki() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(DnType::CommonName, "test upstream CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
        for name in ["echo.test", "other.test"] {
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
            let ck = rustls::sign::CertifiedKey::new(vec![leaf.der().clone(), ca.der().clone()], signing);
            resolver.add(name, ck).unwrap();
        }
        let server = rustls::ServerConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        TestPki { ca_pem: ca.pem(), server: Arc::new(server) }
    }

    fn roots_of(pem: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(roots)
    }

    /// An HTTP(S) server answering every request with 200 and the request's
    /// headers as `name: value` lines; it records what it saw.
    struct Echo {
        addr: SocketAddrV4,
        conns: AtomicUsize,
        requests: std::sync::Mutex<Vec<String>>,
    }

    impl Echo {
        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn spawn_echo(tls: Option<Arc<rustls::ServerConfig>>) -> Arc<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else { unreachable!() };
        let echo = Arc::new(Echo { addr, conns: AtomicUsize::new(0), requests: Default::default() });
        let e = Arc::clone(&echo);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                e.conns.fetch_add(1, Ordering::SeqCst);
                let e = Arc::clone(&e);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let e = Arc::clone(&e);
                        async move {
                            let mut lines = String::new();
                            for (name, value) in req.headers() {
                                lines.push_str(&format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
                            }
                            e.requests.lock().unwrap().push(lines.clone());
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(lines))))
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        echo
    }

    /// Test policy: names in `allowed` (and no-name connections if
    /// `allow_none`) are allowed; echo.test has the secret.
    struct TestPolicy {
        allowed: Vec<&'static str>,
        allow_none: bool,
    }

    impl EgressPolicy for TestPolicy {
        fn allow(&self, _dst: SocketAddrV4, name: Option<&str>) -> bool {
            match name {
                Some(n) => self.allowed.contains(&n),
                None => self.allow_none,
            }
        }
        fn secrets_for(&self, host: &str) -> Vec<(String, Zeroizing<String>)> {
            if host == "echo.test" {
                vec![(PLACEHOLDER.to_string(), Zeroizing::new(SECRET.to_string()))]
            } else {
                Vec::new()
            }
        }
    }

    fn policy(allowed: &[&'static str]) -> Arc<dyn EgressPolicy> {
        Arc::new(TestPolicy { allowed: allowed.to_vec(), allow_none: false })
    }

    /// A proxy listener on 127.0.0.1 sending every connection to `dst`.
    async fn spawn_proxy(proxy: Arc<Proxy>, dst: SocketAddrV4) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let proxy = Arc::clone(&proxy);
                tokio::spawn(async move { proxy.handle(stream, dst).await });
            }
        });
        addr
    }

    fn new_proxy(roots: Arc<rustls::RootCertStore>, allowed: &[&'static str]) -> (Arc<Proxy>, Arc<SandboxCa>) {
        let ca = Arc::new(SandboxCa::generate("test sandbox CA").unwrap());
        let mut cfg = ProxyConfig::new(roots);
        cfg.peek_timeout = Duration::from_secs(5);
        cfg.connect_timeout = Duration::from_secs(5);
        (Proxy::new(cfg, Arc::clone(&ca), policy(allowed)), ca)
    }

    // -- clients ----------------------------------------------------------------

    fn client_tls(trust_pem: &str) -> tokio_rustls::TlsConnector {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots_of(trust_pem))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    async fn tls_connect<S>(io: S, sni: &str, trust_pem: &str) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(sni.to_string()).unwrap();
        timeout(Duration::from_secs(10), client_tls(trust_pem).connect(name, io))
            .await
            .map_err(|_| io::Error::other("timeout"))?
    }

    /// An HTTP/1 client over `io`.
    async fn http_client<S>(io: S) -> SendRequest<Empty<Bytes>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    /// GET / with Host `host` and `Authorization: Bearer <placeholder>`.
    async fn get(sender: &mut SendRequest<Empty<Bytes>>, host: &str) -> (StatusCode, String) {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .uri("/")
            .header(HOST, host)
            .header("authorization", format!("Bearer {PLACEHOLDER}"))
            .body(Empty::new())
            .unwrap();
        let resp = timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Reads until EOF/error; true if the peer closed within 5 s.
    async fn closed_by_peer(mut s: TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    // -- end-to-end tests ---------------------------------------------------------

    #[tokio::test]
    async fn proxy_intercepts_and_swaps_placeholder() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        let (proxy, ca) = new_proxy(roots_of(&pki.ca_pem), &["echo.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp, "echo.test", ca.cert_pem()).await.unwrap();
        let mut client = http_client(tls).await;
        let (status, body) = get(&mut client, "echo.test").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // A second request reuses the same upstream connection.
        let (status, _) = get(&mut client, "echo.test:443").await;
        assert_eq!(status, StatusCode::OK);

        let seen = echo.requests();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            assert!(r.contains(&format!("authorization: Bearer {SECRET}")), "{r}");
            assert!(!r.contains(PLACEHOLDER), "{r}");
        }
        assert_eq!(echo.conns.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.stats(), (1, 0, 1));
    }

    #[tokio::test]
    async fn proxy_splices_hosts_without_secrets() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        let (proxy, _ca) = new_proxy(roots_of(&pki.ca_pem), &["echo.test", "other.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        // The client trusts only the upstream CA: this works only if the
        // proxy splices instead of terminating TLS.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp, "other.test", &pki.ca_pem).await.unwrap();
        let mut client = http_client(tls).await;
        let (status, body) = get(&mut client, "other.test").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(&format!("authorization: Bearer {PLACEHOLDER}")), "{body}");
        assert!(!echo.requests().concat().contains(SECRET));
        assert_eq!(proxy.stats(), (1, 0, 0));
    }

    #[tokio::test]
    async fn proxy_host_differing_from_sni_is_misdirected() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        let (proxy, ca) = new_proxy(roots_of(&pki.ca_pem), &["echo.test", "other.test"]);
        let addr = spawn_proxy(proxy, echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp, "echo.test", ca.cert_pem()).await.unwrap();
        let mut client = http_client(tls).await;
        let (status, body) = get(&mut client, "other.test").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(!body.contains(SECRET) && !body.contains(PLACEHOLDER), "{body}");
        assert!(echo.requests().is_empty());
        assert_eq!(echo.conns.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn proxy_disallowed_sni_is_closed() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        let (proxy, ca) = new_proxy(roots_of(&pki.ca_pem), &["echo.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(tls_connect(tcp, "blocked.test", ca.cert_pem()).await.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(echo.conns.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.stats(), (1, 1, 0));
    }

    #[tokio::test]
    async fn proxy_plain_http_checks_every_request() {
        let echo = spawn_echo(None).await;
        let (proxy, _ca) = new_proxy(Arc::new(rustls::RootCertStore::empty()), &["allowed.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = http_client(tcp).await;
        let (status, _) = get(&mut client, "allowed.test").await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = get(&mut client, "Evil.test:80").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body, "spinup: evil.test is not allowed by this sandbox's network policy\n");
        // The connection stays usable for allowed hosts.
        let (status, _) = get(&mut client, "allowed.test").await;
        assert_eq!(status, StatusCode::OK);
        let seen = echo.requests();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|r| r.contains("host: allowed.test")));
        assert_eq!(proxy.stats(), (1, 1, 0));

        // A disallowed first request is refused too.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = http_client(tcp).await;
        let (status, _) = get(&mut client, "evil.test").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(echo.requests().len(), 2);
    }

    #[tokio::test]
    async fn proxy_plain_http_never_swaps() {
        let echo = spawn_echo(None).await;
        let (proxy, _ca) = new_proxy(Arc::new(rustls::RootCertStore::empty()), &["echo.test", "other.test"]);
        let addr = spawn_proxy(proxy, echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut client = http_client(tcp).await;
        let (status, _) = get(&mut client, "other.test").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = get(&mut client, "echo.test").await;
        assert_eq!(status, StatusCode::OK);
        let seen = echo.requests();
        // Plain HTTP proves nothing about who answers: no value, even for
        // the listed host.
        assert!(seen[0].contains(&format!("Bearer {PLACEHOLDER}")), "{}", seen[0]);
        assert!(seen[1].contains(&format!("Bearer {PLACEHOLDER}")) && !seen[1].contains(SECRET), "{}", seen[1]);
    }

    #[tokio::test]
    async fn proxy_untrusted_upstream_is_bad_gateway() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        // The proxy trusts some other CA, not the one that signed echo.test.
        let other = test_pki();
        let (proxy, ca) = new_proxy(roots_of(&other.ca_pem), &["echo.test"]);
        let addr = spawn_proxy(proxy, echo.addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp, "echo.test", ca.cert_pem()).await.unwrap();
        let mut client = http_client(tls).await;
        let (status, body) = get(&mut client, "echo.test").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("echo.test") && body.contains("certificate"), "{body}");
        assert!(!body.contains(SECRET) && !body.contains(PLACEHOLDER), "{body}");
        assert!(echo.requests().is_empty());
    }

    /// Writes the first `n` bytes, waits, then passes everything through.
    struct SplitFirstWrite {
        inner: TcpStream,
        first: usize,
        delay: Option<Pin<Box<tokio::time::Sleep>>>,
        state: u8, // 0: first write pending, 1: delaying, 2: pass-through
    }

    impl AsyncRead for SplitFirstWrite {
        fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for SplitFirstWrite {
        fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            loop {
                match this.state {
                    0 => {
                        let n = buf.len().min(this.first);
                        let r = Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
                        if let Poll::Ready(Ok(_)) = r {
                            this.state = 1;
                            this.delay = Some(Box::pin(tokio::time::sleep(Duration::from_millis(150))));
                        }
                        return r;
                    }
                    1 => {
                        let delay = this.delay.as_mut().unwrap();
                        std::task::ready!(delay.as_mut().poll(cx));
                        this.state = 2;
                    }
                    _ => return Pin::new(&mut this.inner).poll_write(cx, buf),
                }
            }
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn proxy_client_hello_split_across_writes() {
        let pki = test_pki();
        let echo = spawn_echo(Some(Arc::clone(&pki.server))).await;
        let (proxy, ca) = new_proxy(roots_of(&pki.ca_pem), &["echo.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        for first in [3, 40] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let io = SplitFirstWrite { inner: tcp, first, delay: None, state: 0 };
            let tls = tls_connect(io, "echo.test", ca.cert_pem()).await.unwrap();
            let mut client = http_client(tls).await;
            let (status, _) = get(&mut client, "echo.test").await;
            assert_eq!(status, StatusCode::OK);
        }
        assert!(echo.requests().iter().all(|r| r.contains(SECRET)));
        assert_eq!(proxy.stats().2, 2);
    }

    #[tokio::test]
    async fn proxy_max_conns_closes_the_excess() {
        let echo = spawn_echo(None).await;
        let ca = Arc::new(SandboxCa::generate("test sandbox CA").unwrap());
        let mut cfg = ProxyConfig::new(Arc::new(rustls::RootCertStore::empty()));
        cfg.max_conns = 2;
        cfg.peek_timeout = Duration::from_secs(30);
        let proxy = Proxy::new(cfg, ca, policy(&["allowed.test"]));
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;

        // Two idle connections hold both slots (waiting for first bytes).
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_peer(c).await, "third connection was not closed");
        assert_eq!(proxy.stats().0, 2);

        // Once one goes away, a new connection is served again.
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = TcpStream::connect(addr).await.unwrap();
        let mut client = http_client(d).await;
        let (status, _) = get(&mut client, "allowed.test").await;
        assert_eq!(status, StatusCode::OK);
        drop(b);
    }

    #[tokio::test]
    async fn proxy_unrecognised_bytes_follow_policy_for_no_name() {
        let echo = spawn_echo(None).await;
        let (proxy, _ca) = new_proxy(Arc::new(rustls::RootCertStore::empty()), &["allowed.test"]);
        let addr = spawn_proxy(Arc::clone(&proxy), echo.addr).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x01garbage\r\n").await.unwrap();
        assert!(closed_by_peer(s).await);
        assert_eq!(echo.conns.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.stats(), (1, 1, 0));

        // Allowed without a name: spliced (the echo server then sees bytes).
        let ca = Arc::new(SandboxCa::generate("x").unwrap());
        let pol = Arc::new(TestPolicy { allowed: vec![], allow_none: true });
        let proxy = Proxy::new(ProxyConfig::new(Arc::new(rustls::RootCertStore::empty())), ca, pol);
        let addr = spawn_proxy(proxy, echo.addr).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00garbage\r\n\r\n").await.unwrap();
        assert!(closed_by_peer(s).await); // the echo server rejects it
        assert_eq!(echo.conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn proxy_plain_http_upgrade_passes_through() {
        // An upstream that switches protocols and then echoes bytes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(up_addr) = listener.local_addr().unwrap() else { unreachable!() };
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 64];
                    let n = io.read(&mut buf).await.unwrap();
                    io.write_all(&buf[..n]).await.unwrap();
                });
                let mut resp = Response::new(Empty::<Bytes>::new());
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut().insert(UPGRADE, HeaderValue::from_static("echo"));
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
        let (proxy, _ca) = new_proxy(Arc::new(rustls::RootCertStore::empty()), &["ws.test"]);
        let addr = spawn_proxy(proxy, up_addr).await;

        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder()
            .uri("/")
            .header(HOST, "ws.test")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "echo")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        timeout(Duration::from_secs(5), io.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn proxy_load_roots() {
        let dir = std::env::temp_dir().join(format!("spinup-proxy-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = test_pki();
        let extra = dir.join("extra.pem");
        std::fs::write(&extra, &pki.ca_pem).unwrap();
        let missing_bundle = dir.join("no-such-bundle.crt");

        let roots = load_roots(&missing_bundle, std::slice::from_ref(&extra)).unwrap();
        assert_eq!(roots.len(), 1);
        // The extra file doubles as a "system bundle".
        let roots = load_roots(&extra, std::slice::from_ref(&extra)).unwrap();
        assert_eq!(roots.len(), 2);

        let missing = dir.join("missing-extra.pem");
        let err = load_roots(&missing_bundle, &[missing]).unwrap_err();
        assert!(format!("{err:#}").contains("missing-extra.pem"), "{err:#}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = load_roots(&missing_bundle, &[empty]).unwrap_err();
        assert!(format!("{err:#}").contains("empty.pem"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // -- parser unit tests ----------------------------------------------------------

    /// A real ClientHello from rustls for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(name.to_string()).unwrap()).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Re-frames a single-record ClientHello into records of `chunk` bytes.
    fn reframe(hello: &[u8], chunk: usize) -> Vec<u8> {
        let body = &hello[5..];
        let mut out = Vec::new();
        for part in body.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn proxy_sni_parser_reads_real_hellos() {
        let hello = client_hello("Echo.Test");
        assert_eq!(parse_client_hello(&hello), Hello::Complete(Some("echo.test".into())));
        assert_eq!(classify(&hello), Some(First::Tls(Some("echo.test".into()))));
        // Every truncation is merely incomplete.
        for cut in 0..hello.len() {
            assert_eq!(parse_client_hello(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
            assert_eq!(classify(&hello[..cut]), None, "cut at {cut}");
        }
        // Spread over several records.
        for chunk in [1, 7, 100] {
            let multi = reframe(&hello, chunk);
            assert_eq!(parse_client_hello(&multi), Hello::Complete(Some("echo.test".into())));
            for cut in 0..multi.len() {
                assert_eq!(parse_client_hello(&multi[..cut]), Hello::Incomplete);
            }
        }
        // No SNI for an IP address.
        let hello = client_hello("127.0.0.1");
        assert_eq!(parse_client_hello(&hello), Hello::Complete(None));
        // Trailing bytes after the hello do not matter.
        let mut more = client_hello("echo.test");
        more.extend_from_slice(b"junk");
        assert_eq!(parse_client_hello(&more), Hello::Complete(Some("echo.test".into())));
    }

    #[test]
    fn proxy_sni_parser_survives_garbage() {
        assert_eq!(parse_client_hello(&[0x16, 0x03, 0x09]), Hello::Invalid);
        assert_eq!(parse_client_hello(&[0x16, 0x02]), Hello::Invalid);
        assert_eq!(parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x00]), Hello::Invalid);
        assert_eq!(parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]), Hello::Invalid);
        assert_eq!(parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff]), Hello::Invalid);
        // A claimed-empty ClientHello body is malformed.
        assert_eq!(parse_client_hello(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0, 0, 0]), Hello::Invalid);
        // Flip every byte of a real hello, and fill with pseudo-random bytes.
        let hello = client_hello("echo.test");
        for i in 0..hello.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut h = hello.clone();
                h[i] ^= x;
                let _ = parse_client_hello(&h);
                let _ = classify(&h);
            }
        }
        let mut seed: u32 = 0x1234_5678;
        for len in 0..600 {
            let mut buf = vec![0x16, 0x03, 0x01];
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                buf.push(seed as u8);
            }
            let _ = parse_client_hello(&buf);
            let _ = classify(&buf);
        }
        // Two host names are ambiguous.
        let ext = |names: &[&str]| {
            let mut list = Vec::new();
            for n in names {
                list.push(0u8);
                list.extend_from_slice(&(n.len() as u16).to_be_bytes());
                list.extend_from_slice(n.as_bytes());
            }
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            let mut e = vec![0, 0];
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend(data);
            let mut body = vec![3, 3];
            body.extend([0u8; 32]);
            body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
            body.extend_from_slice(&(e.len() as u16).to_be_bytes());
            body.extend(e);
            client_hello_sni(&body)
        };
        assert_eq!(ext(&["a.test"]), Some(Some("a.test".into())));
        assert_eq!(ext(&["a.test", "b.test"]), None);
        assert_eq!(ext(&["bad name"]), None);
        assert_eq!(ext(&[]), None);
    }

    #[test]
    fn proxy_classify_http_heads() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(First::Http));
        assert_eq!(classify(b"get / HTTP/1.1\r\n\r\n"), Some(First::Other));
        assert_eq!(classify(b" GET"), Some(First::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(First::Other));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Some(First::Other));
        assert_eq!(classify(&[0xff; 10]), Some(First::Other));
    }

    #[test]
    fn proxy_host_parser() {
        assert_eq!(parse_host("Example.COM"), Some("example.com".into()));
        assert_eq!(parse_host("example.com:8080"), Some("example.com".into()));
        assert_eq!(parse_host("example.com."), Some("example.com".into()));
        assert_eq!(parse_host("[::1]:443"), Some("::1".into()));
        assert_eq!(parse_host("[::1]"), Some("::1".into()));
        assert_eq!(parse_host("10.0.0.1:80"), Some("10.0.0.1".into()));
        for bad in [
            "",
            ":",
            ":80",
            "a:",
            "a:b",
            "a:123456",
            "a b",
            "a..b",
            "[::1",
            "[zz]",
            "[::1]x",
            "a/b",
            "ä.test",
            "a.test:80:80",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
        let req = Request::builder().uri("http://Evil.test:81/x?y").header(HOST, "good.test").body(()).unwrap();
        assert_eq!(request_host(&req), Ok(Some("evil.test".into())));
        let mut req = req;
        to_origin_form(&mut req).unwrap();
        assert_eq!(req.uri(), "/x?y");
        assert_eq!(req.headers()[HOST], "Evil.test:81");
        let req = Request::builder().header(HOST, "a.test").header(HOST, "b.test").body(()).unwrap();
        assert!(request_host(&req).is_err());
        let req = Request::builder().body(()).unwrap();
        assert_eq!(request_host(&req), Ok(None));
    }

    #[test]
    fn proxy_swaps_placeholders_in_header_values_only() {
        let secrets = vec![
            ("PH_A".to_string(), Zeroizing::new("one".to_string())),
            ("PH_AB".to_string(), Zeroizing::new("two".to_string())),
            (String::new(), Zeroizing::new("never".to_string())),
        ];
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("PH_A PH_AB xPH_Ay"));
        h.insert("ph_a", HeaderValue::from_static("plain"));
        swap_placeholders(&mut h, &secrets).unwrap();
        assert_eq!(h["x-a"], "one two xoney");
        assert!(h["x-a"].is_sensitive());
        assert_eq!(h["ph_a"], "plain");
        // A value that cannot be a header value is an error that says nothing.
        let bad = vec![("PH".to_string(), Zeroizing::new("a\nb".to_string()))];
        let mut h = HeaderMap::new();
        h.insert("x", HeaderValue::from_static("PH"));
        assert!(swap_placeholders(&mut h, &bad).is_err());
    }

    #[tokio::test]
    async fn proxy_prefixed_stream_replays_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b"hello ".to_vec(), b);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}

/// The proxy's parsers, for the fuzz target in `fuzz/` (built only under
/// cargo-fuzz). Panics when one breaks its contract:
/// - `first` classifies a connection's first bytes; an SNI name it returns
///   is already normalized;
/// - `target` and `hosts` are an HTTP request's target and Host headers:
///   the host the proxy checks is the host the request goes to once it is
///   in origin form.
#[cfg(fuzzing)]
pub fn fuzz_parsers(first: &[u8], target: &str, hosts: &[&[u8]]) {
    if let Some(First::Tls(Some(name))) = classify(first) {
        assert_eq!(normalize_dns_name(&name).as_deref(), Some(name.as_str()), "SNI not normalized");
    }
    let Ok(mut req) = Request::builder().uri(target).body(()) else { return };
    for h in hosts {
        let Ok(v) = HeaderValue::from_bytes(h) else { return };
        req.headers_mut().append(HOST, v);
    }
    let Ok(checked) = request_host(&req) else { return };
    if to_origin_form(&mut req).is_ok() {
        assert_eq!(request_host(&req).ok(), Some(checked.clone()), "checked {checked:?}, sent {req:?}");
    }
}
