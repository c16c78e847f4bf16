//! Rate limits on every write (POST, PATCH, PUT, DELETE under `/v1`): per
//! authenticated user and per client address, with governor's GCRA. Over the
//! limit: 429 with `Retry-After` and the error envelope. `X-Forwarded-For` is
//! believed only when the peer is a configured trusted proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use uuid::Uuid;

use super::ApiError;
use crate::auth::{TokenKeys, VerifiedClaims, bearer_token};

/// `[rate_limits]` settings. A limit of 0 switches it off (load tests).
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    /// `false` switches every limit off at once (load tests).
    pub enabled: bool,
    pub per_user_per_minute: u32,
    pub per_ip_per_minute: u32,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpAddr>,
}

pub struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<Uuid>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpAddr>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let quota = |per_minute: u32| {
            NonZeroU32::new(per_minute)
                .filter(|_| settings.enabled)
                .map(Quota::per_minute)
        };
        Self {
            per_user: quota(settings.per_user_per_minute).map(RateLimiter::keyed),
            per_ip: quota(settings.per_ip_per_minute).map(RateLimiter::keyed),
            trusted_proxies: settings.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub fn is_trusted_proxy(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.trusted_proxies.contains(&p.ip()))
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the nearest address in `X-Forwarded-For` that is not one.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get("x-forwarded-for")
            .and_then(|h| h.to_str().ok())
            .and_then(|chain| {
                chain
                    .rsplit(',')
                    .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
                    .find(|ip| !self.trusted_proxies.contains(ip))
            })
            .unwrap_or(peer)
    }

    /// Counts one write; `Err(seconds)` to wait when over a limit.
    fn check(&self, user: Option<Uuid>, ip: IpAddr) -> Result<(), (&'static str, u64)> {
        let wait = |not_until: governor::NotUntil<_>| {
            not_until.wait_time_from(self.clock.now()).as_secs() + 1
        };
        if let (Some(limiter), Some(user)) = (&self.per_user, user) {
            limiter.check_key(&user).map_err(|n| ("user", wait(n)))?;
        }
        if let Some(limiter) = &self.per_ip {
            limiter.check_key(&ip).map_err(|n| ("ip", wait(n)))?;
        }
        Ok(())
    }

    /// Drops the state of clients that have been quiet: memory stays bounded.
    pub fn forget_quiet_clients(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    )
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limits = req.app_data::<web::Data<RateLimits>>().cloned();
    if let Some(limits) = limits.filter(|_| is_write(req.method())) {
        // The subject of a valid token; an invalid one is refused later.
        let claims = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(bearer_token)
            .zip(req.app_data::<web::Data<TokenKeys>>())
            .and_then(|(token, keys)| keys.verify(token).ok());
        let user = claims.as_ref().map(|claims| claims.sub);
        if let Some(claims) = claims {
            req.extensions_mut().insert(VerifiedClaims(claims));
        }
        let ip = limits.client_ip(req.peer_addr(), req.headers());
        if let Err((scope, retry_after)) = limits.check(user, ip) {
            metrics::counter!("turnout_rate_limited_total", "scope" => scope).increment(1);
            tracing::info!(scope, %ip, "rate limited");
            return Ok(req.error_response(ApiError::TooManyRequests(retry_after)));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}
