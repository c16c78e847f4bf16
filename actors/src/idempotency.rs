//! Idempotency keys: what a keyed command answered, and the event actor's
//! memory of the answers it gave.
//!
//! A client that retries a join under the same `Idempotency-Key` gets the
//! first answer again and causes no second effect. The answer is kept as a
//! domain value ([`Answer`]), not as a rendered response: the HTTP layer
//! renders it, the same way for a first answer and for a replay.
//!
//! Three places hold answers, nearest first: [`KeyMemory`] in the actor (keys
//! in flight, then recently committed ones), the stored keys the journal
//! checks for a whole batch at once, and a lookup when a command is refused.
//!
//! The journal's check comes after the command was decided. A key answered
//! before that the actor did not know (used on another event, or retried
//! after its memory let go) is found there, and what the actor decided
//! meanwhile — its own facts and everything decided on top of them — is
//! undone by a reload, failing the others' commands in that batch.
//! [`KeyReplayers`] keeps that from being anyone's lever: a user whose key
//! did so once has their unknown keys looked up before deciding, for a
//! while. A lookup finds only answers already committed, so a fresh key
//! sent to two events at once would still be decided by both:
//! [`KeysInFlight`] lets one event of the node hold a key while its command
//! is in flight, and the other is refused at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::domain::{EventId, Membership, UserId};

/// The client's idempotency key for a command.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyKey {
    pub user: UserId,
    pub key: String,
    /// What the key is used for (method and target): another use of the same
    /// key is refused, not answered with this one's answer.
    pub fingerprint: String,
}

impl IdempotencyKey {
    pub fn id(&self) -> KeyId {
        (self.user, self.key.clone())
    }
}

/// A key as it is looked up: per user, so two users' keys never collide.
pub type KeyId = (UserId, String);

/// What a keyed command answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// False when the command was already in effect (joining twice).
    pub changed: bool,
    /// The caller's membership after the command.
    pub membership: Option<Membership>,
}

/// An answer given under a key, with what the key was used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub fingerprint: String,
    pub answer: Answer,
}

impl Given {
    /// The answer for a request with `fingerprint` under the same key, or
    /// `None` if the key was used for something else.
    pub fn replay_for(&self, fingerprint: &str) -> Option<Answer> {
        (self.fingerprint == fingerprint).then_some(self.answer)
    }
}

/// An event actor's memory of keys: those whose command is in flight (a
/// duplicate waits for the same answer instead of being decided again),
/// and the recently committed ones, so a client's retry is answered without
/// the database. Committed keys are kept a short while and up to a count:
/// a retry comes soon after its request, and an older one is answered from
/// the stored keys all the same — so the memory is a cost per recent
/// request, not per member an event ever took.
#[derive(Debug)]
pub struct KeyMemory {
    /// Each with the sequence number of the append that carries it.
    in_flight: HashMap<KeyId, (u64, Given)>,
    recent: HashMap<KeyId, Given>,
    /// Oldest first, with when each was remembered: the order `recent`
    /// forgets in.
    order: VecDeque<(Instant, KeyId)>,
    capacity: usize,
    keep_for: Duration,
}

impl KeyMemory {
    /// Remembers up to `capacity` committed keys, each for `keep_for`.
    pub fn new(capacity: usize, keep_for: Duration) -> Self {
        Self {
            in_flight: HashMap::new(),
            recent: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            keep_for,
        }
    }

    /// The answer given under `key`, in flight (with its append's sequence
    /// number) or committed.
    pub fn lookup(&self, key: &KeyId) -> Option<Recalled<'_>> {
        if let Some((seq, given)) = self.in_flight.get(key) {
            return Some(Recalled::InFlight { seq: *seq, given });
        }
        self.recent.get(key).map(Recalled::Committed)
    }

    /// `key`'s command was decided and its append `seq` handed on.
    pub fn sent(&mut self, key: KeyId, seq: u64, given: Given) {
        self.in_flight.insert(key, (seq, given));
    }

    /// `key`'s append committed: the answer decided for it stands.
    pub fn committed(&mut self, key: &KeyId, now: Instant) {
        if let Some((_, given)) = self.in_flight.remove(key) {
            self.remember(key.clone(), given, now);
        }
    }

    /// `key` turned out to be answered before (the store had it): that
    /// answer stands instead of the one decided in memory.
    pub fn replayed(&mut self, key: &KeyId, answer: Answer, now: Instant) {
        if let Some((_, given)) = self.in_flight.remove(key) {
            self.remember(
                key.clone(),
                Given {
                    fingerprint: given.fingerprint,
                    answer,
                },
                now,
            );
        }
    }

    /// `key` was used before for another request: nothing was answered.
    pub fn refused(&mut self, key: &KeyId) {
        self.in_flight.remove(key);
    }

    /// Appends from `seq` on failed: their keys were never answered.
    pub fn failed_from(&mut self, seq: u64) {
        self.in_flight.retain(|_, (s, _)| *s < seq);
    }

    /// Everything in flight failed.
    pub fn fail_all(&mut self) {
        self.in_flight.clear();
    }

    /// An answer found elsewhere (the store) stands from now on.
    pub fn remember(&mut self, key: KeyId, given: Given, now: Instant) {
        if self.recent.insert(key.clone(), given).is_none() {
            self.order.push_back((now, key));
        }
        while self.order.len() > self.capacity {
            self.forget_oldest();
        }
        self.let_go_of_old(now);
    }

    /// Forgets committed keys remembered longer ago than `keep_for`.
    pub fn let_go_of_old(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.keep_for)
        {
            self.forget_oldest();
        }
        if self.recent.is_empty() && self.recent.capacity() > 0 {
            // A burst's table would otherwise stay allocated for good.
            self.recent = HashMap::new();
            self.order = VecDeque::new();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, old)) = self.order.pop_front() {
            self.recent.remove(&old);
        }
    }
}

/// The users whose key was found answered before only after their command
/// was decided (a reload of the event, see the module's doc), each until
/// `watch_for` after the last time. Their keys the actor does not know are
/// looked up in the store before anything is decided: a client reusing
/// keys, by mistake or to fail other people's commands, costs one reload
/// per `watch_for`, then a lookup per command. While nobody is watched,
/// a keyed command costs one atomic load; while someone is, a map lookup.
pub struct KeyReplayers {
    watched: DashMap<UserId, Instant>,
    /// When the last watch ends, in nanoseconds since `origin`: past it
    /// nobody is watched, and no lock is taken.
    until: AtomicU64,
    origin: Instant,
    watch_for: Duration,
    capacity: usize,
}

impl KeyReplayers {
    /// Watches up to `capacity` users at once, each for `watch_for`.
    pub fn new(watch_for: Duration, capacity: usize) -> Self {
        Self {
            watched: DashMap::new(),
            until: AtomicU64::new(0),
            origin: Instant::now(),
            watch_for,
            capacity,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Whether a watch may still run at `now`.
    fn any_watched(&self, now: Instant) -> bool {
        self.nanos(now) < self.until.load(Ordering::Acquire)
    }

    /// `user`'s key, answered before, undid what had been decided for it.
    /// Past `capacity` the lapsed are forgotten first; if none has, the
    /// user is not added (the bound holds; each such user costs a reload).
    pub fn replayed_late(&self, user: UserId, now: Instant) {
        let watched = &self.watched;
        if !self.any_watched(now) {
            watched.clear();
        }
        if watched.len() >= self.capacity && !watched.contains_key(&user) {
            watched.retain(|_, since| now.saturating_duration_since(*since) < self.watch_for);
        }
        if watched.len() < self.capacity || watched.contains_key(&user) {
            watched.insert(user, now);
            self.until
                .fetch_max(self.nanos(now + self.watch_for), Ordering::AcqRel);
        }
    }

    /// Whether `user`'s unknown keys are to be looked up before deciding.
    pub fn watching(&self, user: UserId, now: Instant) -> bool {
        if !self.any_watched(now) {
            return false;
        }
        let lapsed = |since: &Instant| now.saturating_duration_since(*since) >= self.watch_for;
        let watching = self.watched.get(&user).is_some_and(|since| !lapsed(&since));
        if !watching {
            self.watched.remove_if(&user, |_, since| lapsed(since));
        }
        watching
    }
}

/// The keys whose command is in flight on this node, each with the event
/// that decided it. Two events' actors decide apart, so one fresh key sent
/// to two events at once would be decided by both, and the journal would
/// find the second only at commit, undoing what was decided on top of it.
/// A key claimed here by one event is refused to any other until its
/// append settles (the claim is dropped); the client retries and gets the
/// key's verdict then. One map entry per keyed command in flight.
#[derive(Default)]
pub struct KeysInFlight {
    claimed: DashMap<KeyId, (EventId, u64)>,
    /// Tells one claim of a key from a later one by the same event (an
    /// actor that reloaded while its earlier incarnation still settles).
    claims: AtomicU64,
}

/// A key held for one event's command until this is dropped.
pub struct KeyClaim {
    key: KeyId,
    number: u64,
    keys: Arc<KeysInFlight>,
}

impl std::fmt::Debug for KeyClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyClaim")
            .field("number", &self.number)
            .finish()
    }
}

/// The key is in flight on another event of this node.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyInUse;

impl KeysInFlight {
    /// Holds `key` for `event`'s command, unless another event holds it.
    pub fn claim(self: &Arc<Self>, key: KeyId, event: EventId) -> Result<KeyClaim, KeyInUse> {
        let number = self.claims.fetch_add(1, Ordering::Relaxed);
        match self.claimed.entry(key.clone()) {
            dashmap::Entry::Occupied(held) if held.get().0 != event => return Err(KeyInUse),
            dashmap::Entry::Occupied(mut held) => *held.get_mut() = (event, number),
            dashmap::Entry::Vacant(free) => {
                free.insert((event, number));
            }
        }
        Ok(KeyClaim {
            key,
            number,
            keys: Arc::clone(self),
        })
    }

    /// Whether no key is held now.
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty()
    }
}

impl KeyClaim {
    pub fn key(&self) -> &KeyId {
        &self.key
    }
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        self.keys
            .claimed
            .remove_if(&self.key, |_, (_, number)| *number == self.number);
    }
}

/// Where [`KeyMemory::lookup`] found an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Recalled<'a> {
    /// Its append (sequence `seq`) is not durable yet: a duplicate must wait
    /// for it, and fails with it.
    InFlight {
        seq: u64,
        given: &'a Given,
    },
    Committed(&'a Given),
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn key(name: &str) -> KeyId {
        (UserId::from(uuid::Uuid::nil()), name.to_owned())
    }

    fn given(position: usize) -> Given {
        Given {
            fingerprint: "POST /v1/events/e/join".into(),
            answer: Answer {
                changed: true,
                membership: Some(Membership::Waitlisted {
                    position,
                    joined_at: DateTime::UNIX_EPOCH,
                    seats: Default::default(),
                }),
            },
        }
    }

    #[test]
    fn a_key_in_flight_is_recalled_with_its_append() {
        let mut memory = KeyMemory::new(10, MINUTE);
        memory.sent(key("a"), 7, given(1));
        assert_eq!(
            memory.lookup(&key("a")),
            Some(Recalled::InFlight {
                seq: 7,
                given: &given(1)
            })
        );
        assert_eq!(memory.lookup(&key("b")), None);
    }

    #[test]
    fn a_committed_key_is_remembered() {
        let mut memory = KeyMemory::new(10, MINUTE);
        memory.sent(key("a"), 0, given(1));
        memory.committed(&key("a"), Instant::now());
        assert_eq!(
            memory.lookup(&key("a")),
            Some(Recalled::Committed(&given(1)))
        );
    }

    #[test]
    fn keys_of_failed_appends_are_forgotten_and_earlier_ones_kept() {
        let mut memory = KeyMemory::new(10, MINUTE);
        memory.sent(key("early"), 1, given(1));
        memory.sent(key("failed"), 2, given(2));
        memory.sent(key("later"), 3, given(3));
        memory.failed_from(2);
        assert!(memory.lookup(&key("early")).is_some());
        assert_eq!(memory.lookup(&key("failed")), None);
        assert_eq!(memory.lookup(&key("later")), None);
        memory.fail_all();
        assert_eq!(memory.lookup(&key("early")), None);
    }

    #[test]
    fn a_replayed_answer_replaces_the_one_decided_in_memory() {
        let mut memory = KeyMemory::new(10, MINUTE);
        memory.sent(key("a"), 0, given(1));
        memory.replayed(&key("a"), given(9).answer, Instant::now());
        assert_eq!(
            memory.lookup(&key("a")),
            Some(Recalled::Committed(&given(9)))
        );
        memory.sent(key("b"), 1, given(2));
        memory.refused(&key("b"));
        assert_eq!(memory.lookup(&key("b")), None);
    }

    #[test]
    fn the_oldest_committed_keys_are_forgotten_first() {
        let mut memory = KeyMemory::new(2, MINUTE);
        let now = Instant::now();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            memory.remember(key(name), given(i), now);
        }
        memory.remember(key("b"), given(5), now);
        assert_eq!(memory.lookup(&key("a")), None);
        assert!(memory.lookup(&key("b")).is_some());
        assert!(memory.lookup(&key("c")).is_some());
    }

    #[test]
    fn committed_keys_are_forgotten_once_older_than_the_memory_keeps_them() {
        let start = Instant::now();
        let mut memory = KeyMemory::new(10, MINUTE);
        memory.remember(key("old"), given(1), start);
        memory.remember(key("newer"), given(2), start + MINUTE / 2);
        memory.sent(key("in flight"), 3, given(3));

        memory.let_go_of_old(start + MINUTE + Duration::from_secs(1));
        assert_eq!(memory.lookup(&key("old")), None);
        assert!(memory.lookup(&key("newer")).is_some());

        // A key is never forgotten while its command is in flight.
        memory.let_go_of_old(start + 10 * MINUTE);
        assert_eq!(memory.lookup(&key("newer")), None);
        assert!(memory.lookup(&key("in flight")).is_some());
    }

    #[test]
    fn a_key_replays_only_for_the_request_it_was_given_for() {
        let given = given(1);
        assert_eq!(
            given.replay_for("POST /v1/events/e/join"),
            Some(given.answer)
        );
        assert_eq!(given.replay_for("DELETE /v1/events/e/join"), None);
    }

    #[test]
    fn a_key_in_flight_on_one_event_is_refused_to_another_until_it_settles() {
        let keys = Arc::new(KeysInFlight::default());
        let (first, second) = (EventId::new(), EventId::new());
        // Given a key in flight on one event,
        let held = keys.claim(key("k"), first).unwrap();
        // when another event claims it, it is refused,
        assert_eq!(keys.claim(key("k"), second).unwrap_err(), KeyInUse);
        // while other keys, and the same event again, are not.
        let other = keys.claim(key("other"), second).unwrap();
        let again = keys.claim(key("k"), first).unwrap();
        // The earlier claim settling leaves the later one held;
        drop(held);
        assert_eq!(keys.claim(key("k"), second).unwrap_err(), KeyInUse);
        // once every claim has settled, the key is free.
        drop(again);
        assert!(keys.claim(key("k"), second).is_ok());
        drop(other);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_user_whose_key_replayed_late_is_watched_for_a_while() {
        let replayers = KeyReplayers::new(MINUTE, 10);
        let (start, reuser, other) = (Instant::now(), UserId::new(), UserId::new());
        assert!(!replayers.watching(reuser, start), "nobody at first");

        replayers.replayed_late(reuser, start);

        assert!(replayers.watching(reuser, start + Duration::from_secs(59)));
        assert!(!replayers.watching(other, start));
        assert!(
            !replayers.watching(reuser, start + MINUTE),
            "the watch lapses"
        );
        assert!(
            !replayers.any_watched(start + MINUTE),
            "and nobody's keyed command takes the lock"
        );
    }

    #[test]
    fn watched_users_are_bounded() {
        let replayers = KeyReplayers::new(MINUTE, 2);
        let start = Instant::now();
        let [a, b, c] = [(); 3].map(|_| UserId::new());
        replayers.replayed_late(a, start);
        replayers.replayed_late(b, start);

        replayers.replayed_late(c, start + Duration::from_secs(1));
        assert!(
            !replayers.watching(c, start + Duration::from_secs(1)),
            "full"
        );

        replayers.replayed_late(c, start + MINUTE);
        assert!(
            replayers.watching(c, start + MINUTE),
            "the lapsed make room"
        );
    }
}
