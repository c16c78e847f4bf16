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

use super::route_memo::{RouteMemo, route_label};
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

/// Why CORS refused the request, if it did: a preflight from an origin
/// not listed, or asking for a method or headers not allowed.
fn cors_refusal<B>(response: &ServiceResponse<B>) -> Option<&actix_cors::CorsError> {
    response
        .response()
        .error()?
        .as_error::<actix_cors::CorsError>()
}

/// A CORS refusal in the API's error body, with the `Vary` header CORS
/// gave it (a cache must not serve it to another origin).
fn refused<B>(error: &actix_cors::CorsError, response: &ServiceResponse<B>) -> HttpResponse {
    use actix_cors::CorsError;
    use actix_web::http::header::VARY;
    let code = match error {
        CorsError::OriginNotAllowed | CorsError::MissingOrigin => ErrorCode::OriginNotAllowed,
        _ => ErrorCode::CorsRefused,
    };
    let mut refusal = ApiError::bad_request(code, error.to_string()).error_response();
    if let Some(vary) = response.headers().get(VARY) {
        refusal.headers_mut().insert(VARY, vary.clone());
    }
    refusal
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

    let result = if method == "other" {
        let refusal =
            CURRENT.sync_scope(id.clone(), || ApiError::MethodNotAllowed.error_response());
        Ok(req.into_response(refusal).map_into_right_body())
    } else {
        CURRENT
            .scope(id.clone(), next.call(req).instrument(span.clone()))
            .await
            .map(|response| match cors_refusal(&response) {
                // CORS answers a refused preflight itself, in plain text.
                Some(error) => {
                    let refusal = CURRENT.sync_scope(id.clone(), || refused(error, &response));
                    response.into_response(refusal).map_into_right_body()
                }
                None => response.map_into_left_body(),
            })
    };
    let elapsed = started.elapsed();
    let mut response = result?;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    response.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&id).expect("request ids are sane header values"),
    );
    route_memo(response.request())
        .latency(matched.as_ref(), method, status)
        .record(elapsed.as_secs_f64());
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
    Ok(response)
}
