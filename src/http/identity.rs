//! Request extractors: the caller's identity from `Authorization: Bearer`.
//! A valid token is the identity — no per-request account lookup — so tokens
//! from a trusted issuer work for users without a local account row. Only
//! the admin role is checked against the account too ([`still_admin`]).

use std::future::{Ready, ready};

use actix_web::http::header::{AUTHORIZATION, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use turnout_actors::domain::UserId;

use futures_util::future::LocalBoxFuture;

use super::ApiError;
use super::AppState;
use super::ErrorCode;
use crate::auth::{Claims, TokenError, TokenKeys};

/// A caller with a valid token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Option<String>,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some(crate::auth::Role::Admin.as_str())
    }
}

/// A caller who may or may not have sent a token; a token that is sent must
/// be valid.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<AuthUser>);

/// The token of an `Authorization: Bearer <token>` header (the scheme in any
/// case, RFC 7235); `None` for any other value.
pub fn bearer_token(header: &HeaderValue) -> Option<&str> {
    let (scheme, token) = header.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The claims of the request's token, put in the request's extensions by
/// whoever verified it first (the rate limiter, for writes), so that a
/// request's token is verified once.
#[derive(Clone)]
pub struct VerifiedClaims(pub Claims);

fn identify(req: &HttpRequest) -> Result<Option<AuthUser>, ApiError> {
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let token = bearer_token(header).ok_or(ApiError::Unauthorized(
        "the Authorization header must be `Bearer <token>`",
    ))?;
    let verified = req.extensions().get::<VerifiedClaims>().cloned();
    let claims = match verified {
        Some(VerifiedClaims(claims)) => claims,
        None => req
            .app_data::<web::Data<TokenKeys>>()
            .expect("TokenKeys are registered as app data")
            .verify(token)
            .map_err(|e| match e {
                TokenError::Expired => ApiError::Unauthorized("the token has expired"),
                TokenError::NotYetValid => ApiError::Unauthorized("the token is not valid yet"),
                TokenError::TooLong => ApiError::Unauthorized(
                    "the token's lifetime is longer than this server accepts",
                ),
                TokenError::Invalid => ApiError::Unauthorized("the token is invalid"),
            })?,
    };
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

/// A caller whose token carries the `admin` role and, where the caller has
/// an account here, whose account still does ([`still_admin`]).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = AuthUser::from_request(req, payload).into_inner();
        let state = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered as app data")
            .clone();
        Box::pin(async move {
            let user = caller?;
            if !still_admin(&state, &user).await? {
                return Err(ApiError::forbidden(
                    ErrorCode::AdminOnly,
                    "this endpoint is for administrators",
                ));
            }
            Ok(AdminUser(user))
        })
    }
}

/// Whether the caller acts as an administrator: the token carries the role
/// and, where the caller has an account here, the account still does. So
/// a demotion takes effect at once, not when the demoted admin's token
/// runs out (a day, or more for tokens minted elsewhere); an identity
/// that is only its token (from a trusted issuer, no account here) is
/// what its token says.
pub async fn still_admin(state: &AppState, user: &AuthUser) -> Result<bool, ApiError> {
    if !user.is_admin() {
        return Ok(false);
    }
    Ok(state
        .store
        .user(user.id)
        .await?
        .is_none_or(|account| account.role == crate::auth::Role::Admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let token =
            |value: &'static str| bearer_token(&HeaderValue::from_static(value)).map(str::to_owned);
        assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("BEARER  abc ").as_deref(), Some("abc"));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(token("Bearerabc"), None);
    }
}
