//! A circuit breaker for writes. When the database stops answering, every
//! write would otherwise wait out the full write deadline and pile up behind
//! it; after `failures` consecutive store failures the breaker opens and
//! writes fail fast with 503 `writes_paused` and `Retry-After` for the
//! cool-down. Then one write is let through as a probe: if it succeeds the
//! breaker closes, if not it opens again. Reads are not affected; `/ready`
//! reports not ready until the cool-down is over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::ApiError;

/// `[http.breaker]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct BreakerSettings {
    /// Consecutive store failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub cool_down_ms: u64,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else waits for its outcome.
    Probing,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
    clock: Clock,
}

/// Where the breaker reads the time: the system's clock, or in tests one
/// moved by hand, so that no stall of a loaded machine decides a test.
#[derive(Debug)]
enum Clock {
    System,
    #[cfg(test)]
    Manual(Mutex<Instant>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(test)]
            Clock::Manual(now) => *now.lock().unwrap(),
        }
    }
}

/// A write the breaker let through; report how it went with
/// [`Breaker::record`].
#[must_use]
pub struct Admitted<'a> {
    breaker: &'a Breaker,
    /// Whether this write is the probe the breaker waits on.
    probe: bool,
}

impl Drop for Admitted<'_> {
    /// A probe dropped before its outcome was recorded (its request was
    /// cancelled: the client went away) leaves no verdict, and the breaker
    /// would wait on it for ever: the next write probes instead.
    fn drop(&mut self) {
        if self.probe {
            let mut state = self.breaker.state();
            if matches!(*state, State::Probing) {
                *state = State::Open {
                    until: self.breaker.clock.now(),
                };
            }
        }
    }
}

impl Breaker {
    pub fn new(settings: &BreakerSettings) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: settings.failures.max(1),
            cool_down: Duration::from_millis(settings.cool_down_ms),
            clock: Clock::System,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a write through, or refuses it while the breaker is open.
    pub fn admit(&self) -> Result<Admitted<'_>, ApiError> {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(Admitted {
                breaker: self,
                probe: false,
            }),
            State::Open { until } if self.clock.now() >= until => {
                *state = State::Probing;
                Ok(Admitted {
                    breaker: self,
                    probe: true,
                })
            }
            State::Open { until } => Err(ApiError::WritesPaused(
                until
                    .saturating_duration_since(self.clock.now())
                    .as_secs()
                    .max(1),
            )),
            State::Probing => Err(ApiError::WritesPaused(1)),
        }
    }

    /// Records the outcome of an admitted write: only the store being
    /// unavailable counts as a failure.
    pub fn record<T>(&self, mut admitted: Admitted<'_>, outcome: &Result<T, ApiError>) {
        admitted.probe = false;
        drop(admitted);
        let store_failed = matches!(outcome, Err(ApiError::Unavailable));
        let mut state = self.state();
        *state = match (&*state, store_failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (_, true) => {
                if !matches!(*state, State::Open { .. }) {
                    tracing::warn!("the database keeps failing: pausing writes");
                    metrics::counter!("turnout_breaker_opened_total").increment(1);
                }
                State::Open {
                    until: self.clock.now() + self.cool_down,
                }
            }
        };
        metrics::gauge!("turnout_breaker_open").set(if matches!(*state, State::Closed { .. }) {
            0.0
        } else {
            1.0
        });
    }

    /// Hands back an admitted write whose outcome says nothing of the
    /// store (another node's failure, an event's actor reloading):
    /// no verdict, and if it was the probe, the next write probes.
    pub fn release(&self, admitted: Admitted<'_>) {
        drop(admitted);
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    /// Open, and its cool-down over: the next write probes.
    pub fn probe_due(&self) -> bool {
        match *self.state() {
            State::Open { until } => self.clock.now() >= until,
            State::Probing => true,
            State::Closed { .. } => false,
        }
    }

    /// A check beside the writes (`/ready`'s ping) found the store failing
    /// while writes are paused: the cool-down starts again. It takes no
    /// probe, so no number of checks can keep a write from probing.
    pub fn cool_down_again(&self) {
        let mut state = self.state();
        if let State::Open { until } = &mut *state {
            *until = self.clock.now() + self.cool_down;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker on a clock that moves only when [`advance`] moves it.
    fn breaker() -> Breaker {
        Breaker {
            clock: Clock::Manual(Mutex::new(Instant::now())),
            ..Breaker::new(&BreakerSettings {
                failures: 3,
                cool_down_ms: 500,
            })
        }
    }

    fn advance(b: &Breaker, by: Duration) {
        let Clock::Manual(now) = &b.clock else {
            unreachable!("a test's breaker runs on a manual clock")
        };
        *now.lock().unwrap() += by;
    }

    fn fail(b: &Breaker) {
        let admitted = b.admit().unwrap();
        b.record::<()>(admitted, &Err(ApiError::Unavailable));
    }

    #[test]
    fn opens_after_consecutive_store_failures_only() {
        let b = breaker();
        fail(&b);
        fail(&b);
        // A success in between resets the count.
        let admitted = b.admit().unwrap();
        b.record(admitted, &Ok(()));
        fail(&b);
        fail(&b);
        assert!(!b.is_open());
        // Refusals that are the client's business are not failures.
        let admitted = b.admit().unwrap();
        b.record::<()>(admitted, &Err(ApiError::NotFound("event")));
        assert!(!b.is_open());
        fail(&b);
        fail(&b);
        fail(&b);
        assert!(b.is_open());
        assert!(matches!(b.admit(), Err(ApiError::WritesPaused(_))));
    }

    /// A breaker opened by three failures, its cool-down over.
    fn cooled_down() -> Breaker {
        let b = breaker();
        for _ in 0..3 {
            fail(&b);
        }
        advance(&b, Duration::from_millis(500));
        b
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let b = cooled_down();
        let probe = b.admit().expect("the probe goes through");
        assert!(b.admit().is_err(), "only one probe at a time");
        b.record::<()>(probe, &Err(ApiError::Unavailable));
        assert!(b.admit().is_err(), "open again");
        advance(&b, Duration::from_millis(499));
        assert!(b.admit().is_err(), "for the whole cool-down");
        advance(&b, Duration::from_millis(1));
        let probe = b.admit().unwrap();
        b.record(probe, &Ok(()));
        assert!(!b.is_open());
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_probe_released_or_dropped_unrecorded_lets_the_next_write_probe() {
        let b = cooled_down();
        let probe = b.admit().expect("the probe goes through");
        b.release(probe);
        let cancelled = b.admit().expect("the next write probes");
        assert!(b.admit().is_err(), "one probe at a time");
        drop(cancelled);

        let next = b.admit().expect("the write after a cancelled probe probes");
        assert!(b.admit().is_err(), "still one probe at a time");
        b.record(next, &Ok(()));
        assert!(!b.is_open());
    }

    #[test]
    fn a_check_beside_the_writes_leaves_the_probe_to_them() {
        let b = cooled_down();
        assert!(b.probe_due());
        // Any number of good checks take nothing from the writes.
        for _ in 0..100 {
            assert!(b.probe_due());
        }
        // A failed one starts the cool-down again.
        b.cool_down_again();
        assert!(!b.probe_due());
        assert!(matches!(b.admit(), Err(ApiError::WritesPaused(_))));
        advance(&b, Duration::from_millis(500));
        let probe = b.admit().expect("a write probes once it is over");
        b.record(probe, &Ok(()));
        assert!(!b.is_open() && !b.probe_due());
    }
}
