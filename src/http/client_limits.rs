//! What one slow or greedy client may hold: a deadline for a request's body,
//! and a cap on open HTTP connections per client address.
//!
//! actix-http times out slow headers (408) but not a body that arrives a
//! byte every few seconds, so 300 such connections once stayed open
//! indefinitely. The body now has `http.body_timeout_secs` from the moment
//! the handler starts reading it; past that the request is answered 408 and
//! the connection is closed. A connection takes its place within
//! `http.max_connections_per_ip` when accepted and gives it back when it
//! closes; one over the cap gets 429 and is closed, unless its request is
//! another node's signed command (`http::internal`). A connection upgraded
//! to a WebSocket gives its place back at the upgrade: the realtime limits
//! count it from then on (`http::upgrade`).

use std::any::Any;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use actix_http::BoxedPayloadStream;
use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{ConnectionType, Method};
use actix_web::middleware::Next;
use actix_web::rt::net::TcpStream;
use actix_web::{HttpMessage, ResponseError};
use futures_util::StreamExt;

use super::ApiError;
use crate::realtime::{ConnectionLimits, ConnectionPermit, Refused};

/// The per-address cap on open HTTP connections, applied as each is
/// accepted. Addresses of trusted proxies are exempt: many clients share
/// their connections.
pub struct HttpConnections {
    limits: Arc<ConnectionLimits>,
    trusted_proxies: Vec<IpAddr>,
    /// Every open connection, a trusted proxy's too (a stop waits for them).
    open: Arc<AtomicUsize>,
}

/// Holds a connection's place in [`HttpConnections::open`] while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection accepted over the per-address cap: its first request is
/// refused and the connection closed.
struct OverLimit(Refused);

impl HttpConnections {
    /// `max_per_ip` 0 means no cap; an IPv6 /48 holds `network_share`
    /// times it (0: no cap per network).
    pub fn new(max_per_ip: usize, network_share: u32, trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            // No total here: the server's own cap is actix's `max_connections`.
            limits: ConnectionLimits::new(
                usize::MAX,
                max_per_ip,
                network_share,
                "turnout_http_connections",
            ),
            trusted_proxies,
            open: Arc::default(),
        }
    }

    /// Connections open now, from anyone.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// For the server's `on_connect_ext`: the connection holds its place in its
    /// own data, which actix drops when the connection closes.
    pub fn on_connect(&self, connection: &dyn Any, data: &mut Extensions) {
        self.open.fetch_add(1, Ordering::AcqRel);
        data.insert(Open(Arc::clone(&self.open)));
        let Some(peer) = peer_of(connection) else {
            return;
        };
        if crate::client_address::is_trusted(&self.trusted_proxies, peer.ip()) {
            return;
        }
        match self.limits.admit(peer.ip()) {
            Ok(permit) => {
                data.insert::<ConnectionPermit>(permit);
            }
            Err(refused) => {
                metrics::counter!("turnout_http_connections_refused_total").increment(1);
                data.insert(OverLimit(refused));
            }
        }
    }
}

fn peer_of(connection: &dyn Any) -> Option<SocketAddr> {
    if let Some(tcp) = connection.downcast_ref::<TcpStream>() {
        return tcp.peer_addr().ok();
    }
    connection
        .downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
        .and_then(|tls| tls.get_ref().0.peer_addr().ok())
}

/// Whether a request sends a body to read (a WebSocket's frames are not one).
fn sends_body(req: &ServiceRequest) -> bool {
    matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !req.head().upgrade()
}

/// Middleware: refuses requests on connections over the cap, and gives each
/// body a deadline.
pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(&OverLimit(refused)) = req.conn_data::<OverLimit>()
        && !super::internal::is_a_nodes_call(req.request())
    {
        let mut refused = ApiError::from(refused).error_response();
        refused
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return Ok(req.into_response(refused).map_into_right_body());
    }
    let deadline = req
        .app_data::<actix_web::web::Data<BodyDeadline>>()
        .map(|d| d.0);
    let expired = Rc::new(Cell::new(false));
    if let Some(limit) = deadline.filter(|_| sends_body(&req)) {
        let body = req.take_payload();
        req.set_payload(within(body, limit, Rc::clone(&expired)));
    }
    let response = next.call(req).await?;
    if !expired.get() {
        return Ok(response.map_into_left_body());
    }
    // Whatever the handler made of the cut-off body, the client hears why,
    // and the connection, with the rest of the body unread, is closed.
    let (req, _) = response.into_parts();
    let mut timed_out =
        ApiError::BodyTimeout(deadline.unwrap_or_default().as_secs()).error_response();
    timed_out
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    metrics::counter!("turnout_http_body_timeouts_total").increment(1);
    Ok(ServiceResponse::new(req, timed_out).map_into_right_body())
}

/// `http.body_timeout_secs` as app data.
#[derive(Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// The body, cut off with an error once `limit` has passed.
fn within(mut body: Payload, limit: Duration, expired: Rc<Cell<bool>>) -> Payload {
    let mut deadline = Box::pin(tokio::time::sleep(limit));
    let stream: BoxedPayloadStream = Box::pin(futures_util::stream::poll_fn(move |cx| {
        if expired.get() || deadline.as_mut().poll(cx).is_ready() {
            expired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            )))));
        }
        body.poll_next_unpin(cx)
    }));
    Payload::from(stream)
}
