//! The port through which committed changes leave the actors: live updates,
//! recommendations and cross-node fan-out all subscribe here. Called only
//! after the commit, so nobody is told about a fact that could still vanish.

use chrono::{DateTime, Utc};

use crate::domain::{DomainEvent, UserId};
use crate::store::EventSummary;

/// One committed append of one event.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The event after the change (its version is the stream version).
    pub summary: EventSummary,
    /// The kinds of the facts, in order: `joined`, `left`, `promoted`, …
    pub kinds: Vec<&'static str>,
    /// Who joined (as active or waitlisted) and who left, in order:
    /// recommendations learn from them.
    pub joined: Vec<UserId>,
    pub left: Vec<UserId>,
    pub committed_at: DateTime<Utc>,
}

impl Committed {
    pub fn new(summary: EventSummary, facts: &[DomainEvent], committed_at: DateTime<Utc>) -> Self {
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        for fact in facts {
            match fact {
                DomainEvent::Joined { user, .. } => joined.push(*user),
                DomainEvent::Left { user, .. } => left.push(*user),
                _ => {}
            }
        }
        Self {
            summary,
            kinds: facts.iter().map(DomainEvent::kind).collect(),
            joined,
            left,
            committed_at,
        }
    }
}

/// Receives committed changes. Must not block: hand the change on and return.
pub trait ChangeSink: Send + Sync + 'static {
    fn committed(&self, change: Committed);
}

/// For deployments and tests that want no live updates.
pub struct NoChanges;

impl ChangeSink for NoChanges {
    fn committed(&self, _change: Committed) {}
}
