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

    /// Who joined (as active or waitlisted), in order.
    pub fn joined(&self) -> impl Iterator<Item = UserId> + '_ {
        self.facts.iter().filter_map(|fact| match fact {
            DomainEvent::Joined { user, .. } => Some(*user),
            _ => None,
        })
    }

    /// Who left, in order.
    pub fn left(&self) -> impl Iterator<Item = UserId> + '_ {
        self.facts.iter().filter_map(|fact| match fact {
            DomainEvent::Left { user, .. } => Some(*user),
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
