//! Port traffic: `{port}-{id}.{domain}` (or `E2b-Sandbox-Port: PORT`)
//! reaches that port inside the sandbox, carried by its agent (so it
//! works on every driver and whatever the network policy). A sandbox's
//! ports need its traffic access token unless it was made with
//! `network.allowPublicTraffic: true` (Spinup's default is private).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::json;
use spinup_api::TunnelIo;

use crate::{token, App, Target};

fn port_closed(t: &Target, why: &str) -> Response {
    let msg = format!("The sandbox is running but port is not open ({why})");
    let body = json!({"message": msg, "code": 502, "sandboxId": t.id.as_str(), "port": t.port});
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

pub async fn port(app: &Arc<App>, t: Target, req: Request) -> Response {
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
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(TunnelIo::new(tunnel))).await {
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
