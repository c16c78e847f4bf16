//! Failed logins, counted so that guessing is slow but nobody can lock a
//! stranger out.
//!
//! - Per (account, address): after `lock_after` failures that address may
//!   not try that account for `lock_secs`. A guesser at one address is
//!   stopped; the owner, elsewhere, is not.
//! - Per address, over all accounts: ten times the budget, then locked
//!   (credential stuffing from one address).
//! - Per account, over all addresses: after `slow_after` failures each
//!   attempt waits longer, up to `max_delay_ms` — a growing delay, never a
//!   lock, so guessing from many addresses is slow and the owner still gets
//!   in.
//!
//! Only a well-formed [`Email`] is counted, and by its digest: whatever a
//! stranger types, an entry costs the same few bytes, and entries older than
//! the lock window are forgotten.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Email;
use crate::client_address::counted_as;

/// `[auth.lockout]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct LockoutSettings {
    /// Failures for an account (from anywhere) after which each further
    /// attempt waits longer.
    pub slow_after: u32,
    /// The longest wait an account's failures impose.
    pub max_delay_ms: u64,
    /// Failures for an account from one address that lock that address out
    /// of it (an address gets ten times as many over all accounts).
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
    accounts: DashMap<Account, Failures>,
    pairs: DashMap<(Account, IpAddr), Failures>,
    addresses: DashMap<IpAddr, Failures>,
}

/// An account as the guard counts it: the SHA-256 of its normalised email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Account([u8; 32]);

impl Account {
    fn of(email: &Email) -> Self {
        Self(Sha256::digest(email.as_str().as_bytes()).into())
    }
}

/// An account as the logs name it: a digest of the normalised email, so a
/// log line links attempts on one account without holding the address.
pub fn account_digest(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl LoginGuard {
    pub fn new(settings: LockoutSettings) -> Self {
        Self {
            settings,
            accounts: DashMap::new(),
            pairs: DashMap::new(),
            addresses: DashMap::new(),
        }
    }

    fn lock_window(&self) -> Duration {
        Duration::from_secs(self.settings.lock_secs)
    }

    /// Failures still counting: within the window of the last one.
    fn recent(&self, failures: Option<Failures>) -> Option<Failures> {
        failures.filter(|f| f.last.elapsed() < self.lock_window())
    }

    /// How long `failures` lock out, if they reach `limit`.
    fn lock(&self, failures: Option<Failures>, limit: u32) -> Option<Duration> {
        self.recent(failures)
            .filter(|f| f.count >= limit)
            .map(|f| self.lock_window().saturating_sub(f.last.elapsed()))
    }

    /// May this attempt go ahead?
    pub fn admit(&self, email: &Email, ip: IpAddr) -> Admission {
        let (account, ip) = (Account::of(email), counted_as(ip));
        let lock_after = self.settings.lock_after;
        let pair = self.pairs.get(&(account, ip)).map(|f| *f);
        let address = self.addresses.get(&ip).map(|f| *f);
        let locked = [
            self.lock(pair, lock_after),
            self.lock(address, lock_after.saturating_mul(10)),
        ];
        if let Some(wait) = locked.into_iter().flatten().max() {
            return Admission::Locked(wait);
        }
        let account = self.recent(self.accounts.get(&account).map(|f| *f));
        let over = account.map_or(0, |f| f.count.saturating_sub(self.settings.slow_after));
        let delay = (100 * u64::from(over)).min(self.settings.max_delay_ms);
        Admission::Proceed(Duration::from_millis(delay))
    }

    pub fn failed(&self, email: &Email, ip: IpAddr) {
        let (account, counted) = (Account::of(email), counted_as(ip));
        let window = self.lock_window();
        let bump = |f: &mut Failures| {
            if f.last.elapsed() >= window {
                f.count = 0;
            }
            f.count += 1;
            f.last = Instant::now();
            f.count
        };
        let fresh = || Failures {
            count: 0,
            last: Instant::now(),
        };
        bump(&mut self.accounts.entry(account).or_insert_with(fresh));
        let pair = bump(&mut self.pairs.entry((account, counted)).or_insert_with(fresh));
        if pair == self.settings.lock_after {
            tracing::warn!(target: "turnout::audit", account = %account_digest(email.as_str()), %ip,
                "an address is locked out of an account after repeated failed logins");
        }
        bump(&mut self.addresses.entry(counted).or_insert_with(fresh));
    }

    /// The right password: the account's and this address's failures for
    /// it are forgotten.
    pub fn succeeded(&self, email: &Email, ip: IpAddr) {
        let (account, ip) = (Account::of(email), counted_as(ip));
        self.accounts.remove(&account);
        self.pairs.remove(&(account, ip));
    }

    /// Forgets failures older than the lock window: memory stays bounded.
    pub fn forget_old(&self) {
        let window = self.lock_window();
        self.accounts.retain(|_, f| f.last.elapsed() < window);
        self.pairs.retain(|_, f| f.last.elapsed() < window);
        self.addresses.retain(|_, f| f.last.elapsed() < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(LockoutSettings {
            slow_after: 2,
            max_delay_ms: 300,
            lock_after: 4,
            lock_secs: 60,
        })
    }

    fn email(raw: &str) -> Email {
        Email::parse(raw).expect("a valid email")
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn failures_from_one_address_lock_it_out_of_that_account_only() {
        let g = guard();
        assert_eq!(
            g.admit(&email("a@x.org"), ip(1)),
            Admission::Proceed(Duration::ZERO)
        );
        for _ in 0..3 {
            g.failed(&email("a@x.org"), ip(1));
        }
        assert_eq!(
            g.admit(&email("a@x.org"), ip(1)),
            Admission::Proceed(Duration::from_millis(100))
        );
        g.failed(&email("a@x.org"), ip(1));
        assert!(
            matches!(g.admit(&email("a@x.org"), ip(1)), Admission::Locked(d) if d > Duration::from_secs(50))
        );
        assert_eq!(
            g.admit(&email("b@x.org"), ip(1)),
            Admission::Proceed(Duration::ZERO),
            "other accounts are not locked"
        );
        assert!(
            matches!(g.admit(&email("a@x.org"), ip(2)), Admission::Proceed(_)),
            "the owner, elsewhere, is not locked out"
        );
    }

    #[test]
    fn an_account_guessed_from_everywhere_is_slowed_never_locked() {
        let g = guard();
        for i in 0..50 {
            g.failed(&email("a@x.org"), ip(i));
        }
        assert_eq!(
            g.admit(&email("a@x.org"), ip(200)),
            Admission::Proceed(Duration::from_millis(300)),
            "the delay grows to its cap"
        );
        g.succeeded(&email("a@x.org"), ip(200));
        assert_eq!(
            g.admit(&email("a@x.org"), ip(200)),
            Admission::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_too() {
        let g = guard();
        for i in 0..40 {
            g.failed(&email(&format!("user{i}@x.org")), ip(7));
        }
        assert!(matches!(
            g.admit(&email("fresh@x.org"), ip(7)),
            Admission::Locked(_)
        ));
        assert_eq!(
            g.admit(&email("fresh@x.org"), ip(8)),
            Admission::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn logs_name_an_account_by_digest() {
        let digest = account_digest("a@x.org");
        assert_eq!(digest.len(), 16);
        assert!(!digest.contains('@'));
        assert_eq!(digest, account_digest("a@x.org"));
    }
}
