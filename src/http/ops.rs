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
/// While writes are paused the node is unready until the breaker's
/// cool-down is over; then a good ping says ready, so that a balancer that
/// follows `/ready` sends the write that probes (the journal writes through
/// a connection of its own, which a ping of the pool does not prove, so the
/// ping closes nothing), and a failed one starts the cool-down again. The
/// check never takes the probe itself: a flood of `/ready` from anyone
/// would keep the writes from it, and the breaker open, for as long as it
/// lasts. Nor does a flood ping the store more than every
/// [`Readiness::FRESH`].
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses((status = 200, description = "ready; `fanout`: `local`, `connected` or `disconnected`"), (status = 503, description = "the store does not answer, or the node is stopping", body = super::ErrorBody)))]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.drain.is_draining() {
        return Err(ApiError::Overloaded("this node is stopping"));
    }
    if state.breaker.is_open() && !state.breaker.probe_due() {
        return Err(ApiError::Unavailable);
    }
    let store = &state.store;
    let answers = state
        .readiness
        .store_answers(|| async {
            matches!(
                tokio::time::timeout(Duration::from_secs(1), store.ping()).await,
                Ok(Ok(()))
            )
        })
        .await;
    if !answers {
        state.breaker.cool_down_again();
        return Err(ApiError::Unavailable);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": {
        "status": "ready",
        "fanout": state.fanout.state(),
    } })))
}

/// The store's last ping, which `/ready` checks within [`Readiness::FRESH`]
/// of it share: the endpoint is open to anyone, and each ping takes a
/// connection from the pool the requests need.
pub struct Readiness {
    /// When the store was last pinged and whether it answered. Held across
    /// a ping: the checks meanwhile wait for its answer.
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    fresh: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::fresh_for(Self::FRESH)
    }
}

impl Readiness {
    pub const FRESH: Duration = Duration::from_millis(250);

    fn fresh_for(fresh: Duration) -> Self {
        Self {
            last: Default::default(),
            fresh,
        }
    }

    /// Whether the store answered its last ping, pinging with `ping` when
    /// that is older than [`Readiness::FRESH`].
    pub async fn store_answers<F>(&self, ping: impl FnOnce() -> F) -> bool
    where
        F: std::future::Future<Output = bool>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, answered)) = *last
            && at.elapsed() < self.fresh
        {
            return answered;
        }
        let answered = ping().await;
        *last = Some((std::time::Instant::now(), answered));
        answered
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain"),
    (status = 404, description = "asked from an address not in `metrics.allowed` (or this listener does not serve it)")))]
pub async fn metrics(
    state: web::Data<AppState>,
    access: web::Data<MetricsAccess>,
    realtime: web::Data<super::ws::Realtime>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if !access.admits(&req) {
        return Err(ApiError::NotFound("route"));
    }
    // The recorder is the process's, and these gauges are this app's: held
    // from the first set to the render, so that a page shows one app's
    // figures wherever several apps share a process (the tests).
    static ONE_PAGE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _page = ONE_PAGE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    metrics::gauge!("turnout_registry_actors").set(state.registry.live_actors() as f64);
    metrics::gauge!("turnout_ws_hub_changes_queued").set(realtime.hubs.changes_queued() as f64);
    let recommendations = state.recommenders.backlog();
    metrics::gauge!("turnout_recs_queued", "queue" => "catalog").set(recommendations.handed as f64);
    metrics::gauge!("turnout_recs_queued", "queue" => "actors")
        .set(recommendations.in_mailboxes as f64);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn checks_close_together_share_one_ping() {
        let pings = AtomicUsize::new(0);
        let ping = |answer: bool| {
            let pings = &pings;
            move || async move {
                pings.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer
            }
        };
        let shared = Readiness::fresh_for(Duration::from_secs(3_600));
        let (first, second) = tokio::join!(
            shared.store_answers(ping(true)),
            shared.store_answers(ping(true))
        );
        assert!(first && second);
        assert!(shared.store_answers(ping(false)).await, "still fresh");
        assert_eq!(pings.load(Ordering::SeqCst), 1);

        let stale = Readiness::fresh_for(Duration::ZERO);
        assert!(stale.store_answers(ping(true)).await);
        assert!(!stale.store_answers(ping(false)).await, "pinged again");
        assert_eq!(pings.load(Ordering::SeqCst), 3);
    }
}
