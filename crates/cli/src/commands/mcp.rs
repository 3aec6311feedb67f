//! `spinup mcp`: MCP over stdio, for desktop agents. A proxy: each
//! JSON-RPC message read from stdin (one per line) is POSTed to the
//! daemon's `/mcp` endpoint (the unix socket, or `SPINUP_HOST` over TCP
//! with the API key) and every message of the answer is written to stdout,
//! one per line. The server itself is the daemon's (crates/frontends/mcp,
//! whose docs say why it is a proxy); this knows nothing of the tools.
//!
//! Messages are forwarded concurrently (a long `run_command` does not hold
//! up the others); stdout gets whole lines only. When stdin closes, the
//! answers still on their way are written before it exits. A failure of
//! the daemon or of the connection answers the request with a JSON-RPC
//! error, so a client never waits for an answer that cannot come.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use spinup_protocol::client::full_body;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::ctx::Ctx;

/// The endpoint (spinup_mcp::PATH).
const PATH: &str = "/mcp";

/// JSON-RPC's "internal error": what a request gets when the daemon
/// cannot answer it.
const INTERNAL_ERROR: i64 = -32603;

pub async fn run(ctx: &Ctx) -> Result<i32> {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = out_rx.recv().await {
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    // The version the client's `initialize` negotiated, for the
    // MCP-Protocol-Version header of later requests.
    let version: Arc<Mutex<Option<String>>> = Arc::default();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (client, out, version) = (ctx.client.clone(), out_tx.clone(), version.clone());
        tasks.spawn(async move { forward(&client, line, &out, &version).await });
        // Reap the finished ones as we go.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(out_tx);
    let _ = writer.await;
    Ok(0)
}

/// One message to the daemon, its answer to stdout.
async fn forward(client: &Client, line: String, out: &mpsc::Sender<Vec<u8>>, version: &Mutex<Option<String>>) {
    // Unparsable lines go to the server as they are: it answers them.
    let msg: Option<Value> = serde_json::from_str(&line).ok();
    let id = msg.as_ref().and_then(|m| m.get("id")).filter(|_| is_request(msg.as_ref())).cloned();
    let initialize = msg.as_ref().is_some_and(|m| m["method"] == "initialize");
    let sent = version.lock().expect("version lock").clone();
    match post(client, line, if initialize { None } else { sent }).await {
        Ok(answers) => {
            for a in answers {
                if initialize {
                    if let Some(v) = a["result"]["protocolVersion"].as_str() {
                        *version.lock().expect("version lock") = Some(v.to_string());
                    }
                }
                let _ = out.send(serde_json::to_vec(&a).expect("JSON")).await;
            }
        }
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("spinup mcp: {e}");
            if let Some(id) = id {
                let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": INTERNAL_ERROR, "message": e}});
                let _ = out.send(serde_json::to_vec(&err).expect("JSON")).await;
            }
        }
    }
}

/// A request (it has a method and an id), not a notification or a response.
fn is_request(msg: Option<&Value>) -> bool {
    msg.is_some_and(|m| m.get("method").is_some() && m.get("id").is_some_and(|id| !id.is_null()))
}

/// POST one message; the JSON-RPC messages of the answer (none for an
/// accepted notification or response).
async fn post(client: &Client, body: String, version: Option<String>) -> Result<Vec<Value>> {
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(v) = version {
        req = req.header("mcp-protocol-version", v);
    }
    let resp = client.send(req, full_body(body)).await?;
    let status = resp.status();
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if sse {
        // Messages as their events complete (a stream may stay open a while).
        let mut events = Sse::default();
        let mut answers = vec![];
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                answers.extend(events.push(&data));
            }
        }
        answers.extend(events.push(b"\n\n"));
        return Ok(answers);
    }
    let bytes = body.collect().await?.to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if status.is_success() {
            return Ok(vec![]);
        }
        bail!("the daemon answered HTTP {status} to an MCP message");
    }
    match serde_json::from_slice::<Value>(&bytes) {
        // A JSON-RPC message (an answer, or the server's error for this
        // message), whatever the status; or a batch.
        Ok(Value::Array(batch)) => Ok(batch),
        Ok(v) if v.get("jsonrpc").is_some() => Ok(vec![v]),
        _ => bail!("the daemon answered HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
    }
}

/// Server-sent events: the `data` of each complete event, as JSON.
#[derive(Default)]
struct Sse {
    buf: Vec<u8>,
}

impl Sse {
    fn push(&mut self, b: &[u8]) -> Vec<Value> {
        // CR only ends lines in SSE (JSON carries none unescaped), so
        // dropping it turns CRLF into LF.
        self.buf.extend(b.iter().filter(|&&c| c != b'\r'));
        let mut out = vec![];
        // An event ends with a blank line; it is only read whole (so a
        // character split between chunks is never cut).
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            // Priming and keep-alive events carry no message.
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_priming_events_skipped() {
        let mut s = Sse::default();
        assert!(s.push(b"id: 0\nretry: 3000\ndata:\n\n").is_empty());
        assert!(s.push(b"data: {\"jsonrpc\":\"2.0\",").is_empty());
        let got = s.push(b"\"id\":1,\"result\":{}}\r\n\r\n: keep-alive\n\ndata: {\"a\":1}\n\n");
        assert_eq!(got, vec![json!({"jsonrpc": "2.0", "id": 1, "result": {}}), json!({"a": 1})]);
        assert!(s.buf.is_empty());
    }

    #[test]
    fn only_requests_get_synthesized_errors() {
        assert!(is_request(Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))));
        assert!(!is_request(Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))));
        assert!(!is_request(Some(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}))));
        assert!(!is_request(None));
    }
}
