//! The one error type of the HTTP layer: every failure becomes `{"error": "…"}` with a status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::models::ModelError;
use crate::types::PredictError;

/// An error answered to the client as JSON; `retry_after` (seconds) goes into `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, message)
    }
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, message)
    }

    /// Maps a pipeline failure to its status; `prefix` names the instance in a batch.
    pub fn from_predict(err: &PredictError, prefix: &str) -> Self {
        let status = match err {
            // Bytes that are no image we decode are a bad payload (400), whatever their
            // magic number: the request's Content-Type itself was supported (415 is for that).
            PredictError::BadImage(_)
            | PredictError::UnsupportedFormat(_)
            | PredictError::BadOption(_) => StatusCode::BAD_REQUEST,
            PredictError::TooManyPixels { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // On a GPU shared by several models a run can find no memory left: the contract's
            // answer is 507, which tells SageMaker to unload a model.
            PredictError::Inference(m) if is_out_of_memory(m) => StatusCode::INSUFFICIENT_STORAGE,
            PredictError::Inference(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, format!("{prefix}{err}"))
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let status = match &e {
            ModelError::AlreadyLoaded(_) | ModelError::Loading(_) | ModelError::Unloading(_) => {
                StatusCode::CONFLICT
            }
            ModelError::NotLoaded(_) => StatusCode::NOT_FOUND,
            ModelError::NoSuchDirectory(_) | ModelError::Invalid { .. } => StatusCode::BAD_REQUEST,
            // SageMaker evicts a least-recently-used model and retries on 507.
            ModelError::InsufficientMemory { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ModelError::LoadFailed { reason, .. } if is_out_of_memory(reason) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ModelError::LoadFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

/// ONNX Runtime's words for an allocation that failed (host arena or CUDA).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "failed to allocate",
        "bad_alloc",
        "cudaerrormemoryallocation",
    ]
    .iter()
    .any(|w| m.contains(w))
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// The JSON error response; used by handlers and by the middleware that rewrites actix's
/// own plain-text errors (404, 405, payload errors).
pub fn json_error(status: StatusCode, message: &str, retry_after: Option<u32>) -> HttpResponse {
    let body = serde_json::to_vec(&ErrorBody { error: message })
        // Serialising a struct with one string field cannot fail; keep a literal fallback
        // rather than an unwrap on the request path.
        .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::CONTENT_TYPE, "application/json"));
    if let Some(secs) = retry_after {
        builder.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    builder.body(body)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        json_error(self.status, &self.message, self.retry_after)
    }
}
