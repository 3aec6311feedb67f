//! The one place a model error becomes an HTTP status and body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use spinup_api::{Error, ErrorBody};

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub fn status_of(e: &Error) -> StatusCode {
    StatusCode::from_u16(spinup_api::error::http_status(e)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (status_of(&self.0), Json(ErrorBody::from(&self.0))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
