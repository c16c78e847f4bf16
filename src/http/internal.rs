//! `POST /internal/commands`: commands another node of the cluster
//! forwarded to this one, the holder of their event's shard (see
//! `cluster::forward`). Only nodes may call it, and the caller is checked
//! before the body is read: a stranger learns nothing of its shape.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};

use super::identity::bearer_token;
use super::{ApiError, AppState, ErrorCode};
use crate::cluster::forward::{Forwarded, InternalKeys};

/// Run here or answered `not_here`, never forwarded again.
pub async fn forwarded_command(
    req: HttpRequest,
    state: web::Data<AppState>,
    keys: web::Data<InternalKeys>,
    body: super::Body,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized("a node's call needs its token"))?;
    if !keys.admits(token) {
        return Err(ApiError::Unauthorized("not a node of this cluster"));
    }
    let forwarded: Forwarded = serde_json::from_slice(&body.0)
        .map_err(|_| ApiError::bad_request(ErrorCode::MalformedJson, "not a forwarded command"))?;
    let answer = state
        .commands
        .run_here(&forwarded, state.write_timeout)
        .await;
    Ok(HttpResponse::Ok().json(answer))
}
