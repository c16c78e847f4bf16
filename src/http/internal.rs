//! `POST /internal/commands`: commands another node of the cluster
//! forwarded to this one, the holder of their event's shard (see
//! `cluster::forward`). Only nodes may call it, and the caller is checked
//! before the body is read: a stranger learns nothing of its shape.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::future::{Ready, ready};

use super::identity::bearer_token;
use super::{ApiError, AppState, ErrorCode};
use crate::cluster::forward::{Forwarded, InternalKeys};

/// Run here or answered `not_here`, never forwarded again. The caller is
/// checked first: actix polls the extractors in order and stops at the
/// first refusal, so a stranger's body is never read.
pub async fn forwarded_command(
    _caller: NodeCaller,
    state: web::Data<AppState>,
    body: super::Body,
) -> Result<HttpResponse, ApiError> {
    let forwarded: Forwarded = serde_json::from_slice(&body.0)
        .map_err(|_| ApiError::bad_request(ErrorCode::MalformedJson, "not a forwarded command"))?;
    let answer = state
        .commands
        .run_here(&forwarded, state.write_timeout)
        .await;
    Ok(HttpResponse::Ok().json(answer))
}

/// A call signed with one of this cluster's node keys.
#[derive(Clone, Copy)]
pub struct NodeCaller;

/// Whether `req` is a node's forwarded command, signed with a node key:
/// the per-address connection cap does not hold a peer back (one forwards
/// a hot event's joins on as many connections as it has in flight). The
/// verdict is kept on the request, so that its token is checked once
/// whoever asks first (the request id's middleware, the cap's, the route).
pub fn is_a_nodes_call(req: &HttpRequest) -> bool {
    req.path() == crate::cluster::forward::INTERNAL_PATH && node_caller(req).is_ok()
}

fn node_caller(req: &HttpRequest) -> Result<NodeCaller, ApiError> {
    if let Some(caller) = req.extensions().get::<NodeCaller>() {
        return Ok(*caller);
    }
    let token = req.headers().get(AUTHORIZATION).and_then(bearer_token);
    let keys = req.app_data::<web::Data<InternalKeys>>();
    match (token, keys) {
        (None, _) => Err(ApiError::Unauthorized("a node's call needs its token")),
        (Some(token), Some(keys)) if keys.admits(token) => {
            req.extensions_mut().insert(NodeCaller);
            Ok(NodeCaller)
        }
        _ => Err(ApiError::Unauthorized("not a node of this cluster")),
    }
}

impl FromRequest for NodeCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(node_caller(req))
    }
}
