//! Extractors that reject with the API's own error shape.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use spinup_api::{ByteStream, Error, SandboxId};

use crate::error::ApiError;

/// The service as this request's caller sees it: the one the API key
/// check put in the request (`with_auth`), else the router's own (the
/// unix socket's, the admin's).
pub struct Caller(pub crate::Svc);

impl FromRequestParts<crate::Svc> for Caller {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &crate::Svc) -> Result<Self, Self::Rejection> {
        Ok(Caller(parts.extensions.get::<crate::Svc>().cloned().unwrap_or_else(|| state.clone())))
    }
}

/// The `{id}` of a sandbox route: anything that is not an id is a sandbox
/// that does not exist.
pub struct Id(pub SandboxId);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Segments(params) = Segments::from_request_parts(parts, state).await?;
        Ok(Id(SandboxId::parse(&segment(&params, "id"))?))
    }
}

/// One named path segment, as text (empty when the route has none).
pub fn segment(parts: &[(String, String)], name: &str) -> String {
    parts.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// All path segments, as text (`{name}`, `{pid}`, `{port}`, `{op}`).
pub struct Segments(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Segments {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))?;
        Ok(Segments(params))
    }
}

/// A number in the path (`{pid}`, `{port}`).
pub fn number<T: std::str::FromStr>(s: &Segments, name: &str, what: impl Fn(&str) -> String) -> Result<T, ApiError> {
    let v = segment(&s.0, name);
    v.parse().map_err(|_| ApiError(Error::InvalidArgument(what(&v))))
}

/// A JSON body; empty means `{}`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        // A body that cannot be read keeps axum's answer (413 past the
        // body limit); one that is not the JSON wanted gets ours.
        let b = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        spinup_api::parse_json(&b).map(Body).map_err(|e| ApiError(e).into_response())
    }
}

/// A query string.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError(Error::InvalidArgument(e.body_text())))?;
        Ok(Q(q))
    }
}

/// One NDJSON line.
pub fn ndjson_line(v: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(v).expect("events serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// A streamed body.
pub fn stream(body: axum::body::Body) -> ByteStream {
    body.into_data_stream().map(|r| r.map_err(std::io::Error::other)).boxed()
}
