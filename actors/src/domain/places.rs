//! Who holds an event's places: active parties, and parties holding an
//! offer. Each keeps its seat total, so "how many places are free?" — asked
//! by every join — is O(1) at any size.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::values::{Seats, UserId};

/// An active party: its seats count against capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attendee {
    /// When the party first asked (its join, even if it waited after).
    pub joined_at: DateTime<Utc>,
    pub seats: Seats,
}

/// A stored attendee: snapshots taken before parties kept only the time.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredAttendee {
    Party(Attendee),
    Alone(DateTime<Utc>),
}

impl From<StoredAttendee> for Attendee {
    fn from(stored: StoredAttendee) -> Self {
        match stored {
            StoredAttendee::Party(a) => a,
            StoredAttendee::Alone(joined_at) => Attendee {
                joined_at,
                seats: Seats::default(),
            },
        }
    }
}

/// Places held for a waiting party until `expires_at`: counted as taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub joined_at: DateTime<Utc>,
    pub seats: Seats,
    pub expires_at: DateTime<Utc>,
}

/// Parties by user, with their seats counted. Stored as the plain map; the
/// count is rebuilt on load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders<T> {
    by_user: BTreeMap<UserId, T>,
    seats: usize,
}

/// What a holder holds: a number of seats.
pub trait Holding: Copy {
    fn seats(&self) -> Seats;
}

impl Holding for Attendee {
    fn seats(&self) -> Seats {
        self.seats
    }
}

impl Holding for Offer {
    fn seats(&self) -> Seats {
        self.seats
    }
}

impl<T> Default for Holders<T> {
    fn default() -> Self {
        Self {
            by_user: BTreeMap::new(),
            seats: 0,
        }
    }
}

impl<T: Holding> Holders<T> {
    /// Parties.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// Seats held, together.
    pub fn seats(&self) -> usize {
        self.seats
    }

    pub fn get(&self, user: &UserId) -> Option<&T> {
        self.by_user.get(user)
    }

    pub fn contains_key(&self, user: &UserId) -> bool {
        self.by_user.contains_key(user)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &T)> {
        self.by_user.iter()
    }

    pub fn insert(&mut self, user: UserId, held: T) {
        self.seats += held.seats().get();
        if let Some(before) = self.by_user.insert(user, held) {
            self.seats -= before.seats().get();
        }
    }

    pub fn remove(&mut self, user: &UserId) -> Option<T> {
        let gone = self.by_user.remove(user)?;
        self.seats -= gone.seats().get();
        Some(gone)
    }

    pub fn clear(&mut self) {
        self.by_user.clear();
        self.seats = 0;
    }
}

impl<T: Holding> FromIterator<(UserId, T)> for Holders<T> {
    fn from_iter<I: IntoIterator<Item = (UserId, T)>>(iter: I) -> Self {
        let mut holders = Self::default();
        for (user, held) in iter {
            holders.insert(user, held);
        }
        holders
    }
}

impl<T: Serialize> Serialize for Holders<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_user.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Holders<Attendee> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = BTreeMap::<UserId, StoredAttendee>::deserialize(deserializer)?;
        Ok(stored.into_iter().map(|(u, a)| (u, a.into())).collect())
    }
}

impl<'de> Deserialize<'de> for Holders<Offer> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = BTreeMap::<UserId, Offer>::deserialize(deserializer)?;
        Ok(stored.into_iter().collect())
    }
}

impl Holders<Offer> {
    /// When the first offer runs out.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.by_user.values().map(|o| o.expires_at).min()
    }

    /// Offers whose hold has run out at `at`, earliest deadline first.
    pub fn due(&self, at: DateTime<Utc>) -> Vec<(UserId, Offer)> {
        let mut due: Vec<(UserId, Offer)> = self
            .by_user
            .iter()
            .filter(|(_, o)| o.expires_at <= at)
            .map(|(u, o)| (*u, *o))
            .collect();
        due.sort_by_key(|(u, o)| (o.expires_at, *u));
        due
    }
}
