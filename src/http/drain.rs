//! Draining at a stop. Once a node stops accepting, it still answers on the
//! connections already open, and every answer says `Connection: close`
//! (and `/ready` 503): a proxy sends nothing more on a connection the node
//! is closing — a request it could not safely send elsewhere, since a POST
//! that may have arrived is not retried. Idle connections are closed by the
//! proxy first (its upstream keep-alive is shorter than the server's).
//! WebSocket connections are told to go (close 1001) and new ones refused,
//! so clients reconnect to a node that stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{Error, web};
use tokio::sync::Notify;

/// Whether this node is draining; shared by the middleware, `/ready`, the
/// WebSocket connections (told to go) and the shutdown sequence.
#[derive(Clone, Default)]
pub struct Drain(Arc<Draining>);

#[derive(Default)]
struct Draining {
    started: AtomicBool,
    told: Notify,
}

impl Drain {
    pub fn start(&self) {
        self.0.started.store(true, Ordering::Release);
        self.0.told.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }

    /// Resolves once the node is draining.
    pub async fn started(&self) {
        let told = self.0.told.notified();
        let mut told = std::pin::pin!(told);
        // Registered before the check, so a start in between still wakes it.
        told.as_mut().enable();
        if !self.is_draining() {
            told.await;
        }
    }
}

/// Closes each connection after its answer while draining.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let draining = req
        .app_data::<web::Data<Drain>>()
        .is_some_and(|drain| drain.is_draining());
    let mut response = next.call(req).await?;
    if draining {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}
