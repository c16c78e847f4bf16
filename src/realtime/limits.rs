//! The connection limits: open WebSocket connections in total and per
//! client address, each connection holding its place until its socket's
//! response body is done with.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Open connections, in total and per client address.
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

/// A connection's place within the limits, given back on drop. The socket's
/// response body ([`super::socket::SocketBody`]) holds it, so it is given
/// back once the close frame has been taken for writing or the connection
/// has dropped — not when the session ends, which a client that stops
/// reading outlives.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            max_total,
            max_per_ip,
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        // The total first, and the address only when it may connect at all:
        // a refused address leaves no entry behind.
        if self.max_per_ip == 0 {
            return None;
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(count);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *count += 1;
        metrics::gauge!("turnout_ws_connections").increment(1.0);
        Some(ConnectionPermit {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        self.limits.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
        metrics::gauge!("turnout_ws_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn limits_count_per_address_and_in_total_and_forget_refusals() {
        let limits = ConnectionLimits::new(2, 1);
        let (a, b, c) = (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        );
        let first = limits.admit(a).expect("room");
        assert!(limits.admit(a).is_none(), "one per address");
        let _second = limits.admit(b).expect("room");
        assert!(limits.admit(c).is_none(), "two in total");
        assert!(
            !limits.per_ip.contains_key(&c),
            "a refused address leaves no entry behind"
        );
        drop(first);
        assert!(!limits.per_ip.contains_key(&a));
        assert!(
            limits.admit(c).is_some(),
            "a place given back is taken again"
        );
    }
}
