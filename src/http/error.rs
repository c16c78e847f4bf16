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
    BadRequest { code: ErrorCode, message: String },
    #[error("{0}")]
    Invalid(#[from] ValueError),
    #[error("{message}")]
    Unprocessable { code: ErrorCode, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{message}")]
    Forbidden { code: ErrorCode, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not served here; use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("the body must be JSON (Content-Type: application/json)")]
    NotJson,
    #[error("too many requests; retry in {0} s")]
    TooManyRequests(u64),
    #[error("rate limited: the {budget} budget is spent; retry in {retry_after} s")]
    RateLimited { budget: String, retry_after: u64 },
    /// A client address (or its IPv6 network) past its cap on open
    /// connections (HTTP or WebSocket): the client's own doing, so a 4xx.
    #[error("too many connections from your {from} (at most {cap}); close one and retry")]
    TooManyConnections { cap: usize, from: &'static str },
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
#[schema(example = json!({ "error": {
    "code": "not_found", "message": "event not found",
    "request_id": "5f0c2a8e-3b1d-4c7e-9a2f-1e8d7c6b5a40"
}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Every error code the API answers with: stable, snake_case; match on it,
/// not on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body could not be read (the connection broke off, a chunk was
    /// malformed). A field of the wrong type is `validation_failed`.
    BadBody,
    MalformedJson,
    UnsupportedMediaType,
    InvalidPath,
    InvalidQuery,
    InvalidCursor,
    MissingIdempotencyKey,
    InvalidIdempotencyKey,
    /// The key was used before for another request.
    IdempotencyKeyReused,
    /// The key's request on another event is still in progress: retry once
    /// it is answered.
    IdempotencyKeyInUse,
    NotAWebsocket,
    ValidationFailed,
    InvalidSchedule,
    UnknownVenue,
    Unauthorized,
    AdminOnly,
    NotOwner,
    OwnerCannotJoin,
    NotVenueOrganizer,
    NotVenueOwner,
    /// A cross-origin request from an origin not allowed (CORS's
    /// `http.cors_origins`; a WebSocket's origin check, answered 403).
    OriginNotAllowed,
    /// A cross-origin preflight asking for a method or headers the CORS
    /// policy does not allow, or malformed.
    CorsRefused,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    EmailTaken,
    EventCancelled,
    EventStarted,
    CapacityBelowActive,
    /// A capacity cut below the seats a waiting party asks for.
    CapacityBelowParty,
    /// More seats than the event takes in one party (or than its capacity).
    PartyTooLarge,
    /// Accepting or declining an offer the caller does not hold (never
    /// made, already answered, or run out).
    NoOffer,
    /// The caller owns as many venues, or upcoming events, as one account
    /// may (`[quotas]`).
    QuotaReached,
    PayloadTooLarge,
    BodyTimeout,
    RateLimited,
    Overloaded,
    Unavailable,
    WritesPaused,
    InternalError,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: String,
}

impl ApiError {
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. } => *code,
            ApiError::Invalid(_) => ErrorCode::ValidationFailed,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::BodyTimeout(_) => ErrorCode::BodyTimeout,
            ApiError::NotJson => ErrorCode::UnsupportedMediaType,
            ApiError::TooManyRequests(_)
            | ApiError::RateLimited { .. }
            | ApiError::TooManyConnections { .. } => ErrorCode::RateLimited,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Unavailable => ErrorCode::Unavailable,
            ApiError::WritesPaused(_) => ErrorCode::WritesPaused,
            ApiError::Internal => ErrorCode::InternalError,
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
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_)
            | ApiError::RateLimited { .. }
            | ApiError::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
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
        if let ApiError::TooManyConnections { .. } = self {
            // A place frees only when the client closes one of its own.
            response.insert_header((RETRY_AFTER, HeaderValue::from_static("5")));
        }
        if let ApiError::MethodNotAllowed = self {
            response.insert_header(("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
        }
        if let ApiError::Unauthorized(_) = self {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                request_id: request_context::current_request_id(),
            },
        })
    }
}

/// A connection past a cap: past its own address's, the client's doing
/// (429); past the server's, the server's condition (503).
impl From<crate::realtime::Refused> for ApiError {
    fn from(refused: crate::realtime::Refused) -> Self {
        match refused {
            crate::realtime::Refused::AddressFull(cap) => ApiError::TooManyConnections {
                cap,
                from: "address",
            },
            crate::realtime::Refused::NetworkFull(cap) => ApiError::TooManyConnections {
                cap,
                from: "network",
            },
            crate::realtime::Refused::ServerFull => {
                ApiError::Overloaded("too many connections; retry later")
            }
        }
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
            // Not decided: the store failed or was too slow, the event is
            // reloading, or nobody held it before the deadline.
            CommandError::Unavailable | CommandError::Interrupted | CommandError::NotHere => {
                ApiError::Unavailable
            }
            CommandError::KeyReused => {
                ApiError::unprocessable(ErrorCode::IdempotencyKeyReused, error.to_string())
            }
            CommandError::KeyInUse => {
                ApiError::conflict(ErrorCode::IdempotencyKeyInUse, error.to_string())
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection {
            Rejection::NotFound => ApiError::NotFound("event"),
            Rejection::AlreadyExists => ApiError::conflict(ErrorCode::AlreadyExists, message),
            Rejection::NotOwner => ApiError::forbidden(ErrorCode::NotOwner, message),
            Rejection::OwnerCannotJoin => ApiError::forbidden(ErrorCode::OwnerCannotJoin, message),
            Rejection::Cancelled => ApiError::conflict(ErrorCode::EventCancelled, message),
            Rejection::Started => ApiError::conflict(ErrorCode::EventStarted, message),
            Rejection::NotMember => ApiError::NotFound("membership"),
            Rejection::CapacityBelowActive { .. } => {
                ApiError::conflict(ErrorCode::CapacityBelowActive, message)
            }
            Rejection::CapacityBelowParty { .. } => {
                ApiError::conflict(ErrorCode::CapacityBelowParty, message)
            }
            Rejection::InvalidSchedule { .. } => {
                ApiError::unprocessable(ErrorCode::InvalidSchedule, message)
            }
            Rejection::PartyTooLarge { .. } => {
                ApiError::unprocessable(ErrorCode::PartyTooLarge, message)
            }
            Rejection::NoOffer => ApiError::conflict(ErrorCode::NoOffer, message),
        }
    }
}
