//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::time::Duration;

use actix_web::{HttpResponse, web};

use super::{ApiError, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "alive")))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "data": { "status": "ok" } }))
}

/// Readiness: the store answers within a second.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, description = "ready"), (status = 503, description = "the store does not answer", body = super::ErrorBody)))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.breaker.is_open() {
        return Err(ApiError::Unavailable);
    }
    match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({ "data": { "status": "ready" } })))
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(ApiError::Unavailable),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    metrics::gauge!("turnout_registry_actors").set(state.registry.live_actors() as f64);
    metrics::counter!("turnout_log_lines_dropped_total")
        .absolute(crate::telemetry::dropped_log_lines() as u64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
