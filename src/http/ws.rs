//! `GET /v1/ws`: the WebSocket upgrade. Checks the Origin and the connection
//! limits, then hands the socket to a `WsSession` actor.

use std::sync::Arc;

use actix::prelude::*;
use actix_http::body::BoxBody;
use actix_http::ws::handshake;
use actix_web::http::header::{HOST, ORIGIN};
use actix_web::{HttpRequest, HttpResponse, web};

use super::ApiError;
use super::ErrorCode;
use super::rate_limit::RateLimits;
use turnout_actors::recommend::Recommenders;

use crate::auth::TokenKeys;
use crate::realtime::{
    Channels, ConnectionLimits, Hubs, Inbound, MeFeeds, RealtimeSettings, SendQueue, WsSession,
};

/// What the upgrade handler needs.
pub struct Realtime {
    pub hubs: Hubs,
    pub me: MeFeeds,
    pub recommenders: Recommenders,
    pub limits: Arc<ConnectionLimits>,
    pub settings: Arc<RealtimeSettings>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(upgrade));
}

/// A browser page may open a socket only from this server's own origin or an
/// allowed one; clients that send no Origin (apps, tools) are not browsers.
fn origin_allowed(req: &HttpRequest, settings: &RealtimeSettings) -> bool {
    let Some(origin) = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let same_origin = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host)
        });
    same_origin
        || settings
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
}

/// Upgrade to the live-update protocol (see docs/PROTOCOL.md).
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade", body = super::ErrorBody),
        (status = 403, description = "origin not allowed", body = super::ErrorBody),
        (status = 503, description = "connection limit reached", body = super::ErrorBody)))]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    realtime: web::Data<Realtime>,
    tokens: web::Data<TokenKeys>,
    rate_limits: web::Data<RateLimits>,
) -> Result<HttpResponse, ApiError> {
    if !origin_allowed(&req, &realtime.settings) {
        return Err(ApiError::forbidden(
            ErrorCode::OriginNotAllowed,
            "this Origin may not open a socket here",
        ));
    }
    let mut handshake = handshake(req.head()).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::NotAWebsocket,
            "GET /v1/ws expects a WebSocket upgrade",
        )
    })?;
    // Behind a trusted proxy the client is the one it forwards for, as for
    // the rate limits; otherwise every client would share the proxy's place.
    let ip = rate_limits.client_ip(req.peer_addr(), req.headers());
    let permit = realtime
        .limits
        .admit(ip)
        .ok_or(ApiError::Overloaded("too many connections; retry later"))?;
    let inbound = Inbound::new(body.into_inner(), realtime.settings.max_frame_bytes);
    let (hubs, me, recommenders, settings, tokens) = (
        realtime.hubs.clone(),
        realtime.me.clone(),
        realtime.recommenders.clone(),
        Arc::clone(&realtime.settings),
        tokens.into_inner(),
    );
    let mut ctx = Context::<WsSession>::new();
    let (queue, socket) = SendQueue::new(
        realtime.settings.max_queued_bytes,
        ctx.address().recipient(),
        permit,
    );
    ctx.add_stream(inbound);
    ctx.run(WsSession::new(
        queue,
        Channels {
            hubs,
            me,
            recommenders,
        },
        tokens,
        settings,
    ));
    let response = handshake
        .message_body(BoxBody::new(socket))
        .map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::from(response))
}
