//! A hub's subscribers, kept for its fan-out: one vector in the order
//! their sessions began.
//!
//! Every update walks every subscriber, so the walk is what this is built
//! for. Session ids grow, so in their order a fan-out visits the queues,
//! the sockets and the kernel's state of each connection in about the
//! order they were allocated, and the CPU's prefetchers keep up (in a hash
//! map's order each subscriber was a cache miss or two). A vector walks
//! that order with nothing between the entries; a `BTreeMap`'s `retain`
//! cost more per subscriber than the hub's own check of the queue
//! (docs/BENCHMARKS.md).
//!
//! A subscriber that leaves is marked gone rather than removed, so that
//! thousands leaving at once do not shift the vector thousands of times:
//! the next fan-out drops the marks on its way, and so does a leave that
//! finds half the entries gone.

/// Subscribers of type `T` (a connection's send queue), by session id.
pub struct Subscribers<T> {
    /// Ascending by session id; `None` for a subscriber that has left.
    entries: Vec<(u64, Option<T>)>,
    /// The entries that are `Some`.
    live: usize,
}

impl<T> Subscribers<T> {
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            live: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds `session`'s subscriber, or replaces the one it had.
    pub fn insert(&mut self, session: u64, subscriber: T) {
        // The newest session is the common case, and goes at the end.
        if self.entries.last().is_none_or(|(last, _)| *last < session) {
            self.entries.push((session, Some(subscriber)));
            self.live += 1;
            return;
        }
        match self.position(session) {
            Ok(at) => {
                if self.entries[at].1.replace(subscriber).is_none() {
                    self.live += 1;
                }
            }
            Err(at) => {
                self.entries.insert(at, (session, Some(subscriber)));
                self.live += 1;
            }
        }
    }

    /// Takes `session`'s subscriber out, if it has one.
    pub fn remove(&mut self, session: u64) -> Option<T> {
        let at = self.position(session).ok()?;
        let subscriber = self.entries[at].1.take()?;
        self.live -= 1;
        if self.live < self.entries.len() / 2 {
            self.entries.retain(|(_, subscriber)| subscriber.is_some());
        }
        Some(subscriber)
    }

    /// Offers each subscriber, in session order, to `keep`, and drops
    /// those it refuses. Returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.live;
        self.entries
            .retain(|(_, subscriber)| subscriber.as_ref().is_some_and(&mut keep));
        self.live = self.entries.len();
        before - self.live
    }

    fn position(&self, session: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&session, |(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sessions a fan-out visits, in its order.
    fn visited(subscribers: &mut Subscribers<&'static str>) -> Vec<&'static str> {
        let mut seen = Vec::new();
        subscribers.retain(|name| {
            seen.push(*name);
            true
        });
        seen
    }

    #[test]
    fn a_fan_out_visits_subscribers_in_the_order_their_sessions_began() {
        let mut subscribers = Subscribers::new();
        subscribers.insert(7, "seven");
        subscribers.insert(9, "nine");
        // A session that began earlier may subscribe later.
        subscribers.insert(3, "three");
        subscribers.insert(8, "eight");
        assert_eq!(
            visited(&mut subscribers),
            ["three", "seven", "eight", "nine"]
        );
        assert_eq!(subscribers.len(), 4);
    }

    #[test]
    fn a_session_that_subscribes_again_is_replaced_not_counted_twice() {
        let mut subscribers = Subscribers::new();
        subscribers.insert(1, "one");
        subscribers.insert(2, "two");
        subscribers.insert(1, "one again");
        assert_eq!(visited(&mut subscribers), ["one again", "two"]);
        assert_eq!(subscribers.len(), 2);
    }

    #[test]
    fn a_subscriber_that_left_is_neither_visited_nor_counted() {
        let mut subscribers = Subscribers::new();
        for (session, name) in [(1, "one"), (2, "two"), (3, "three"), (4, "four")] {
            subscribers.insert(session, name);
        }
        assert_eq!(subscribers.remove(2), Some("two"));
        assert_eq!(subscribers.remove(2), None);
        assert_eq!(subscribers.remove(5), None);
        assert_eq!(subscribers.len(), 3);
        assert_eq!(visited(&mut subscribers), ["one", "three", "four"]);
    }

    #[test]
    fn a_session_that_left_may_subscribe_again() {
        let mut subscribers = Subscribers::new();
        subscribers.insert(1, "one");
        subscribers.insert(2, "two");
        subscribers.insert(3, "three");
        subscribers.remove(2);
        subscribers.insert(2, "two again");
        assert_eq!(subscribers.len(), 3);
        assert_eq!(visited(&mut subscribers), ["one", "two again", "three"]);
    }

    #[test]
    fn a_fan_out_drops_the_subscribers_it_could_not_reach() {
        let mut subscribers = Subscribers::new();
        for (session, name) in [(1, "open"), (2, "over budget"), (3, "open too")] {
            subscribers.insert(session, name);
        }
        let dropped = subscribers.retain(|name| !name.starts_with("over"));
        assert_eq!(dropped, 1);
        assert_eq!(subscribers.len(), 2);
        assert_eq!(visited(&mut subscribers), ["open", "open too"]);
    }

    #[test]
    fn when_every_subscriber_leaves_the_hub_holds_nothing() {
        let mut subscribers = Subscribers::new();
        for session in 0..1_000 {
            subscribers.insert(session, "subscriber");
        }
        for session in (0..1_000).rev() {
            assert!(subscribers.remove(session).is_some());
        }
        assert!(subscribers.is_empty());
        // The marks left behind are dropped as they come to outnumber the
        // subscribers: at most one remains.
        assert!(subscribers.entries.len() <= 1);
        assert!(visited(&mut subscribers).is_empty());
    }
}
