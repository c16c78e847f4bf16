//! Per-request context: the request id (taken from `X-Request-ID` when the
//! client sends a sane one, made up otherwise), a tracing span carrying it,
//! the response header, and the latency histogram by route.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served, for error bodies and commands.
pub fn current_request_id() -> String {
    CURRENT.try_with(Clone::clone).unwrap_or_default()
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

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = Instant::now();

    let result = CURRENT
        .scope(id.clone(), next.call(req).instrument(span.clone()))
        .await;
    let elapsed = started.elapsed();
    let mut response = result?;
    let status = response.status().as_u16();
    response.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&id).expect("request ids are sane header values"),
    );
    metrics::histogram!("turnout_http_request_duration_seconds",
        "route" => route, "method" => method, "status" => status.to_string())
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
