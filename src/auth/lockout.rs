//! Failed logins, counted so that guessing is slow but nobody can lock a
//! stranger out.
//!
//! - Per (account, address): after `lock_after` failures that address may
//!   not try that account for `lock_secs`. A guesser at one address is
//!   stopped; the owner, elsewhere, is not.
//! - Per address, over all accounts: ten times the budget, then locked
//!   (credential stuffing from one address).
//! - A device that holds a sign-in pass for the account ([`SignInPasses`]:
//!   it signed in from there before) is let past its address's locks: one
//!   guesser behind an office's or a carrier's shared address cannot lock
//!   the people behind it out, right passwords and all. Its failures are
//!   counted per (account, pass) instead of per (account, address), from
//!   whatever address (and still toward its address's total over all
//!   accounts), and after `lock_after` the pass counts for nothing: its device is counted by
//!   its address again, so a copied pass gets no more guesses than an
//!   address. The account's delay still holds it.
//! - Per account, over all addresses: after `slow_after` failures each
//!   attempt waits longer, up to `max_delay_ms` — a growing delay, never a
//!   lock, so the owner still gets in. The delay holds each attempt, not
//!   the account's attempts in total: guesses from many addresses at once
//!   are held back by each address's own limits (and the accounts rate
//!   budget), not by this.
//!
//! An attempt counts from the moment it is let in, not only once its
//! password has been checked: a burst of parallel guesses from one address
//! gets no more tries than the same guesses one after another.
//!
//! Only a well-formed [`Email`] is counted, and by its keyed digest
//! ([`AccountDigests`]): whatever a stranger types, an entry costs the same
//! few bytes, and entries older than the lock window are forgotten.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Deserialize;

use super::Email;
use super::digest::{Account, AccountDigests};
use super::passes::SignInPasses;
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

/// Where a login's attempts on an account are counted from: its address,
/// or the sign-in pass it holds (by the pass's issue time), which works
/// from any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Address(IpAddr),
    Pass(i64),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// Attempts let in whose password is still being checked.
    in_flight: u32,
}

impl Failures {
    fn none() -> Self {
        Self {
            count: 0,
            last: Instant::now(),
            in_flight: 0,
        }
    }
}

/// What a login attempt may do.
#[derive(Debug)]
pub enum Admission<'g> {
    /// Go ahead, after this pause; the attempt counts until it is settled.
    Proceed(Attempt<'g>, Duration),
    /// Locked out for this long.
    Locked(Duration),
}

/// A login attempt let in by the guard. It counts against its address's
/// limits while its password is checked; [`Attempt::failed`] or
/// [`Attempt::succeeded`] settles it, and an attempt dropped unsettled (its
/// client went away) counts as never made.
#[derive(Debug)]
pub struct Attempt<'g> {
    guard: &'g LoginGuard,
    account: Account,
    origin: Origin,
    ip: IpAddr,
}

#[derive(Debug)]
pub struct LoginGuard {
    settings: LockoutSettings,
    digests: AccountDigests,
    passes: SignInPasses,
    accounts: DashMap<Account, Failures>,
    pairs: DashMap<(Account, Origin), Failures>,
    addresses: DashMap<IpAddr, Failures>,
}

impl LoginGuard {
    pub fn new(settings: LockoutSettings, digests: AccountDigests, passes: SignInPasses) -> Self {
        Self {
            settings,
            digests,
            passes,
            accounts: DashMap::new(),
            pairs: DashMap::new(),
            addresses: DashMap::new(),
        }
    }

    /// How the guard names accounts, for the logs to name them alike.
    pub fn digests(&self) -> &AccountDigests {
        &self.digests
    }

    /// A sign-in pass for `email`'s account, to hand a client that just
    /// proved it holds the account (its password right, or the account
    /// just made).
    pub fn pass_for(&self, email: &Email) -> String {
        self.passes.issue(email, chrono::Utc::now().timestamp())
    }

    fn lock_window(&self) -> Duration {
        Duration::from_secs(self.settings.lock_secs)
    }

    /// Failures still counting: within the window of the last one.
    fn recent(&self, failures: Option<Failures>) -> Option<Failures> {
        failures.filter(|f| f.last.elapsed() < self.lock_window())
    }

    /// How long `failures` and the attempts in flight lock out, if together
    /// they reach `limit`. Attempts in flight lock only until they settle:
    /// the client is told to come back in a second.
    fn lock(&self, failures: &Failures, limit: u32) -> Option<Duration> {
        let recent = self.recent(Some(*failures)).map_or(0, |f| f.count);
        if recent.saturating_add(failures.in_flight) < limit {
            return None;
        }
        Some(if recent >= limit {
            self.lock_window().saturating_sub(failures.last.elapsed())
        } else {
            Duration::from_secs(1)
        })
    }

    /// May this attempt go ahead? If so, it counts as in flight until the
    /// returned [`Attempt`] is settled or dropped. The address's entry is
    /// locked while the pair's is checked (the one place two are held, in
    /// that order), so two parallel attempts cannot both take the last try;
    /// an address locked out stores nothing more, whatever email it tries
    /// (bar an attempt with a valid pass, counted per pass and toward the
    /// address's total). `pass`, the
    /// client's sign-in pass if it sent one, lets a device that signed in
    /// to this account before past the address's locks, to meet its
    /// pass's own; a pass locked out is ignored.
    pub fn admit(&self, email: &Email, ip: IpAddr, pass: Option<&str>) -> Admission<'_> {
        let (account, ip) = (self.digests.account(email), counted_as(ip));
        let now = chrono::Utc::now().timestamp();
        let lock_after = self.settings.lock_after;
        let pass = pass
            .and_then(|pass| self.passes.issued_at(pass, email, now))
            // A pass locked out is no pass: its device is counted by its
            // address, as any other (so the owner, whose device sends the
            // pass it keeps, still signs in where that address may).
            // (Its failures, not its attempts in flight: a pass at its limit
            // while guesses are checked waits for them, as an address does.)
            .filter(|issued| {
                let pair = self.pairs.get(&(account, Origin::Pass(*issued)));
                let failed = self.recent(pair.map(|failures| *failures));
                failed.is_none_or(|failures| failures.count < lock_after)
            });
        let origin = pass.map_or(Origin::Address(ip), Origin::Pass);
        let mut address = self.addresses.entry(ip).or_insert_with(Failures::none);
        if pass.is_none()
            && let Some(wait) = self.lock(&address, lock_after.saturating_mul(10))
        {
            return Admission::Locked(wait);
        }
        let mut pair = self
            .pairs
            .entry((account, origin))
            .or_insert_with(Failures::none);
        if let Some(wait) = self.lock(&pair, lock_after) {
            return Admission::Locked(wait);
        }
        pair.in_flight += 1;
        address.in_flight += 1;
        drop((pair, address));
        let failures = self.recent(self.accounts.get(&account).map(|f| *f));
        let over = failures.map_or(0, |f| f.count.saturating_sub(self.settings.slow_after));
        let delay = (100 * u64::from(over)).min(self.settings.max_delay_ms);
        let attempt = Attempt {
            guard: self,
            account,
            origin,
            ip,
        };
        Admission::Proceed(attempt, Duration::from_millis(delay))
    }

    /// Forgets failures older than the lock window: memory stays bounded.
    pub fn forget_old(&self) {
        let window = self.lock_window();
        let live = |f: &Failures| f.in_flight > 0 || (f.count > 0 && f.last.elapsed() < window);
        self.accounts.retain(|_, f| live(f));
        self.pairs.retain(|_, f| live(f));
        self.addresses.retain(|_, f| live(f));
    }
}

impl Attempt<'_> {
    /// The wrong password (or no such account): it counts as a failure.
    pub fn failed(self) {
        let guard = self.guard;
        let window = guard.lock_window();
        let bump = |f: &mut Failures| {
            if f.last.elapsed() >= window {
                f.count = 0;
            }
            f.count += 1;
            f.last = Instant::now();
            f.count
        };
        bump(
            &mut guard
                .accounts
                .entry(self.account)
                .or_insert_with(Failures::none),
        );
        let pair = bump(
            &mut guard
                .pairs
                .entry((self.account, self.origin))
                .or_insert_with(Failures::none),
        );
        if pair == guard.settings.lock_after {
            let pass_issued = match self.origin {
                Origin::Pass(issued) => Some(issued),
                Origin::Address(_) => None,
            };
            tracing::warn!(target: "turnout::audit", account = %self.account.logged(), ip = %self.ip, ?pass_issued,
                "logins from an address (or with a sign-in pass) are locked out of an account after repeated failures");
        }
        bump(
            &mut guard
                .addresses
                .entry(self.ip)
                .or_insert_with(Failures::none),
        );
        // Dropped here: counted as a failure, no longer in flight.
    }

    /// The right password: the account's failures are forgotten, and those
    /// of this address (or this pass) for it.
    pub fn succeeded(self) {
        self.guard.accounts.remove(&self.account);
        if let Some(mut pair) = self.guard.pairs.get_mut(&(self.account, self.origin)) {
            pair.count = 0;
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(mut pair) = self.guard.pairs.get_mut(&(self.account, self.origin)) {
            pair.in_flight = pair.in_flight.saturating_sub(1);
        }
        if let Some(mut address) = self.guard.addresses.get_mut(&self.ip) {
            address.in_flight = address.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        guard_with(LockoutSettings {
            slow_after: 2,
            max_delay_ms: 300,
            lock_after: 4,
            lock_secs: 60,
        })
    }

    fn guard_with(settings: LockoutSettings) -> LoginGuard {
        let key = secrecy::SecretString::from("lockout-test-key-lockout-test-key");
        LoginGuard::new(
            settings,
            AccountDigests::new(&key),
            SignInPasses::new(&[key]),
        )
    }

    fn email(raw: &str) -> Email {
        Email::parse(raw).expect("a valid email")
    }

    impl LoginGuard {
        /// An attempt from a device that holds no sign-in pass.
        fn admit_from(&self, email: &Email, ip: IpAddr) -> Admission<'_> {
            self.admit(email, ip, None)
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// The pause an attempt is let in after (its attempt settled as
    /// neither), or `None` if it is locked out.
    fn pause(g: &LoginGuard, raw: &str, at: IpAddr) -> Option<Duration> {
        match g.admit_from(&email(raw), at) {
            Admission::Proceed(_, pause) => Some(pause),
            Admission::Locked(_) => None,
        }
    }

    fn lock(g: &LoginGuard, raw: &str, at: IpAddr) -> Option<Duration> {
        match g.admit_from(&email(raw), at) {
            Admission::Proceed(..) => None,
            Admission::Locked(wait) => Some(wait),
        }
    }

    /// A wrong password, from `at`.
    fn fail(g: &LoginGuard, raw: &str, at: IpAddr) {
        match g.admit_from(&email(raw), at) {
            Admission::Proceed(attempt, _) => attempt.failed(),
            Admission::Locked(wait) => panic!("{raw} from {at} is locked for {wait:?}"),
        }
    }

    #[test]
    fn failures_from_one_address_lock_it_out_of_that_account_only() {
        let g = guard();
        assert_eq!(pause(&g, "a@x.org", ip(1)), Some(Duration::ZERO));
        for _ in 0..3 {
            fail(&g, "a@x.org", ip(1));
        }
        assert_eq!(
            pause(&g, "a@x.org", ip(1)),
            Some(Duration::from_millis(100))
        );
        fail(&g, "a@x.org", ip(1));
        assert!(lock(&g, "a@x.org", ip(1)).is_some_and(|d| d > Duration::from_secs(50)));
        assert_eq!(
            pause(&g, "b@x.org", ip(1)),
            Some(Duration::ZERO),
            "other accounts are not locked"
        );
        assert!(
            pause(&g, "a@x.org", ip(2)).is_some(),
            "the owner, elsewhere, is not locked out"
        );
    }

    #[test]
    fn an_account_guessed_from_everywhere_is_slowed_never_locked() {
        let g = guard();
        for i in 0..50 {
            fail(&g, "a@x.org", ip(i));
        }
        let Admission::Proceed(attempt, pause_then) = g.admit_from(&email("a@x.org"), ip(200))
        else {
            panic!("an account is never locked for everyone")
        };
        assert_eq!(
            pause_then,
            Duration::from_millis(300),
            "the delay grows to its cap"
        );
        attempt.succeeded();
        assert_eq!(pause(&g, "a@x.org", ip(200)), Some(Duration::ZERO));
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked_too() {
        let g = guard();
        for i in 0..40 {
            fail(&g, &format!("user{i}@x.org"), ip(7));
        }
        let pairs = g.pairs.len();
        assert!(lock(&g, "fresh@x.org", ip(7)).is_some());
        assert_eq!(
            g.pairs.len(),
            pairs,
            "a locked address stores nothing for a new email"
        );
        assert_eq!(pause(&g, "fresh@x.org", ip(8)), Some(Duration::ZERO));
    }

    /// A guesser behind a shared address locks it out of an account it
    /// guessed at, then over all accounts; a device that signed in to that
    /// account before, holding its pass, is let in all the same, to meet
    /// its pass's own lock, from whatever address. Without a pass the
    /// answer is the same whatever the account.
    #[test]
    fn a_sign_in_pass_lets_its_device_past_the_address_locks() {
        let g = guard();
        let regular = g.pass_for(&email("regular@x.org"));
        let with_pass = |raw: &str, at: IpAddr| g.admit(&email(raw), at, Some(&regular));
        for _ in 0..4 {
            fail(&g, "regular@x.org", ip(7));
        }
        // Forty failures in all lock the address over all accounts.
        for i in 0..36 {
            fail(&g, &format!("user{i}@x.org"), ip(7));
        }
        assert!(
            lock(&g, "regular@x.org", ip(7)).is_some(),
            "no pass: locked"
        );
        assert!(lock(&g, "newcomer@x.org", ip(7)).is_some());
        for _ in 0..4 {
            match with_pass("regular@x.org", ip(7)) {
                Admission::Proceed(attempt, pause) => {
                    assert!(pause > Duration::ZERO, "the account's delay still holds it");
                    attempt.failed();
                }
                Admission::Locked(_) => panic!("the pass's device is let in"),
            }
        }
        assert!(
            matches!(with_pass("regular@x.org", ip(7)), Admission::Locked(_)),
            "four failures lock the pass out: the device is the address's again"
        );
        assert!(
            matches!(with_pass("regular@x.org", ip(9)), Admission::Proceed(..)),
            "elsewhere, a locked pass is no pass, and no lock either"
        );
        assert!(
            matches!(with_pass("newcomer@x.org", ip(7)), Admission::Locked(_)),
            "a pass is its account's alone"
        );
    }

    /// Passes are made under the first JWT key and taken under any: a
    /// rolling deploy that puts a new key first keeps the passes made
    /// before it (the guard's own digests change with the first key).
    #[test]
    fn a_pass_outlives_a_new_key_put_first() {
        let settings = guard().settings;
        let (old, new) = (
            secrecy::SecretString::from("old-lockout-key-old-lockout-key-o"),
            secrecy::SecretString::from("new-lockout-key-new-lockout-key-n"),
        );
        let before = LoginGuard::new(
            settings.clone(),
            AccountDigests::new(&old),
            SignInPasses::new(std::slice::from_ref(&old)),
        );
        let pass = before.pass_for(&email("regular@x.org"));
        let after = LoginGuard::new(
            settings,
            AccountDigests::new(&new),
            SignInPasses::new(&[new, old]),
        );
        for i in 0..40 {
            fail(&after, &format!("user{i}@x.org"), ip(7));
        }
        assert!(matches!(
            after.admit(&email("regular@x.org"), ip(7), Some(&pass)),
            Admission::Proceed(..)
        ));
    }

    #[test]
    fn parallel_guesses_get_no_more_tries_than_guesses_in_turn() {
        let g = guard();
        // Four guesses let in at once, none of them checked yet.
        let in_flight: Vec<_> = (0..4)
            .map(|_| match g.admit_from(&email("a@x.org"), ip(1)) {
                Admission::Proceed(attempt, _) => attempt,
                Admission::Locked(_) => panic!("the first four are let in"),
            })
            .collect();
        assert_eq!(
            lock(&g, "a@x.org", ip(1)),
            Some(Duration::from_secs(1)),
            "a fifth waits for the four to settle"
        );
        assert!(
            pause(&g, "a@x.org", ip(2)).is_some(),
            "the owner, elsewhere, is not held up"
        );
        for attempt in in_flight {
            attempt.failed();
        }
        assert!(
            lock(&g, "a@x.org", ip(1)).is_some_and(|d| d > Duration::from_secs(50)),
            "four failures lock the address out"
        );
    }

    #[test]
    fn an_attempt_whose_client_went_away_counts_as_never_made() {
        let g = guard();
        for _ in 0..3 {
            fail(&g, "a@x.org", ip(1));
        }
        for _ in 0..10 {
            // Let in and dropped unsettled, as when a client disconnects
            // while its password is checked.
            assert!(pause(&g, "a@x.org", ip(1)).is_some());
        }
        fail(&g, "a@x.org", ip(1));
        assert!(lock(&g, "a@x.org", ip(1)).is_some());
    }

    #[test]
    fn settled_attempts_leave_nothing_behind_once_old() {
        let g = guard_with(LockoutSettings {
            lock_secs: 0,
            ..guard().settings
        });
        fail(&g, "a@x.org", ip(1));
        let Admission::Proceed(pending, _) = g.admit_from(&email("b@x.org"), ip(1)) else {
            panic!("no lock lasts zero seconds")
        };
        g.forget_old();
        assert_eq!(g.pairs.len(), 1, "only the attempt still in flight");
        drop(pending);
        g.forget_old();
        assert!(g.pairs.is_empty() && g.addresses.is_empty() && g.accounts.is_empty());
    }
}
