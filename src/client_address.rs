//! What a client's address is counted as, by every per-address limit (rate
//! budgets, HTTP and WebSocket connections, failed logins, filtered feeds),
//! and whether a peer is a proxy whose forwarding headers are believed.

use std::net::IpAddr;

/// Whether `ip` is one of `proxies` (an IPv4 proxy seen on a dual-stack
/// listener as `::ffff:a.b.c.d` too).
pub fn is_trusted(proxies: &[IpAddr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|p| p.to_canonical() == ip)
}

/// The address a client's budgets and connections are counted by: an
/// IPv6 client by its /64, the block one subscriber is given and may
/// draw fresh addresses from at will (counted one by one, each would get
/// a budget of its own).
pub fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}
