//! Per-request context: the request id (taken from `X-Request-ID` when a
//! trusted proxy sends a sane one, made up otherwise), a tracing span carrying it
//! (continuing the caller's trace when it sends a W3C `traceparent`), the
//! response header, and the latency histogram by route.
//!
//! Every label the histogram carries comes from a fixed set, never from the
//! request itself: the method is one of [`METHODS`] (anything else is refused
//! here, before routing, with 405), the route is the matched pattern or
//! `unmatched`. A client making up methods or paths cannot grow `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use tracing::Instrument;

use super::route_memo::{RouteMemo, request_duration, route_label};
use super::{ApiError, ErrorCode};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served, for error bodies and commands.
pub fn current_request_id() -> String {
    CURRENT.try_with(Clone::clone).unwrap_or_default()
}

/// The pattern of the route `req` matches (`None`: no route), as this
/// worker's [`RouteMemo`] remembers it. Matched on the path as the router
/// reads it, its escapes decoded (`/v1/auth/%6Cogin` is the login): on
/// the path as sent, such a request would match no route here, and spend
/// the budget of writes in general instead of its own.
pub fn matched_route(req: &ServiceRequest) -> Option<Arc<str>> {
    let routed = req.match_info().as_str();
    route_memo(req.request()).pattern(routed, || req.resource_map().match_pattern(routed))
}

/// The worker's memory of its routes, which the app factory gives every
/// worker's `App` (`app.rs`).
fn route_memo(req: &HttpRequest) -> &RouteMemo {
    req.app_data::<RouteMemo>()
        .expect("every worker's App holds a RouteMemo")
}

/// Accepts a client id only if it cannot forge log lines or blow up headers.
fn sane(id: &HeaderValue) -> Option<String> {
    let id = id.to_str().ok()?;
    (!id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    .then(|| id.to_owned())
}

/// The methods the API serves. Any other is refused before routing.
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The method as a metric label: one of [`METHODS`], or `other`.
fn method_label(method: &Method) -> &'static str {
    METHODS
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// Whether CORS refused the request: a preflight from an origin not
/// listed, or asking for a method or header not allowed.
fn is_cors_refusal<B>(response: &ServiceResponse<B>) -> bool {
    (response.response().error()).is_some_and(|e| e.as_error::<actix_cors::CorsError>().is_some())
}

/// The answer to an error an inner middleware returned: a CORS refusal in
/// the API's error body; any other as it renders itself.
fn refusal(error: &actix_web::Error) -> HttpResponse {
    match error.as_error::<actix_cors::CorsError>() {
        Some(cors) => {
            ApiError::bad_request(ErrorCode::OriginNotAllowed, cors.to_string()).error_response()
        }
        None => error.error_response(),
    }
}

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    // Only a trusted proxy's id is believed, and another node's on the
    // command it forwards (the client's, so the holder's lines carry it):
    // from anyone else it could pose as another request's in the logs.
    let believed = req
        .app_data::<actix_web::web::Data<super::rate_limit::RateLimits>>()
        .is_some_and(|limits| limits.is_trusted_proxy(req.peer_addr()))
        || (req.headers().contains_key(&REQUEST_ID)
            && super::internal::is_a_nodes_call(req.request()));
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|_| believed)
        .and_then(sane)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = method_label(req.method());
    // HEAD is answered wherever GET is: the codec already knows the request
    // was HEAD and sends the headers without the body.
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    let matched = matched_route(&req);
    let route = route_label(matched.as_ref());
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        method,
        %route,
    );
    // Named and linked only when traces are exported: no work per request
    // otherwise. A caller's trace is continued, whoever the caller is: the
    // context names a trace, it grants nothing.
    if crate::telemetry::traces_on() {
        span.record("otel.name", format!("{method} {route}"));
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        crate::telemetry::continue_trace(
            &span,
            crate::telemetry::TraceHeaders {
                traceparent: header("traceparent"),
                tracestate: header("tracestate"),
            },
        );
    }
    let started = Instant::now();

    // An inner middleware's error comes with the request gone: answered
    // here all the same, so that it is counted, logged and numbered as
    // every other answer is.
    let answered: Result<ServiceResponse<EitherBody<_>>, HttpResponse> = if method == "other" {
        let refusal =
            CURRENT.sync_scope(id.clone(), || ApiError::MethodNotAllowed.error_response());
        Ok(req.into_response(refusal).map_into_right_body())
    } else {
        match CURRENT
            .scope(id.clone(), next.call(req).instrument(span.clone()))
            .await
        {
            // CORS answers a refused preflight itself, in plain text.
            Ok(response) if is_cors_refusal(&response) => {
                let error = response.response().error().expect("a refusal");
                let refusal = CURRENT.sync_scope(id.clone(), || refusal(error));
                Ok(response.into_response(refusal).map_into_right_body())
            }
            Ok(response) => Ok(response.map_into_left_body()),
            Err(error) => Err(CURRENT.sync_scope(id.clone(), || refusal(&error))),
        }
    };
    let elapsed = started.elapsed();
    let status = match &answered {
        Ok(response) => response.status(),
        Err(refusal) => refusal.status(),
    }
    .as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let id = HeaderValue::from_str(&id).expect("request ids are sane header values");
    let latency = match &answered {
        Ok(response) => route_memo(response.request()).latency(matched.as_ref(), method, status),
        Err(_) => request_duration(matched.as_ref(), method, status),
    };
    latency.record(elapsed.as_secs_f64());
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(
                status,
                latency_ms = elapsed.as_secs_f64() * 1e3,
                "request failed"
            );
        } else {
            tracing::debug!(
                status,
                latency_ms = elapsed.as_secs_f64() * 1e3,
                "request done"
            );
        }
    });
    match answered {
        Ok(mut response) => {
            response.headers_mut().insert(REQUEST_ID, id);
            Ok(response)
        }
        Err(mut refusal) => {
            refusal.headers_mut().insert(REQUEST_ID, id);
            Err(actix_web::error::InternalError::from_response("refused", refusal).into())
        }
    }
}
