//! The one shape of a committed change, and the port it leaves the actors
//! through. Live updates, recommendations and cross-node fan-out all consume
//! [`EventChange`]; each renders what it needs from it at its own edge.
//! A change is handed on only after its commit, so nobody is told about a
//! fact that could still vanish.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{DomainEvent, UserId, WaitlistMove};
use crate::store::EventSummary;

/// One committed append of one event: the event after it and the facts
/// that made it. Serialisable, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventChange {
    /// The event after the change (its version is the stream version).
    pub summary: EventSummary,
    /// In the order they were decided.
    pub facts: Vec<DomainEvent>,
    /// How the facts moved the waitlist, so that a waiting party can tell
    /// its new place without asking. Absent from changes sent by a node
    /// from before it was sent.
    #[serde(default)]
    pub moves: Vec<WaitlistMove>,
    pub committed_at: DateTime<Utc>,
}

impl EventChange {
    /// The kinds of the facts, in order: `joined`, `left`, `promoted`, …
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.facts.iter().map(DomainEvent::kind)
    }

    pub fn has(&self, kind: &str) -> bool {
        self.kinds().any(|k| k == kind)
    }

    /// The event's version before this change: each fact is one version.
    pub fn base(&self) -> u64 {
        self.summary.version - self.facts.len() as u64
    }

    /// Who joined (as active or waitlisted), in order, each with when.
    pub fn joined(&self) -> impl Iterator<Item = (UserId, DateTime<Utc>)> + '_ {
        self.facts.iter().filter_map(|fact| match fact {
            DomainEvent::Joined { user, at, .. } => Some((*user, *at)),
            _ => None,
        })
    }

    /// Who is out, in order: who left, declined their offer, or let it run
    /// out; each with when they had joined.
    pub fn left(&self) -> impl Iterator<Item = (UserId, DateTime<Utc>)> + '_ {
        self.facts.iter().filter_map(|fact| match fact {
            DomainEvent::Left {
                user, joined_at, ..
            }
            | DomainEvent::OfferDeclined {
                user, joined_at, ..
            }
            | DomainEvent::OfferExpired {
                user, joined_at, ..
            } => Some((*user, *joined_at)),
            _ => None,
        })
    }
}

/// Receives committed changes. Must not block: hand the change on and return.
pub trait ChangeSink: Send + Sync + 'static {
    fn committed(&self, change: Arc<EventChange>);
}

/// For deployments and tests that want no live updates.
pub struct NoChanges;

impl ChangeSink for NoChanges {
    fn committed(&self, _change: Arc<EventChange>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Capacity, EventId, Lifecycle, Seats};
    use crate::testing::event_details;

    #[test]
    fn whoever_declines_or_lets_an_offer_run_out_is_out_like_one_who_left() {
        let (joined, left, declined, expired) =
            (UserId::new(), UserId::new(), UserId::new(), UserId::new());
        let (at, seats) = (Utc::now(), Seats::default());
        let id = EventId::new();
        let change = EventChange {
            summary: EventSummary {
                id,
                owner: UserId::new(),
                details: event_details(),
                capacity: Capacity::parse(10).unwrap(),
                policy: Default::default(),
                lifecycle: Lifecycle::Published,
                active_count: 1,
                offered_count: 0,
                waitlist_count: 0,
                version: 5,
            },
            facts: vec![
                DomainEvent::Joined {
                    user: joined,
                    status: crate::domain::JoinedAs::Active,
                    seats,
                    at,
                },
                DomainEvent::Left {
                    user: left,
                    joined_at: at,
                    seats,
                    at,
                },
                DomainEvent::OfferDeclined {
                    user: declined,
                    joined_at: at,
                    seats,
                    at,
                },
                DomainEvent::OfferExpired {
                    user: expired,
                    joined_at: at,
                    seats,
                    at,
                },
            ],
            moves: Vec::new(),
            committed_at: at,
        };
        assert_eq!(change.joined().collect::<Vec<_>>(), vec![(joined, at)]);
        assert_eq!(
            change.left().collect::<Vec<_>>(),
            vec![(left, at), (declined, at), (expired, at)]
        );
    }
}
