//! Host side of the protocol: one HTTP/2 connection per sandbox, cloned
//! freely; every call is its own stream.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyDataStream, BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::frame::{Frame, FrameReader};
use crate::types::ErrorBody;
use crate::{PROTOCOL_HEADER, PROTOCOL_VERSION};

/// Request body type: anything that yields bytes.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
/// Frames coming back from the agent.
pub type FrameStream = FrameReader<BodyDataStream<Incoming>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the sandbox agent: {0}")]
    Connect(String),
    #[error("lost the connection to the sandbox agent: {0}")]
    Transport(String),
    /// The agent answered with an error.
    #[error("{message}")]
    Remote { status: u16, code: String, message: String },
    #[error("unexpected agent response: {0}")]
    Decode(String),
}

pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body fed from a channel of byte chunks (e.g. a file being uploaded).
pub fn channel_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    use futures::StreamExt;
    let s = tokio_util_stream(rx).map(|r| r.map(hyper::body::Frame::data));
    BodyExt::boxed_unsync(StreamBody::new(s))
}

fn tokio_util_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Clone, Debug)]
pub struct AgentClient {
    tx: hyper::client::conn::http2::SendRequest<Body>,
}

impl AgentClient {
    /// Speak the protocol over any byte stream.
    pub async fn connect<IO>(io: IO) -> Result<Self, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(AgentClient { tx })
    }

    pub async fn connect_unix(path: &Path) -> Result<Self, ClientError> {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::Connect(format!("{}: {e}", path.display())))?;
        Self::connect(s).await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Send one request; non-2xx answers become [`ClientError::Remote`].
    pub async fn request(&self, method: Method, uri: &str, body: Body) -> Result<Response<Incoming>, ClientError> {
        let mut tx = self.tx.clone();
        tx.ready().await.map_err(|e| ClientError::Transport(e.to_string()))?;
        let req = Request::builder()
            .method(method)
            .uri(format!("http://agent{uri}"))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string())
            .body(body)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = tx.send_request(req).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        Err(remote_error(status, &bytes))
    }

    /// A JSON call.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        json: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = match json {
            Some(v) => full_body(serde_json::to_vec(v).map_err(|e| ClientError::Decode(e.to_string()))?),
            None => empty_body(),
        };
        let resp = self.request(method, uri, body).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Transport(e.to_string()))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{uri}: {e}")))
    }

    /// A byte tunnel to TCP `port` on the guest's loopback: bytes sent on
    /// the sender reach the guest's listener, its answers come back on the
    /// stream. Dropping the sender half-closes the connection. `first`
    /// (what the client already sent) travels with the request itself, so
    /// the agent writes it as soon as it has connected: a guest server that
    /// reads once right after accept finds it there.
    pub async fn tunnel(
        &self,
        port: u16,
        first: Option<Bytes>,
    ) -> Result<(mpsc::Sender<Bytes>, BodyDataStream<Incoming>), ClientError> {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        if let Some(b) = first.filter(|b| !b.is_empty()) {
            tx.send(b).await.expect("receiver is alive");
        }
        let s = tokio_util_stream(rx).map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
        let body = BodyExt::boxed_unsync(StreamBody::new(s));
        let resp = self.request(Method::POST, &format!("/v1/net/connect?port={port}"), body).await?;
        Ok((tx, resp.into_body().into_data_stream()))
    }

    /// Open a process stream (`/v1/exec` or `/v1/processes/{pid}/attach`).
    /// Frames sent on the returned sender go to the agent; the reader yields
    /// its answers. Dropping the sender ends the request body.
    pub async fn process_stream(
        &self,
        uri: &str,
        first: Option<Frame>,
    ) -> Result<(mpsc::Sender<Frame>, FrameStream), ClientError> {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel::<Frame>(32);
        if let Some(f) = first {
            tx.send(f).await.expect("receiver is alive");
        }
        let s = tokio_util_stream(rx).map(|f| Ok::<_, std::io::Error>(hyper::body::Frame::data(f.encode())));
        let body = BodyExt::boxed_unsync(StreamBody::new(s));
        let resp = self.request(Method::POST, uri, body).await?;
        Ok((tx, FrameReader::new(resp.into_body().into_data_stream())))
    }
}

fn remote_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Remote { status: status.as_u16(), code: e.code, message: e.message },
        Err(_) => ClientError::Remote {
            status: status.as_u16(),
            code: "agent_error".into(),
            message: format!("agent answered {status}: {}", String::from_utf8_lossy(bytes)),
        },
    }
}
