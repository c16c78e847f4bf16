//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{ApiError, AppState};

/// `[metrics]` settings: who may read `/metrics`.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// Peer addresses the main listener answers `/metrics` to.
    #[serde(deserialize_with = "crate::config::trimmed_list")]
    pub allowed: Vec<IpAddr>,
    /// A listener of its own for `/metrics` (e.g. `10.0.0.5:9100`); when
    /// set, the main listener does not serve it at all.
    pub bind: Option<String>,
}

/// Who a listener serves `/metrics` to; everyone else gets 404, as if the
/// page were not there.
#[derive(Clone)]
pub enum MetricsAccess {
    From(Vec<IpAddr>),
    /// The operator's own metrics listener.
    Anyone,
}

impl MetricsAccess {
    fn admits(&self, req: &HttpRequest) -> bool {
        match self {
            MetricsAccess::Anyone => true,
            MetricsAccess::From(allowed) => req
                .peer_addr()
                .is_some_and(|peer| allowed.contains(&peer.ip().to_canonical())),
        }
    }
}

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

/// Readiness: the store answers within a second. `fanout` says whether
/// other nodes' live updates reach this one: `local` (no Redis), `connected`
/// or `disconnected` — a node without Redis still takes joins, so it stays
/// ready.
///
/// While writes are paused, the check takes the breaker's probe once its
/// cool-down is over: a balancer that follows `/ready` sends the node no
/// writes, and without a probe the node would stay unready after the
/// database came back. A failed ping opens the breaker again; a good one
/// closes nothing (the journal writes through a connection of its own,
/// which a ping of the pool does not prove): it lets the next write probe,
/// and says ready so that one comes.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, description = "ready; `fanout`: `local`, `connected` or `disconnected`"), (status = 503, description = "the store does not answer, or the node is stopping", body = super::ErrorBody)))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.drain.is_draining() {
        return Err(ApiError::Overloaded("this node is stopping"));
    }
    let probe = if state.breaker.is_open() {
        Some(state.breaker.admit().map_err(|_| ApiError::Unavailable)?)
    } else {
        None
    };
    let pinged = match tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(ApiError::Unavailable),
    };
    if let Some(probe) = probe {
        if pinged.is_err() {
            state.breaker.record(probe, &pinged);
        } else {
            state.breaker.release(probe);
        }
    }
    pinged?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": {
        "status": "ready",
        "fanout": state.fanout.state(),
    } })))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(
    state: web::Data<AppState>,
    access: web::Data<MetricsAccess>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if !access.admits(&req) {
        return Err(ApiError::NotFound("route"));
    }
    metrics::gauge!("turnout_registry_actors").set(state.registry.live_actors() as f64);
    crate::memory::record();
    for pool in state.store.connections() {
        metrics::gauge!("turnout_db_connections", "pool" => pool.pool).set(pool.open as f64);
        metrics::gauge!("turnout_db_connections_idle", "pool" => pool.pool).set(pool.idle as f64);
    }
    metrics::counter!("turnout_log_lines_dropped_total")
        .absolute(crate::telemetry::dropped_log_lines() as u64);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
