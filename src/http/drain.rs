//! Draining at a stop. Once a node stops accepting, it still answers on the
//! connections already open, and every answer says `Connection: close`
//! (and `/ready` 503): a proxy sends nothing more on a connection the node
//! is closing — a request it could not safely send elsewhere, since a POST
//! that may have arrived is not retried. Idle connections are closed by the
//! proxy first (its upstream keep-alive is shorter than the server's).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{Error, web};

/// Whether this node is draining; shared by the middleware, `/ready` and
/// the shutdown sequence.
#[derive(Clone, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
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
