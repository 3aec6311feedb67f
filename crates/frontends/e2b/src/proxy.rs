//! Port traffic: `{port}-{id}.{domain}` (or `E2b-Sandbox-Port: PORT`)
//! reaches that port inside the sandbox, carried by its agent (so it
//! works on every driver and whatever the network policy). A sandbox's
//! ports need its traffic access token unless it was made with
//! `network.allowPublicTraffic: true` (Spinup's default is private).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::json;
use spinup_api::Tunnel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;

use crate::{token, App, Target, JUPYTER_PORT};

fn port_closed(t: &Target, why: &str) -> Response {
    let msg = format!("The sandbox is running but port is not open ({why})");
    let body = json!({"message": msg, "code": 502, "sandboxId": t.id.as_str(), "port": t.port});
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

pub async fn port(app: &Arc<App>, t: Target, req: Request) -> Response {
    if t.port == JUPYTER_PORT {
        return port_closed(&t, "the code interpreter is not served by Spinup's E2B API yet");
    }
    let public = t.sb.labels.get(crate::wire::PUBLIC_TRAFFIC_LABEL).is_some_and(|v| v == "true");
    if !public && !token::traffic_ok(&app.cfg.token_key, &t.id, req.headers()) {
        return crate::wire::error(
            StatusCode::UNAUTHORIZED,
            "this sandbox's ports need its traffic access token (E2B-Traffic-Access-Token), or create it with network.allowPublicTraffic",
        );
    }
    let tunnel = match app.svc.tunnel(&t.id, t.port).await {
        Ok(tun) => tun,
        Err(e) => return port_closed(&t, &e.to_string()),
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(Pipe::new(tunnel))).await {
        Ok(x) => x,
        Err(e) => return port_closed(&t, &e.to_string()),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    parts.headers.remove("e2b-sandbox-id");
    parts.headers.remove("e2b-sandbox-port");
    parts.headers.remove("e2b-traffic-access-token");
    match send.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => port_closed(&t, &e.to_string()),
    }
}

/// A tunnel as one byte stream (hyper's client runs over it).
struct Pipe {
    tx: PollSender<Bytes>,
    rx: spinup_api::ByteStream,
    pending: Bytes,
}

impl Pipe {
    fn new(t: Tunnel) -> Self {
        Pipe { tx: PollSender::new(t.input), rx: t.output, pending: Bytes::new() }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) => self.pending = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {
                let b = Bytes::copy_from_slice(buf);
                self.tx.send_item(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}
