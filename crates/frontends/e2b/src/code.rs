//! E2B's code-interpreter API (port 49999: `/execute`, `/contexts`), as
//! `e2b-code-interpreter` speaks it, translated onto the service's code
//! calls. Like any port, it needs the sandbox's traffic access token
//! unless the sandbox was made with `network.allowPublicTraffic`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use spinup_api::{CodeContext, CodeEvent, CodeRequest, ContextRequest, Error, Language};

use crate::{token, App, Target};

/// Bodies of these calls are small; code is at most this.
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, Default, Deserialize)]
struct Execute {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct NewContext {
    language: Option<String>,
    cwd: Option<String>,
}

pub async fn serve(app: &Arc<App>, t: Target, req: Request) -> Response {
    let public = t.sb.labels.get(crate::wire::PUBLIC_TRAFFIC_LABEL).is_some_and(|v| v == "true");
    if !public && !token::traffic_ok(&app.cfg.token_key, &t.id, req.headers()) {
        return crate::wire::error(
            StatusCode::UNAUTHORIZED,
            "this sandbox's ports need its traffic access token (E2B-Traffic-Access-Token), or create it with network.allowPublicTraffic",
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return failure(&Error::InvalidArgument(format!("reading the body: {e}"))),
    };
    let svc = &app.svc;
    let r = match (&method, segs.as_slice()) {
        (&Method::GET, ["health"]) => return StatusCode::NO_CONTENT.into_response(),
        (&Method::POST, ["execute"]) => return execute(app, &t, &body).await,
        (&Method::GET, ["contexts"]) => svc.code_contexts(&t.id).await.map(|l| {
            let l: Vec<Value> = l.iter().map(context).collect();
            axum::Json(l).into_response()
        }),
        (&Method::POST, ["contexts"]) => match parse::<NewContext>(&body) {
            Ok(n) => match n.language.as_deref().map(Language::parse).transpose() {
                Ok(language) => svc
                    .create_code_context(&t.id, ContextRequest { language, cwd: n.cwd })
                    .await
                    .map(|c| axum::Json(context(&c)).into_response()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        (&Method::DELETE, ["contexts", ctx]) => {
            svc.remove_code_context(&t.id, ctx).await.map(|()| StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, ["contexts", ctx, "restart"]) => {
            svc.restart_code_context(&t.id, ctx).await.map(|_| StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(Error::NotFound { kind: "code interpreter route", id: format!("{method} {path}") }),
    };
    r.unwrap_or_else(|e| failure(&e))
}

async fn execute(app: &Arc<App>, t: &Target, body: &Bytes) -> Response {
    let x: Execute = match parse(body) {
        Ok(x) => x,
        Err(e) => return failure(&e),
    };
    let language = match x.language.as_deref().map(Language::parse).transpose() {
        Ok(l) => l,
        Err(e) => return failure(&e),
    };
    let req = CodeRequest {
        code: x.code,
        language,
        context: x.context_id,
        env: x.env_vars.unwrap_or_default(),
        timeout_s: None,
    };
    let events = match app.svc.run_code(&t.id, req).await {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    let lines = events.filter_map(|e| async move {
        let mut line = event(e)?.to_string();
        line.push('\n');
        Some(Ok::<_, std::io::Error>(Bytes::from(line)))
    });
    ([(http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

/// One event as E2B's NDJSON line; `None` for what E2B has no line for.
fn event(e: CodeEvent) -> Option<Value> {
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    Some(match e {
        CodeEvent::Stdout { text } => json!({"type": "stdout", "text": text, "timestamp": now}),
        CodeEvent::Stderr { text } => json!({"type": "stderr", "text": text, "timestamp": now}),
        CodeEvent::Result { is_main_result, data } => {
            let mut out = Map::new();
            out.insert("type".into(), json!("result"));
            out.insert("is_main_result".into(), json!(is_main_result));
            let mut extra = Map::new();
            for (mime, v) in data {
                let key = match mime.as_str() {
                    "text/plain" => "text",
                    "text/html" => "html",
                    "text/markdown" => "markdown",
                    "image/svg+xml" => "svg",
                    "image/png" => "png",
                    "image/jpeg" => "jpeg",
                    "application/pdf" => "pdf",
                    "text/latex" => "latex",
                    "application/json" => "json",
                    "application/javascript" => "javascript",
                    _ => {
                        extra.insert(mime, v);
                        continue;
                    }
                };
                out.insert(key.into(), v);
            }
            if !extra.is_empty() {
                out.insert("extra".into(), Value::Object(extra));
            }
            Value::Object(out)
        }
        CodeEvent::Error { name, value, traceback } => {
            json!({"type": "error", "name": name, "value": value, "traceback": traceback})
        }
        CodeEvent::End { execution_count, .. } => {
            json!({"type": "number_of_executions", "execution_count": execution_count?})
        }
    })
}

fn context(c: &CodeContext) -> Value {
    json!({"id": c.id, "language": c.language.as_str(), "cwd": c.cwd})
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("malformed JSON body: {e}")))
}

/// The service's error as E2B's; the SDK raises NotFoundException for a
/// 404 and shows the body for the rest.
fn failure(e: &Error) -> Response {
    crate::wire::from_error(e)
}
