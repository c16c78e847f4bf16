//! `GET /v1/ws`: the WebSocket upgrade. Checks the Origin and the connection
//! limits, answers 101, and once the socket is taken over, runs a
//! `WsSession` actor on it and writes its frames.

use std::sync::Arc;

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, handshake};
use actix_web::http::header::{HOST, ORIGIN};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{StreamExt, stream};

use super::ApiError;
use super::ErrorCode;
use super::drain::Drain;
use super::rate_limit::RateLimits;
use turnout_actors::recommend::Recommenders;

use crate::auth::TokenKeys;
use crate::realtime::{
    Channels, ConnectionLimits, ConnectionPermit, FeedPlaces, Hubs, Inbound, MeFeeds, ReadSide,
    RealtimeSettings, SendQueue, WriteSide, WsSession,
};

/// What the upgrade handler needs.
pub struct Realtime {
    pub hubs: Hubs,
    pub me: MeFeeds,
    pub recommenders: Recommenders,
    pub limits: Arc<ConnectionLimits>,
    /// The filtered feeds each client address holds.
    pub filtered_feeds: Arc<FeedPlaces>,
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

/// Upgrade to the live-update protocol (see docs/PROTOCOL.md). Accepting
/// answers 101 and leaves the socket to [`super::upgrade`], which takes it
/// over from actix-http and calls [`Accepted::serve`].
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade", body = super::ErrorBody),
        (status = 403, description = "origin not allowed", body = super::ErrorBody),
        (status = 429, description = "this client address holds its cap of connections", body = super::ErrorBody),
        (status = 503, description = "the server's connection limit reached, or the node is stopping", body = super::ErrorBody)))]
pub async fn upgrade(
    req: HttpRequest,
    realtime: web::Data<Realtime>,
    tokens: web::Data<TokenKeys>,
    rate_limits: web::Data<RateLimits>,
    drain: web::Data<Drain>,
) -> Result<HttpResponse, ApiError> {
    if drain.is_draining() {
        return Err(ApiError::Overloaded("this node is stopping; connect again"));
    }
    if !origin_allowed(&req, &realtime.settings) {
        return Err(ApiError::forbidden(
            ErrorCode::OriginNotAllowed,
            "this Origin may not open a socket here",
        ));
    }
    // Only an HTTP/1.1 upgrade reaches here through the upgrade service;
    // anything else (no upgrade headers, HTTP/2) gets no socket to take.
    let mut handshake = handshake(req.head())
        .ok()
        .filter(|_| super::upgrade::offered(&req))
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::NotAWebsocket,
                "GET /v1/ws expects a WebSocket upgrade over HTTP/1.1",
            )
        })?;
    // Behind a trusted proxy the client is the one it forwards for, as for
    // the rate limits; otherwise every client would share the proxy's place.
    let ip = rate_limits.client_ip(req.peer_addr(), req.headers());
    let permit = realtime.limits.admit(ip).map_err(|refused| {
        metrics::counter!("turnout_ws_connections_refused_total", "reason" => refused.reason())
            .increment(1);
        ApiError::from(refused)
    })?;
    let mut response = HttpResponse::from(handshake.finish()).map_into_boxed_body();
    response.extensions_mut().insert(Accepted {
        permit,
        channels: Channels {
            hubs: realtime.hubs.clone(),
            me: realtime.me.clone(),
            recommenders: realtime.recommenders.clone(),
            filtered_feeds: Arc::clone(&realtime.filtered_feeds),
            client: ip,
        },
        tokens: tokens.into_inner(),
        settings: Arc::clone(&realtime.settings),
        drain: Drain::clone(&drain),
    });
    Ok(response)
}

/// An upgrade the API has answered 101: what the connection's session needs
/// once the socket is taken over.
pub struct Accepted {
    permit: ConnectionPermit,
    channels: Channels,
    tokens: Arc<TokenKeys>,
    settings: Arc<RealtimeSettings>,
    drain: Drain,
}

impl Accepted {
    /// Starts the connection's session on `read` (after `buffered`, the
    /// bytes the client sent behind its upgrade request) and writes its
    /// frames to `write` until the connection ends. When the node starts draining, the
    /// client is told to go (1001) and reconnects to a node that stays.
    pub async fn serve(self, read: ReadSide, write: WriteSide, buffered: Bytes) {
        let inbound = Inbound::new(
            stream::iter((!buffered.is_empty()).then_some(Ok(buffered))).chain(read),
            self.settings.max_frame_bytes,
        );
        let mut ctx = Context::<WsSession>::new();
        let (queue, writer) = SendQueue::new(
            self.settings.max_queued_bytes,
            ctx.address().recipient(),
            write,
            self.permit,
        );
        ctx.add_stream(inbound);
        let going = queue.clone();
        ctx.run(WsSession::new(
            queue,
            self.channels,
            self.tokens,
            self.settings,
        ));
        let writing = writer.run();
        let mut writing = std::pin::pin!(writing);
        tokio::select! {
            () = &mut writing => return,
            () = self.drain.started() => going.close(CloseReason {
                code: CloseCode::Away,
                description: Some("this node is stopping; connect again".to_owned()),
            }),
        }
        writing.await;
    }
}
