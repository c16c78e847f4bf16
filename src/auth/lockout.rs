//! Failed logins slow down and then lock out, per account and per client
//! address, so passwords cannot be guessed at speed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Deserialize;

/// `[auth.lockout]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct LockoutSettings {
    /// Failures after which each further attempt waits longer.
    pub slow_after: u32,
    /// Failures that lock the account (or address) out.
    pub lock_after: u32,
    pub lock_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// What a login attempt may do.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Go ahead, after this pause.
    Proceed(Duration),
    /// Locked out for this long.
    Locked(Duration),
}

pub struct LoginGuard {
    settings: LockoutSettings,
    accounts: DashMap<String, Failures>,
    addresses: DashMap<IpAddr, Failures>,
}

impl LoginGuard {
    pub fn new(settings: LockoutSettings) -> Self {
        Self {
            settings,
            accounts: DashMap::new(),
            addresses: DashMap::new(),
        }
    }

    fn lock_window(&self) -> Duration {
        Duration::from_secs(self.settings.lock_secs)
    }

    /// `scale` multiplies both thresholds: 1 for accounts, 10 for addresses.
    fn admission_for(&self, failures: Option<Failures>, scale: u32) -> Admission {
        let (slow_after, lock_after) = (
            self.settings.slow_after * scale,
            self.settings.lock_after * scale,
        );
        let Some(f) = failures.filter(|f| f.last.elapsed() < self.lock_window()) else {
            return Admission::Proceed(Duration::ZERO);
        };
        if f.count >= lock_after {
            return Admission::Locked(self.lock_window().saturating_sub(f.last.elapsed()));
        }
        let over = f.count.saturating_sub(slow_after);
        Admission::Proceed(Duration::from_millis((100 * u64::from(over)).min(2_000)))
    }

    /// May this attempt go ahead? Addresses get ten times the account budget,
    /// since many people can share one.
    pub fn admit(&self, email: &str, ip: IpAddr) -> Admission {
        let account = self.admission_for(self.accounts.get(email).map(|f| *f), 1);
        let address = self.admission_for(self.addresses.get(&ip).map(|f| *f), 10);
        match (account, address) {
            (Admission::Locked(a), Admission::Locked(b)) => Admission::Locked(a.max(b)),
            (locked @ Admission::Locked(_), _) | (_, locked @ Admission::Locked(_)) => locked,
            (Admission::Proceed(a), Admission::Proceed(b)) => Admission::Proceed(a.max(b)),
        }
    }

    pub fn failed(&self, email: &str, ip: IpAddr) {
        let window = self.lock_window();
        let bump = |f: &mut Failures| {
            if f.last.elapsed() >= window {
                f.count = 0;
            }
            f.count += 1;
            f.last = Instant::now();
        };
        let fresh = || Failures {
            count: 0,
            last: Instant::now(),
        };
        let mut account = self.accounts.entry(email.to_owned()).or_insert_with(fresh);
        bump(&mut account);
        if account.count == self.settings.lock_after {
            tracing::warn!(target: "turnout::audit", email, "account locked after repeated failed logins");
        }
        drop(account);
        bump(&mut self.addresses.entry(ip).or_insert_with(fresh));
    }

    pub fn succeeded(&self, email: &str) {
        self.accounts.remove(email);
    }

    /// Forgets failures older than the lock window: memory stays bounded.
    pub fn forget_old(&self) {
        let window = self.lock_window();
        self.accounts.retain(|_, f| f.last.elapsed() < window);
        self.addresses.retain(|_, f| f.last.elapsed() < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(LockoutSettings {
            slow_after: 2,
            lock_after: 4,
            lock_secs: 60,
        })
    }

    #[test]
    fn failures_slow_down_then_lock_and_success_resets() {
        let g = guard();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.admit("a@x.org", ip), Admission::Proceed(Duration::ZERO));
        for _ in 0..3 {
            g.failed("a@x.org", ip);
        }
        assert_eq!(
            g.admit("a@x.org", ip),
            Admission::Proceed(Duration::from_millis(100))
        );
        g.failed("a@x.org", ip);
        assert!(
            matches!(g.admit("a@x.org", ip), Admission::Locked(d) if d > Duration::from_secs(50))
        );
        assert_eq!(
            g.admit("b@x.org", ip),
            Admission::Proceed(Duration::ZERO),
            "other accounts are not locked"
        );
        g.succeeded("a@x.org");
        assert_eq!(g.admit("a@x.org", ip), Admission::Proceed(Duration::ZERO));
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_too() {
        let g = guard();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..40 {
            g.failed(&format!("user{i}@x.org"), ip);
        }
        assert!(matches!(g.admit("fresh@x.org", ip), Admission::Locked(_)));
        assert_eq!(
            g.admit("fresh@x.org", "192.0.2.8".parse().unwrap()),
            Admission::Proceed(Duration::ZERO)
        );
    }
}
