//! The FIFO waitlist, indexed so that "is this user waiting?" is O(1) and a
//! newcomer's position is known at once — a hot event's waitlist can hold
//! tens of thousands of people, and every join asks.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::values::UserId;

/// Someone waiting for a place, with the time they asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub user: UserId,
    pub joined_at: DateTime<Utc>,
}

/// Strict FIFO: the front is promoted first. Stored as a plain list; the
/// index is rebuilt on load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "VecDeque<Waiter>")]
pub struct Waitlist {
    queue: VecDeque<Waiter>,
    members: HashSet<UserId>,
}

impl From<VecDeque<Waiter>> for Waitlist {
    fn from(queue: VecDeque<Waiter>) -> Self {
        let members = queue.iter().map(|w| w.user).collect();
        Self { queue, members }
    }
}

impl Serialize for Waitlist {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl Waitlist {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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

    /// The 1-based position and entry of a waiting user. Searches from the
    /// back, where the user who just joined is.
    pub fn find(&self, user: UserId) -> Option<(usize, &Waiter)> {
        if !self.contains(user) {
            return None;
        }
        self.queue
            .iter()
            .rposition(|w| w.user == user)
            .map(|i| (i + 1, &self.queue[i]))
    }

    pub fn push_back(&mut self, waiter: Waiter) {
        if self.members.insert(waiter.user) {
            self.queue.push_back(waiter);
        }
    }

    pub fn remove(&mut self, user: UserId) {
        if self.members.remove(&user) {
            self.queue.retain(|w| w.user != user);
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.members.clear();
    }
}
