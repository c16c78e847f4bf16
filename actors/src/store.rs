//! The persistence port: what the actors need from a database, and nothing
//! about how. Adapters (SQLite, Postgres) live in the server crate.

use std::collections::HashMap;

use crate::idempotency::{Answer, Given};
use crate::placement::ShardLease;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Capacity, DomainEvent, EventDetails, EventId, EventState, Lifecycle, MemberStatus, Seats,
    StoredEvent, UserId, WaitlistPolicy,
};

/// A database failure, described for operators. Never shown to clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What the actor needs to rebuild an event: the latest snapshot, if any, and
/// the facts recorded after it, in order.
#[derive(Debug, Default)]
pub struct Rehydration {
    pub snapshot: Option<EventState>,
    pub facts: Vec<StoredEvent>,
}

impl Rehydration {
    /// Folds the facts onto the snapshot, upcasting old shapes on the way.
    pub fn into_state(self) -> Result<Option<EventState>, StoreError> {
        let mut state = self.snapshot;
        for stored in self.facts {
            let event = stored
                .decode()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            state = crate::domain::evolve(state, &event);
        }
        Ok(state)
    }
}

/// A successful command's replay record: the same key from the same user gets
/// this answer again instead of a second effect.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub user: UserId,
    pub key: String,
    /// What the key was used for (method and target); another use is refused.
    pub fingerprint: String,
    pub answer: Answer,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The event's row in the read model after an append.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventSummary {
    pub id: EventId,
    pub owner: UserId,
    pub details: EventDetails,
    pub capacity: Capacity,
    /// Absent from changes sent by a node from before offers.
    #[serde(default)]
    pub policy: WaitlistPolicy,
    pub lifecycle: Lifecycle,
    /// Seats of active parties.
    pub active_count: usize,
    /// Seats held on offer.
    #[serde(default)]
    pub offered_count: usize,
    /// Seats the waiting parties ask for.
    pub waitlist_count: usize,
    pub version: u64,
}

impl EventSummary {
    /// Places a newcomer could take: capacity less seats active and on offer.
    pub fn places_left(&self) -> usize {
        self.capacity
            .get()
            .saturating_sub(self.active_count + self.offered_count)
    }
}

impl From<&EventState> for EventSummary {
    fn from(state: &EventState) -> Self {
        Self {
            id: state.id,
            owner: state.owner,
            details: state.details.clone(),
            capacity: state.capacity,
            policy: state.policy,
            lifecycle: state.lifecycle,
            active_count: state.active.seats(),
            offered_count: state.offers.seats(),
            waitlist_count: state.waitlist.seats(),
            version: state.version,
        }
    }
}

/// A membership's row in the `joins` read model.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipRow {
    pub event_id: EventId,
    pub user_id: UserId,
    pub status: MemberStatus,
    /// The stream version that put the row in its status: orders the active
    /// list and the waitlist.
    pub order_key: i64,
    pub seats: Seats,
    /// While the status is `offered`: when the hold runs out.
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub joined_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One actor's decided facts, handed to the journal for group commit.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: EventId,
    /// The actor incarnation that decided these facts; the journal fences a
    /// writer whose earlier append failed.
    pub writer: u64,
    /// The shard lease the actor was activated under, in a cluster: the
    /// commit is refused unless this node still holds it at that epoch.
    pub lease: Option<ShardLease>,
    /// The stream's version before these facts.
    pub base_version: u64,
    pub facts: Vec<DomainEvent>,
    /// The event after the facts, for the read model.
    pub summary: EventSummary,
    /// Set every N facts so rehydration stays short.
    pub snapshot: Option<EventState>,
    pub idempotency: Option<IdempotencyRecord>,
    pub request_id: Option<String>,
    /// The deciding command's span: the commit span links to it, and the
    /// outbox rows carry its trace on.
    pub span: tracing::Span,
}

impl Append {
    /// The facts numbered with their stream versions.
    pub fn versioned(&self) -> impl Iterator<Item = (i64, &DomainEvent)> {
        self.facts
            .iter()
            .enumerate()
            .map(|(i, e)| ((self.base_version + 1 + i as u64) as i64, e))
    }

    /// Whether a fact here ends every membership of the event.
    pub fn cancels(&self) -> bool {
        self.facts
            .iter()
            .any(|e| matches!(e, DomainEvent::Cancelled { .. }))
    }

    /// Whether a fact here changes the event itself, not only who holds
    /// and who waits for its places (see `DomainEvent::moves_members_only`).
    pub fn changes_the_event(&self) -> bool {
        !self.facts.iter().all(DomainEvent::moves_members_only)
    }

    /// Whether the event's details (and so its tags) changed.
    pub fn changes_details(&self) -> bool {
        self.facts.iter().any(|e| {
            matches!(
                e,
                DomainEvent::Created { .. } | DomainEvent::DetailsChanged { .. }
            )
        })
    }
}

/// The membership rows a batch of appends leaves behind: one per (event, user),
/// the last change winning, in first-touched order.
pub fn membership_rows<'a>(batch: impl IntoIterator<Item = &'a Append>) -> Vec<MembershipRow> {
    let mut index: HashMap<(EventId, UserId), usize> = HashMap::new();
    let mut rows: Vec<MembershipRow> = Vec::new();
    for append in batch {
        for (version, event) in append.versioned() {
            let (Some(party), Some(status)) = (event.party(), event.member_status()) else {
                continue;
            };
            let offer_expires_at = match *event {
                DomainEvent::Offered { expires_at, .. } => Some(expires_at),
                _ => None,
            };
            let row = MembershipRow {
                event_id: append.stream,
                user_id: party.user,
                status,
                order_key: version,
                seats: party.seats,
                offer_expires_at,
                joined_at: party.joined_at,
                updated_at: event.at(),
            };
            match index.get(&(row.event_id, row.user_id)) {
                Some(&i) => rows[i] = row,
                None => {
                    index.insert((row.event_id, row.user_id), rows.len());
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// What a commit did besides writing: appends whose shard lease this node
/// no longer holds (left out), streams that lost an optimistic-concurrency
/// race (left out), and appends whose idempotency key was already stored
/// (left out, answered with the stored answer instead).
#[derive(Debug, Default)]
pub struct CommitReport {
    /// By index in the batch.
    pub fenced: Vec<usize>,
    /// By index in the batch.
    pub conflicted: Vec<usize>,
    /// By index in the batch.
    pub replayed: Vec<(usize, Given)>,
}

/// The database behind the actors.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The latest snapshot of a stream and the facts after it. An unknown
    /// stream gives an empty rehydration.
    async fn load(&self, stream: EventId) -> Result<Rehydration, StoreError>;

    /// The log's facts of a stream at versions `after + 1 ..= through`, in
    /// order, whatever snapshot covers them (fewer where the log ends).
    async fn logged_facts(
        &self,
        stream: EventId,
        after: u64,
        through: u64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Writes a batch in one transaction: event log, snapshots, read models,
    /// idempotency records and outbox rows, all or nothing — except that
    /// appends whose lease is no longer this node's at its epoch (checked
    /// in the same transaction) are left out and reported in
    /// [`CommitReport::fenced`], streams whose versions were taken by another writer are left out and
    /// reported in [`CommitReport::conflicted`], and an append whose
    /// idempotency key is already stored is left out and reported in
    /// [`CommitReport::replayed`] (with, if it carried facts, the rest of its
    /// stream's appends, which count as conflicted).
    async fn commit(&self, batch: &[Append]) -> Result<CommitReport, StoreError>;

    /// The unexpired answer stored under a user's idempotency key, if any.
    async fn stored_answer(&self, user: UserId, key: &str) -> Result<Option<Given>, StoreError>;
}
