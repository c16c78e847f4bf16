//! The v1 HTTP API (actix-web): routes, the shared application state, and
//! the configuration every route shares (body limits, error envelopes).
//!
//! - `accounts`: register, login, the caller's profile.
//! - `admin`: operator endpoints (stats, dead outbox messages, the
//!   cluster's nodes and leases), admins only.
//! - `history`: an event's facts as JSON or CSV (`GET /v1/events/{id}/history`).
//! - `venues`, `events`, `joins`: the product.
//! - `recommendations`: the caller's ranked events.
//! - `ws`: the WebSocket upgrade (`GET /v1/ws`) and its admission.
//! - `upgrade`: upgrade requests arrive here with their connection; the
//!   API decides, and an accepted socket is taken over from actix-http.
//!   The worker's one `App` serves both.
//! - `kiosk`: the venue screen page.
//! - `ops`: health, readiness, metrics.
//! - `internal`: commands other nodes forward to this one (nodes only).
//! - `drain`: closing connections (and telling sockets to go) as the node
//!   stops.
//! - `identity`: the caller from `Authorization: Bearer` (extractors).
//! - `request_context`: request ids, method and route labels, the access log.
//! - `route_memo`: each worker's memory of the route each path matched and
//!   of each route's latency histogram.
//! - `rate_limit`: the rate budgets by kind of request.
//! - `quotas`: what one account may own, each count and create one step.
//! - `client_limits`: body deadlines and connections per client address.
//! - `breaker`: pauses writes while the database recovers.
//! - `error`: the one error type and its envelope.
//! - `pagination`: keyset cursors.
//! - `openapi`: the OpenAPI document and the interactive docs page.

mod accounts;
mod admin;
pub mod breaker;
pub mod client_limits;
pub mod drain;
mod error;
mod events;
mod history;
mod identity;
mod internal;
mod joins;
mod kiosk;
mod openapi;
pub mod ops;
mod pagination;
pub mod quotas;
pub mod rate_limit;
pub mod recommendations;
pub mod request_context;
pub mod route_memo;
pub mod upgrade;
mod venues;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{HttpRequest, web};
use metrics_exporter_prometheus::PrometheusHandle;
use turnout_actors::domain::{Command, EventId};
use turnout_actors::recommend::Recommenders;
use turnout_actors::{CommandError, EventRegistry, IdempotencyKey, Outcome, Reply};

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use openapi::ApiDoc;

use crate::cluster::forward::Forwarded;
use crate::store::Store;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub registry: EventRegistry,
    pub recommenders: Recommenders,
    pub metrics: PrometheusHandle,
    pub write_timeout: Duration,
    pub breaker: breaker::Breaker,
    /// This node of the cluster.
    pub node: crate::cluster::Node,
    /// Runs each command where its event's shard is held.
    pub commands: Arc<crate::cluster::forward::Commands>,
    /// Whether the other nodes' live updates reach this one.
    pub fanout: crate::fanout_link::FanoutLink,
    /// `GET /v1/events/{id}` answers held in memory.
    pub events: crate::event_cache::EventCache,
    /// Set when the node is stopping.
    pub drain: drain::Drain,
    /// What one account may own.
    pub quotas: quotas::Quotas,
    /// `/ready`'s pings of the store, shared.
    pub readiness: ops::Readiness,
}

impl AppState {
    /// Runs a command on its event's actor within the write deadline; the
    /// answer arrives only once the command's facts are durable.
    pub async fn execute(&self, event: EventId, command: Command) -> Result<Outcome, ApiError> {
        match self.execute_keyed(event, command, None).await? {
            Reply::Done(outcome) => Ok(outcome),
            Reply::Replayed(_) => {
                tracing::error!(%event, "a command without an idempotency key was answered as a replay");
                Err(ApiError::Internal)
            }
        }
    }

    /// Like [`AppState::execute`], for a command carrying an idempotency key:
    /// the answer may be a replay of the first one.
    pub async fn execute_keyed(
        &self,
        event: EventId,
        command: Command,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Reply, ApiError> {
        let admitted = self.breaker.admit()?;
        let forwarded = Forwarded {
            event,
            command,
            idempotency,
            request_id: Some(request_context::current_request_id()),
        };
        let outcome = self.commands.execute(forwarded, self.write_timeout).await;
        if says_nothing_of_the_store(&outcome, || self.commands.holds(event)) {
            self.breaker.release(admitted);
            return outcome.map_err(ApiError::from);
        }
        let outcome = outcome.map_err(ApiError::from);
        self.breaker.record(admitted, &outcome);
        outcome
    }

    /// Bounds a plain database write by the same deadline.
    pub async fn within_deadline<T>(
        &self,
        write: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let admitted = self.breaker.admit()?;
        let outcome = tokio::time::timeout(self.write_timeout, write)
            .await
            .unwrap_or(Err(ApiError::Unavailable));
        self.breaker.record(admitted, &outcome);
        outcome
    }
}

/// Whether a command's outcome says nothing of the database's health, so
/// that the write breaker takes no verdict from it: the event's actor
/// reloading (the store answered: one client's late replay of a key would
/// otherwise fail enough of a busy event's commands to pause every write
/// of the node), or another node's event whose holder did not answer (it
/// died, or the shard is moving: placement's to settle — or a dead peer
/// would pause this node's own writes too).
fn says_nothing_of_the_store(
    outcome: &Result<Reply, CommandError>,
    held_here: impl FnOnce() -> bool,
) -> bool {
    match outcome {
        Err(CommandError::Interrupted) => true,
        Err(CommandError::Unavailable | CommandError::NotHere) => !held_here(),
        _ => false,
    }
}

/// Registers every route and the extractor settings behind the error envelope.
pub fn configure(max_body_bytes: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(
            web::JsonConfig::default()
                .limit(max_body_bytes)
                .error_handler(move |e, _| json_error(e, max_body_bytes).into()),
        )
        .app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(MaxBodyBytes(max_body_bytes))
        .app_data(web::PathConfig::default().error_handler(|_, _| {
            ApiError::bad_request(ErrorCode::InvalidPath, "ids in the path must be UUIDs").into()
        }))
        .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
        .configure(ops::routes)
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(rate_limit::middleware))
                .configure(accounts::routes)
                .configure(events::routes)
                .configure(joins::routes)
                .configure(recommendations::routes)
                .configure(ws::routes)
                .service(web::scope("/events/{id}").configure(event_routes))
                .configure(venues::routes)
                .configure(admin::routes),
        )
        .service(
            // A forwarded command carries the client's body and more: four
            // times the client's limit.
            web::resource(crate::cluster::forward::INTERNAL_PATH)
                .app_data(web::PayloadConfig::new(4 * max_body_bytes))
                .app_data(MaxBodyBytes(4 * max_body_bytes))
                .route(web::post().to(internal::forwarded_command)),
        )
        .configure(openapi::routes)
        .configure(kiosk::routes)
        .default_service(web::to(not_found));
    }
}

/// Everything under `/v1/events/{id}`, in one scope: the router matches the
/// id once, not once per route. Each route with a path pattern costs a
/// regex match per request that reaches it, and with a resource per route
/// a join was tried against a dozen patterns (twice: once for the route
/// label in `request_context`) before it found its own.
fn event_routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(events::event_routes)
        .configure(joins::event_routes)
        .configure(history::event_routes);
}

/// A resource answering several methods; any other is answered as a path
/// nobody serves, as a route per method would be.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(not_found))
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    tracing::debug!(path = req.path(), "no such route");
    Err(ApiError::NotFound("route"))
}

fn json_error(e: JsonPayloadError, limit: usize) -> ApiError {
    match e {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::PayloadTooLarge(limit)
        }
        JsonPayloadError::ContentType => ApiError::NotJson,
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::unprocessable(ErrorCode::ValidationFailed, client_message(&e.to_string()))
        }
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(
            ErrorCode::MalformedJson,
            format!(
                "the body is not valid JSON: {}",
                client_message(&e.to_string())
            ),
        ),
        _ => ApiError::bad_request(ErrorCode::BadBody, "the request body could not be read"),
    }
}

/// `http.max_body_bytes`, for [`Body`]'s refusal.
#[derive(Clone, Copy)]
struct MaxBodyBytes(usize);

/// A raw body within `http.max_body_bytes` (the `PayloadConfig` above);
/// a larger one is refused in the error envelope, where actix's own
/// `Bytes` answers a plain-text 413.
pub struct Body(pub web::Bytes);

impl actix_web::FromRequest for Body {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let limit = req.app_data::<MaxBodyBytes>().map_or(0, |m| m.0);
        let read = <web::Bytes as actix_web::FromRequest>::from_request(req, payload);
        Box::pin(async move {
            read.await
                .map(Body)
                .map_err(|e| match e.as_error::<actix_web::error::PayloadError>() {
                    Some(actix_web::error::PayloadError::Overflow) => {
                        ApiError::PayloadTooLarge(limit)
                    }
                    _ => ApiError::bad_request(
                        ErrorCode::BadBody,
                        "the request body could not be read",
                    ),
                })
        })
    }
}

/// A JSON body that may be left out: an empty body is `None`; anything
/// else must be JSON for `T`, and is judged as a required body is (its
/// `Content-Type` too, as `web::Json` judges it).
pub fn optional_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // The test actix's `JsonBody` makes of a required body's type.
    let json = matches!(
        actix_web::HttpMessage::mime_type(req),
        Ok(Some(mime)) if mime.subtype() == actix_web::mime::JSON || mime.suffix() == Some(actix_web::mime::JSON)
    );
    if !json {
        return Err(json_error(JsonPayloadError::ContentType, body.len()));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| json_error(JsonPayloadError::Deserialize(e), body.len()))
}

fn query_error(e: QueryPayloadError) -> ApiError {
    let QueryPayloadError::Deserialize(e) = e else {
        return ApiError::bad_request(ErrorCode::InvalidQuery, "the query string is invalid");
    };
    ApiError::bad_request(
        ErrorCode::InvalidQuery,
        format!("invalid query: {}", client_message(&e.to_string())),
    )
}

/// serde's messages name Rust types ("expected i64"); say it in words.
pub(crate) fn client_message(raw: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("i64", "an integer"),
        ("i32", "an integer"),
        ("u64", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u16", "a non-negative integer"),
        ("usize", "a non-negative integer"),
        ("f64", "a number"),
        ("a sequence", "a list"),
        ("a map", "an object"),
        ("struct ", "object "),
    ];
    let mut message = raw.to_owned();
    for (rust, words) in WORDS {
        message = message.replace(rust, words);
    }
    without_type_names(&message)
}

/// serde names the type it expected (`expected struct CreateEventRequest`,
/// `expected enum WaitlistMode`): the JSON kind is said instead.
fn without_type_names(message: &str) -> String {
    const KINDS: &[(&str, &str)] = &[
        ("internally tagged enum ", "an object with a \"type\""),
        ("enum ", "one of the allowed values"),
        // `struct ` is `object ` by now.
        ("object variant ", "an object"),
        ("tuple variant ", "a list"),
        ("tuple object ", "a list"),
        ("unit object ", "null"),
        ("object ", "an object"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    'scan: while !rest.is_empty() {
        for (kind, said) in KINDS {
            let Some(after) = rest.strip_prefix(kind) else {
                continue;
            };
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            if after.starts_with(|c: char| c.is_ascii_uppercase()) {
                out.push_str(said);
                rest = &after[name_len..];
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        out.extend(chars.next());
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_messages_do_not_name_rust_types() {
        let message =
            super::client_message("invalid type: string \"x\", expected i64 at line 1 column 9");
        assert_eq!(
            message,
            "invalid type: string \"x\", expected an integer at line 1 column 9"
        );
    }

    #[test]
    fn serde_messages_do_not_name_our_types() {
        for (raw, said) in [
            (
                "invalid type: integer `5`, expected struct CreateEventRequest at line 1 column 1",
                "invalid type: integer `5`, expected an object at line 1 column 1",
            ),
            (
                "invalid type: integer `5`, expected enum WaitlistMode",
                "invalid type: integer `5`, expected one of the allowed values",
            ),
            (
                "invalid type: sequence, expected internally tagged enum ClientFrame",
                "invalid type: sequence, expected an object with a \"type\"",
            ),
            (
                "unknown variant `x`, expected one of `auto`, `offer`",
                "unknown variant `x`, expected one of `auto`, `offer`",
            ),
            ("missing field `title`", "missing field `title`"),
            (
                "invalid length 0, expected struct variant ClientFrame::Subscribe with 2 elements",
                "invalid length 0, expected an object with 2 elements",
            ),
        ] {
            assert_eq!(super::client_message(raw), said);
        }
    }

    /// The breaker hears of the store's failures only: not of an event
    /// reloading, nor of another node's holder that did not answer.
    #[test]
    fn the_breaker_judges_the_store_by_its_own_failures() {
        use super::{CommandError, says_nothing_of_the_store};
        use turnout_actors::domain::Rejection;
        let failed = |error: CommandError| Err(error);
        for held_here in [true, false] {
            let held = || held_here;
            assert!(says_nothing_of_the_store(
                &failed(CommandError::Interrupted),
                held
            ));
            for error in [CommandError::Unavailable, CommandError::NotHere] {
                assert_eq!(says_nothing_of_the_store(&failed(error), held), !held_here);
            }
            for error in [
                CommandError::Overloaded,
                CommandError::KeyReused,
                CommandError::KeyInUse,
                CommandError::Rejected(Rejection::NotFound),
            ] {
                assert!(!says_nothing_of_the_store(&failed(error), held));
            }
        }
    }
}
