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
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceResponse, fn_factory, fn_service};
use actix_web::web::Bytes;
use futures_util::FutureExt;
use futures_util::SinkExt;
use futures_util::future::{LocalBoxFuture, Shared};

use super::ws::Accepted;
use crate::realtime::{ReadSide, Takeover, WriteSide};

/// Marks a request that came with its connection: only such a request can
/// be upgraded.
struct Offered;

/// Whether the request came through this service, with a socket to take.
pub fn offered(req: &HttpRequest) -> bool {
    req.extensions().contains::<Offered>()
}

/// The worker's `App` service being built, or built, for whoever asks.
type Building<S> = Shared<LocalBoxFuture<'static, Result<Rc<S>, ()>>>;

/// The API's `App`, built once per worker for ordinary requests and
/// upgrades alike: an `App` holds its router's compiled patterns, some
/// 2.7 MiB, which a second instance per worker would cost again.
pub struct WorkerApp<S> {
    built: Building<S>,
}

impl<S: 'static> WorkerApp<S> {
    /// Builds nothing yet: the first of the two factories to start builds
    /// `app` with `config`, and the other shares it.
    pub fn new<A>(app: A, config: AppConfig) -> Self
    where
        A: ServiceFactory<Request, Config = AppConfig, Service = S, InitError = ()>,
        A::Future: 'static,
    {
        let building = app.new_service(config);
        let built: LocalBoxFuture<'static, _> =
            Box::pin(async move { building.await.map(Rc::new) });
        Self {
            built: built.shared(),
        }
    }

    /// The factory of the service for ordinary requests: the `App` itself
    /// (actix-service serves through an `Rc` as through the service).
    pub fn requests(
        &self,
    ) -> impl ServiceFactory<
        Request,
        Config = (),
        Response = S::Response,
        Error = S::Error,
        InitError = (),
    > + use<S>
    where
        S: Service<Request>,
    {
        let built = self.built.clone();
        fn_factory(move || built.clone())
    }

    /// The factory of the service for WebSocket upgrades.
    pub fn upgrades<T, B>(
        &self,
    ) -> impl ServiceFactory<
        (Request, Framed<T, h1::Codec>),
        Config = (),
        Response = (),
        Error = Infallible,
        InitError = (),
    > + use<S, T, B>
    where
        T: Takeover,
        S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
        B: MessageBody + 'static,
    {
        let built = self.built.clone();
        fn_factory(move || {
            built.clone().map(|built| {
                built.map(|app| {
                    // Boxed, as actix-http keeps a connection's upgrade future in
                    // the same place as its HTTP dispatcher: a larger future
                    // there would make every HTTP connection larger.
                    fn_service(move |(req, framed)| Box::pin(upgrade(Rc::clone(&app), req, framed)))
                })
            })
        })
    }
}

/// Serves one upgrade request with its connection.
async fn upgrade<T, S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Result<(), Infallible>
where
    T: Takeover,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    // Asking the API runs its middleware's futures: in a box of their own,
    // freed once answered (a statement of its own: a temporary in the
    // `match` would live through the arms), so that the connection does not
    // hold their size while it is open.
    let answered = Box::pin(answer(&*app, req, framed)).await;
    match answered {
        Ok(Some(Upgraded {
            accepted,
            read,
            write,
            buffered,
        })) => accepted.serve(read, write, buffered).await,
        Ok(None) => {}
        // A client that goes before its upgrade is answered is no error of
        // the server's.
        Err(error) => tracing::debug!(%error, "websocket upgrade not completed"),
    }
    Ok(())
}

/// A connection the API upgraded, its 101 written.
struct Upgraded {
    accepted: Accepted,
    read: ReadSide,
    write: WriteSide,
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
        let mut framed = SendResponse::new(framed, response.set_body(body))
            .await
            .map_err(|error| {
                std::io::Error::other(format!("cannot answer an upgrade request: {error}"))
            })?;
        // Flushed and shut down (TLS: `close_notify`) before it is dropped.
        framed.close().await?;
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
    let (read, write) = io.take_over()?;
    // Copied out, so that the dispatcher's 8 KiB buffers go now.
    Ok(Some(Upgraded {
        accepted,
        read,
        write,
        buffered: Bytes::copy_from_slice(&read_buf),
    }))
}
