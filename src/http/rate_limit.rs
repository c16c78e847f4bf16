//! Rate limits under `/v1`, a budget per kind of request (joins, leaves
//! and offer answers; sign-ups and logins; other writes; reads), each per user and/or
//! per client address, with governor's GCRA. Over a budget: 429 with
//! `Retry-After`, and the message says which budget. `X-Forwarded-For` is
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
use super::identity::{VerifiedClaims, bearer_token};
use crate::auth::TokenKeys;
use crate::client_address::{counted_as, is_trusted, network_of};

/// `[rate_limits]` settings: a budget per kind of request, each per
/// minute; 0 switches one off, `enabled = false` all of them.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Joins, leaves and offer answers, per user and per address.
    pub joins_per_user_per_minute: u32,
    pub joins_per_ip_per_minute: u32,
    /// Registrations and logins, per address.
    pub accounts_per_ip_per_minute: u32,
    /// Every other write (venues, events, profile, admin), per user and per
    /// address: organisers publish a festival's worth at once.
    pub writes_per_user_per_minute: u32,
    pub writes_per_ip_per_minute: u32,
    /// Reads under `/v1`, per address.
    pub reads_per_ip_per_minute: u32,
    /// How many addresses' budgets, and connection caps, one IPv6 /48 may
    /// use in all; 0: no such tier. Off by default: a mobile carrier may
    /// hand out many subscribers' /64s from one /48.
    pub ipv6_network_share: u32,
    /// Peers whose `X-Forwarded-For` names the real client.
    #[serde(deserialize_with = "crate::config::trimmed_list")]
    pub trusted_proxies: Vec<IpAddr>,
}

/// The kinds of request with a budget of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Joins,
    Accounts,
    Writes,
    Reads,
}

impl Budget {
    /// What a request to `route` (its matched pattern) with `method` spends.
    pub fn of(method: &Method, route: Option<&str>) -> Self {
        match (method, route) {
            (&Method::GET | &Method::HEAD | &Method::OPTIONS, _) => Budget::Reads,
            // A place taken, given up or answered: each may carry a fresh
            // idempotency key, and each key answered is a stored row.
            (&Method::POST | &Method::DELETE, Some("/v1/events/{id}/join"))
            | (
                &Method::POST,
                Some("/v1/events/{id}/offer/accept" | "/v1/events/{id}/offer/decline"),
            ) => Budget::Joins,
            (&Method::POST, Some("/v1/auth/register" | "/v1/auth/login")) => Budget::Accounts,
            _ => Budget::Writes,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Budget::Joins => "joins",
            Budget::Accounts => "accounts",
            Budget::Writes => "writes",
            Budget::Reads => "reads",
        }
    }
}

/// One budget: per user (when it has one), per address, and per IPv6
/// network ([`network_of`]) at `ipv6_network_share` times an address's.
struct Limiter {
    per_user: Option<DefaultKeyedRateLimiter<Uuid>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_network: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limiter {
    fn new(enabled: bool, per_user: u32, per_ip: u32, network_share: u32) -> Self {
        let quota = |per_minute: u32| {
            NonZeroU32::new(per_minute)
                .filter(|_| enabled)
                .map(Quota::per_minute)
        };
        Self {
            per_user: quota(per_user).map(RateLimiter::keyed),
            per_ip: quota(per_ip).map(RateLimiter::keyed),
            per_network: quota(per_ip.saturating_mul(network_share)).map(RateLimiter::keyed),
        }
    }

    fn needs_user(&self) -> bool {
        self.per_user.is_some()
    }

    fn forget_quiet_clients(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_network {
            l.retain_recent();
        }
    }
}

/// One `X-Forwarded-For` hop's address: bare, bracketed, or with a port as
/// some proxies write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let bare = hop
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(hop);
    bare.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

pub struct RateLimits {
    joins: Limiter,
    accounts: Limiter,
    writes: Limiter,
    reads: Limiter,
    trusted_proxies: Vec<IpAddr>,
    clock: DefaultClock,
}

/// A budget spent: which, for whom, and how long until it has room.
pub struct Spent {
    pub budget: Budget,
    pub per: &'static str,
    pub retry_after: u64,
}

impl Spent {
    /// The metric label: one of a fixed set.
    fn scope(&self) -> &'static str {
        match (self.budget, self.per) {
            (Budget::Joins, "user") => "joins_user",
            (Budget::Joins, "network") => "joins_network",
            (Budget::Joins, _) => "joins_address",
            (Budget::Accounts, "network") => "accounts_network",
            (Budget::Accounts, _) => "accounts_address",
            (Budget::Writes, "user") => "writes_user",
            (Budget::Writes, "network") => "writes_network",
            (Budget::Writes, _) => "writes_address",
            (Budget::Reads, "network") => "reads_network",
            (Budget::Reads, _) => "reads_address",
        }
    }

    /// For the client: "joins per user".
    fn describe(&self) -> String {
        format!("{} per {}", self.budget.name(), self.per)
    }
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let (on, share) = (settings.enabled, settings.ipv6_network_share);
        Self {
            joins: Limiter::new(
                on,
                settings.joins_per_user_per_minute,
                settings.joins_per_ip_per_minute,
                share,
            ),
            accounts: Limiter::new(on, 0, settings.accounts_per_ip_per_minute, share),
            writes: Limiter::new(
                on,
                settings.writes_per_user_per_minute,
                settings.writes_per_ip_per_minute,
                share,
            ),
            reads: Limiter::new(on, 0, settings.reads_per_ip_per_minute, share),
            trusted_proxies: settings.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    fn limiter(&self, budget: Budget) -> &Limiter {
        match budget {
            Budget::Joins => &self.joins,
            Budget::Accounts => &self.accounts,
            Budget::Writes => &self.writes,
            Budget::Reads => &self.reads,
        }
    }

    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub fn is_trusted_proxy(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| is_trusted(&self.trusted_proxies, p.ip()))
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the nearest address in `X-Forwarded-For` that is not one.
    /// The chain is read from the right, each hop written by the one after
    /// it, across every line of the header (a proxy may add a line of its
    /// own rather than extend the last: the lines are one list, in order);
    /// a hop that is not an address ends the walk at the last trusted one,
    /// for whatever stands left of it may be the client's invention.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
        if !is_trusted(&self.trusted_proxies, peer) {
            return peer;
        }
        let mut nearest = peer;
        for line in headers.get_all("x-forwarded-for").rev() {
            let Ok(line) = line.to_str() else {
                return nearest;
            };
            for hop in line.rsplit(',') {
                let Some(ip) = hop_address(hop.trim()) else {
                    return nearest;
                };
                if !is_trusted(&self.trusted_proxies, ip) {
                    return ip;
                }
                nearest = ip;
            }
        }
        nearest
    }

    /// Counts one request against its budget.
    fn check(&self, budget: Budget, user: Option<Uuid>, ip: IpAddr) -> Result<(), Spent> {
        let limiter = self.limiter(budget);
        let spent = |per: &'static str, not_until: governor::NotUntil<_>| Spent {
            budget,
            per,
            retry_after: not_until.wait_time_from(self.clock.now()).as_secs() + 1,
        };
        if let (Some(l), Some(user)) = (&limiter.per_user, user) {
            l.check_key(&user).map_err(|n| spent("user", n))?;
        }
        if let Some(l) = &limiter.per_ip {
            l.check_key(&counted_as(ip))
                .map_err(|n| spent("address", n))?;
        }
        // After the address's: a request its own address refuses spends
        // nothing of its neighbours' budget.
        if let (Some(l), Some(network)) = (&limiter.per_network, network_of(ip)) {
            l.check_key(&network).map_err(|n| spent("network", n))?;
        }
        Ok(())
    }

    /// Drops the state of clients that have been quiet: memory stays bounded.
    pub fn forget_quiet_clients(&self) {
        for limiter in [&self.joins, &self.accounts, &self.writes, &self.reads] {
            limiter.forget_quiet_clients();
        }
    }
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(limits) = req.app_data::<web::Data<RateLimits>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let route = super::request_context::matched_route(&req);
    let budget = Budget::of(req.method(), route.as_deref());
    let limiter = limits.limiter(budget);
    // The subject of a valid token, where the budget is per user; an
    // invalid token is refused later. The verified claims are handed on, so
    // the handler does not verify the token again.
    let user = if limiter.needs_user() {
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
        user
    } else {
        None
    };
    let ip = limits.client_ip(req.peer_addr(), req.headers());
    if let Err(spent) = limits.check(budget, user, ip) {
        let scope = spent.scope();
        metrics::counter!("turnout_rate_limited_total", "scope" => scope).increment(1);
        tracing::info!(scope, %ip, "rate limited");
        return Ok(req.error_response(ApiError::RateLimited {
            budget: spent.describe(),
            retry_after: spent.retry_after,
        }));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_spends_the_budget_of_its_kind() {
        let join = Some("/v1/events/{id}/join");
        assert_eq!(Budget::of(&Method::POST, join), Budget::Joins);
        assert_eq!(Budget::of(&Method::DELETE, join), Budget::Joins);
        for answer in ["accept", "decline"] {
            let route = format!("/v1/events/{{id}}/offer/{answer}");
            assert_eq!(Budget::of(&Method::POST, Some(&route)), Budget::Joins);
        }
        assert_eq!(
            Budget::of(&Method::POST, Some("/v1/auth/login")),
            Budget::Accounts
        );
        assert_eq!(
            Budget::of(&Method::POST, Some("/v1/auth/register")),
            Budget::Accounts
        );
        assert_eq!(
            Budget::of(&Method::POST, Some("/v1/events")),
            Budget::Writes
        );
        assert_eq!(Budget::of(&Method::PATCH, Some("/v1/me")), Budget::Writes);
        assert_eq!(Budget::of(&Method::GET, join), Budget::Reads);
        assert_eq!(Budget::of(&Method::POST, None), Budget::Writes);
    }

    fn ip(address: &str) -> IpAddr {
        address.parse().unwrap()
    }

    fn limits(trusted: &[&str]) -> RateLimits {
        limits_sharing(trusted, 0)
    }

    fn limits_sharing(trusted: &[&str], ipv6_network_share: u32) -> RateLimits {
        RateLimits::new(&RateLimitSettings {
            ipv6_network_share,
            enabled: true,
            joins_per_user_per_minute: 100,
            joins_per_ip_per_minute: 100,
            accounts_per_ip_per_minute: 100,
            writes_per_user_per_minute: 100,
            writes_per_ip_per_minute: 100,
            reads_per_ip_per_minute: 100,
            trusted_proxies: trusted.iter().map(|p| p.parse().unwrap()).collect(),
        })
    }

    fn forwarded(chain: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            actix_web::http::header::HeaderName::from_static("x-forwarded-for"),
            chain.parse().unwrap(),
        );
        headers
    }

    fn peer(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    /// A client drawing a fresh /64 for every request from its /48 is
    /// held to the network's budget, here 16 addresses' worth; its
    /// neighbours' own addresses keep theirs, and IPv4 has no network tier.
    #[test]
    fn an_ipv6_network_holds_its_share_of_addresses_budgets() {
        const NETWORK_SHARE: u32 = 16;
        let limits = limits_sharing(&[], NETWORK_SHARE);
        let drawn = |n: u32| ip(&format!("2001:db8:7:{n:x}::1"));
        let (taken, refused) = (0..10_000)
            .find_map(|n| {
                let refused = limits.check(Budget::Accounts, None, drawn(n)).err()?;
                Some((n as usize, refused))
            })
            .expect("the network's budget runs out");
        // The network's burst, and a cell or two it regained meanwhile (one
        // every 37.5 ms).
        let burst = 100 * NETWORK_SHARE as usize;
        assert!((burst..burst + 10).contains(&taken), "{taken}");
        assert_eq!(refused.scope(), "accounts_network");
        assert_eq!(refused.describe(), "accounts per network");
        assert!(
            limits
                .check(Budget::Accounts, None, ip("2001:db8:8::1"))
                .is_ok()
        );
        let v4 = (0..10_000u32)
            .take_while(|&n| {
                let ip = IpAddr::V4(Ipv4Addr::from(0xc000_0200 + n));
                limits.check(Budget::Accounts, None, ip).is_ok()
            })
            .count();
        assert_eq!(v4, 10_000);
        let unshared = limits_sharing(&[], 0);
        assert!((0..10_000).all(|n| unshared.check(Budget::Accounts, None, drawn(n)).is_ok()));
    }

    #[test]
    fn a_trusted_proxy_on_a_dual_stack_listener_is_still_trusted() {
        let limits = limits(&["10.0.0.2"]);
        let mapped = peer("[::ffff:10.0.0.2]:5000");
        assert!(limits.is_trusted_proxy(mapped));
        assert_eq!(
            limits.client_ip(mapped, &forwarded("198.51.100.7")),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_walk_stops_at_a_hop_that_is_not_an_address() {
        let limits = limits(&["10.0.0.2"]);
        let client = |chain| limits.client_ip(peer("10.0.0.2:5000"), &forwarded(chain));
        // A proxy that writes ports is read, not skipped.
        assert_eq!(client("9.9.9.9, 1.2.3.4:5"), ip("1.2.3.4"));
        assert_eq!(client("9.9.9.9, [2001:db8::1]:5"), ip("2001:db8::1"));
        assert_eq!(client("9.9.9.9, [2001:db8::2]"), ip("2001:db8::2"));
        // What stands left of a hop that is no address is not believed.
        assert_eq!(client("9.9.9.9, not-an-address"), ip("10.0.0.2"));
    }

    /// A proxy that adds a line of its own (HAProxy's `forwardfor`) puts
    /// the client it saw last: the client's own line, first, is not read
    /// as the client.
    #[test]
    fn the_header_lines_are_one_chain_read_from_the_last() {
        let limits = limits(&["10.0.0.2", "10.0.0.3"]);
        let name = actix_web::http::header::HeaderName::from_static("x-forwarded-for");
        let lines = |lines: &[&str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(name.clone(), line.parse().unwrap());
            }
            limits.client_ip(peer("10.0.0.2:5000"), &headers)
        };
        assert_eq!(lines(&["6.6.6.6", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(
            lines(&["6.6.6.6", "198.51.100.7, 10.0.0.3"]),
            ip("198.51.100.7")
        );
        assert_eq!(lines(&["6.6.6.6", "10.0.0.3"]), ip("6.6.6.6"));
        assert_eq!(lines(&["6.6.6.6", "not-an-address"]), ip("10.0.0.2"));
    }
}
