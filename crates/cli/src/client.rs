//! A small client for the daemon's API: HTTP/1.1 over the unix socket (or
//! TCP with a bearer key), plus WebSockets for exec.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use spinup_protocol::client::{empty_body, full_body, Body};
use tokio::io::{AsyncRead, AsyncWrite};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp { authority: String },
}

#[derive(Clone)]
pub struct Client {
    pub target: Target,
    api_key: Option<String>,
}

/// Percent-encode a query component.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(host: Option<String>, api_key: Option<String>) -> Result<Client> {
        let target = match host {
            None => Target::Unix(PathBuf::from(spinup_daemon::DEFAULT_SOCKET)),
            Some(h) if h.starts_with("http://") => {
                Target::Tcp { authority: h.trim_start_matches("http://").trim_end_matches('/').to_string() }
            }
            Some(h) if h.starts_with("unix://") => Target::Unix(PathBuf::from(h.trim_start_matches("unix://"))),
            Some(h) if h.starts_with('/') => Target::Unix(PathBuf::from(h)),
            Some(h) => bail!("--host '{h}' must be a socket path, unix://PATH or http://HOST:PORT"),
        };
        Ok(Client { target, api_key })
    }

    pub async fn connect(&self) -> Result<Box<dyn Io>> {
        match &self.target {
            Target::Unix(p) => Ok(Box::new(tokio::net::UnixStream::connect(p).await.with_context(|| {
                format!("cannot reach the spinup daemon at {} (is `spinup serve` running? are you root?)", p.display())
            })?)),
            Target::Tcp { authority } => Ok(Box::new(
                tokio::net::TcpStream::connect(authority)
                    .await
                    .with_context(|| format!("cannot reach the spinup daemon at {authority}"))?,
            )),
        }
    }

    fn authority(&self) -> &str {
        match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp { authority } => authority,
        }
    }

    /// One request on a connection of its own, with the host and the API
    /// key; the answer whatever its status.
    pub async fn send(&self, req: http::request::Builder, body: Body) -> Result<Response<Incoming>> {
        let io = self.connect().await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = req.header("host", self.authority());
        if let Some(k) = &self.api_key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        tx.send_request(req.body(body)?).await.context("daemon request failed")
    }

    pub async fn request(&self, method: Method, path: &str, body: Body) -> Result<Response<Incoming>> {
        let resp = self.send(Request::builder().method(method).uri(path), body).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let msg = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(anyhow!(ApiError { status: status.as_u16(), message: msg }))
    }

    /// The answers below are the daemon's JSON as it sent it (`null` when
    /// empty): `--json` prints it unchanged, tables read it into the
    /// `spinup_api` type (see `Ctx::emit`).
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json_body(Method::GET, path, empty_body()).await
    }

    /// A GET whose answer the command needs as a `T` whatever the output mode.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(serde_json::from_value(self.get(path).await?)?)
    }

    /// POST with a JSON body (a `spinup_api` request).
    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Value> {
        self.json_body(Method::POST, path, full_body(serde_json::to_vec(body)?)).await
    }

    /// POST without a body.
    pub async fn post_empty(&self, path: &str) -> Result<Value> {
        self.json_body(Method::POST, path, empty_body()).await
    }

    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<Value> {
        self.json_body(Method::PUT, path, full_body(serde_json::to_vec(body)?)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.json_body(Method::DELETE, path, empty_body()).await
    }

    /// Any request body; the answer parsed as JSON (`null` when empty).
    pub async fn json_body(&self, method: Method, path: &str, body: Body) -> Result<Value> {
        let resp = self.request(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn websocket(&self, path: &str) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", self.authority()).into_client_request()?;
        if let Some(k) = &self.api_key {
            req.headers_mut().insert("authorization", format!("Bearer {k}").parse()?);
        }
        let io = self.connect().await?;
        let (ws, _) = tokio_tungstenite::client_async(req, io).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                anyhow!(ApiError { status: resp.status().as_u16(), message: msg })
            }
            other => anyhow!(other),
        })?;
        Ok(ws)
    }
}

/// An error answer from the daemon.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

/// Body fed by a blocking writer (e.g. a tar builder) on another thread.
pub struct ChannelWriter(pub tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload aborted"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
