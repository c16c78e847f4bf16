//! What a client's address is counted as, by every per-address limit (rate
//! budgets, HTTP and WebSocket connections, failed logins, filtered feeds),
//! and whether a peer is a proxy whose forwarding headers are believed.

use std::net::{IpAddr, Ipv6Addr};

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
        IpAddr::V6(v6) => IpAddr::V6(prefix(v6, 64)),
        v4 => v4,
    }
}

/// The IPv6 network an address is counted in besides, where
/// `rate_limits.ipv6_network_share` asks for it: its /48, what a site is
/// given. Whoever holds one has 65,536 /64s to draw from, each a budget of
/// its own. None for IPv4, where one address is what a client draws (a
/// network of them is a city's carrier NAT).
pub fn network_of(ip: IpAddr) -> Option<IpAddr> {
    match ip.to_canonical() {
        IpAddr::V6(v6) => Some(IpAddr::V6(prefix(v6, 48))),
        IpAddr::V4(_) => None,
    }
}

fn prefix(v6: Ipv6Addr, bits: u32) -> Ipv6Addr {
    (u128::from(v6) & !(u128::MAX >> bits)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(address: &str) -> IpAddr {
        address.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let (a, b) = (ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::9"));
        assert_eq!(counted_as(a), counted_as(b));
        assert_ne!(counted_as(a), counted_as(ip("2001:db8:1:3::1")));
        assert_eq!(counted_as(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn an_ipv6_client_is_counted_in_its_48_besides() {
        let network = network_of(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(network, Some(ip("2001:db8:1::")));
        assert_eq!(network_of(ip("2001:db8:1:ffff::9")), network);
        assert_ne!(network_of(ip("2001:db8:2::1")), network);
        assert_eq!(network_of(ip("192.0.2.1")), None);
        assert_eq!(network_of(ip("::ffff:192.0.2.1")), None);
    }

    #[test]
    fn a_proxy_is_trusted_in_either_form_of_its_address() {
        let proxies = [ip("10.0.0.2")];
        assert!(is_trusted(&proxies, ip("::ffff:10.0.0.2")));
        assert!(!is_trusted(&proxies, ip("10.0.0.3")));
    }
}
