//! The MCP server, through the official MCP Python SDK (`mcp` from PyPI,
//! in the venv scripts/install-python-tools.sh makes) over both
//! transports, `spinup mcp` on stdio and streamable HTTP at the daemon's
//! `/mcp`, and raw JSON-RPC that is wrong in every way we can think of.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests report to the runner, which captures their output"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const KEY: &str = "mcp-test-key-0123456789";

fn client_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py")
}

/// A daemon with its TCP listener (API key required) on a port of its own.
fn start(name: &str) -> (Daemon, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(name, &["--tcp", &addr], &[("SPINUP_API_KEY", KEY)]);
    (d, port)
}

/// Run client.py to its end (bounded); a failure panics with its output
/// and the daemon's log.
async fn client(d: &Daemon, what: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(tools_python());
    cmd.arg(client_py()).args(args).env("PYTHONUNBUFFERED", "1");
    // `spinup mcp` reads these as every verb does; the test's own must not leak in.
    cmd.env_remove("SPINUP_HOST").env_remove("SPINUP_API_KEY").envs(envs.iter().copied());
    let text = run_client(d, what, cmd, Duration::from_secs(600)).await;
    assert!(text.contains("SCENARIO PASSED"), "{what} did not finish its scenario:\n{text}");
    text
}

/// Every tool through the official SDK, on both transports at once (one
/// daemon, one build of busybox): `spinup mcp` over the unix socket, the
/// HTTP endpoint with the bearer key (a wrong one is refused), and
/// `spinup mcp` over TCP with the key. gVisor gets the stdio scenario too
/// where this host runs it.
#[tokio::test]
async fn official_python_sdk_over_stdio_and_http() {
    let (d, port) = start("mcp-sdk");
    build_env(&d, "busybox").await;
    build_env(&d, "code-interpreter").await;
    let sock = d.sock.display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let tcp = format!("http://127.0.0.1:{port}");
    let (_, drivers) = d.req("GET", "/v1/drivers", None).await;
    let gvisor = drivers.as_array().unwrap().iter().any(|c| c["driver"] == "gvisor" && c["available"] == true);
    let gvisor_run = async {
        if gvisor {
            client(&d, "stdio on gvisor", &["stdio", BIN, "--driver", "gvisor"], &[("SPINUP_HOST", &sock)]).await;
        } else {
            println!("gvisor is not available here: its scenario is skipped");
        }
    };
    let (unix_env, tcp_env) =
        ([("SPINUP_HOST", sock.as_str())], [("SPINUP_HOST", tcp.as_str()), ("SPINUP_API_KEY", KEY)]);
    let http_args = ["http", url.as_str(), KEY];
    tokio::join!(
        client(&d, "stdio over the unix socket", &["stdio", BIN, "--code-env", "code-interpreter"], &unix_env),
        client(&d, "streamable HTTP", &http_args, &[]),
        client(&d, "stdio over TCP", &["stdio", BIN, "--smoke"], &tcp_env),
        gvisor_run,
    );
    // Nothing the scenarios made is left.
    let (_, list) = d.req("GET", "/v1/sandboxes", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

/// `spinup mcp` with a daemon that refuses it (a wrong key): each request
/// is answered with a JSON-RPC error, not left waiting.
#[tokio::test]
async fn stdio_proxy_answers_requests_the_daemon_refuses() {
    let (d, port) = start("mcp-proxy");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("mcp")
        .env("SPINUP_HOST", format!("http://127.0.0.1:{port}"))
        .env("SPINUP_API_KEY", "wrong-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use tokio::io::AsyncWriteExt;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    stdin.write_all(format!("{init}\n").as_bytes()).await.unwrap();
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // One answer: the request's; the notification gets none.
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["id"], 1, "{stdout}");
    assert_eq!(lines[0]["error"]["code"], -32603, "{stdout}");
    assert!(lines[0]["error"]["message"].as_str().unwrap().contains("401"), "{stdout}");
    assert!(out.status.success(), "{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    drop(d);
}

/// A raw HTTP request to the daemon's TCP listener.
async fn http(port: u16, method: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Bytes) {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut b = http::Request::builder().method(method).uri("/mcp").header("host", "127.0.0.1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx.send_request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let st = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (st, ct, resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default())
}

const AUTH: &str = "Bearer mcp-test-key-0123456789";

/// A JSON-RPC POST with the right headers and key: status and the answer.
async fn rpc(port: u16, body: &str) -> (u16, Value) {
    let h = [
        ("authorization", AUTH),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let (st, _, b) = http(port, "POST", &h, body).await;
    (st, serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into())))
}

#[tokio::test]
async fn malformed_json_rpc_gets_protocol_errors() {
    let (d, port) = start("mcp-raw");
    // A well-formed call works without any session: the server is stateless.
    let (st, v) = rpc(port, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(12), "{v}");
    let (st, v) =
        rpc(port, r#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{"name":"list_sandboxes"}}"#).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["structuredContent"], json!({"sandboxes": []}), "{v}");

    // Not JSON: a parse error.
    let (st, v) = rpc(port, "this is not json{").await;
    assert!((400..500).contains(&st), "{st} {v}");
    assert_eq!(v["error"]["code"], -32700, "{v}");
    // Not JSON-RPC 2.0.
    for bad in [
        r#"{"jsonrpc":"1.0","id":2,"method":"tools/list"}"#,
        r#"{"id":2,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":2}"#,
        r#"[1,2,3]"#,
        r#""tools/list""#,
    ] {
        let (st, v) = rpc(port, bad).await;
        let code = v["error"]["code"].as_i64();
        assert!((400..500).contains(&st) && matches!(code, Some(-32700) | Some(-32600)), "{bad}: {st} {v}");
    }
    // An unknown method.
    let (st, v) = rpc(port, r#"{"jsonrpc":"2.0","id":3,"method":"sandboxes/explode","params":{}}"#).await;
    assert_eq!((st, v["id"].clone(), v["error"]["code"].clone()), (200, json!(3), json!(-32601)), "{v}");
    // Arguments that do not fit a tool's schema: tool errors the model
    // sees (SEP-1303), `invalid_argument` like the service's own.
    for (args, what) in [
        (json!({"name": "run_command", "arguments": {"cmd": "true"}}), "no id"),
        (json!({"name": "read_file", "arguments": {"id": "0123456789ab", "path": 7}}), "a wrong type"),
        (json!({"name": "fork", "arguments": {"id": "0123456789ab", "count": -1}}), "a negative count"),
        (json!({"name": "list_sandboxes", "arguments": {"label": {}}}), "an unknown field"),
    ] {
        let body = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": args}).to_string();
        let (st, v) = rpc(port, &body).await;
        assert_eq!((st, v["result"]["isError"].clone()), (200, json!(true)), "{what}: {v}");
        assert_eq!(v["result"]["structuredContent"]["code"], "invalid_argument", "{what}: {v}");
        let text = v["result"]["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("invalid_argument: failed to deserialize parameters: "), "{what}: {v}");
    }
    // A call that is itself wrong: an unknown tool, no tool name,
    // arguments that are no object.
    for (params, what) in [
        (json!({"name": "no_such_tool", "arguments": {}}), "an unknown tool"),
        (json!({"arguments": {}}), "no name"),
        (json!({"name": "list_sandboxes", "arguments": [1]}), "arguments not an object"),
    ] {
        let body = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": params}).to_string();
        let (st, v) = rpc(port, &body).await;
        let code = v["error"]["code"].as_i64();
        // (rmcp calls a tools/call whose params it cannot read an unknown method.)
        assert!(matches!(code, Some(-32602) | Some(-32600) | Some(-32601)), "{what}: {st} {v}");
        assert_eq!(v["id"], 6, "{what}: {v}");
    }
    // A service error is a tool result too.
    let body =
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"diff","arguments":{"id":"0123456789ab"}}}"#;
    let (st, v) = rpc(port, body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().starts_with("not_found: "), "{v}");

    // HTTP itself: the key, the media types, the methods.
    let ok_headers = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")];
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let (st, _, _) = http(port, "POST", &ok_headers, list).await;
    assert_eq!(st, 401, "no key");
    let wrong = [("authorization", "Bearer nope"), ok_headers[0], ok_headers[1]];
    let (st, _, b) = http(port, "POST", &wrong, list).await;
    assert_eq!(st, 401, "wrong key: {}", String::from_utf8_lossy(&b));
    let (st, _, _) = http(port, "POST", &[("authorization", AUTH), ("content-type", "application/json")], list).await;
    assert_eq!(st, 406, "no Accept");
    let (st, _, _) =
        http(port, "POST", &[("authorization", AUTH), ("content-type", "text/plain"), ok_headers[1]], list).await;
    assert_eq!(st, 415, "not JSON content");
    let (st, _, _) = http(port, "GET", &[("authorization", AUTH), ("accept", "text/event-stream")], "").await;
    assert_eq!(st, 405, "no server stream without sessions");
    let (st, _, _) = http(port, "DELETE", &[("authorization", AUTH)], "").await;
    assert_eq!(st, 405, "no session to end");

    // The unix socket serves the same endpoint, without a key.
    let s = tokio::net::UnixStream::connect(&d.sock).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from(list)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(12), "{v}");
}
