//! Request extractors: the caller's identity from `Authorization: Bearer`.
//! A valid token is the identity — no per-request account lookup — so tokens
//! from a trusted issuer work for users without a local account row.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header::AUTHORIZATION, web};
use turnout_actors::domain::UserId;

use super::tokens::{TokenError, TokenKeys};
use crate::http::ApiError;

/// A caller with a valid token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Option<String>,
}

/// A caller who may or may not have sent a token; a token that is sent must
/// be valid.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<AuthUser>);

fn identify(req: &HttpRequest) -> Result<Option<AuthUser>, ApiError> {
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    let keys = req
        .app_data::<web::Data<TokenKeys>>()
        .expect("TokenKeys are registered as app data");
    let claims = keys.verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::Unauthorized("the token has expired"),
        TokenError::Invalid => ApiError::Unauthorized("the token is invalid"),
    })?;
    Ok(Some(AuthUser {
        id: UserId::from(claims.sub),
        role: claims.role,
    }))
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            identify(req).and_then(|u| {
                u.ok_or(ApiError::Unauthorized("this endpoint needs a bearer token"))
            }),
        )
    }
}

impl FromRequest for MaybeUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(identify(req).map(MaybeUser))
    }
}

/// A caller whose token carries the `admin` role.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(identify(req).and_then(|user| match user {
            None => Err(ApiError::Unauthorized("this endpoint needs a bearer token")),
            Some(user) if user.role.as_deref() == Some("admin") => Ok(AdminUser(user)),
            Some(_) => Err(ApiError::forbidden(
                "admin_only",
                "this endpoint is for administrators",
            )),
        }))
    }
}
