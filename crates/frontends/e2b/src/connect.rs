//! The Connect protocol with the JSON codec, as E2B's SDKs speak it:
//! unary calls are a JSON body answered with JSON (errors: a non-200
//! status and `{code, message}`); streaming calls carry envelopes
//! (`[flags u8][len u32 BE][JSON]`) both ways and end with an end-stream
//! envelope (flags 0x02) holding `{}` or `{"error": …}`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use spinup_api::Error;

/// The largest envelope or unary body accepted; larger is refused with
/// `resource_exhausted`, never buffered.
pub const MAX_MESSAGE: usize = 4 << 20;
const END_STREAM: u8 = 0x02;
const COMPRESSED: u8 = 0x01;

/// A Connect error: its code name and message.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: &'static str,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ConnectError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ConnectError::new("invalid_argument", message)
    }

    /// Connect's HTTP mapping, for unary answers.
    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "out_of_range" | "failed_precondition" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl From<Error> for ConnectError {
    fn from(e: Error) -> Self {
        let code = match e.code() {
            "not_found" => "not_found",
            "invalid_argument" => "invalid_argument",
            "conflict" => "failed_precondition",
            "unsupported" => "unimplemented",
            "unavailable" | "agent_error" => "unavailable",
            "permission_denied" => "permission_denied",
            "no_space" => "resource_exhausted",
            _ => "internal",
        };
        ConnectError::new(code, e.to_string())
    }
}

impl IntoResponse for ConnectError {
    /// A unary error.
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.json())).into_response()
    }
}

/// A unary request's message, read whole up to [`MAX_MESSAGE`] bytes.
pub async fn unary_request<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ConnectError> {
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_MESSAGE))
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ConnectError::new("resource_exhausted", format!("a message may be at most {MAX_MESSAGE} bytes"))
            } else {
                ConnectError::new("canceled", format!("reading the request: {e}"))
            }
        })?
        .to_bytes();
    let body: &[u8] = &body;
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.is_empty() && !ct.starts_with("application/json") {
        return Err(ConnectError::new("unimplemented", format!("content type '{ct}': only the JSON codec is served")));
    }
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ConnectError::invalid(format!("malformed request message: {e}")))
}

/// A unary answer.
pub fn unary<T: Serialize>(r: Result<T, ConnectError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    Bytes::from(out)
}

pub fn message<T: Serialize>(m: &T) -> Bytes {
    envelope(0, &serde_json::to_vec(m).expect("messages always serialize"))
}

pub fn end_stream(err: Option<&ConnectError>) -> Bytes {
    let v = match err {
        None => json!({}),
        Some(e) => json!({"error": e.json()}),
    };
    envelope(END_STREAM, &serde_json::to_vec(&v).expect("JSON"))
}

/// What a streaming handler yields: messages, then at most one error
/// (which ends the stream).
pub type Events = BoxStream<'static, Result<Bytes, ConnectError>>;

/// A streaming answer: always HTTP 200 with the messages, then exactly
/// one end-stream envelope (the JS SDK insists on it), a stream error
/// inside it. When `keepalive` is given, a keepalive message is sent after
/// that long without one (never before the first message: the SDK wants
/// `start` first).
pub fn streaming(events: Events, keepalive: Option<(Duration, Bytes)>) -> Response {
    let body = pump(events, keepalive);
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/connect+json"));
    r
}

fn pump(
    events: Events,
    keepalive: Option<(Duration, Bytes)>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct S {
        events: Events,
        keepalive: Option<(Duration, Bytes)>,
        started: bool,
        done: bool,
    }
    futures::stream::unfold(S { events, keepalive, started: false, done: false }, |mut s| async move {
        if s.done {
            return None;
        }
        let next = match (&s.keepalive, s.started) {
            (Some((every, _)), true) => tokio::time::timeout(*every, s.events.next()).await.ok(),
            _ => Some(s.events.next().await),
        };
        let out = match next {
            None => s.keepalive.as_ref().map(|(_, k)| k.clone()).expect("a timeout needs a keepalive"),
            Some(Some(Ok(m))) => {
                s.started = true;
                m
            }
            Some(Some(Err(e))) => {
                s.done = true;
                end_stream(Some(&e))
            }
            Some(None) => {
                s.done = true;
                end_stream(None)
            }
        };
        Some((Ok(out), s))
    })
}

/// A streaming answer that is only an error (HTTP 200, end-stream error).
pub fn stream_error(e: ConnectError) -> Response {
    streaming(futures::stream::once(async move { Err(e) }).boxed(), None)
}

/// The envelopes of a streaming request body, decoded one by one; at most
/// [`MAX_MESSAGE`] bytes each.
pub struct Envelopes<S> {
    body: S,
    buf: Vec<u8>,
    ended: bool,
}

impl<S, E> Envelopes<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(body: S) -> Self {
        Envelopes { body, buf: vec![], ended: false }
    }

    /// The next message; `None` at the end of the body (or an end-stream
    /// envelope).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, ConnectError>> {
        loop {
            if self.ended {
                return None;
            }
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > MAX_MESSAGE {
                    self.ended = true;
                    return Some(Err(ConnectError::new(
                        "resource_exhausted",
                        format!("message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"),
                    )));
                }
                if self.buf.len() >= 5 + len {
                    let payload: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
                    if flags & END_STREAM != 0 {
                        self.ended = true;
                        return None;
                    }
                    if flags & COMPRESSED != 0 {
                        self.ended = true;
                        return Some(Err(ConnectError::new("internal", "compressed messages are not accepted")));
                    }
                    return Some(
                        serde_json::from_slice(&payload)
                            .map_err(|e| ConnectError::invalid(format!("malformed request message: {e}"))),
                    );
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(ConnectError::new("canceled", format!("request body: {e}"))));
                }
                None => {
                    self.ended = true;
                    if self.buf.is_empty() {
                        return None;
                    }
                    return Some(Err(ConnectError::invalid("request body ended inside an envelope")));
                }
            }
        }
    }
}

/// A streaming call's one request message (server-streaming RPCs).
pub async fn first_message<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ConnectError> {
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/connect+json") {
        return Err(ConnectError::new(
            "unimplemented",
            format!("content type '{ct}': streaming calls take application/connect+json"),
        ));
    }
    let mut env = Envelopes::new(body.into_data_stream());
    env.next().await.unwrap_or_else(|| Err(ConnectError::invalid("the request carries no message")))
}

/// `Connect-Timeout-Ms`, the client's deadline.
pub fn timeout_ms(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|t| *t > 0)
}

/// `Keepalive-Ping-Interval` (seconds), default E2B's 50.
pub fn keepalive_every(headers: &HeaderMap) -> Duration {
    let s = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .unwrap_or(50);
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response) -> Vec<u8> {
        http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes().to_vec()
    }

    fn split(mut b: &[u8]) -> Vec<(u8, serde_json::Value)> {
        let mut out = vec![];
        while !b.is_empty() {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            out.push((b[0], serde_json::from_slice(&b[5..5 + len]).unwrap()));
            b = &b[5 + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_stream_ends_with_exactly_one_end_stream_envelope() {
        let ok = futures::stream::iter(vec![Ok(message(&json!({"a": 1})))]).boxed();
        let got = split(&body_of(streaming(ok, None)).await);
        assert_eq!(got, vec![(0, json!({"a": 1})), (2, json!({}))]);
        let failing = futures::stream::iter(vec![
            Ok(message(&json!({"a": 1}))),
            Err(ConnectError::new("not_found", "gone")),
            Ok(message(&json!({"never": true}))),
        ])
        .boxed();
        let got = split(&body_of(streaming(failing, None)).await);
        assert_eq!(got, vec![(0, json!({"a": 1})), (2, json!({"error": {"code": "not_found", "message": "gone"}}))]);
    }

    #[tokio::test(start_paused = true)]
    async fn keepalives_come_only_after_the_first_message() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, ConnectError>>(4);
        let events = tokio_util_stream(rx);
        let r = streaming(events, Some((Duration::from_secs(50), message(&json!({"k": 1})))));
        let mut body = r.into_body().into_data_stream();
        tx.send(Ok(message(&json!({"start": 1})))).await.unwrap();
        assert_eq!(split(&body.next().await.unwrap().unwrap()), vec![(0, json!({"start": 1}))]);
        // Nothing for 50 s: a keepalive.
        assert_eq!(split(&body.next().await.unwrap().unwrap()), vec![(0, json!({"k": 1}))]);
        drop(tx);
        assert_eq!(split(&body.next().await.unwrap().unwrap()), vec![(2, json!({}))]);
    }

    fn tokio_util_stream(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, ConnectError>>) -> Events {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    #[tokio::test]
    async fn envelopes_decode_across_chunks_and_refuse_huge_or_broken_ones() {
        let one = message(&json!({"x": 1}));
        let two = message(&json!({"x": 2}));
        let mut all = one.to_vec();
        all.extend_from_slice(&two);
        let chunks: Vec<Result<Bytes, std::io::Error>> = all.chunks(3).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut e = Envelopes::new(futures::stream::iter(chunks));
        assert_eq!(e.next::<serde_json::Value>().await.unwrap().unwrap(), json!({"x": 1}));
        assert_eq!(e.next::<serde_json::Value>().await.unwrap().unwrap(), json!({"x": 2}));
        assert!(e.next::<serde_json::Value>().await.is_none());

        let mut huge = vec![0u8];
        huge.extend_from_slice(&(u32::MAX).to_be_bytes());
        let mut e = Envelopes::new(futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(huge))]));
        assert_eq!(e.next::<serde_json::Value>().await.unwrap().unwrap_err().code, "resource_exhausted");

        let cut = one.slice(..one.len() - 1);
        let mut e = Envelopes::new(futures::stream::iter(vec![Ok::<_, std::io::Error>(cut)]));
        assert_eq!(e.next::<serde_json::Value>().await.unwrap().unwrap_err().code, "invalid_argument");

        let bad = envelope(0, b"{not json");
        let mut e = Envelopes::new(futures::stream::iter(vec![Ok::<_, std::io::Error>(bad)]));
        assert_eq!(e.next::<serde_json::Value>().await.unwrap().unwrap_err().code, "invalid_argument");
    }
}
