//! The router against the route table, over a service that answers every
//! call with one recognisable error.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures::stream::BoxStream;
use futures::StreamExt as _;
use http_body_util::BodyExt;
use spinup_api::service::{Layer, SecretValue};
use spinup_api::*;
use spinup_protocol::{AgentInfo, ProcessInfo, SignalRequest};
use tower::ServiceExt;

/// Answers every call with `<.0> fake service`.
struct Refuses(&'static str);

impl Refuses {
    fn no<T>(&self) -> Result<T> {
        Err(Error::Unavailable(format!("{}fake service", self.0)))
    }
}

#[async_trait::async_trait]
impl SandboxService for Refuses {
    async fn drivers(&self) -> Result<Vec<Capabilities>> {
        self.no()
    }
    async fn gc(&self) -> Result<GcReport> {
        self.no()
    }
    async fn list(&self, _: ListQuery) -> Result<Vec<Sandbox>> {
        self.no()
    }
    async fn create(&self, _: CreateRequest) -> Result<Sandbox> {
        self.no()
    }
    async fn get(&self, _: &SandboxId) -> Result<Sandbox> {
        self.no()
    }
    async fn remove(&self, _: &SandboxId, _: bool) -> Result<()> {
        self.no()
    }
    async fn set_timeout(&self, _: &SandboxId, _: TimeoutRequest) -> Result<Sandbox> {
        self.no()
    }
    async fn info(&self, _: &SandboxId) -> Result<AgentInfo> {
        self.no()
    }
    async fn events(&self, _: &SandboxId) -> Result<Vec<Transition>> {
        self.no()
    }
    async fn pause(&self, _: &SandboxId, _: PauseRequest) -> Result<Sandbox> {
        self.no()
    }
    async fn resume(&self, _: &SandboxId) -> Result<Sandbox> {
        self.no()
    }
    async fn start(&self, _: &SandboxId) -> Result<Sandbox> {
        self.no()
    }
    async fn update_resources(&self, _: &SandboxId) -> Result<Sandbox> {
        self.no()
    }
    async fn snapshot(&self, _: &SandboxId, _: SnapshotRequest) -> Result<Snapshot> {
        self.no()
    }
    async fn fork(&self, _: &SandboxId, _: ForkRequest) -> Result<ForkResult> {
        self.no()
    }
    async fn diff(&self, _: &SandboxId, _: DiffQuery) -> Result<Diff> {
        self.no()
    }
    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.no()
    }
    async fn snapshot_get(&self, _: &str) -> Result<Snapshot> {
        self.no()
    }
    async fn snapshot_remove(&self, _: &str) -> Result<()> {
        self.no()
    }
    async fn snapshot_layer(&self, _: &str) -> Result<Layer> {
        self.no()
    }
    async fn set_network(&self, _: &SandboxId, _: NetworkPolicy) -> Result<Sandbox> {
        self.no()
    }
    async fn ports(&self, _: &SandboxId) -> Result<Vec<PortExposure>> {
        self.no()
    }
    async fn expose(&self, _: &SandboxId, _: ExposeRequest) -> Result<ExposeAnswer> {
        self.no()
    }
    async fn unexpose(&self, _: &SandboxId, _: u16) -> Result<()> {
        self.no()
    }
    async fn tunnel(&self, _: &SandboxId, _: u16) -> Result<spinup_api::Tunnel> {
        self.no()
    }
    async fn attach_secrets(&self, _: &SandboxId, _: AttachRequest) -> Result<Sandbox> {
        self.no()
    }
    async fn secrets(&self) -> Result<Vec<SecretInfo>> {
        self.no()
    }
    async fn secret(&self, _: &str) -> Result<SecretInfo> {
        self.no()
    }
    async fn set_secret(&self, _: &str, _: SecretValue) -> Result<SecretSet> {
        self.no()
    }
    async fn remove_secret(&self, _: &str) -> Result<()> {
        self.no()
    }
    async fn ready(&self, _: &SandboxId) -> Result<()> {
        self.no()
    }
    async fn exec(&self, _: &SandboxId, _: ExecRequest, _: bool) -> Result<ExecSession> {
        self.no()
    }
    async fn attach(&self, _: &SandboxId, _: u32) -> Result<ExecSession> {
        self.no()
    }
    async fn processes(&self, _: &SandboxId) -> Result<Vec<ProcessInfo>> {
        self.no()
    }
    async fn signal(&self, _: &SandboxId, _: u32, _: SignalRequest) -> Result<serde_json::Value> {
        self.no()
    }
    async fn stdin(&self, _: &SandboxId, _: u32, _: String, _: ByteStream) -> Result<Forwarded> {
        self.no()
    }
    /// A watch of `/streamed` answers one line, then holds the stream
    /// open (as a live watch does); everything else is refused.
    async fn files(&self, _: &SandboxId, req: FileRequest) -> Result<Forwarded> {
        if req.op != FileOp::Watch || req.query != "path=/streamed&recursive=true" {
            return self.no();
        }
        let first = futures::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"type\":\"started\"}\n"))
        });
        Ok(Forwarded {
            status: 200,
            content_type: Some("application/x-ndjson".into()),
            content_length: None,
            body: Box::pin(first.chain(futures::stream::pending())),
        })
    }
    async fn environments(&self) -> Result<EnvList> {
        self.no()
    }
    async fn environment(&self, _: &str) -> Result<Environment> {
        self.no()
    }
    async fn remove_environment(&self, _: &str) -> Result<()> {
        self.no()
    }
    async fn import_environment(&self, _: &str, _: ByteStream) -> Result<Environment> {
        self.no()
    }
    async fn build_environment(&self, _: &str) -> Result<BoxStream<'static, BuildEvent>> {
        self.no()
    }
    async fn run_code(&self, _: &SandboxId, _: CodeRequest) -> Result<BoxStream<'static, CodeEvent>> {
        self.no()
    }
    async fn code_contexts(&self, _: &SandboxId) -> Result<Vec<CodeContext>> {
        self.no()
    }
    async fn create_code_context(&self, _: &SandboxId, _: ContextRequest) -> Result<CodeContext> {
        self.no()
    }
    async fn restart_code_context(&self, _: &SandboxId, _: &str) -> Result<CodeContext> {
        self.no()
    }
    async fn remove_code_context(&self, _: &SandboxId, _: &str) -> Result<()> {
        self.no()
    }
    async fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.no()
    }
    async fn create_key(&self, _: KeyRequest) -> Result<NewKey> {
        self.no()
    }
    async fn remove_key(&self, _: &str) -> Result<()> {
        self.no()
    }
    async fn audit(&self, _: AuditQuery) -> Result<Vec<AuditEntry>> {
        self.no()
    }
}

struct OneKey;

impl Authenticator for OneKey {
    fn authenticate(&self, key: &str) -> Option<Arc<dyn SandboxService>> {
        (key == "tenant-key").then(|| Arc::new(Refuses("the tenant's ")) as Arc<dyn SandboxService>)
    }
}

/// Behind `with_auth`, a request runs on the service its key resolved
/// to, never the router's; no key, or an unknown one, is 401.
#[tokio::test]
async fn a_keyed_request_runs_on_its_callers_service() {
    let app = crate::with_auth(crate::router(Arc::new(Refuses(""))), Arc::new(OneKey));
    for (auth, status, marker) in [
        (Some("Bearer tenant-key"), StatusCode::SERVICE_UNAVAILABLE, "the tenant's fake service"),
        (Some("Bearer other"), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some("tenant-key"), StatusCode::UNAUTHORIZED, "unauthorized"),
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
    ] {
        let mut req = Request::builder().uri("/v1/drivers");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), status, "{auth:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(marker), "{auth:?}: {body:?}");
    }
}

/// A concrete path for a template: ids are ids, other segments plausible.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{id}" => "0123456789ab",
            "{pid}" | "{port}" => "7",
            "{op}" => "mkdir",
            "{name}" => "busybox",
            "{context}" => "default-python",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(method: &str, path: &str, ws: bool) -> (StatusCode, String) {
    let app = crate::router(Arc::new(Refuses("")));
    let mut req = Request::builder().method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap()).uri(path);
    if ws {
        req = req
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    // A body each JSON handler takes.
    let body = if path.ends_with("/signal") {
        "{\"signal\": 15}"
    } else if path.ends_with("/timeout") {
        "{\"timeout_s\": 1}"
    } else if path.ends_with("/code") {
        "{\"code\": \"1\"}"
    } else {
        "{}"
    };
    let resp = app.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn every_route_in_the_table_reaches_its_handler() {
    for r in ROUTES {
        let path = concrete(r.path);
        let (status, body) = call(r.method, &path, r.path.ends_with("/ws")).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{} {path} is not routed: {body}", r.method);
        assert!(!body.contains("route 'requested' not found"), "{} {path} fell through: {body}", r.method);
        if r.path.ends_with("/ws") {
            // Routed to a WebSocket handler: without a real connection to
            // upgrade, its upgrade extractor answers before it runs.
            assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{} {path}: {body}", r.method);
        } else if r.op != Op::OpenApi {
            // Every other handler asks the service.
            assert!(body.contains("fake service"), "{} {path} answered without the service: {status} {body}", r.method);
        }
    }
}

#[tokio::test]
async fn nothing_outside_the_table_is_served() {
    // Every path of the table with every method it does not list.
    let methods = ["get", "post", "put", "patch", "delete"];
    for r in ROUTES {
        for m in methods {
            if ROUTES.iter().any(|x| x.path == r.path && x.method == m) {
                continue;
            }
            let (status, body) = call(m, &concrete(r.path), false).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {} is served but not in the table: {body}", r.path);
        }
    }
    for path in ["/v1", "/v1/sandbox", "/v1/sandboxes/0123456789ab/nothing", "/v2/sandboxes", "/"] {
        let (status, body) = call("get", path, false).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.contains("\"code\":\"not_found\""), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_bad_id_is_a_missing_sandbox_and_bad_input_gets_the_error_shape() {
    let (status, body) = call("get", "/v1/sandboxes/..%2F..%2Fetc", false).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("\"code\":\"not_found\""), "{body}");
    let (status, body) = call("get", "/v1/sandboxes?color=red", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("unknown query parameter"), "{body}");
    let (status, body) = call("delete", "/v1/sandboxes/0123456789ab/ports/notaport", false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("bad port"), "{body}");
}

#[tokio::test]
async fn a_watch_streams_each_line_as_it_comes() {
    let app = crate::router(Arc::new(Refuses("")));
    let req = Request::builder()
        .uri("/v1/sandboxes/0123456789ab/files/watch?path=/streamed&recursive=true")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert!(!resp.headers().contains_key("content-length"));
    // The first line arrives while the stream is still open: not buffered.
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .expect("the first line, before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap().as_ref(), b"{\"type\":\"started\"}\n");
}

#[tokio::test]
async fn a_body_past_the_limit_is_413_as_axum_answers_it() {
    let big = vec![b' '; 3 << 20];
    for path in ["/v1/sandboxes", "/v1/sandboxes/0123456789ab/files/mkdir"] {
        let app = crate::router(Arc::new(Refuses("")));
        let req = Request::builder().method(Method::POST).uri(path).body(Body::from(big.clone())).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let e: spinup_api::ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(e.code, "payload_too_large", "{path}: {}", e.message);
    }
}

/// What axum answers itself (a method a path does not serve, a WebSocket
/// route without an upgrade) is the API's JSON error too, headers kept.
#[tokio::test]
async fn axums_own_answers_are_json_errors() {
    let app = crate::router(Arc::new(Refuses("")));
    let req = Request::builder().method(Method::PATCH).uri("/v1/sandboxes").body(Body::empty()).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e: spinup_api::ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.code, "method_not_allowed");
    let (status, body) = call("get", "/v1/sandboxes/0123456789ab/exec/ws", false).await;
    assert!(status.is_client_error(), "{status} {body}");
    let e: spinup_api::ErrorBody = serde_json::from_slice(body.as_bytes()).unwrap();
    assert!(!e.message.is_empty(), "{body}");
}

/// The served document and the router are one table: every route has an
/// operation with its answers, and the document has nothing else.
#[tokio::test]
async fn the_served_document_describes_exactly_the_routes() {
    let (status, body) = call("get", "/v1/openapi.json", false).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(ROUTES.iter().any(|r| r.path == path && r.method == method), "{method} {path} is not routed");
            documented += 1;
        }
    }
    assert_eq!(documented, ROUTES.len());
    for r in ROUTES {
        let responses = doc["paths"][r.path][r.method]["responses"].as_object().unwrap();
        assert!(responses.contains_key("400") || responses.len() >= 3, "{} {}", r.method, r.path);
    }
}
