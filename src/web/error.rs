//! The one web error type and its two renderings: an HTML page (or htmx fragment) for pages,
//! and a JSON envelope `{"error": {"message", "type", "code"}}` for the API. Internal details
//! are logged, never shown.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;
use serde::Serialize;
use utoipa::ToSchema;

use super::nav::Nav;
use crate::jobs::requests::{FieldError, RequestError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// Fields of a request that failed validation, each named (a form shows each beside its field).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldError>),
    #[error("a valid API key is required (Authorization: Bearer ...)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for WebError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => WebError::Conflict(message),
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl From<RequestError> for WebError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Invalid(fields) => WebError::Fields(fields),
            RequestError::NotFound(message) => WebError::NotFound(message),
            RequestError::Conflict(message) => WebError::Conflict(message),
            RequestError::Store(error) => error.into(),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        ApiError(error.into())
    }
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) | WebError::Fields(_) => StatusCode::BAD_REQUEST,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            WebError::NotFound(_) => "not_found",
            WebError::BadRequest(_) | WebError::Fields(_) => "invalid_request_error",
            WebError::Unauthorized => "authentication_error",
            WebError::Forbidden(_) => "permission_error",
            WebError::Conflict(_) => "conflict",
            WebError::Internal(_) => "server_error",
        }
    }

    /// What a client may see: internal errors are logged and replaced by a generic message.
    fn public_message(&self) -> String {
        match self {
            WebError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        }
    }
}

/// A `WebError` rendered as JSON (API routes).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(#[from] pub WebError);

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError(error.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self.0, WebError::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(serde_json::json!({
            "error": {"message": self.0.public_message(), "type": self.0.kind(), "code": self.status_code().as_u16()}
        }))
    }
}

/// A `WebError` rendered as an HTML page (pages and forms).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PageError(#[from] pub WebError);

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        PageError(error.into())
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status()
    }

    fn error_response(&self) -> HttpResponse {
        let html = error_page(self.status_code().as_u16(), &self.0.public_message());
        HttpResponse::build(self.status_code()).content_type("text/html; charset=utf-8").body(html)
    }
}

#[derive(Template)]
#[template(path = "pages/error.html")]
pub struct ErrorPage {
    pub nav: Nav,
    pub status: u16,
    pub message: String,
}

pub fn error_page(status: u16, message: &str) -> String {
    ErrorPage { nav: Nav::new(""), status, message: message.to_string() }
        .render()
        .unwrap_or_else(|_| format!("<h1>{status}</h1>"))
}

/// The error envelope every API error uses.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u16,
}
