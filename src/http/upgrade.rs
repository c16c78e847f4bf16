//! WebSocket upgrades with the socket taken over from actix-http.
//!
//! actix-http sends every HTTP/1 request that asks for a WebSocket
//! (`Upgrade: websocket`, whatever its path) to this service with its
//! connection, instead of to the API. The service asks the API all the
//! same — the same middleware, routes and handler decide — and if the
//! handler accepted ([`Accepted`] in a 101), it writes the 101 and runs the
//! connection on the bare socket. Any other answer is written as it is and
//! the connection closed.
//!
//! Why not a streaming response body, as actix-web would have it: the
//! connection would stay in actix-http's dispatcher, which gives it an 8 KiB
//! read and an 8 KiB write buffer for as long as it is open, and polls it
//! once per frame to copy the frame into the write buffer. On the bare
//! socket a hub writes the frame itself.

use std::convert::Infallible;
use std::rc::Rc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, MessageBody, to_bytes};
use actix_http::h1::{self, SendResponse};
use actix_http::{ConnectionType, HttpMessage, Request, Response};
use actix_web::HttpRequest;
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceResponse, always_ready};
use actix_web::web::Bytes;
use futures_util::SinkExt;
use futures_util::future::LocalBoxFuture;

use super::ws::Accepted;
use crate::realtime::{Socket, Takeover};

/// Marks a request that came with its connection: only such a request can
/// be upgraded.
struct Offered;

/// Whether the request came through this service, with a socket to take.
pub fn offered(req: &HttpRequest) -> bool {
    req.extensions().contains::<Offered>()
}

/// The upgrade service's factory: one service per worker, each with its own
/// instance of the API's `App`.
pub struct WebSocketUpgrade<A> {
    app: A,
    config: AppConfig,
}

impl<A> WebSocketUpgrade<A> {
    pub fn new(app: A, config: AppConfig) -> Self {
        Self { app, config }
    }
}

impl<T, A, B> ServiceFactory<(Request, Framed<T, h1::Codec>)> for WebSocketUpgrade<A>
where
    T: Takeover,
    A: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        >,
    A::Service: 'static,
    A::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = Infallible;
    type Config = ();
    type Service = UpgradeService<A::Service>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let app = self.app.new_service(self.config.clone());
        Box::pin(async move {
            Ok(UpgradeService {
                app: Rc::new(app.await?),
            })
        })
    }
}

pub struct UpgradeService<S> {
    app: Rc<S>,
}

impl<T, S, B> Service<(Request, Framed<T, h1::Codec>)> for UpgradeService<S>
where
    T: Takeover,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = Infallible;
    type Future = LocalBoxFuture<'static, Result<(), Infallible>>;

    always_ready!();

    fn call(&self, (req, framed): (Request, Framed<T, h1::Codec>)) -> Self::Future {
        let app = Rc::clone(&self.app);
        Box::pin(async move {
            // Asking the API runs its middleware's futures: in a box of
            // their own, freed once answered (a statement of its own: a
            // temporary in the `match` would live through the arms), so
            // that the connection does not hold their size while it is open.
            let answered = Box::pin(answer(&*app, req, framed)).await;
            match answered {
                Ok(Some(upgraded)) => {
                    let Upgraded {
                        accepted,
                        socket,
                        buffered,
                    } = upgraded;
                    accepted.serve(socket, buffered).await;
                }
                Ok(None) => {}
                // A client that goes before its upgrade is answered is no
                // error of the server's.
                Err(error) => tracing::debug!(%error, "websocket upgrade not completed"),
            }
            Ok(())
        })
    }
}

/// A connection the API upgraded, its 101 written.
struct Upgraded {
    accepted: Accepted,
    socket: Socket,
    /// What the client sent behind its upgrade request.
    buffered: Bytes,
}

/// Asks the API about the upgrade request. On a 101 with [`Accepted`],
/// writes it and takes the socket; otherwise writes the answer and closes.
async fn answer<T, S, B>(
    app: &S,
    req: Request,
    mut framed: Framed<T, h1::Codec>,
) -> Result<Option<Upgraded>, std::io::Error>
where
    T: Takeover,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(Offered);
    // The request goes with the answer: its headers hold on to actix-http's
    // 8 KiB read buffer (they are slices of it), and their map is 6.7 KiB.
    // With it goes the connection's data, so an upgraded connection counts
    // within the realtime limits only, not `http.max_connections_per_ip`
    // or the HTTP connections a stop waits for (it is told to go instead).
    let mut response = match app.call(req).await {
        Ok(answered) => answered.into_parts().1.map_into_boxed_body(),
        Err(error) => error.error_response(),
    };
    let accepted = response.extensions_mut().remove::<Accepted>();
    let mut response = Response::from(response);
    let Some(accepted) = accepted else {
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        // Written whole: refusals are short.
        let (response, body) = response.into_parts();
        let body = to_bytes(body).await.unwrap_or_default();
        SendResponse::new(framed, response.set_body(body))
            .await
            .map_err(|error| {
                std::io::Error::other(format!("cannot answer an upgrade request: {error}"))
            })?;
        return Ok(None);
    };
    framed
        .send(h1::Message::Item((response.drop_body(), BodySize::None)))
        .await?;
    let FramedParts {
        io,
        read_buf,
        write_buf,
        ..
    } = framed.into_parts();
    debug_assert!(write_buf.is_empty(), "the 101 was flushed");
    // Copied out, so that the dispatcher's 8 KiB buffers go now.
    Ok(Some(Upgraded {
        accepted,
        socket: io.into_socket(),
        buffered: Bytes::copy_from_slice(&read_buf),
    }))
}
