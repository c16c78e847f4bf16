//! The waitlist: parties waiting for places, first come first served, and
//! the event's rules for serving them. Indexed so that "is this user
//! waiting?" is O(1) and a newcomer's position is known at once — a hot
//! event's waitlist can hold tens of thousands of parties, and every join
//! asks.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::values::{OfferHold, Seats, UserId};

/// A party waiting for places, with the time it asked for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub user: UserId,
    pub joined_at: DateTime<Utc>,
    /// Absent from snapshots taken before parties: one seat.
    #[serde(default)]
    pub seats: Seats,
}

/// Parties in the order they asked. Stored as a plain list; the index and
/// the seat count are rebuilt on load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "VecDeque<Waiter>")]
pub struct Waitlist {
    queue: VecDeque<Waiter>,
    members: HashSet<UserId>,
    seats: usize,
}

impl From<VecDeque<Waiter>> for Waitlist {
    fn from(queue: VecDeque<Waiter>) -> Self {
        let members = queue.iter().map(|w| w.user).collect();
        let seats = queue.iter().map(|w| w.seats.get()).sum();
        Self {
            queue,
            members,
            seats,
        }
    }
}

impl Serialize for Waitlist {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl Waitlist {
    /// Waiting parties.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Seats the waiting parties ask for, together.
    pub fn seats(&self) -> usize {
        self.seats
    }

    pub fn contains(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }

    pub fn front(&self) -> Option<&Waiter> {
        self.queue.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.queue.iter()
    }

    /// The 1-based position and entry of a waiting party. Searches from the
    /// back, where the party that just joined is.
    pub fn find(&self, user: UserId) -> Option<(usize, &Waiter)> {
        if !self.contains(user) {
            return None;
        }
        self.queue
            .iter()
            .rposition(|w| w.user == user)
            .map(|i| (i + 1, &self.queue[i]))
    }

    /// The 1-based position of a waiting party, searching from the front,
    /// where the parties being served are.
    pub fn position_of(&self, user: UserId) -> Option<usize> {
        if !self.contains(user) {
            return None;
        }
        self.queue
            .iter()
            .position(|w| w.user == user)
            .map(|i| i + 1)
    }

    pub fn push_back(&mut self, waiter: Waiter) {
        if self.members.insert(waiter.user) {
            self.seats += waiter.seats.get();
            self.queue.push_back(waiter);
        }
    }

    pub fn remove(&mut self, user: UserId) {
        if self.members.remove(&user) {
            // The served party is nearly always at the front.
            if let Some(i) = self.queue.iter().position(|w| w.user == user)
                && let Some(gone) = self.queue.remove(i)
            {
                self.seats -= gone.seats.get();
            }
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.members.clear();
        self.seats = 0;
    }

    /// The parties `free` places go to, in order, leaving out `gone` (a
    /// party leaving the list in the same step). Strict: the first party
    /// that does not fit stops everyone behind it. First fit: it is passed
    /// over, and smaller parties behind it take what it cannot use.
    pub fn served(&self, mut free: usize, fill: WaitlistFill, gone: Option<UserId>) -> Vec<Waiter> {
        let mut served = Vec::new();
        for waiter in self.queue.iter().filter(|w| Some(w.user) != gone) {
            if free == 0 {
                break;
            }
            if waiter.seats.get() <= free {
                free -= waiter.seats.get();
                served.push(*waiter);
            } else if fill == WaitlistFill::Strict {
                break;
            }
        }
        served
    }
}

/// What a freed place becomes for the party it goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WaitlistMode {
    /// The party is active at once.
    #[default]
    Auto,
    /// The places are held for the party, which accepts or declines them
    /// before the hold runs out.
    Offer,
}

/// Which waiting party a freed place goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WaitlistFill {
    /// First come, first served, always: a party too large for the places
    /// free waits, and everyone behind it waits too.
    #[default]
    Strict,
    /// A smaller party behind may take places the first cannot use: fewer
    /// empty seats, but a large party can wait behind later arrivals.
    FirstFit,
}

named!(WaitlistMode, "waitlist_mode", WaitlistMode::Auto => "auto", WaitlistMode::Offer => "offer");
named!(WaitlistFill, "waitlist_fill", WaitlistFill::Strict => "strict", WaitlistFill::FirstFit => "first_fit");

/// How an event serves its waitlist. Absent from facts and snapshots
/// written before offers: today's behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistPolicy {
    pub mode: WaitlistMode,
    pub offer_hold: OfferHold,
    /// The largest party one join may bring.
    pub max_party: Seats,
    pub fill: WaitlistFill,
}

/// A change to a waitlist policy; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPatch {
    pub mode: Option<WaitlistMode>,
    pub offer_hold: Option<OfferHold>,
    pub max_party: Option<Seats>,
    pub fill: Option<WaitlistFill>,
}

impl PolicyPatch {
    pub fn apply_to(&self, policy: WaitlistPolicy) -> WaitlistPolicy {
        WaitlistPolicy {
            mode: self.mode.unwrap_or(policy.mode),
            offer_hold: self.offer_hold.unwrap_or(policy.offer_hold),
            max_party: self.max_party.unwrap_or(policy.max_party),
            fill: self.fill.unwrap_or(policy.fill),
        }
    }
}
