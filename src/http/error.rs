//! The one error type of the HTTP API and its envelope:
//! `{"error": {"code", "message", "request_id"}}`. Messages are written for
//! clients; causes (SQL, paths, internals) go to the logs only.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use turnout_actors::CommandError;
use turnout_actors::domain::{Rejection, ValueError};
use turnout_actors::store::StoreError;

use super::request_context;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Invalid(#[from] ValueError),
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not served here; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("too many requests; retry in {0} s")]
    TooManyRequests(u64),
    #[error("rate limited: the {budget} budget is spent; retry in {retry_after} s")]
    RateLimited { budget: String, retry_after: u64 },
    #[error("{0}")]
    Overloaded(&'static str),
    #[error("the service is temporarily unavailable; retry shortly")]
    Unavailable,
    #[error("writes are paused while the database recovers; retry in {0} s")]
    WritesPaused(u64),
    #[error("an internal error occurred")]
    Internal,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: match on this, not on the message.
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. } => code,
            ApiError::Invalid(_) => "validation_failed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::TooManyRequests(_) | ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable => "unavailable",
            ApiError::WritesPaused(_) => "writes_paused",
            ApiError::Internal => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::Unprocessable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Overloaded(_) | ApiError::Unavailable | ApiError::WritesPaused(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let ApiError::TooManyRequests(seconds)
        | ApiError::WritesPaused(seconds)
        | ApiError::RateLimited {
            retry_after: seconds,
            ..
        } = self
        {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        if let ApiError::MethodNotAllowed = self {
            response.insert_header(("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        }
        if let ApiError::Unauthorized(_) = self {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id: request_context::current_request_id(),
            },
        })
    }
}

impl From<crate::auth::Busy> for ApiError {
    fn from(_: crate::auth::Busy) -> Self {
        ApiError::Overloaded("too many passwords are being checked at once; retry shortly")
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store error");
        ApiError::Unavailable
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(rejection) => rejection.into(),
            CommandError::Overloaded => ApiError::Overloaded("the event is busy; retry shortly"),
            CommandError::Unavailable => ApiError::Unavailable,
            CommandError::KeyReused => {
                ApiError::unprocessable("idempotency_key_reused", error.to_string())
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            Rejection::NotFound => ApiError::NotFound("event"),
            Rejection::AlreadyExists => ApiError::conflict("already_exists", message),
            Rejection::NotOwner => ApiError::forbidden("not_owner", message),
            Rejection::OwnerCannotJoin => ApiError::forbidden("owner_cannot_join", message),
            Rejection::Cancelled => ApiError::conflict("event_cancelled", message),
            Rejection::Started => ApiError::conflict("event_started", message),
            Rejection::NotMember => ApiError::NotFound("membership"),
            Rejection::CapacityBelowActive { .. } => {
                ApiError::conflict("capacity_below_active", message)
            }
            Rejection::InvalidSchedule(_) => ApiError::unprocessable("invalid_schedule", message),
        }
    }
}
