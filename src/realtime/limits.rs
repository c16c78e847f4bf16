//! Connection limits: open connections in total, per client address and,
//! where asked, per IPv6 network ([`crate::client_address::network_of`]).
//! WebSockets hold their place until the socket's writer is done with it;
//! HTTP connections (`http.max_connections_per_ip`) for as long as the
//! connection is open. And [`FeedPlaces`]: the distinct filtered feeds each
//! client address holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::client_address::network_of;

/// Open connections, in total, per client address and per IPv6 network.
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    per_network: DashMap<IpAddr, usize>,
    max_total: usize,
    /// 0: no cap per address, nor per network.
    max_per_ip: usize,
    /// 0: no cap per network.
    max_per_network: usize,
    /// The gauge of open connections.
    gauge: &'static str,
}

/// A connection's place within the limits, given back on drop. The socket's
/// writer ([`super::socket::Writer`]) holds it, so it is given back once the
/// close frame has been written (or could not be) and the socket shut down
/// — not when the session ends, which a client that stops reading outlives.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

/// Why a connection was refused. The two are different answers: a full
/// server is the server's condition (503: try another node, or later), a
/// full address is the client's own doing (429: close a connection first),
/// and one client's connections must not page anyone with 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place on this server is taken.
    ServerFull,
    /// The client's address holds its cap, the number given.
    AddressFull(usize),
    /// The client's IPv6 network holds its cap, the number given.
    NetworkFull(usize),
}

impl Refused {
    /// The label of the refusals' counters.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ServerFull => "server",
            Refused::AddressFull(_) => "address",
            Refused::NetworkFull(_) => "network",
        }
    }
}

impl ConnectionLimits {
    /// `max_per_ip` 0 means no cap per address; an IPv6 /48 holds
    /// `network_share` times it (0: no cap per network); `gauge` counts the
    /// open connections.
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        network_share: u32,
        gauge: &'static str,
    ) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            per_network: DashMap::new(),
            max_total,
            max_per_ip,
            max_per_network: max_per_ip.saturating_mul(network_share as usize),
            gauge,
        })
    }

    /// A place for a connection from `ip`, or which cap refused it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let ip = crate::client_address::counted_as(ip);
        // The total first, and the address only when it may connect at all:
        // a refused address leaves no entry behind.
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::ServerFull);
        }
        if self.max_per_ip > 0 {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::AddressFull(self.max_per_ip));
            }
            if let Some(network) = network_of(ip).filter(|_| self.max_per_network > 0) {
                let mut in_network = self.per_network.entry(network).or_insert(0);
                if *in_network >= self.max_per_network {
                    drop(in_network);
                    // Its address's entry, just made, is not left behind.
                    let empty = *count == 0;
                    drop(count);
                    if empty {
                        self.per_ip.remove_if(&ip, |_, count| *count == 0);
                    }
                    self.total.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refused::NetworkFull(self.max_per_network));
                }
                *in_network += 1;
            }
            *count += 1;
        }
        metrics::gauge!(self.gauge).increment(1.0);
        Ok(ConnectionPermit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if self.limits.max_per_ip > 0 {
            let given_back = |_: &IpAddr, count: &mut usize| {
                *count -= 1;
                *count == 0
            };
            self.limits.per_ip.remove_if_mut(&self.ip, given_back);
            if let Some(network) = network_of(self.ip).filter(|_| self.limits.max_per_network > 0) {
                self.limits.per_network.remove_if_mut(&network, given_back);
            }
        }
        metrics::gauge!(self.limits.gauge).decrement(1.0);
    }
}

/// The distinct filtered feeds (`feed?tag=…`, `feed?near=…`) each client
/// address holds, each counted once however many of its connections
/// subscribe to it: a distinct feed is a hub of the node's `max_feed_hubs`,
/// and one client must not take them all, while a venue's Wi-Fi full of
/// phones on one feed takes one place.
pub struct FeedPlaces {
    by_client: DashMap<IpAddr, HashMap<String, usize>>,
    /// 0: no cap.
    max_per_client: usize,
}

/// A subscription's hold on its feed's place, given back on drop.
pub struct FeedPlace {
    places: Arc<FeedPlaces>,
    client: IpAddr,
    channel: String,
}

const FILTERED_FEEDS: &str = "turnout_ws_filtered_feeds";

impl FeedPlaces {
    pub fn new(max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            by_client: DashMap::new(),
            max_per_client,
        })
    }

    /// A place for `channel` (its canonical name) from `client`, or the cap
    /// when that address already holds as many other feeds as allowed.
    pub fn admit(self: &Arc<Self>, client: IpAddr, channel: &str) -> Result<FeedPlace, usize> {
        let client = crate::client_address::counted_as(client);
        let mut feeds = self.by_client.entry(client).or_default();
        let full = self.max_per_client > 0 && feeds.len() >= self.max_per_client;
        match feeds.get_mut(channel) {
            Some(holders) => *holders += 1,
            None if full => return Err(self.max_per_client),
            None => {
                feeds.insert(channel.to_owned(), 1);
                metrics::gauge!(FILTERED_FEEDS).increment(1.0);
            }
        }
        Ok(FeedPlace {
            places: Arc::clone(self),
            client,
            channel: channel.to_owned(),
        })
    }
}

impl FeedPlace {
    /// The client address holding it, as counted.
    pub fn client(&self) -> IpAddr {
        self.client
    }
}

impl Drop for FeedPlace {
    fn drop(&mut self) {
        self.places
            .by_client
            .remove_if_mut(&self.client, |_, feeds| {
                if let Some(holders) = feeds.get_mut(&self.channel) {
                    *holders -= 1;
                    if *holders == 0 {
                        feeds.remove(&self.channel);
                        metrics::gauge!(FILTERED_FEEDS).decrement(1.0);
                    }
                }
                feeds.is_empty()
            });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn limits_count_per_address_and_in_total_and_forget_refusals() {
        let limits = ConnectionLimits::new(2, 1, 0, "test_connections");
        let (a, b, c) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        );
        let first = limits.admit(a).expect("room");
        assert_eq!(
            limits.admit(a).err(),
            Some(Refused::AddressFull(1)),
            "one per address"
        );
        let _second = limits.admit(b).expect("room");
        assert_eq!(
            limits.admit(c).err(),
            Some(Refused::ServerFull),
            "two in total"
        );
        assert!(
            !limits.per_ip.contains_key(&c),
            "a refused address leaves no entry behind"
        );
        drop(first);
        assert!(!limits.per_ip.contains_key(&a));
        assert!(limits.admit(c).is_ok(), "a place given back is taken again");
    }

    #[test]
    fn an_ipv6_network_holds_its_share_of_addresses_caps() {
        let limits = ConnectionLimits::new(usize::MAX, 2, 16, "test_connections");
        let drawn = |n: u32| format!("2001:db8:7:{n:x}::1").parse::<IpAddr>().unwrap();
        // Sixteen /64s of one /48, each at its own cap of two.
        let held: Vec<ConnectionPermit> = (0..32)
            .map(|n| limits.admit(drawn(n / 2)).unwrap())
            .collect();
        assert_eq!(
            limits.admit(drawn(99)).err(),
            Some(Refused::NetworkFull(32)),
            "a fresh /64 of a full /48"
        );
        assert_eq!(limits.admit(drawn(0)).err(), Some(Refused::AddressFull(2)));
        assert!(
            !limits
                .per_ip
                .contains_key(&crate::client_address::counted_as(drawn(99)))
        );
        assert!(limits.admit("2001:db8:8::1".parse().unwrap()).is_ok());
        drop(held);
        assert!(limits.per_ip.is_empty() && limits.per_network.is_empty());
        assert!(limits.admit(drawn(99)).is_ok());
    }

    #[test]
    fn no_cap_per_address_keeps_the_total_and_no_entries() {
        let limits = ConnectionLimits::new(2, 0, 0, "test_connections");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let places = [
            limits.admit(ip).expect("room"),
            limits.admit(ip).expect("room"),
        ];
        assert_eq!(
            limits.admit(ip).err(),
            Some(Refused::ServerFull),
            "two in total"
        );
        assert!(limits.per_ip.is_empty());
        drop(places);
        assert!(limits.admit(ip).is_ok());
    }

    #[test]
    fn an_address_holds_distinct_feeds_up_to_its_cap_each_once() {
        let places = FeedPlaces::new(2);
        let (nat, other) = (
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 2)),
        );
        let phones: Vec<FeedPlace> = (0..30)
            .map(|_| {
                places
                    .admit(nat, "feed?tag=jazz")
                    .expect("one feed, one place")
            })
            .collect();
        let second = places.admit(nat, "feed?tag=folk").expect("a second feed");
        assert!(
            places.admit(nat, "feed?tag=punk").err() == Some(2),
            "a third is refused"
        );
        assert!(places.admit(other, "feed?tag=punk").is_ok(), "per address");

        drop(second);
        let third = places
            .admit(nat, "feed?tag=punk")
            .expect("a place given back");
        drop(phones);
        drop(third);
        assert!(
            places.by_client.get(&nat).is_none(),
            "nothing held, nothing kept"
        );
    }
}
