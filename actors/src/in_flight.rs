//! An event actor's appends in flight: handed to the journal, not yet heard
//! back about, each with the callers waiting on it.
//!
//! The journal settles appends in the order they were sent, and each one
//! stands on those before it: when one fails, every later one fails with it.
//! An answer that writes nothing (a refusal, a member joining again) may
//! still rest on facts in flight, so it waits on the latest append and
//! shares its fate. Generic over the caller, so the rules are tested
//! without channels.

use std::collections::BTreeMap;

use crate::domain::{DomainEvent, WaitlistMove};
use crate::idempotency::KeyClaim;

/// One append and who waits on it.
#[derive(Debug)]
pub struct Flight<C> {
    pub facts: Vec<DomainEvent>,
    /// How the facts move the waitlist (see [`crate::domain::waitlist_moves`]).
    pub moves: Vec<WaitlistMove>,
    pub request_id: Option<String>,
    /// The command's span, ended when the flight settles.
    pub span: tracing::Span,
    /// The command's own caller first, then any that wait on it.
    pub callers: Vec<C>,
    /// The idempotency key the append carries, held for its event on this
    /// node until the flight is dropped.
    pub key: Option<KeyClaim>,
}

/// The appends in flight, by the sequence number they were sent with.
#[derive(Debug)]
pub struct InFlight<C> {
    flights: BTreeMap<u64, Flight<C>>,
    next_seq: u64,
}

impl<C> Default for InFlight<C> {
    fn default() -> Self {
        Self {
            flights: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<C> InFlight<C> {
    /// The sequence number the next append will be sent with.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records an append sent with [`InFlight::next_seq`]; returns its number.
    pub fn sent(&mut self, flight: Flight<C>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.flights.insert(seq, flight);
        seq
    }

    /// Another caller waits on append `seq` (a duplicate of its command);
    /// given back if that append is no longer in flight.
    pub fn wait_on(&mut self, seq: u64, caller: C) -> Result<(), C> {
        match self.flights.get_mut(&seq) {
            Some(flight) => {
                flight.callers.push(caller);
                Ok(())
            }
            None => Err(caller),
        }
    }

    /// A caller whose answer writes nothing waits on the latest append, if
    /// any; given back when nothing is in flight, to be answered at once.
    pub fn wait_on_latest(&mut self, caller: C) -> Result<(), C> {
        match self.flights.values_mut().next_back() {
            Some(latest) => {
                latest.callers.push(caller);
                Ok(())
            }
            None => Err(caller),
        }
    }

    /// Append `seq` was settled (committed, or answered from the store).
    pub fn settled(&mut self, seq: u64) -> Option<Flight<C>> {
        self.flights.remove(&seq)
    }

    /// Append `seq` failed: it and every later append, in order.
    pub fn failed(&mut self, seq: u64) -> Vec<Flight<C>> {
        let later = self.flights.split_off(&seq);
        later.into_values().collect()
    }

    /// Everything in flight, in order (the actor is giving up).
    pub fn abandon(&mut self) -> Vec<Flight<C>> {
        std::mem::take(&mut self.flights).into_values().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(caller: &'static str) -> Flight<&'static str> {
        Flight {
            facts: Vec::new(),
            moves: Vec::new(),
            request_id: None,
            span: tracing::Span::none(),
            callers: vec![caller],
            key: None,
        }
    }

    fn callers(flights: Vec<Flight<&'static str>>) -> Vec<Vec<&'static str>> {
        flights.into_iter().map(|f| f.callers).collect()
    }

    #[test]
    fn appends_are_numbered_in_the_order_they_are_sent() {
        let mut in_flight = InFlight::default();
        assert_eq!(in_flight.next_seq(), 0);
        assert_eq!(in_flight.sent(flight("a")), 0);
        assert_eq!(in_flight.sent(flight("b")), 1);
        assert_eq!(in_flight.next_seq(), 2);
        assert_eq!(in_flight.settled(0).unwrap().callers, vec!["a"]);
        assert_eq!(in_flight.sent(flight("c")), 2, "numbers are never reused");
    }

    #[test]
    fn a_failure_takes_every_later_append_with_it_and_leaves_the_earlier() {
        let mut in_flight = InFlight::default();
        for caller in ["a", "b", "c"] {
            in_flight.sent(flight(caller));
        }
        assert_eq!(callers(in_flight.failed(1)), vec![vec!["b"], vec!["c"]]);
        assert!(!in_flight.is_empty());
        assert_eq!(in_flight.settled(0).unwrap().callers, vec!["a"]);
        assert!(in_flight.is_empty());
    }

    #[test]
    fn an_answer_that_writes_nothing_waits_on_the_latest_append() {
        let mut in_flight = InFlight::default();
        assert_eq!(
            in_flight.wait_on_latest("now"),
            Err("now"),
            "nothing in flight"
        );
        in_flight.sent(flight("a"));
        in_flight.sent(flight("b"));
        assert_eq!(in_flight.wait_on_latest("refused"), Ok(()));
        assert_eq!(callers(in_flight.failed(1)), vec![vec!["b", "refused"]]);
    }

    #[test]
    fn a_duplicate_waits_on_its_original_while_it_is_in_flight() {
        let mut in_flight = InFlight::default();
        let seq = in_flight.sent(flight("first"));
        assert_eq!(in_flight.wait_on(seq, "again"), Ok(()));
        assert_eq!(
            in_flight.settled(seq).unwrap().callers,
            vec!["first", "again"]
        );
        assert_eq!(in_flight.wait_on(seq, "late"), Err("late"));
    }

    #[test]
    fn abandoning_gives_back_everything_in_order() {
        let mut in_flight = InFlight::default();
        in_flight.sent(flight("a"));
        in_flight.sent(flight("b"));
        assert_eq!(callers(in_flight.abandon()), vec![vec!["a"], vec!["b"]]);
        assert!(in_flight.is_empty());
    }
}
